"""A guest frozen by the emulator is seen in seconds: a real kernel-matrix guest, idle with
its heartbeat running, is left alone for a while (no stall may be declared), then its vCPUs
are stopped through QEMU's monitor, which is what a TCG freeze looks like from outside (no
heartbeat, registers unchanged). matrix.boot must say so within seconds, not minutes."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

import matrix  # tests/kernels/matrix.py, beside this file
from tests.support.tcg import monitor, vcpus

pytestmark = pytest.mark.skipif(
    os.environ.get("SPANPROBE_KERNEL_MATRIX") != "1",
    reason="kernel tier: run it with `make test-kernels` (boots a QEMU guest)")

ALIVE_S = 20            # the idle guest must not be called frozen while it beats
DETECT_BUDGET_S = matrix.HEARTBEAT_SILENCE_S + matrix.REGISTER_SAMPLES * matrix.REGISTER_GAP_S + 8


@pytest.mark.timeout(900)
def test_a_stopped_guest_is_a_stall_in_seconds_and_a_beating_one_is_not(matrix_run, tmp_path):
    # matrix_run: the tier's matrix runs beside this guest, which is idle most of its minute
    if os.geteuid() != 0:
        pytest.fail("the kernel tier needs root (QEMU guests from the cached image)")
    manifest, _ = matrix.build()
    accel, _ = matrix.probe_accel(manifest)
    if accel != "tcg":
        pytest.fail(f"the stall detection is for TCG guests; this host boots them with {accel}")
    out = tmp_path / "guest"
    result: dict = {}

    def run():
        result["boot"] = matrix.boot(manifest["kernels"][0], manifest["disk"], accel, out,
                                     "spanprobe.idle=1", timeout=600)
        result["returned"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    console, beats = out / "console.log", out / matrix.HEARTBEAT
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline and t.is_alive():
        if (console.exists() and "SPANPROBE-IDLE" in console.read_text(errors="replace")
                and beats.exists() and len(beats.read_text().split()) >= 3):
            break
        time.sleep(1)
    assert t.is_alive(), f"the guest ended before it was idle: {result.get('boot')}"
    assert "SPANPROBE-IDLE" in console.read_text(errors="replace"), "the guest never became idle"

    t.join(ALIVE_S)
    assert t.is_alive(), f"a beating idle guest was stopped: {result.get('boot')}"
    sock = re.search(r"unix:(\S+?),server", (out / "qemu-cmd.txt").read_text()).group(1)
    registers = monitor(Path(sock), "info registers -a")
    assert set(matrix.vcpu_rips(registers)) == {str(i) for i in range(int(vcpus(accel)))}, registers[:400]

    monitor(Path(sock), "stop")
    stopped = time.monotonic()
    t.join(DETECT_BUDGET_S + 30)
    assert not t.is_alive(), f"no stall seen {DETECT_BUDGET_S + 30:.0f} s after the vCPUs stopped"
    rc, _, _, stall = result["boot"]
    took = result["returned"] - stopped
    print(f"stopped guest seen as frozen after {took:.1f} s: {stall}")
    assert stall and "no heartbeat" in stall, (rc, stall)
    assert took <= DETECT_BUDGET_S, f"{took:.1f} s to see a frozen guest (budget {DETECT_BUDGET_S:.0f} s)"
