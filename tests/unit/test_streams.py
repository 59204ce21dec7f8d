"""Unit tests of exchange assembly and trace context (spanprobe.streams).

Events are built directly from the spanprobe.events dataclasses, in the order the
kernel side reports them: a DataEvent per read/write (egress captured at the write's
entry), a WriteResult at a write's exit when it matters, ConnEvents for open, ports
and close.
"""

from __future__ import annotations

import pytest
from opentelemetry.trace import TraceFlags

from spanprobe import events as ev
from spanprobe import streams
from spanprobe.clock import MonotonicToWall
from spanprobe.discovery import ProcessRegistry
from spanprobe.privacy import Redactor
from spanprobe.procfs import SysRoot
from spanprobe.routes import RouteMatcher
from spanprobe.spans import SpanBuilder
from spanprobe.streams import Assembler, Exchange, new_span_id, new_trace_id, parse_traceparent

SRV_TGID = 100
CLI_TGID = 200

TP_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
TP_PARENT = 0x00F067AA0BA902B7
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def req(method: str = "GET", target: str = "/", headers: dict[str, str] | None = None,
        body: bytes = b"") -> bytes:
    hs = {"Host": "svc"} | (headers or {})
    if body:
        hs["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items())
    return head.encode() + b"\r\n" + body


def resp(status: int = 200, body: bytes = b"ok", reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class Sim:
    """An Assembler plus helpers that make the events of one connection at a time."""

    def __init__(self, resolve_listen=None):
        self.out: list[Exchange] = []
        self.asm = Assembler(lambda x: self.out.append(x), resolve_listen)

    @staticmethod
    def h(kind: int, ts: int, tgid: int, fd: int, conn_id: int, tid: int | None = None) -> ev.Header:
        return ev.Header(ts, kind, tgid, tgid if tid is None else tid, fd, conn_id)

    def open(self, ts, role, *, tgid=SRV_TGID, fd=5, conn_id=1, peer=None, local=None,
             listen_fd=-1, tid=None, flags=0):
        e = ev.ConnEvent(self.h(ev.EV_CONN_OPEN, ts, tgid, fd, conn_id, tid), listen_fd,
                         ev.AF_INET, role, flags, peer, local)
        return self.asm.open(e)

    def ports(self, ts, *, local, peer, tgid=CLI_TGID, fd=5, conn_id=1):
        e = ev.ConnEvent(self.h(ev.EV_CONN_PORTS, ts, tgid, fd, conn_id), -1, ev.AF_INET,
                         ev.ROLE_CLIENT, 0, peer, local)
        self.asm.ports(e)

    def close(self, ts, *, tgid=SRV_TGID, fd=5, conn_id=1):
        e = ev.ConnEvent(self.h(ev.EV_CONN_CLOSE, ts, tgid, fd, conn_id), -1, ev.AF_INET, 0, 0,
                         None, None)
        self.asm.close(e)

    def _data(self, direction, ts, data, *, tgid, fd, conn_id, tid, length, tail, flags):
        length = len(data) if length is None else length
        e = ev.DataEvent(self.h(ev.EV_DATA, ts, tgid, fd, conn_id, tid), length, data,
                         direction, flags, 0, tail)
        self.asm.data(e)

    def read(self, ts, data, *, tgid=SRV_TGID, fd=5, conn_id=1, tid=None, length=None,
             tail=b"", flags=0):
        self._data(ev.DIR_INGRESS, ts, data, tgid=tgid, fd=fd, conn_id=conn_id, tid=tid,
                   length=length, tail=tail, flags=flags)

    def write(self, ts, data, *, tgid=SRV_TGID, fd=5, conn_id=1, tid=None, length=None,
              tail=b"", flags=0):
        self._data(ev.DIR_EGRESS, ts, data, tgid=tgid, fd=fd, conn_id=conn_id, tid=tid,
                   length=length, tail=tail, flags=flags)

    def write_result(self, ts, ret, asked, *, tgid=SRV_TGID, fd=5, conn_id=1, tid=None):
        self.asm.write_result(ev.WriteResult(self.h(ev.EV_WRITE_RESULT, ts, tgid, fd, conn_id, tid),
                                             ret, asked))

    def drain(self) -> list[Exchange]:
        self.asm.drain()
        out, self.out = self.out, []
        return out


PEER = ("10.0.0.9", 51000)
LOCAL = ("10.0.0.5", 8000)


def server(sim: Sim, ts: int = 1, **kw):
    kw.setdefault("peer", PEER)
    kw.setdefault("local", LOCAL)
    return sim.open(ts, ev.ROLE_SERVER, **kw)


# ---- one server exchange ----

def test_server_request_and_response_make_one_exchange_on_drain():
    sim = Sim()
    conn = server(sim)
    sim.read(10, req("GET", "/users/42?q=1"), tid=101)
    sim.write(20, resp(200, b"hello"), tid=101)
    assert sim.out == []                       # nothing before drain
    assert len(sim.asm.ready) == 1
    [x] = sim.drain()
    assert x.conn is conn
    assert x.conn.peer == PEER and x.conn.local == LOCAL
    assert x.request.method == "GET"
    assert x.request.target == "/users/42?q=1"
    assert x.request.tid == 101
    assert x.request.start_ts == 10
    assert x.response.status == 200
    assert x.response.body_size == 5
    assert x.response.end_ts == 20
    assert x.parent_span_id is None
    assert x.parent_remote is False
    assert x.aborted is None
    assert x.trace_id != 0 and x.span_id != 0
    assert sim.asm.counts["exchanges"] == 1
    assert sim.asm.counts["aborted"] == 0
    assert sim.asm.serving == {}   # no longer in flight
    assert sim.asm.ready == []
    assert sim.drain() == []                   # emitted once


@pytest.mark.parametrize("end", ["close", "evict", "drop"])
def test_a_connection_no_longer_tracked_leaves_no_reference_cycle(end):
    """A connection per request must be freed by reference counting when it ends: a cycle
    per connection (its parsers' callbacks refer to it) left the cyclic collector's passes
    as the agent's largest cost."""
    import gc
    sim = Sim()
    sim.asm.limits = streams.AssemblerLimits(connections=1)
    gc.collect()
    gc.disable()
    try:
        for i in range(1, 21):
            server(sim, ts=i * 100, fd=5 if end != "evict" else i, conn_id=i)
            sim.read(i * 100 + 1, req("GET", f"/users/{i}"), fd=5 if end != "evict" else i, conn_id=i)
            if end == "close":
                sim.write(i * 100 + 2, resp(200), conn_id=i)
                sim.close(i * 100 + 3, conn_id=i)
            elif end == "drop":
                assert sim.asm.drop_connection(SRV_TGID, 5)
        sim.drain()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_no_exchange_before_the_response_is_complete():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    full = resp(200, b"0123456789")
    sim.write(20, full[:-4])
    assert sim.drain() == []
    assert len(sim.asm.serving[SRV_TGID]) == 1
    sim.write(21, full[-4:])
    [x] = sim.drain()
    assert x.response.end_ts == 21
    assert x.response.body_size == 10


def test_keep_alive_sequence_gives_one_exchange_each_in_order():
    sim = Sim()
    server(sim)
    for i, path in enumerate(["/a", "/b", "/c"]):
        sim.read(10 + 10 * i, req("GET", path))
        sim.write(15 + 10 * i, resp(200 + i, path.encode()))
    xs = sim.drain()
    assert [x.request.target for x in xs] == ["/a", "/b", "/c"]
    assert [x.response.status for x in xs] == [200, 201, 202]
    assert [x.request.start_ts for x in xs] == [10, 20, 30]
    assert [x.response.end_ts for x in xs] == [15, 25, 35]
    assert len({x.span_id for x in xs}) == 3
    assert len({x.trace_id for x in xs}) == 3       # each a root of its own trace
    assert all(x.parent_span_id is None for x in xs)
    assert sim.asm.counts["exchanges"] == 3


def test_pipelined_requests_in_one_read_pair_first_in_first_out():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/first") + req("POST", "/second", body=b"abc") + req("GET", "/third"))
    assert [x.request.target for x in sim.asm.conns[(SRV_TGID, 5)].inflight] == \
        ["/first", "/second", "/third"]
    sim.write(20, resp(200, b"1"))
    [x1] = sim.drain()
    assert (x1.request.target, x1.response.status) == ("/first", 200)
    sim.write(30, resp(201, b"22") + resp(404, b"333"))
    x2, x3 = sim.drain()
    assert (x2.request.target, x2.request.method, x2.request.body_size) == ("/second", "POST", 3)
    assert (x2.response.status, x2.response.body_size) == (201, 2)
    assert (x3.request.target, x3.response.status, x3.response.body_size) == ("/third", 404, 3)
    assert sim.asm.counts["unpaired_responses"] == 0


def test_response_without_request_is_counted_unpaired():
    sim = Sim()
    server(sim)
    sim.write(10, resp(200))
    assert sim.drain() == []
    assert sim.asm.counts["unpaired_responses"] == 1


def test_interim_100_continue_does_not_consume_the_pairing():
    sim = Sim()
    server(sim)
    head = req("POST", "/upload", {"Expect": "100-continue", "Content-Length": "5"})
    sim.read(10, head)
    sim.write(11, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert sim.drain() == []
    sim.read(12, b"hello")
    sim.write(20, resp(201, b"done"))
    [x] = sim.drain()
    assert x.request.target == "/upload"
    assert x.request.body_size == 5
    assert x.response.status == 201
    assert x.response.interim is False
    assert sim.asm.counts["unpaired_responses"] == 0


def test_client_interim_response_keeps_the_method_for_the_final_one():
    # HEAD's final response has a Content-Length but no body: the parser must still
    # know the method after the 100 Continue
    sim = Sim()
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, peer=("10.0.0.7", 80))
    sim.write(10, req("HEAD", "/big"), tgid=CLI_TGID)
    sim.read(11, b"HTTP/1.1 100 Continue\r\n\r\n", tgid=CLI_TGID)
    sim.read(12, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n", tgid=CLI_TGID)
    [x] = sim.drain()
    assert x.request.method == "HEAD"
    assert x.response.status == 200
    assert x.response.body_size == 0
    assert x.response.end_ts == 12


# ---- traceparent ----

def test_incoming_traceparent_is_honoured():
    sim = Sim()
    server(sim)
    sim.read(10, req(headers={"traceparent": TRACEPARENT}))
    sim.write(20, resp())
    [x] = sim.drain()
    assert x.trace_id == TP_TRACE
    assert x.parent_span_id == TP_PARENT
    assert x.parent_remote is True
    assert x.trace_flags == 1
    assert x.span_id not in (0, TP_PARENT)


def exported(exchanges: list[Exchange], tmp_path) -> list:
    """The spans the agent hands its exporters for these exchanges (spans.SpanBuilder)."""
    redactor = Redactor([], [])
    builder = SpanBuilder(ProcessRegistry(SysRoot(tmp_path), redactor), RouteMatcher([]),
                          redactor, MonotonicToWall(), "host", {})
    return [builder.build(x) for x in exchanges]


@pytest.mark.parametrize("flags, sampled", [("00", False), ("01", True), ("02", False)])
def test_unsampled_traceparent_flags_are_kept(tmp_path, flags, sampled):
    # W3C trace-flags ride with the trace: the exported span and its remote parent carry
    # the incoming byte as it came (sampled bit 0 stays 0), not the agent's own default
    sim = Sim()
    server(sim)
    sim.read(10, req(headers={"traceparent": TRACEPARENT[:-2] + flags}))
    sim.write(20, resp())
    [span] = exported(sim.drain(), tmp_path)
    assert (span.context.trace_id, span.parent.span_id, span.parent.is_remote) == (
        TP_TRACE, TP_PARENT, True)
    assert span.context.trace_flags == span.parent.trace_flags == TraceFlags(int(flags, 16))
    assert span.context.trace_flags.sampled is sampled


def test_a_trace_the_agent_starts_is_exported_sampled(tmp_path):
    sim = Sim()
    server(sim)
    sim.read(10, req())
    sim.write(20, resp())
    [span] = exported(sim.drain(), tmp_path)
    assert span.parent is None
    assert span.context.trace_flags == TraceFlags(TraceFlags.SAMPLED)


def test_unsampled_flags_follow_the_trace_into_linked_children(tmp_path):
    # CLI_TGID serves an unsampled request and calls SRV_TGID on this host meanwhile: its
    # CLIENT span (in-process child) and SRV's SERVER span (linked by the connection's
    # ends) are in the same trace, so they carry the same flags
    sim = Sim()
    server(sim, tgid=CLI_TGID)
    sim.read(10, req(headers={"traceparent": TRACEPARENT[:-2] + "00"}), tgid=CLI_TGID)
    cx = _client_sends(sim)
    sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, local=SRV_ADDR)
    sim.read(12, req("GET", "/api/items"), tgid=SRV_TGID, fd=4, conn_id=40)
    sim.write(13, resp(200, b"[]"), tgid=SRV_TGID, fd=4, conn_id=40)
    sim.read(14, resp(200, b"[]"), tgid=CLI_TGID, fd=7, conn_id=70)
    sim.write(15, resp(), tgid=CLI_TGID)
    done = {(x.conn.tgid, x.conn.role): x for x in sim.drain()}
    up, down = done[(CLI_TGID, ev.ROLE_SERVER)], done[(SRV_TGID, ev.ROLE_SERVER)]
    client = done[(CLI_TGID, ev.ROLE_CLIENT)]
    assert client is cx and down.parent_span_id == cx.span_id
    assert cx.parent_span_id == up.span_id and up.parent_span_id == TP_PARENT
    spans = exported([up, client, down], tmp_path)
    assert {s.context.trace_id for s in spans} == {TP_TRACE}
    assert [s.context.trace_flags for s in spans] == [0, 0, 0]
    assert [s.parent.trace_flags for s in spans] == [0, 0, 0]


def test_invalid_traceparent_starts_a_new_trace():
    sim = Sim()
    server(sim)
    sim.read(10, req(headers={"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}))
    sim.write(20, resp())
    [x] = sim.drain()
    assert x.parent_span_id is None
    assert x.parent_remote is False
    assert x.trace_id not in (0, TP_TRACE)


def test_client_request_with_traceparent_uses_it():
    # an instrumented client propagates its own context: that wins over the guess
    sim = Sim()
    server(sim)
    sim.read(10, req())
    sim.open(11, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 80))
    sim.write(12, req(headers={"traceparent": TRACEPARENT}), fd=9)
    [cx] = list(sim.asm.conns[(SRV_TGID, 9)].inflight)
    assert (cx.trace_id, cx.parent_span_id, cx.parent_remote) == (TP_TRACE, TP_PARENT, True)


@pytest.mark.parametrize("value, expected", [
    (TRACEPARENT, (TP_TRACE, TP_PARENT, 1)),
    ("  " + TRACEPARENT + " ", (TP_TRACE, TP_PARENT, 1)),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", (TP_TRACE, TP_PARENT, 0)),
    # a later version may carry more fields
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", (TP_TRACE, TP_PARENT, 1)),
])
def test_parse_traceparent_valid(value, expected):
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize("value", [
    None,
    "",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",      # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",      # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",       # trace id 31 chars
    "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",     # trace id 33 chars
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",       # span id 15 chars
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",       # flags 1 char
    "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       # version 1 char
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",         # three fields
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",      # not hex
    "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      # version not hex
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",      # upper case
    "00-0x4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",      # 0x prefix
    "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",      # sign
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0_f067aa0ba902b7-01",      # underscore
    "00-4bf92f3577b34da6a3ce929d0e0e4736-       0ba902b7-01",       # inner spaces
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",    # version 00 has 4 fields
])
def test_parse_traceparent_invalid(value):
    assert parse_traceparent(value) is None


# ---- in-process parent: client calls made while serving ----

def test_client_call_while_serving_exactly_one_request_is_its_child():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/checkout"), tid=101)
    [sx] = list(sim.asm.serving[SRV_TGID])
    sim.open(11, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 8080))
    # another thread of the same process: still certain, only one request in flight
    sim.write(12, req("GET", "/stock"), fd=9, tid=102)
    sim.read(13, resp(200, b"7"), fd=9, tid=102)
    [cx] = sim.drain()
    assert cx.conn.role == ev.ROLE_CLIENT
    assert cx.request.target == "/stock"
    assert cx.trace_id == sx.trace_id
    assert cx.parent_span_id == sx.span_id
    assert cx.parent_remote is False
    assert cx.span_id != sx.span_id
    sim.write(14, resp(200, b"paid"), tid=101)
    [done] = sim.drain()
    assert done is sx
    assert sx.parent_span_id is None


def test_client_call_on_the_thread_with_exactly_one_request_links_to_it():
    sim = Sim()
    server(sim, fd=5, conn_id=1)
    server(sim, fd=6, conn_id=2, peer=("10.0.0.10", 52000))
    sim.read(10, req("GET", "/one"), fd=5, conn_id=1, tid=101)
    sim.read(11, req("GET", "/two"), fd=6, conn_id=2, tid=102)
    one, two = sim.asm.serving[SRV_TGID]
    assert (one.request.target, two.request.target) == ("/one", "/two")
    sim.open(12, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 8080))
    sim.write(13, req("GET", "/down"), fd=9, tid=102)
    [cx] = sim.asm.conns[(SRV_TGID, 9)].inflight
    assert cx.parent_span_id == two.span_id
    assert cx.trace_id == two.trace_id


def test_client_call_on_a_thread_serving_nothing_stays_unlinked():
    sim = Sim()
    server(sim, fd=5, conn_id=1)
    server(sim, fd=6, conn_id=2)
    sim.read(10, req("GET", "/one"), fd=5, conn_id=1, tid=101)
    sim.read(11, req("GET", "/two"), fd=6, conn_id=2, tid=102)
    sim.open(12, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 8080))
    sim.write(13, req("GET", "/down"), fd=9, tid=103)
    [cx] = sim.asm.conns[(SRV_TGID, 9)].inflight
    assert cx.parent_span_id is None
    assert cx.trace_id not in {x.trace_id for x in sim.asm.serving[SRV_TGID]}


def test_client_call_with_two_requests_in_flight_on_the_same_thread_stays_unlinked():
    sim = Sim()
    server(sim, fd=5, conn_id=1)
    server(sim, fd=6, conn_id=2)
    sim.read(10, req("GET", "/one"), fd=5, conn_id=1, tid=101)
    sim.read(11, req("GET", "/two"), fd=6, conn_id=2, tid=101)     # an event loop
    sim.open(12, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 8080))
    sim.write(13, req("GET", "/down"), fd=9, tid=101)
    sim.read(14, resp(), fd=9, tid=101)
    [cx] = sim.drain()
    assert cx.parent_span_id is None
    assert cx.parent_remote is False
    assert cx.trace_id not in {x.trace_id for x in sim.asm.serving[SRV_TGID]}
    assert cx.trace_id != 0


