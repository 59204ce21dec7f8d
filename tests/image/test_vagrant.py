"""`vagrant up` with the built box (libvirt, QEMU driver, user-mode NIC on 127.0.0.1), the
demo's spans in the journal as the Vagrantfile's comment says, then `vagrant destroy -f`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from image_helpers import REPO, RESULTS
from vm import free_port  # noqa: E402  (tests/ansible/vm.py)

pytestmark = pytest.mark.timeout(3600)


def start_libvirt() -> None:
    """libvirtd and virtlogd by hand: PID 1 here is not systemd."""
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)
    for _ in range(50):
        if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("libvirtd did not answer on qemu:///system")


def test_vagrant_up_shows_spans_then_destroy(image):
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is missing: scripts/dev.sh test-image installs vagrant and vagrant-libvirt")
    start_libvirt()
    work = RESULTS / "vagrant"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, VAGRANT_CWD=str(REPO), VAGRANT_DOTFILE_PATH=str(work / ".vagrant"),
               VAGRANT_HOME=str(work / "home"), VAGRANT_DEFAULT_PROVIDER="libvirt",
               SPANPROBE_BOX=str(image["box"]), SPANPROBE_VAGRANT_SSH_PORT=str(free_port()),
               VAGRANT_CHECKPOINT_DISABLE="1")

    def vagrant(*args, timeout=1800, check=True):
        r = subprocess.run(["vagrant", *args], env=env, capture_output=True, text=True, timeout=timeout)
        (work / f"vagrant-{args[0]}.log").open("a").write(r.stdout + r.stderr)
        if check:
            assert r.returncode == 0, f"vagrant {' '.join(args)}: exit {r.returncode}\n{(r.stdout + r.stderr)[-3000:]}"
        return r

    try:
        t0 = time.monotonic()
        vagrant("up", "--provider=libvirt")
        print(f"\nvagrant up: {time.monotonic() - t0:.0f} s")
        deadline = time.monotonic() + 300
        spans = ""
        while time.monotonic() < deadline:
            spans = vagrant("ssh", "-c", "sudo journalctl -u spanprobe -o cat --no-pager | grep '^span' | tail",
                            check=False, timeout=120).stdout
            if "GET /checkout" in spans and "inventory" in spans:
                break
            time.sleep(5)
        assert "GET /checkout" in spans, spans
    finally:
        vagrant("destroy", "-f", check=False, timeout=600)
        vagrant("box", "remove", "--force", "spanprobe/appliance", check=False, timeout=300)
