"""systemd notification without libsystemd: one datagram to $NOTIFY_SOCKET (readiness,
and the watchdog's keep-alive)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

log = logging.getLogger("spanprobe")


def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


class Watchdog:
    """systemd's watchdog (WatchdogSec=): WATCHDOG=1 at half the interval systemd set in
    WATCHDOG_USEC, when WATCHDOG_PID is unset or names this process.

    Only the event loop calls `tick`, so a loop that stops making progress stops the
    pings, and systemd restarts the agent."""

    def __init__(self, env: dict[str, str], pid: int, clock: Callable[[], float] = time.monotonic,
                 send: Callable[[str, dict[str, str]], bool] = sd_notify):
        self.env = env
        self.clock = clock
        self.send = send
        self.every: float | None = None        # seconds between pings; None: no watchdog
        usec, for_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec and (not for_pid or for_pid == str(pid)):
            if usec.isdigit() and int(usec) > 0:
                self.every = int(usec) / 2e6
            else:
                log.warning("WATCHDOG_USEC=%.40r is not a positive number of microseconds: "
                            "no watchdog pings", usec)
        self.next = clock()

    def tick(self) -> None:
        if self.every is None:
            return
        now = self.clock()
        if now >= self.next:
            self.send("WATCHDOG=1", self.env)
            self.next = now + self.every
