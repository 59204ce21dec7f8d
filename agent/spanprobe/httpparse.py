"""Incremental HTTP/1.x parsing of what the kernel captured from one direction of a
connection.

The kernel sends, per read or write, the first `capture_bytes` bytes, the total byte
count and the last few bytes. So the parser is fed segments that may have a *gap*: bytes
that were transferred but not captured. It keeps exact framing (Content-Length, chunked)
across gaps where it can, and otherwise falls back to what is still certain: a message
ends at the next message's start line, at the chunked terminator seen in a segment's
tail, or at close.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

HEAD_LIMIT = 64 * 1024
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"})
_STARTS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC", b"HTTP")
_BODYLESS_REQUESTS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})

# states
IDLE, HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_TRAILER, UNTIL_CLOSE, OPEN, CHUNK_LOST, RESYNC = range(10)


@dataclass(slots=True)
class Message:
    is_request: bool
    start_ts: int
    tid: int
    end_ts: int = 0
    method: str | None = None
    target: str | None = None
    status: int | None = None
    version: str = "1.1"
    headers: dict[str, str] = field(default_factory=dict)
    head_size: int = 0
    body_size: int = 0
    declared_length: int | None = None
    chunked: bool = False
    complete: bool = False
    truncated: bool = False      # head not fully captured
    interim: bool = False        # 1xx response
    body: bytearray | None = None     # kept only when a rule needs it (keep_body)
    body_incomplete: bool = False     # part of the body was not captured or over the bound


def looks_like_start(data: bytes) -> bool:
    return data[:4] in _STARTS


class ParseError(ValueError):
    pass


def parse_head(raw: bytes, msg: Message, *, partial: bool = False) -> None:
    """Fill `msg` from a message head (start line and headers, without the blank line)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if partial:
        lines = lines[:-1] if len(lines) > 1 else lines   # last line may be cut
    first = lines[0]
    parts = first.split(" ", 2)
    if msg.is_request:
        if len(parts) != 3 or parts[0] not in METHODS or not parts[2].startswith("HTTP/"):
            raise ParseError(f"bad request line {first[:80]!r}")
        msg.method, msg.target, msg.version = parts[0], parts[1], parts[2][5:]
    else:
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ParseError(f"bad status line {first[:80]!r}")
        msg.version, msg.status = parts[0][5:], int(parts[1])
    headers = msg.headers
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t":
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    te = headers.get("transfer-encoding", "")
    msg.chunked = "chunked" in te.lower()
    cl = headers.get("content-length")
    if cl is not None and not msg.chunked:
        try:
            msg.declared_length = int(cl.split(",")[0].strip())
        except ValueError:
            msg.declared_length = None


