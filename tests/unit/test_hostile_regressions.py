"""Hostile bytes against the HTTP parser and the JSON-prefix reader (issue 14).

Each input here once crashed, hung or bloated the agent, or is a number form Python's
int() accepts and HTTP does not. The rule for all of them: the message is unparseable,
counted in `parse_errors`, nothing raises out of `feed`/`close`, buffers stay within
their caps, and the next valid message still parses. Crashes found by the fuzz tier
(tests/fuzz) land here too, with their input inline.
"""

from __future__ import annotations

import pytest

from spanprobe import events as ev
from spanprobe import jsonprefix
from spanprobe.httpparse import (
    BODY, CHUNK_DATA, CHUNK_LINE_LIMIT, HEAD_LIMIT, IDLE, MAX_HEADER_LINES, OPEN, RESYNC, UNTIL_CLOSE,
    Message, MessageParser, ParseError, parse_head,
)
from spanprobe.jsonprefix import MAX_DEPTH, MAX_DOCUMENT_BYTES, UNSET, extract, parse_prefix
from spanprobe.streams import Assembler

TID = 9

GET = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Rec:
    def __init__(self, is_request: bool, pending: tuple[str, ...] = ("GET",) * 4):
        self.done: list[Message] = []
        self.p = MessageParser(is_request, None, lambda owner, m: self.done.append(m))
        if not is_request:
            self.p.pending_methods.extend(pending)
        self.ts = 0

    def feed(self, data: bytes, length: int | None = None, tail: bytes = b"") -> None:
        self.ts += 1
        self.p.feed(self.ts, TID, data, len(data) if length is None else length, tail)


def request(cl: bytes, body: bytes = b"ab") -> bytes:
    return b"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: " + cl + b"\r\n\r\n" + body


def chunked(size_line: bytes, is_request: bool = True) -> bytes:
    head = (b"POST /o HTTP/1.1\r\nHost: h\r\n" if is_request else b"HTTP/1.1 200 OK\r\n")
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nabcdef\r\n0\r\n\r\n"


def assert_rejected_then_recovers(r: Rec, hostile: bytes, nxt: bytes) -> None:
    r.feed(hostile)
    assert (r.p.parse_errors, r.done, r.p.state) == (1, [], RESYNC)
    r.feed(nxt)
    assert r.done and r.done[-1].complete and r.done[-1].head_size == nxt.index(b"\r\n\r\n") + 4


# ---------------------------------------------------------------- the two seen in the field

def test_negative_content_length_request_is_counted_not_a_crash():
    r = Rec(True)
    r.feed(request(b"-100000"))          # was: IndexError out of feed
    assert (r.p.parse_errors, r.done, r.p.state) == (1, [], RESYNC)
    r.feed(GET)
    assert [(m.method, m.target, m.complete) for m in r.done] == [("GET", "/next", True)]


def test_negative_content_length_through_the_assembler():
    out = []
    asm = Assembler(out.append)
    h = ev.Header(1, ev.EV_CONN_OPEN, 100, 100, 5, 1)
    asm.open(ev.ConnEvent(h, -1, ev.AF_INET, ev.ROLE_SERVER, 0, ("127.0.0.1", 4000), None))
    data = request(b"-100000")
    asm.data(ev.DataEvent(ev.Header(2, ev.EV_DATA, 100, 100, 5, 1), len(data), data,
                          ev.DIR_INGRESS, 0, 0, b""))
    asm.close(ev.ConnEvent(ev.Header(3, ev.EV_CONN_CLOSE, 100, 100, 5, 1), -1, ev.AF_INET, 0, 0,
                           None, None))
    asm.drain()
    assert asm.counts["parse_errors"] == 1 and out == []


@pytest.mark.timeout(10)
def test_negative_chunk_size_ends_and_is_counted():
    r = Rec(True)
    r.feed(chunked(b"-6"))               # was: feed never returned
    assert r.p.parse_errors == 1
    # framing lost: the message still ends at the terminator that ends the segment
    assert [(m.method, m.complete) for m in r.done] == [("POST", True)]
    r.feed(GET)
    assert r.done[-1].target == "/next"


# ---------------------------------------------------------------- numbers int() takes

@pytest.mark.parametrize("cl", [
    b"+5", b"5_0", b"0x10", b"1e3", b"5.0", b"\xb9", b"\xd9\xa3", b"5 5", b"5\x0b", b"\xa05",
    b"", b",", b"5,", b"5,,5", b"5, 6", b"1" * 20, str(2 ** 63).encode(), b"-0",
])
def test_content_length_that_is_not_strictly_digits_is_unparseable(cl):
    with pytest.raises(ParseError):
        parse_head(b"POST / HTTP/1.1\r\nContent-Length: " + cl, Message(True, 0, 0))
    r = Rec(True)
    r.feed(request(cl, b""))
    assert r.p.parse_errors == 1 and r.done == []


