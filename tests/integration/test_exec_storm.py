"""Issue 15, item 3, on this kernel with the real agent: the kernel reports every exec on the
host but exits of traced processes only, so an agent that kept an entry per exec grew with
every program run anywhere (10,000 runs of /bin/true: ~4 MB). After an exec storm elsewhere
the agent's process entries must be what it traces, and tracing must go on."""

from __future__ import annotations

import subprocess
import time
import urllib.request

from tests.support.procs import Agent, App

RUNS = 3000


def _known(agent: Agent, after: float) -> int:
    """processes_known from the first stats line logged after `after` (monotonic)."""
    seen = len(agent.stderr.splitlines())
    end = time.monotonic() + 30
    while time.monotonic() < end:
        lines = agent.stderr.splitlines()
        if len(lines) > seen and agent.stats():
            return agent.stats()["processes_known"]
        time.sleep(0.2)
    raise AssertionError(f"no stats line after the storm:\n{agent.stderr[-2000:]}")


def test_an_exec_storm_elsewhere_leaves_the_agent_holding_only_what_it_traces(tmp, receiver):
    app = App("stdlib-http-server", tmp)
    agent = Agent(["--port", str(app.port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                  tmp, env={"SPANPROBE_STATS_INTERVAL_S": "1"})
    try:
        baseline = _known(agent, time.monotonic())
        subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt {RUNS} ]; do /bin/true; i=$((i+1)); done"],
                       check=True, timeout=300)
        time.sleep(1.5)                        # the storm's events drained
        after = _known(agent, time.monotonic())
        assert after <= baseline + 5, (baseline, after)
        with urllib.request.urlopen(f"{app.url}/users/42", timeout=10) as r:
            assert r.status == 200
        receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("server.port") == app.port
                          and s["attributes"].get("url.path") == "/users/42")   # not an earlier test's
        assert agent.stop() == 0
        assert agent.final_counters()["kernel_events_lost"] == 0
    finally:
        agent.stop()
        app.stop()
