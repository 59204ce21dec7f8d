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
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENABLED = os.environ.get("SPANPROBE_IMAGE") == "1"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "ansible"))
sys.path.insert(0, str(REPO / "packer"))
sys.path.insert(0, str(REPO))
from tests.support.gate import gate  # noqa: E402
from image_helpers import TARGET, build_image  # noqa: E402


def pytest_collection_modifyitems(config, items):
    gate([i for i in items if HERE in Path(str(i.fspath)).parents], ENABLED,
         "builds the appliance and boots it for many minutes: scripts/dev.sh test-image (SPANPROBE_IMAGE=1)",
         ("packer", "qemu-system-x86_64", "qemu-img", "xorriso", "sfdisk", "mmdebstrap", "ssh"))


@pytest.fixture(scope="session")
def image() -> dict:
    """The image's output folder and build metadata (reused when built from the same inputs)."""
    out = build_image(Path(os.environ.get("SPANPROBE_IMAGE_OUT", REPO / "build" / "image")))
    meta = json.loads((out / "build.json").read_text())
    return {"dir": out, "meta": meta, "raw": out / f"spanprobe-{TARGET}.raw",
            "qcow2": out / f"spanprobe-{TARGET}.qcow2", "box": out / f"spanprobe-{TARGET}-libvirt.box"}


