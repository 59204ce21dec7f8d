"""Kernel timestamps (bpf_ktime_get_ns: CLOCK_MONOTONIC) to wall-clock nanoseconds."""

from __future__ import annotations

import time


class MonotonicToWall:
    """Offset between the two clocks, re-measured now and then to follow NTP slewing."""

    def __init__(self, refresh_s: float = 30.0):
        self.refresh_s = refresh_s
        self._next = 0.0
        self.offset = 0
        self.refresh()

    def refresh(self) -> None:
        # bracket the wall read by two monotonic reads; keep the tightest estimate
        spread = offset = 0
        for i in range(3):
            m1 = time.monotonic_ns()
            w = time.time_ns()
            m2 = time.monotonic_ns()
            if i == 0 or m2 - m1 < spread:
                spread, offset = m2 - m1, w - (m1 + m2) // 2
        self.offset = offset
        self._next = time.monotonic() + self.refresh_s

    def tick(self) -> None:
        if time.monotonic() >= self._next:
            self.refresh()

    def wall(self, mono_ns: int) -> int:
        return mono_ns + self.offset
