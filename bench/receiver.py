"""The OTLP receiver for the benchmark: the test tier's receiver (tests/support/receiver.py,
OTLP/HTTP protobuf on loopback), counting spans instead of keeping them.

Keeping every span as a dict, as the tests do, would cost the receiver more than the agent
at tens of thousands of spans per second, so `ingest` only counts. It runs as its own
process, so it can be pinned to a CPU and its CPU kept apart from the harness:

    python -m bench.receiver        prints "port N", then answers each "count" line on stdin
                                    with one JSON line {"spans", "server_spans", "exports",
                                    "cpu_s"}
"""

from __future__ import annotations

import json
import sys
import time

from tests.support.receiver import Receiver

SERVER = 2   # SpanKind SERVER in OTLP: one per request served; in-process instrumentation
             # may add INTERNAL spans (FastAPI's ASGI send spans), so requests are matched
             # against SERVER spans


class CountingReceiver(Receiver):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.server = 0
        # SERVER spans by their resource's service.name: the twins (bench/paired.py) are
        # one app under two names, and a phase must have traced the one it selected
        self.by_service: dict[str, int] = {}

    def ingest(self, req) -> None:
        n = server = 0
        by_service: dict[str, int] = {}
        for rs in req.resource_spans:
            here = 0
            for ss in rs.scope_spans:
                n += len(ss.spans)
                here += sum(1 for s in ss.spans if s.kind == SERVER)
            server += here
            if here:
                name = next((kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"), "")
                by_service[name] = by_service.get(name, 0) + here
        with self.lock:
            self.requests += 1
            self.count += n
            self.server += server
            for name, k in by_service.items():
                self.by_service[name] = self.by_service.get(name, 0) + k


def serve() -> None:
    r = CountingReceiver()
    r.start_http()
    print(f"port {r.http_port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            with r.lock:
                out = {"spans": r.count, "server_spans": r.server, "exports": r.requests,
                       "server_by_service": dict(r.by_service)}
            out["cpu_s"] = time.process_time()
            print(json.dumps(out), flush=True)
    r.stop()


class ReceiverProcess:
    """The harness's handle on a receiver process started through `Procs`."""

    def __init__(self, procs, cpu: int | None, tag: str = "receiver", idle: bool = False):
        self.procs = procs
        prefix = ["chrt", "--idle", "0"] if idle else []
        self.proc = procs.start(tag, [*prefix, sys.executable, "-m", "bench.receiver"], cpu=cpu, pipes=True)
        self.port = int(self._line("port ").split()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _line(self, prefix: str) -> str:
        line = self.proc.stdout.readline().decode()
        if not line.startswith(prefix):
            raise RuntimeError(f"receiver answered {line!r} (exit {self.proc.poll()}; "
                               f"log {self.proc.bench_log})")
        return line

    def counts(self) -> dict:
        self.proc.stdin.write(b"count\n")
        self.proc.stdin.flush()
        return json.loads(self._line("{"))

    def spans(self) -> int:
        """SERVER spans received so far."""
        return self.counts()["server_spans"]

    def spans_by_service(self) -> dict[str, int]:
        """SERVER spans received so far, by their resource's service.name."""
        return self.counts()["server_by_service"]

    def wait_until(self, at_least: int, timeout: float, quiet: float = 0.3,
                   stall: float | None = None) -> tuple[int, float]:
        """Poll the SERVER span count until `at_least` arrived and none more for `quiet` s,
        or nothing arrived for `stall` s, or `timeout`. Returns the count and when it last
        changed (seconds after the call)."""
        t0 = time.monotonic()
        last, last_change = self.spans(), t0
        while True:
            now = time.monotonic()
            if last >= at_least and now - last_change >= quiet:
                break
            if (stall is not None and now - last_change >= stall) or now - t0 >= timeout:
                break
            time.sleep(0.05)
            n = self.spans()
            if n != last:
                last, last_change = n, time.monotonic()
        return last, last_change - t0

    def stop(self) -> None:
        self.procs.stop(self.proc, timeout=5.0)


if __name__ == "__main__":
    serve()
