"""What the kernel side sends per request, read from the agent's debug log of records
(`spanprobe.records`): every record the agent handles costs it a decode and a handler,
so a record that tells it nothing new is not sent (issue 18)."""

from __future__ import annotations

import http.client
import re
import time

import pytest

from spanprobe import events as ev
from tests.support.checks import server_spans, uid
from tests.support.procs import Agent, App

OPEN, DATA, CLOSE, ADDR = ev.EV_CONN_OPEN, ev.EV_DATA, ev.EV_CONN_CLOSE, ev.EV_CONN_ADDR
WRITE_RESULT = ev.EV_WRITE_RESULT
RECORD = re.compile(r" record kind=(\d+) .*? conn=(\d+)(.*)$", re.M)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("records")
    apps = {}
    try:
        for kind in ("flask-gunicorn-sync", "fastapi-uvicorn"):
            apps[kind] = App(kind, tmp, service=f"records-{kind}")
        ports = [a for app in apps.values() for a in ("--port", str(app.port))]
        agent = Agent([*ports, "--log-level", "debug", "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        yield apps, agent
        assert agent.stop() == 0, agent.stderr[-2000:]
    finally:
        for app in apps.values():
            app.stop()


def one_request(app: App) -> tuple[int, str]:
    """A request on a connection of its own: (its client port, its path)."""
    path = f"/users/{uid()}"
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.connect()
    port = conn.sock.getsockname()[1]
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    return port, path


def records_of(agent: Agent, client_port: int, last: int, timeout: float = 10.0) -> list[int]:
    """The kinds of the records of the connection whose peer is `client_port`, in order,
    once one of kind `last` is among them (the span may be exported before the records
    that follow its response, a close, reach the agent)."""
    peer = f"peer=('127.0.0.1', {client_port})"
    end = time.monotonic() + timeout
    while True:
        lines = RECORD.findall(agent.stderr)
        conns = {conn for kind, conn, rest in lines if peer in rest and int(kind) in (OPEN, ADDR)}
        assert len(conns) <= 1, (client_port, conns)
        kinds = [int(kind) for kind, conn, _ in lines if conn in conns]
        if last in kinds or time.monotonic() > end:
            return kinds
        time.sleep(0.1)


def test_an_accept_with_both_ends_needs_no_address_record(stack, receiver):
    """gunicorn accepts with the peer's address and then asks getsockname(): the open record
    already told the agent both ends, so the request is five records (open, request,
    response head, response body, close; a slow write adds its result) and the span
    still has both ends."""
    apps, agent = stack
    app = apps["flask-gunicorn-sync"]
    port, path = one_request(app)
    (span,) = server_spans(receiver, path)
    a = span["attributes"]
    assert (a["client.address"], a["client.port"]) == ("127.0.0.1", port)
    assert (a["network.local.address"], a["network.local.port"]) == ("127.0.0.1", app.port)
    kinds = records_of(agent, port, last=CLOSE)
    assert kinds[0] == OPEN and kinds[-1] == CLOSE and ADDR not in kinds, kinds
    # a write slower than the kernel side's threshold also reports its result
    assert set(kinds[1:-1]) <= {DATA, WRITE_RESULT} and kinds.count(DATA) >= 2, kinds


def test_an_accept_without_the_peer_still_reports_getpeername(stack, receiver):
    """uvloop (libuv) accepts with no address buffer: the peer comes from getpeername(),
    which the kernel side still reports."""
    apps, agent = stack
    app = apps["fastapi-uvicorn"]
    port, path = one_request(app)
    (span,) = server_spans(receiver, path)
    assert (span["attributes"]["client.address"], span["attributes"]["client.port"]) == ("127.0.0.1", port)
    kinds = records_of(agent, port, last=ADDR)
    assert kinds[0] == OPEN and ADDR in kinds, kinds
