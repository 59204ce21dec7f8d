"""Fuzz targets: one function per target, taking the fuzzer's bytes.

Each target turns the bytes into calls of the agent's public entry points and checks,
after every call, what must hold for any input: no exception escapes (the fuzzer
reports one as a crash), buffers stay within their caps, counters and sizes stay
sane. That every call returns is the runner's per-input timeout (run.py).

Input layouts (the seeds in corpus/ are written by seeds.py with the encoders here):

* http: byte 0 flags (bit 0: requests, else responses; bit 1: keep bodies), bytes 1-4
  a seed for the way the rest, the byte stream, is cut into segments: sizes, holes
  (bytes transferred but not captured), and gaps reported on their own.
* jsonprefix: a document; the first byte also picks where a prefix of it is cut.
* assembler: byte 0 flags (bit 0: keep bodies), then operations (see `Ops`); the
  exchanges it finishes are built into spans and encoded, and the encoding read back.
* app_routes: byte 0 picks a route syntax, the rest is a Python source file (UTF-8, as
  app_routes.Reader reads one); its first line is also a route text on its own.
* target_resource: a target's OTEL_RESOURCE_ATTRIBUTES; a NUL splits off its
  OTEL_SERVICE_NAME.
"""

from __future__ import annotations

import json
import random

from spanprobe import app_routes
from spanprobe import events as ev
from spanprobe import httpparse
from spanprobe import target_resource
from spanprobe.httpparse import HEAD_LIMIT, MessageParser
from spanprobe.jsonprefix import UNSET, extract, parse_prefix
from spanprobe.streams import Assembler

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanprobe.clock import MonotonicToWall
from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.discovery import ProcessRegistry
from spanprobe.otlp_wire import SpanEncoder
from spanprobe.privacy import Redactor
from spanprobe.procfs import SysRoot
from spanprobe.routes import RouteMatcher
from spanprobe.spans import SpanBuilder

KEEP_BODY = 4096
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")


# ---------------------------------------------------------------- http

def encode_http(stream: bytes, *, requests: bool, keep_body: bool = False, seed: int = 0) -> bytes:
    return bytes([int(requests) | int(keep_body) << 1]) + seed.to_bytes(4, "little") + stream


def check_parser(p: MessageParser) -> None:
    assert len(p.buf) <= HEAD_LIMIT, len(p.buf)
    assert p.parse_errors >= 0 and p.lost_bytes >= 0
    if p.state in (httpparse.BODY, httpparse.CHUNK_DATA):
        assert p.remaining >= 1, (p.state, p.remaining)
    msg = p.msg
    if msg is not None and msg.body is not None:
        assert len(msg.body) <= p.keep_body
    assert (msg is None) == (p.state in (httpparse.IDLE, httpparse.RESYNC)), p.state


def check_message(m) -> None:
    assert m.body_size >= 0 and m.head_size >= 0
    assert m.status is None or 100 <= m.status <= 599
    assert m.declared_length is None or 0 <= m.declared_length < 2 ** 63
    assert m.body is None or len(m.body) <= KEEP_BODY


def summary(m) -> tuple:
    """What a message came out as: compared between the compiled and the source modules."""
    return (m.is_request, m.method, m.target, m.status, m.version, tuple(m.headers.items()),
            m.head_size, m.body_size, m.declared_length, m.chunked, m.complete, m.truncated,
            m.interim, None if m.body is None else bytes(m.body), m.body_incomplete,
            m.start_ts, m.end_ts, m.tid)


def http(data: bytes) -> tuple:
    """The target, and what it made of the input (replay.py compares that across builds)."""
    if len(data) < 5:
        return ()
    flags, seed, stream = data[0], int.from_bytes(data[1:5], "little"), data[5:]
    rng = random.Random(seed)
    done = []
    p = MessageParser(bool(flags & 1), lambda owner, m: done.append(m), lambda owner, m: done.append(m))
    if flags & 2:
        p.keep_body = KEEP_BODY
    if not p.is_request:
        p.pending_methods.extend(rng.choice(METHODS) for _ in range(rng.randint(0, 8)))
    pos, ts = 0, 0
    while pos < len(stream):
        ts += 1
        size = rng.choice((1, 2, 3, 7, 16, 64, 256, 4096, 1 << 16))
        whole = stream[pos:pos + size]
        pos += len(whole)
        kind = rng.random()
        if kind < 0.15:       # captured a prefix only: the rest is a hole
            cap = rng.randint(0, len(whole))
            p.feed(ts, 1, whole[:cap], len(whole) + rng.choice((0, 0, 1, 5000)), whole[-8:])
        elif kind < 0.2:      # a gap on its own (a vectored write's uncopied buffers)
            p.feed(ts, 1, b"", rng.randint(1, 9000))
        else:
            p.feed(ts, 1, whole, len(whole), b"")
        check_parser(p)
    p.close(ts + 1)
    check_parser(p)
    for m in done:
        check_message(m)
    return (tuple(summary(m) for m in done), p.parse_errors, p.lost_bytes, p.state, p.remaining)


