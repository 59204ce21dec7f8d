"""The assembler's caps (spanprobe.streams.AssemblerLimits): each bound holds under a
hostile load, and what it evicts or refuses is counted, never emitted as complete."""

from __future__ import annotations

import dataclasses

import pytest

from spanprobe import events as ev
from spanprobe.httpparse import HEAD_LIMIT
from spanprobe.streams import Assembler, AssemblerLimits

SRV, CLI = 100, 200


def h(kind, ts, tgid, fd, conn_id=1, tid=None):
    return ev.Header(ts, kind, tgid, tgid if tid is None else tid, fd, conn_id)


class Sim:
    def __init__(self, **limits):
        self.out = []
        self.asm = Assembler(self.out.append, limits=AssemblerLimits(**limits))

    def open(self, fd, role=ev.ROLE_SERVER, *, tgid=SRV, conn_id=1, peer=("10.0.0.9", 5000),
             local=("10.0.0.5", 80)):
        return self.asm.open(ev.ConnEvent(h(ev.EV_CONN_OPEN, fd, tgid, fd, conn_id), -1,
                                          ev.AF_INET, role, 0, peer, local))

    def ports(self, fd, *, tgid=CLI, conn_id=1, local, peer):
        self.asm.ports(ev.ConnEvent(h(ev.EV_CONN_PORTS, 0, tgid, fd, conn_id), -1, ev.AF_INET,
                                    ev.ROLE_CLIENT, 0, peer, local))

    def data(self, fd, direction, data, *, tgid=SRV, conn_id=1, ts=10, tid=None):
        self.asm.data(ev.DataEvent(h(ev.EV_DATA, ts, tgid, fd, conn_id, tid), len(data), data,
                                   direction, 0, 0, b""))

    def drain(self):
        self.asm.drain()
        out, self.out[:] = list(self.out), []
        return out


def req(target="/", method="GET"):
    return f"{method} {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode()


def resp(body=b"ok"):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_limits_are_frozen_with_defaults_for_an_assembler_made_without_them():
    asm = Assembler(lambda x: None)
    assert asm.limits == AssemblerLimits()
    assert asm.limits.connections == 65_536
    with pytest.raises(dataclasses.FrozenInstanceError):   # not changed under a running one
        asm.limits.connections = 1


def test_connections_over_the_cap_evict_the_least_recently_active():
    sim = Sim(connections=3)
    for fd in (1, 2, 3):
        sim.open(fd)
    sim.data(1, ev.DIR_INGRESS, req("/one"))          # fd 1 is active again: fd 2 is oldest
    sim.open(4)
    assert list(sim.asm.conns) == [(SRV, 3), (SRV, 1), (SRV, 4)]
    assert sim.asm.counts["connections_evicted"] == 1
    sim.open(5)                                        # now fd 3, then fd 1 with a request
    sim.open(6)
    assert len(sim.asm.conns) == 3
    assert sim.asm.counts["connections_evicted"] == 3
    assert sim.asm.counts["exchanges_dropped"] == 1    # /one: counted, not emitted
    assert sim.asm.serving == {}
    assert sim.drain() == []
    sim.data(1, ev.DIR_EGRESS, resp())                 # its late response: an unknown connection
    assert sim.asm.counts["unknown_connection_data"] == 1


def test_thousands_of_half_heads_left_open_stay_within_both_caps():
    sim = Sim(connections=500, buffered_bytes=50_000)
    half = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 200
    for fd in range(5_000):
        sim.open(fd)
        sim.data(fd, ev.DIR_INGRESS, half)
        assert sim.asm.buffered_bytes <= 50_000
    assert len(sim.asm.conns) == 500
    assert sim.asm.counts["connections_evicted"] == 4_500
    assert sim.asm.buffered_bytes == sum(c.buffered for c in sim.asm.conns.values())
    assert sim.asm.buffered_bytes == sum(len(c.ingress.buf) for c in sim.asm.conns.values())
    assert sim.asm.counts["buffers_cut"] > 0
    assert len(sim.asm.buffering) <= 500


