"""Issue 17, item 3: requests that never finish. A request with no response after
request_timeout_s is handed on at once as an error with what is known; its late response
is counted, never exported twice, and never pairs with the wrong request; at stop every
request still waiting is exported the same way."""

from __future__ import annotations

import pytest
from opentelemetry.trace import StatusCode

from spanprobe import config
from spanprobe import events as ev
from test_streams import Sim, exported, req, resp, server

S = 1_000_000_000
TIMEOUT = 30 * S


def test_no_response_within_the_timeout_is_handed_on_as_a_timeout(tmp_path):
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/slow"))
    assert sim.asm.expire(10 + TIMEOUT - 1, TIMEOUT) == 0 and sim.drain() == []
    assert sim.asm.expire(10 + TIMEOUT, TIMEOUT) == 1
    [x] = sim.drain()
    assert x.error_type == "timeout" and x.response is None and x.ended_ts == 10 + TIMEOUT
    assert sim.asm.counts["exchanges_timed_out"] == 1 and sim.asm.counts["exchanges"] == 1
    [span] = exported([x], tmp_path)
    assert span.attributes["error.type"] == "timeout" and "http.response.status_code" not in span.attributes
    assert span.status.status_code == StatusCode.ERROR
    assert span.end_time - span.start_time == TIMEOUT       # from the request to the moment given up
    # looked at again: once is enough
    assert sim.asm.expire(10 + 2 * TIMEOUT, TIMEOUT) == 0 and sim.drain() == []


def test_a_late_response_is_counted_not_exported_again():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/slow"))
    sim.asm.expire(10 + TIMEOUT, TIMEOUT)
    assert len(sim.drain()) == 1
    sim.write(10 + TIMEOUT + 5, resp())
    assert sim.drain() == []
    assert sim.asm.counts["late_responses"] == 1 and sim.asm.counts["exchanges"] == 1


def test_pipelined_requests_still_pair_in_order_after_a_timeout():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/stuck") + req("GET", "/next"))
    sim.asm.expire(10 + TIMEOUT, TIMEOUT)
    # /next arrived with /stuck, so it timed out too; the answers come late, in order
    assert [x.request.target for x in sim.drain()] == ["/stuck", "/next"]
    sim.write(10 + TIMEOUT + 1, resp(200, b"one"))
    sim.write(10 + TIMEOUT + 2, resp(201, b"two"))
    assert sim.drain() == [] and sim.asm.counts["late_responses"] == 2

    sim2 = Sim()
    server(sim2)
    sim2.read(10, req("GET", "/stuck"))
    sim2.read(10 + TIMEOUT - 5, req("GET", "/next"))
    sim2.asm.expire(10 + TIMEOUT, TIMEOUT)
    [stuck] = sim2.drain()
    sim2.write(10 + TIMEOUT + 1, resp(200, b"one"))
    sim2.write(10 + TIMEOUT + 2, resp(201, b"two"))
    [nxt] = sim2.drain()           # /next pairs with its own answer, not /stuck's
    assert (stuck.request.target, nxt.request.target, nxt.response.status) == ("/stuck", "/next", 201)
    assert sim2.asm.counts["late_responses"] == 1


def test_a_response_that_has_begun_is_no_timeout_but_is_exported_at_stop(tmp_path):
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/stream"))
    sim.write(20, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert sim.asm.expire(10 + 10 * TIMEOUT, TIMEOUT) == 0
    assert sim.asm.expire(10 + 10 * TIMEOUT, 0, "agent_stopped") == 1
    [x] = sim.drain()
    assert x.error_type == "agent_stopped"
    assert sim.asm.counts["exchanges_in_flight_at_stop"] == 1
    assert exported([x], tmp_path)[0].attributes["error.type"] == "agent_stopped"


def test_an_interim_response_does_not_count_as_the_answer():
    sim = Sim()
    server(sim)
    sim.read(10, req("POST", "/upload", {"Expect": "100-continue"}))
    sim.write(11, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert sim.asm.expire(10 + TIMEOUT, TIMEOUT) == 1


def test_a_close_after_a_timeout_is_not_a_second_span_nor_an_abort():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/slow"))
    sim.asm.expire(10 + TIMEOUT, TIMEOUT)
    assert len(sim.drain()) == 1
    sim.close(10 + TIMEOUT + 1)
    assert sim.drain() == [] and sim.asm.counts["aborted"] == 0


def test_a_close_before_the_response_says_so(tmp_path):
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/slow"))
    sim.close(20)
    [x] = sim.drain()
    assert exported([x], tmp_path)[0].attributes["error.type"] == "connection_closed"


def test_client_calls_time_out_too():
    sim = Sim()
    sim.open(1, ev.ROLE_CLIENT, tgid=200, peer=("10.0.0.8", 80))
    sim.write(10, req("GET", "/downstream"), tgid=200)
    assert sim.asm.expire(10 + TIMEOUT, TIMEOUT) == 1


@pytest.mark.parametrize("text, ok", [("30", True), ("0.5", True), ("0", False), ("-1", False)])
def test_the_setting_and_its_variable(text, ok):
    env = {"SPANPROBE_REQUEST_TIMEOUT_S": text}
    if ok:
        assert config.resolve({}, env=env)["request_timeout_s"] == float(text)
    else:
        with pytest.raises(config.ConfigError, match="request_timeout_s"):
            config.resolve({}, env=env)
    assert config.resolve({}, env={})["request_timeout_s"] == 30.0