@pytest.mark.parametrize("cl,value", [
    (b"5", 5), (b" \t5\t ", 5), (b"007", 7), (b"5, 5", 5), (b"0", 0),
    (b"9" * 18, int("9" * 18)), (str(2 ** 63 - 1).encode(), 2 ** 63 - 1),
])
def test_content_length_accepted_forms(cl, value):
    m = Message(True, 0, 0)
    parse_head(b"POST / HTTP/1.1\r\nContent-Length: " + cl, m)
    assert m.declared_length == value


def test_repeated_content_length_fields_that_differ_are_unparseable():
    with pytest.raises(ParseError):
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6", Message(False, 0, 0))
    m = Message(False, 0, 0)
    parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5", m)
    assert m.declared_length == 5


@pytest.mark.parametrize("line", [
    b"-6", b"+6", b" 6", b"6_0", b"0x6", b"\xb2", b"", b";ext", b"1" * 17, b"g", b"6\x0b",
])
def test_chunk_size_that_is_not_strictly_hex_is_counted(line):
    r = Rec(True)
    r.feed(chunked(line))
    assert r.p.parse_errors == 1
    assert r.p.state == IDLE       # ended by the terminator at the segment's end


@pytest.mark.parametrize("line,size", [
    (b"6", 6), (b"6 ", 6), (b"6\t;a=b", 6), (b"6;a=\"x;y\"", 6), (b"0006", 6), (b"F" * 16, 16 ** 16 - 1),
])
def test_chunk_size_accepted_forms(line, size):
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nabc")
    assert r.p.parse_errors == 0 and r.p.remaining == size + 2 - 3


@pytest.mark.parametrize("status", [
    b"-20", b"+20", b"2_0", b"\xb9\xb2\xb3", b"99", b"099", b"600", b"999", b"0200", b"20",
    b"", b"2OO", b" 200",
])
def test_bad_status_codes_are_counted(status):
    r = Rec(False)
    assert_rejected_then_recovers(r, b"HTTP/1.1 " + status + b" OK\r\nContent-Length: 0\r\n\r\n", OK)


def test_superscript_status_digits_were_a_crash():
    # latin-1 '\xb9\xb2\xb3' is '¹²³': str.isdigit() said yes, int() raised ValueError
    with pytest.raises(ParseError):
        parse_head(b"HTTP/1.1 \xb9\xb2\xb3 OK", Message(False, 0, 0))


@pytest.mark.parametrize("start", [
    b"GET / HTTP/1.1 extra", b"GET / HTTP/11.1", b"GET / HTTP/2.0", b"GET / HTTP/1.x",
    b"GET / HTTP/+1.1", b"GET / http/1.1", b"GET  HTTP/1.1", b"GET /\x01 HTTP/1.1",
    b"GET /\tx HTTP/1.1", b"PRI * HTTP/2.0",
])
def test_bad_request_lines_are_counted(start):
    r = Rec(True)
    assert_rejected_then_recovers(r, start + b"\r\nHost: h\r\n\r\n", GET)


@pytest.mark.parametrize("start", [b"HTTP/2 200 OK", b"HTTP/1.1x 200 OK", b"HTTP/0 200 OK"])
def test_bad_response_versions_are_counted(start):
    r = Rec(False)
    assert_rejected_then_recovers(r, start + b"\r\nContent-Length: 0\r\n\r\n", OK)


def test_http_1_minor_versions_are_kept():
    m = Message(True, 0, 0)
    parse_head(b"GET / HTTP/1.0", m)
    assert m.version == "1.0"
    m = Message(False, 0, 0)
    parse_head(b"HTTP/1.9 200 OK", m)
    assert (m.version, m.status) == ("1.9", 200)


# ---------------------------------------------------------------- framing rules

def test_transfer_encoding_wins_and_content_length_is_not_read():
    m = Message(True, 0, 0)
    parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\nTransfer-Encoding: chunked", m)
    assert m.chunked and m.declared_length is None


def test_request_transfer_encoding_not_ending_in_chunked_is_unparseable():
    for te in (b"gzip", b"chunked, gzip", b"notchunked", b""):
        with pytest.raises(ParseError):
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + te, Message(True, 0, 0))


