"""Issue 17, item 3, end to end: a handler slower than request_timeout_s gives a timeout
span before its response comes, and only that one; a request in flight when the agent stops
is exported as such, not lost."""

from __future__ import annotations

import threading
import time

import requests

from tests.support.checks import uid
from tests.support.procs import Agent, App


def test_a_slow_handler_is_a_timeout_span_before_it_answers_and_a_stop_exports_the_rest(tmp, receiver):
    app = App("stdlib-http-server", tmp, service="slow-handler")
    try:
        agent = Agent(["--port", str(app.port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                      tmp, env={"SPANPROBE_REQUEST_TIMEOUT_S": "1"})
        slow = uid()
        t0 = time.monotonic()
        answered = {}

        def call(n, delay_ms, key):
            answered[key] = requests.get(f"{app.url}/users/{n}?delay={delay_ms}", timeout=30).status_code

        t = threading.Thread(target=call, args=(slow, 4000, "slow"))
        t.start()
        (span,) = receiver.wait_for(lambda s: s["attributes"].get("url.path") == f"/users/{slow}", timeout=10)
        seen_after = time.monotonic() - t0
        assert "slow" not in answered and seen_after < 4, (answered, seen_after)   # before the answer
        a = span["attributes"]
        assert a["error.type"] == "timeout" and span["status"] == "ERROR"
        assert "http.response.status_code" not in a and a["http.route"] == "/users/{id}"
        assert 1.0 <= (span["end"] - span["start"]) / 1e9 < 3.5
        t.join(30)
        assert answered["slow"] == 200
        time.sleep(1.5)
        assert len([s for s in receiver.spans if s["attributes"].get("url.path") == f"/users/{slow}"]) == 1

        pending = uid()
        t = threading.Thread(target=call, args=(pending, 900, "pending"))
        t.start()
        time.sleep(0.3)
        assert agent.stop() == 0
        t.join(30)
        (span,) = receiver.wait_for(lambda s: s["attributes"].get("url.path") == f"/users/{pending}", timeout=10)
        assert span["attributes"]["error.type"] == "agent_stopped"
        c = agent.final_counters()
        assert (c["exchanges_timed_out"], c["late_responses"], c["exchanges_in_flight_at_stop"]) == (1, 1, 1), c
    finally:
        app.stop()