def test_the_buffer_budget_cuts_the_least_recently_active_head_first():
    sim = Sim(buffered_bytes=150)
    first, second = b"GET /a HTTP/1.1\r\nX-A: " + b"a" * 40, b"GET /b HTTP/1.1\r\nX-B: " + b"b" * 40
    for fd in (1, 2):
        sim.open(fd)
    sim.data(1, ev.DIR_INGRESS, first)
    sim.data(2, ev.DIR_INGRESS, second)
    assert sim.asm.buffered_bytes == len(first) + len(second)   # under the budget
    sim.data(2, ev.DIR_INGRESS, b"b" * 30)                         # over: fd 1 is cut
    assert sim.asm.counts["buffers_cut"] == 1
    assert sim.asm.counts["buffered_bytes_cut"] == len(first)
    assert sim.asm.buffered_bytes == len(second) + 30
    assert list(sim.asm.buffering) == [(SRV, 2)]
    # the cut head is a gap: nothing of it is kept (its header values would outlive the
    # budget in a request never answered), and the connection resyncs at its next request
    cut = sim.asm.conns[(SRV, 1)]
    assert not cut.inflight and cut.resync and cut.ingress.msg is None and not cut.ingress.buf
    sim.data(1, ev.DIR_INGRESS, b"a\r\n\r\n")                    # the rest of /a: skipped
    sim.data(1, ev.DIR_INGRESS, b"GET /c HTTP/1.1\r\n\r\n")
    assert [x.request.target for x in cut.inflight] == ["/c"]
    sim.asm.drop_connection(SRV, 2)
    assert sim.asm.buffered_bytes == 0 and not sim.asm.buffering


