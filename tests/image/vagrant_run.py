"""`vagrant up` of the built box, run in the background while the image's own boots are
checked, the Vagrant VM and the UEFI/BIOS guests (one at a time) sharing the two cores
instead of following each other. That saved ~80 s here, not the whole `up`: a booting TCG
guest already keeps more than one core busy. The test
(test_vagrant.py) waits for it, looks for spans and destroys it; the fixture destroys it
too if the test never ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from image_helpers import REPO, RESULTS, SUMMARY
from tests.support.procs import free_port

VIRSH = ["virsh", "-c", "qemu:///system"]


def start_libvirt() -> None:
    """libvirtd and virtlogd by hand: PID 1 here is not systemd."""
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)
    for _ in range(50):
        if subprocess.run([*VIRSH, "version"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("libvirtd did not answer on qemu:///system")


def box_volumes() -> set[str]:
    r = subprocess.run([*VIRSH, "vol-list", "--pool", "default"], capture_output=True, text=True)
    names = (line.split()[0] for line in r.stdout.splitlines() if line.strip())
    return {v for v in names if v.startswith("spanprobe-VAGRANTSLASH-appliance_")}


class VagrantUp:
    """The root Vagrantfile brought up with `box`, its state and logs under RESULTS/vagrant."""

    def __init__(self, box: Path):
        start_libvirt()
        self.work = RESULTS / "vagrant"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.env = dict(os.environ, VAGRANT_CWD=str(REPO), VAGRANT_DOTFILE_PATH=str(self.work / ".vagrant"),
                        VAGRANT_HOME=str(self.work / "home"), VAGRANT_DEFAULT_PROVIDER="libvirt",
                        SPANPROBE_BOX=str(box), SPANPROBE_VAGRANT_SSH_PORT=str(free_port()),
                        VAGRANT_CHECKPOINT_DISABLE="1")
        self.volumes_before = box_volumes()
        self.destroyed = False
        self.up: subprocess.CompletedProcess | None = None
        self.thread = threading.Thread(target=self._up, name="vagrant-up", daemon=True)
        self.thread.start()

    def _up(self) -> None:
        t0 = time.monotonic()
        try:
            self.up = self.run("up", "--provider=libvirt", check=False)
        finally:
            SUMMARY["vagrant up (s)"] = round(time.monotonic() - t0, 1)

    def run(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["vagrant", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        with (self.work / f"vagrant-{args[0]}.log").open("a") as log:
            log.write(r.stdout + r.stderr)
        if check:
            assert r.returncode == 0, f"vagrant {' '.join(args)}: exit {r.returncode}\n{(r.stdout + r.stderr)[-3000:]}"
        return r

    def wait_up(self) -> float:
        """Seconds the `up` took; the test fails here if it failed."""
        self.thread.join()
        assert self.up is not None, "vagrant up did not finish (timed out after 30 min)"
        assert self.up.returncode == 0, \
            f"vagrant up: exit {self.up.returncode}\n{(self.up.stdout + self.up.stderr)[-3000:]}"
        return SUMMARY["vagrant up (s)"]

    def destroy(self) -> None:
        """`destroy -f`, the box removed, and the box image this run uploaded to libvirt's
        pool (`box remove` leaves it: 1.2 GB a run); never a volume that was there before."""
        if self.destroyed:
            return
        self.thread.join()
        self.run("destroy", "-f", check=False, timeout=600)
        self.run("box", "remove", "--force", "spanprobe/appliance", check=False, timeout=300)
        for vol in box_volumes() - self.volumes_before:
            subprocess.run([*VIRSH, "vol-delete", "--pool", "default", vol], capture_output=True)
        self.destroyed = True
