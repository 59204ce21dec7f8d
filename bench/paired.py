"""The app-side figures from twins: two processes of one app side by side, one of them traced.

The overhead runs start fresh processes for every configuration and round, and their
app-side figures move between runs by more than the targets they should judge. Windows of
one process one after the other do no better (the full run of 2026-12-06: the floor's pairs
-15%..+16% in app CPU per request): this machine itself changes that much from one few
seconds to the next (one untraced process at a fixed rate, adjacent two-second windows:
±13% of CPU for the same requests). Two processes on the same CPU at the same moment differ
far less (their ratio over the same two-second windows: ±1%). So each app runs twice here,
as twins A and B pinned to the same CPU, each under its own load at the same time, and one
of them is traced at a time:

- a phase traces one twin (the agent selects its port) and measures both side by side:
  a second of warm-up, wrk at saturation on both at once, then bench.loadgen on both at
  once, each at half the overhead runs' fixed rate (together what one app had there);
- a pair is a phase tracing A and one tracing B, A first or B first by turns;
- for each figure, the twins' ratio A/B while A is traced over the same ratio while B is
  traced is the traced-over-untraced change squared: whatever differs between the twins
  themselves cancels, and so does whatever the machine did to both at once. Its square
  root, minus one, is the pair's figure; the step reports the median pair with the lowest
  and the highest.

The floor (bench.hooks' empty programs, attached like the agent for one twin's port) runs the
same way: empty programs on syscall tracepoints run for every process, so both twins pay
them and its pairs show the method's own stray, which decides whether a target is judged
(bench/report.py). That is also what the twins do not measure: what every process on the
host pays while the agent runs (its hooks returning at once for a process it does not
trace, its own CPU on the other core through shared caches) hits both twins alike. The
overhead runs' floor row and the agent's CPU per span report those.

The twins have service names of their own (OTEL_SERVICE_NAME, which the agent reads like the
SDK would), so the receiver counts each one's SERVER spans: a phase the agent traced must have
one for every request the traced twin completed, none for the other twin, and no loss
counted, else the run fails: an agent that traced neither twin, both, or the other one would
pass its phase off as spanprobe's.
"""

from __future__ import annotations

import math
import statistics
from concurrent.futures import ThreadPoolExecutor

from bench.load import fixed_rate, wrk
from bench.overhead import lost_events
from bench.procs import BenchAgent, BenchError, session_cpu_seconds, start_app
from tests.support.procs import free_port

# per pair, traced over untraced - 1, in %: (key in a twin's measurement, figure name)
FIGURES = (("rps", "throughput_change_pct"), ("p99_ms", "p99_change_pct"),
           ("app_cpu_us_per_req", "app_cpu_change_pct"))
TWINS = ("a", "b")


def _attach(ctx, config: str, port: int):
    """What traces one twin in a phase: bench.hooks' empty programs or the agent."""
    if config == "hooks":
        return ctx.procs.start_hooks(port)
    return ctx.procs.start_agent(["--port", str(port), "--otlp-endpoint", ctx.receiver.endpoint,
                                  "--otlp-protocol", "http/protobuf"])


def _detach(ctx, tracer) -> dict | None:
    """Stop what traced a phase; for the agent, its loss counters (overhead.lost_events)."""
    if isinstance(tracer, BenchAgent):      # SIGTERM: it flushes, and is waited for
        tracer.stop()
        return lost_events(tracer.final())
    ctx.procs.stop(tracer)
    return None


def _traced_by_the_agent(ctx, twins: dict, traced: str, before: dict[str, int], seen: dict, lost: dict) -> None:
    """A phase the agent traced must have at the receiver, under the traced twin's service
    name, a SERVER span for every request that twin completed and no more than it was sent,
    none under the other twin's, and no loss counted: else its figures would pass for
    spanprobe's (an agent that traced neither twin, both, or the other one)."""
    me = seen[traced]
    done, sent = me["requests_completed"], me["requests_sent"]
    ctx.receiver.wait_until(sum(before.values()) + done, timeout=10.0, quiet=0.3, stall=3.0)
    now = ctx.receiver.spans_by_service()
    got = {t: now.get(twins[t]["service"], 0) - before.get(twins[t]["service"], 0) for t in TWINS}
    other = next(t for t in TWINS if t != traced)
    me["server_spans"], me["lost_events"] = got[traced], lost
    if not done <= got[traced] <= sent or got[other] or lost:
        raise BenchError(f"a phase that traced twin {traced} has {got[traced]} SERVER spans for the "
                         f"{done} requests it completed ({sent} sent), {got[other]} for twin {other}, "
                         f"and lost {lost or 0}: not that twin traced, or not whole")


def _both(work):
    """work(twin) for both twins at the same time; {twin: result}."""
    with ThreadPoolExecutor(len(TWINS)) as pool:
        return dict(zip(TWINS, pool.map(work, TWINS)))


