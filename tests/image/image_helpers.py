"""What the image tier's tests and fixtures share: where results go, which target, the
build (packer/build.py, reused when its inputs are unchanged) and the NoCloud seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results")) / "image"
TARGET = os.environ.get("SPANPROBE_IMAGE_TARGET", "debian-13-amd64")
BIN = Path(sys.executable).parent


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
