"""Load generators as the harness runs them: wrk for saturation and for the agent's
throughput ladder (paced by a Lua pause), bench.loadgen for latency at a fixed rate.

wrk reports requests *completed*; its Lua script also counts requests *sent*, so a run's
requests in flight when wrk stopped (at most one per connection) are known: the server
may still answer them after wrk hung up, so a run's span count must lie between the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.procs import BenchError, Procs

LUA = Path(__file__).resolve().parent / "lua"
PATH = "/users/1"


def wrk_result(out: str) -> dict:
    """wrk's output (with count.lua or paced.lua): its result line as a dict."""
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            d["duration_s"] = d["duration_us"] / 1e6
            d["rps"] = d["completed"] / d["duration_s"] if d["duration_s"] else 0.0
            d["error_count"] = sum(d["errors"].values())
            return d
    raise BenchError(f"wrk printed no result line: {out.strip()[-300:]}")


def wrk_command(port: int, seconds: float, connections: int, pause_ms: int | None = None) -> list[str]:
    """wrk (one thread) against the app's trivial route, counting what it sent."""
    script = LUA / ("paced.lua" if pause_ms is not None else "count.lua")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), f"http://127.0.0.1:{port}{PATH}"]
    return cmd + (["--", str(pause_ms)] if pause_ms is not None else [])


def wrk(procs: Procs, port: int, seconds: float, connections: int,
        cpu: int | None = None, pause_ms: int | None = None) -> dict:
    """One wrk run against the app's trivial route; its result line as a dict."""
    return wrk_result(procs.run("wrk", wrk_command(port, seconds, connections, pause_ms),
                                timeout=seconds + 30, cpu=cpu))


def fixed_rate(procs: Procs, port: int, rate: float, seconds: float, connections: int = 32,
               cpu: int | None = None) -> dict:
    """Open-loop load at `rate` requests/s (bench/loadgen.py); its JSON result."""
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"http://127.0.0.1:{port}{PATH}",
           "--rate", f"{rate:.1f}", "--duration", str(seconds), "--connections", str(connections)]
    out = procs.run("loadgen", cmd, timeout=seconds + 60, cpu=cpu)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"bench.loadgen printed no result: {out.strip()[-300:]}") from None
