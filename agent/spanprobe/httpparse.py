"""Incremental HTTP/1.x parsing of what the kernel captured from one direction of a
connection.

The kernel sends, per read or write, the first `capture_bytes` bytes, the total byte
count and the last few bytes. So the parser is fed segments that may have a *gap*: bytes
that were transferred but not captured. It keeps exact framing (Content-Length, chunked)
across gaps where it can, and otherwise falls back to what is still certain: a message
ends at the next message's start line, at the chunked terminator seen in a segment's
tail, or at close.

Every byte is hostile, so:

* Numbers are read strictly (`_decimal`, `_chunk_size`): ASCII digits only (hex digits
  for chunk sizes), no sign, no inner whitespace or underscores, a bounded count of
  digits. Python's int() alone would take "+5", " 5", "5_000", "0x5" and non-ASCII
  digits; a negative length once sent the body loop backwards.
* What is buffered is bounded: a head (and a trailer section) by HEAD_LIMIT, a
  chunk-size line by CHUNK_LINE_LIMIT, a kept body by `keep_body`.
* A message that breaks a rule is unparseable: it is dropped, counted in
  `parse_errors`, and the parser resynchronises at the next start line. Nothing
  raises out of `feed` or `close`.
* `feed` provably ends: see the comment in its loop.

Decisions where RFC 9110/9112 leave room, documented here once:

* Status code: exactly three digits in 100..599 (RFC 9110 15 calls others invalid).
* Version: exactly `HTTP/1.<digit>` in start lines. Anything else, including an HTTP/2
  preface (`PRI * HTTP/2.0`), is not HTTP/1 framing and makes the message unparseable.
* Content-Length: 1 to 19 digits, below 2**63. A list or repeated field of identical
  values counts once; differing values make the message unparseable (RFC 9112 6.3).
* Transfer-Encoding wins over Content-Length (RFC 9112 6.3). A request whose last
  transfer coding is not chunked is unparseable; such a response runs until close.
* Chunk size: 1 to 16 hex digits, optional spaces or tabs, then optional extensions
  after ';'. A head of more than MAX_HEADER_LINES lines is unparseable.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Final

HEAD_LIMIT: Final = 64 * 1024          # bytes of a head (or trailer section) kept, blank line excluded
CHUNK_LINE_LIMIT: Final = 1024         # bytes of a chunk-size line, extensions included
MAX_HEADER_LINES: Final = 1024         # far above what servers accept (commonly about 100)
MAX_CONTENT_LENGTH: Final = 2 ** 63 - 1
METHODS: Final = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"})
_STARTS: Final = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC", b"HTTP")
_BODYLESS_REQUESTS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_BLANK_LINE: Final = b"\r\n\r\n"

# [0-9] in a str pattern matches ASCII digits only (\d would match any Unicode digit)
_DECIMAL: Final = re.compile(r"[0-9]{1,19}")
_TOKEN_PATTERN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN: Final = re.compile(_TOKEN_PATTERN)
# a request target's forbidden characters: controls, space and DEL
_TARGET_FORBIDDEN: Final = re.compile(r"[\x00-\x20\x7f]")
# Methods mypyc has no primitive for, taken once: called through these, the compiled code
# skips the method lookup it makes on each `value.isascii()` (hundreds of instructions).
_isascii: Final = str.isascii
_isdigit: Final = str.isdigit
_isprintable: Final = str.isprintable
# field names seen, as written -> lower case: a name is checked against _TOKEN and
# lowered once, not on every line that carries it. Bounded in entries (cleared when full,
# so names sent to fill it cost only their own check) and in size: longer names than any
# real field's are checked each time and never kept.
_NAMES: dict[str, str] = {}
_NAMES_LIMIT: Final = 4096
_NAME_KEPT_MAX: Final = 64
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?", re.DOTALL)

# states
# parser states (Final: the compiled module reads them as constants)
IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
CHUNK_SIZE: Final = 3
CHUNK_DATA: Final = 4
CHUNK_TRAILER: Final = 5
UNTIL_CLOSE: Final = 6
OPEN: Final = 7
CHUNK_LOST: Final = 8
RESYNC: Final = 9


@dataclass(slots=True, init=False)     # its own __init__: see events.Header
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

    def __init__(self, is_request: bool, start_ts: int, tid: int, end_ts: int = 0,
                 method: str | None = None, target: str | None = None, status: int | None = None,
                 version: str = "1.1", headers: dict[str, str] | None = None, head_size: int = 0,
                 body_size: int = 0, declared_length: int | None = None, chunked: bool = False,
                 complete: bool = False, truncated: bool = False, interim: bool = False,
                 body: bytearray | None = None, body_incomplete: bool = False) -> None:
        self.is_request = is_request
        self.start_ts = start_ts
        self.tid = tid
        self.end_ts = end_ts
        self.method = method
        self.target = target
        self.status = status
        self.version = version
        self.headers = {} if headers is None else headers
        self.head_size = head_size
        self.body_size = body_size
        self.declared_length = declared_length
        self.chunked = chunked
        self.complete = complete
        self.truncated = truncated
        self.interim = interim
        self.body = body
        self.body_incomplete = body_incomplete


def looks_like_start(data: bytes) -> bool:
    return data[:4] in _STARTS


class ParseError(ValueError):
    pass


def _content_length(value: str) -> int:
    """Content-Length: one value, or a list of identical values (RFC 9112 6.3)."""
    # one value, nearly always: what _DECIMAL matches (ASCII digits are the only ASCII
    # characters isdigit() takes), without the pattern's cost
    if 0 < len(value) <= 19 and _isascii(value) and _isdigit(value):
        length = int(value)
        if length > MAX_CONTENT_LENGTH:
            raise ParseError(f"Content-Length {length} out of range")
        return length
    lengths = set()
    for item in value.split(","):
        item = item.strip(" \t")
        if not _DECIMAL.fullmatch(item):
            raise ParseError(f"bad Content-Length {value[:40]!r}")
        lengths.add(int(item))
    if len(lengths) != 1:
        raise ParseError(f"conflicting Content-Length {value[:40]!r}")
    length = lengths.pop()
    if length > MAX_CONTENT_LENGTH:
        raise ParseError(f"Content-Length {length} out of range")
    return length


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions after ';' are ignored)."""
    m = _CHUNK_SIZE.fullmatch(line)
    if m is None:
        raise ParseError(f"bad chunk-size line {line[:40]!r}")
    return int(m.group(1), 16)


