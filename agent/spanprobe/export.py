"""Export: a bounded queue and one thread, so a slow or absent receiver never reaches
the event loop. Every span handed to the queue ends in exactly one counter:
spans_queued + spans_dropped_queue_full = what was handed over, and once stopped
spans_queued = spans_exported + spans_export_failed + spans_abandoned_at_stop."""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import deque
from typing import Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .otlp_senders import ACCEPTED, Attempt, grpc_exporter, http_exporter

log = logging.getLogger("spanprobe.export")

FIRST_RETRY_DELAY_S = 0.5     # then doubled per retry, +-20 % jitter, up to max_retry_delay


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


def make_exporters(settings) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    endpoint = settings["export.otlp_endpoint"]
    timeout = settings["export.timeout_s"]
    if endpoint:
        if settings["export.otlp_protocol"] == "grpc":
            exporters.append(grpc_exporter(endpoint, endpoint.startswith("http://"), timeout))
        else:
            url = endpoint if endpoint.rstrip("/").count("/") > 2 else endpoint.rstrip("/") + "/v1/traces"
            exporters.append(http_exporter(url, timeout))
    if settings["export.console"]:
        exporters.append(LineConsoleExporter())
    return exporters


def export_ports(settings) -> frozenset[int]:
    """The server port of each OTLP endpoint the agent exports to: where an accepted
    connection may be the agent's own (router.HostSockets)."""
    endpoint = settings["export.otlp_endpoint"]
    if not endpoint:
        return frozenset()
    url = urlsplit(endpoint)                     # checked by config: http(s), a valid port
    return frozenset({url.port or (443 if url.scheme == "https" else 80)})


def retry_delay(retry: int, hint: float | None, ceiling: float) -> float:
    """How long to wait before a batch's next attempt: the receiver's own delay
    (Retry-After, RetryInfo) when it gave one, else FIRST_RETRY_DELAY_S doubled per retry
    with +-20 % jitter (agents that failed together do not come back together); never
    more than `ceiling` (export.max_retry_delay_s)."""
    if hint is not None:
        return min(max(hint, 0.0), ceiling)
    return min(FIRST_RETRY_DELAY_S * 2 ** min(retry, 30) * random.uniform(0.8, 1.2), ceiling)


