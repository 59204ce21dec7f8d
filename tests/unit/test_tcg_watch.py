"""How a VM with no heartbeat is judged frozen by the emulator (tests.support.tcg): from
register dumps of QEMU's monitor, a real one of an idle 5.10 guest included."""

from __future__ import annotations

from pathlib import Path

from tests.support.tcg import FreezeWatch, host_times, vcpu_states

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


def feed(watch: FreezeWatch, dumps: list[str], gap: float = 3.0, ran_per_s: float | None = None,
         waited_per_s: float = 0.0) -> list[str | None]:
    """Samples `gap` s apart; with ran_per_s, each of QEMU's two vCPU threads ran (and
    waited for a CPU) that many seconds per second meanwhile."""
    def host(t: float):
        return None if ran_per_s is None else {tid: (t * ran_per_s, t * waited_per_s) for tid in (101, 102)}
    return [watch.sample(vcpu_states(d), i * gap, host(i * gap)) for i, d in enumerate(dumps)]


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


# ---- starvation: a host thread waiting for a CPU does not move its vCPU either
def test_a_vcpu_whose_thread_waited_for_a_cpu_is_starved_not_frozen():
    watch = FreezeWatch(30)
    # a VM at low priority on a busy host: each vCPU thread 2% of a CPU, waiting the rest
    verdicts = feed(watch, [BUSY] * 30, ran_per_s=0.02, waited_per_s=0.95)     # 87 s
    assert verdicts == [None] * 30
    assert watch.starved > 0


def test_a_starved_vcpu_that_ran_long_enough_without_moving_is_frozen():
    # 2 threads x 7.5%: 6 s of running (FreezeWatch.STARVED_RUN of the window) after 40 s
    verdicts = feed(FreezeWatch(30), [BUSY] * 20, ran_per_s=0.075, waited_per_s=0.9)
    first = next(i for i, v in enumerate(verdicts) if v)
    assert first * 3 >= 40 and "CPU#0" in verdicts[first]


def test_a_spinning_vcpu_and_a_stopped_one_are_frozen_whatever_the_host_did():
    spinning = feed(FreezeWatch(30), [BUSY] * 12, ran_per_s=0.5, waited_per_s=0.4)
    # `stop` on the monitor: the vCPU threads sleep, bar a few wake-ups
    stopped = feed(FreezeWatch(30), [BUSY] * 12, ran_per_s=0.001, waited_per_s=0.002)
    assert spinning[:10] == stopped[:10] == [None] * 10 and spinning[10] and stopped[10]


def test_only_threads_seen_at_both_ends_of_the_window_count():
    watch = FreezeWatch(30)
    # the thread seen at the start is gone at the end (a reboot, a renamed thread): the
    # one seen now alone waited; nothing compared, so no excuse of starvation
    verdicts = [watch.sample(vcpu_states(BUSY), i * 3.0, {101 if i < 5 else 102: (0.01 * i, 2.0 * i)})
                for i in range(12)]
    assert verdicts[10] and watch.starved == 0


def test_host_times_reads_the_vcpu_threads_schedstat(tmp_path):
    for tid, comm, line in (("10", "qemu-system-x86", "9000000000 9000000000 9"),
                            ("11", "CPU 0/TCG", "2000000000 500000000 7"),
                            ("12", "CPU 1/TCG", "1000000000 1500000000 3")):
        (tmp_path / "10" / "task" / tid).mkdir(parents=True)
        (tmp_path / "10" / "task" / tid / "comm").write_text(comm + "\n")
        (tmp_path / "10" / "task" / tid / "schedstat").write_text(line + "\n")
    (tmp_path / "10" / "task" / "13").mkdir()            # a thread gone between listing and reading
    assert host_times(10, proc=tmp_path) == {11: (2.0, 0.5), 12: (1.0, 1.5)}
    assert host_times(99, proc=tmp_path) is None
