"""Unit tests of the incremental HTTP/1.x parser (spanprobe.httpparse).

Every segment is fed the way the kernel side reports it: the captured prefix `data`,
the real byte count `length` and, when not everything was captured, the last 8 bytes
of the whole buffer as `tail`.
"""

from __future__ import annotations

import random
import re

import pytest

from spanprobe.httpparse import (
    CHUNK_LOST, CHUNK_SIZE, HEAD_LIMIT, IDLE, METHODS, OPEN, RESYNC, UNTIL_CLOSE,
    Message, MessageParser, ParseError, _request_line, _status_line, looks_like_start, parse_head,
)

TID = 4242


class Rec:
    """A parser plus everything its callbacks reported."""

    def __init__(self, is_request: bool, pending: tuple[str, ...] = ()):
        self.heads: list[Message] = []
        self.done: list[Message] = []
        self.events: list[tuple[str, Message]] = []
        self.p = MessageParser(is_request, lambda owner, m: self._head(m), lambda owner, m: self._done(m))
        self.p.pending_methods.extend(pending)

    def _head(self, m: Message) -> None:
        self.heads.append(m)
        self.events.append(("head", m))

    def _done(self, m: Message) -> None:
        self.done.append(m)
        self.events.append(("done", m))

    def feed(self, ts: int, data: bytes, tid: int = TID) -> None:
        """A fully captured segment."""
        self.p.feed(ts, tid, data, len(data), b"")

    def feed_capped(self, ts: int, whole: bytes, capture: int, tid: int = TID) -> None:
        """A segment of which only the first `capture` bytes were copied."""
        if len(whole) > capture:
            self.p.feed(ts, tid, whole[:capture], len(whole), whole[-8:])
        else:
            self.p.feed(ts, tid, whole, len(whole), b"")


GET = (b"GET /users/42?x=1 HTTP/1.1\r\n"
       b"Host: example.com\r\n"
       b"User-Agent: curl/8.0\r\n"
       b"Accept: */*\r\n\r\n")


