"""Quick checks (no root, no QEMU) of how the kernel matrix tells a guest frozen by the
emulator from one that is slow or looping, both ways it looks: the kernel's soft-lockup
reports (tests.support.tcg.soft_lockup_stall, on a real console of a 5.10 guest whose two vCPUs stopped under
multi-threaded TCG) and the registers read through QEMU's monitor once the guest's
heartbeat went silent (matrix.frozen_vcpus; the real boot is test_frozen_guest.py)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
import matrix  # tests/kernels/matrix.py, beside this file
from tests.support.tcg import STALL_REPORTS, soft_lockup_stall

STALLED = (HERE / "data" / "console-5.10-tcg-stall.txt").read_text()


def _first_reports(text: str, n: int) -> str:
    """The console up to (not including) the n+1-th soft-lockup report."""
    starts = [m.start() for m in re.finditer(r"^.*soft lockup", text, re.M)]
    return text if len(starts) <= n else text[:starts[n]]


def test_frozen_vcpus_are_a_stall_naming_cpu_and_address():
    why = soft_lockup_stall(STALLED)
    assert why is not None
    assert "CPU#0 at syscall_exit_to_user_mode+0xb3/0x140" in why
    assert "CPU#1 at syscall_exit_to_user_mode+0xb3/0x140" in why


def test_no_lockup_report_is_no_stall():
    assert soft_lockup_stall(_first_reports(STALLED, 0)) is None
    assert "cell tracepoint: ready" in _first_reports(STALLED, 0)


def test_fewer_reports_than_the_threshold_are_no_stall():
    # two reports per CPU (~56 s): a TCG guest under load can be that slow and recover
    assert soft_lockup_stall(_first_reports(STALLED, 2 * (STALL_REPORTS - 1))) is None
    assert soft_lockup_stall(_first_reports(STALLED, 2 * STALL_REPORTS)) is not None


def test_a_cpu_that_moves_between_reports_is_no_stall():
    # the same console with CPU#0's and CPU#1's last reports at other addresses: a loop
    # in the kernel, which the agent could cause, must stay a failure, never a retry
    head, sep, tail = STALLED.rpartition("soft lockup - CPU#0")
    head2, sep2, tail2 = tail.rpartition("soft lockup - CPU#1")
    moved = (head + sep + head2.replace("syscall_exit_to_user_mode+0xb3", "exit_to_user_mode_prepare+0x61", 1)
             + sep2 + tail2.replace("syscall_exit_to_user_mode+0xb3", "exit_to_user_mode_prepare+0x61", 1))
    assert moved.count("exit_to_user_mode_prepare+0x61") == 2
    assert soft_lockup_stall(moved) is None


# ---- the heartbeat path: `info registers -a` of a real idle 2-vCPU 5.10 guest (QEMU 7.2)
REGISTERS = (HERE / "data" / "registers-5.10-idle.txt").read_text()


def test_every_vcpu_rip_is_read_from_the_monitor_output():
    assert matrix.vcpu_rips(REGISTERS) == {"0": "ffffffff8471250e", "1": "ffffffff8471250e"}


def test_unchanged_registers_over_every_sample_are_a_stall_naming_each_vcpu():
    rips = matrix.vcpu_rips(REGISTERS)
    why = matrix.frozen_vcpus([rips] * matrix.REGISTER_SAMPLES)
    assert why is not None and "no heartbeat" in why
    assert "CPU#0 at RIP ffffffff8471250e" in why and "CPU#1 at RIP ffffffff8471250e" in why


def test_a_vcpu_that_moves_in_any_sample_is_no_stall():
    rips = matrix.vcpu_rips(REGISTERS)
    moved = dict(rips, **{"1": "ffffffff81000010"})
    for i in range(matrix.REGISTER_SAMPLES):
        samples = [rips] * matrix.REGISTER_SAMPLES
        samples[i] = moved
        assert matrix.frozen_vcpus(samples) is None, i


def test_too_few_or_empty_samples_are_no_stall():
    rips = matrix.vcpu_rips(REGISTERS)
    assert matrix.frozen_vcpus([rips] * (matrix.REGISTER_SAMPLES - 1)) is None
    assert matrix.frozen_vcpus([{}] * matrix.REGISTER_SAMPLES) is None
    assert matrix.frozen_vcpus([rips, {"0": rips["0"]}, rips]) is None


# ---- a panic on an int3 that is not in memory: a real 6.12 console (QEMU 7.2, MTTCG)
STALE_INT3 = (HERE / "data" / "console-6.12-tcg-stale-int3.txt").read_text()


def test_an_int3_oops_with_no_int3_in_memory_is_the_emulators_fault():
    why = matrix.tcg_stale_int3(STALE_INT3)
    assert why is not None and "__schedule+0x411/0xbe0" in why and "the byte there is e9" in why


def test_an_int3_oops_over_a_real_int3_stays_a_failure():
    real = STALE_INT3.replace("00 00 e9 <03> 01", "00 00 cc <03> 01")
    assert real != STALE_INT3
    assert matrix.tcg_stale_int3(real) is None


def test_a_console_without_an_int3_oops_is_no_stall():
    assert matrix.tcg_stale_int3(STALLED) is None
    assert matrix.tcg_stale_int3(STALE_INT3.replace("Oops: int3", "Oops: general protection fault")) is None