def test_client_call_in_another_process_is_not_a_child():
    sim = Sim()
    server(sim)
    sim.read(10, req(), tid=101)
    sim.open(11, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=9, peer=("10.0.0.7", 8080))
    sim.write(12, req(), tgid=CLI_TGID, fd=9)
    [cx] = sim.asm.conns[(CLI_TGID, 9)].inflight
    assert cx.parent_span_id is None


def test_client_call_after_the_request_was_answered_is_not_a_child():
    sim = Sim()
    server(sim)
    sim.read(10, req(), tid=101)
    sim.write(11, resp(), tid=101)
    [sx] = sim.drain()
    sim.open(12, ev.ROLE_CLIENT, tgid=SRV_TGID, fd=9, peer=("10.0.0.7", 8080))
    sim.write(13, req(), fd=9, tid=101)
    [cx] = sim.asm.conns[(SRV_TGID, 9)].inflight
    assert cx.parent_span_id is None
    assert cx.trace_id != sx.trace_id


# ---- cross-service on one host ----

CLI_LOCAL = ("127.0.0.1", 41000)
SRV_ADDR = ("127.0.0.1", 8000)


def _client_sends(sim: Sim, *, ports_first: bool = False, srv_port: int = 8000):
    peer = ("127.0.0.1", srv_port)
    if ports_first:
        # ESTABLISHED can be reported before connect() returns
        sim.ports(1, local=CLI_LOCAL, peer=peer, tgid=CLI_TGID, fd=7, conn_id=70)
        assert (CLI_TGID, 7, 70) in sim.asm.pending_ports
        assert sim.asm.client_by_tuple == {}
        sim.open(2, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=70, peer=peer)
        assert sim.asm.pending_ports == {}
    else:
        sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=70, peer=peer)
        sim.ports(2, local=CLI_LOCAL, peer=peer, tgid=CLI_TGID, fd=7, conn_id=70)
    conn = sim.asm.conns[(CLI_TGID, 7)]
    assert conn.local == CLI_LOCAL
    assert sim.asm.client_by_tuple == {(CLI_LOCAL, peer): [conn]}
    sim.write(10, req("GET", "/api/items"), tgid=CLI_TGID, fd=7, conn_id=70)
    [cx] = conn.inflight
    return cx