def chunked_head(status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


# ---------------------------------------------------------------- helpers / heads

def test_looks_like_start():
    for start in (b"GET /", b"POST /", b"PUT /", b"HEAD /", b"DELETE /", b"PATCH /",
                  b"OPTIONS *", b"CONNECT h:443", b"TRACE /", b"HTTP/1.1 200 OK"):
        assert looks_like_start(start), start
    for other in (b"", b"GE", b"get /", b"\x16\x03\x01\x02", b"hello", b"PRI * HTTP/2.0"):
        assert not looks_like_start(other), other


def test_parse_head_request_fields():
    m = Message(True, 1, 2)
    parse_head(b"PUT /a/b HTTP/1.0\r\nX-Multi: one\r\nx-multi: two\r\nNoColonLine\r\n"
               b" folded continuation\r\nContent-Length:  12 \r\n", m)
    assert (m.method, m.target, m.version) == ("PUT", "/a/b", "1.0")
    assert m.headers == {"x-multi": "one, two", "content-length": "12"}
    assert m.declared_length == 12
    assert m.chunked is False


def test_parse_head_status_line_without_reason():
    m = Message(False, 1, 2)
    parse_head(b"HTTP/1.1 204", m)
    assert (m.status, m.version, m.headers) == (204, "1.1", {})


@pytest.mark.parametrize("line,is_request", [
    (b"FETCH / HTTP/1.1", True),
    (b"GET /", True),
    (b"GET / FTP/1.0", True),
    (b"HTTP/1.1 abc OK", False),
    (b"HTTX/1.1 200 OK", False),
    (b"HTTP/1.1", False),
])
def test_parse_head_rejects_bad_start_lines(line, is_request):
    with pytest.raises(ParseError):
        parse_head(line, Message(is_request, 0, 0))


def test_parse_head_partial_drops_cut_last_line():
    m = Message(True, 0, 0)
    parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: abcdef", m, partial=True)
    assert m.headers == {"host": "a"}


def test_chunked_wins_over_content_length():
    m = Message(False, 0, 0)
    parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: gzip, Chunked", m)
    assert m.chunked is True
    assert m.declared_length is None


def test_repeated_content_length_takes_first_value():
    m = Message(False, 0, 0)
    parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5", m)
    assert m.declared_length == 5


def test_bad_content_length_makes_the_head_unparseable():
    """RFC 9112 6.3: an invalid Content-Length is an unrecoverable framing error."""
    with pytest.raises(ParseError):
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: lots", Message(False, 0, 0))


# ---------------------------------------------------------------- requests

def test_simple_get():
    r = Rec(True)
    r.feed(100, GET, tid=7)
    assert len(r.done) == 1
    m = r.done[0]
    assert r.events == [("head", m), ("done", m)]
    assert m.is_request is True
    assert (m.method, m.target, m.version, m.status) == ("GET", "/users/42?x=1", "1.1", None)
    assert m.headers == {"host": "example.com", "user-agent": "curl/8.0", "accept": "*/*"}
    assert (m.start_ts, m.end_ts, m.tid) == (100, 100, 7)
    assert m.body_size == 0
    assert m.head_size == len(GET)
    assert m.complete is True
    assert m.truncated is False
    assert m.declared_length is None
    assert r.p.state == IDLE
    assert r.p.parse_errors == 0 and r.p.lost_bytes == 0


def test_length_defaults_to_data_length():
    r = Rec(True)
    r.p.feed(5, 1, GET)
    assert len(r.done) == 1 and r.done[0].complete


def test_post_body_split_across_feeds():
    body = b'{"name": "alice", "roles": ["admin", "dev"]}'
    head = (b"POST /api/users HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    r = Rec(True)
    r.feed(10, head + body[:5])
    assert len(r.heads) == 1 and r.done == []
    assert r.heads[0].method == "POST"
    r.feed(20, body[5:30], tid=8)
    assert r.done == []
    r.feed(30, body[30:], tid=9)
    assert len(r.done) == 1
    m = r.done[0]
    assert m is r.heads[0]
    assert (m.start_ts, m.end_ts, m.tid) == (10, 30, TID)
    assert m.body_size == len(body) == m.declared_length
    assert m.headers["content-type"] == "application/json"
    assert m.head_size == len(head)
    assert m.complete
    assert r.p.state == IDLE


def test_post_content_length_zero_completes_at_head():
    r = Rec(True)
    r.feed(3, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert len(r.done) == 1
    assert r.done[0].body_size == 0 and r.done[0].end_ts == 3


def test_chunked_request_body():
    r = Rec(True)
    r.feed(1, b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"abc"))
    r.feed(2, chunk(b"defgh") + b"0\r\n\r\n")
    assert len(r.done) == 1
    m = r.done[0]
    assert m.chunked and m.body_size == 8 and m.end_ts == 2 and m.complete


@pytest.mark.parametrize("split", range(1, len(GET)))
def test_head_split_at_every_position(split):
    r = Rec(True)
    r.feed(1, GET[:split])
    assert r.done == []
    r.feed(2, GET[split:])
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.method, m.target) == ("GET", "/users/42?x=1")
    assert m.headers == {"host": "example.com", "user-agent": "curl/8.0", "accept": "*/*"}
    assert (m.start_ts, m.end_ts) == (1, 2)
    assert m.head_size == len(GET)
    assert r.p.state == IDLE


@pytest.mark.parametrize("cuts", [
    (len(GET) - 4, len(GET) - 3, len(GET) - 2, len(GET) - 1),   # one byte of the CRLFCRLF each
    (len(GET) - 3, len(GET) - 1),
    (len(GET) - 2,),
])
def test_head_split_inside_blank_line(cuts):
    r = Rec(True)
    bounds = (0, *cuts, len(GET))
    for ts, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1):
        r.feed(ts, GET[a:b])
    assert len(r.done) == 1
    assert r.done[0].end_ts == len(bounds) - 1
    assert r.done[0].headers["accept"] == "*/*"