# ---------------------------------------------------------------- jsonprefix

def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")   # a prefix may hold a value a later key overrides
    return dict(pairs)


def _no_constant(name):
    raise ValueError(name)


def jsonprefix(data: bytes) -> None:
    try:
        doc, complete = parse_prefix(data)
    except ValueError:
        doc, complete = UNSET, False
    for path in (("a",), (0,), ("a", 0, "b"), ()):
        extract(data, path)
    if not complete or not data:
        return
    # the oracle: a whole document read by json itself; every top-level member of a
    # prefix of it is absent or exactly that member's value in the whole
    try:
        whole = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                           parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return
    assert doc == whole
    cut = data[:data[0] * len(data) // 256]
    if isinstance(whole, dict):
        members = [((k,), v) for k, v in whole.items()]
    elif isinstance(whole, list):
        members = [((i,), v) for i, v in enumerate(whole)]
    else:
        members = []
    for path, value in members:
        got = extract(cut, path)
        assert got is UNSET or got == value, (path, got, value)


# ---------------------------------------------------------------- assembler

class Ops:
    """The assembler target's operations: an opcode byte, then its arguments.

    Connections live in four slots (tgid 100 for slots 0-1, 200 for 2-3, fd 5 + slot);
    the conn_id byte lets events name a connection that is no longer the open one."""

    OPEN, ADOPT, READ, WRITE, WRITE_RESULT, CLOSE, EXIT, PORTS, DRAIN = range(9)
    COUNT = 9


def encode_ops(ops: list[tuple], *, keep_body: bool = False) -> bytes:
    """Seeds: (op, slot, ...) tuples as the target reads them."""
    out = bytearray([int(keep_body)])
    for op, *args in ops:
        out.append(op)
        if op in (Ops.OPEN, Ops.ADOPT):             # slot, conn_id, role
            out += bytes(args)
        elif op in (Ops.READ, Ops.WRITE):           # slot, conn_id, data, hole
            slot, conn_id, payload, hole = args
            out += bytes([slot, conn_id]) + len(payload).to_bytes(2, "little") + payload
            out += hole.to_bytes(2, "little")
        elif op == Ops.WRITE_RESULT:                # slot, conn_id, asked, ret (signed)
            slot, conn_id, asked, ret = args
            out += bytes([slot, conn_id]) + asked.to_bytes(2, "little")
            out += ret.to_bytes(2, "little", signed=True)
        elif op in (Ops.CLOSE, Ops.PORTS):          # slot, conn_id
            out += bytes(args)
        elif op == Ops.EXIT:                        # slot (its tgid)
            out += bytes(args)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "little")


def _slot(slot: int) -> tuple[int, int]:
    slot &= 3
    return (100 if slot < 2 else 200), 5 + slot


def assembler(data: bytes) -> tuple:
    """The target, and what it made of the input, without the random trace and span ids."""
    if not data:
        return ()
    keep = data[0] & 1
    out = []
    asm = Assembler(out.append, body_needs=lambda conn: (KEEP_BODY, KEEP_BODY) if keep else (0, 0))
    r = _Reader(data)
    r.pos = 1
    ts = 0
    while r.pos < len(data):
        ts += 1
        op = r.byte() % Ops.COUNT
        if op in (Ops.OPEN, Ops.ADOPT):
            tgid, fd = _slot(r.byte())
            conn_id, role = r.byte(), r.byte() % 3
            local, peer = ("127.0.0.1", 40000 + fd), ("127.0.0.1", 8000 + (conn_id & 1))
            if op == Ops.OPEN:
                asm.open(ev.ConnEvent(ev.Header(ts, ev.EV_CONN_OPEN, tgid, tgid, fd, conn_id), -1,
                                      ev.AF_INET, role, 0, peer, local))
            else:
                asm.adopt(tgid, fd, conn_id, role, local, peer, ts)
        elif op in (Ops.READ, Ops.WRITE):
            tgid, fd = _slot(r.byte())
            conn_id = r.byte()
            payload = r.take(r.u16())
            hole = r.u16()
            length = len(payload) + hole
            asm.data(ev.DataEvent(ev.Header(ts, ev.EV_DATA, tgid, tgid + (conn_id & 1), fd, conn_id),
                                  length, payload, ev.DIR_INGRESS if op == Ops.READ else ev.DIR_EGRESS,
                                  0, 0, payload[-8:] if hole else b"", fd if conn_id & 2 else -1))
        elif op == Ops.WRITE_RESULT:
            tgid, fd = _slot(r.byte())
            conn_id, asked = r.byte(), r.u16()
            ret = int.from_bytes(r.take(2).ljust(2, b"\0"), "little", signed=True)
            asm.write_result(ev.WriteResult(ev.Header(ts, ev.EV_WRITE_RESULT, tgid, tgid, fd, conn_id),
                                            ret, asked))
        elif op == Ops.CLOSE:
            tgid, fd = _slot(r.byte())
            asm.close(ev.ConnEvent(ev.Header(ts, ev.EV_CONN_CLOSE, tgid, tgid, fd, r.byte()), -1,
                                   ev.AF_INET, 0, 0, None, None))
        elif op == Ops.PORTS:
            tgid, fd = _slot(r.byte())
            conn_id = r.byte()
            asm.ports(ev.ConnEvent(ev.Header(ts, ev.EV_CONN_PORTS, tgid, tgid, fd, conn_id), -1,
                                   ev.AF_INET, ev.ROLE_CLIENT, 0, ("127.0.0.1", 8000),
                                   ("127.0.0.1", 40000 + fd)))
        elif op == Ops.EXIT:
            asm.process_exit(_slot(r.byte())[0], ts)
        else:
            asm.drain()
        for conn in asm.conns.values():
            check_parser(conn.requests)
            check_parser(conn.responses)
        assert all(v >= 0 for v in asm.counts.values()), asm.counts
    for tgid in (100, 200):
        asm.process_exit(tgid, ts + 1)
    asm.drain()
    assert not asm.conns
    for x in out:
        check_message(x.request)
        if x.response is not None:
            check_message(x.response)
    spans = _spans(out)
    return (tuple((summary(x.request), None if x.response is None else summary(x.response),
                   x.conn.role, x.conn.tgid, x.conn.fd, x.conn.conn_id, x.parent_span_id is None,
                   x.parent_remote, x.trace_flags, x.aborted, x.error_type, x.ended_ts)
                  for x in out),
            tuple(sorted(asm.counts.items())),
            tuple((s.name, s.kind_code, s.status_code, s.status_description,
                   tuple(s.attributes.items()), s.attr_base is not None) for s in spans))


