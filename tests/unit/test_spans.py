"""Unit tests of exchange -> span conversion (spanprobe.spans) over a fake /proc."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from spanprobe import __version__
from spanprobe import events as ev
from spanprobe.clock import MonotonicToWall
from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.discovery import _INSTANCE_NS, ProcessRegistry
from spanprobe.httpparse import Message
from spanprobe.privacy import Redactor
from spanprobe.procfs import SysRoot
from spanprobe.routes import RouteMatcher
from spanprobe.spans import SpanBuilder, split_host
from spanprobe.streams import Connection, Exchange

OFFSET = 1_700_000_000_000_000_000
BOOT_ID = "0f3c2d1e-aaaa-bbbb-cccc-123456789abc"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
SPAN = 0xB7AD6B7169203331
PARENT = 0x00F067AA0BA902B7

PID_ENV = 4001        # OTEL_SERVICE_NAME=checkout
PID_SCRIPT = 4002     # python3 app.py --password hunter2
PID_MODULE = 4003     # python -m http.server 8000


def stat_line(pid: int, comm: str, start: int) -> str:
    # fields after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime ...
    return (f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 1 0 "
            f"{start} 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n")


def make_proc(root: Path, pid: int, argv: list[str], comm: str, exe: str, start: int,
              env: dict[str, str] | None = None) -> None:
    p = root / "proc" / str(pid)
    p.mkdir(parents=True)
    (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (p / "comm").write_text(comm + "\n")
    (p / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
    (p / "stat").write_text(stat_line(pid, comm, start))
    os.symlink(exe, p / "exe")


@pytest.fixture
def root(tmp_path: Path) -> SysRoot:
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    make_proc(tmp_path, PID_ENV, ["/srv/bin/checkout-server", "--port", "8000"], "checkout-serve",
              "/srv/bin/checkout-server", 5000, {"PATH": "/usr/bin", "OTEL_SERVICE_NAME": "checkout"})
    make_proc(tmp_path, PID_SCRIPT, ["python3", "app.py", "--password", "hunter2"], "python3",
              "/usr/bin/python3.11", 6000)
    make_proc(tmp_path, PID_MODULE, ["python", "-m", "http.server", "8000"], "python",
              "/usr/bin/python3.11", 7000)
    return SysRoot(tmp_path)


def make_builder(root: SysRoot, extra: dict | None = None, routes=("/users/{id}",)) -> SpanBuilder:
    redactor = Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))
    clock = MonotonicToWall()
    clock.offset = OFFSET
    return SpanBuilder(ProcessRegistry(root, redactor), RouteMatcher(list(routes)), redactor,
                       clock, "host-a", extra if extra is not None else {"deployment.environment": "test"})


@pytest.fixture
def builder(root: SysRoot) -> SpanBuilder:
    return make_builder(root)


def request(method="GET", target="/", headers=None, start=1_000, end=1_100, version="1.1",
            body=0, declared=None, tid=1) -> Message:
    return Message(True, start, tid, end_ts=end, method=method, target=target, version=version,
                   headers=dict(headers or {}), body_size=body, declared_length=declared,
                   complete=True)


def response(status=200, end=5_000, body=0, declared=None, start=4_000) -> Message:
    return Message(False, start, 1, end_ts=end, status=status, body_size=body,
                   declared_length=declared, complete=True)


def exchange(role: int, req: Message, resp: Message | None, *, pid=PID_ENV,
             peer=("10.0.0.9", 51000), local=("10.0.0.5", 8000), parent=None, remote=False,
             aborted=None) -> Exchange:
    conn = Connection(pid, 5, 1, role, 0, peer, local)
    return Exchange(conn, req, TRACE, SPAN, parent, remote, response=resp, aborted=aborted)


# ---- server spans ----

def test_server_span_name_kind_and_attributes(builder):
    req = request("GET", "/users/42?q=shoes&token=abc123",
                  {"host": "shop.example:8443", "user-agent": "curl/8.5.0"})
    x = exchange(ev.ROLE_SERVER, req, response(200, body=12, declared=12))
    span = builder.build(x)
    assert span.name == "GET /users/{id}"
    assert span.kind == SpanKind.SERVER
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "network.transport": "tcp",
        "user_agent.original": "curl/8.5.0",
        "http.response.body.size": 12,
        "network.peer.address": "10.0.0.9",
        "network.peer.port": 51000,
        "network.local.address": "10.0.0.5",
        "network.local.port": 8000,
        "url.scheme": "http",
        "url.path": "/users/42",
        "url.query": "q=shoes&token=REDACTED",
        "http.route": "/users/{id}",
        "client.address": "10.0.0.9",
        "client.port": 51000,
        "server.address": "shop.example",
        "server.port": 8443,
    }
    assert span.status.status_code == StatusCode.UNSET
    assert span.context.trace_id == TRACE
    assert span.context.span_id == SPAN
    assert span.context.is_remote is False
    assert span.context.trace_flags.sampled
    assert span.parent is None
    assert span.start_time == OFFSET + 1_000
    assert span.end_time == OFFSET + 5_000
    assert span.instrumentation_scope.name == "spanprobe"


# ---- the socket's own end (issue 17, item 2) ----

def test_a_forwarded_host_keeps_the_real_local_port_beside_it(builder):
    # a proxy forwards "Host: localhost:8081" to the service listening on 8082
    x = exchange(ev.ROLE_SERVER, request(headers={"host": "localhost:8081"}), response(),
                 local=("127.0.0.1", 8082))
    a = builder.build(x).attributes
    assert (a["server.address"], a["server.port"]) == ("localhost", 8081)
    assert (a["network.local.address"], a["network.local.port"]) == ("127.0.0.1", 8082)


def test_without_a_host_header_the_socket_names_the_server(builder):
    x = exchange(ev.ROLE_SERVER, request(version="1.0"), response(), local=("10.0.0.5", 8000))
    a = builder.build(x).attributes
    assert (a["server.address"], a["server.port"]) == ("10.0.0.5", 8000)


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_local_address_is_never_exported_but_its_port_is(builder, wildcard):
    x = exchange(ev.ROLE_SERVER, request(), response(), local=(wildcard, 8000))
    a = builder.build(x).attributes
    assert "network.local.address" not in a and a["network.local.port"] == 8000
    assert (a["server.address"], a["server.port"]) == ("host-a", 8000)


def test_an_unknown_local_end_is_left_out(builder):
    a = builder.build(exchange(ev.ROLE_SERVER, request(), response(), local=None)).attributes
    assert "network.local.address" not in a and "network.local.port" not in a
    assert a["server.address"] == "host-a" and "server.port" not in a


def test_a_client_span_carries_its_own_local_end(builder):
    x = exchange(ev.ROLE_CLIENT, request(headers={"host": "api.internal"}), response(),
                 peer=("10.0.0.8", 80), local=("10.0.0.5", 45678))
    a = builder.build(x).attributes
    assert (a["network.local.address"], a["network.local.port"]) == ("10.0.0.5", 45678)
    assert (a["server.address"], a["server.port"]) == ("api.internal", 80)



def test_server_address_from_the_local_socket_without_host_header(builder):
    x = exchange(ev.ROLE_SERVER, request("GET", "/health"), response(204))
    a = builder.build(x).attributes
    assert a["server.address"] == "10.0.0.5"
    assert a["server.port"] == 8000
    assert "url.query" not in a
    assert "user_agent.original" not in a
    assert "http.response.body.size" not in a      # 204: no body, no Content-Length


def test_server_without_host_or_local_address_uses_the_host_name(builder):
    x = exchange(ev.ROLE_SERVER, request("GET", "/"), response(), peer=None, local=None)
    a = builder.build(x).attributes
    assert a["server.address"] == "host-a"
    assert "server.port" not in a
    assert "client.address" not in a and "network.peer.address" not in a


def test_server_ipv6_host_header(builder):
    x = exchange(ev.ROLE_SERVER, request("GET", "/", {"host": "[2001:db8::1]:8080"}), response())
    a = builder.build(x).attributes
    assert (a["server.address"], a["server.port"]) == ("2001:db8::1", 8080)


def test_server_request_body_and_protocol_version(builder):
    req = request("POST", "/orders", {"host": "h"}, version="1.0", body=5, declared=5)
    a = builder.build(exchange(ev.ROLE_SERVER, req, response(201, body=0, declared=0))).attributes
    assert a["http.request.body.size"] == 5
    assert a["http.response.body.size"] == 0
    assert a["network.protocol.version"] == "1.0"
    assert a["http.route"] == "/orders"


def test_server_route_heuristic_without_templates(root):
    b = make_builder(root, routes=())
    span = b.build(exchange(ev.ROLE_SERVER, request("DELETE", "/carts/918273/items/5"), response(200)))
    assert span.name == "DELETE /carts/{id}/items/{id}"
    assert span.attributes["http.route"] == "/carts/{id}/items/{id}"
    assert span.attributes["url.path"] == "/carts/918273/items/5"


@pytest.mark.parametrize("status, error", [(200, False), (302, False), (404, False),
                                           (499, False), (500, True), (503, True)])
def test_server_status_error_only_for_5xx(builder, status, error):
    span = builder.build(exchange(ev.ROLE_SERVER, request(), response(status)))
    if error:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == str(status)
    else:
        assert span.status.status_code == StatusCode.UNSET
        assert "error.type" not in span.attributes
    assert span.attributes["http.response.status_code"] == status


def test_aborted_exchange_is_an_error_named_connection_closed(builder):
    why = "connection closed before the response completed"
    span = builder.build(exchange(ev.ROLE_SERVER, request(end=1_100), None, aborted=why))
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == why
    assert span.attributes["error.type"] == "connection_closed"
    assert "http.response.status_code" not in span.attributes
    assert span.end_time == OFFSET + 1_100          # the request's end: no response


def test_aborted_with_a_partial_response_keeps_its_status(builder):
    span = builder.build(exchange(ev.ROLE_SERVER, request(), response(200, end=3_000, body=7),
                                  aborted="connection closed before the response completed"))
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["error.type"] == "connection_closed"
    assert span.status.status_code == StatusCode.ERROR
    assert span.end_time == OFFSET + 3_000


def test_end_never_before_start(builder):
    req = request(start=9_000, end=0)
    span = builder.build(exchange(ev.ROLE_SERVER, req, response(end=0), aborted="x"))
    assert span.start_time == span.end_time == OFFSET + 9_000


def test_truncated_request_head_is_marked(builder):
    req = request()
    req.truncated = True
    assert builder.build(exchange(ev.ROLE_SERVER, req, response())).attributes[
        "spanprobe.capture.truncated"] is True


def test_unknown_method_becomes_other(builder):
    span = builder.build(exchange(ev.ROLE_SERVER, request("PROPFIND", "/dav"), response(207)))
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PROPFIND"


def test_known_method_has_no_original(builder):
    span = builder.build(exchange(ev.ROLE_SERVER, request("PATCH", "/x"), response()))
    assert span.attributes["http.request.method"] == "PATCH"
    assert "http.request.method_original" not in span.attributes


def test_parent_context(builder):
    span = builder.build(exchange(ev.ROLE_SERVER, request(), response(), parent=PARENT, remote=True))
    assert span.parent is not None
    assert span.parent.trace_id == TRACE
    assert span.parent.span_id == PARENT
    assert span.parent.is_remote is True
    local = builder.build(exchange(ev.ROLE_SERVER, request(), response(), parent=PARENT, remote=False))
    assert local.parent.is_remote is False


# ---- client spans ----

def test_client_span_attributes(builder):
    req = request("GET", "/v1/items?id=3&api_key=xyz", {"host": "inventory:8080", "user-agent": "py"})
    x = exchange(ev.ROLE_CLIENT, req, response(200, body=40, declared=40),
                 peer=("10.0.0.7", 8080), local=("10.0.0.5", 45000), parent=PARENT)
    span = builder.build(x)
    assert span.name == "GET /v1/items"
    assert span.kind == SpanKind.CLIENT
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "network.transport": "tcp",
        "user_agent.original": "py",
        "http.response.body.size": 40,
        "network.peer.address": "10.0.0.7",
        "network.peer.port": 8080,
        "network.local.address": "10.0.0.5",
        "network.local.port": 45000,
        "server.address": "inventory",
        "server.port": 8080,
        "url.full": "http://inventory:8080/v1/items?id=3&api_key=REDACTED",
        "url.template": "/v1/items",
    }
    assert span.parent.span_id == PARENT and span.parent.is_remote is False


def test_client_on_port_80_has_no_port_in_url(builder):
    x = exchange(ev.ROLE_CLIENT, request("GET", "/users/7", {"host": "api.example"}), response(),
                 peer=("93.184.216.34", 80))
    a = builder.build(x).attributes
    assert a["url.full"] == "http://api.example/users/7"
    assert a["server.port"] == 80
    assert a["url.template"] == "/users/{id}"


def test_client_without_host_header_uses_the_peer(builder):
    x = exchange(ev.ROLE_CLIENT, request("GET", "/"), response(), peer=("10.0.0.7", 9200))
    a = builder.build(x).attributes
    assert a["server.address"] == "10.0.0.7"
    assert a["url.full"] == "http://10.0.0.7:9200/"


def test_client_ipv6_peer_is_bracketed_in_the_url(builder):
    x = exchange(ev.ROLE_CLIENT, request("GET", "/x?a=1"), response(), peer=("2001:db8::7", 8080))
    a = builder.build(x).attributes
    assert a["server.address"] == "2001:db8::7"
    assert a["url.full"] == "http://[2001:db8::7]:8080/x?a=1"


def test_client_without_peer_takes_the_port_from_host(builder):
    x = exchange(ev.ROLE_CLIENT, request("GET", "/", {"host": "svc:3000"}), response(), peer=None)
    a = builder.build(x).attributes
    assert (a["server.address"], a["server.port"], a["url.full"]) == ("svc", 3000, "http://svc:3000/")


@pytest.mark.parametrize("status, error", [(200, False), (302, False), (400, True), (404, True),
                                           (500, True)])
def test_client_status_error_from_4xx(builder, status, error):
    span = builder.build(exchange(ev.ROLE_CLIENT, request(), response(status)))
    assert (span.status.status_code == StatusCode.ERROR) is error
    assert span.attributes.get("error.type") == (str(status) if error else None)


# ---- resources ----

def test_resource_from_otel_service_name(builder, root):
    res = builder.build(exchange(ev.ROLE_SERVER, request(), response(), pid=PID_ENV)).resource
    start = 5000
    assert dict(res.attributes) == {
        "telemetry.sdk.name": "spanprobe",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
        "host.name": "host-a",
        "service.name": "checkout",
        "service.instance.id": str(uuid.uuid5(_INSTANCE_NS, f"{BOOT_ID}:{PID_ENV}:{start}")),
        "process.pid": PID_ENV,
        "process.executable.name": "checkout-server",
        "process.executable.path": "/srv/bin/checkout-server",
        "process.command_line": "/srv/bin/checkout-server --port 8000",
        "deployment.environment": "test",
    }


def test_resource_from_a_python_script(builder):
    a = builder.build(exchange(ev.ROLE_SERVER, request(), response(), pid=PID_SCRIPT)).resource.attributes
    assert a["service.name"] == "app"
    assert a["process.executable.name"] == "python3.11"
    assert a["process.command_line"] == "python3 app.py --password REDACTED"
    assert a["process.pid"] == PID_SCRIPT


def test_resource_from_a_python_module(builder):
    a = builder.build(exchange(ev.ROLE_SERVER, request(), response(), pid=PID_MODULE)).resource.attributes
    assert a["service.name"] == "http.server"
    assert a["process.command_line"] == "python -m http.server 8000"


def test_resource_of_an_unknown_process(builder):
    a = builder.build(exchange(ev.ROLE_SERVER, request(), response(), pid=99999)).resource.attributes
    assert a["service.name"] == "pid-99999"
    assert a["process.pid"] == 99999
    assert "service.instance.id" not in a
    assert a["deployment.environment"] == "test"


def test_instance_id_stable_per_pid_and_start_time(root, tmp_path):
    a = make_builder(root).resource(PID_SCRIPT).attributes["service.instance.id"]
    b = make_builder(root).resource(PID_SCRIPT).attributes["service.instance.id"]
    assert a == b
    other = make_builder(root).resource(PID_MODULE).attributes["service.instance.id"]
    assert other != a
    # same pid, restarted later: a new instance
    (tmp_path / "proc" / str(PID_SCRIPT) / "stat").write_text(stat_line(PID_SCRIPT, "python3", 6001))
    restarted = make_builder(root).resource(PID_SCRIPT).attributes["service.instance.id"]
    assert restarted != a
    assert str(uuid.UUID(restarted)) == restarted


def test_resource_cached_until_forgotten(builder, tmp_path):
    first = builder.resource(PID_ENV)
    assert builder.resource(PID_ENV) is first
    builder.forget(PID_ENV)
    builder.registry.forget(PID_ENV)
    env = tmp_path / "proc" / str(PID_ENV) / "environ"
    env.write_bytes(b"OTEL_SERVICE_NAME=payments\0")
    assert builder.resource(PID_ENV).attributes["service.name"] == "payments"


def test_agent_resource_attributes_override_process_ones(root):
    b = make_builder(root, extra={"service.namespace": "shop", "host.name": "node-1"})
    a = b.resource(PID_ENV).attributes
    assert a["service.namespace"] == "shop"
    assert a["host.name"] == "node-1"


@pytest.mark.parametrize("value, expected", [
    (None, (None, None)),
    ("", (None, None)),
    ("example.com", ("example.com", None)),
    ("example.com:8080", ("example.com", 8080)),
    (" example.com:8080 ", ("example.com", 8080)),
    ("example.com:http", ("example.com", None)),
    ("[::1]:8443", ("::1", 8443)),
    ("[::1]", ("::1", None)),
    (":8080", (None, 8080)),
    ("example.com:080", ("example.com", 80)),
    # what a client may write that is not a port: none, never an exception or a huge int
    ("example.com:\u00b2", ("example.com", None)),          # isdigit(), not int()'s
    ("example.com:\u0661\u0662", ("example.com", None)),    # Arabic-Indic digits
    ("example.com:0", ("example.com", None)),
    ("example.com:65536", ("example.com", None)),
    ("example.com:99999999999999999999999", ("example.com", None)),
    ("[::1]:99999999999999999999", ("::1", None)),
])
def test_split_host(value, expected):
    assert split_host(value) == expected


def test_a_hostile_host_port_leaves_the_span_with_the_sockets_port(builder):
    req = request("GET", "/", {"host": "shop.example:99999999999999999999999"})
    span = builder.build(exchange(ev.ROLE_SERVER, req, response(200)))
    assert span.attributes["server.address"] == "shop.example"
    assert span.attributes["server.port"] == 8000


@pytest.mark.parametrize("role, status, aborted", [
    (ev.ROLE_SERVER, 200, None), (ev.ROLE_SERVER, 503, None), (ev.ROLE_CLIENT, 404, None),
    (ev.ROLE_SERVER, 200, "connection closed before the response completed")])
def test_a_span_reads_as_the_sdks_readable_span_of_the_same_values(builder, role, status, aborted):
    """Readers other than the agent's encoder (the SDK's exporters, where spanprobe falls
    back to them, the console line) read a Span through the ReadableSpan interface: the
    same values as the SDK's own class holding the same span, and the SDK's encoder
    reads the same message from both."""
    from opentelemetry.sdk.trace import ReadableSpan
    x = exchange(role, request(), response(status=status))
    x.aborted = aborted
    span = builder.build(x)
    sdk = ReadableSpan(name=span.name, context=span.context, parent=span.parent,
                       resource=span.resource, attributes=dict(span.attributes), kind=span.kind,
                       status=span.status, start_time=span.start_time, end_time=span.end_time,
                       instrumentation_scope=span.instrumentation_scope)
    for name in ("name", "context", "parent", "kind", "resource", "attributes", "start_time",
                 "end_time", "instrumentation_scope", "events", "links", "dropped_attributes",
                 "dropped_events", "dropped_links"):
        assert getattr(span, name) == getattr(sdk, name), name
    assert (span.status.status_code, span.status.description) == (sdk.status.status_code, sdk.status.description)
    assert span.get_span_context() == sdk.get_span_context()
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from spanprobe.otlp_wire import SpanEncoder
    assert encode_spans([span]) == encode_spans([sdk])
    # the agent's encoder reads the fields, the SDK's the properties: the same bytes
    assert SpanEncoder().encode([span]) == encode_spans([span]).SerializePartialToString()


# ---- a connection's shared attributes (Span.attr_base) ----

def test_a_keep_alive_connection_shares_its_attributes_from_its_second_request(builder):
    conn = Connection(PID_ENV, 5, 1, ev.ROLE_SERVER, 0, ("10.0.0.9", 51000), ("10.0.0.5", 8000))

    def build(target, host="shop.example:8443"):
        return builder.build(Exchange(conn, request("GET", target, {"host": host}), TRACE, SPAN, None, False,
                                      response=response(200)))

    first, second, third = build("/users/1"), build("/users/2"), build("/users/3")
    assert first.attr_base is None                      # a connection per request pays nothing
    assert second.attr_base is not None and third.attr_base is second.attr_base
    for span in (second, third):                        # the base's items first, as they are
        base = span.attr_base
        assert list(span.attributes.items())[:len(base)] == list(base.items())
    # the same attributes, whichever way they were made
    assert dict(first.attributes) == {**dict(second.attributes), "url.path": "/users/1"}
    assert third.attributes["url.path"] == "/users/3" and "url.path" not in third.attr_base
    moved = build("/users/4", host="other.example")     # what decided the base changed
    assert moved.attr_base is None and moved.attributes["server.address"] == "other.example"
    again = build("/users/5", host="other.example")
    assert again.attr_base is not None and again.attr_base["server.address"] == "other.example"
    assert second.attr_base["server.address"] == "shop.example"     # a base never changes


def test_a_client_span_has_no_shared_attributes(builder):
    conn = Connection(PID_ENV, 6, 2, ev.ROLE_CLIENT, 0, ("10.0.0.7", 80), ("10.0.0.5", 40000))
    for _ in range(2):
        span = builder.build(Exchange(conn, request("GET", "/x", {"host": "api"}), TRACE, SPAN, None, False,
                                      response=response(200)))
        assert span.attr_base is None
