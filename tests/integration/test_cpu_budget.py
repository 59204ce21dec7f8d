"""Issue 18, the CPU budget, end to end on this kernel: under load above
`--max-cpu-percent` the kernel side sheds whole connections from a request boundary on,
every request left out is counted, none is cut in half; when the load stops, tracing
returns to every connection.

The accounting is exact: each request sent is either a complete span at the receiver or
one count of kernel_requests_shed, never both and never neither."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable

import pytest

from spanprobe.budget import EVERY_S as BUDGET_EVERY_S
from tests.support.checks import uid
from tests.support.procs import Agent, App

# percent of one CPU: well below what this load costs the agent and its programs (15-25%
# here), well above what they cost idle on a machine busy with other tests (the programs run
# in every process's system calls, the selected or not: ~1%)
BUDGET = "5"
LOAD_S = 5.0
LOAD_MAX_S = 30.0
SHED_S = 2.0
KEPT_ALIVE, FRESH = 2, 4   # clients on one keep-alive connection each; a connection per request


def _load(port: int, path, done: Callable[[], bool], keep_alive: bool, sent: list[int],
          failures: list[str]) -> None:
    """Requests back to back until done(), the k-th for path(k): on one connection, or on
    a new one each."""
    n = 0
    c = None
    try:
        while not done():
            c = c or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path(n))
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append(f"status {r.status}")
            n += 1
            if not keep_alive:
                c.close()
                c = None
    except (OSError, http.client.HTTPException) as exc:
        failures.append(repr(exc))
    finally:
        if c is not None:
            c.close()
    sent.append(n)


def _drive(port: int, path, sent: list[int], agent, budget: str) -> None:
    """Load: KEPT_ALIVE clients on a connection each, FRESH on a new one per request, client
    i's k-th request for path(i, k); what each sent is appended to `sent`. For LOAD_S, and
    on until SHED_S after the agent said it sheds (at most LOAD_MAX_S): on a machine busy
    with other work the load is slower, and it must go on past the budget's first cut."""
    failures: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(port, lambda k, i=i: path(i, k), stop.is_set, i < KEPT_ALIVE,
                                                    sent, failures))
               for i in range(KEPT_ALIVE + FRESH)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    said = rf"over max_cpu_percent {budget}\.0%: shedding"
    time.sleep(LOAD_S)
    while not re.search(said, agent.stderr) and time.monotonic() - t0 < LOAD_MAX_S:
        time.sleep(0.2)
    time.sleep(SHED_S)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]


def _traced_again(agent: Agent, timeout: float = 60.0) -> None:
    """Wait until the agent's last budget line says every connection is traced again. Called
    two budget steps after the load: the step after it ended may still measure load."""
    time.sleep(2 * BUDGET_EVERY_S + 0.5)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        said = [ln for ln in agent.stderr.splitlines() if "CPU budget: " in ln and "% of a CPU used" in ln]
        if said and "every connection traced again" in said[-1]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no 'traced again' after the load in {timeout} s:\n{agent.stderr[-2000:]}")