@pytest.mark.parametrize("ports_first", [False, True])
def test_server_accepting_a_traced_client_continues_its_trace(ports_first):
    sim = Sim()
    cx = _client_sends(sim, ports_first=ports_first)
    sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, local=SRV_ADDR)
    sim.read(12, req("GET", "/api/items"), tgid=SRV_TGID, fd=4, conn_id=40)
    sim.write(13, resp(200, b"[]"), tgid=SRV_TGID, fd=4, conn_id=40)
    [sx] = sim.drain()
    assert sx.conn.role == ev.ROLE_SERVER
    assert sx.trace_id == cx.trace_id
    assert sx.parent_span_id == cx.span_id
    assert sx.parent_remote is False
    assert cx.linked_downstream is True
    sim.read(14, resp(200, b"[]"), tgid=CLI_TGID, fd=7, conn_id=70)
    [done] = sim.drain()
    assert done is cx
    assert cx.parent_span_id is None


def test_server_on_another_port_is_not_linked_to_the_client():
    sim = Sim()
    cx = _client_sends(sim, srv_port=9000)
    sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, local=SRV_ADDR)
    sim.read(12, req(), tgid=SRV_TGID, fd=4, conn_id=40)
    [sx] = sim.asm.serving[SRV_TGID]
    assert sx.parent_span_id is None
    assert sx.trace_id != cx.trace_id
    assert cx.linked_downstream is False