def _digit(c: str) -> bool:
    """One character (callers index a string), an ASCII digit."""
    return c in "0123456789"       # one containment test: two comparisons were two calls


def _request_line(line: str, msg: Message) -> bool:
    """`METHOD SP target SP HTTP/1.d`: a method of METHODS, a target of at least one
    character and none of _TARGET_FORBIDDEN (so exactly two spaces). Read by position, not
    by a pattern: at two start lines an exchange, the pattern was the head's largest cost."""
    sp = line.find(" ")
    if sp <= 0:
        return False
    method = line[:sp]
    end = len(line) - 9             # where " HTTP/1.d" must start
    if method not in METHODS or end < sp + 2 or line[end] != " " or not line.startswith("HTTP/1.", end + 1) \
            or not _digit(line[-1]):
        return False
    target = line[sp + 1:end]
    # isprintable() of an ASCII string is false exactly for controls and DEL
    if _isascii(target):
        if " " in target or not _isprintable(target):
            return False
    elif _TARGET_FORBIDDEN.search(target):
        return False
    msg.method, msg.target, msg.version = method, target, line[end + 6:]
    return True


def _status_line(line: str, msg: Message) -> bool:
    """`HTTP/1.d SP ddd`, then nothing or a space and any reason; the status code in
    100..599. Read by position (see _request_line)."""
    if len(line) < 12 or not line.startswith("HTTP/1.") or not _digit(line[7]) or line[8] != " " \
            or not ("1" <= line[9] <= "5") or not _digit(line[10]) or not _digit(line[11]) \
            or (len(line) > 12 and line[12] != " "):
        return False
    msg.version = line[5:8]
    msg.status = (ord(line[9]) - 48) * 100 + (ord(line[10]) - 48) * 10 + ord(line[11]) - 48
    return True


