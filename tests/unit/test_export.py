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

from spanprobe.export import FIRST_RETRY_DELAY_S, ExportQueue, LineConsoleExporter, export_queue, retry_delay
from spanprobe.otlp_senders import ACCEPTED, Attempt


def wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def assert_accounted(q: ExportQueue, handed: int) -> None:
    """Once stopped, every span handed to the queue is in exactly one outcome counter."""
    c = q.counts
    assert c["spans_queued"] + c["spans_dropped_queue_full"] == handed, c
    assert c["spans_queued"] == (c["spans_exported"] + c["spans_export_failed"]
                                 + c["spans_abandoned_at_stop"]), c


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


def test_a_wake_by_a_full_batch_sends_full_batches_and_keeps_the_rest_for_the_next(queues):
    """A remainder is not sent at once after a full batch: it joins the next batch, or goes
    at the interval. (Sent at once, every other request was a remainder: ~280 spans a
    request instead of 512 under a steady load, each request ~1 ms of the agent's CPU.)"""
    rec = Recording()
    q = queues([rec], batch_size=3, flush_interval=30)
    q.submit([1, 2, 3, 4])
    assert wait_for(lambda: rec.batches == [[1, 2, 3]], timeout=2)
    time.sleep(0.1)
    assert rec.batches == [[1, 2, 3]]          # 4 waits
    q.submit([5, 6])
    assert wait_for(lambda: rec.batches == [[1, 2, 3], [4, 5, 6]], timeout=2)
    q.submit([7])
    q.shutdown(timeout=2.0)                    # and at stop, everything goes
    assert rec.batches == [[1, 2, 3], [4, 5, 6], [7]]


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
    # the batch in flight and what was still queued
    assert q.counts["spans_abandoned_at_stop"] == 5
    assert q.counts["spans_export_failed"] == 0
    assert len(q.queue) == 0
    assert q.counts["spans_exported"] == 0
    assert_accounted(q, handed=5)


class Answering(Recording):
    """An exporter with attempt(): answers from a script of Attempts (the last repeats),
    recording when each attempt came."""

    def __init__(self, *answers: Attempt):
        super().__init__()
        self.answers = list(answers)
        self.times: list[float] = []

    def attempt(self, spans):
        self.batches.append(list(spans))
        self.times.append(time.monotonic())
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def export(self, spans):
        raise AssertionError("the queue uses attempt() when an exporter has it")


LATER = Attempt(False, retryable=True, throttled=True, reason="HTTP 429")


def test_shutdown_gave_up_on_a_stuck_send_then_the_thread_counts_nothing_more(queues):
    stuck = Hanging()
    q = queues([stuck], batch_size=3, flush_interval=0.01)
    q.submit([1, 2, 3, 4])
    assert stuck.entered.wait(2)
    q.shutdown(timeout=0.2)
    before = dict(q.counts)
    stuck.release.set()                       # the send returns after the agent gave up
    q.thread.join(2)
    assert not q.thread.is_alive()
    assert q.counts == before
    assert q.counts["spans_abandoned_at_stop"] == 4
    assert_accounted(q, handed=4)


def test_spans_submitted_after_shutdown_are_counted_not_stranded(queues):
    rec = Recording()
    q = queues([rec], flush_interval=0.01)
    q.shutdown(timeout=1.0)
    q.submit([1, 2])
    assert q.counts["spans_abandoned_at_stop"] == 2
    assert_accounted(q, handed=2)


def test_a_throttled_batch_is_retried_after_the_receivers_delay_and_not_failed(queues):
    receiver = Answering(Attempt(False, True, True, retry_after=0.3, reason="HTTP 429"), ACCEPTED)
    q = queues([receiver], batch_size=2, max_attempts=1, flush_interval=0.01)
    q.submit([1, 2])
    assert wait_for(lambda: q.counts["spans_exported"] == 2)
    assert receiver.batches == [[1, 2], [1, 2]]          # the same batch again
    assert receiver.times[1] - receiver.times[0] >= 0.3   # not before the receiver's delay
    assert q.counts["export_retries"] == 1 and q.counts["export_throttled"] == 1
    assert q.counts["spans_export_failed"] == 0
    q.shutdown(timeout=1.0)
    assert_accounted(q, handed=2)


def test_the_receivers_delay_is_bounded_by_max_retry_delay(queues):
    receiver = Answering(Attempt(False, True, True, retry_after=3600, reason="HTTP 429"), ACCEPTED)
    q = queues([receiver], batch_size=1, flush_interval=0.01, max_retry_delay=0.2)
    q.submit(["s"])
    assert wait_for(lambda: q.counts["spans_exported"] == 1, timeout=2)
    assert 0.2 <= receiver.times[1] - receiver.times[0] < 1.5


def test_full_batches_do_not_cut_a_back_off_short(queues):
    receiver = Answering(Attempt(False, True, True, retry_after=0.5, reason="HTTP 503"), ACCEPTED)
    q = queues([receiver], batch_size=2, flush_interval=0.01)
    q.submit([1, 2])
    assert wait_for(lambda: len(receiver.times) == 1)
    for i in range(10):                       # full batches arrive during the back-off
        q.submit([10 + i, 20 + i])
        time.sleep(0.02)
    assert len(receiver.times) == 1
    assert wait_for(lambda: q.counts["spans_exported"] == 22)
    assert receiver.times[1] - receiver.times[0] >= 0.5


