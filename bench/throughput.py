"""The agent's own throughput: the highest spans/s it sustains on one core with zero loss,
and its CPU per span including export.

The agent runs alone on the load CPU; a cheap server (bench/fast_server.py), wrk and a
receiver of their own share the app CPU. wrk, paced by a pause after each response, offers
a ladder of rates. Each step gets a fresh agent (so its `final` counters and exit rusage
belong to that step alone), warmed up until its spans arrive, then:

* sustained = no loss counter moved, SERVER spans received lie between wrk's completed and
  sent requests (warm-up and step together), and the last span arrived within `MAX_DRAIN_S` of the load stopping
  (an agent that falls behind either loses events in the ring buffer or drains late);
* spans/s = the step's spans received / wrk's duration; CPU µs/span = the agent's CPU from
  the load's start until the receiver had every span of it (export included) / those spans;
  beside it, from its `ready` line to its exit (rusage, so the final flush and export count)
  / every span it exported, the warm-up's included: that one also holds what an agent
  spends once (a process's first connection, the warm-up's small batches, the stop).

The ladder stops at the first step that is not sustained, or when the load side cannot
offer the rate asked for (then the result is a lower bound, and says so).
"""

from __future__ import annotations

import sys
import time

from bench.load import wrk
from bench.overhead import lost_events
from bench.procs import BenchError, bpf_run_time, cpu_seconds, memory_kib, tcp_sockets
from bench.receiver import ReceiverProcess
from tests.support.procs import free_port, wait_port

MAX_DRAIN_S = 1.5
BUDGET_SHARE = 0.5      # the budget step asks for this share of what the load costs unbudgeted
BUDGET_HELD = 0.2       # held: the measured use within this fraction of the budget
BUDGET_CONNECTIONS = 64  # many connections, so that shedding whole ones can meet a share finely
LOAD_SHORTFALL = 0.85   # offered below this share of the step's rate: the load side is the limit


def run(ctx) -> dict:
    plan, procs = ctx.plan, ctx.procs
    receiver = ReceiverProcess(procs, cpu=plan.app_cpu, tag="receiver-throughput", idle=plan.receiver_idle)
    port = free_port()
    server = procs.start("fast-server", [sys.executable, "-m", "bench.fast_server", str(port)],
                         cpu=plan.app_cpu)
    wait_port(port, server, timeout=30.0)
    steps: list[dict] = []
    limited_by = "ladder top"
    try:
        for rate in plan.rates:
            step = run_step(ctx, receiver, port, rate)
            steps.append(step)
            us = step["cpu_us_per_span"]
            ctx.say(f"throughput {rate}/s: offered {step['offered_rps']:.0f} req/s, received "
                    f"{step['spans_per_s']:.0f} spans/s, {'–' if us is None else f'{us:.1f}'} µs CPU/span "
                    f"under load ({step['cpu_us_per_span_lifetime'] or 0:.1f} from ready to exit), "
                    f"drain {step['drain_s']:.2f} s, lost {step['lost_events'] or 0} -> "
                    f"{'sustained' if step['sustained'] else 'NOT sustained'}")
            if not step["sustained"]:
                limited_by = "agent"
                break
            if step["offered_rps"] < LOAD_SHORTFALL * rate:
                limited_by = "load side"
                break
        best = max((s for s in steps if s["sustained"]), key=lambda s: s["spans_per_s"], default=None)
        budget = run_budget(ctx, receiver, port, best) if best else None
    finally:
        procs.stop(server)
        receiver.stop()
    return {
        "steps": steps, "limited_by": limited_by, "max_drain_s": MAX_DRAIN_S,
        "max_sustained_spans_per_s": best["spans_per_s"] if best else 0.0,
        "cpu_us_per_span": best["cpu_us_per_span"] if best else None,
        "cpu_us_per_span_lifetime": best["cpu_us_per_span_lifetime"] if best else None,
        "pause_ms": plan.pause_ms, "step_s": plan.step_s, "budget": budget,
    }