def parse_head(raw: bytes, msg: Message, *, partial: bool = False) -> None:
    """Fill `msg` from a message head (start line and headers, without the blank line).

    ParseError if the head breaks a rule of this module's docstring; `msg` may then be
    partly filled and must be dropped. This runs twice per exchange, so the start line is
    read by position, and a field name checked by a dictionary of the names seen before
    (_NAMES): both give what the rules give."""
    text = raw.decode("latin-1")
    first, sep, rest = text.partition("\r\n")
    if partial:
        if not sep:
            rest = ""
        else:
            rest = rest.rpartition("\r\n")[0]      # the last line may be cut
    if msg.is_request:
        if not _request_line(first, msg):
            raise ParseError(f"bad request line {first[:80]!r}")
    elif not _status_line(first, msg):
        raise ParseError(f"bad status line {first[:80]!r}")
    headers = msg.headers
    if rest or (sep and not partial):
        lines = rest.split("\r\n")
        if len(lines) > MAX_HEADER_LINES:
            raise ParseError(f"{len(lines)} header lines")
        # values of a repeated field, joined once at the end (joining as they come is
        # quadratic in a head that repeats one field thousands of times)
        repeated: dict[str, list[str]] | None = None
        names = _NAMES
        for line in lines:
            # a field line: a token, ':', the value. Other lines (an obsolete fold, a line
            # without a name) are skipped.
            i = line.find(":")
            if i <= 0:
                continue
            raw_name = line[:i]
            name = names.get(raw_name)
            if name is None:
                if not _TOKEN.fullmatch(raw_name):
                    continue
                name = raw_name.lower()
                if len(raw_name) <= _NAME_KEPT_MAX:
                    if len(names) >= _NAMES_LIMIT:
                        names.clear()
                    names[raw_name] = name
            value = line[i + 1:].strip(" \t")
            if name in headers:
                if repeated is None:
                    repeated = {}
                lst = repeated.get(name)
                if lst is None:
                    lst = repeated[name] = [headers[name]]
                lst.append(value)
            else:
                headers[name] = value
        if repeated:
            for name, vals in repeated.items():
                headers[name] = ", ".join(vals)
    te = headers.get("transfer-encoding")
    if te is not None:
        codings = [c for c in (c.strip(" \t").lower() for c in te.split(",")) if c]
        msg.chunked = bool(codings) and codings[-1] == "chunked"
        if not msg.chunked and msg.is_request:
            raise ParseError(f"request Transfer-Encoding {te[:40]!r} does not end in chunked")
    else:
        cl = headers.get("content-length")
        if cl is not None:
            msg.declared_length = _content_length(cl)