def test_while_the_receiver_says_later_spans_wait_and_only_a_full_queue_drops(queues):
    receiver = Answering(LATER)
    q = queues([receiver], queue_size=10, batch_size=4, max_attempts=1, flush_interval=0.01,
               max_retry_delay=0.05)
    q.submit([0, 1, 2, 3])
    assert wait_for(lambda: q.counts["export_retries"] >= 5)   # many retries, never failed
    assert q.counts["spans_export_failed"] == 0
    assert set(map(tuple, receiver.batches)) == {(0, 1, 2, 3)}  # always the head batch
    q.submit(list(range(100, 112)))           # 10 - 0 queued (4 in flight) -> room for 10
    assert q.counts["spans_dropped_queue_full"] == 2
    receiver.answers = [ACCEPTED]
    assert wait_for(lambda: q.counts["spans_exported"] == 14)
    q.shutdown(timeout=1.0)
    assert_accounted(q, handed=16)


def test_a_refused_batch_fails_at_once_without_retries(queues):
    receiver = Answering(Attempt(False, False, reason="HTTP 400 Bad Request"))
    q = queues([receiver], batch_size=2, max_attempts=5, flush_interval=0.01)
    q.submit([1, 2])
    assert wait_for(lambda: q.counts["spans_export_failed"] == 2)
    assert len(receiver.batches) == 1 and q.counts["export_retries"] == 0


def test_stop_during_a_back_off_tries_once_more_at_once(queues):
    receiver = Answering(Attempt(False, True, True, retry_after=60, reason="HTTP 429"), ACCEPTED)
    q = queues([receiver], batch_size=2, flush_interval=0.01)
    q.submit([1, 2, 3])
    assert wait_for(lambda: len(receiver.times) == 1)
    t0 = time.monotonic()
    q.shutdown(timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert q.counts["spans_exported"] == 3
    assert_accounted(q, handed=3)


def test_still_refusing_at_stop_is_counted_failed(queues):
    receiver = Answering(LATER)
    q = queues([receiver], batch_size=2, flush_interval=0.01, max_retry_delay=30)
    q.submit([1, 2, 3, 4, 5])
    assert wait_for(lambda: len(receiver.times) == 1)
    q.shutdown(timeout=2.0)
    assert q.counts["spans_export_failed"] == 5
    assert_accounted(q, handed=5)


def test_only_the_exporters_that_failed_get_the_batch_again(queues):
    console, otlp = Recording(), Answering(LATER, ACCEPTED)
    q = queues([console, otlp], batch_size=1, flush_interval=0.01, max_retry_delay=0.05)
    q.submit(["s"])
    assert wait_for(lambda: q.counts["spans_exported"] == 1)
    assert console.batches == [["s"]] and otlp.batches == [["s"], ["s"]]


@pytest.mark.parametrize("retry", range(8))
def test_retry_delay_doubles_with_jitter_up_to_the_ceiling(retry):
    base = FIRST_RETRY_DELAY_S * 2 ** retry
    for _ in range(50):
        d = retry_delay(retry, None, 10.0)
        assert min(base * 0.8, 10.0) <= d <= min(base * 1.2, 10.0)
    assert retry_delay(retry, 2.5, 10.0) == 2.5      # the receiver's delay wins
    assert retry_delay(retry, 99.0, 10.0) == 10.0     # bounded
    assert retry_delay(retry, -1.0, 10.0) == 0.0


def test_retry_delay_jitter_spreads_agents():
    assert len({round(retry_delay(3, None, 60.0), 6) for _ in range(20)}) > 10


def test_submit_is_constant_time_during_a_back_off(queues):
    receiver = Answering(Attempt(False, True, True, retry_after=30, reason="HTTP 429"))
    q = queues([receiver], queue_size=1000, batch_size=10, flush_interval=0.01)
    q.submit(list(range(10)))
    assert wait_for(lambda: len(receiver.times) == 1)
    worst = 0.0
    for i in range(2000):
        t0 = time.perf_counter()
        q.submit([i])
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05
    assert len(q.queue) == 1000                          # the batch in flight is not in it
    assert q.counts["spans_queued"] == 10 + 1000
    assert q.counts["spans_dropped_queue_full"] == 2000 - 1000


def test_export_queue_from_settings():
    from spanprobe.config import resolve

    s = resolve({"export.console": True}, {"SPANPROBE_EXPORT_MAX_RETRY_DELAY_S": "7",
                                           "SPANPROBE_EXPORT_QUEUE_SIZE": "33"}, None)
    q = export_queue(s)
    try:
        assert q.max_retry_delay == 7.0 and q.queue_size == 33
        assert [type(e) for e in q.exporters] == [LineConsoleExporter]
    finally:
        q.shutdown(timeout=1.0)


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
