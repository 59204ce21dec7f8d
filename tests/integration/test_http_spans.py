"""Spans from real apps behind their usual servers, received over real OTLP/gRPC."""

from __future__ import annotations

import http.client
import random
import socket
import subprocess
import time

import pytest
import requests

from tests.support.checks import duration_agreement, server_spans, uid
from tests.support.procs import Agent, App, users_route

SERVER_APPS = ["flask-gunicorn-sync", "flask-gunicorn-gthread", "fastapi-uvicorn",
               "django-gunicorn-gthread", "stdlib-http-server"]
KEEPALIVE_APPS = ["flask-gunicorn-gthread", "fastapi-uvicorn", "django-gunicorn-gthread",
                  "stdlib-http-server"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("stack")
    apps = {}
    try:
        apps["inventory"] = App("stdlib-http-server", tmp, service="inventory")
        for kind in SERVER_APPS:
            apps[kind] = App(kind, tmp, service=f"shop-{kind}", downstream=apps["inventory"].url)
        ports = [a for app in apps.values() for a in ("--port", str(app.port))]
        agent = Agent([*ports, "--exe", "curl", "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        yield apps, agent
        rc = agent.stop()
        assert rc == 0, agent.stderr[-2000:]
    finally:
        for app in apps.values():
            app.stop()


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_server_span_attributes(stack, receiver, kind):
    apps, _ = stack
    app = apps[kind]
    n = uid()
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.connect()
    client_port = conn.sock.getsockname()[1]
    conn.request("GET", f"/users/{n}?page=2", headers={"User-Agent": "spanprobe-test/1.0"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    (span,) = server_spans(receiver, f"/users/{n}")
    assert span["name"] == f"GET {users_route(kind)}"
    assert span["status"] == "UNSET"
    a = span["attributes"]
    expected = {
        "http.request.method": "GET", "url.path": f"/users/{n}", "url.query": "page=2",
        "url.scheme": "http", "http.route": users_route(kind), "http.response.status_code": 200,
        "server.address": "127.0.0.1", "server.port": app.port,
        "client.address": "127.0.0.1", "client.port": client_port,
        "network.peer.address": "127.0.0.1", "network.peer.port": client_port,
        "network.protocol.version": "1.1", "user_agent.original": "spanprobe-test/1.0",
        "http.response.body.size": len(body),
        "network.local.address": "127.0.0.1", "network.local.port": app.port,
    }
    assert {k: a.get(k) for k in expected} == expected
    assert span["trace_id"] != "0" * 32 and span["span_id"] != "0" * 16
    assert span["parent_span_id"] is None
    assert span["end"] > span["start"] > time.time_ns() - 60 * 10**9
    r = span["resource"]
    assert r["service.name"] == f"shop-{kind}"
    assert r["process.pid"] in app.pids()
    assert r["process.executable.name"].startswith("python")
    assert r["host.name"] == socket.gethostname()
    assert len(r["service.instance.id"]) == 36
    assert ("gunicorn" in r["process.command_line"]) == ("gunicorn" in kind)


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_a_forwarded_host_keeps_the_real_local_port(stack, receiver, kind):
    # issue 17: a proxy forwarding "Host: localhost:8081" to the service on its own port
    app = stack[0][kind]
    n = uid()
    r = requests.get(f"{app.url}/users/{n}", headers={"Host": "localhost:8081"}, timeout=10)
    assert r.status_code == 200
    (span,) = server_spans(receiver, f"/users/{n}")
    a = span["attributes"]
    assert (a["server.address"], a["server.port"]) == ("localhost", 8081)
    assert (a["network.local.address"], a["network.local.port"]) == ("127.0.0.1", app.port)


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_incoming_traceparent_is_honoured(stack, receiver, kind):
    apps, _ = stack
    n = uid()
    trace_id, parent = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64) | 1:016x}"
    r = requests.get(f"{apps[kind].url}/users/{n}", timeout=10,
                     headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status_code == 200
    (span,) = server_spans(receiver, f"/users/{n}")
    assert span["trace_id"] == trace_id
    assert span["parent_span_id"] == parent
    assert span["span_id"] not in (parent, "0" * 16)


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_outbound_call_is_a_child_and_downstream_joins_the_trace(stack, receiver, kind):
    apps, _ = stack
    receiver.clear()
    r = requests.get(f"{apps[kind].url}/call", timeout=10)
    assert r.status_code == 200
    service = f"shop-{kind}"
    (srv,) = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["resource"]["service.name"] == service
                               and s["attributes"].get("url.path") == "/call")
    (cli,) = receiver.wait_for(lambda s: s["kind"] == "CLIENT" and s["resource"]["service.name"] == service)
    (down,) = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["resource"]["service.name"] == "inventory"
                                and s["trace_id"] == srv["trace_id"])
    assert cli["trace_id"] == srv["trace_id"] == down["trace_id"]
    assert cli["parent_span_id"] == srv["span_id"]
    assert down["parent_span_id"] == cli["span_id"]
    assert cli["name"] == "GET /users/{id}"
    a = cli["attributes"]
    inventory = apps["inventory"].port
    assert a["url.full"] == f"http://127.0.0.1:{inventory}/users/7"
    assert a["server.port"] == inventory and a["server.address"] == "127.0.0.1"
    assert a["http.response.status_code"] == 200 and cli["status"] == "UNSET"
    # the client's own end of the connection is the end the downstream server saw
    assert a["network.local.address"] == "127.0.0.1"
    assert a["network.local.port"] == down["attributes"]["client.port"] > 0
    assert srv["start"] <= cli["start"] <= down["start"] <= down["end"] <= cli["end"] <= srv["end"]


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_5xx_is_an_error_and_4xx_is_not_for_servers(stack, receiver, kind):
    apps, _ = stack
    receiver.clear()
    assert requests.get(f"{apps[kind].url}/boom", timeout=10).status_code == 500
    assert requests.get(f"{apps[kind].url}/missing", timeout=10).status_code == 404
    (boom,) = server_spans(receiver, "/boom")
    (missing,) = server_spans(receiver, "/missing")
    assert boom["status"] == "ERROR" and boom["attributes"]["http.response.status_code"] == 500
    assert boom["attributes"]["error.type"] == "500"
    assert missing["status"] == "UNSET" and missing["attributes"]["http.response.status_code"] == 404


def test_curl_client_span_4xx_is_error_and_links_downstream(stack, receiver):
    apps, _ = stack
    inventory = apps["inventory"]
    receiver.clear()
    path = f"/missing-{uid()}"      # the agent traces every curl: another test's may run beside this one
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          f"{inventory.url}{path}?api_key=hunter2"], capture_output=True, text=True)
    assert out.stdout == "404"
    (cli,) = receiver.wait_for(lambda s: s["kind"] == "CLIENT" and s["resource"]["service.name"] == "curl"
                               and s["attributes"].get("url.full", "").endswith(f"{path}?api_key=REDACTED"))
    assert cli["status"] == "ERROR"
    assert cli["attributes"]["url.full"] == f"http://127.0.0.1:{inventory.port}{path}?api_key=REDACTED"
    assert cli["attributes"]["user_agent.original"].startswith("curl/")
    (down,) = server_spans(receiver, path)
    assert down["parent_span_id"] == cli["span_id"] and down["trace_id"] == cli["trace_id"]