def test_post_fed_byte_by_byte():
    body = b"a=1&b=2&c=3"
    raw = b"POST /form HTTP/1.1\r\nContent-Length: 11\r\n\r\n" + body + GET
    r = Rec(True)
    for i in range(len(raw)):
        r.feed(i, raw[i:i + 1])
    assert [(m.method, m.body_size) for m in r.done] == [("POST", 11), ("GET", 0)]
    post, get = r.done
    assert (post.start_ts, post.end_ts) == (0, len(raw) - len(GET) - 1)
    assert (get.start_ts, get.end_ts) == (len(raw) - len(GET), len(raw) - 1)


def test_pipelined_requests_in_one_segment():
    post = b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    seg = GET + post + b"DELETE /items/9 HTTP/1.1\r\nHost: h\r\n\r\n"
    r = Rec(True)
    r.feed(50, seg)
    assert [(m.method, m.target, m.body_size) for m in r.done] == [
        ("GET", "/users/42?x=1", 0), ("POST", "/p", 4), ("DELETE", "/items/9", 0)]
    assert all((m.start_ts, m.end_ts, m.complete) == (50, 50, True) for m in r.done)
    assert r.p.state == IDLE


def test_pipelined_request_split_across_segments():
    post = b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    seg = GET + post
    r = Rec(True)
    r.feed(1, seg[:len(GET) + 10])
    r.feed(2, seg[len(GET) + 10:])
    assert [(m.method, m.start_ts, m.end_ts) for m in r.done] == [("GET", 1, 1), ("POST", 1, 2)]


def test_stray_crlf_between_requests_is_skipped():
    r = Rec(True)
    r.feed(1, GET + b"\r\n")
    r.feed(2, b"\r\n" + GET)
    assert len(r.done) == 2
    assert r.done[1].start_ts == 2
    assert r.p.parse_errors == 0


def test_keep_alive_sequence_both_directions():
    req, resp = Rec(True), Rec(False)
    bodies = [b"first", b"second!", b""]
    for i, body in enumerate(bodies):
        t = 100 * (i + 1)
        req.feed(t, b"GET /r/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, tid=10 + i)
        resp.p.pending_methods.append(req.done[-1].method)
        resp.feed(t + 5, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), tid=20 + i)
        if body:
            resp.feed(t + 7, body, tid=20 + i)
    assert [(m.target, m.start_ts, m.end_ts, m.tid) for m in req.done] == [
        ("/r/0", 100, 100, 10), ("/r/1", 200, 200, 11), ("/r/2", 300, 300, 12)]
    assert [(m.status, m.body_size, m.start_ts, m.end_ts, m.tid) for m in resp.done] == [
        (200, 5, 105, 107, 20), (200, 7, 205, 207, 21), (200, 0, 305, 305, 22)]
    assert not resp.p.pending_methods
    assert req.p.state == resp.p.state == IDLE


# ---------------------------------------------------------------- chunked responses

def test_chunked_response_terminator_in_own_write():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head())
    assert len(r.heads) == 1 and r.done == []
    r.feed(2, chunk(b"hello"))
    r.feed(3, chunk(b" world"))
    assert r.done == []
    r.feed(4, b"0\r\n\r\n")
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.status, m.chunked, m.body_size) == (200, True, 11)
    assert (m.start_ts, m.end_ts) == (1, 4)
    assert m.declared_length is None
    assert m.headers == {"content-type": "text/plain", "transfer-encoding": "chunked"}
    assert m.complete and r.p.parse_errors == 0 and r.p.state == IDLE


def test_chunked_response_terminator_in_same_write():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head() + chunk(b"hello"))
    r.feed(2, chunk(b" world") + b"0\r\n\r\n")
    assert len(r.done) == 1
    assert (r.done[0].body_size, r.done[0].end_ts) == (11, 2)


