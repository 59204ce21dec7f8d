"""`python -m bench`: the whole benchmark, from the checks to the files under bench/results.

The harness pins itself (and so every child that is not pinned elsewhere: wrk, the
load generator, the receiver, the agent) to the load CPU and the apps to the app CPU,
starts one OTLP receiver for the overhead runs, runs them, then the agent throughput test,
and writes NAME.md, NAME.json and NAME.png. Every process it started is stopped on the way
out, whatever happened (Procs). Targets are reported, never turned into an exit status:
exit 0 = the benchmark ran; 2 = bad input or missing prerequisite; 1 = a run failed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import overhead, paired, report, throughput
from bench.procs import REPO, BenchError, Procs, bpf_stats
from bench.receiver import ReceiverProcess
from bench.settings import plan_from


class Context:
    def __init__(self, plan, procs, receiver):
        self.plan, self.procs, self.receiver = plan, procs, receiver
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def recorded(ctx) -> dict:
    """The agent's user-space capacity on records a real kernel sent for each app
    (bench/recorded.py), in a process of its own: it loads the BPF programs, and LLVM."""
    plan = ctx.plan
    out = ctx.procs.run("recorded", [sys.executable, str(REPO / "bench" / "span_cost.py"), "--recorded", "--json",
                                     "--seconds", str(plan.recorded_s), "--rounds", str(plan.rounds),
                                     "--app-python", plan.bench_python],
                        timeout=300 + 4 * plan.recorded_s * plan.rounds, cpu=plan.load_cpu)
    got = json.loads(out.strip().splitlines()[-1])
    for app, r in got["apps"].items():
        ctx.say(f"recorded {app}: {r['records']:,} records, {r['spans']:,} spans, {r['us_per_span']:.1f} µs "
                f"a span replayed ({r['spans_per_s']:,.0f} spans/s on one core)")
    return got


def run(plan) -> dict:
    os.sched_setaffinity(0, {plan.load_cpu})
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    result: dict = {
        "schema": 1, "mode": plan.mode, "started": started, "pinning": plan.pinning,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_start": _loadavg(),
                    "python": platform.python_version(), "commit": _commit()},
        "settings": {k: getattr(plan, k) for k in (
            "apps", "configs", "rounds", "warmup_s", "saturation_s", "fixed_s", "step_s", "rates",
            "wrk_connections", "loadgen_connections", "pause_ms", "app_cpu", "load_cpu", "receiver_idle",
            "pairs", "pair_saturation_s", "pair_fixed_s", "recorded_s")},
        "tools": {"fixed_rate": "bench.loadgen (asyncio open loop, latency from due time)",
                  "saturation": "wrk -t1 with bench/lua/count.lua",
                  "throughput_load": "wrk -t1 with bench/lua/paced.lua"},
    }
    logs = plan.out / f"{plan.name}-logs"     # every process's log, kept for a failed run
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with Procs(logs) as procs, bpf_stats():
        receiver = ReceiverProcess(procs, cpu=None, idle=plan.receiver_idle)
        ctx = Context(plan, procs, receiver)
        ctx.say(plan.pinning)
        rows = overhead.run(ctx)
        result["overhead"] = {"runs": rows, "summary": report.summarize(rows)}
        if plan.paired_configs:
            # at each app's fixed rate of the overhead runs (half of bare's first saturation)
            rates = {app: next(r["fixed_rate"] for r in rows if r["app"] == app) for app in plan.apps}
            result["paired"] = paired.run(ctx, rates)
        receiver.stop()
        if plan.throughput:
            result["throughput"] = throughput.run(ctx)
        if plan.recorded_s:
            result["recorded"] = recorded(ctx)
        result["duration_s"] = round(time.monotonic() - ctx.t0, 1)
    result["machine"]["loadavg_end"] = _loadavg()
    result["targets"] = report.targets(result["overhead"]["summary"], result.get("throughput"),
                                       result.get("paired"), result.get("recorded"))
    return result


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with it ignored
    try:
        plan = plan_from(argv)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(plan)
    except BenchError as exc:
        print(f"bench: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    paths = report.write(result, plan.out, plan.name)
    png = plan.out / f"{plan.name}.png"
    chart = subprocess.run([plan.bench_python, "-m", "bench.chart", str(paths["json"]), str(png)],
                           cwd=REPO, capture_output=True, text=True)
    if chart.returncode != 0:
        print(f"bench: chart failed: {chart.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['json']}, {png}", file=sys.stderr)
    return 0
