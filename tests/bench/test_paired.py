"""bench/paired.py's twins: the pair's figure, the summary, and what counts as a phase the
agent traced (the receiver's SERVER spans by the twins' service names)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import paired
from bench.procs import BenchError


def test_paired_summary_is_the_median_with_the_extremes():
    phase = {t: {"failed_requests": 1} for t in paired.TWINS}
    pairs = [{"throughput_change_pct": t, "p99_change_pct": None, "app_cpu_change_pct": c,
              "a_traced": phase, "b_traced": phase}
             for t, c in ((-1.0, 2.0), (-3.0, 9.0), (-2.0, 4.0), (-8.0, 3.0))]
    s = paired.summarize(pairs)
    assert s["pairs"] == 4 and s["failed_requests"] == 16 and s["throughput_change_pct"] == -2.5 and s["throughput_change_pct_range"] == [-8.0, -1.0]
    assert s["app_cpu_change_pct"] == 3.5 and s["app_cpu_change_pct_range"] == [2.0, 9.0]
    assert s["p99_change_pct"] is None and s["p99_change_pct_range"] is None


def test_a_twin_pair_cancels_what_the_twins_differ_by_and_what_the_machine_does_to_both():
    """Twin B needs 7% more CPU than A whatever happens; the machine is 20% slower in the
    second phase for both; tracing adds 4% to whichever twin it traces: the pair says +4%."""
    def cpu(base, traced, machine):
        return {"app_cpu_us_per_req": base * machine * (1.04 if traced else 1.0)}
    a_traced = {"a": cpu(100.0, True, 1.0), "b": cpu(107.0, False, 1.0)}
    b_traced = {"a": cpu(100.0, False, 1.2), "b": cpu(107.0, True, 1.2)}
    assert abs(paired.twin_change(a_traced, b_traced, "app_cpu_us_per_req") - 4.0) < 1e-9
    # a figure missing in one phase: none
    no_p99 = {"a": {"p99_ms": None}, "b": {"p99_ms": 1.0}}
    assert paired.twin_change(no_p99, {"a": {"p99_ms": 2.0}, "b": {"p99_ms": 1.0}}, "p99_ms") is None


class _Receiver:
    """The receiver as bench/paired.py asks it: SERVER spans by service, now."""

    def __init__(self, now: dict[str, int]):
        self.now = now

    def wait_until(self, at_least, timeout, quiet=0.3, stall=None):
        return sum(self.now.values()), 0.0

    def spans_by_service(self):
        return dict(self.now)


def test_a_phase_counts_as_traced_only_with_the_traced_twins_spans_and_no_other():
    """Twin a traced, 1,000 requests completed, 1,016 sent: its service must have 1,000..1,016
    new SERVER spans and twin b's none; an agent that traced neither, both or b fails."""
    twins = {"a": {"service": "bench-flask-twin-a"}, "b": {"service": "bench-flask-twin-b"}}
    before = {"bench-flask-twin-a": 500, "bench-flask-twin-b": 700}

    def check(a_new: int, b_new: int, lost: dict | None = None) -> dict:
        seen = {"a": {"requests_completed": 1000, "requests_sent": 1016}, "b": {}}
        ctx = SimpleNamespace(receiver=_Receiver({"bench-flask-twin-a": 500 + a_new,
                                                  "bench-flask-twin-b": 700 + b_new}))
        paired._traced_by_the_agent(ctx, twins, "a", before, seen, lost or {})
        return seen["a"]
    assert check(1003, 0)["server_spans"] == 1003
    for a_new, b_new, lost in ((0, 0, None), (1003, 1003, None), (0, 1003, None), (990, 0, None),
                               (1020, 0, None), (1003, 0, {"kernel_events_lost": 2})):
        with pytest.raises(BenchError):
            check(a_new, b_new, lost)