def test_chunked_with_extensions_trailers_and_next_response():
    r = Rec(False, ("GET", "GET"))
    seg = (chunked_head() + b"5;name=value\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
           + b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
    r.feed(9, seg)
    assert [(m.status, m.body_size) for m in r.done] == [(200, 5), (404, 4)]
    assert r.p.parse_errors == 0 and r.p.state == IDLE


def test_chunked_fed_byte_by_byte():
    raw = (chunked_head() + chunk(b"x" * 17) + chunk(b"y" * 300) + b"0\r\nT: v\r\n\r\n"
           + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    r = Rec(False, ("GET", "GET"))
    for i in range(len(raw)):
        r.feed(i, raw[i:i + 1])
    assert [(m.status, m.body_size, m.complete) for m in r.done] == [(200, 317, True), (200, 2, True)]
    assert r.p.parse_errors == 0
    assert r.done[1].end_ts == len(raw) - 1


def test_chunk_size_line_split_between_cr_and_lf():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head() + b"5\r")
    r.feed(2, b"\nhello\r\n")
    r.feed(3, b"0\r\n\r\n")
    assert r.p.parse_errors == 0
    assert [(m.body_size, m.end_ts) for m in r.done] == [(5, 3)]


def test_chunked_gap_inside_chunk_keeps_sync():
    """A 10000-byte chunk captured 2048 bytes at a time keeps exact framing."""
    payload = b"a" * 10000
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head())
    r.feed_capped(2, b"2710\r\n" + payload, 2048)      # CRLF after data not in this write
    assert r.p.state not in (CHUNK_LOST, IDLE)
    r.feed(3, b"\r\n" + chunk(b"tail!"))
    r.feed(4, b"0\r\n\r\n")
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.body_size, m.end_ts, m.complete) == (10005, 4, True)
    assert r.p.parse_errors == 0


def test_chunked_gap_ending_exactly_at_chunk_end_keeps_sync():
    """One write per chunk ('size CRLF data CRLF'), as many servers do, larger than capture."""
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head())
    r.feed_capped(2, chunk(b"b" * 10000), 2048)
    assert r.p.state == CHUNK_SIZE
    r.feed_capped(3, chunk(b"c" * 5000), 2048)
    assert r.p.state == CHUNK_SIZE
    r.feed(4, b"0\r\n\r\n")
    assert len(r.done) == 1
    assert (r.done[0].body_size, r.done[0].end_ts) == (15000, 4)


def test_chunked_sync_lost_terminator_in_tail():
    """The gap swallows a chunk boundary; the tail's 0 CRLF CRLF still ends the message."""
    whole = chunk(b"d" * 5000) + chunk(b"e" * 3000) + b"0\r\n\r\n"
    r = Rec(False, ("GET", "GET"))
    r.feed(1, chunked_head())
    r.feed_capped(2, whole, 2048)
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.end_ts, m.complete) == (2, True)
    # framing bytes are counted once sync is lost: between the payload and the wire size
    assert 8000 <= m.body_size <= len(whole)
    assert r.p.state == IDLE
    r.feed(3, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!")
    assert [(x.status, x.body_size, x.end_ts) for x in r.done[1:]] == [(200, 1, 3)]


def test_chunked_sync_lost_terminator_in_later_write():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head())
    r.feed_capped(2, chunk(b"d" * 5000) + chunk(b"e" * 3000), 2048)
    assert r.p.state == CHUNK_LOST
    assert r.done == []
    r.feed_capped(3, b"f" * 100, 2048)   # still inside the lost region: no end yet
    assert r.done == []
    r.feed(4, b"0\r\n\r\n")
    assert len(r.done) == 1
    assert (r.done[0].end_ts, r.done[0].complete) == (4, True)


def test_chunked_sync_lost_ends_at_close():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head())
    r.feed_capped(2, chunk(b"d" * 5000) + chunk(b"e" * 3000), 2048)
    assert r.p.close(99) is None
    assert len(r.done) == 1
    assert (r.done[0].end_ts, r.done[0].complete) == (2, True)


