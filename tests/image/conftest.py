"""The image tier: the appliance built by Packer (packer/build.py), its outputs and its
hygiene checked on the disk itself, then booted under QEMU with a NoCloud seed, with UEFI
(OVMF) and with BIOS (SeaBIOS), and checked over SSH.

Runs only with SPANPROBE_IMAGE=1 (`scripts/dev.sh test-image`): it builds an image and
boots VMs for many minutes. SPANPROBE_IMAGE_TARGET picks the target (debian-13-amd64).
Results (build log, consoles, reproducibility report): $SPANPROBE_RESULTS/image/.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENABLED = os.environ.get("SPANPROBE_IMAGE") == "1"
from tests.support.gate import gate
from image_helpers import FRESH, IMAGES, RESULTS, SUMMARY, TARGET, Build


def pytest_collection_modifyitems(config, items):
    gate([i for i in items if HERE in Path(str(i.fspath)).parents], ENABLED,
         "builds the appliance and boots it for many minutes: scripts/dev.sh test-image (SPANPROBE_IMAGE=1)",
         ("packer", "qemu-system-x86_64", "qemu-img", "xorriso", "sfdisk", "mcopy", "mmdebstrap", "ssh"))


REPRODUCIBILITY_TEST = "test_reproducible_file_trees"
VAGRANT_TEST = "test_vagrant_up_shows_spans_then_destroy"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not SUMMARY:
        return
    tr = terminalreporter
    tr.section("image tier")
    for name, v in SUMMARY.items():
        tr.write_line(f"  {name:<34} {v}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(SUMMARY, indent=2) + "\n")


@pytest.fixture(scope="session")
def rebuild(request):
    """The second build for the reproducibility report, an independent build into its own
    folder, started with the first when that test is selected; None otherwise."""
    if not any(i.name == REPRODUCIBILITY_TEST for i in request.session.items):
        yield None
        return
    b = Build(IMAGES / "rebuild", *(["--fresh"] if FRESH else []))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def image(rebuild) -> dict:
    """The image's output folder and build metadata; `reused` says when and from which key
    it was built if an earlier run built it from the same inputs (None: built by this run)."""
    b = Build(Path(os.environ.get("SPANPROBE_IMAGE_OUT", IMAGES / "image")), *(["--fresh"] if FRESH else []))
    out = b.wait()
    meta = json.loads((out / "build.json").read_text())
    return {"dir": out, "meta": meta, "raw": out / f"spanprobe-{TARGET}.raw", "reused": b.reused,
            "qcow2": out / f"spanprobe-{TARGET}.qcow2", "box": out / f"spanprobe-{TARGET}-libvirt.box"}


@pytest.fixture(scope="session")
def vagrant_up(request, image):
    """`vagrant up` running in the background (vagrant_run.VagrantUp), started by the first
    boot of test_image.py when the Vagrant test is selected; None when it is not, or when
    vagrant is missing (the test says so). Destroyed at the end whatever happened."""
    if not any(i.name == VAGRANT_TEST for i in request.session.items) or shutil.which("vagrant") is None:
        yield None
        return
    from vagrant_run import VagrantUp
    v = VagrantUp(image["box"])
    try:
        yield v
    finally:
        v.destroy()
