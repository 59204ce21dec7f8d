"""Asyncio servers: many requests in flight on one event-loop thread, each making an
outbound call. The kernel sees one thread; the task context tells them apart."""

from __future__ import annotations

import pytest
import requests

from tests.support.checks import call_links
from tests.support.procs import Agent, App

IN_FLIGHT = 20


@pytest.mark.parametrize("kind", ["fastapi-uvicorn", "tornado-server"])
def test_concurrent_calls_link_to_their_own_request(tmp, receiver, kind):
    down = App("stdlib-http-server", tmp, service=f"down-{kind}")
    app = App(kind, tmp, service=f"async-{kind}", downstream=down.url)
    try:
        agent = Agent(["--port", str(app.port), "--port", str(down.port), "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        # one call and a few requests first: the agent turns asyncio linking on for a process
        # at its first outbound connection (until then it has no child span to link, and
        # the context uprobes would cost it), and uses task links only after it saw task
        # contexts write on their own connections (streams.TASK_TRUST_AFTER)
        assert call_links(app, receiver, f"async-{kind}", f"down-{kind}", 1, delay_ms=0) == (1, 0, 0)
        with requests.Session() as s:
            for i in range(5):
                s.get(f"{app.url}/users/{i}", timeout=10)
        correct, wrong, unlinked = call_links(app, receiver, f"async-{kind}", f"down-{kind}", IN_FLIGHT)
        print(f"{kind}: {IN_FLIGHT} in flight on one loop: {correct} correct, {wrong} wrong, "
              f"{unlinked} unlinked links ({100 * correct / IN_FLIGHT:.0f}% correct)")
        assert wrong == 0
        assert correct == IN_FLIGHT
        assert agent.stop() == 0
        assert agent.final_counters()["task_links"] >= IN_FLIGHT   # linked by task, not by luck
    finally:
        app.stop()
        down.stop()


def test_asyncio_linking_turns_on_at_a_processs_first_outbound_call(tmp, receiver):
    """A server that never calls out gets no context uprobes (they cost it a trap per task);
    its first outbound connection turns linking on, and that first call is linked."""
    down = App("stdlib-http-server", tmp, service="down-lazy")
    app = App("fastapi-uvicorn", tmp, service="lazy-fastapi", downstream=down.url)
    try:
        agent = Agent(["--port", str(app.port), "--port", str(down.port), "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        with requests.Session() as s:
            for i in range(5):
                assert s.get(f"{app.url}/users/{i}", timeout=10).status_code == 200
        receiver.wait_for(lambda s: s["resource"]["service.name"] == "lazy-fastapi", 5)
        assert "asyncio linking on" not in agent.stderr
        assert call_links(app, receiver, "lazy-fastapi", "down-lazy", 1, delay_ms=0) == (1, 0, 0)
        agent.wait_for(rf"asyncio linking on for pid {app.proc.pid} \(Python 3", timeout=10)
        assert agent.stop() == 0
    finally:
        app.stop()
        down.stop()