class MessageParser:
    """One direction of one connection: requests, or responses."""

    def __init__(self, is_request: bool,
                 on_head: Callable[[Any, Message], None] | None = None,
                 on_done: Callable[[Any, Message], None] | None = None,
                 owner: Any = None):
        self.is_request = is_request
        # called with (owner, message): one callable serves every connection's parser,
        # where a callable bound to each connection was two objects made per parser
        self.on_head = on_head or (lambda owner, m: None)
        self.on_done = on_done or (lambda owner, m: None)
        self.owner = owner
        self.state = IDLE
        self.msg: Message | None = None
        self.buf = bytearray()          # head, chunk-size line or trailer being read
        self.remaining = 0
        self.last_ts = 0
        self.pending_methods: deque[str] = deque()   # responses: methods of requests sent
        self.lost_bytes = 0
        self.parse_errors = 0
        self.keep_body = 0              # bytes of each body to keep (business attributes)

    def _release_buf(self) -> None:
        """Empty the buffer by replacing it. clear() shrinks it in place, and glibc keeps
        the freed tail as a hole too small for the next head's growing buffer: 20,000
        connections whose 8 KiB heads the budget cut kept ~150 MiB of such holes."""
        if self.buf:
            self.buf = bytearray()

    # ---- framing ----
    def _begin(self, ts: int, tid: int) -> None:
        self.msg = Message(self.is_request, ts, tid)
        if self.keep_body:
            self.msg.body = bytearray()
        self.state = HEAD
        self._release_buf()

    def _framing(self) -> None:
        msg = self.msg
        assert msg is not None
        self.on_head(self.owner, msg)
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
        self._release_buf()
        if msg is not None:
            msg.end_ts = ts
            msg.complete = complete
            self.on_done(self.owner, msg)

    def _head_done(self, raw: bytes, partial: bool) -> bool:
        msg = self.msg
        assert msg is not None
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
        # Termination: every pass consumes at least one byte of `data`. IDLE skips line
        # ends or starts a message and reads its head in the same pass; a head pass
        # ends at or after the blank line, whose start is at most 3 bytes back in the
        # buffer (no earlier pass found it there); BODY and CHUNK_DATA take
        # min(remaining, rest) with remaining >= 1 while in those states (lengths are
        # positive, and a state is left when remaining reaches 0); a chunk-size line
        # or trailer ends after its CRLF; the other states take the rest. Should an
        # invariant ever break, the check below turns the pass into a counted error
        # instead of a loop that never ends.
        while pos < end:
            before = pos
            state = self.state
            if state == IDLE:
                while pos < end and data[pos] in (13, 10):
                    pos += 1
                if pos < end:
                    self._begin(ts, tid)
                    pos = self._head(data, pos, end, ts)
            elif state == HEAD:
                pos = self._head(data, pos, end, ts)
            elif state == BODY:
                msg = self.msg
                assert msg is not None
                n = min(self.remaining, end - pos)
                self.remaining -= n
                msg.body_size += n
                if msg.body is not None:
                    self._keep(data[pos:pos + n])
                pos += n
                if self.remaining == 0:
                    self._finish(ts)
            elif state == CHUNK_SIZE:
                pos = self._chunk_line(data, pos, end)
            elif state == CHUNK_DATA:
                msg = self.msg
                assert msg is not None
                n = min(self.remaining, end - pos)
                if msg.body is not None:
                    self._keep(data[pos:pos + max(0, min(n, self.remaining - 2))])
                self._chunk_bytes(n)
                pos += n
            elif state == CHUNK_TRAILER:
                pos = self._trailer(data, pos, end, ts)
            elif state in (UNTIL_CLOSE, OPEN, CHUNK_LOST):
                msg = self.msg
                assert msg is not None
                msg.body_size += end - pos
                if msg.body is not None and state != CHUNK_LOST:
                    self._keep(data[pos:end])
                pos = end
            elif state == RESYNC:
                self.lost_bytes += end - pos
                pos = end
            if pos <= before:
                self._stalled(end - before)
                break
        gap = length - len(data)
        if gap > 0:
            self._gap(gap, ts)
        if self.state == CHUNK_LOST:
            last = tail if gap > 0 else data[-5:]
            if last.endswith(b"0\r\n\r\n"):
                self._finish(ts)

    def _stalled(self, rest: int) -> None:
        """A pass of `feed` that consumed nothing: drop the message, count the error and
        the bytes not read, and wait for the next start line."""
        self.parse_errors += 1
        self.lost_bytes += rest
        self.msg = None
        self._release_buf()
        self.state = RESYNC

    def _head(self, data: bytes, pos: int, end: int, ts: int) -> int:
        """Read head bytes from data[pos:end]; the position after what was used."""
        buf = self.buf
        old = len(buf)
        # never look further than the limit (and a blank line right after it)
        stop = min(end, pos + HEAD_LIMIT + 4 - old)
        if old == 0:
            i = data.find(_BLANK_LINE, pos, stop)
            if i >= 0:
                if self._head_done(data[pos:i], False):
                    self._framing()
                return i + 4
            buf += data[pos:stop]
        else:
            buf += data[pos:stop]
            i = buf.find(_BLANK_LINE, max(0, old - 3))
            if i >= 0:
                raw = bytes(buf[:i])
                self._release_buf()
                if self._head_done(raw, False):
                    self._framing()
                return pos + i + 4 - old
        if len(buf) > HEAD_LIMIT + 3:
            # over the limit: parse what is kept; the rest of this segment is head too.
            # (Up to 3 bytes past it may be the start of a blank line that the next
            # segment completes: a head at the limit split there is whole.)
            del buf[HEAD_LIMIT:]
            self._truncated_head(ts)
        return end

    def _keep(self, chunk: bytes) -> None:
        msg = self.msg
        assert msg is not None and msg.body is not None
        if msg.body_incomplete:
            return          # after a hole the bytes are not contiguous any more
        body = msg.body
        room = self.keep_body - len(body)
        if len(chunk) > room:
            chunk = chunk[:max(room, 0)]
            msg.body_incomplete = True
        body += chunk

    def _chunk_bytes(self, n: int) -> None:
        # chunk data is followed by CRLF, which `remaining` includes
        body = max(0, min(n, self.remaining - 2))
        msg = self.msg
        assert msg is not None
        msg.body_size += body
        self.remaining -= n
        if self.remaining == 0:
            self.state = CHUNK_SIZE

    def _chunk_line(self, data: bytes, pos: int, end: int) -> int:
        """Read a chunk-size line; the position after what was used."""
        if self.buf[-1:] == b"\r" and data[pos:pos + 1] == b"\n":
            # the CRLF itself was split between two segments
            line, nxt = bytes(self.buf[:-1]), pos + 1
        else:
            i = data.find(b"\r\n", pos, pos + CHUNK_LINE_LIMIT + 2 - len(self.buf))
            if i < 0:
                if len(self.buf) + end - pos > CHUNK_LINE_LIMIT + 1:
                    self._chunk_error()     # no line end within the limit
                else:
                    self.buf += data[pos:end]
                return end
            line, nxt = bytes(self.buf) + data[pos:i], i + 2
        self._release_buf()
        try:
            size = _chunk_size(line)
        except ParseError:
            self._chunk_error()
            return nxt
        if size == 0:
            self.state = CHUNK_TRAILER
            self.buf += b"\r\n"     # the last-chunk line's CRLF: the section ends at CRLFCRLF
        else:
            self.state, self.remaining = CHUNK_DATA, size + 2
        return nxt

    def _chunk_error(self) -> None:
        """Chunk framing unreadable: count it; the message ends at a terminator seen at
        the end of a segment, or at close."""
        self.parse_errors += 1
        self._release_buf()
        self.state = CHUNK_LOST

    def _trailer(self, data: bytes, pos: int, end: int, ts: int) -> int:
        """Read the trailer section (bounded like a head); the position after it."""
        buf = self.buf
        old = len(buf)
        stop = min(end, pos + HEAD_LIMIT + 4 - old)
        buf += data[pos:stop]
        i = buf.find(_BLANK_LINE, max(0, old - 3))
        if i >= 0:
            self._finish(ts)
            return pos + i + 4 - old
        if len(buf) > HEAD_LIMIT + 3:      # (as for a head: a split blank line waits)
            # the body itself was whole; trailers without end are an error, and what
            # follows is read again from the next start line
            self.parse_errors += 1
            self.lost_bytes += end - stop
            self._finish(ts)
            self.state = RESYNC
        return end

    def _truncated_head(self, ts: int) -> None:
        raw = bytes(self.buf[:HEAD_LIMIT])
        self._release_buf()
        if not self._head_done(raw, True):
            return
        msg = self.msg
        assert msg is not None
        if msg.is_request and msg.method in _BODYLESS_REQUESTS and not msg.chunked \
                and not msg.declared_length:
            self.on_head(self.owner, msg)
            self._finish(ts)
        else:
            if not msg.is_request and self.pending_methods:
                self.pending_methods.popleft()
            if msg.body is not None:
                msg.body_incomplete = True   # where the head ends, so the body starts, is lost
            self.on_head(self.owner, msg)
            self.state = CHUNK_LOST if msg.chunked else OPEN

    def _gap(self, gap: int, ts: int) -> None:
        state = self.state
        msg = self.msg
        if msg is not None and msg.body is not None and state not in (IDLE, HEAD, RESYNC):
            msg.body_incomplete = True   # bytes of the body were not captured
        if state == IDLE or state == RESYNC:
            self.lost_bytes += gap
        elif state == HEAD:
            self._truncated_head(ts)
        elif state == BODY:
            assert msg is not None
            n = min(self.remaining, gap)
            self.remaining -= n
            msg.body_size += n
            if self.remaining == 0:
                self.lost_bytes += gap - n
                self._finish(ts)
        elif state == CHUNK_DATA and gap <= self.remaining:
            self._chunk_bytes(gap)
        elif state in (CHUNK_DATA, CHUNK_SIZE, CHUNK_TRAILER):
            assert msg is not None
            msg.body_size += gap
            self.state = CHUNK_LOST
        else:   # UNTIL_CLOSE, OPEN, CHUNK_LOST
            assert msg is not None
            msg.body_size += gap

    def lose_sync(self) -> None:
        """Bytes of this direction went missing (the kernel could not send them): what was
        in progress and what was expected of it is forgotten (the caller counts what
        that drops), and parsing starts again at the next segment that opens with a
        start line, as after a parse error."""
        self.msg = None
        self._release_buf()
        self.remaining = 0
        self.pending_methods.clear()
        self.state = RESYNC

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