def test_response_transfer_encoding_not_ending_in_chunked_runs_until_close():
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef")
    assert r.p.state == UNTIL_CLOSE and r.p.parse_errors == 0
    r.p.close(9)
    assert [(m.body_size, m.declared_length, m.complete) for m in r.done] == [(6, None, True)]


def test_too_many_header_lines_are_unparseable():
    head = b"GET / HTTP/1.1\r\n" + b"a: b\r\n" * (MAX_HEADER_LINES + 1) + b"\r\n"
    r = Rec(True)
    assert_rejected_then_recovers(r, head, GET)
    ok = Message(True, 0, 0)
    parse_head(b"GET / HTTP/1.1" + b"\r\na: b" * MAX_HEADER_LINES, ok)
    assert ok.headers["a"] == ", ".join(["b"] * MAX_HEADER_LINES)


def test_header_names_must_be_tokens():
    m = Message(True, 0, 0)
    parse_head(b"POST / HTTP/1.1\r\nContent-Length : 5\r\nX\x85: 1\r\nHost: h", m)
    assert m.headers == {"host": "h"} and m.declared_length is None


# ---------------------------------------------------------------- responses from a hostile server

@pytest.mark.parametrize("hostile", [
    b"HTTP/1.1 -200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -100000\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nab\r\n",
])
@pytest.mark.timeout(10)
def test_hostile_responses_are_counted(hostile):
    r = Rec(False)
    r.feed(hostile)
    assert r.p.parse_errors == 1
    r.p.close(99)       # never raises, whatever state the error left
    assert len(r.p.buf) == 0 and r.p.msg is None


def test_huge_but_valid_content_length_counts_the_gap():
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nab")
    r.feed(b"x" * 100, length=2 ** 40, tail=b"x" * 8)
    assert r.p.state == BODY and r.p.msg.body_size == 2 + 2 ** 40
    assert r.p.parse_errors == 0


