"""How a VM with no heartbeat is judged frozen by the emulator (tests.support.tcg): from
register dumps of QEMU's monitor, a real one of an idle 5.10 guest included."""

from __future__ import annotations

from pathlib import Path

from tests.support.tcg import FreezeWatch, vcpu_states

IDLE = (Path(__file__).resolve().parents[1] / "kernels" / "data" / "registers-5.10-idle.txt").read_text()
BUSY = IDLE.replace("HLT=1", "HLT=0")       # the same vCPUs, not halted


def test_states_are_each_vcpus_instruction_and_whether_it_is_halted():
    assert vcpu_states(IDLE) == {"0": ("ffffffff8471250e", True), "1": ("ffffffff8471250e", True)}
    assert vcpu_states(BUSY) == {"0": ("ffffffff8471250e", False), "1": ("ffffffff8471250e", False)}
    assert vcpu_states("") == {}


def test_before_long_mode_the_instruction_pointer_is_eip():
    real_mode = ("CPU#0\nEAX=00000000 EBX=00000000 ECX=0000b79d EDX=00000000\n"
                 "EIP=0000b7b9 EFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n")
    assert vcpu_states(real_mode) == {"0": ("0000b7b9", True)}


def feed(watch: FreezeWatch, dumps: list[str], gap: float = 3.0) -> list[str | None]:
    return [watch.sample(vcpu_states(d), i * gap) for i, d in enumerate(dumps)]


def test_an_idle_guest_is_never_frozen():
    assert feed(FreezeWatch(30), [IDLE] * 40) == [None] * 40


def test_a_vcpu_running_in_place_for_the_whole_window_is_frozen_once_the_window_is_over():
    verdicts = feed(FreezeWatch(30), [BUSY] * 12)        # 0, 3, ... 33 s
    assert verdicts[:10] == [None] * 10                   # up to 27 s
    assert "CPU#0 at ffffffff8471250e" in verdicts[10] and "CPU#1" in verdicts[10]
    assert "30 s" in verdicts[10]


def test_a_vcpu_that_moves_or_halts_starts_the_window_again():
    moved = BUSY.replace("RIP=ffffffff8471250e", "RIP=ffffffff84712600")
    dumps = [BUSY] * 9 + [moved] + [BUSY] * 9 + [IDLE] + [BUSY] * 9
    assert feed(FreezeWatch(30), dumps) == [None] * len(dumps)


def test_one_vcpu_frozen_while_the_other_idles_is_frozen():
    half = BUSY.replace("HLT=0", "HLT=1", 1)             # CPU#0 halted, CPU#1 stuck
    verdict = next(v for v in feed(FreezeWatch(30), [half] * 12) if v)
    assert "CPU#1" in verdict and "CPU#0" not in verdict