def test_client_exchange_is_parent_of_one_server_exchange_only():
    sim = Sim()
    cx = _client_sends(sim)
    for fd in (4, 6):
        sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=fd, conn_id=fd, peer=CLI_LOCAL, local=SRV_ADDR)
        sim.read(12, req(), tgid=SRV_TGID, fd=fd, conn_id=fd)
    first, second = sim.asm.serving[SRV_TGID]
    assert first.parent_span_id == cx.span_id
    assert second.parent_span_id is None


def test_closed_client_is_forgotten_for_linking():
    sim = Sim()
    _client_sends(sim)
    sim.close(20, tgid=CLI_TGID, fd=7, conn_id=70)
    assert sim.asm.client_by_tuple == {}
    [aborted] = sim.drain()
    assert aborted.aborted is not None
    sim.open(21, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, local=SRV_ADDR)
    sim.read(22, req(), tgid=SRV_TGID, fd=4, conn_id=40)
    [sx] = sim.asm.serving[SRV_TGID]
    assert sx.parent_span_id is None


def test_adopted_client_connection_is_linkable():
    sim = Sim()
    conn = sim.asm.adopt(CLI_TGID, 7, 70, ev.ROLE_CLIENT, CLI_LOCAL, SRV_ADDR, 0)
    assert sim.asm.client_by_tuple == {(CLI_LOCAL, SRV_ADDR): [conn]}
    sim.write(10, req(), tgid=CLI_TGID, fd=7, conn_id=70)
    [cx] = conn.inflight
    sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, local=SRV_ADDR)
    sim.read(12, req(), tgid=SRV_TGID, fd=4, conn_id=40)
    [sx] = sim.asm.serving[SRV_TGID]
    assert (sx.trace_id, sx.parent_span_id) == (cx.trace_id, cx.span_id)


