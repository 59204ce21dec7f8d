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
        {"throughput_overhead_pct": 1.0, "p99_overhead_pct": -91.6, "app_cpu_overhead_pct": 6.4}), None))
    assert all(not r["judged"] and not r["met"] for r in rows.values())
    md = report.markdown({"machine": {"cpus": 2, "kernel": "k", "loadavg_start": 0, "loadavg_end": 0, "commit": "c"},
                          "mode": "full", "started": "now", "pinning": "", "targets": list(rows.values()),
                          "settings": {"rounds": 3, "saturation_s": 1, "wrk_connections": 1, "fixed_s": 1}})
    assert "| flask: p99 latency above bare ≤ 10% | -91.6 % | not judged (the floor row: -96.7%) |" in md


def test_a_figure_past_the_target_by_more_than_the_noise_is_missed_whatever_the_floor():
    """App CPU 40% above bare with the floor 3.5% off: missed whichever way the noise went;
    6.4% is not (it could be 2.9% plus the floor's 3.5%)."""
    rows = rows_by_metric(report.targets(summary(
        {"throughput_overhead_pct": -7.9, "p99_overhead_pct": -96.7, "app_cpu_overhead_pct": 3.5},
        {"throughput_overhead_pct": 13.0, "p99_overhead_pct": 150.0, "app_cpu_overhead_pct": 40.0}), None))
    assert [(r["judged"], r["met"]) for r in rows.values()] == [(True, False), (True, False), (True, False)]


def test_without_a_floor_row_the_targets_are_judged_as_measured():
    rows = rows_by_metric(report.targets(summary(None, {"throughput_overhead_pct": 4.0, "p99_overhead_pct": 5.0,
                                                        "app_cpu_overhead_pct": 9.0}), None))
    assert [(r["judged"], r["met"]) for r in rows.values()] == [(True, True), (True, True), (True, False)]


def paired_summary(throughput: float, p99: float, cpu: float, spread: float = 0.0) -> dict:
    """Medians, each pair within `spread` of its median."""
    figures = {"throughput_change_pct": throughput, "p99_change_pct": p99, "app_cpu_change_pct": cpu}
    return {"summary": {"pairs": 4, **figures,
                        **{f"{k}_range": [v - spread, v + spread] for k, v in figures.items()}}}


def test_paired_figures_judge_the_app_side_targets_where_the_step_ran():
    """The paired step's medians replace the runs' (a loss of throughput is a negative
    change traced over untraced, a positive overhead), and its floor pairs decide whether
    each is judged; an app the step did not run keeps the runs' figures."""
    runs = summary({"throughput_overhead_pct": -30.0, "p99_overhead_pct": 50.0, "app_cpu_overhead_pct": -18.0},
                   {"throughput_overhead_pct": 27.0, "p99_overhead_pct": 900.0, "app_cpu_overhead_pct": 20.0})
    runs["fastapi"] = runs["flask"]
    paired = {"flask": {"hooks": paired_summary(-0.5, 1.0, 0.8, spread=1.5),
                        "spanprobe": paired_summary(-4.0, 40.0, 6.5, spread=30.0)}}
    rows = report.targets(runs, None, paired)
    flask = rows_by_metric([r for r in rows if r["target"].startswith("flask")])
    assert {r["source"] for r in flask.values()} == {"paired"}
    assert flask["throughput overhead"]["value"] == 4.0 and flask["throughput overhead"]["met"]
    assert (flask["p99 latency above bare"]["judged"], flask["p99 latency above bare"]["met"]) == (True, False)
    app_cpu = flask["the app's own CPU per request above bare"]
    assert (app_cpu["value"], app_cpu["judged"], app_cpu["met"]) == (6.5, True, False)
    # a floor pair past the margin: the median alone no longer judges it
    paired["flask"]["hooks"] = paired_summary(-0.5, 1.0, 0.8, spread=12.0)
    rows = report.targets(runs, None, paired)
    flask = rows_by_metric([r for r in rows if r["target"].startswith("flask")])
    assert [r["judged"] for r in flask.values()] == [False, True, False]    # p99: 40% - 13% > 10%
    assert flask["the app's own CPU per request above bare"]["floor_pct"] == 12.8
    fastapi = rows_by_metric([r for r in rows if r["target"].startswith("fastapi")])
    assert {r["source"] for r in fastapi.values()} == {"runs"}
    assert [(r["judged"], r["met"]) for r in fastapi.values()] == [(False, False), (True, False), (False, False)]
    md = report.markdown({"machine": {"cpus": 2, "kernel": "k", "loadavg_start": 0, "loadavg_end": 0, "commit": "c"},
                          "mode": "full", "started": "now", "pinning": "", "targets": rows,
                          "settings": {"rounds": 3, "saturation_s": 1, "wrk_connections": 1, "fixed_s": 1}})
    assert "| flask: throughput overhead ≤ 5% | 4.0 % (twins) | not judged (the floor's pairs: up to +12.5%) |" in md