def run_step(ctx, receiver: ReceiverProcess, port: int, rate: int) -> dict:
    plan, procs = ctx.plan, ctx.procs
    before = receiver.spans()
    tcp = tcp_sockets()
    agent = procs.start_agent(["--port", str(port), "--otlp-endpoint", receiver.endpoint,
                               "--otlp-protocol", "http/protobuf"])
    try:
        cpu0 = cpu_seconds(agent.proc.pid)      # from ready on: BPF compile excluded
        warm = wrk(procs, port, 1.0, 4, cpu=plan.app_cpu, pause_ms=plan.pause_ms)
        start = before + warm["completed"]
        got, _ = receiver.wait_until(start, timeout=30.0, quiet=0.3, stall=5.0)
        if got == before:
            raise BenchError(f"throughput: the agent exported no span for {warm['completed']} "
                             f"warm-up requests (log {agent.err})")
        # each connection offers about 1000 / (pause + ~0.3 ms response) requests/s
        connections = max(1, round(rate * (plan.pause_ms + 0.3) / 1000))
        load_cpu0, load_spans0 = cpu_seconds(agent.proc.pid), got
        load = wrk(procs, port, plan.step_s, connections, cpu=plan.app_cpu, pause_ms=plan.pause_ms)
        got, drain = receiver.wait_until(start + load["completed"], timeout=plan.step_s + 20,
                                         quiet=1.0, stall=5.0)
        # the load's spans, from its start until the receiver has all of them (export
        # included), without what an agent spends once (starting, a process's first
        # connection, the warm-up's small batches, the stop)
        load_cpu = cpu_seconds(agent.proc.pid) - load_cpu0
        load_spans = got - load_spans0
        memory = memory_kib(agent.proc.pid)
    finally:
        agent.stop()
    final = agent.final()
    got = receiver.spans()         # and what its final flush sent
    spans = got - start            # the step's spans: warm-up requests are subtracted
    # wrk's requests in flight at its stop (warm-up and step) may or may not be answered
    low, high = warm["completed"] + load["completed"], warm["sent"] + load["sent"]
    cpu = agent.rusage_cpu - cpu0
    lost = lost_events(final)
    return {
        "rate_asked": rate, "connections": connections, "sent": load["sent"],
        "completed": load["completed"], "duration_s": load["duration_s"],
        "offered_rps": load["rps"], "wrk_errors": load["error_count"],
        "warmup_requests": warm["completed"], "tcp_sockets_at_start": tcp,
        "spans": spans, "spans_per_s": spans / load["duration_s"], "drain_s": drain,
        "agent_cpu_s": cpu,
        # CPU from ready to exit over every span it exported (warm-up included)
        "cpu_us_per_span_lifetime": cpu / (got - before) * 1e6 if got > before else None,
        # CPU under the load over its spans, drain and export included: the cost per span
        "cpu_us_per_span": load_cpu / load_spans * 1e6 if load_spans > 0 else None,
        "agent_memory_kib": memory, "lost_events": lost, "agent_final": final,
        "hot_modules": agent.hot_modules,
        "spans_match": low <= got - before <= high,
        "sustained": (not lost and low <= got - before <= high
                      and drain <= MAX_DRAIN_S and load["error_count"] == 0),
    }


def run_budget(ctx, receiver: ReceiverProcess, port: int, best: dict) -> dict:
    """The CPU budget held under a load that would exceed it: the highest sustained step's
    rate again, on BUDGET_CONNECTIONS connections, twice with a fresh agent each: without a
    budget, then with `--max-cpu-percent` at BUDGET_SHARE of what the first one used (the
    agent and its programs, % of one CPU). Each time the agent settles for one step, then is
    measured over two. Held: the second within BUDGET_HELD of its budget. And every request
    completed is a span or one count of kernel_requests_shed (in flight at wrk's stop:
    either)."""
    rate = best["rate_asked"]
    free = _budget_window(ctx, receiver, port, rate, [])
    budget = round(max(1.0, free["used_cpu_percent"] * BUDGET_SHARE), 1)
    held = _budget_window(ctx, receiver, port, rate, ["--max-cpu-percent", str(budget)])
    used, shed = held["used_cpu_percent"], held["final"].get("kernel_requests_shed")
    spans, low, high = held["spans"], held["completed"], held["sent"]
    ctx.say(f"budget {budget}% at {rate}/s (unbudgeted {free['used_cpu_percent']:.1f}%): used {used:.1f}%, "
            f"{spans} spans + {shed} requests shed of {low}..{high} completed")
    return {
        "rate_asked": rate, "connections": BUDGET_CONNECTIONS, "offered_rps": held["offered_rps"],
        "unbudgeted_cpu_percent": free["used_cpu_percent"], "budget_percent": budget, "used_cpu_percent": used,
        "held": abs(used - budget) <= BUDGET_HELD * budget, "held_within": BUDGET_HELD,
        "spans": spans, "requests_shed": shed, "connections_shed": held["final"].get("kernel_connections_shed"),
        "completed": low, "sent": high,
        "accounted": shed is not None and low <= spans + shed <= high,
        "lost_events": held["lost_events"], "unbudgeted_lost_events": free["lost_events"],
    }


def _budget_window(ctx, receiver: ReceiverProcess, port: int, rate: int, args: list[str]) -> dict:
    """A fresh agent under `rate` on BUDGET_CONNECTIONS connections: one step to settle,
    then its CPU and its programs' run time over two, in % of one CPU."""
    plan, procs = ctx.plan, ctx.procs
    pause_ms = max(0, round(BUDGET_CONNECTIONS * 1000 / rate - 0.3))
    before = receiver.spans()
    agent = procs.start_agent(["--port", str(port), "--otlp-endpoint", receiver.endpoint,
                               "--otlp-protocol", "http/protobuf", *args])
    try:
        settle = wrk(procs, port, plan.step_s, BUDGET_CONNECTIONS, cpu=plan.app_cpu, pause_ms=pause_ms)
        cpu0, (bpf0, _), t0 = cpu_seconds(agent.proc.pid), bpf_run_time(agent.proc.pid), time.monotonic()
        load = wrk(procs, port, 2 * plan.step_s, BUDGET_CONNECTIONS, cpu=plan.app_cpu, pause_ms=pause_ms)
        cpu1, (bpf1, _), t1 = cpu_seconds(agent.proc.pid), bpf_run_time(agent.proc.pid), time.monotonic()
        receiver.wait_until(before + settle["completed"] + load["completed"], timeout=10.0, quiet=1.0, stall=3.0)
    finally:
        agent.stop()
    reported = agent.final()
    return {"used_cpu_percent": 100.0 * ((cpu1 - cpu0) + (bpf1 - bpf0) / 1e9) / (t1 - t0),
            "spans": receiver.spans() - before, "final": reported or {}, "lost_events": lost_events(reported),
            "completed": settle["completed"] + load["completed"], "sent": settle["sent"] + load["sent"],
            "offered_rps": load["rps"]}
