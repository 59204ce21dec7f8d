"""Unit tests of body keeping in the HTTP/1.x parser (spanprobe.httpparse), used by
json_body attribute rules: MessageParser.keep_body, Message.body, Message.body_incomplete.

A segment is fed as the kernel reports it: the captured prefix `data` of `length` bytes
transferred (the rest of the segment is a hole) and the segment's last bytes as `tail`.
"""

from __future__ import annotations

import pytest

from spanprobe.httpparse import Message, MessageParser

TID = 7


class Rec:
    def __init__(self, is_request: bool, keep: int, pending: tuple[str, ...] = ()):
        self.done: list[Message] = []
        self.p = MessageParser(is_request, None, lambda owner, m: self.done.append(m))
        self.p.keep_body = keep
        self.p.pending_methods.extend(pending)
        self.ts = 0

    def feed(self, data: bytes) -> None:
        self.ts += 1
        self.p.feed(self.ts, TID, data, len(data), b"")

    def feed_capped(self, whole: bytes, capture: int) -> None:
        """Only the first `capture` bytes of `whole` were copied."""
        self.ts += 1
        self.p.feed(self.ts, TID, whole[:capture], len(whole), whole[-8:])


def post(body: bytes, target: str = "/orders") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunked_post(chunks: list[bytes], ext: bool = False, trailer: bytes = b"") -> bytes:
    out = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    for c in chunks:
        out += f"{len(c):x}".encode() + (b";name=val" if ext else b"") + b"\r\n" + c + b"\r\n"
    return out + b"0\r\n" + trailer + b"\r\n"


BODY = b'{"order": {"id": 12345, "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}]}}'


# ---------------------------------------------------------------- Content-Length

def test_content_length_body_in_the_same_segment_as_the_head():
    r = Rec(True, 4096)
    r.feed(post(BODY))
    [m] = r.done
    assert bytes(m.body) == BODY
    assert m.body_incomplete is False
    assert m.complete and m.body_size == len(BODY)


def test_content_length_body_kept_across_several_feeds():
    r = Rec(True, 4096)
    raw = post(BODY)
    head_end = raw.index(b"\r\n\r\n") + 4
    pieces = [raw[:head_end + 5], raw[head_end + 5:head_end + 6], raw[head_end + 6:head_end + 40],
              raw[head_end + 40:]]
    for i, piece in enumerate(pieces):
        r.feed(piece)
        if i < len(pieces) - 1:
            assert r.done == []
            assert bytes(r.p.msg.body) == raw[head_end:head_end + sum(map(len, pieces[:i + 1])) - head_end]
    [m] = r.done
    assert bytes(m.body) == BODY and m.body_incomplete is False


def test_byte_by_byte():
    r = Rec(True, 4096)
    for b in post(BODY):
        r.feed(bytes([b]))
    [m] = r.done
    assert bytes(m.body) == BODY and m.body_incomplete is False