def test_ports_for_an_older_connection_on_the_same_fd_wait_for_their_open():
    sim = Sim()
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=1, peer=SRV_ADDR)
    sim.ports(2, local=CLI_LOCAL, peer=SRV_ADDR, tgid=CLI_TGID, fd=7, conn_id=2)
    assert sim.asm.conns[(CLI_TGID, 7)].local is None
    assert set(sim.asm.pending_ports) == {(CLI_TGID, 7, 2)}
    new = sim.open(3, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=2, peer=SRV_ADDR)
    assert new.local == CLI_LOCAL
    assert sim.asm.client_by_tuple == {(CLI_LOCAL, SRV_ADDR): [new]}



def _server_reads(sim: Sim, *, peer, local, tgid=SRV_TGID, fd=4):
    sim.open(11, ev.ROLE_SERVER, tgid=tgid, fd=fd, conn_id=40, peer=peer, local=local)
    sim.read(12, req(), tgid=tgid, fd=fd, conn_id=40)
    return sim.asm.conns[(tgid, fd)].inflight[-1]


@pytest.mark.parametrize("peer,local", [
    (("10.1.2.3", CLI_LOCAL[1]), SRV_ADDR),        # a remote client on the same ports
    (CLI_LOCAL, ("10.0.0.5", SRV_ADDR[1])),        # reached on another local address
    (("::1", CLI_LOCAL[1]), ("::1", SRV_ADDR[1])),  # same ports over IPv6
])
def test_a_server_end_with_other_addresses_on_the_same_ports_stays_unlinked(peer, local):
    sim = Sim()
    cx = _client_sends(sim)
    sx = _server_reads(sim, peer=peer, local=local)
    assert sx.parent_span_id is None and sx.trace_id != cx.trace_id
    assert cx.linked_downstream is False


@pytest.mark.parametrize("local", [None, ("0.0.0.0", 8000), ("::", 8000), ("::ffff:0.0.0.0", 8000),
                                   ("127.0.0.1", 0)])
def test_an_unknown_or_wildcard_local_end_never_links(local):
    sim = Sim()
    cx = _client_sends(sim)
    sx = _server_reads(sim, peer=CLI_LOCAL, local=local)
    assert sx.parent_span_id is None
    assert cx.linked_downstream is False


def test_a_wildcard_client_end_is_not_indexed():
    sim = Sim()
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=70, peer=("0.0.0.0", 8000))
    assert sim.asm.client_by_tuple == {}
    sim.ports(2, local=CLI_LOCAL, peer=("0.0.0.0", 8000), tgid=CLI_TGID, fd=7, conn_id=70)
    assert sim.asm.client_by_tuple == {}


def test_ipv4_mapped_ipv6_ends_link_to_an_ipv4_client():
    sim = Sim()
    cx = _client_sends(sim)
    mapped = lambda ep: ("::ffff:" + ep[0], ep[1])      # noqa: E731 - a dual-stack server's view
    sx = _server_reads(sim, peer=mapped(CLI_LOCAL), local=mapped(SRV_ADDR))
    assert (sx.trace_id, sx.parent_span_id) == (cx.trace_id, cx.span_id)


def test_ipv6_loopback_links():
    sim = Sim()
    cli, srv = ("::1", 41000), ("::1", 8000)
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, fd=7, conn_id=70, peer=srv)
    sim.ports(2, local=cli, peer=srv, tgid=CLI_TGID, fd=7, conn_id=70)
    sim.write(10, req(), tgid=CLI_TGID, fd=7, conn_id=70)
    [cx] = sim.asm.conns[(CLI_TGID, 7)].inflight
    sx = _server_reads(sim, peer=cli, local=srv)
    assert (sx.trace_id, sx.parent_span_id) == (cx.trace_id, cx.span_id)


def test_a_wildcard_listener_address_is_replaced_by_the_reported_one():
    sim = Sim(resolve_listen=lambda pid, fd, fresh: ("0.0.0.0", 8000))
    cx = _client_sends(sim)
    conn = sim.open(11, ev.ROLE_SERVER, tgid=SRV_TGID, fd=4, conn_id=40, peer=CLI_LOCAL, listen_fd=3)
    assert conn.local == ("0.0.0.0", 8000)
    sim.asm.address(ev.ConnEvent(Sim.h(ev.EV_CONN_ADDR, 11, SRV_TGID, 4, 40), -1, ev.AF_INET,
                                 ev.ROLE_SERVER, 0, None, SRV_ADDR))
    assert conn.local == SRV_ADDR
    sim.read(12, req(), tgid=SRV_TGID, fd=4, conn_id=40)
    [sx] = conn.inflight
    assert (sx.trace_id, sx.parent_span_id) == (cx.trace_id, cx.span_id)


