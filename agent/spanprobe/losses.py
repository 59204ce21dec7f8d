"""Say so when the kernel side loses data: a warning with the counts, rate-limited.

Lost events are otherwise only a number in the stats line. Each warning gives what was
lost since the previous one and what it cost: the gaps the assembler found on
connections and the exchanges and responses it dropped rather than pair across them
(streams.Assembler.gap)."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("spanprobe")

# What the kernel side or the buffer lost: a change in any of them is warned about.
LOSSES = ("kernel_events_lost", "perf_events_lost", "kernel_read_faults", "kernel_active_map_full",
          "kernel_prog_misses", "kernel_ring_records_unreadable")
# What the losses cost, reported with them.
COSTS = ("gaps_lost_events", "gaps_read_faults", "exchanges_dropped_gap", "responses_dropped_gap")


class LossReport:
    """Polled from the agent's loop: reads the counters at most every `check_every`
    seconds (a read costs a map lookup per counter) and warns at most every `warn_every`."""

    def __init__(self, check_every: float = 1.0, warn_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.check_every = check_every
        self.warn_every = warn_every
        self.clock = clock
        self.next_check = 0.0
        self.next_warn = 0.0
        self.reported: dict[str, int] = {}     # counter -> value at the last warning
        self.warnings = 0

    def poll(self, read: Callable[[], dict[str, object]]) -> bool:
        """True when a warning was logged now."""
        now = self.clock()
        if now < self.next_check or now < self.next_warn:
            return False
        self.next_check = now + self.check_every
        counters = read()
        delta = {k: int(counters.get(k, 0)) - self.reported.get(k, 0) for k in LOSSES + COSTS}
        if not any(delta[k] > 0 for k in LOSSES):
            return False
        self.reported = {k: int(counters.get(k, 0)) for k in LOSSES + COSTS}
        self.next_warn = now + self.warn_every
        self.warnings += 1
        log.warning("kernel side lost data since the last report: %s; cost: %s (totals in the stats line;"
                    " a bigger ring_buffer_pages or less load on the agent's CPU helps)",
                    " ".join(f"{k}=+{delta[k]}" for k in LOSSES if delta[k]),
                    " ".join(f"{k}=+{delta[k]}" for k in COSTS))
        return True