@pytest.mark.parametrize("kind", KEEPALIVE_APPS)
def test_keepalive_100_requests_give_100_spans(stack, receiver, kind):
    apps, _ = stack
    base = uid()
    conn = http.client.HTTPConnection("127.0.0.1", apps[kind].port, timeout=10)
    conn.connect()
    port = conn.sock.getsockname()[1]
    for i in range(100):
        conn.request("GET", f"/users/{base + i}")
        assert conn.getresponse().read()
    conn.close()
    paths = {f"/users/{base + i}" for i in range(100)}
    spans = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("url.path") in paths, 100)
    assert len(spans) == 100
    assert {s["attributes"]["url.path"] for s in spans} == paths
    assert {s["attributes"]["client.port"] for s in spans} == {port}
    assert len({s["span_id"] for s in spans}) == 100


def test_pipelined_requests_on_one_write(stack, receiver):
    apps, _ = stack
    app = apps["stdlib-http-server"]
    base = uid()
    raw = b"".join(f"GET /users/{base + i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for i in range(3))
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while data.count(b"HTTP/1.") < 3 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"200 OK") == 3
    spans = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("url.path", "").startswith("/users/")
                              and base <= int(s["attributes"]["url.path"].rsplit("/", 1)[1]) < base + 3, 3)
    assert sorted(s["attributes"]["url.path"] for s in spans) == [f"/users/{base + i}" for i in range(3)]


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_chunked_stream_span_ends_at_last_chunk(stack, receiver, kind):
    from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S
    apps, _ = stack
    receiver.clear()
    r = requests.get(f"{apps[kind].url}/stream", timeout=10)
    assert r.status_code == 200 and r.text.count("chunk") == STREAM_CHUNKS
    (span,) = server_spans(receiver, "/stream")
    duration = (span["end"] - span["start"]) / 1e9
    assert duration >= (STREAM_CHUNKS - 1) * STREAM_PAUSE_S
    assert duration < 5
    assert span["attributes"]["http.response.body.size"] == len(r.content)


@pytest.mark.parametrize("kind", SERVER_APPS)
def test_span_duration_agrees_with_the_app(stack, receiver, kind):
    apps, _ = stack
    agreement = duration_agreement(apps[kind], receiver, f"shop-{kind}")
    print(f"{kind}: span vs app duration, {agreement}")
    assert agreement.ok, str(agreement)


def test_secrets_never_leave_the_host(stack, receiver):
    apps, _ = stack
    app = apps["flask-gunicorn-sync"]
    n = uid()
    r = requests.get(f"{app.url}/users/{n}?token=sekrit-q&password=sekrit-p&page=1", timeout=10,
                     headers={"Authorization": "Bearer sekrit-a", "Cookie": "session=sekrit-c",
                              "X-Api-Key": "sekrit-k"})
    assert r.status_code == 200
    (span,) = server_spans(receiver, f"/users/{n}")
    assert span["attributes"]["url.query"] == "token=REDACTED&password=REDACTED&page=1"
    assert "sekrit" not in repr(span)


def test_connection_closed_mid_request_is_survived(stack, receiver):
    apps, agent = stack
    app = apps["stdlib-http-server"]
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as s:
        s.sendall(b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as s:
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial\": ")
    n = uid()
    assert requests.get(f"{app.url}/users/{n}", timeout=10).status_code == 200
    server_spans(receiver, f"/users/{n}")
    assert agent.proc.poll() is None