def test_a_cpu_budget_sheds_whole_requests_counts_each_and_recovers(tmp, receiver):
    app = App("stdlib-http-server", tmp, service="budgeted")
    try:
        agent = Agent(["--port", str(app.port), "--max-cpu-percent", BUDGET,
                       "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        agent.wait_for(r"CPU budget: max_cpu_percent 5\.0% of one CPU, for the agent and its kernel programs")
        base = uid()
        sent: list[int] = []
        _drive(app.port, lambda i, k: f"/users/{base + i}", sent, agent, BUDGET)
        agent.wait_for(r"CPU budget: [\d.]+% of a CPU used, over max_cpu_percent 5\.0%: shedding")
        # idle again: the share grows back to every connection (and stays: the last word)
        _traced_again(agent)
        after = uid()
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        for i in range(20):
            conn.request("GET", f"/users/{after + i}")
            r = conn.getresponse()
            assert r.status == 200 and r.read()
        conn.close()
        time.sleep(2)
        assert agent.stop() == 0
        c = agent.final_counters()
        mine = [sp for sp in receiver.spans if sp["resource"]["service.name"] == "budgeted"]
        loaded = sum(sent)
        assert c["kernel_requests_shed"] > 0 and c["kernel_connections_shed"] > 0, c
        # exact: every request is a span or a count, and the 20 after recovery are all spans
        assert len(mine) + c["kernel_requests_shed"] == loaded + 20, (len(mine), loaded, c)
        wanted = {f"/users/{after + i}" for i in range(20)}
        late = [sp for sp in mine if sp["attributes"].get("url.path") in wanted]
        assert len(late) == 20
        # whole exchanges only: nothing dropped or left unpaired at a shed boundary
        assert all(sp["attributes"].get("http.response.status_code") == 200 for sp in mine)
        for k in ("exchanges_dropped_gap", "responses_dropped_gap", "parse_errors", "kernel_events_lost"):
            assert c[k] == 0, (k, c)
        assert c["budget_shed_permille"] == 0 and c["budget_cpu_percent_used"] < 5.0, c
    finally:
        app.stop()


@pytest.mark.parametrize("kind", ["stdlib-http-server", "fastapi-uvicorn"])
def test_a_trace_is_left_out_whole_across_tasks_and_services(tmp, receiver, kind):
    """Two traced services on this host, a front whose every request calls the one
    downstream: threads (stdlib) or asyncio tasks (FastAPI). The call out of a shed request
    is shed with it (made by the thread that read the request, or by the task whose server
    connection is shed), and the downstream's request from a shed call is shed too (the
    kernel side knows the client end): no CLIENT span is exported without its SERVER parent,
    no downstream SERVER span without its CLIENT parent, and each one left out is counted."""
    names = (f"budget-front-{kind}", f"budget-down-{kind}")     # the receiver serves the module
    down = App(kind, tmp, service=names[1])
    front = App(kind, tmp, service=names[0], downstream=down.url)
    try:
        # FastAPI's front makes a client per request: fewer requests a second, a lower budget
        budget = BUDGET if kind == "stdlib-http-server" else "3"
        agent = Agent(["--port", str(front.port), "--port", str(down.port), "--max-cpu-percent", budget,
                       "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        # asyncio linking (task owners) turns on at a process's first call out: before the load
        sent: list[int] = []
        warm = uid()
        warm_end = time.monotonic() + 1.0
        _load(front.port, lambda k: f"/call?n={warm}", lambda: time.monotonic() > warm_end, True, sent, [])
        if kind == "fastapi-uvicorn":
            agent.wait_for(r"asyncio linking on for pid")
        base = uid() * 1000
        _drive(front.port, lambda i, k: f"/call?n={base + 100_000 * i + k}", sent, agent, budget)  # one n each
        agent.wait_for(rf"over max_cpu_percent {budget}\.0%: shedding")
        time.sleep(1)
        assert agent.stop() == 0
        c = agent.final_counters()
        spans = [sp for sp in receiver.spans if sp["resource"]["service.name"] in names]
        fronts = {sp["span_id"]: sp for sp in spans
                  if sp["kind"] == "SERVER" and sp["resource"]["service.name"] == names[0]}
        calls = {sp["span_id"]: sp for sp in spans if sp["kind"] == "CLIENT"}
        downs = [sp for sp in spans if sp["kind"] == "SERVER" and sp["resource"]["service.name"] == names[1]]
        loaded = sum(sent)
        assert 0 < len(fronts) < loaded and c["kernel_requests_shed"] > 0, (len(fronts), loaded, c)
        # each request, call out and downstream request: a span or a count
        assert len(fronts) + len(calls) + len(downs) + c["kernel_requests_shed"] == 3 * loaded, \
            (len(fronts), len(calls), len(downs), loaded, c)

        def n_of(sp):        # the number a front asked downstream for: /call?n=N -> /users/N
            a = sp["attributes"]
            q = a.get("url.query", "")
            return q[2:] if q.startswith("n=") else (a.get("url.path") or a.get("url.full", "")).rsplit("/", 1)[-1]
        # the warm-up's calls came before linking was on: unlinked, with or without a budget
        linked = [sp for sp in calls.values() if n_of(sp) != str(warm)]
        astray = [sp for sp in linked if sp["parent_span_id"] not in fronts
                  or n_of(fronts[sp["parent_span_id"]]) != n_of(sp)]
        if kind == "stdlib-http-server":
            assert astray == [], astray[:3]
            # and a request kept has its call kept: the thread decides both
            children = {}
            for sp in linked:
                children[sp["parent_span_id"]] = children.get(sp["parent_span_id"], 0) + 1
            assert all(children.get(i) == 1 for i, f in fronts.items() if n_of(f) != str(warm)), children
        else:
            # a call whose task the kernel side could not tell (not linked through it) falls
            # back to its thread's last request read, on an event loop maybe another's
            assert len(astray) <= len(calls) - c["task_links"], (len(astray), len(calls), c["task_links"])
        # a downstream request follows its call, whoever's: never another's, and without it
        # only as a root, rarely: a known limit (README), five of ~8,000 downstream spans in
        # six runs here (2026-12-06), with no skipped run, loss or full map counted. Shown
        # whole on failure, counters included.
        unfollowed = [sp for sp in downs if sp["parent_span_id"] not in calls
                      or n_of(calls[sp["parent_span_id"]]) != n_of(sp)]
        wrong = [sp for sp in unfollowed if sp["parent_span_id"]]
        assert not wrong and len(unfollowed) <= max(3, len(downs) // 200), (
            f"{len(unfollowed)} of {len(downs)} downstream spans without their call, {len(wrong)} of "
            "them with another parent: "
            + json.dumps([{k: sp.get(k) for k in ("trace_id", "span_id", "parent_span_id", "attributes")}
                          for sp in (wrong or unfollowed)[:2]])
            + f"; calls {len(calls)}, fronts {len(fronts)}; counters "
            + json.dumps({k: v for k, v in c.items() if k.startswith("kernel_") or "link" in k
                          or "lost" in k or "gap" in k or "shed" in k}))
        assert c["exchanges_dropped_gap"] == 0 and c["kernel_events_lost"] == 0, c
    finally:
        front.stop()
        down.stop()
