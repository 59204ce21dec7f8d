"""The real agent exporting to collectors that misbehave: one that accepts connections and
never answers (stopped mid-send), and one that answers 429 with Retry-After for a while.
Whatever happens, the final counters account for every span built."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.support.procs import Agent, App

OUTCOMES = ("spans_exported", "spans_dropped_queue_full", "spans_export_failed", "spans_abandoned_at_stop")


def assert_every_span_accounted(c: dict) -> None:
    assert c["spans_built"] == sum(c[k] for k in OUTCOMES), c
    assert c["spans_queued"] + c["spans_dropped_queue_full"] == c["spans_built"], c


class SilentCollector:
    """Accepts TCP connections and never answers (a hung collector)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)      # held open, never read or answered

    def close(self):
        self.closing = True
        self.sock.close()
        for c in self.accepted:
            c.close()


class ThrottlingCollector:
    """OTLP/HTTP: 429 with `Retry-After: <retry_after>` until `busy_s` after the first request,
    then 200 and the spans kept. Records when each request came and what it got."""

    def __init__(self, busy_s: float, retry_after: int):
        self.busy_s, self.retry_after = busy_s, retry_after
        self.first: float | None = None
        self.requests: list[tuple[float, int]] = []
        self.span_ids: list[bytes] = []
        self.services: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                now = time.monotonic()
                with collector.lock:
                    collector.first = collector.first or now
                    busy = now - collector.first < collector.busy_s
                    collector.requests.append((now, 429 if busy else 200))
                    if not busy:
                        req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                        for rs in req.resource_spans:
                            name = next((kv.value.string_value for kv in rs.resource.attributes
                                         if kv.key == "service.name"), "")
                            for ss in rs.scope_spans:
                                for s in ss.spans:
                                    collector.span_ids.append(s.span_id)
                                    collector.services.append(name)
                self.send_response(429 if busy else 200)
                if busy:
                    self.send_header("Retry-After", str(collector.retry_after))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def traffic(app: App, n: int) -> None:
    session = requests.Session()
    for i in range(n):
        assert session.get(f"{app.url}/users/{i}", timeout=10).status_code == 200


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_stop_while_the_collector_hangs_counts_the_batch_in_flight(tmp, protocol):
    collector = SilentCollector()
    app = App("stdlib-http-server", tmp, service=f"hung-{protocol.split('/')[0]}")
    try:
        agent = Agent(["--port", str(app.port), "--otlp-protocol", protocol,
                       "--otlp-endpoint", f"http://127.0.0.1:{collector.port}"], tmp,
                      env={"SPANPROBE_EXPORT_TIMEOUT_S": "60", "SPANPROBE_EXPORT_BATCH_SIZE": "50",
                           "SPANPROBE_EXPORT_QUEUE_SIZE": "120", "SPANPROBE_STATS_INTERVAL_S": "0.5"})
        traffic(app, 300)
        # the export thread is blocked in its first send (a 60 s timeout) while spans pile up
        deadline = time.monotonic() + 20
        while not (agent.stats().get("spans_built") == 300 and agent.stats().get("export_calls", 0) >= 1):
            assert time.monotonic() < deadline, agent.stderr[-2000:]
            time.sleep(0.2)
        rc = agent.stop()
        assert rc == 0, agent.stderr[-2000:]
        assert agent.stop_seconds < 5.0, f"stop took {agent.stop_seconds:.1f}s"
        c = agent.final_counters()
        assert c["spans_built"] == 300
        assert c["spans_exported"] == 0
        assert c["spans_abandoned_at_stop"] >= 50              # the batch in flight at least
        assert c["spans_dropped_queue_full"] > 0               # the queue was full, and said so
        assert_every_span_accounted(c)
        assert "Traceback" not in agent.stderr
    finally:
        app.stop()
        collector.close()


def test_a_throttling_collector_loses_nothing_and_its_retry_after_is_honoured(tmp):
    retry_after = 2
    collector = ThrottlingCollector(busy_s=5.0, retry_after=retry_after)
    app = App("stdlib-http-server", tmp, service="throttled")
    try:
        agent = Agent(["--port", str(app.port), "--otlp-protocol", "http/protobuf",
                       "--otlp-endpoint", f"http://127.0.0.1:{collector.port}"], tmp,
                      env={"SPANPROBE_EXPORT_BATCH_SIZE": "20", "SPANPROBE_EXPORT_TIMEOUT_S": "1",
                           "SPANPROBE_EXPORT_MAX_ATTEMPTS": "1", "SPANPROBE_STATS_INTERVAL_S": "1"})
        traffic(app, 100)
        deadline = time.monotonic() + 40
        while len(collector.span_ids) < 100:
            assert time.monotonic() < deadline, (len(collector.span_ids), agent.stderr[-2000:])
            time.sleep(0.2)
        assert agent.stop() == 0
        c = agent.final_counters()
        assert c["spans_built"] == 100
        assert c["spans_exported"] == 100
        assert len(set(collector.span_ids)) == 100 and set(collector.services) == {"throttled"}
        assert c["spans_export_failed"] == c["spans_dropped_queue_full"] == c["spans_abandoned_at_stop"] == 0
        throttled = [t for t, status in collector.requests if status == 429]
        assert c["export_throttled"] == len(throttled) >= 2
        assert c["export_retries"] >= len(throttled)
        # after a 429 the agent waited the Retry-After before sending again (not a timeout's worth)
        times = [t for t, _ in collector.requests]
        for t429 in throttled:
            later = [t for t in times if t > t429]
            assert later and later[0] - t429 >= retry_after - 0.1, (t429, later[:1])
        assert_every_span_accounted(c)
    finally:
        app.stop()
        collector.close()