def test_pipelined_requests_each_keep_their_own_body():
    r = Rec(True, 4096)
    r.feed(post(b'{"a": 1}') + post(b'{"b": 22}') + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [bytes(m.body) for m in r.done] == [b'{"a": 1}', b'{"b": 22}', b""]
    assert [m.body_incomplete for m in r.done] == [False, False, False]


def test_a_request_without_a_body_has_an_empty_one():
    r = Rec(True, 4096)
    r.feed(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    [m] = r.done
    assert m.body == bytearray() and m.body_incomplete is False


def test_response_bodies_are_kept_too():
    r = Rec(False, 4096, pending=("POST",))
    r.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\n{\"id\": ")
    assert r.done == []
    r.feed(b"7}")
    [m] = r.done
    assert bytes(m.body) == b'{"id": 7}' and m.body_incomplete is False


def test_response_until_close():
    r = Rec(False, 4096, pending=("GET",))
    r.feed(b"HTTP/1.0 200 OK\r\n\r\n{\"a\":")
    r.feed(b" 1}")
    assert r.done == []
    r.p.close(99)
    [m] = r.done
    assert bytes(m.body) == b'{"a": 1}' and m.body_incomplete is False


def test_response_to_head_keeps_no_body():
    r = Rec(False, 4096, pending=("HEAD",))
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
    [m] = r.done
    assert m.body == bytearray() and m.body_incomplete is False


# ---------------------------------------------------------------- chunked

def test_chunked_body_is_kept_de_chunked():
    chunks = [b'{"order": ', b'{"id": 9}', b"}"]
    r = Rec(True, 4096)
    r.feed(chunked_post(chunks))
    [m] = r.done
    assert bytes(m.body) == b"".join(chunks)
    assert m.body_incomplete is False and m.body_size == len(b"".join(chunks))


def test_chunked_body_split_at_every_byte():
    chunks = [b'{"order": ', b'{"id": 9}', b"}"]
    raw = chunked_post(chunks, ext=True, trailer=b"X-Checksum: 1\r\n")
    for cut in range(1, len(raw)):
        r = Rec(True, 4096)
        r.feed(raw[:cut])
        r.feed(raw[cut:])
        [m] = r.done
        assert bytes(m.body) == b"".join(chunks), cut
        assert m.body_incomplete is False, cut


def test_chunked_body_byte_by_byte():
    chunks = [b"a" * 17, b"b" * 300, b"c"]
    r = Rec(True, 4096)
    for b in chunked_post(chunks):
        r.feed(bytes([b]))
    [m] = r.done
    assert bytes(m.body) == b"".join(chunks) and m.body_incomplete is False


def test_chunked_response():
    r = Rec(False, 4096, pending=("GET",))
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n4\r\n: 1}\r\n0\r\n\r\n")
    [m] = r.done
    assert bytes(m.body) == b'{"a": 1}' and m.body_incomplete is False


# ---------------------------------------------------------------- the bound

def test_body_over_the_bound_is_cut_and_marked_incomplete():
    r = Rec(True, 10)
    r.feed(post(BODY))
    [m] = r.done
    assert bytes(m.body) == BODY[:10]
    assert m.body_incomplete is True
    assert m.complete and m.body_size == len(BODY)     # framing is not affected


def test_body_over_the_bound_across_feeds():
    r = Rec(True, 20)
    raw = post(BODY)
    head_end = raw.index(b"\r\n\r\n") + 4
    r.feed(raw[:head_end + 15])
    assert r.p.msg.body_incomplete is False
    r.feed(raw[head_end + 15:head_end + 30])
    assert r.p.msg.body_incomplete is True
    r.feed(raw[head_end + 30:])
    [m] = r.done
    assert bytes(m.body) == BODY[:20] and m.body_incomplete is True


def test_body_exactly_at_the_bound_is_complete():
    r = Rec(True, len(BODY))
    r.feed(post(BODY))
    [m] = r.done
    assert bytes(m.body) == BODY and m.body_incomplete is False


def test_chunked_body_over_the_bound():
    chunks = [b"0123456789", b"abcdefghij", b"KLMNO"]
    r = Rec(True, 15)
    r.feed(chunked_post(chunks))
    [m] = r.done
    assert bytes(m.body) == b"0123456789abcde" and m.body_incomplete is True
    assert m.complete


def test_the_bound_is_per_message():
    r = Rec(True, 8)
    r.feed(post(b'{"a": 12345}') + post(b'{"b": 1}'))
    assert [(bytes(m.body), m.body_incomplete) for m in r.done] == [
        (b'{"a": 12', True), (b'{"b": 1}', False)]


# ---------------------------------------------------------------- capture gaps

def test_gap_inside_a_content_length_body():
    body = b'{"padding": "' + b"p" * 100 + b'", "order": {"id": 5}}'
    raw = post(body)
    head_end = raw.index(b"\r\n\r\n") + 4
    r = Rec(True, 4096)
    r.feed_capped(raw, head_end + 20)          # 20 body bytes captured, the rest a hole
    [m] = r.done                               # framing still ends the message
    assert bytes(m.body) == body[:20]
    assert m.body_incomplete is True
    assert m.complete and m.body_size == len(body)


def test_no_bytes_after_a_hole_are_appended():
    body = b'{"a": "' + b"x" * 60 + b'", "b": 2}'
    raw = post(body)
    head_end = raw.index(b"\r\n\r\n") + 4
    r = Rec(True, 4096)
    first = raw[:head_end + 30]
    r.feed_capped(first, head_end + 10)        # a hole of 20 body bytes
    r.feed(raw[head_end + 30:])                # the rest fully captured
    [m] = r.done
    assert bytes(m.body) == body[:10]
    assert m.body_incomplete is True
    assert m.body_size == len(body)


def test_gap_inside_chunk_data():
    chunks = [b"A" * 50, b"B" * 10]
    raw = chunked_post(chunks)
    start = raw.index(b"\r\n\r\n") + 4 + len(b"32\r\n")
    r = Rec(True, 4096)
    r.feed_capped(raw[:start + 30], start + 5)     # 5 bytes of chunk 1, then a hole
    r.feed(raw[start + 30:])
    [m] = r.done
    assert bytes(m.body) == b"AAAAA"
    assert m.body_incomplete is True
    assert m.complete


def test_gap_across_chunk_framing():
    chunks = [b"A" * 20, b"B" * 20]
    raw = chunked_post(chunks)
    start = raw.index(b"\r\n\r\n") + 4 + len(b"14\r\n")
    r = Rec(True, 4096)
    r.feed_capped(raw, start + 3)                  # the hole swallows the chunk framing
    [m] = r.done                                   # ended by the terminator in the tail
    assert bytes(m.body) == b"AAA"
    assert m.body_incomplete is True


def test_a_hole_after_the_body_does_not_mark_it():
    r = Rec(True, 4096)
    first = post(b'{"a": 1}')
    second = post(b'{"b": 2}')
    r.feed_capped(first + second, len(first) + 5)
    assert [bytes(m.body) for m in r.done] == [b'{"a": 1}']
    assert r.done[0].body_incomplete is False


def test_a_head_cut_by_the_capture_leaves_no_body():
    # the hole is in the head: where the body starts is unknown, so nothing is kept
    body = b'{"outer": {"id": 7}}'
    raw = (b"POST /o HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 200 + b"\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    seg = raw.index(b'{"id"')              # the hole ends inside the body
    r = Rec(True, 4096)
    r.feed_capped(raw[:seg], 40)
    r.feed(raw[seg:])                      # '{"id": 7}}' would read as a document
    r.p.close(99)
    [m] = r.done
    assert m.truncated is True and m.method == "POST"
    assert m.body == bytearray()
    assert m.body_incomplete is True


# ---------------------------------------------------------------- keep_body=0

@pytest.mark.parametrize("raw", [post(BODY), chunked_post([b"ab", b"cd"]),
                                 b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"])
def test_keep_body_zero_keeps_nothing(raw):
    r = Rec(True, 0)
    r.feed(raw)
    [m] = r.done
    assert m.body is None
    assert m.body_incomplete is False


def test_keep_body_zero_with_a_gap():
    r = Rec(True, 0)
    raw = post(BODY)
    r.feed_capped(raw, raw.index(b"\r\n\r\n") + 10)
    [m] = r.done
    assert m.body is None and m.body_incomplete is False


def test_keep_body_is_read_when_a_message_begins():
    r = Rec(True, 0)
    r.feed(post(b'{"a": 1}'))
    r.p.keep_body = 64
    r.feed(post(b'{"b": 2}'))
    assert [m.body for m in r.done] == [None, bytearray(b'{"b": 2}')]
