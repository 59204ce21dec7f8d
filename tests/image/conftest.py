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
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results")) / "image"
TARGET = os.environ.get("SPANPROBE_IMAGE_TARGET", "debian-13-amd64")
ENABLED = os.environ.get("SPANPROBE_IMAGE") == "1"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "ansible"))
sys.path.insert(0, str(REPO / "packer"))


def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if HERE in Path(str(i.fspath)).parents]
    if not mine:
        return
    why = None
    if not ENABLED:
        why = "builds the appliance and boots it for many minutes: scripts/dev.sh test-image (SPANPROBE_IMAGE=1)"
    elif os.geteuid() != 0:
        why = "needs root (mmdebstrap, loop devices)"
    else:
        for tool in ("packer", "qemu-system-x86_64", "qemu-img", "xorriso", "sfdisk", "mmdebstrap"):
            if shutil.which(tool) is None:
                why = f"{tool} is missing: scripts/dev.sh installs it"
                break
    if why is None:
        return
    if ENABLED and os.environ.get("CI") == "true":
        raise pytest.UsageError(f"the image tier cannot run in CI: {why}")
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=f"LOUD SKIP: {why}" if ENABLED else why))


def build_image(out_root: Path, *extra: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"build-{out_root.name}.log"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(REPO / "packer" / "build.py"), TARGET, "--out", str(out_root),
                            *extra], stdout=f, stderr=subprocess.STDOUT, env=env)
    text = log.read_text(errors="replace")
    assert r.returncode == 0, f"image build failed (log {log}):\n" + "\n".join(text.splitlines()[-40:])
    return out_root / TARGET


@pytest.fixture(scope="session")
def image() -> dict:
    """The image's output folder and build metadata (reused when built from the same inputs)."""
    out = build_image(Path(os.environ.get("SPANPROBE_IMAGE_OUT", REPO / "build" / "image")))
    meta = json.loads((out / "build.json").read_text())
    return {"dir": out, "meta": meta, "raw": out / f"spanprobe-{TARGET}.raw",
            "qcow2": out / f"spanprobe-{TARGET}.qcow2", "box": out / f"spanprobe-{TARGET}-libvirt.box"}


def make_seed(into: Path, config_yaml: str) -> tuple[Path, Path]:
    """A NoCloud seed drive (ISO 9660, label cidata): user `admin` with a new key, a
    hostname, and the agent's configuration. Returns (seed.iso, private key)."""
    into.mkdir(parents=True, exist_ok=True)
    key = into / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "spanprobe-image-test", "-f",
                        str(key)], check=True)
    pub = (into / "id_ed25519.pub").read_text().strip()
    d = into / "seed"
    d.mkdir(exist_ok=True)
    (d / "meta-data").write_text("instance-id: spanprobe-image-test\nlocal-hostname: spanprobe-test\n")
    user_data = {
        "users": [{"name": "admin", "groups": ["sudo"], "sudo": "ALL=(ALL) NOPASSWD:ALL",
                   "shell": "/bin/bash", "ssh_authorized_keys": [pub]}],
        "write_files": [{"path": "/etc/spanprobe/config.yaml", "owner": "root:spanprobe",
                         "permissions": "0640", "content": config_yaml}],
    }
    (d / "user-data").write_text("#cloud-config\n" + json.dumps(user_data, indent=1) + "\n")
    iso = into / "seed.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "cidata", "-J", "-r", str(d)],
                   check=True)
    return iso, key