def test_two_traced_clients_with_the_same_four_tuple_are_not_told_apart():
    sim = Sim()
    cx = _client_sends(sim)
    peer = ("127.0.0.1", 8000)      # another network namespace: the same addresses
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID + 1, fd=7, conn_id=71, peer=peer)
    sim.ports(2, local=CLI_LOCAL, peer=peer, tgid=CLI_TGID + 1, fd=7, conn_id=71)
    sim.write(10, req(), tgid=CLI_TGID + 1, fd=7, conn_id=71)
    sx = _server_reads(sim, peer=CLI_LOCAL, local=SRV_ADDR)
    assert sx.parent_span_id is None
    assert cx.linked_downstream is False

# ---- partial and vectored writes ----

def test_partial_write_resent_remainder_is_not_parsed_twice():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/big"))
    full = resp(200, b"0123456789")
    sim.write(20, full)
    sim.write_result(21, len(full) - 6, len(full))        # only part went out
    conn = sim.asm.conns[(SRV_TGID, 5)]
    assert conn.egress_skip == 6
    sim.write(30, full[-6:])                               # the app sends the rest again
    assert conn.egress_skip == 0
    sim.write_result(31, 6, 6)
    # the connection goes on: the next exchange must parse cleanly
    sim.read(40, req("GET", "/next"))
    sim.write(50, resp(404, b"no"))
    x1, x2 = sim.drain()
    assert (x1.request.target, x1.response.status, x1.response.body_size) == ("/big", 200, 10)
    assert x1.response.end_ts == 31           # the last write of it finished then
    assert (x2.request.target, x2.response.status) == ("/next", 404)
    assert conn.responses.parse_errors == 0
    assert conn.responses.lost_bytes == 0
    assert sim.asm.counts["unpaired_responses"] == 0


def test_failed_write_resent_entirely_is_skipped():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    full = resp(200, b"abc")
    sim.write(20, full)
    sim.write_result(21, -11, len(full))       # EAGAIN: nothing sent
    conn = sim.asm.conns[(SRV_TGID, 5)]
    assert conn.egress_skip == len(full)
    sim.write(30, full)
    sim.write_result(31, len(full), len(full))
    assert conn.egress_skip == 0
    [x] = sim.drain()
    assert x.response.status == 200
    assert sim.asm.counts["unpaired_responses"] == 0


def test_resend_followed_by_new_bytes_in_one_write_keeps_the_new_bytes():
    sim = Sim()
    server(sim)
    sim.read(10, req("GET", "/a") + req("GET", "/b"))
    r1, r2 = resp(200, b"first"), resp(201, b"second")
    sim.write(20, r1)
    sim.write_result(21, len(r1) - 3, len(r1))
    sim.write(30, r1[-3:] + r2)
    x1, x2 = sim.drain()
    assert (x1.request.target, x1.response.status) == ("/a", 200)
    assert (x2.request.target, x2.response.status, x2.response.body_size) == ("/b", 201, 6)


def test_slow_write_exit_moves_the_response_end():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    full = resp()
    sim.write(20, full)
    sim.write_result(95, len(full), len(full))
    [x] = sim.drain()
    assert x.response.end_ts == 95


def test_vectored_write_reporting_more_than_asked_feeds_a_gap():
    # writev(head, body): the kernel copied the head's buffer only (asked = its size)
    sim = Sim()
    server(sim)
    sim.read(10, req())
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    sim.write(20, head, flags=ev.DATA_VECTOR)
    assert sim.drain() == []
    sim.write_result(25, len(head) + 5000, len(head))
    [x] = sim.drain()
    assert x.response.status == 200
    assert x.response.body_size == 5000
    assert x.response.end_ts == 25
    assert x.aborted is None


def test_write_result_of_an_unknown_connection_is_ignored():
    sim = Sim()
    server(sim)
    sim.write_result(20, 5, 10, conn_id=99)
    assert sim.asm.conns[(SRV_TGID, 5)].egress_skip == 0


# ---- close, exit, unknown ----