def _spans(exchanges: list) -> list:
    """The exchanges' spans, built and encoded as the agent does: the encoding must be one
    a receiver can read, with every span in it (one unreadable value would cost the batch)."""
    spans = [_BUILDER.build(x) for x in exchanges]
    if spans:
        request = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
        assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == len(spans)
    return spans


# A builder over an empty /proc: every process is "pid-N", none has a route table.
_REDACTOR = Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))
_BUILDER = SpanBuilder(ProcessRegistry(SysRoot("/nonexistent-spanprobe-fuzz-root"), _REDACTOR),
                       RouteMatcher([]), _REDACTOR, MonotonicToWall(), "fuzz-host", {})


# ---------------------------------------------------------------- app_routes

SYNTAXES = sorted(app_routes.SYNTAX)


def _check_template(t, text: str) -> None:
    assert t.text == text
    assert len(t.segments) == len(t.names)
    assert not t.checks or len(t.checks) == len(t.segments)
    for parts in (text.strip("/").split("/"), ["a"] * len(t.segments), ["1"] * (len(t.segments) + 1)):
        got = t.match(parts)
        assert got is None or all(isinstance(v, str) and v for v in got.values())


def app_route_source(data: bytes) -> None:
    if not data:
        return
    syntax = SYNTAXES[data[0] % len(SYNTAXES)]
    try:
        source = data[1:].decode("utf-8")
    except UnicodeDecodeError:
        return                                  # Reader.read counts it as unreadable
    first = source.split("\n", 1)[0]
    t = app_routes.template(first, syntax)
    if t is not None:
        _check_template(t, first)
    try:
        mod = app_routes.read_module(source, "app.main")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return                                  # what app_routes._parse counts
    assert not mod.mounted_calls
    table = app_routes.AppRoutes()
    for text, kind, _router in mod.routes[:app_routes.MAX_ROUTES]:
        assert kind in app_routes.SYNTAX
        t = app_routes.template(text, kind)
        if t is not None:
            _check_template(t, text)
            table.templates.append(t)
    for name in list(mod.imports.values()) + [m for _, m in mod.includes]:
        app_routes.Reader(None, []).module_file(name)          # any text: never raises
    texts = {t.text for t in table.templates}
    for t in table.templates[:20]:
        got = table.route(t.text)
        assert got is None or got in texts


# ---------------------------------------------------------------- target_resource

def target_resource_env(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    attributes, _, service = text.partition("\0")
    env = {target_resource.OTEL_RESOURCE_ATTRIBUTES: attributes}
    if service:
        env[target_resource.OTEL_SERVICE_NAME] = service
    own = target_resource.read(env)
    assert len(own.attributes) <= target_resource.MAX_ATTRIBUTES + 1        # + service.name
    for key, value in own.attributes.items():
        assert isinstance(key, str) and key and isinstance(value, str)
        assert len(key) <= target_resource.MAX_ATTRIBUTE_CHARS
        assert len(value) <= target_resource.MAX_ATTRIBUTE_CHARS
    assert min(own.skipped, own.dropped, own.cut) >= 0


# the targets whose code spanprobe.native compiles: their outcomes must not depend on it
COMPILED_TARGETS = ("http", "assembler")

TARGETS = {"http": http, "jsonprefix": jsonprefix, "assembler": assembler,
           "app_routes": app_route_source, "target_resource": target_resource_env}
