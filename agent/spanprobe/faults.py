"""Isolation accounting: a failure while handling one event, connection or exchange is
counted by stage and logged without flooding the log.

Every byte the agent handles comes from processes it does not control, so a handler can
meet input nobody foresaw. The loop catches such a failure at the event's boundary and
goes on; here it is counted (`event_errors_<stage>` in the stats line) and logged once per
kind (stage + exception type) at WARNING with the traceback at DEBUG, then summarised at
most once a minute per kind with the number seen since.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("spanprobe")

# decode: a record the decoder choked on; assemble: a connection event; process: a process
# event (exec/fork/exit); build: an exchange -> span; apply: a request to the kernel side;
# budget: a CPU budget step (budget.py)
STAGES = ("decode", "assemble", "process", "build", "apply", "budget")
SUMMARY_EVERY_S = 60.0


class Faults:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 summary_every_s: float = SUMMARY_EVERY_S):
        self.clock = clock
        self.summary_every_s = summary_every_s
        self.counts: dict[str, int] = dict.fromkeys(STAGES, 0)
        # (stage, exception type) -> [seen since the last line, time of the last line]
        self._kinds: dict[tuple[str, str], list] = {}

    def record(self, stage: str, exc: BaseException) -> None:
        self.counts[stage] += 1
        kind = (stage, type(exc).__name__)
        seen = self._kinds.get(kind)
        if seen is None:
            self._kinds[kind] = [0, self.clock()]
            log.warning("%s stage failed (%s: %.200r); that input is dropped and the agent goes on; "
                        "more of this kind are summarised at most once a minute",
                        stage, kind[1], str(exc))
            log.debug("%s stage failure, traceback", stage, exc_info=exc)
            return
        seen[0] += 1
        self.summarise(kind)

    def summarise(self, only: tuple[str, str] | None = None, force: bool = False) -> None:
        """One line per kind with failures not yet logged, if its last line is a minute old
        (or force, at stop)."""
        now = self.clock()
        for kind, seen in self._kinds.items() if only is None else ((only, self._kinds[only]),):
            if seen[0] and (force or now - seen[1] >= self.summary_every_s):
                log.warning("%s stage: %d more %s failures in the last %.0f s",
                            kind[0], seen[0], kind[1], now - seen[1])
                seen[0], seen[1] = 0, now

    def counters(self) -> dict[str, int]:
        return {f"event_errors_{stage}": n for stage, n in self.counts.items()}
