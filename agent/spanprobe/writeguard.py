"""The agent's own bpf(2) map writes, kept from being preempted.

The kernel runs a map update or delete made through bpf(2) with the CPU's
`bpf_prog_active` raised and only migration disabled. On a preemptible kernel (Debian's
7.x: PREEMPT_LAZY) the writer can be preempted there, and every tracepoint or kprobe
program that runs on that CPU meanwhile is skipped. Seen in the kernel matrix on 7.2 (one
vCPU): the agent, woken by a service's first outbound connection, wrote that process's
asyncio layout (Session.set_python) and was preempted; the service's write of the request
on that connection was skipped (`kernel_prog_misses_sp_enter`), and its CLIENT span lost.

So each write runs with the writing thread at SCHED_FIFO priority 1, which no ordinary
task preempts, and returns to the thread's own policy right after. Where that is refused
(no CAP_SYS_NICE and an RLIMIT_RTPRIO of 0, systemd's RestrictRealtime= or a system call filter
denying @resources, as spanprobe's own unit does), the writes go on unguarded: said once at
INFO, and counted (`kernel_map_writes_unguarded`). A run the kernel does skip is warned
about as a loss (losses.py), as every other one is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger("spanprobe.loader")

REALTIME = (os.SCHED_FIFO, os.SCHED_RR)


class WriteGuard:
    """`with guard():` around one map write. The scheduler calls are injectable (tests)."""

    def __init__(self, get_policy=os.sched_getscheduler, get_param=os.sched_getparam,
                 set_policy=os.sched_setscheduler):
        self._get_policy, self._get_param, self._set_policy = get_policy, get_param, set_policy
        self.refused: str | None = None     # why SCHED_FIFO was refused, once it was
        self.unguarded = 0                  # writes made without it

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        restore = None
        if self.refused is None:
            try:
                policy = self._get_policy(0)
                if policy not in REALTIME:      # already real-time (started so): nothing to do
                    restore = (policy, self._get_param(0))
                    self._set_policy(0, os.SCHED_FIFO, os.sched_param(1))
            except OSError as exc:
                restore = None
                self.refused = exc.strerror or str(exc)
                log.info("map writes may be preempted: SCHED_FIFO refused (%s; it needs CAP_SYS_NICE "
                         "or an RLIMIT_RTPRIO of 1, no RestrictRealtime= and sched_setscheduler allowed); "
                         "on a preemptible kernel a preempted write makes the kernel skip tracing on its "
                         "CPU, counted as kernel_prog_misses", self.refused)
        if self.refused is not None:
            self.unguarded += 1
        try:
            yield
        finally:
            if restore is not None:
                self._set_policy(0, *restore)