def test_the_agent_cpu_target_is_judged_for_each_app_as_well_as_under_the_ladder():
    """15 µs a span "for both apps": each app's rows judge it too, not the ladder alone."""
    runs = {"flask": {"bare": {}, "spanprobe": {"agent_cpu_us_per_span": 45.1}},
            "fastapi": {"bare": {}, "spanprobe": {"agent_cpu_us_per_span": 14.2}}}
    rows = {r["target"]: r for r in report.targets(runs, {"cpu_us_per_span": 14.8, "max_sustained_spans_per_s": 1})}
    assert not rows["flask: agent CPU ≤ 15 µs/span incl. export, in the app's runs"]["met"]
    assert rows["fastapi: agent CPU ≤ 15 µs/span incl. export, in the app's runs"]["met"]
    assert rows["agent CPU ≤ 15 µs/span incl. export, under load"]["met"]


def test_user_space_capacity_is_judged_on_recorded_records_for_each_app():
    """With the recorded step, the 66,000 spans/s target is judged for each app on its replayed
    capacity as well as on the ladder's top (which its load side ends first)."""
    recorded = {"apps": {"fastapi": {"spans_per_s": 86_847.0}, "flask": {"spans_per_s": 44_507.0}}}
    rows = {r["target"]: r for r in report.targets({}, {"cpu_us_per_span": 14.8, "max_sustained_spans_per_s": 12_500},
                                                   None, recorded)}
    assert rows["fastapi: ≥ 66,000 spans/s of user-space capacity on one core (recorded records, replayed)"]["met"]
    assert not rows["flask: ≥ 66,000 spans/s of user-space capacity on one core (recorded records, replayed)"]["met"]
    # the ladder's top stays beside them, said to be a lower bound where the load side ended it
    live = [r for t, r in rows.items() if t.startswith("≥ 66,000 spans/s on one core, zero loss, live")]
    assert [r["value"] for r in live] == [12_500] and not live[0]["met"]
    ladder = report.targets({}, {"cpu_us_per_span": 14.8, "max_sustained_spans_per_s": 12_500,
                                 "limited_by": "load side"})
    (top,) = [r for r in ladder if r["target"].startswith("≥ 66,000")]
    assert top["target"] == "≥ 66,000 spans/s on one core, zero loss, live (a lower bound: the load side ended the ladder)"
    # below the target, a ladder the load side ended is not judged (it says nothing of the agent's
    # ceiling); the agent itself ending it below the target is a miss
    assert (top["met"], top["judged"], top["why"]) == (False, False, "the load side ended the ladder first")
    table = report.markdown({"machine": {"cpus": 2, "kernel": "k", "loadavg_start": 0, "loadavg_end": 0, "commit": "c"},
                             "mode": "full", "started": "now", "pinning": "", "targets": ladder,
                             "settings": {"rounds": 3, "saturation_s": 1, "wrk_connections": 1, "fixed_s": 1}})
    assert "| not judged (the load side ended the ladder first) |" in table
    (own,) = [r for r in report.targets({}, {"cpu_us_per_span": 14.8, "max_sustained_spans_per_s": 12_500,
                                             "limited_by": "agent"}) if r["target"].startswith("≥ 66,000")]
    assert (own["met"], own.get("judged", True)) == (False, True)