class ExportQueue:
    """Spans wait here for the export thread, in batches of `batch_size`.

    A batch the receiver answers "later" (HTTP 429/502/503/504, a retryable gRPC code, no
    connection, a timeout) stays at the head and is tried again after `retry_delay`, for as
    long as the agent runs: meanwhile new spans queue up to `queue_size`, and only then are
    they dropped (spans_dropped_queue_full). A refusal (another 4xx, a permanent gRPC code)
    fails the batch at once; a failure that says neither (a non-OTLP exporter) is tried
    `max_attempts` times. At stop, what is queued gets one attempt per batch until the
    deadline; what is left then, in flight included, is counted in spans_abandoned_at_stop.
    """

    def __init__(self, exporters: list[SpanExporter], queue_size: int = 20000,
                 batch_size: int = 512, max_attempts: int = 3, flush_interval: float = 0.2,
                 max_retry_delay: float = 60.0):
        self.exporters = exporters
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self.queue: deque[ReadableSpan] = deque()
        self.wake = threading.Event()        # a full batch is waiting: send before the interval
        self.stopped = threading.Event()     # set by shutdown: ends any back-off wait at once
        self._settle = threading.Lock()      # a batch's outcome is counted once: by the thread or by shutdown
        self._in_flight: list[ReadableSpan] = []
        self._given_up = False               # shutdown counted what the thread held; it counts nothing more
        self._closed = False                 # shut down: nothing sends what is submitted now
        self._deadline = float("inf")
        self.counts = {"spans_queued": 0, "spans_exported": 0, "spans_dropped_queue_full": 0,
                       "spans_export_failed": 0, "spans_abandoned_at_stop": 0,
                       "export_calls": 0, "export_retries": 0, "export_throttled": 0}
        self.thread = threading.Thread(target=self._run, name="spanprobe-export", daemon=True)
        self.thread.start()

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    # hot path: called from the event loop; never waits on the export thread
    def submit(self, spans: list[ReadableSpan]) -> None:
        counts = self.counts
        if self._closed:
            counts["spans_queued"] += len(spans)
            counts["spans_abandoned_at_stop"] += len(spans)
            return
        room = self.queue_size - len(self.queue)
        if room < len(spans):
            counts["spans_dropped_queue_full"] += len(spans) - max(room, 0)
            spans = spans[:max(room, 0)]
        self.queue.extend(spans)
        counts["spans_queued"] += len(spans)
        if len(self.queue) >= self.batch_size:
            self.wake.set()

    def _take(self) -> list[ReadableSpan]:
        batch = []
        q = self.queue
        while q and len(batch) < self.batch_size:
            batch.append(q.popleft())
        return batch

    def _run(self) -> None:
        while not self.stopped.is_set():
            woken = self.wake.wait(self.flush_interval)
            self.wake.clear()
            # woken by a full batch: full batches only. The rest joins the next one (or
            # goes at the interval): sending it at once made every other request a
            # remainder, and a request costs the agent ~1 ms of CPU in the SDK's transport
            # whatever its size (README, Cost per span)
            self._drain(full_only=woken and not self.stopping)
        self._drain()

    def _drain(self, full_only: bool = False) -> None:
        while self.queue and (not full_only or len(self.queue) >= self.batch_size):
            with self._settle:
                if self._given_up:
                    return
                batch = self._in_flight = self._take()
            outcome = self._deliver(batch)
            with self._settle:
                if self._given_up:
                    return
                self.counts[outcome] += len(batch)
                self._in_flight = []

    def _deliver(self, batch: list[ReadableSpan]) -> str:
        """Send one batch to every exporter; the name of the counter its spans end in."""
        pending = list(self.exporters)
        retry = unknown = 0
        while True:
            if self.stopping and time.monotonic() >= self._deadline:
                return "spans_abandoned_at_stop"
            if retry:
                self.counts["export_retries"] += 1
            failures = []
            for exporter in list(pending):
                attempt = self._attempt(exporter, batch)
                if attempt.ok:
                    pending.remove(exporter)
                else:
                    failures.append(attempt)
            if not pending:
                if retry:
                    log.info("export accepted again after %d retries", retry)
                return "spans_exported"
            reason = failures[0].reason
            if any(f.throttled for f in failures):
                self.counts["export_throttled"] += 1
            if any(f.retryable is False for f in failures):
                log.warning("export of %d spans refused (%s); counted in spans_export_failed",
                            len(batch), reason)
                return "spans_export_failed"
            if any(f.retryable is None for f in failures):
                unknown += 1
                if unknown >= self.max_attempts:
                    log.warning("export of %d spans failed %d times (%s); counted in spans_export_failed",
                                len(batch), unknown, reason)
                    return "spans_export_failed"
            if self.stopping:
                log.warning("export of %d spans still failing at stop (%s); counted in "
                            "spans_export_failed", len(batch), reason)
                return "spans_export_failed"
            hints = [f.retry_after for f in failures if f.retry_after is not None]
            delay = retry_delay(retry, max(hints) if hints else None, self.max_retry_delay)
            (log.warning if retry == 0 else log.debug)(
                "export of %d spans: %s; retrying in %.1f s%s (the queue keeps spans meanwhile; "
                "retries counted in export_retries)", len(batch), reason, delay,
                " as the receiver asked" if hints else "")
            retry += 1
            self.stopped.wait(delay)

    def _attempt(self, exporter: SpanExporter, batch: list[ReadableSpan]) -> Attempt:
        self.counts["export_calls"] += 1
        try:
            attempt = getattr(exporter, "attempt", None)
            if attempt is not None:
                return attempt(batch)
            if exporter.export(batch) == SpanExportResult.SUCCESS:
                return ACCEPTED
            return Attempt(False, reason=f"{type(exporter).__name__} returned FAILURE")
        except Exception as exc:  # an exporter bug must not kill the thread
            log.warning("exporter %s raised %s", type(exporter).__name__, exc)
            return Attempt(False, reason=f"{type(exporter).__name__} raised {exc}")

    def shutdown(self, timeout: float = 3.0) -> None:
        self._deadline = time.monotonic() + timeout
        self.stopped.set()
        self.wake.set()
        self.thread.join(timeout)
        with self._settle:
            if self.thread.is_alive():   # stuck in a send: what it holds is counted here, once
                left = len(self._in_flight) + len(self.queue)
                self.counts["spans_abandoned_at_stop"] += left
                self.queue.clear()
                self._in_flight = []
                self._given_up = True
                log.warning("export still blocked after %.1f s at stop: %d spans counted in "
                            "spans_abandoned_at_stop", timeout, left)
            self._closed = True

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


def export_queue(settings, exporters: list[SpanExporter] | None = None) -> ExportQueue:
    """The queue the settings describe, for their exporters unless others are given."""
    return ExportQueue(make_exporters(settings) if exporters is None else exporters,
                       settings["export.queue_size"],
                       settings["export.batch_size"], settings["export.max_attempts"],
                       max_retry_delay=settings["export.max_retry_delay_s"])