def test_endless_headers_on_one_connection_stay_within_the_budget():
    budget = 4096
    sim = Sim(buffered_bytes=budget)
    sim.open(1)
    sim.data(1, ev.DIR_INGRESS, b"GET / HTTP/1.1\r\n")
    for i in range(2 * HEAD_LIMIT // 100):
        sim.data(1, ev.DIR_INGRESS, b"X-Filler: " + b"f" * 88 + b"\r\n")
        assert sim.asm.buffered_bytes <= budget
    assert sim.asm.counts["buffers_cut"] >= 1


def test_pipelined_requests_over_the_cap_are_refused_and_pairing_stays_right():
    sim = Sim(inflight_per_connection=2)
    conn = sim.open(1)
    sim.data(1, ev.DIR_INGRESS, b"".join(req(f"/{i}") for i in range(5)))
    assert [x.request.target for x in conn.inflight] == ["/0", "/1"]
    assert sim.asm.counts["inflight_refused"] == 3
    for i in range(5):
        sim.data(1, ev.DIR_EGRESS, resp(f"r{i}".encode()))
    done = sim.drain()
    assert [(x.request.target, x.response.body_size) for x in done] == [("/0", 2), ("/1", 2)]
    assert sim.asm.counts["unpaired_responses"] == 0
    assert conn.refused == 0
    sim.data(1, ev.DIR_INGRESS, req("/next"))          # the refusals are over: tracked again
    sim.data(1, ev.DIR_EGRESS, resp(b"n"))
    [x] = sim.drain()
    assert (x.request.target, x.response.body_size) == ("/next", 1)


def test_requests_pipelined_far_past_the_cap_keep_in_flight_and_pending_methods_capped():
    sim = Sim(inflight_per_connection=64)
    conn = sim.open(1, ev.ROLE_CLIENT, tgid=CLI)
    burst = req("/p", "HEAD") * 1000
    for _ in range(20):
        sim.data(1, ev.DIR_EGRESS, burst, tgid=CLI)
    assert len(conn.inflight) == 64
    assert len(conn.responses.pending_methods) == 64
    assert sim.asm.counts["inflight_refused"] == 20_000 - 64


def test_pending_ports_over_the_cap_evict_the_oldest():
    sim = Sim(pending_ports=2)
    for fd in (1, 2, 3):
        sim.ports(fd, local=("127.0.0.1", 40000 + fd), peer=("127.0.0.1", 80))
    assert list(sim.asm.pending_ports) == [(CLI, 2, 1), (CLI, 3, 1)]
    assert sim.asm.counts["pending_ports_evicted"] == 1


def test_the_client_index_is_bounded_by_the_connection_cap():
    sim = Sim(connections=2)
    for fd in (1, 2, 3):
        sim.open(fd, ev.ROLE_CLIENT, tgid=CLI, peer=("127.0.0.1", 80), local=None)
        sim.ports(fd, local=("127.0.0.1", 40000 + fd), peer=("127.0.0.1", 80))
    assert sum(len(v) for v in sim.asm.client_by_tuple.values()) == 2
    assert (("127.0.0.1", 40001), ("127.0.0.1", 80)) not in sim.asm.client_by_tuple


def test_serving_over_the_cap_is_counted_and_turns_serving_links_off():
    sim = Sim(serving_per_process=2)
    for fd in (1, 2, 3):
        sim.open(fd)
        sim.data(fd, ev.DIR_INGRESS, req(f"/{fd}"), tid=fd)
    assert [x.request.target for x in sim.asm.serving[SRV]] == ["/1", "/2"]
    assert sim.asm.counts["serving_unlisted"] == 1
    sim.open(9, ev.ROLE_CLIENT, peer=("10.0.0.7", 80))
    sim.data(9, ev.DIR_EGRESS, req("/out"), tid=1)        # thread 1 serves /1 alone, as far as
    [cx] = sim.asm.conns[(SRV, 9)].inflight               # the list knows: not certain
    assert cx.parent_span_id is None
    for fd in (1, 2, 3):
        sim.data(fd, ev.DIR_EGRESS, resp())
    assert sim.asm.serving == {} and sim.asm.unlisted == {}
    assert len(sim.drain()) == 3


def test_task_trust_is_kept_for_a_bounded_number_of_processes():
    sim = Sim(processes=1)
    for tgid in (SRV, SRV + 1):
        sim.open(1, tgid=tgid)
        sim.asm.data(ev.DataEvent(h(ev.EV_DATA, 5, tgid, 1), 2, b"x\n", ev.DIR_EGRESS, 0, 0, b"", 1))
    assert list(sim.asm.task_trust) == [SRV]
    assert sim.asm.counts["task_trust_refused"] == 1


def test_drop_connection_forgets_one_connection_and_nothing_else():
    sim = Sim()
    srv = sim.open(1, peer=("127.0.0.1", 41000), local=("127.0.0.1", 80))
    other = sim.open(2)
    sim.data(1, ev.DIR_INGRESS, req("/a") + req("/b"))
    sim.data(2, ev.DIR_INGRESS, req("/c"))
    sim.data(2, ev.DIR_INGRESS, b"GET /half HTTP/1.1\r\n")
    cli = sim.open(3, ev.ROLE_CLIENT, tgid=CLI, peer=("127.0.0.1", 80), local=None)
    sim.ports(3, local=("127.0.0.1", 41000), peer=("127.0.0.1", 80))
    assert sim.asm.drop_connection(SRV, 2) is True
    assert sim.asm.drop_connection(SRV, 2) is False
    assert sim.asm.counts["connections_dropped"] == 1
    assert sim.asm.counts["exchanges_dropped"] == 1
    assert sim.asm.buffered_bytes == 0 and not sim.asm.buffering
    assert [x.request.target for x in sim.asm.serving[SRV]] == ["/a", "/b"]
    assert sim.asm.drop_connection(CLI, 3) is True
    assert sim.asm.client_by_tuple == {}
    sim.data(2, ev.DIR_EGRESS, resp())                 # the dropped one's late bytes
    assert sim.asm.counts["unknown_connection_data"] == 1
    sim.data(1, ev.DIR_EGRESS, resp() + resp())        # the others go on untouched
    assert [x.request.target for x in sim.drain()] == ["/a", "/b"]
    assert not srv.inflight and not other.inflight and not cli.inflight
    assert sim.asm.serving == {}
