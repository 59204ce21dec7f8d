"""What the image tier's tests and fixtures share: where results go, which target, the
build (packer/build.py, reused when its inputs are unchanged) and the NoCloud seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results")) / "image"
# The two builds (the image, and the second build for the reproducibility report) are kept
# here, each reused by later runs while its inputs key (packer/build.py) is the same, and
# shown as reused (when, key). SPANPROBE_IMAGE_FRESH=1 builds both anew.
IMAGES = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "images"
FRESH = os.environ.get("SPANPROBE_IMAGE_FRESH") == "1"
TARGET = os.environ.get("SPANPROBE_IMAGE_TARGET", "debian-13-amd64")
BIN = Path(sys.executable).parent
# What the tier's end-of-run summary prints (conftest.pytest_terminal_summary): stage -> seconds
# or a short result, in the order the stages ran.
SUMMARY: dict[str, object] = {}


class Build:
    """packer/build.py TARGET --out OUT_ROOT running in the background, its output in a log
    under RESULTS. The image tier starts its two builds (the image, and the fresh rebuild for
    the reproducibility report) at once: each build VM keeps about one core busy, so two
    take little longer than one on two cores."""

    def __init__(self, out_root: Path, *extra: str):
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.out_root = out_root
        self.reused: str | None = None      # "built <when>, key <key>" when an earlier run's build is reused
        self.log = RESULTS / f"build-{out_root.name}.log"
        self.t0 = time.monotonic()
        env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "packer" / "build.py"), TARGET,
                                          "--out", str(out_root), *extra], stdout=f, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def wait(self) -> Path:
        rc = self.proc.wait()
        text = self.log.read_text(errors="replace")
        if "is already built from these inputs" in text:
            meta = json.loads((self.out_root / TARGET / "build.json").read_text())
            self.reused = f"built {meta['built']}, key {meta['inputs_key']}"
            took = f"reused ({self.reused})"
        else:       # the build's own total: a rebuild may have ended long before it is waited for
            try:
                took = json.loads((self.out_root / TARGET / "build.json").read_text())["times"]["total_s"]
            except (OSError, ValueError, KeyError):
                took = round(time.monotonic() - self.t0, 1)
        SUMMARY.setdefault(f"build {self.out_root.name} (s)", took)
        assert rc == 0, f"image build failed (log {self.log}):\n" + "\n".join(text.splitlines()[-40:])
        return self.out_root / TARGET

    def stop(self) -> None:
        """An unfinished build (a failed or interrupted run): interrupt the whole group, as
        Ctrl-C would, so Packer stops its VM and removes its work files; then kill what is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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