class MessageParser:
    """One direction of one connection: requests, or responses."""

    def __init__(self, is_request: bool,
                 on_head: Callable[[Message], None] | None = None,
                 on_done: Callable[[Message], None] | None = None):
        self.is_request = is_request
        self.on_head = on_head or (lambda m: None)
        self.on_done = on_done or (lambda m: None)
        self.state = IDLE
        self.msg: Message | None = None
        self.buf = bytearray()          # head, chunk-size line or trailer being read
        self.remaining = 0
        self.last_ts = 0
        self.pending_methods: deque[str] = deque()   # responses: methods of requests sent
        self.lost_bytes = 0
        self.parse_errors = 0
        self.keep_body = 0              # bytes of each body to keep (business attributes)

    # ---- framing ----
    def _begin(self, ts: int, tid: int) -> None:
        self.msg = Message(self.is_request, ts, tid)
        if self.keep_body:
            self.msg.body = bytearray()
        self.state = HEAD
        self.buf.clear()

    def _framing(self) -> None:
        msg = self.msg
        self.on_head(msg)
        if msg.is_request:
            if msg.chunked:
                self.state = CHUNK_SIZE
            elif msg.declared_length:
                self.state, self.remaining = BODY, msg.declared_length
            else:
                self._finish(self.last_ts)
            return
        status = msg.status or 0
        if 100 <= status < 200:
            msg.interim = True
            self._finish(self.last_ts)
            return
        method = self.pending_methods.popleft() if self.pending_methods else None
        if method == "HEAD" or status in (204, 304):
            self._finish(self.last_ts)
        elif msg.chunked:
            self.state = CHUNK_SIZE
        elif msg.declared_length is not None:
            if msg.declared_length == 0:
                self._finish(self.last_ts)
            else:
                self.state, self.remaining = BODY, msg.declared_length
        else:
            self.state = UNTIL_CLOSE

    def _finish(self, ts: int, complete: bool = True) -> None:
        msg = self.msg
        self.msg = None
        self.state = IDLE
        self.buf.clear()
        if msg is not None:
            msg.end_ts = ts
            msg.complete = complete
            self.on_done(msg)

    def _head_done(self, raw: bytes, partial: bool) -> bool:
        msg = self.msg
        msg.head_size = len(raw) + (0 if partial else 4)
        msg.truncated = partial
        try:
            parse_head(raw, msg, partial=partial)
        except ParseError:
            self.parse_errors += 1
            self.msg = None
            self.state = RESYNC
            return False
        return True

    # ---- input ----
    def feed(self, ts: int, tid: int, data: bytes, length: int | None = None,
             tail: bytes = b"") -> None:
        """Bytes of one syscall: `data` captured of `length` transferred."""
        length = len(data) if length is None else length
        if self.state in (OPEN, RESYNC) and looks_like_start(data):
            if self.state == OPEN:
                self._finish(self.last_ts)
            self.state = IDLE
        self.last_ts = ts
        pos, end = 0, len(data)
        while pos < end:
            state = self.state
            if state == IDLE:
                while pos < end and data[pos] in (13, 10):
                    pos += 1
                if pos >= end:
                    break
                self._begin(ts, tid)
                continue
            if state == HEAD:
                old = len(self.buf)
                if old == 0:
                    i = data.find(b"\r\n\r\n", pos)
                    if i >= 0:
                        if self._head_done(data[pos:i], False):
                            self._framing()
                        pos = i + 4
                        continue
                    self.buf += data[pos:]
                    pos = end
                else:
                    self.buf += data[pos:]
                    i = self.buf.find(b"\r\n\r\n", max(0, old - 3))
                    if i >= 0:
                        raw = bytes(self.buf[:i])
                        pos += i + 4 - old
                        self.buf.clear()
                        if self._head_done(raw, False):
                            self._framing()
                        continue
                    pos = end
                if len(self.buf) > HEAD_LIMIT:
                    self._truncated_head(ts)
                continue
            if state == BODY:
                n = min(self.remaining, end - pos)
                self.remaining -= n
                self.msg.body_size += n
                if self.msg.body is not None:
                    self._keep(data[pos:pos + n])
                pos += n
                if self.remaining == 0:
                    self._finish(ts)
                continue
            if state == CHUNK_SIZE:
                pos = self._chunk_line(data, pos, end, ts)
                continue
            if state == CHUNK_DATA:
                n = min(self.remaining, end - pos)
                if self.msg.body is not None:
                    self._keep(data[pos:pos + max(0, min(n, self.remaining - 2))])
                self._chunk_bytes(n)
                pos += n
                continue
            if state == CHUNK_TRAILER:
                pos = self._trailer(data, pos, end, ts)
                continue
            if state in (UNTIL_CLOSE, OPEN, CHUNK_LOST):
                self.msg.body_size += end - pos
                if self.msg.body is not None and state != CHUNK_LOST:
                    self._keep(data[pos:end])
                pos = end
                continue
            if state == RESYNC:
                self.lost_bytes += end - pos
                pos = end
        gap = length - len(data)
        if gap > 0:
            self._gap(gap, ts)
        if self.state == CHUNK_LOST:
            last = tail if gap > 0 else data[-5:]
            if last.endswith(b"0\r\n\r\n"):
                self._finish(ts)

    def _keep(self, chunk: bytes) -> None:
        if self.msg.body_incomplete:
            return          # after a hole the bytes are not contiguous any more
        body = self.msg.body
        room = self.keep_body - len(body)
        if len(chunk) > room:
            chunk = chunk[:max(room, 0)]
            self.msg.body_incomplete = True
        body += chunk

    def _chunk_bytes(self, n: int) -> None:
        # chunk data is followed by CRLF, which `remaining` includes
        body = max(0, min(n, self.remaining - 2))
        self.msg.body_size += body
        self.remaining -= n
        if self.remaining == 0:
            self.state = CHUNK_SIZE

    def _chunk_line(self, data: bytes, pos: int, end: int, ts: int) -> int:
        if self.buf[-1:] == b"\r" and data[pos:pos + 1] == b"\n":
            # the CRLF itself was split between two segments
            line, nxt = bytes(self.buf[:-1]), pos + 1
        else:
            i = data.find(b"\r\n", pos)
            if i < 0:
                self.buf += data[pos:]
                if len(self.buf) > 1024:
                    self.state = CHUNK_LOST
                return end
            line, nxt = bytes(self.buf) + data[pos:i], i + 2
        self.buf.clear()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self.parse_errors += 1
            self.state = CHUNK_LOST
            return nxt
        if size == 0:
            self.state = CHUNK_TRAILER
        else:
            self.state, self.remaining = CHUNK_DATA, size + 2
        return nxt

    def _trailer(self, data: bytes, pos: int, end: int, ts: int) -> int:
        self.buf += data[pos:end]
        if self.buf.startswith(b"\r\n"):
            used = 2
        else:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return end
            used = i + 4
        consumed_here = used - (len(self.buf) - (end - pos))
        self._finish(ts)
        return pos + max(0, consumed_here)

    def _truncated_head(self, ts: int) -> None:
        raw = bytes(self.buf)
        self.buf.clear()
        if not self._head_done(raw, True):
            return
        msg = self.msg
        if msg.is_request and msg.method in _BODYLESS_REQUESTS and not msg.chunked \
                and not msg.declared_length:
            self.on_head(msg)
            self._finish(ts)
        else:
            if not msg.is_request and self.pending_methods:
                self.pending_methods.popleft()
            if msg.body is not None:
                msg.body_incomplete = True   # where the head ends, so the body starts, is lost
            self.on_head(msg)
            self.state = CHUNK_LOST if msg.chunked else OPEN

    def _gap(self, gap: int, ts: int) -> None:
        state = self.state
        if self.msg is not None and self.msg.body is not None and state not in (IDLE, HEAD, RESYNC):
            self.msg.body_incomplete = True   # bytes of the body were not captured
        if state == IDLE or state == RESYNC:
            self.lost_bytes += gap
        elif state == HEAD:
            self._truncated_head(ts)
        elif state == BODY:
            n = min(self.remaining, gap)
            self.remaining -= n
            self.msg.body_size += n
            if self.remaining == 0:
                self.lost_bytes += gap - n
                self._finish(ts)
        elif state == CHUNK_DATA and gap <= self.remaining:
            self._chunk_bytes(gap)
        elif state in (CHUNK_DATA, CHUNK_SIZE, CHUNK_TRAILER):
            self.msg.body_size += gap
            self.state = CHUNK_LOST
        else:   # UNTIL_CLOSE, OPEN, CHUNK_LOST
            self.msg.body_size += gap

    def close(self, ts: int) -> Message | None:
        """The connection closed: finish or abort what is in progress."""
        if self.msg is None:
            return None
        if self.state in (UNTIL_CLOSE, OPEN, CHUNK_LOST):
            self._finish(self.last_ts)
            return None
        msg = self.msg
        self._finish(ts, complete=False)
        return msg
