"""Fixed-rate (open-loop) HTTP load: latency at a set request rate, without coordinated
omission. wrk has no rate limit and wrk2 is not packaged by Debian, hence this.

    python -m bench.loadgen --url http://127.0.0.1:8000/users/1 --rate 1500 --duration 10

Request i is due at start + i/rate whatever happened before. A pool of connections sends
each due request on the first idle connection (or queues it until one is idle), and its
latency is counted from when it was *due* (to the scheduler's 1 ms tick), so a stalled
server shows up in the tail instead of silently slowing the sender. HTTP/1.1 keep-alive; a `Connection: close` response
(gunicorn's sync worker) makes that connection reconnect. Plain asyncio protocols (on
uvloop when installed), no task per request, so that one core can offer several thousand
requests/s next to the agent. Prints one JSON line: requests due, sent, completed, errors,
achieved rate, latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from urllib.parse import urlsplit


# The scheduler wakes every TICK seconds and sends what fell due since (a shorter sleep is a
# busy loop on uvloop, whose timers have 1 ms resolution). A request is timed from the tick
# that sent it or queued it for a busy pool, so the tick adds no latency of its own, while
# waiting for a free connection (a stalled server) still counts.
TICK = 0.001


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


class Client(asyncio.Protocol):
    """One connection: at most one request in flight (no pipelining)."""

    def __init__(self, gen: "Generator"):
        self.gen = gen
        self.transport = None
        self.buf = bytearray()
        self.need: int | None = None     # bytes of the current response, once its head is read
        self.status = 0
        self.close_after = False
        self.due: float | None = None     # the in-flight request's due time

    def connection_made(self, transport):
        self.transport = transport
        self.gen.idle_client(self)

    def data_received(self, data):
        self.buf += data
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    self.close_after = value.strip() == b"close"
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            del self.buf[:self.need]
            self.need = None
            self.gen.response(self)

    def connection_lost(self, exc):
        self.gen.lost(self)


class Generator:
    def __init__(self, url: str, rate: float, duration: float, connections: int, timeout: float):
        u = urlsplit(url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.raw = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUser-Agent: spanprobe-bench\r\n"
                    f"Accept: */*\r\n\r\n").encode()
        self.host, self.port = u.hostname, u.port or 80
        self.rate, self.duration, self.connections, self.timeout = rate, duration, connections, timeout
        self.total = int(rate * duration)
        self.idle: list[Client] = []
        self.busy: set[Client] = set()
        self.backlog: collections.deque[float] = collections.deque()
        self.latencies: list[float] = []
        self.counts = {"sent": 0, "completed": 0, "errors": 0, "non_2xx": 0, "connects": 0,
                       "connect_errors": 0}
        self.open = 0                    # connections open or being opened
        self.finishing = False

    # ---- connections ----
    # Opened on demand (a request due and no idle connection), never ahead: gunicorn's sync
    # worker blocks reading the first connection it accepts, so an idle pre-opened one would
    # stall it. At most `connections` open at once.
    def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.open += 1

        async def go():
            try:
                await loop.create_connection(lambda: Client(self), self.host, self.port)
                self.counts["connects"] += 1
            except OSError:
                self.counts["connect_errors"] += 1
                self.open -= 1
                await asyncio.sleep(0.01)
                if self.backlog and not self.finishing:
                    self.connect()
        loop.create_task(go())

    def idle_client(self, c: Client) -> None:
        if self.backlog:
            self.send(c, self.backlog.popleft())
        else:
            self.idle.append(c)

    def lost(self, c: Client) -> None:
        self.open -= 1
        if c.due is not None:          # the server hung up on a request in flight
            self.counts["errors"] += 1
            c.due = None
        self.busy.discard(c)
        if c in self.idle:
            self.idle.remove(c)
        if self.backlog and not self.finishing and self.open < self.connections:
            self.connect()

    # ---- requests ----
    def send(self, c: Client, due: float) -> None:
        c.due = due
        self.busy.add(c)
        self.counts["sent"] += 1
        c.transport.write(self.raw)

    def due(self, due: float) -> None:
        if self.idle:
            self.send(self.idle.pop(), due)
        else:
            self.backlog.append(due)
            if self.open < self.connections:
                self.connect()

    def response(self, c: Client) -> None:
        self.latencies.append(time.perf_counter() - c.due)
        self.counts["completed"] += 1
        if not 200 <= c.status < 300:
            self.counts["non_2xx"] += 1
        c.due = None
        self.busy.discard(c)
        if c.close_after:
            c.close_after = False
            c.transport.close()        # connection_lost reconnects
        else:
            self.idle_client(c)

    def expire(self, now: float) -> None:
        for c in [c for c in self.busy if c.due is not None and now - c.due > self.timeout]:
            c.transport.abort()        # counted as an error by connection_lost

    async def run(self) -> dict:
        start = time.perf_counter()
        issued = 0
        last_expire = start
        while issued < self.total:
            now = time.perf_counter()
            due_now = min(self.total, int((now - start) * self.rate) + 1)
            while issued < due_now:
                self.due(now)      # due at or before this tick: timed from the tick (see TICK)
                issued += 1
            if now - last_expire > 0.1:
                self.expire(now)
                last_expire = now
            await asyncio.sleep(TICK)
        deadline = time.perf_counter() + self.timeout
        while (self.backlog or self.busy) and time.perf_counter() < deadline:
            self.expire(time.perf_counter())
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        self.finishing = True
        self.counts["errors"] += len(self.backlog)       # never sent: no connection free in time
        for c in list(self.idle) + list(self.busy):
            c.transport.abort()
        await asyncio.sleep(0.01)
        ms = sorted(x * 1000 for x in self.latencies)
        return {"due": self.total, **self.counts, "rate_target": self.rate, "elapsed_s": elapsed,
                "rate_achieved": self.counts["completed"] / elapsed if elapsed > 0 else 0.0,
                "latency_ms": {"p50": percentile(ms, 50), "p90": percentile(ms, 90),
                               "p99": percentile(ms, 99), "max": ms[-1] if ms else None}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one request may take")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.duration <= 0 or a.connections < 1 or a.timeout <= 0:
        p.error("--rate, --duration, --connections and --timeout must be positive")
    try:
        from uvloop import run as loop_run
    except ImportError:
        loop_run = asyncio.run
    gen = Generator(a.url, a.rate, a.duration, a.connections, a.timeout)
    print(json.dumps(loop_run(gen.run())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
