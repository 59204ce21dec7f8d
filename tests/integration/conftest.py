"""Host integration tier: real kernel, real apps, real agent, real OTLP receiver.

These tests need root and a kernel with BPF. Elsewhere they skip with the reason; in CI
(CI=true) a missing prerequisite is a failure, never a silent skip.
"""

import os
import shutil

import pytest

from tests.support.receiver import Receiver


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not importable: run scripts/dev.sh setup"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers: run scripts/dev.sh setup"
    return None


def pytest_collection_modifyitems(config, items):
    why = _why_not()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"integration tier cannot run in CI: {why}")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=f"LOUD SKIP: {why}"))


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    r.start_grpc()
    r.start_http()
    yield r
    r.stop()


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