def test_bad_chunk_size_counts_parse_error():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head() + b"zz\r\nhello\r\n")
    assert r.p.parse_errors == 1
    assert r.p.state == CHUNK_LOST
    r.feed(2, b"0\r\n\r\n")
    assert len(r.done) == 1 and r.done[0].end_ts == 2


# ---------------------------------------------------------------- Content-Length gaps

def test_content_length_body_larger_than_capture():
    body = bytes(range(256)) * 400          # 102400 bytes
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    r = Rec(False, ("GET", "GET"))
    r.feed_capped(7, whole, 2048)
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.body_size, m.declared_length, m.end_ts, m.complete) == (102400, 102400, 7, True)
    assert r.p.lost_bytes == 0
    r.feed(8, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [(x.status, x.start_ts) for x in r.done[1:]] == [(201, 8)]


def test_content_length_body_over_several_gapped_writes():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n"
    r = Rec(False, ("GET",))
    r.feed_capped(1, head + b"x" * 10000, 2048)
    r.feed_capped(2, b"y" * 15000, 2048)
    assert r.done == []
    r.feed_capped(3, b"z" * 5000, 2048)
    assert len(r.done) == 1
    assert (r.done[0].body_size, r.done[0].start_ts, r.done[0].end_ts) == (30000, 1, 3)


def test_gap_beyond_content_length_counts_lost_bytes():
    head = b"POST /up HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
    r = Rec(True)
    # body plus 700 bytes of a following request that were never captured
    r.feed_capped(1, head + b"q" * 5000 + b"r" * 700, 1024)
    assert len(r.done) == 1
    assert r.done[0].body_size == 5000
    assert r.p.lost_bytes == 700
    assert r.p.state == IDLE


def test_gap_while_idle_counts_lost_bytes():
    r = Rec(True)
    r.p.feed(1, TID, b"", 300, b"12345678")
    assert r.p.lost_bytes == 300
    assert r.done == [] and r.p.state == IDLE


# ---------------------------------------------------------------- bodyless responses

def test_response_to_head_has_no_body():
    r = Rec(False, ("HEAD", "GET"))
    r.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert [(m.status, m.body_size, m.declared_length, m.complete) for m in r.done] == [
        (200, 0, 1234, True), (200, 5, 5, True)]
    assert not r.p.pending_methods


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    r = Rec(False, ("GET", "GET"))
    r.feed(1, b"HTTP/1.1 %d X\r\nContent-Length: 99\r\nETag: \"v1\"\r\n\r\n" % status)
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.status, m.body_size, m.end_ts, m.complete) == (status, 0, 1, True)
    assert m.headers["etag"] == '"v1"'
    r.feed(2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [(x.status, x.body_size) for x in r.done[1:]] == [(200, 2)]


def test_interim_1xx_then_final():
    r = Rec(False, ("POST",))
    r.feed(1, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert len(r.done) == 1
    assert (r.done[0].status, r.done[0].interim, r.done[0].complete) == (100, True, True)
    assert list(r.p.pending_methods) == ["POST"]     # the final response still owes it
    r.feed(2, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
              b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert [(m.status, m.interim, m.body_size) for m in r.done] == [
        (100, True, 0), (103, True, 0), (201, False, 2)]
    assert not r.p.pending_methods


def test_response_without_length_ends_at_close():
    r = Rec(False, ("GET",))
    r.feed(1, b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nabc")
    assert r.p.state == UNTIL_CLOSE
    r.feed(2, b"defg")
    r.feed_capped(3, b"h" * 5000, 2048)
    assert r.done == []
    assert r.p.close(50) is None
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.version, m.body_size, m.start_ts, m.end_ts, m.complete) == ("1.0", 5007, 1, 3, True)


def test_request_without_length_has_no_body():
    r = Rec(True)
    r.feed(1, b"DELETE /a HTTP/1.1\r\n\r\n")
    assert len(r.done) == 1 and r.done[0].body_size == 0


# ---------------------------------------------------------------- truncated heads

def big_cookie_get() -> bytes:
    return (b"GET /dash?tab=1 HTTP/1.1\r\nHost: app\r\nAccept: text/html\r\n"
            b"Cookie: " + b"c" * 3000 + b"\r\nX-After: 1\r\n\r\n")


def test_truncated_get_head_completes_immediately():
    r = Rec(True)
    raw = big_cookie_get()
    r.feed_capped(5, raw, 2048)
    assert len(r.done) == 1
    m = r.done[0]
    assert r.heads == [m]
    assert (m.method, m.target, m.truncated, m.complete) == ("GET", "/dash?tab=1", True, True)
    assert m.headers == {"host": "app", "accept": "text/html"}      # cut Cookie dropped
    assert (m.start_ts, m.end_ts) == (5, 5)
    assert m.head_size == 2048
    assert r.p.state == IDLE
    r.feed(6, GET)
    assert [x.start_ts for x in r.done] == [5, 6]


def test_truncated_post_head_stays_open_until_next_request():
    r = Rec(True)
    raw = (b"POST /up HTTP/1.1\r\nContent-Length: 10\r\nX-Big: " + b"b" * 3000
           + b"\r\n\r\n0123456789")
    r.feed_capped(1, raw, 2048)
    assert r.done == [] and r.p.state == OPEN
    assert r.heads[0].declared_length == 10 and r.heads[0].truncated
    r.feed(2, GET)
    assert [(m.method, m.end_ts, m.complete) for m in r.done] == [("POST", 1, True), ("GET", 2, True)]


def test_truncated_response_head_open_until_next_start_line():
    r = Rec(False, ("GET", "GET"))
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: " + b"s" * 3000
           + b"\r\nContent-Length: 5\r\n\r\nhello")
    r.feed_capped(1, raw, 2048)
    assert r.done == []
    assert r.p.state == OPEN
    assert len(r.heads) == 1
    m = r.heads[0]
    assert (m.status, m.truncated, m.headers) == (200, True, {"content-type": "text/html"})
    assert list(r.p.pending_methods) == ["GET"]      # one request answered, one still owed
    r.feed(2, b"more body bytes")
    assert r.done == []
    r.feed(3, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert [(x.status, x.start_ts, x.end_ts, x.complete) for x in r.done] == [
        (200, 1, 2, True), (404, 3, 3, True)]
    # the uncaptured rest of the first write (end of head + body, split unknown) is not
    # counted: only what is certainly body is
    assert (m.head_size, m.body_size) == (2048, len(b"more body bytes"))


def test_truncated_response_head_ends_at_close():
    r = Rec(False, ("GET",))
    r.feed_capped(1, b"HTTP/1.1 500 Oops\r\nX-Trace: " + b"t" * 5000 + b"\r\n\r\n", 1024)
    assert r.p.state == OPEN
    assert r.p.close(9) is None
    assert [(m.status, m.end_ts, m.complete, m.truncated) for m in r.done] == [(500, 1, True, True)]


def test_truncated_chunked_response_head():
    r = Rec(False, ("GET",))
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Pad: " + b"p" * 3000
           + b"\r\n\r\n" + chunk(b"abc") + b"0\r\n\r\n")
    r.feed_capped(4, raw, 2048)
    # chunked framing visible but the head end lost: finish on the terminator in the tail
    assert [(m.status, m.chunked, m.truncated, m.end_ts) for m in r.done] == [(200, True, True, 4)]


def test_head_over_limit_without_gap_is_truncated():
    r = Rec(True)
    r.feed(1, b"GET /huge HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * (HEAD_LIMIT + 10))
    assert len(r.done) == 1
    m = r.done[0]
    assert (m.target, m.truncated, m.headers) == ("/huge", True, {"host": "h"})


# ---------------------------------------------------------------- garbage and resync

def test_garbage_resyncs_at_next_start_line():
    r = Rec(True)
    r.feed(1, b"\x16\x03\x01\x02\x00binary junk\r\n\r\n")
    assert r.p.parse_errors == 1
    assert r.p.state == RESYNC
    assert r.done == [] and r.heads == []
    r.feed(2, b"still junk, no start line")
    assert r.p.state == RESYNC
    assert r.p.lost_bytes == len(b"still junk, no start line")
    r.p.feed(3, TID, b"xx", 500, b"12345678")
    assert r.p.lost_bytes == len(b"still junk, no start line") + 500
    r.feed(4, GET)
    assert [(m.method, m.start_ts, m.complete) for m in r.done] == [("GET", 4, True)]
    assert r.p.parse_errors == 1
    assert r.p.state == IDLE


def test_bad_status_line_resyncs_and_next_response_parses():
    r = Rec(False, ("GET", "GET"))
    r.feed(1, b"HTTP/1.1 twohundred OK\r\nContent-Length: 2\r\n\r\nok")
    assert r.p.parse_errors == 1 and r.done == []
    r.feed(2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [(m.status, m.body_size) for m in r.done] == [(200, 2)]


def test_unknown_method_is_parse_error():
    r = Rec(True)
    r.feed(1, b"BREW /pot HTTP/1.1\r\n\r\n")
    assert r.p.parse_errors == 1 and r.p.state == RESYNC and r.done == []


# ---------------------------------------------------------------- close

def test_close_mid_body_returns_incomplete_message():
    r = Rec(True)
    r.feed(1, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n1234")
    m = r.p.close(9)
    assert m is not None
    assert (m.method, m.body_size, m.complete, m.start_ts, m.end_ts) == ("POST", 4, False, 1, 9)
    assert r.done == [m]
    assert r.p.state == IDLE and r.p.msg is None
    assert r.p.close(10) is None
    assert r.done == [m]


def test_close_mid_head_returns_incomplete_message():
    r = Rec(True)
    r.feed(1, GET[:20])
    m = r.p.close(5)
    assert m is not None and m.complete is False and m.end_ts == 5
    assert r.heads == []           # the head was never seen whole
    assert r.done == [m]


def test_close_mid_chunked_is_incomplete():
    r = Rec(False, ("GET",))
    r.feed(1, chunked_head() + chunk(b"part"))
    m = r.p.close(7)
    assert m is not None
    assert (m.body_size, m.complete, m.end_ts) == (4, False, 7)


def test_close_when_idle_does_nothing():
    r = Rec(True)
    r.feed(1, GET)
    assert r.p.close(2) is None
    assert len(r.done) == 1


@pytest.mark.parametrize("line", [b"GET /", b"POST /", b"PUT /", b"DELETE /", b"HEAD /",
                                  b"OPTIONS *", b"PATCH /", b"CONNECT h:443", b"TRACE /"])
def test_every_standard_method_starts_a_request(line):
    # RFC 9110's methods and PATCH (RFC 5789) parse; others are errors (BREW, above)
    r = Rec(True)
    r.feed(1, line + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    [m] = r.done
    assert (m.method, m.target) == tuple(line.decode().split(" "))
    assert r.p.parse_errors == 0


@pytest.mark.parametrize("split", ["whole", "every 1000", "every 7", "blank+1", "blank+2",
                                   "blank+3"])
@pytest.mark.parametrize("over", [0, 1])
def test_a_head_at_the_limit_is_whole_and_one_byte_over_is_cut(over, split):
    # HEAD_LIMIT bounds the head bytes kept, the blank line excluded, however the
    # segments fall (blank+n: the blank line split after its n-th byte)
    start = b"GET /edge HTTP/1.1\r\nX-Pad: "
    head = start + b"p" * (HEAD_LIMIT + over - len(start))
    raw = head + b"\r\n\r\n"
    if split.startswith("every"):
        cuts = list(range(0, len(raw), int(split.split()[1])))
    else:
        cuts = [0] if split == "whole" else [0, len(head) + int(split[-1])]
    r = Rec(True)
    for a, b in zip(cuts, cuts[1:] + [len(raw)]):
        r.feed(1 + a, raw[a:b])
    [m] = r.done
    assert r.p.parse_errors == 0 and r.p.state == IDLE
    if over:
        assert m.truncated and m.head_size == HEAD_LIMIT
    else:
        assert not m.truncated and m.head_size == HEAD_LIMIT + 4
        assert m.headers["x-pad"] == head[len(start):].decode()


@pytest.mark.parametrize("split", ["whole", "blank+1", "blank+2", "blank+3"])
@pytest.mark.parametrize("over", [0, 1])
def test_a_trailer_section_at_the_limit_ends_the_message_and_one_byte_over_is_counted(over, split):
    # bounded like a head: HEAD_LIMIT bytes kept, the last chunk's CRLF included
    before = chunked_head() + chunk(b"abc") + b"0\r\nT: " + b"t" * (HEAD_LIMIT - 5 + over)
    raw = before + b"\r\n\r\n"
    cuts = [0] if split == "whole" else [0, len(before) + int(split[-1])]
    r = Rec(False, ("GET",))
    for a, b in zip(cuts, cuts[1:] + [len(raw)]):
        r.feed(1 + a, raw[a:b])
    [m] = r.done
    assert (m.status, m.body_size, m.complete) == (200, 3, True)
    assert r.p.parse_errors == over
    assert r.p.state == (RESYNC if over else IDLE)


# The start lines as the module docstring states them, as patterns: the parser reads them
# by position (cheaper), and must take exactly what these take.
_REQUEST_LINE_SPEC = re.compile(r"(%s) ([^\x00-\x20\x7f]+) HTTP/(1\.[0-9])" % "|".join(sorted(METHODS)))
_STATUS_LINE_SPEC = re.compile(r"HTTP/(1\.[0-9]) ([1-5][0-9][0-9])(?: .*)?", re.DOTALL)
_PIECES = ["GET", "POST", "get", "PATCH", "FOO", " ", "  ", "/", "/a?b=1", "HTTP/1.1", "HTTP/1.",
           "HTTP/2.0", "HTTP/1.x", "\t", "\x00", "\x7f", "\x80", "\xa0", "\xff", "1", "200", "599",
           "600", "099", "OK", "\n", "\r", "é", "x"]


def test_start_lines_read_by_position_take_what_the_documented_patterns_take():
    rng = random.Random(11)
    for _ in range(50_000):
        line = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 6)))
        req, resp = Message(True, 0, 0), Message(False, 0, 0)
        m = _REQUEST_LINE_SPEC.fullmatch(line)
        assert _request_line(line, req) == (m is not None), repr(line)
        if m:
            assert (req.method, req.target, req.version) == m.groups()
        m = _STATUS_LINE_SPEC.fullmatch(line)
        assert _status_line(line, resp) == (m is not None), repr(line)
        if m:
            assert (resp.version, resp.status) == (m.group(1), int(m.group(2)))


def test_the_field_name_cache_stays_bounded_and_right():
    """Names sent to fill the cache of lowered names (httpparse._NAMES) empty it; every
    head is still read right, a name that is no token still skipped."""
    from spanprobe import httpparse
    for i in range(httpparse._NAMES_LIMIT + 100):
        msg = Message(True, 0, 0)
        parse_head(b"GET / HTTP/1.1\r\nX-Name-%d: v\r\nHost: h\r\nBad Name%d: w" % (i, i), msg)
        assert msg.headers == {"x-name-%d" % i: "v", "host": "h"}
        assert len(httpparse._NAMES) <= httpparse._NAMES_LIMIT


def test_a_field_name_longer_than_any_real_one_is_read_but_not_kept():
    """The name cache holds short names only: a head of 64 KiB names cannot make it hold
    hundreds of MiB (4096 entries of them)."""
    from spanprobe import httpparse
    long_name = "X" * 5000
    msg = Message(True, 0, 0)
    parse_head(b"GET / HTTP/1.1\r\n" + long_name.encode() + b": v", msg)
    assert msg.headers == {long_name.lower(): "v"}
    assert long_name not in httpparse._NAMES
    assert all(len(name) <= httpparse._NAME_KEPT_MAX for name in httpparse._NAMES)
