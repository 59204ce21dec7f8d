"""A QEMU guest frozen by the emulator, seen from outside: QEMU's human monitor on a unix
socket, the vCPUs' registers through it, and the guest kernel's soft-lockup reports.

Multi-threaded TCG (QEMU 7.2) sometimes leaves a vCPU running a stale translation of kernel
text that code patching has changed (a static key flipped when a probe is attached): it then
spins at one address until killed. The kernel matrix (tests/kernels/matrix.py) has its
guest's heartbeat besides; the image and fleet VMs (tests/ansible/vm.py) have not, and judge
by the registers alone (FreezeWatch)."""

from __future__ import annotations

import re
import socket
from pathlib import Path


def vcpus(accel: str) -> str:
    """QEMU's -smp for a test guest: two vCPUs under KVM, one under emulation. Measured
    here (2 host cores, two guests at once in every VM tier): a one-vCPU TCG guest does the
    same work in ~40% less host CPU (an image build 268 s against 438 s), two vCPU threads
    per guest only contend for the two cores, and an idle two-vCPU guest still costs ~40%
    of a core (each vCPU's timer ticks, emulated). One vCPU also cannot run a translation
    another vCPU has just made stale (the freezes and the Oops this module's docstring
    describes); the freeze watch stays, for a guest that stops all the same."""
    return "2" if accel == "kvm" else "1"


def monitor(sock: Path, command: str, timeout: float = 10.0) -> str:
    """One command on QEMU's human monitor (a unix socket); its output without the prompt."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("monitor closed")
            buf += chunk
        s.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    text = buf.decode(errors="replace").replace("\r", "")
    return text[:-len("(qemu) ")] if text.endswith("(qemu) ") else text


# `info registers -a`: "CPU#0", then "RIP=... RFL=... [flags] CPL=0 II=0 A20=1 SMM=0 HLT=1"
# (EIP/EFL before the guest is in long mode)
_STATE = re.compile(r"^CPU#(\d+)\n(?:(?!CPU#).*\n)*?[RE]IP=([0-9a-f]+) [RE]FL=[0-9a-f]+ \[[^\]]*\] "
                    r"CPL=\d II=\d A20=\d SMM=\d HLT=(\d)", re.M)


def vcpu_states(registers: str) -> dict[str, tuple[str, bool]]:
    """{vCPU number: (instruction pointer, halted)} from `info registers -a`."""
    return {cpu: (ip, hlt == "1") for cpu, ip, hlt in _STATE.findall(registers)}


# A soft-lockup report: "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [python3:214]",
# then, before the next report, the kernel address the CPU was interrupted at ("RIP: 0010:sym+off/len").
_LOCKUP = re.compile(r"soft lockup - CPU#(\d+) stuck for \d+s!(?:(?!soft lockup).)*?RIP: 0010:(\S+)", re.S)
STALL_REPORTS = 3


def soft_lockup_stall(console_text: str) -> str | None:
    """The guest's vCPUs frozen by the emulator, not merely slow: each soft-lockup report of a
    CPU (one every ~28 s) names the same kernel address, STALL_REPORTS times in a row.

    Seen here with 5.10 under QEMU 7.2 multi-threaded TCG (one boot in several): both vCPUs
    stopped for 20 minutes at the jump-label site in syscall_exit_to_user_mode, registers
    unchanged between reports, the kernel's own bytes there a plain NOP. Our reading (not
    proven): the kernel backing up over an int3 that code patching (a static key flipped when
    a probe is attached) had already removed, and the vCPU still executing a stale translation
    of it. A kernel loop would move; these do not. Returns what was seen, or None."""
    last: dict[str, list[str]] = {}
    for cpu, rip in _LOCKUP.findall(console_text):
        last.setdefault(cpu, []).append(rip)
    frozen = [f"CPU#{cpu} at {rips[-1]}" for cpu, rips in sorted(last.items())
              if len(rips) >= STALL_REPORTS and len(set(rips[-STALL_REPORTS:])) == 1]
    if not frozen:
        return None
    return (f"vCPUs frozen by TCG ({', '.join(frozen)}, {STALL_REPORTS} soft-lockup reports "
            "in a row at the same address)")


class FreezeWatch:
    """Judges a guest with no heartbeat from register samples taken every few seconds: it is
    frozen when some vCPU, not halted, has stayed at one instruction in every sample for
    `still_s` seconds. A vCPU that runs moves between samples (timer interrupts alone break
    any loop), an idle one is halted; only a stopped or stale-translation vCPU does neither.
    A vCPU whose host thread waited for a CPU does not move either: with `host` (the run and
    run-queue wait times of QEMU's vCPU threads, host_times), a still vCPU is let off as
    starved (a busy host, a VM at low priority), not frozen, while its threads have together
    run less than STARVED_RUN of `still_s` and waited for a CPU at least half the time since
    it stopped moving; `starved` counts the samples let off, and it stays watched. A stale
    translation spins, so it runs; a vCPU stopped through the monitor sleeps, so it neither
    runs nor waits: both are still seen.

    Feed it with `sample(states, now, host)`: the verdict, or None."""

    STARVED_RUN = 0.2

    def __init__(self, still_s: float = 30.0):
        self.still_s = still_s
        self.since: dict[str, tuple[str, float]] = {}    # vCPU -> (its instruction, first seen there)
        self.host_at: dict[float, dict[int, tuple[float, float]]] = {}   # sample time -> host_times then
        self.starved = 0                                   # samples of a still vCPU let off as starved

    def sample(self, states: dict[str, tuple[str, bool]], now: float,
               host: dict[int, tuple[float, float]] | None = None) -> str | None:
        if host is not None:
            self.host_at[now] = host
        stuck, stuck_since = [], now
        for cpu, (ip, halted) in sorted(states.items()):
            seen = self.since.get(cpu)
            if halted or seen is None or seen[0] != ip:
                self.since[cpu] = (ip, now) if not halted else ("", now)
                continue
            if now - seen[1] >= self.still_s:
                stuck.append(f"CPU#{cpu} at {ip}")
                stuck_since = min(stuck_since, seen[1])
        for cpu in set(self.since) - set(states):
            del self.since[cpu]
        oldest = min((t for _, t in self.since.values()), default=now)
        for t in [t for t in self.host_at if t < oldest]:
            del self.host_at[t]
        if not stuck:
            return None
        if host is not None and stuck_since in self.host_at:
            then = self.host_at[stuck_since]
            both = host.keys() & then.keys()       # a thread that ended or began meanwhile says nothing
            ran = sum(host[t][0] - then[t][0] for t in both)
            waited = sum(host[t][1] - then[t][1] for t in both)
            if both and ran < self.STARVED_RUN * self.still_s and waited >= 0.5 * (now - stuck_since):
                self.starved += 1
                return None
        return (f"vCPU frozen by TCG ({', '.join(stuck)}: not halted, at the same instruction in every "
                f"register sample for {self.still_s:.0f} s)")


def host_times(pid: int, proc: Path = Path("/proc")) -> dict[int, tuple[float, float]] | None:
    """{thread id: (seconds it has run on a CPU, seconds it has waited, runnable, for one)}
    for a QEMU's vCPU threads (named "CPU 0/TCG", or "ALL CPUs/TCG" with one thread, when
    QEMU runs with `-name ...,debug-threads=on`), from their schedstat; None once it is gone."""
    out = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            if not task.joinpath("comm").read_text().strip().endswith("/TCG"):
                continue
            fields = (task / "schedstat").read_text().split()
        except OSError:          # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
    return out
