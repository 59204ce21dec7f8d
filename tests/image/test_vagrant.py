"""`vagrant up` with the built box (libvirt, QEMU driver, user-mode NIC on 127.0.0.1), the
demo's spans in the journal as the Vagrantfile's comment says, then `vagrant destroy -f`.
The `up` itself starts in the background with the first boot of test_image.py
(vagrant_run.py, the `vagrant_up` fixture); this test waits for it."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(3600)


def test_vagrant_up_shows_spans_then_destroy(vagrant_up):
    if vagrant_up is None:
        pytest.fail("vagrant is missing: scripts/dev.sh test-image installs vagrant and vagrant-libvirt")
    try:
        print(f"\nvagrant up: {vagrant_up.wait_up():.0f} s")
        deadline = time.monotonic() + 300
        spans = ""
        while time.monotonic() < deadline:
            spans = vagrant_up.run("ssh", "-c", "sudo journalctl -u spanprobe -o cat --no-pager | grep '^span' | tail",
                                   check=False, timeout=120).stdout
            if "GET /checkout" in spans and "inventory" in spans:
                break
            time.sleep(5)
        assert "GET /checkout" in spans, spans
    finally:
        vagrant_up.destroy()
