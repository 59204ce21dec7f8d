"""The harness's command line, its two presets (full and smoke) and the checks that turn a
bad argument or a missing tool into one line and exit status 2 before anything starts."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

APPS = ("flask", "fastapi")
# hooks: empty programs on spanprobe's own hooks (bench/hooks.py), the floor of its cost
CONFIGS = ("bare", "hooks", "otel", "spanprobe")
# not run unless asked for: the agent under SCHED_IDLE (`chrt --idle 0`), an experiment on
# what the agent's place in the load core's queue does to the app's latency (issue 18's p99)
OPTIONAL_CONFIGS = ("spanprobe-idle",)
# the configurations that run the agent
AGENT_CONFIGS = ("spanprobe", "spanprobe-idle")
# the configurations that export no span (nothing to count or wait for)
SPANLESS = ("bare", "hooks")
# what the twins step (bench/paired.py) traces in one of two processes of an app at a time
PAIRED_CONFIGS = ("hooks", "spanprobe")
RESULTS = Path(__file__).resolve().parent / "results"

# what a full run and a smoke run do, unless a flag says otherwise
PRESETS = {
    "full": dict(rounds=3, warmup_s=2.0, saturation_s=10.0, fixed_s=10.0, step_s=6.0,
                 rates=[2000, 4000, 6000, 8000, 10000, 15000, 20000, 30000, 40000], catch_up_s=30.0,
                 pairs=4, pair_saturation_s=5.0, pair_fixed_s=8.0, recorded_s=8, name="latest"),
    "smoke": dict(rounds=1, warmup_s=1.0, saturation_s=2.0, fixed_s=2.0, step_s=2.0,
                  rates=[1000, 2000], catch_up_s=10.0, pairs=1, pair_saturation_s=2.0, pair_fixed_s=2.0,
                  recorded_s=2, name="smoke"),
}

# what the bench venv must provide (requirements/bench.txt)
BENCH_MODULES = ("flask", "fastapi", "gunicorn", "uvicorn", "opentelemetry.instrumentation.flask",
                 "opentelemetry.instrumentation.fastapi", "opentelemetry.exporter.otlp.proto.http",
                 "matplotlib")


@dataclass
class Plan:
    mode: str
    apps: list[str]
    configs: list[str]
    rounds: int
    warmup_s: float
    saturation_s: float
    fixed_s: float
    step_s: float
    rates: list[int]
    catch_up_s: float
    throughput: bool
    wrk_connections: int
    loadgen_connections: int
    pause_ms: int
    app_cpu: int
    load_cpu: int
    out: Path
    name: str
    bench_python: str
    receiver_idle: bool = False
    pairs: int = 0                  # pairs of twin phases per configuration (bench/paired.py); 0: none
    pair_saturation_s: float = 5.0
    pair_fixed_s: float = 8.0
    recorded_s: int = 0             # seconds of wrk per app to record records (bench/recorded.py); 0: none

    @property
    def paired_configs(self) -> list[str]:
        """The configurations the twins step traces one twin with."""
        return [c for c in PAIRED_CONFIGS if c in self.configs] if self.pairs else []

    @property
    def pinning(self) -> str:
        return (f"app (server and worker) pinned to CPU {self.app_cpu}; wrk, bench.loadgen, the OTLP "
                f"receiver and the agent pinned to CPU {self.load_cpu}. Throughput test: the agent "
                f"alone on CPU {self.load_cpu}; server, wrk and receiver on CPU {self.app_cpu}."
                + (" The receivers (both tests) under SCHED_IDLE." if self.receiver_idle else ""))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"bench: error: {message}; see `python -m bench --help`\n")
        sys.exit(2)


def _positive(kind):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return v
    return conv


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return v


def _csv(allowed):
    def conv(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(allowed)}")
        return [x for x in allowed if x in items]   # canonical order: bare runs first
    return conv


def _rates(text: str) -> list[int]:
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of spans/s") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: rates must be positive")
    return sorted(set(rates))


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description=(
        "spanprobe's benchmark: Flask/gunicorn and FastAPI/uvicorn, bare vs in-process "
        "OpenTelemetry vs spanprobe (alternated rounds, medians), and the agent's own "
        "throughput. Writes NAME.md, NAME.json and NAME.png under --out."))
    p.add_argument("--smoke", action="store_true",
                   help="a short check that the harness works (1 round, seconds per configuration)")
    p.add_argument("--apps", type=_csv(APPS), default=list(APPS), help="flask,fastapi")
    p.add_argument("--configs", type=_csv(CONFIGS + OPTIONAL_CONFIGS), default=list(CONFIGS),
                   help="bare,hooks,otel,spanprobe (default), spanprobe-idle (the agent under SCHED_IDLE)")
    p.add_argument("--rounds", type=_positive(int), help="alternated rounds (full: 3, the minimum)")
    p.add_argument("--warmup-s", type=_positive(float))
    p.add_argument("--saturation-s", type=_positive(float), help="seconds of wrk at saturation")
    p.add_argument("--fixed-s", type=_positive(float), help="seconds at the fixed rate")
    p.add_argument("--step-s", type=_positive(float), help="seconds per throughput step")
    p.add_argument("--rates", type=_rates, help="throughput ladder in spans/s, e.g. 2000,4000,8000")
    p.add_argument("--catch-up-s", type=_positive(float),
                   help="most seconds an agent that fell behind gets to export before it is stopped")
    p.add_argument("--no-throughput", action="store_true", help="skip the agent throughput test")
    p.add_argument("--pairs", type=_count, help="pairs of phases per configuration of the twins step, "
                   "two processes of each app side by side, one traced (full: 4, smoke: 1; 0 skips the step)")
    p.add_argument("--pair-saturation-s", type=_positive(float), help="seconds of wrk in a twins phase")
    p.add_argument("--pair-fixed-s", type=_positive(float), help="seconds at the fixed rate in a twins phase")
    p.add_argument("--recorded-s", type=_count, help="seconds of wrk per app whose records the agent's "
                   "user-space path is then timed on (bench/recorded.py; full: 8, smoke: 2; 0 skips the step)")
    p.add_argument("--wrk-connections", type=_positive(int), default=16)
    p.add_argument("--loadgen-connections", type=_positive(int), default=32)
    p.add_argument("--pause-ms", type=_positive(int), default=10,
                   help="throughput test: wrk's pause after each response per connection")
    p.add_argument("--receiver-idle", action="store_true",
                   help="run the OTLP receiver under SCHED_IDLE: it stands in for a collector on "
                        "another host, and its bursts then never delay the load generator")
    p.add_argument("--app-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--name", help="file name stem (full: latest, smoke: smoke)")
    p.add_argument("--bench-python", default=os.environ.get("SPANPROBE_BENCH_PYTHON"),
                   help="interpreter of the bench venv (default $SPANPROBE_BENCH_PYTHON, "
                        "exported by scripts/dev.sh)")
    return p


def plan_from(argv: list[str] | None) -> Plan:
    a = parser().parse_args(argv)
    mode = "smoke" if a.smoke else "full"
    pre = PRESETS[mode]
    pick = lambda v, k: pre[k] if v is None else v  # noqa: E731
    plan = Plan(mode=mode, apps=a.apps, configs=a.configs, rounds=pick(a.rounds, "rounds"),
                warmup_s=pick(a.warmup_s, "warmup_s"), saturation_s=pick(a.saturation_s, "saturation_s"),
                fixed_s=pick(a.fixed_s, "fixed_s"), step_s=pick(a.step_s, "step_s"),
                rates=pick(a.rates, "rates"), catch_up_s=pick(a.catch_up_s, "catch_up_s"), throughput=not a.no_throughput,
                wrk_connections=a.wrk_connections, loadgen_connections=a.loadgen_connections,
                pause_ms=a.pause_ms, app_cpu=a.app_cpu, load_cpu=a.load_cpu, receiver_idle=a.receiver_idle, out=a.out,
                name=a.name or pre["name"], bench_python=a.bench_python or "",
                pairs=pick(a.pairs, "pairs"), pair_saturation_s=pick(a.pair_saturation_s, "pair_saturation_s"),
                pair_fixed_s=pick(a.pair_fixed_s, "pair_fixed_s"), recorded_s=pick(a.recorded_s, "recorded_s"))
    check(plan)
    return plan


def check(plan: Plan) -> None:
    """Everything the run needs, checked before any process starts."""
    if plan.mode == "full" and plan.rounds < 3:
        raise BenchError(f"--rounds {plan.rounds}: a full run alternates at least 3 rounds "
                         "(use --smoke for a short check)")
    if "bare" not in plan.configs:
        raise BenchError("--configs must include bare: every figure is compared with it, and "
                         "the fixed rate is half of bare saturation")
    cpus = os.sched_getaffinity(0)
    for flag, cpu in (("--app-cpu", plan.app_cpu), ("--load-cpu", plan.load_cpu)):
        if cpu not in cpus:
            raise BenchError(f"{flag} {cpu}: this process may run on CPUs {sorted(cpus)} only")
    if plan.app_cpu == plan.load_cpu:
        raise BenchError(f"--app-cpu and --load-cpu are both {plan.app_cpu}: the app and the load "
                         "side need a CPU each")
    for tool, pkg in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: apt-get install {pkg} (scripts/dev.sh bench does)")
    if not plan.bench_python:
        raise BenchError("no bench venv: set SPANPROBE_BENCH_PYTHON or pass --bench-python "
                         "(scripts/dev.sh bench creates it from requirements/bench.txt)")
    if not os.access(plan.bench_python, os.X_OK):
        raise BenchError(f"--bench-python {plan.bench_python}: not an executable file")
    probe = subprocess.run([plan.bench_python, "-c", "import importlib,sys\n"
                            "for m in sys.argv[1:]:\n"
                            "    try: importlib.import_module(m)\n"
                            "    except ImportError: print(m)"] + list(BENCH_MODULES),
                           capture_output=True, text=True)
    missing = probe.stdout.split()
    if probe.returncode != 0 or missing:
        raise BenchError(f"--bench-python {plan.bench_python} lacks {', '.join(missing) or 'a module'}: "
                         "install requirements/bench.txt into it")
    if "otel" in plan.configs and not (Path(plan.bench_python).parent / "opentelemetry-instrument").exists():
        raise BenchError(f"no opentelemetry-instrument beside {plan.bench_python}: "
                         "install requirements/bench.txt into that venv")
    if {"hooks", *AGENT_CONFIGS} & set(plan.configs) or plan.throughput:
        if os.geteuid() != 0:
            raise BenchError("the agent and the hooks configuration need root (BPF): run as root, or pass "
                             "--configs bare,otel --no-throughput")
        try:
            import bcc  # noqa: F401
        except ImportError:
            raise BenchError("bcc is not importable by this interpreter: run the harness with the "
                             "dev venv's python (scripts/dev.sh setup)") from None
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {plan.out}: {exc.strerror}") from None
    if not os.access(plan.out, os.W_OK):
        raise BenchError(f"--out {plan.out}: not writable")
    if not plan.name.replace("-", "").replace("_", "").isalnum():
        raise BenchError(f"--name {plan.name!r}: letters, digits, - and _ only")
