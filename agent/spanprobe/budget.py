"""A CPU budget for the agent and its kernel programs together (budget.max_cpu_percent).

What it costs to trace grows with the traffic: the programs run in the traced services'
own system calls, and the agent's work is per record. With a budget, the agent measures
the two once a second, its own CPU time (every thread's) and the programs' run time as
the kernel accounts it, and sets the share of connections the kernel side leaves out.
Whole connections, from a request boundary on (spanprobe.bpf.c, `shed`): never half an
exchange. The kernel counts each connection it sheds and each request it leaves out
(`kernel_connections_shed`, `kernel_requests_shed`). When the load falls the share falls
with it, and tracing returns to every connection.

The percentage is of one CPU, as `top` and systemd's CPUQuota= count it: 25 means a
quarter of one core's time, whatever the number of cores. The floor is what the hooks
cost while every connection is shed (a lookup and a return per system call): a budget
below it sheds everything and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("spanprobe")

EVERY_S = 1.0              # how often the budget is measured and the share set
MAX_GROWTH = 2.0           # the kept share at most doubles per step when under budget
MIN_STEP_UP = 0.05         # ... and grows by at least this much (from nothing, too)
REGROW_BELOW = 0.9         # under this fraction of the budget, tracing grows back


@dataclass
class Reading:
    """Cumulative CPU of the agent (seconds) and of its programs (nanoseconds, or None
    when the kernel does not account them), at a monotonic time (seconds)."""
    at: float
    agent_s: float
    programs_ns: int | None


def next_share(kept: float, used_percent: float, budget_percent: float) -> float:
    """The share of connections to keep next, from the share kept and the CPU it cost.
    Over budget: scaled down in proportion (cost follows traced connections). Well under
    it: grown back, at most doubled per step, so a burst cannot swing it to all at once."""
    if used_percent > budget_percent:
        return max(0.0, kept * budget_percent / used_percent)
    if kept >= 1.0 or used_percent >= budget_percent * REGROW_BELOW:
        return kept
    ratio = MAX_GROWTH if used_percent <= 0 else min(MAX_GROWTH, budget_percent / used_percent)
    return min(1.0, max(kept * ratio, kept + MIN_STEP_UP))


class CpuBudget:
    """Measure, then set the share; `step` is called from the agent's loop."""

    def __init__(self, budget_percent: float):
        self.budget = budget_percent
        self.kept = 1.0
        self.last: Reading | None = None
        self.used_percent = 0.0          # the last window's agent + programs, % of one CPU
        self.shedding = False
        self.floor_warned = False

    @property
    def permille(self) -> int:
        """Thousandths of connections to shed, as the kernel side takes them."""
        return min(1000, max(0, round((1.0 - self.kept) * 1000)))

    def step(self, now: Reading) -> None:
        """A new reading: the share to shed (`permille`) follows what the last window cost."""
        last, self.last = self.last, now
        if last is None or now.at <= last.at:
            return
        cpu_s = now.agent_s - last.agent_s
        if now.programs_ns is not None and last.programs_ns is not None:
            # a program detached in between takes its total with it: never below nothing
            cpu_s += max(0, now.programs_ns - last.programs_ns) / 1e9
        self.used_percent = 100.0 * cpu_s / (now.at - last.at)
        before = self.permille
        self.kept = next_share(self.kept, self.used_percent, self.budget)
        self._say(before, self.permille)

    def _say(self, before: int, after: int) -> None:
        if after and not self.shedding:
            self.shedding = True
            log.warning("CPU budget: %.1f%% of a CPU used, over max_cpu_percent %.1f%%: shedding "
                        "%.1f%% of connections from their next request (counted: "
                        "kernel_connections_shed, kernel_requests_shed)",
                        self.used_percent, self.budget, after / 10)
        elif not after and self.shedding:
            self.shedding = False
            self.floor_warned = False
            log.info("CPU budget: %.1f%% of a CPU used, within max_cpu_percent %.1f%%: every "
                     "connection traced again", self.used_percent, self.budget)
        if after == 1000 and before == 1000 and self.used_percent > self.budget and not self.floor_warned:
            self.floor_warned = True
            log.warning("CPU budget: every connection shed and still %.1f%% of a CPU used: "
                        "max_cpu_percent %.1f%% is below what the hooks and the agent cost idle",
                        self.used_percent, self.budget)

    def counters(self) -> dict[str, object]:
        return {"budget_cpu_percent_used": round(self.used_percent, 1),
                "budget_shed_permille": self.permille}
