"""Unit tests of the export queue and the one-line console exporter (spanprobe.export).

The queue's thread is real; tests wait on conditions (never fixed sleeps longer than
needed) and every hanging fake exporter is released at the end.
"""

from __future__ import annotations

import io
import threading
import time

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from spanprobe.export import ExportQueue, LineConsoleExporter


def wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Recording(SpanExporter):
    def __init__(self):
        self.batches: list[list] = []
        self.shut = False

    def export(self, spans):
        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.shut = True


class Failing(Recording):
    def export(self, spans):
        self.batches.append(list(spans))
        return SpanExportResult.FAILURE


class Raising(Recording):
    def __init__(self, times: int):
        super().__init__()
        self.times = times

    def export(self, spans):
        self.batches.append(list(spans))
        if len(self.batches) <= self.times:
            raise ConnectionError("receiver down")
        return SpanExportResult.SUCCESS


class Hanging(Recording):
    """Blocks in export (and in shutdown) until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans):
        self.batches.append(list(spans))
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.release.wait(30)


@pytest.fixture
def queues():
    made: list[ExportQueue] = []
    hanging: list[Hanging] = []

    def make(exporters, **kw) -> ExportQueue:
        hanging.extend(e for e in exporters if isinstance(e, Hanging))
        q = ExportQueue(exporters, **kw)
        made.append(q)
        return q

    yield make
    for h in hanging:
        h.release.set()
    for q in made:
        if not q.stopping:
            q.shutdown(timeout=1.0)


def test_batches_by_batch_size(queues):
    rec = Recording()
    q = queues([rec], batch_size=2, flush_interval=0.01)
    q.submit(list(range(5)))
    assert wait_for(lambda: q.counts["spans_exported"] == 5)
    assert rec.batches == [[0, 1], [2, 3], [4]]
    assert q.counts["spans_queued"] == 5
    assert q.counts["export_calls"] == 3
    assert q.counts["spans_dropped_queue_full"] == 0
    assert q.counts["spans_export_failed"] == 0


def test_a_full_batch_wakes_the_thread_before_the_flush_interval(queues):
    rec = Recording()
    q = queues([rec], batch_size=3, flush_interval=30)
    q.submit([1, 2])
    time.sleep(0.05)
    assert rec.batches == []                  # below batch size: waits for the interval
    q.submit([3])
    assert wait_for(lambda: rec.batches == [[1, 2, 3]], timeout=2)


def test_partial_batch_flushed_after_the_interval(queues):
    rec = Recording()
    q = queues([rec], batch_size=100, flush_interval=0.02)
    q.submit(["a"])
    assert wait_for(lambda: rec.batches == [["a"]], timeout=2)


def test_shutdown_flushes_what_is_queued(queues):
    rec = Recording()
    q = queues([rec], batch_size=100, flush_interval=30)
    q.submit([1, 2, 3])
    t0 = time.monotonic()
    q.shutdown(timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert rec.batches == [[1, 2, 3]]
    assert q.counts["spans_exported"] == 3
    assert rec.shut is True
    assert not q.thread.is_alive()


def test_shutdown_with_a_failing_exporter_does_not_wait_out_the_backoff(queues):
    bad = Failing()
    q = queues([bad], batch_size=2, max_attempts=1, flush_interval=0.01)
    q.submit([1, 2, 3, 4, 5, 6])
    assert wait_for(lambda: q.counts["spans_export_failed"] >= 2)    # now backing off
    t0 = time.monotonic()
    q.shutdown(timeout=2.0)
    assert time.monotonic() - t0 < 0.5
    assert q.counts["spans_export_failed"] == 6
    assert q.counts["spans_exported"] == 0
    assert not q.thread.is_alive()


def test_queue_full_drops_are_counted(queues):
    rec = Recording()
    q = queues([rec], queue_size=3, batch_size=100, flush_interval=30)
    q.submit([1, 2])
    q.submit([3, 4])
    q.submit([5])
    assert list(q.queue) == [1, 2, 3]
    assert q.counts["spans_queued"] == 3
    assert q.counts["spans_dropped_queue_full"] == 2
    q.shutdown(timeout=2.0)
    assert rec.batches == [[1, 2, 3]]


def test_failures_counted_after_max_attempts(queues):
    bad = Failing()
    q = queues([bad], batch_size=3, max_attempts=2, flush_interval=0.01)
    q.submit([1, 2, 3])
    assert wait_for(lambda: q.counts["spans_export_failed"] == 3)
    assert bad.batches == [[1, 2, 3], [1, 2, 3]]      # tried max_attempts times
    assert q.counts["export_calls"] == 2
    assert q.counts["spans_exported"] == 0
    assert len(q.queue) == 0


def test_exporter_exception_is_a_failed_attempt_not_a_dead_thread(queues):
    flaky = Raising(times=1)
    q = queues([flaky], batch_size=2, max_attempts=2, flush_interval=0.01)
    q.submit([1, 2])
    assert wait_for(lambda: q.counts["spans_exported"] == 2)
    assert flaky.batches == [[1, 2], [1, 2]]
    assert q.counts["spans_export_failed"] == 0

    always = Raising(times=10**6)
    q2 = queues([always], batch_size=1, max_attempts=1, flush_interval=0.01)
    q2.submit(["x"])
    assert wait_for(lambda: q2.counts["spans_export_failed"] == 1)
    assert q2.thread.is_alive()


def test_one_failing_exporter_fails_the_batch(queues):
    good, bad = Recording(), Failing()
    q = queues([good, bad], batch_size=1, max_attempts=1, flush_interval=0.01)
    q.submit(["s"])
    assert wait_for(lambda: q.counts["spans_export_failed"] == 1)
    assert good.batches == [["s"]]
    assert q.counts["spans_exported"] == 0


def test_slow_exporter_never_blocks_submit(queues):
    slow = Hanging()
    q = queues([slow], queue_size=50, batch_size=5, flush_interval=0.01)
    q.submit(list(range(5)))
    assert slow.entered.wait(2)                # the thread is stuck in export
    worst = 0.0
    for i in range(100):
        t0 = time.perf_counter()
        q.submit([i] * 10)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05
    assert len(q.queue) == 50
    assert q.counts["spans_dropped_queue_full"] == 1000 - 50
    assert q.counts["spans_queued"] == 5 + 50


def test_shutdown_returns_within_its_timeout_when_the_exporter_hangs(queues):
    stuck = Hanging()
    q = queues([stuck], batch_size=2, flush_interval=0.01)
    q.submit([1, 2])
    assert stuck.entered.wait(2)
    q.submit([3, 4, 5])
    t0 = time.monotonic()
    q.shutdown(timeout=0.3)
    elapsed = time.monotonic() - t0
    # 0.3 s for the thread, at most 0.5 s for exporter.shutdown
    assert 0.3 <= elapsed < 1.2
    assert q.counts["spans_export_failed"] == 3    # what was still queued
    assert len(q.queue) == 0
    assert q.counts["spans_exported"] == 0


# ---- console ----

def span(name, kind, *, status=None, parent=None, start=1_000_000_000, end=1_001_500_000,
         service="shop") -> ReadableSpan:
    attrs = {"http.response.status_code": status} if status is not None else {}
    return ReadableSpan(
        name=name, context=SpanContext(0x1, 0x2, False, TraceFlags(1)),
        parent=SpanContext(0x1, parent, False, TraceFlags(1)) if parent else None,
        resource=Resource({"service.name": service}), attributes=attrs, kind=kind,
        start_time=start, end_time=end)


def test_console_line_format():
    out = io.StringIO()
    result = LineConsoleExporter(out).export([
        span("GET /users/{id}", SpanKind.SERVER, status=200, parent=0xABC),
        span("POST /pay", SpanKind.CLIENT, end=1_000_000_000),
    ])
    assert result == SpanExportResult.SUCCESS
    assert out.getvalue() == (
        "span SERVER shop: GET /users/{id} -> 200 1.50ms "
        "trace=00000000000000000000000000000001 span=0000000000000002 parent=0000000000000abc\n"
        "span CLIENT shop: POST /pay -> - 0.00ms "
        "trace=00000000000000000000000000000001 span=0000000000000002 parent=-\n")


def test_console_pads_short_kind_names():
    out = io.StringIO()
    LineConsoleExporter(out).export([span("x", SpanKind.INTERNAL), span("y", SpanKind.PRODUCER)])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("span INTERNAL shop: x -> - ")
    assert lines[1].startswith("span PRODUCER shop: y -> - ")
    out2 = io.StringIO()
    LineConsoleExporter(out2).export([span("z", SpanKind.SERVER)])
    assert out2.getvalue().startswith("span SERVER shop: z")


def test_console_empty_batch_writes_nothing():
    out = io.StringIO()
    assert LineConsoleExporter(out).export([]) == SpanExportResult.SUCCESS
    assert out.getvalue() == ""
