"""Export: a bounded queue and one thread, so a slow or absent receiver never reaches
the event loop. Every span dropped or failed is counted."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("spanprobe.export")


class LineConsoleExporter(SpanExporter):
    """One readable line per span (the SDK's ConsoleSpanExporter prints ~40 lines)."""

    def __init__(self, out=None):
        self.out = out or sys.stdout

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for s in spans:
            a = s.attributes
            kind = s.kind.name
            parent = f"{s.parent.span_id:016x}" if s.parent else "-"
            ms = (s.end_time - s.start_time) / 1e6
            lines.append(
                f"span {kind:<6} {s.resource.attributes.get('service.name')}: {s.name} "
                f"-> {a.get('http.response.status_code', '-')} {ms:.2f}ms "
                f"trace={s.context.trace_id:032x} span={s.context.span_id:016x} parent={parent}\n")
        self.out.write("".join(lines))
        self.out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _wire_http_exporter(url: str, timeout: float) -> SpanExporter:
    """The SDK's OTLP/HTTP exporter (its transport, retries, TLS and headers settings) with
    spanprobe's encoder (otlp_wire: several times cheaper than the SDK's)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from .otlp_wire import SpanEncoder

    class WireHTTPSpanExporter(OTLPSpanExporter):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._spanprobe_encoder = SpanEncoder()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self._shutdown:
                return SpanExportResult.FAILURE
            try:
                data = self._spanprobe_encoder.encode(spans)
            except Exception as exc:
                log.warning("encoding %d spans failed: %s", len(spans), exc)
                return SpanExportResult.FAILURE
            result = self._client.export(data)
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    exporter = WireHTTPSpanExporter(endpoint=url, timeout=timeout)
    # _client.export(bytes) is a private hook of the SDK versions in requirements/constraints.txt
    # (tests/unit/test_otlp_wire.py sends through it); another version keeps the SDK's own path
    if not callable(getattr(getattr(exporter, "_client", None), "export", None)):
        from importlib.metadata import version
        log.warning("opentelemetry-exporter-otlp-proto-http %s has no _client.export: spans are "
                    "encoded by the SDK (slower); requirements/constraints.txt pins a version that has it",
                    version("opentelemetry-exporter-otlp-proto-http"))
        exporter = OTLPSpanExporter(endpoint=url, timeout=timeout)
    return exporter


def _wire_grpc_exporter(endpoint: str, insecure: bool, timeout: float) -> SpanExporter:
    """The SDK's OTLP/gRPC exporter with spanprobe's encoder: the request is parsed back from
    our bytes (protobuf's C parser, a small part of what the SDK's Python encoder costs)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from .otlp_wire import SpanEncoder

    class WireGRPCSpanExporter(OTLPSpanExporter):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._spanprobe_encoder = SpanEncoder()

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(self._spanprobe_encoder.encode(data))

    return WireGRPCSpanExporter(endpoint=endpoint, insecure=insecure, timeout=timeout)


def make_exporters(settings) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    endpoint = settings["export.otlp_endpoint"]
    timeout = settings["export.timeout_s"]
    if endpoint:
        if settings["export.otlp_protocol"] == "grpc":
            exporters.append(_wire_grpc_exporter(endpoint, endpoint.startswith("http://"), timeout))
        else:
            url = endpoint if endpoint.rstrip("/").count("/") > 2 else endpoint.rstrip("/") + "/v1/traces"
            exporters.append(_wire_http_exporter(url, timeout))
    if settings["export.console"]:
        exporters.append(LineConsoleExporter())
    return exporters


class ExportQueue:
    def __init__(self, exporters: list[SpanExporter], queue_size: int = 20000,
                 batch_size: int = 512, max_attempts: int = 3, flush_interval: float = 0.2):
        self.exporters = exporters
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.flush_interval = flush_interval
        self.queue: deque[ReadableSpan] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.counts = {"spans_queued": 0, "spans_exported": 0, "spans_dropped_queue_full": 0,
                       "spans_export_failed": 0, "export_calls": 0}
        self.thread = threading.Thread(target=self._run, name="spanprobe-export", daemon=True)
        self.thread.start()

    # hot path: called from the event loop
    def submit(self, spans: list[ReadableSpan]) -> None:
        room = self.queue_size - len(self.queue)
        if room < len(spans):
            self.counts["spans_dropped_queue_full"] += len(spans) - max(room, 0)
            spans = spans[:max(room, 0)]
        self.queue.extend(spans)
        self.counts["spans_queued"] += len(spans)
        if len(self.queue) >= self.batch_size:
            self.wake.set()

    def _take(self) -> list[ReadableSpan]:
        batch = []
        q = self.queue
        while q and len(batch) < self.batch_size:
            batch.append(q.popleft())
        return batch

    def _run(self) -> None:
        backoff = 0.0
        while True:
            if not self.stopping:     # stopping: drain at once, no interval, no backoff
                self.wake.wait(self.flush_interval if not backoff else backoff)
                self.wake.clear()
            if self.stopping and not self.queue:
                return
            while self.queue:
                batch = self._take()
                ok = self._export(batch)
                if ok:
                    backoff = 0.0
                else:
                    backoff = min(max(backoff * 2, 0.5), 30.0)
                    break
                if self.stopping and time.monotonic() > self._deadline:
                    self.counts["spans_export_failed"] += len(self.queue)
                    self.queue.clear()
                    return

    def _export(self, batch: list[ReadableSpan]) -> bool:
        all_ok = True
        for exporter in self.exporters:
            for attempt in range(self.max_attempts):
                self.counts["export_calls"] += 1
                try:
                    result = exporter.export(batch)
                except Exception as exc:  # an exporter bug must not kill the thread
                    log.warning("exporter %s raised %s", type(exporter).__name__, exc)
                    result = SpanExportResult.FAILURE
                if result == SpanExportResult.SUCCESS:
                    break
                if self.stopping or attempt + 1 == self.max_attempts:
                    all_ok = False
                    break
                time.sleep(min(0.25 * 2 ** attempt, 2.0))
        if all_ok:
            self.counts["spans_exported"] += len(batch)
        else:
            self.counts["spans_export_failed"] += len(batch)
            log.warning("export of %d spans failed; counted in spans_export_failed", len(batch))
        return all_ok

    def shutdown(self, timeout: float = 3.0) -> None:
        self._deadline = time.monotonic() + timeout
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.counts["spans_export_failed"] += len(self.queue)
            self.queue.clear()

        def close_all():
            for exporter in self.exporters:
                try:
                    exporter.shutdown()
                except Exception:
                    pass
        # an exporter stuck on a dead receiver must not hold up the agent's exit
        closer = threading.Thread(target=close_all, daemon=True)
        closer.start()
        closer.join(0.5)
