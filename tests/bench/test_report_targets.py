"""bench/report.py's targets: an app-side target is judged only where the run's floor row
(empty programs on the same hooks) lies within the target's margin of bare."""

from __future__ import annotations

from bench import report


def summary(floor: dict | None, spanprobe: dict) -> dict:
    configs = {"bare": {}, "spanprobe": spanprobe}
    if floor is not None:
        configs["hooks"] = floor
    return {"flask": configs}


def rows_by_metric(rows: list[dict]) -> dict[str, dict]:
    return {r["target"].split(": ", 1)[1].split(" ≤")[0]: r for r in rows}


def test_a_quiet_floor_lets_each_target_be_judged():
    rows = rows_by_metric(report.targets(summary(
        {"throughput_overhead_pct": -1.0, "p99_overhead_pct": 4.0, "app_cpu_overhead_pct": 0.5},
        {"throughput_overhead_pct": 4.0, "p99_overhead_pct": 30.0, "app_cpu_overhead_pct": 2.0}), None))
    assert [(r["judged"], r["met"]) for r in rows.values()] == [(True, True), (True, False), (True, True)]


def test_a_floor_off_bare_by_more_than_the_margin_is_not_judged_either_way():
    rows = rows_by_metric(report.targets(summary(
        {"throughput_overhead_pct": -7.9, "p99_overhead_pct": -96.7, "app_cpu_overhead_pct": 3.5},
        {"throughput_overhead_pct": 1.0, "p99_overhead_pct": -91.6, "app_cpu_overhead_pct": 40.0}), None))
    assert all(not r["judged"] and not r["met"] for r in rows.values())
    md = report.markdown({"machine": {"cpus": 2, "kernel": "k", "loadavg_start": 0, "loadavg_end": 0, "commit": "c"},
                          "mode": "full", "started": "now", "pinning": "", "targets": list(rows.values()),
                          "settings": {"rounds": 3, "saturation_s": 1, "wrk_connections": 1, "fixed_s": 1}})
    assert "| flask: p99 latency above bare ≤ 10% | -91.6 % | not judged (the floor row: -96.7%) |" in md


def test_without_a_floor_row_the_targets_are_judged_as_measured():
    rows = rows_by_metric(report.targets(summary(None, {"throughput_overhead_pct": 4.0, "p99_overhead_pct": 5.0,
                                                        "app_cpu_overhead_pct": 9.0}), None))
    assert [(r["judged"], r["met"]) for r in rows.values()] == [(True, True), (True, True), (True, False)]
