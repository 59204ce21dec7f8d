"""Quick checks (no root, no QEMU) of how the kernel matrix tells a guest frozen by the
emulator from one that is slow or looping: matrix.tcg_stall on a real console of a 5.10
guest whose two vCPUs stopped under multi-threaded TCG (tests/kernels/data/)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
import matrix  # tests/kernels/matrix.py, beside this file

STALLED = (HERE / "data" / "console-5.10-tcg-stall.txt").read_text()


def _first_reports(text: str, n: int) -> str:
    """The console up to (not including) the n+1-th soft-lockup report."""
    starts = [m.start() for m in re.finditer(r"^.*soft lockup", text, re.M)]
    return text if len(starts) <= n else text[:starts[n]]


def test_frozen_vcpus_are_a_stall_naming_cpu_and_address():
    why = matrix.tcg_stall(STALLED)
    assert why is not None
    assert "CPU#0 at syscall_exit_to_user_mode+0xb3/0x140" in why
    assert "CPU#1 at syscall_exit_to_user_mode+0xb3/0x140" in why


def test_no_lockup_report_is_no_stall():
    assert matrix.tcg_stall(_first_reports(STALLED, 0)) is None
    assert "cell tracepoint: ready" in _first_reports(STALLED, 0)


def test_fewer_reports_than_the_threshold_are_no_stall():
    # two reports per CPU (~56 s): a TCG guest under load can be that slow and recover
    assert matrix.tcg_stall(_first_reports(STALLED, 2 * (matrix.STALL_REPORTS - 1))) is None
    assert matrix.tcg_stall(_first_reports(STALLED, 2 * matrix.STALL_REPORTS)) is not None


def test_a_cpu_that_moves_between_reports_is_no_stall():
    # the same console with CPU#0's and CPU#1's last reports at other addresses: a loop
    # in the kernel, which the agent could cause, must stay a failure, never a retry
    head, sep, tail = STALLED.rpartition("soft lockup - CPU#0")
    head2, sep2, tail2 = tail.rpartition("soft lockup - CPU#1")
    moved = (head + sep + head2.replace("syscall_exit_to_user_mode+0xb3", "exit_to_user_mode_prepare+0x61", 1)
             + sep2 + tail2.replace("syscall_exit_to_user_mode+0xb3", "exit_to_user_mode_prepare+0x61", 1))
    assert moved.count("exit_to_user_mode_prepare+0x61") == 2
    assert matrix.tcg_stall(moved) is None
