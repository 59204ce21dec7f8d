"""The app-side figures from paired windows: one app process, its tracing switched on and off.

The overhead runs start fresh processes for every configuration and round, and their
app-side figures move between runs of the same configuration by more than the targets
they should judge (the floor row, empty programs that cost about nothing, has come out
anywhere from -18% to +5% of bare in app CPU per request). Here each app runs as one
process for the whole step, and what changes under it is only whether it is traced:
windows alternate between untraced (nothing attached) and traced (the agent, or for the
floor the empty programs on its hooks), each traced window paired with the untraced one
beside it, in A-B, B-A order by turns so that a slow drift of the machine cancels. A
window is wrk at saturation (its requests/s) and then bench.loadgen at the overhead
runs' fixed rate (the app's own CPU per request over those requests, and their p99).
Each pair gives traced over untraced; the figure is the median over the pairs, shown
with the lowest and highest pair, so a reader sees how far one pair can stray.

Attaching is outside the windows: the agent compiles and attaches first, and its first
sight of the process (the process's first connection costs it more than later ones) falls
in a one-second warm-up that every window has, traced or not. A window the agent traced
must have a SERVER span for every request it completed and no loss counted, else the run
fails: an agent that did not trace would pass its window off as spanprobe's.
"""

from __future__ import annotations

import statistics

from bench.load import fixed_rate, wrk
from bench.overhead import lost_events
from bench.procs import BenchAgent, BenchError, session_cpu_seconds, start_app
from tests.support.procs import free_port

# per pair, traced over untraced - 1, in %: (key in a window, figure name)
FIGURES = (("rps", "throughput_change_pct"), ("p99_ms", "p99_change_pct"),
           ("app_cpu_us_per_req", "app_cpu_change_pct"))


def _attach(ctx, config: str, port: int):
    """What traces the app in a traced window: bench.hooks' empty programs or the agent."""
    if config == "hooks":
        return ctx.procs.start_hooks(port)
    return ctx.procs.start_agent(["--port", str(port), "--otlp-endpoint", ctx.receiver.endpoint,
                                  "--otlp-protocol", "http/protobuf"])


def _detach(ctx, tracer) -> dict | None:
    """Stop what traced a window; for the agent, its loss counters (overhead.lost_events)."""
    if isinstance(tracer, BenchAgent):      # SIGTERM: it flushes, and is waited for
        tracer.stop()
        return lost_events(tracer.final())
    if tracer is not None:
        ctx.procs.stop(tracer)
    return None


def _traced_by_the_agent(ctx, before: int, got: dict, lost: dict) -> None:
    """A window the agent traced must have its spans at the receiver (SERVER spans at least
    the requests the window completed) and no loss counted: else it was not traced, or
    not fully, and its figures would pass for spanprobe's."""
    done = got["requests_completed"]
    spans, _ = ctx.receiver.wait_until(before + done, timeout=10.0, quiet=0.3, stall=3.0)
    got["server_spans"], got["lost_events"] = spans - before, lost
    if spans - before < done or lost:
        raise BenchError(f"a window traced by the agent has {spans - before} SERVER spans for "
                         f"{done} requests completed and lost {lost or 0}: not a traced window")


def window(ctx, app_pid: int, port: int, rate: float) -> dict:
    """One window: a second of warm-up, wrk at saturation, then the fixed rate."""
    plan = ctx.plan
    warm = wrk(ctx.procs, port, 1.0, plan.wrk_connections)
    sat = wrk(ctx.procs, port, plan.pair_saturation_s, plan.wrk_connections)
    cpu0 = session_cpu_seconds(app_pid)
    fixed = fixed_rate(ctx.procs, port, rate, plan.pair_fixed_s, plan.loadgen_connections)
    cpu = session_cpu_seconds(app_pid) - cpu0
    if not sat["completed"] or not fixed["completed"]:
        raise BenchError(f"port {port}: a paired window completed no request "
                         f"(wrk {sat['completed']}, fixed rate {fixed['completed']})")
    return {"rps": sat["rps"], "p99_ms": fixed["latency_ms"]["p99"],
            "app_cpu_us_per_req": cpu / fixed["completed"] * 1e6, "fixed_completed": fixed["completed"],
            "requests_completed": warm["completed"] + sat["completed"] + fixed["completed"],
            "failed_requests": warm["error_count"] + sat["error_count"] + fixed["errors"]}


def _change(traced: float | None, untraced: float | None) -> float | None:
    return None if traced is None or not untraced else (traced / untraced - 1) * 100


def summarize(pairs: list[dict]) -> dict:
    """Median, lowest and highest of each figure's change over the pairs."""
    out: dict = {"pairs": len(pairs),
                 "failed_requests": sum(p[side]["failed_requests"] for p in pairs for side in ("untraced", "traced"))}
    for _, name in FIGURES:
        values = [p[name] for p in pairs if p[name] is not None]
        out[name] = statistics.median(values) if values else None
        out[f"{name}_range"] = [min(values), max(values)] if values else None
    return out


def run_app(ctx, app: str, rate: float) -> dict:
    """Every paired configuration for one app, against one process of it."""
    plan = ctx.plan
    port = free_port()
    app_proc = start_app(ctx.procs, app, port, plan.bench_python, plan.app_cpu, None, f"{app}-paired")
    result: dict = {"fixed_rate": rate, "port": port}
    try:
        for config in plan.paired_configs:
            pairs = []
            for i in range(plan.pairs):
                seen = {}
                for traced in ((False, True) if i % 2 == 0 else (True, False)):
                    before = ctx.receiver.spans()
                    tracer = _attach(ctx, config, port) if traced else None
                    try:
                        seen[traced] = window(ctx, app_proc.pid, port, rate)
                    finally:
                        lost = _detach(ctx, tracer)
                    if lost is not None:
                        _traced_by_the_agent(ctx, before, seen[traced], lost)
                pair = {"untraced": seen[False], "traced": seen[True], "traced_first": i % 2 == 1}
                for key, name in FIGURES:
                    pair[name] = _change(seen[True][key], seen[False][key])
                pairs.append(pair)
                change = pair["app_cpu_change_pct"]
                ctx.say(f"{app} paired {config} {i + 1}/{plan.pairs}: app CPU "
                        f"{seen[False]['app_cpu_us_per_req']:.0f} -> {seen[True]['app_cpu_us_per_req']:.0f} "
                        f"µs/req ({'–' if change is None else f'{change:+.1f}%'}), {seen[False]['rps']:.0f} -> "
                        f"{seen[True]['rps']:.0f} req/s at saturation")
            result[config] = {"runs": pairs, "summary": summarize(pairs)}
    finally:
        ctx.procs.stop(app_proc)
    return result


def run(ctx, rates: dict[str, float]) -> dict:
    """{app: {"fixed_rate", config: {"runs", "summary"}}} at each app's overhead fixed rate."""
    return {app: run_app(ctx, app, rates[app]) for app in ctx.plan.apps}