@pytest.mark.parametrize("is_request", [True, False])
def test_endless_head_in_small_segments_stays_within_head_limit(is_request):
    """Headers without a blank line, fed 1000 bytes at a time (a stand-in for 1 GiB)."""
    r = Rec(is_request)
    r.feed(b"GET /a HTTP/1.1\r\n" if is_request else b"HTTP/1.1 200 OK\r\n")
    biggest = 0
    for _ in range(4 * HEAD_LIMIT // 1000):
        r.feed(b"X-Pad: " + b"p" * 991 + b"\r\n")
        biggest = max(biggest, len(r.p.buf))
    assert biggest <= HEAD_LIMIT
    # the head is cut at the limit and parsed as truncated
    m = r.done[0] if is_request else r.p.msg
    assert m.truncated and m.head_size == HEAD_LIMIT
    if is_request:
        # a GET ends there; the next head cannot start with a header line: counted
        assert (r.p.state, r.p.parse_errors) == (RESYNC, 1)
        assert r.p.lost_bytes > 0
    else:
        # a response body runs from there (until the next start line or close)
        assert (r.p.state, r.p.parse_errors) == (OPEN, 0)


def test_head_larger_than_the_limit_in_one_segment_is_cut_at_the_limit():
    r = Rec(True)
    r.feed(b"GET /a HTTP/1.1\r\nX-Pad: " + b"p" * (3 * HEAD_LIMIT) + b"\r\n\r\n")
    [m] = r.done
    assert m.truncated and m.head_size == HEAD_LIMIT
    assert len(r.p.buf) == 0


def test_endless_trailer_section_is_bounded_and_counted():
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n")
    biggest = 0
    for _ in range(2 * HEAD_LIMIT // 100):
        r.feed(b"T: " + b"t" * 95 + b"\r\n")
        biggest = max(biggest, len(r.p.buf))
    assert biggest <= HEAD_LIMIT + 4
    assert r.p.parse_errors == 1
    assert [(m.body_size, m.complete) for m in r.done] == [(3, True)]
    assert r.p.state == RESYNC
    r.feed(OK)
    assert r.done[-1].body_size == 2


def test_trailer_section_in_one_byte_segments():
    r = Rec(False)
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\n\r\n" + OK)
    for i in range(len(raw)):
        r.feed(raw[i:i + 1])
    assert [(m.status, m.body_size) for m in r.done] == [(200, 0), (200, 2)]
    assert r.p.parse_errors == 0


def test_endless_chunk_size_line_is_bounded_and_counted():
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;")
    biggest = 0
    for _ in range(50):
        r.feed(b"e" * 100)
        biggest = max(biggest, len(r.p.buf))
    assert biggest <= CHUNK_LINE_LIMIT + 1
    assert r.p.parse_errors == 1


def test_chunk_size_line_at_the_limit_split_before_lf():
    line = b"5;" + b"e" * (CHUNK_LINE_LIMIT - 2)
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r")
    r.feed(b"\nhello\r\n0\r\n\r\n")
    assert r.p.parse_errors == 0 and [m.body_size for m in r.done] == [5]
    r = Rec(False)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"e\r\nhello\r\n")
    assert r.p.parse_errors == 1


def test_a_pass_that_consumes_nothing_becomes_a_counted_resync():
    """The guard in feed: an invariant broken from outside (remaining 0 in CHUNK_DATA)
    must not loop; the message is dropped and counted."""
    r = Rec(True)
    r.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    assert r.p.state == CHUNK_DATA
    r.p.remaining = 0
    r.feed(b"cdef")
    assert (r.p.parse_errors, r.p.lost_bytes, r.p.state, r.p.msg) == (1, 4, RESYNC, None)
    r.feed(GET)
    assert [m.target for m in r.done] == ["/next"]


def test_unknown_state_cannot_loop():
    r = Rec(True)
    r.p.state = 99
    r.feed(b"abc")
    assert (r.p.parse_errors, r.p.state) == (1, RESYNC)


def test_open_message_survives_hostile_follow_up():
    r = Rec(True)
    r.p.feed(1, TID, b"POST /up HTTP/1.1\r\nContent-Length: 10\r\nX: " + b"b" * 100,
             5000, b"12345678")
    assert r.p.state == OPEN
    r.feed(request(b"-1"))
    assert r.p.parse_errors == 1 and [m.target for m in r.done] == ["/up"]


# ---------------------------------------------------------------- the JSON-prefix reader

@pytest.mark.parametrize("doc", [
    b"[" * 60000,
    b"[" * 60000 + b"]" * 60000,
    b'{"a":' * 30000,
    b'{"a":' * 20000 + b"1" + b"}" * 20000,
])
def test_deep_nesting_is_refused_not_a_recursion_error(doc):
    assert extract(doc, (0,)) is UNSET
    assert extract(doc, ("a",)) is UNSET
    with pytest.raises(ValueError):
        parse_prefix(doc)


def test_nesting_up_to_max_depth_is_read():
    doc = b"[" * (MAX_DEPTH - 1) + b'{"k": 7}' + b"]" * (MAX_DEPTH - 1)
    assert extract(doc, (0,) * (MAX_DEPTH - 1) + ("k",)) == 7
    assert extract(doc[:-3], (0,) * (MAX_DEPTH - 1) + ("k",)) == 7      # a prefix too
    deeper = b"[" + doc + b"]"
    assert extract(deeper, (0,) * MAX_DEPTH + ("k",)) is UNSET


def test_brackets_inside_strings_do_not_count_as_nesting():
    doc = b'{"s": "' + b"[" * 5000 + b'", "k": [[1]], "t": "\\"[{[{"}'
    assert extract(doc, ("k", 0, 0)) == 1
    assert extract(doc[:len(doc) - 4], ("k", 0, 0)) == 1       # cut inside the last string


def test_the_prefix_reader_itself_is_depth_bounded():
    """A backstop independent of the pre-check: the recursive reader refuses to go deeper."""
    with pytest.raises(ValueError):
        jsonprefix._value("[" * (MAX_DEPTH + 2), 0)


def test_only_max_document_bytes_are_read():
    doc = b'{"a": 1, "pad": "' + b"p" * MAX_DOCUMENT_BYTES + b'", "b": 2}'
    assert extract(doc, ("a",)) == 1
    assert extract(doc, ("b",)) is UNSET
    value, complete = parse_prefix(doc)
    assert complete is False
    # a number cut by the bound is not a number
    num = b"[" + b" " * (MAX_DOCUMENT_BYTES - 4) + b"12345]"
    assert extract(num, (0,)) is UNSET


def test_many_short_values_cut_by_the_end():
    """Many values before the cut (each once sliced all the text left: quadratic)."""
    doc = b"[" + b"1," * (MAX_DOCUMENT_BYTES // 2 - 2) + b"tr"
    assert extract(doc, (5,)) == 1
    assert extract(doc, (MAX_DOCUMENT_BYTES // 2 - 2,)) is UNSET


def test_huge_number_is_unset_not_an_error():
    assert extract(b'{"n": ' + b"9" * 5000 + b', "k": 1}', ("k",)) is UNSET
