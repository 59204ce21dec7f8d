import os
from pathlib import Path

import pytest

from tests.support.gate import bpf_missing

# Tiers that run the real agent on this kernel.
KERNEL_TIERS = ("integration", "frameworks")
# The markers of each tier (a directory of tests/), declared in pyproject.toml.
TIER_MARKERS = {"unit": ("unit",), "fuzz": ("slow",), "integration": ("root",), "frameworks": ("root",),
                "bench": ("root", "slow"), "kernels": ("vm", "slow"), "image": ("vm", "slow"),
                "ansible": ("vm", "slow")}


def tier_of(item) -> str:
    return Path(str(item.fspath)).resolve().relative_to(Path(__file__).resolve().parent).parts[0]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if tier_of(item) not in TIER_MARKERS:
            raise pytest.UsageError(f"tests/{tier_of(item)}/ is not a tier of tests/conftest.py's TIER_MARKERS: "
                                    "add it there with its markers")
        for name in TIER_MARKERS[tier_of(item)]:
            item.add_marker(name)
    kernel_items = [i for i in items if Path(str(i.fspath)).parent.name in KERNEL_TIERS]
    if not kernel_items:
        return
    why = bpf_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"kernel tiers cannot run in CI: {why}")
    for item in kernel_items:
        item.add_marker(pytest.mark.skip(reason=f"LOUD SKIP: {why}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: CI was told to run every tier, and a test that
    could not run there has not passed (a missing gcc, hatchling or ansible-lint, a kernel
    without the strategy a test needs). Outside CI a skip stays a skip, with its reason."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, where every skip fails: {reason}"


@pytest.fixture(scope="session")
def receiver():
    from tests.support.receiver import Receiver

    r = Receiver()
    r.start_grpc()
    r.start_http()
    yield r
    r.stop()


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