def phase(ctx, twins: dict, rate: float) -> dict:
    """Both twins measured side by side: warm-up, saturation, then the fixed rate."""
    plan = ctx.plan
    warm = _both(lambda t: wrk(ctx.procs, twins[t]["port"], 1.0, plan.wrk_connections))
    sat = _both(lambda t: wrk(ctx.procs, twins[t]["port"], plan.pair_saturation_s, plan.wrk_connections))
    cpu0 = {t: session_cpu_seconds(twins[t]["proc"].pid) for t in TWINS}
    fixed = _both(lambda t: fixed_rate(ctx.procs, twins[t]["port"], rate, plan.pair_fixed_s,
                                       plan.loadgen_connections))
    cpu = {t: session_cpu_seconds(twins[t]["proc"].pid) - cpu0[t] for t in TWINS}
    out = {}
    for t in TWINS:
        if not sat[t]["completed"] or not fixed[t]["completed"]:
            raise BenchError(f"twin {t} (port {twins[t]['port']}): a phase completed no request "
                             f"(wrk {sat[t]['completed']}, fixed rate {fixed[t]['completed']})")
        out[t] = {"rps": sat[t]["rps"], "p99_ms": fixed[t]["latency_ms"]["p99"],
                  "app_cpu_us_per_req": cpu[t] / fixed[t]["completed"] * 1e6,
                  "fixed_completed": fixed[t]["completed"],
                  "requests_completed": warm[t]["completed"] + sat[t]["completed"] + fixed[t]["completed"],
                  "requests_sent": warm[t]["sent"] + sat[t]["sent"] + fixed[t]["sent"],
                  "failed_requests": warm[t]["error_count"] + sat[t]["error_count"] + fixed[t]["errors"]}
    return out


def twin_change(a_traced: dict, b_traced: dict, key: str) -> float | None:
    """The pair's change in `key`, traced over untraced, in %: sqrt of (A/B while A is
    traced) over (A/B while B is traced), minus one (the module's docstring)."""
    values = (a_traced["a"][key], a_traced["b"][key], b_traced["a"][key], b_traced["b"][key])
    if any(v is None or v <= 0 for v in values):
        return None
    a1, b1, a2, b2 = values
    return (math.sqrt((a1 / b1) / (a2 / b2)) - 1) * 100


def summarize(pairs: list[dict]) -> dict:
    """Median, lowest and highest of each figure's change over the pairs."""
    out: dict = {"pairs": len(pairs),
                 "failed_requests": sum(p[traced][t]["failed_requests"] for p in pairs
                                        for traced in ("a_traced", "b_traced") for t in TWINS)}
    for _, name in FIGURES:
        values = [p[name] for p in pairs if p[name] is not None]
        out[name] = statistics.median(values) if values else None
        out[f"{name}_range"] = [min(values), max(values)] if values else None
    return out


def _pair(ctx, config: str, twins: dict, rate: float, b_first: bool) -> dict:
    seen = {}
    for traced in (("b", "a") if b_first else ("a", "b")):
        before = ctx.receiver.spans_by_service()
        tracer = _attach(ctx, config, twins[traced]["port"])
        try:
            seen[traced] = phase(ctx, twins, rate)
        finally:
            lost = _detach(ctx, tracer)
        if lost is not None:
            _traced_by_the_agent(ctx, twins, traced, before, seen[traced], lost)
    pair = {"a_traced": seen["a"], "b_traced": seen["b"], "b_first": b_first}
    for key, name in FIGURES:
        pair[name] = twin_change(seen["a"], seen["b"], key)
    return pair


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f}%"


def run_app(ctx, app: str, rate: float) -> dict:
    """Every compared configuration for one app, against one pair of twins of it."""
    plan = ctx.plan
    twins: dict = {}
    result: dict = {"fixed_rate": rate, "twin_rate": rate / 2}
    try:
        for t in TWINS:
            port, service = free_port(), f"bench-{app}-twin-{t}"
            proc = start_app(ctx.procs, app, port, plan.bench_python, plan.app_cpu, None, f"{app}-twin-{t}",
                             service=service)
            twins[t] = {"port": port, "proc": proc, "service": service}
        result["ports"] = [twins[t]["port"] for t in TWINS]
        for config in plan.paired_configs:
            pairs = []
            for i in range(plan.pairs):
                pair = _pair(ctx, config, twins, rate / 2, b_first=i % 2 == 1)
                pairs.append(pair)
                ctx.say(f"{app} twins {config} {i + 1}/{plan.pairs}: app CPU {_pct(pair['app_cpu_change_pct'])}, "
                        f"throughput {_pct(pair['throughput_change_pct'])}, p99 {_pct(pair['p99_change_pct'])}")
            result[config] = {"runs": pairs, "summary": summarize(pairs)}
    finally:
        for t in twins.values():
            ctx.procs.stop(t["proc"])
    return result


def run(ctx, rates: dict[str, float]) -> dict:
    """{app: {"fixed_rate", "twin_rate", "ports", config: {"runs", "summary"}}}, each app's
    twins at half its overhead fixed rate."""
    return {app: run_app(ctx, app, rates[app]) for app in ctx.plan.apps}