def test_close_mid_response_emits_an_aborted_exchange():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    sim.write(20, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    assert sim.drain() == []
    sim.close(30)
    [x] = sim.drain()
    assert x.aborted == "connection closed before the response completed"
    assert x.response.status == 200
    assert x.response.complete is False
    assert x.response.end_ts == 30
    assert sim.asm.counts["aborted"] == 1
    assert sim.asm.counts["exchanges"] == 1
    assert sim.asm.conns == {}
    assert sim.asm.serving == {}


def test_close_mid_response_head_emits_an_aborted_exchange():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    sim.write(20, b"HTTP/1.1 200 OK\r\nContent-Le")
    sim.close(30)
    [x] = sim.drain()
    assert x.aborted is not None
    assert x.response.status is None
    assert sim.asm.counts["aborted"] == 1


def test_close_before_any_response_emits_an_aborted_exchange_without_response():
    sim = Sim()
    server(sim)
    sim.read(10, req())
    sim.close(30)
    [x] = sim.drain()
    assert x.aborted == "connection closed before the response completed"
    assert x.response is None


def test_close_of_client_reading_a_body_until_close_is_not_aborted():
    # no Content-Length: the close is the end of the body
    sim = Sim()
    sim.open(1, ev.ROLE_CLIENT, tgid=CLI_TGID, peer=("10.0.0.7", 80))
    sim.write(10, req(), tgid=CLI_TGID)
    sim.read(20, b"HTTP/1.0 200 OK\r\n\r\nbody bytes", tgid=CLI_TGID)
    sim.close(30, tgid=CLI_TGID)
    [x] = sim.drain()
    assert x.aborted is None
    assert x.response.complete is True
    assert x.response.body_size == 10
    assert sim.asm.counts["aborted"] == 0


def test_close_with_a_half_received_request_emits_nothing():
    sim = Sim()
    server(sim)
    sim.read(10, b"GET /slow HTTP/1.1\r\nHost: sv")
    sim.close(20)
    assert sim.drain() == []
    assert sim.asm.counts["exchanges"] == 0
    assert sim.asm.counts["aborted"] == 0
    assert sim.asm.serving.get(SRV_TGID, []) == []
    assert sim.asm.conns == {}


def test_close_with_other_conn_id_leaves_the_connection_open():
    sim = Sim()
    server(sim, conn_id=1)
    sim.read(10, req())
    sim.close(20, conn_id=2)
    assert (SRV_TGID, 5) in sim.asm.conns
    assert sim.drain() == []


def test_reopening_an_fd_closes_the_previous_connection():
    sim = Sim()
    server(sim, conn_id=1)
    sim.read(10, req("GET", "/old"))
    new = server(sim, ts=20, conn_id=2)
    [x] = sim.drain()
    assert x.request.target == "/old"
    assert x.aborted is not None
    assert sim.asm.conns[(SRV_TGID, 5)] is new


def test_process_exit_closes_that_processes_connections_only():
    sim = Sim()
    server(sim, fd=5, conn_id=1)
    server(sim, fd=6, conn_id=2)
    other = server(sim, tgid=300, fd=5, conn_id=3)
    sim.read(10, req("GET", "/a"), fd=5, conn_id=1)
    sim.read(11, req("GET", "/b"), fd=6, conn_id=2)
    sim.read(12, req("GET", "/c"), tgid=300, fd=5, conn_id=3)
    sim.asm.process_exit(SRV_TGID, 50)
    xs = sim.drain()
    assert sorted(x.request.target for x in xs) == ["/a", "/b"]
    assert all(x.aborted for x in xs)
    assert sim.asm.counts["aborted"] == 2
    assert list(sim.asm.conns) == [(300, 5)]
    assert sim.asm.conns[(300, 5)] is other
    assert SRV_TGID not in sim.asm.serving
    assert [x.request.target for x in sim.asm.serving[300]] == ["/c"]


def test_data_for_an_unknown_connection_is_counted():
    sim = Sim()
    sim.read(10, req())                          # never opened
    assert sim.asm.counts["unknown_connection_data"] == 1
    server(sim, conn_id=1)
    sim.read(11, req(), conn_id=2)               # same fd, another connection
    sim.write(12, resp(), conn_id=2)
    assert sim.asm.counts["unknown_connection_data"] == 3
    assert len(sim.asm.conns[(SRV_TGID, 5)].inflight) == 0
    assert sim.drain() == []


class Listener:
    """A traced process's listening socket as HostSockets reads it: its address by
    (pid, fd), what each reading was asked, and the ports told to the kernel side."""

    def __init__(self, address):
        self.address, self.calls, self.told = address, [], []

    def resolve(self, pid, fd, fresh):
        self.calls.append((pid, fd, fresh))
        return self.address

    def sim(self) -> Sim:
        sim = Sim(self.resolve)
        sim.asm.listen_port = self.told.append
        return sim


def test_server_local_address_resolved_from_the_listening_socket():
    """No end from the kernel side (a port it was not told of): the listener's, and its
    port is told so the next connections have theirs."""
    lis = Listener(("0.0.0.0", 8000))
    sim = lis.sim()
    conn = sim.open(1, ev.ROLE_SERVER, peer=PEER, local=None, listen_fd=3)
    assert lis.calls == [(SRV_TGID, 3, False)]
    assert conn.local == ("0.0.0.0", 8000)
    assert lis.told == [8000]
    conn = sim.open(2, ev.ROLE_SERVER, fd=6, peer=PEER, local=LOCAL, listen_fd=3)
    assert conn.local == LOCAL                  # the kernel's, exact: on the listener's port
    assert lis.calls[1:] == [(SRV_TGID, 3, False)] and lis.told == [8000]
    assert sim.asm.counts["local_ends_refused"] == 0


def test_a_local_end_on_another_port_than_the_listeners_is_refused():
    """The kernel side finds a local end by the peer alone: a client port in use towards
    a port it knows (8000) and one it does not (9000) gives the second connection the
    first one's end. The listener, read again, says which port it is: its own is taken."""
    lis = Listener(("0.0.0.0", 9000))
    sim = lis.sim()
    conn = sim.open(1, ev.ROLE_SERVER, peer=PEER, local=LOCAL, listen_fd=4)
    assert conn.local == ("0.0.0.0", 9000)
    assert lis.calls == [(SRV_TGID, 4, False), (SRV_TGID, 4, True)]
    assert lis.told == [9000]
    assert sim.asm.counts["local_ends_refused"] == 1


def test_a_listener_read_again_that_agrees_keeps_the_kernels_end():
    """The cached reading was of a listener whose fd has been reused since: read again,
    the listener is on the kernel's port, and the kernel's exact end stays."""
    lis = Listener(("0.0.0.0", 9000))
    sim = lis.sim()
    readings = iter([("0.0.0.0", 9000), ("0.0.0.0", 8000)])
    sim.asm.resolve_listen = lambda pid, fd, fresh: next(readings)
    conn = sim.open(1, ev.ROLE_SERVER, peer=PEER, local=LOCAL, listen_fd=4)
    assert conn.local == LOCAL
    assert sim.asm.counts["local_ends_refused"] == 0 and lis.told == []


def test_an_accept_seen_returning_only_takes_both_ends_from_proc():
    """accept() entered before the agent attached: the kernel side opens the connection
    from its exit, with neither end nor listener. Both ends are read for that fd, the
    listener's port is told, and the agent's own-connection check sees the peer."""
    lis = Listener(("0.0.0.0", 8000))
    sim = lis.sim()
    asked, own = [], []
    sim.asm.resolve_ends = lambda pid, fd, conn_id, at: asked.append((pid, fd, conn_id, at)) or (LOCAL, PEER)
    sim.asm.own_connection = lambda peer, local, accepted_ns: own.append((peer, local)) or False
    conn = sim.open(1, ev.ROLE_SERVER, fd=7, conn_id=9, flags=ev.OPEN_EXIT_ONLY)
    assert (conn.local, conn.peer) == (LOCAL, PEER)
    assert asked == [(SRV_TGID, 7, 9, 1)] and lis.calls == [] and lis.told == [LOCAL[1]]
    assert own == [(PEER, LOCAL)]
    assert (sim.asm.counts["accepts_unseen"], sim.asm.counts["accepts_unseen_without_ends"]) == (1, 0)
    sim.read(2, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", fd=7, conn_id=9)
    sim.write(3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", fd=7, conn_id=9)
    (x,) = sim.drain()
    assert x.conn.peer == PEER


def test_an_accept_seen_returning_only_whose_socket_is_gone_is_traced_without_ends():
    sim = Sim()
    sim.asm.resolve_ends = lambda pid, fd, conn_id, at: None    # closed (or reused) before /proc was read
    conn = sim.open(1, ev.ROLE_SERVER, flags=ev.OPEN_EXIT_ONLY)
    assert (conn.local, conn.peer) == (None, None)
    assert (sim.asm.counts["accepts_unseen"], sim.asm.counts["accepts_unseen_without_ends"]) == (1, 1)
    # an ordinary open without ends (accept(fd, NULL, NULL) on a port the kernel side was
    # not told of) is no such case: nothing is read for it
    sim.asm.resolve_ends = lambda pid, fd, conn_id, at: pytest.fail("read for an accept the kernel side saw")
    sim.open(2, ev.ROLE_SERVER, fd=6)
    assert sim.asm.counts["accepts_unseen"] == 1


def test_the_agents_own_connections_are_not_traced():
    own = ("127.0.0.1", 39000)
    sim = Sim()
    sim.asm.own_connection = lambda peer, local, accepted_ns: peer == own and local == ("127.0.0.1", 4318)
    sim.open(1, ev.ROLE_SERVER, fd=5, conn_id=1, peer=own, local=("127.0.0.1", 4318))
    sim.open(2, ev.ROLE_SERVER, fd=6, conn_id=2, peer=PEER, local=LOCAL)
    assert sim.asm.counts["agent_own_connections"] == 1
    for fd, conn_id in ((5, 1), (6, 2)):
        sim.read(10, req("POST", "/v1/traces", body=b"x"), fd=fd, conn_id=conn_id)
        sim.write(11, resp(), fd=fd, conn_id=conn_id)
    [x] = sim.drain()
    assert x.conn.fd == 6
    assert sim.asm.counts["unknown_connection_data"] == 0


# ---- ids ----

def test_ids_are_never_zero(monkeypatch):
    values = iter([0, 0, 7, 0, 9])
    monkeypatch.setattr(streams._rng, "getrandbits", lambda bits: next(values))
    assert new_trace_id() == 7
    assert new_span_id() == 9


def test_ids_fit_their_widths():
    for _ in range(200):
        t, s = new_trace_id(), new_span_id()
        assert 0 < t < 1 << 128
        assert 0 < s < 1 << 64


# ---------------------------------------------------------------- asyncio task links

def _asm_with_server_and_client(owner_fd_for_client):
    from spanprobe import events as ev
    from spanprobe.streams import Assembler

    out = []
    asm = Assembler(out.append)

    def h(kind, ts, fd, conn_id, tid=100):
        return ev.Header(ts, kind, 100, tid, fd, conn_id)

    def open_(fd, role, ts):
        asm.open(ev.ConnEvent(h(ev.EV_CONN_OPEN, ts, fd, ts), 3, ev.AF_INET, role, 0,
                              ("127.0.0.1", 40000 + fd), None))

    def data(fd, conn_id, direction, payload, ts, owner=-1):
        asm.data(ev.DataEvent(h(ev.EV_DATA, ts, fd, conn_id), len(payload), payload, direction, 0, 0,
                              b"", owner))
    return asm, out, open_, data


def test_task_links_need_verified_owners_and_stop_after_a_mismatch():
    from spanprobe import events as ev
    from spanprobe import streams

    asm, out, open_, data = _asm_with_server_and_client(None)
    # two server connections in flight on one thread: only the task owner can tell them apart
    open_(10, ev.ROLE_SERVER, 1)
    open_(11, ev.ROLE_SERVER, 2)
    data(10, 1, ev.DIR_INGRESS, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 3)
    data(11, 2, ev.DIR_INGRESS, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", 4)
    open_(20, ev.ROLE_CLIENT, 5)
    data(20, 5, ev.DIR_EGRESS, b"GET /down HTTP/1.1\r\nHost: y\r\n\r\n", 6, owner=11)
    (client,) = [x for c in asm.conns.values() if c.fd == 20 for x in c.inflight]
    assert client.parent_span_id is None            # not trusted yet: unlinked, not guessed
    for i in range(streams.TASK_TRUST_AFTER):        # responses written from their own tasks
        asm._verify_owner(asm.conns[(100, 10)], 10)
    open_(21, ev.ROLE_CLIENT, 7)
    data(21, 7, ev.DIR_EGRESS, b"GET /down2 HTTP/1.1\r\nHost: y\r\n\r\n", 8, owner=11)
    (client2,) = [x for c in asm.conns.values() if c.fd == 21 for x in c.inflight]
    server_b = asm.conns[(100, 11)].inflight[0]
    assert client2.parent_span_id == server_b.span_id and client2.trace_id == server_b.trace_id
    assert asm.counts["task_links"] == 1
    # a context owned by 10 writing on 11: the kernel's ownership is wrong for this process
    asm._verify_owner(asm.conns[(100, 11)], 10)
    assert asm.counts["task_owner_mismatch"] == 1
    open_(22, ev.ROLE_CLIENT, 9)
    data(22, 9, ev.DIR_EGRESS, b"GET /down3 HTTP/1.1\r\nHost: y\r\n\r\n", 10, owner=11)
    (client3,) = [x for c in asm.conns.values() if c.fd == 22 for x in c.inflight]
    assert client3.parent_span_id is None
