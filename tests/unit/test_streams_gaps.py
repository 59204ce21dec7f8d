"""Gaps in a connection's event stream (issue 15, item 1): the kernel's per-connection
loss count changed, a buffer could not be read, or the connection was joined mid-stream.
The assembler must never pair a request with a response across such a gap: it drops
what it cannot prove (counted), and starts again at the next request head."""

from __future__ import annotations

from spanprobe import events as ev
from spanprobe.streams import Assembler, Exchange

SRV, CLI = 100, 200


def req(target: str, method: str = "GET", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {target} HTTP/1.1\r\nHost: svc\r\n{length}\r\n".encode() + body


def resp(status: int, body: bytes = b"ok") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


class Conn:
    """One connection's events, with the kernel's loss count as it would carry it."""

    def __init__(self, role: int, tgid: int = SRV, fd: int = 5, conn_id: int = 1):
        self.out: list[Exchange] = []
        self.asm = Assembler(self.out.append)
        self.role, self.tgid, self.fd, self.conn_id = role, tgid, fd, conn_id
        self.lost = 0
        self.ts = 0
        h = ev.Header(0, ev.EV_CONN_OPEN, tgid, tgid, fd, conn_id)
        self.asm.open(ev.ConnEvent(h, -1, ev.AF_INET, role, 0, ("10.0.0.9", 5000), ("10.0.0.5", 80)))

    def lose(self, n: int = 1) -> None:
        """The kernel failed to send n events of this connection."""
        self.lost += n

    def event(self, direction: int, data: bytes, *, length: int | None = None, flags: int = 0) -> None:
        self.ts += 10
        h = ev.Header(self.ts, ev.EV_DATA, self.tgid, self.tgid, self.fd, self.conn_id)
        self.asm.data(ev.DataEvent(h, len(data) if length is None else length, data, direction,
                                   flags, 0, b"", -1, self.lost))

    def ingress(self, data: bytes, **kw) -> None:
        self.event(ev.DIR_INGRESS, data, **kw)

    def egress(self, data: bytes, **kw) -> None:
        self.event(ev.DIR_EGRESS, data, **kw)

    def pairs(self) -> list[tuple[str, int]]:
        self.asm.drain()
        out = [(x.request.target, x.response.status) for x in self.out]
        self.out.clear()
        return out

    @property
    def counts(self) -> dict[str, int]:
        return self.asm.counts


def status_of(target: str) -> int:
    return int(target.rsplit("/", 1)[1])


def test_no_gap_pairs_as_before():
    c = Conn(ev.ROLE_SERVER)
    for s in (201, 202):
        c.ingress(req(f"/status/{s}"))
        c.egress(resp(s))
    assert c.pairs() == [("/status/201", 201), ("/status/202", 202)]
    assert c.counts["gaps_lost_events"] == 0 and c.counts["exchanges_dropped_gap"] == 0


def test_a_lost_response_on_keep_alive_never_shifts_the_pairing():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201"))
    c.lose()                                  # the response to /201 never arrives
    for s in (202, 203, 205):
        c.ingress(req(f"/status/{s}"))
        c.egress(resp(s))
    got = c.pairs()
    assert got == [("/status/202", 202), ("/status/203", 203), ("/status/205", 205)]
    assert all(status_of(t) == s for t, s in got)
    assert c.counts["gaps_lost_events"] == 1
    assert c.counts["exchanges_dropped_gap"] == 1      # /201: in flight at the gap
    assert c.counts["unpaired_responses"] == 0
    assert c.asm.serving == {}


def test_a_gap_mid_exchange_drops_it_and_its_response():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201", "POST", b"x" * 100), length=None)
    c.lose()
    c.egress(resp(201))                       # answers a request from before the gap
    assert c.pairs() == []
    assert c.counts["exchanges_dropped_gap"] == 1
    assert c.counts["responses_dropped_gap"] == 1
    c.ingress(req("/status/202"))
    c.egress(resp(202))
    assert c.pairs() == [("/status/202", 202)]


def test_a_gap_in_a_request_body_resyncs_at_the_next_request_head():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201", "POST", b"a" * 10)[:-4], length=None)   # body not all read
    c.lose()
    c.ingress(b"GET /status/999 looks like a head but is the rest of a body")
    c.egress(resp(201))
    assert c.pairs() == []
    c.ingress(b"tail of a body, no head at the start\r\n\r\n")
    assert c.pairs() == [] and not c.asm.conns[(SRV, 5)].inflight
    c.ingress(req("/status/203"))
    c.egress(resp(203))
    assert c.pairs() == [("/status/203", 203)]
    assert c.counts["exchanges_dropped_gap"] == 1


def test_a_gap_between_exchanges_costs_nothing_already_paired():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201"))
    c.egress(resp(201))
    c.lose(3)                                 # a whole exchange went missing
    c.ingress(req("/status/202"))
    c.egress(resp(202))
    assert c.pairs() == [("/status/201", 201), ("/status/202", 202)]
    assert c.counts["gaps_lost_events"] == 1
    assert c.counts["exchanges_dropped_gap"] == 0
    assert c.counts["responses_dropped_gap"] == 0


def test_a_lost_request_leaves_its_response_unpaired_not_shifted():
    c = Conn(ev.ROLE_SERVER)
    c.lose()                                  # the read of /201 never arrives
    c.egress(resp(201))
    c.ingress(req("/status/202"))
    c.egress(resp(202))
    assert c.pairs() == [("/status/202", 202)]
    assert c.counts["responses_dropped_gap"] == 1
    assert c.counts["unpaired_responses"] == 0


def test_pipelined_requests_across_a_gap_are_all_dropped():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201") + req("/status/202") + req("/status/203"))
    c.egress(resp(201))
    c.lose()                                  # the response to /202
    c.egress(resp(203))
    assert c.pairs() == [("/status/201", 201)]
    assert c.counts["exchanges_dropped_gap"] == 2    # /202 and /203 were in flight
    assert c.counts["responses_dropped_gap"] == 1
    c.ingress(req("/status/221") + req("/status/222"))
    c.egress(resp(221) + resp(222))
    assert c.pairs() == [("/status/221", 221), ("/status/222", 222)]


def test_client_gap_forgets_the_methods_of_requests_sent():
    # a HEAD response has no body: were HEAD remembered across the gap, the next
    # response's body would be read as the start of another message
    c = Conn(ev.ROLE_CLIENT, tgid=CLI)
    c.egress(req("/status/200", "HEAD"))
    c.lose()                                  # its response
    c.egress(req("/status/201"))
    c.ingress(resp(201, b"HTTP/1.1 500 fake\r\n\r\n"))
    c.egress(req("/status/202"))
    c.ingress(resp(202))
    assert c.pairs() == [("/status/201", 201), ("/status/202", 202)]
    assert c.counts["exchanges_dropped_gap"] == 1
    assert c.counts["unpaired_responses"] == 0 and c.counts["parse_errors"] == 0


def test_unreadable_buffer_is_a_gap():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(req("/status/201"))
    c.egress(b"", length=120, flags=ev.DATA_FAULT | ev.DATA_AT_ENTRY)   # its response, unread
    c.ingress(req("/status/202"))
    c.egress(resp(202))
    assert c.pairs() == [("/status/202", 202)]
    assert c.counts["gaps_read_faults"] == 1 and c.counts["gaps_lost_events"] == 0
    assert c.counts["exchanges_dropped_gap"] == 1


def test_a_gap_releases_buffered_head_bytes():
    c = Conn(ev.ROLE_SERVER)
    c.ingress(b"GET /status/201 HTTP/1.1\r\nHost: a-long-head")
    assert c.asm.buffered_bytes > 0
    c.lose()
    c.ingress(req("/status/202"))
    assert c.asm.buffered_bytes == 0 and not c.asm.buffering
    c.egress(resp(202))
    assert c.pairs() == [("/status/202", 202)]


def test_the_loss_count_is_compared_not_ordered():
    # a 32-bit count wraps: any change is a gap, the same value is none
    c = Conn(ev.ROLE_SERVER)
    c.lost = 2**32 - 1
    c.ingress(req("/status/201"))
    assert c.counts["gaps_lost_events"] == 1
    c.lost = 0
    c.egress(resp(201))
    assert c.counts["gaps_lost_events"] == 2
    c.ingress(req("/status/202"))
    c.egress(resp(202))
    assert c.pairs() == [("/status/202", 202)]
    assert c.counts["gaps_lost_events"] == 2


def test_an_adopted_connection_joins_at_its_next_request_head():
    out: list[Exchange] = []
    asm = Assembler(out.append)
    asm.adopt(SRV, 9, 77, ev.ROLE_SERVER, ("10.0.0.5", 80), ("10.0.0.9", 5000), 0)
    assert asm.counts["gaps_missed_start"] == 1

    def data(ts, direction, payload):
        asm.data(ev.DataEvent(ev.Header(ts, ev.EV_DATA, SRV, SRV, 9, 77), len(payload), payload,
                              direction, 0, 0, b"", -1, 0))

    data(1, ev.DIR_INGRESS, b"rest of a body that started before tracing")
    data(2, ev.DIR_EGRESS, resp(201))             # the answer to a request never seen
    data(3, ev.DIR_INGRESS, req("/status/202"))
    data(4, ev.DIR_EGRESS, resp(202))
    asm.drain()
    assert [(x.request.target, x.response.status) for x in out] == [("/status/202", 202)]
    assert asm.counts["responses_dropped_gap"] == 1
    assert asm.counts["parse_errors"] == 0 and asm.counts["unpaired_responses"] == 0
