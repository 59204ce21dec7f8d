"""Asyncio servers: many requests in flight on one event-loop thread, each making an
outbound call. The kernel sees one thread; the task context tells them apart."""

from __future__ import annotations

import random
import threading

import pytest
import requests

from tests.support.procs import Agent, App

IN_FLIGHT = 20


def link_report(receiver, service: str, ids: list[int]) -> tuple[int, int, int]:
    """(correct, wrong, unlinked) CLIENT spans among the calls made for `ids`."""
    want = {f"n={n}&delay=150": n for n in ids}
    servers = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["resource"]["service.name"] == service
                                and s["attributes"].get("url.query") in want, len(ids))
    by_n = {want[s["attributes"]["url.query"]]: s for s in servers}
    paths = {f"/users/{n}": n for n in ids}
    clients = receiver.wait_for(lambda s: s["kind"] == "CLIENT" and s["resource"]["service.name"] == service
                                and s["attributes"]["url.full"].split("?")[0].rsplit(":", 1)[1].split("/", 1)[1]
                                in {p.lstrip("/") for p in paths}, len(ids))
    correct = wrong = unlinked = 0
    for c in clients:
        n = int(c["attributes"]["url.full"].split("?")[0].rsplit("/", 1)[1])
        if c["parent_span_id"] is None:
            unlinked += 1
        elif c["parent_span_id"] == by_n[n]["span_id"] and c["trace_id"] == by_n[n]["trace_id"]:
            correct += 1
        else:
            wrong += 1
    return correct, wrong, unlinked


@pytest.mark.parametrize("kind", ["fastapi-uvicorn"])
def test_concurrent_calls_link_to_their_own_request(tmp, receiver, kind):
    down = App("stdlib-http-server", tmp, service=f"down-{kind}")
    app = App(kind, tmp, service=f"async-{kind}", downstream=down.url)
    try:
        agent = Agent(["--port", str(app.port), "--port", str(down.port), "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        assert "uretprobe:" in agent.stderr or "PyContext_CopyCurrent" in agent.stderr, agent.stderr[-1500:]
        ids = random.sample(range(10**6, 10**7), IN_FLIGHT)
        barrier = threading.Barrier(IN_FLIGHT)
        errors = []

        def one(n):
            barrier.wait()
            try:
                r = requests.get(f"{app.url}/call?n={n}&delay=150", timeout=30)
                assert r.status_code == 200
            except Exception as exc:   # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(n,)) for n in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        correct, wrong, unlinked = link_report(receiver, f"async-{kind}", ids)
        print(f"{kind}: {IN_FLIGHT} in flight on one loop: {correct} correct, {wrong} wrong, "
              f"{unlinked} unlinked links ({100 * correct / IN_FLIGHT:.0f}% correct)")
        assert wrong == 0
        assert correct == IN_FLIGHT
        assert agent.stop() == 0
        assert agent.final_counters()["task_links"] >= IN_FLIGHT   # linked by task, not by luck
    finally:
        app.stop()
        down.stop()
