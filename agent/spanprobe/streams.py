"""Assemble: connection byte streams -> request/response exchanges with trace context.

One `Connection` per (tgid, fd, conn_id) holds a parser per direction. Exchanges are
paired first-in first-out (HTTP/1.x keep-alive and pipelining). Context is decided when
a request's head is seen, so children created while it runs can point at it:

* an incoming `traceparent` header is honoured;
* a server request whose connection is a traced client connection on this host (the
  same four addresses and ports, seen from the other end) becomes the child of that
  client's span (one trace across services, no header injection);
* a client request becomes the child of the server exchange its process is serving,
  when that is certain: exactly one in flight in the process, or exactly one on the
  calling thread. Otherwise it stays unlinked rather than guessed.

Everything kept per connection and per process is capped (`AssemblerLimits`): peers are
hostile, and what a cap refuses or evicts is counted in `Assembler.counts`.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Callable, Final

from . import events as ev
from .httpparse import Message, MessageParser

import logging
_debug = logging.getLogger("spanprobe.streams")
TASK_TRUST_AFTER: Final = 3   # verified task owners before a process's task links are used

_rng = random.Random()
_rng.seed(int.from_bytes(__import__("os").urandom(16), "little"))


def new_trace_id() -> int:
    while True:
        v = _rng.getrandbits(128)
        if v:
            return v


def new_span_id() -> int:
    while True:
        v = _rng.getrandbits(64)
        if v:
            return v


# W3C trace-context: lowercase hex only; version 00 has exactly four fields, later
# versions may append more (the same rule as OpenTelemetry's own propagator).
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace_id, parent_span_id, flags) from a W3C traceparent, or None if invalid."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id, flags = int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, flags


@dataclass(frozen=True, slots=True)
class AssemblerLimits:
    """Caps on the assembler's state, so that hostile or broken peers (connections that
    stay half open, endless heads, pipelining without responses) cost bounded memory."""
    connections: int = 65_536       # tracked; beyond, the least recently active is evicted
    inflight_per_connection: int = 256   # requests awaiting a response; beyond, refused
    pending_ports: int = 10_000     # ports reported before their open; beyond, oldest evicted
    serving_per_process: int = 4_096     # server exchanges one process is known to serve
    processes: int = 65_536         # processes whose asyncio task owners are tracked
    buffered_bytes: int = 16 << 20  # head and line bytes parsers hold, all connections


_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


def link_endpoint(ep: tuple[str, int] | None) -> tuple[str, int] | None:
    """An address and port fit for matching two ends of one connection: IPv4-mapped IPv6
    as plain IPv4, and None when unknown or a wildcard (it would match anything)."""
    if ep is None:
        return None
    addr, port = ep
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]
    if not port or addr in _WILDCARDS:
        return None
    return addr, port


@dataclass(slots=True, init=False)     # its own __init__: see events.Header
class Exchange:
    conn: "Connection"
    request: Message
    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_remote: bool
    trace_flags: int = 1
    response: Message | None = None
    linked_downstream: bool = False     # a traced server on this host took it as parent
    aborted: str | None = None
    listed: bool = False                # in Assembler.serving (server exchanges)
    error_type: str | None = None       # why it ended without a response: error.type
    ended_ts: int = 0                   # when it was given up on (no response to end it)
    given_up: bool = False              # exported already (timeout): a late response is counted
    responding: bool = False            # its response has begun (a long stream is no timeout)

    def __init__(self, conn: "Connection", request: Message, trace_id: int, span_id: int,
                 parent_span_id: int | None, parent_remote: bool, trace_flags: int = 1,
                 response: Message | None = None, linked_downstream: bool = False,
                 aborted: str | None = None, listed: bool = False, error_type: str | None = None,
                 ended_ts: int = 0, given_up: bool = False, responding: bool = False) -> None:
        self.conn = conn
        self.request = request
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.parent_remote = parent_remote
        self.trace_flags = trace_flags
        self.response = response
        self.linked_downstream = linked_downstream
        self.aborted = aborted
        self.listed = listed
        self.error_type = error_type
        self.ended_ts = ended_ts
        self.given_up = given_up
        self.responding = responding


@dataclass(init=False)     # its own __init__: see events.Header
class Connection:
    tgid: int
    fd: int
    conn_id: int
    role: int
    opened_ts: int
    peer: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    listen_fd: int = -1
    family: int = 0
    inflight: deque[Exchange] = field(default_factory=deque)    # awaiting a response
    requests: MessageParser | None = None
    responses: MessageParser | None = None
    ingress: MessageParser | None = None      # requests for servers, responses for clients
    egress: MessageParser | None = None
    egress_skip: int = 0          # bytes a partial write will send again
    ignored: bool = False         # the agent's own traffic
    owner_fd: int = -1            # asyncio: server connection of the task writing now
    last_egress: Message | None = None
    link_key: tuple | None = None     # clients: key in Assembler.client_by_tuple
    refused: int = 0              # requests refused at the in-flight cap, responses still due
    buffered: int = 0             # bytes its parsers hold in head/line buffers
    lost: int = 0                 # the kernel's loss count for it, as last seen
    resync: bool = False          # a gap since the last request head: responses now
                                  # can't be paired (see Assembler.gap)
    span_base: tuple | None = None    # (what decided it, the attributes its server spans share)

    def __init__(self, tgid: int, fd: int, conn_id: int, role: int, opened_ts: int,
                 peer: tuple[str, int] | None = None, local: tuple[str, int] | None = None,
                 listen_fd: int = -1, family: int = 0, inflight: deque[Exchange] | None = None,
                 requests: MessageParser | None = None, responses: MessageParser | None = None,
                 ingress: MessageParser | None = None, egress: MessageParser | None = None,
                 egress_skip: int = 0, ignored: bool = False, owner_fd: int = -1,
                 last_egress: Message | None = None, link_key: tuple | None = None,
                 refused: int = 0, buffered: int = 0, lost: int = 0, resync: bool = False,
                 span_base: tuple | None = None) -> None:
        self.tgid = tgid
        self.fd = fd
        self.conn_id = conn_id
        self.role = role
        self.opened_ts = opened_ts
        self.peer = peer
        self.local = local
        self.listen_fd = listen_fd
        self.family = family
        self.inflight = deque() if inflight is None else inflight
        self.requests = requests
        self.responses = responses
        self.ingress = ingress
        self.egress = egress
        self.egress_skip = egress_skip
        self.ignored = ignored
        self.owner_fd = owner_fd
        self.last_egress = last_egress
        self.link_key = link_key
        self.refused = refused
        self.buffered = buffered
        self.lost = lost
        self.resync = resync
        self.span_base = span_base

    @property
    def key(self) -> tuple[int, int]:
        return self.tgid, self.fd


def _unwire(conn: Connection) -> None:
    """Let a connection that is no longer tracked go as soon as nothing refers to it: its
    parsers' callbacks refer to it, a cycle that only the cyclic garbage collector would
    free, and a connection per request made those cycles the agent's largest cost
    (bench/span_cost.py: 50 µs a span with them, 35 without)."""
    conn.requests = conn.responses = conn.ingress = conn.egress = None


class Assembler:
    """Turns decoded events into finished Exchanges, handed to `emit`."""

    def __init__(self, emit: Callable[[Exchange], None],
                 resolve_listen: Callable[[int, int, bool], tuple[str, int] | None] | None = None,
                 own_connection: Callable[[tuple[str, int], tuple[str, int] | None, int], bool] | None = None,
                 body_needs: Callable[["Connection"], tuple[int, int]] | None = None,
                 *, limits: AssemblerLimits = AssemblerLimits(),
                 sample: Callable[[int, int | None, int, bool], int] | None = None,
                 listen_port: Callable[[int], None] | None = None,
                 resolve_ends: Callable[[int, int, int, int], tuple[tuple[str, int], tuple[str, int]] | None]
                 | None = None):
        self.emit = emit
        self.limits = limits
        # head sampling (sampling.HeadSampler): (trace id, parent, its flags, remote) -> the
        # new span's flags; None keeps the parent's flags, sampled for a new trace
        self.sample = sample
        # bytes of request and response bodies to keep for a connection (json_body rules)
        self.body_needs = body_needs or (lambda conn: (0, 0))
        # a listening socket's address, (pid, fd, read again) -> (address, port): cached by
        # its owner unless asked to read again
        self.resolve_listen = resolve_listen or (lambda pid, fd, fresh: None)
        # both ends of a connection, (pid, fd, conn_id, accepted at) -> (local, peer), read
        # from /proc while the fd is still that connection: for an accept() the kernel side
        # saw return only (_unseen_accept)
        self.resolve_ends = resolve_ends or (lambda pid, fd, conn_id, accepted_ns: None)
        # the parsers' callbacks, (connection, message), bound once for every connection
        self._on_request_head = self._request_head
        self._on_request_done = self._request_done
        self._on_response_head = self._response_head
        self._on_response_done = self._response_done
        # a traced process listens on this port: the kernel side is to give the local end
        # of the connections accepted there (see _accepted_local)
        self.listen_port = listen_port or (lambda port: None)
        # True for (peer, local end, accept's kernel time) of a connection the agent itself
        # opened (its OTLP export to a traced collector): tracing that would feed spans back
        # into the export forever
        self.own_connection = own_connection or (lambda peer, local, accepted_ns: False)
        # least recently active first: the order evictions take
        self.conns: OrderedDict[tuple[int, int], Connection] = OrderedDict()
        self.pending_ports: OrderedDict[tuple[int, int, int], ev.ConnEvent] = OrderedDict()
        # client connections by (local, peer) endpoints, for a server end on this host
        self.client_by_tuple: dict[tuple, list[Connection]] = {}
        self.serving: dict[int, list[Exchange]] = {}          # tgid -> server exchanges in flight
        self.unlisted: dict[int, int] = {}    # tgid -> in flight but over the serving cap
        self.buffering: OrderedDict[tuple[int, int], Connection] = OrderedDict()
        self.buffered_bytes = 0               # sum of Connection.buffered
        self.ready: list[Exchange] = []
        self.counts = {"exchanges": 0, "aborted": 0, "unpaired_responses": 0,
                       "parse_errors": 0, "lost_bytes": 0, "unknown_connection_data": 0,
                       "agent_own_connections": 0, "task_links": 0, "task_owner_mismatch": 0,
                       # a local end from the kernel side on another port than its listener's
                       "local_ends_refused": 0,
                       # accept() seen returning only (the thread entered it before the agent
                       # attached or selected its process): its ends read from /proc, and
                       # those closed before they could be
                       "accepts_unseen": 0, "accepts_unseen_without_ends": 0,
                       # what the caps of AssemblerLimits evicted or refused
                       "connections_evicted": 0, "connections_dropped": 0,
                       "exchanges_dropped": 0, "inflight_refused": 0,
                       "pending_ports_evicted": 0, "serving_unlisted": 0,
                       "task_trust_refused": 0, "buffers_cut": 0, "buffered_bytes_cut": 0,
                       # gaps in a connection's stream, by cause; what they cost: requests
                       # in flight at the gap, responses after it with no request to answer
                       "gaps_lost_events": 0, "gaps_read_faults": 0, "gaps_missed_start": 0,
                       # exchanges a CPU budget left out on purpose (budget.py): a gap too
                       "gaps_shed": 0,
                       "exchanges_dropped_gap": 0, "responses_dropped_gap": 0,
                       # connections joined after they opened (adoption.py), refused ones
                       "connections_adopted": 0, "adoptions_refused": 0,
                       # requests with no response in time (expire), and their responses
                       # that came after all (counted, never exported a second time)
                       "exchanges_timed_out": 0, "exchanges_in_flight_at_stop": 0,
                       "late_responses": 0}
        self.task_trust: dict[int, int] = {}   # tgid -> verified owners, -1 = distrusted

    # ---- connections ----
    def open(self, e: ev.ConnEvent) -> Connection:
        h = e.h
        old = self.conns.get((h.tgid, h.fd))
        if old is not None:
            self._close(old, h.ts_ns)
        conn = Connection(h.tgid, h.fd, h.conn_id, e.role, h.ts_ns, e.peer, e.local,
                          e.listen_fd, e.family)
        if conn.role == ev.ROLE_SERVER:
            if e.listen_fd >= 0:
                conn.local = self._accepted_local(h.tgid, e.listen_fd, conn.local)
            elif e.flags & ev.OPEN_EXIT_ONLY:
                self._unseen_accept(conn)
        if conn.role == ev.ROLE_SERVER and conn.peer is not None and self.own_connection(conn.peer, conn.local, h.ts_ns):
            conn.ignored = True
            self.counts["agent_own_connections"] += 1
        self._wire(conn)
        self._track(conn)
        ports = self.pending_ports.pop((h.tgid, h.fd, h.conn_id), None)
        if ports is not None:
            self.ports(ports)
        return conn

    def _accepted_local(self, tgid: int, listen_fd: int,
                        given: tuple[str, int] | None) -> tuple[str, int] | None:
        """The local end of a connection `listen_fd` accepted. The kernel side gives it
        (`given`) for connections on the ports it was told traced processes listen on,
        found by the peer's address and port; on another port it gives none, and the
        listening socket's own address is taken (read from /proc once, then cached: a
        wildcard for a wildcard listener) and its port told to the kernel side for the
        next connections. A given end on another port than the listener's is that of
        another connection of the same peer (one client port in use towards a port the
        kernel side knows and one it does not): the listener's address, read again in
        case its fd was reused since, is taken instead."""
        listener = self.resolve_listen(tgid, listen_fd, False)
        if given is None:
            if listener is not None:
                self.listen_port(listener[1])
            return listener
        if listener is not None and listener[1] != given[1]:
            listener = self.resolve_listen(tgid, listen_fd, True)
            if listener is not None and listener[1] != given[1]:
                self.counts["local_ends_refused"] += 1
                self.listen_port(listener[1])
                return listener
        return given

    def _unseen_accept(self, conn: Connection) -> None:
        """A connection accept() returned while the kernel side had not seen it enter: the
        thread was blocked in accept() when the agent attached, or when its process was
        selected (a service that binds a selected port and waits in accept() at once).
        Neither its listening socket nor its peer is known, so both ends are read from
        /proc (a connection closed by then, its fd perhaps another's, or one that is not
        TCP, is traced without them: counted), and its port is told to the kernel side
        like any listener's."""
        self.counts["accepts_unseen"] += 1
        ends = self.resolve_ends(conn.tgid, conn.fd, conn.conn_id, conn.opened_ts)
        if ends is None:
            self.counts["accepts_unseen_without_ends"] += 1
            return
        conn.local, conn.peer = ends
        self.listen_port(conn.local[1])

    def adopt(self, tgid: int, fd: int, conn_id: int, role: int, local, peer, ts: int) -> Connection:
        """A connection that existed before tracing started: joined mid-stream, so traced
        from its next request head."""
        conn = Connection(tgid, fd, conn_id, role, ts, peer, local)
        self._wire(conn)
        self._track(conn)
        self._index_client(conn)
        self.gap(conn, "gaps_missed_start")
        self.counts["connections_adopted"] += 1
        return conn

    def _track(self, conn: Connection) -> None:
        """A new connection, the most recently active; over the cap, the least recently
        active one is forgotten (counted, its exchanges in flight too)."""
        self.conns[conn.key] = conn
        if len(self.conns) > self.limits.connections:
            _, victim = self.conns.popitem(last=False)
            self._forget(victim)
            self.counts["connections_evicted"] += 1

    def drop_connection(self, tgid: int, fd: int) -> bool:
        """Forget one connection whose state an error may have left inconsistent, so
        that it cannot affect others: its exchanges in flight are counted, not emitted."""
        conn = self.conns.pop((tgid, fd), None)
        if conn is None:
            return False
        self._forget(conn)
        self.counts["connections_dropped"] += 1
        return True

    def _forget(self, conn: Connection) -> None:
        """Remove an untracked connection from every index, dropping what is in flight."""
        self._unindex_client(conn)
        self._unbuffer(conn)
        self._count_parsers(conn)
        self.counts["exchanges_dropped"] += len(conn.inflight)
        for x in conn.inflight:
            self._unserve(x)
        conn.inflight.clear()
        _unwire(conn)

    def _index_client(self, conn: Connection) -> None:
        """(Re-)index a client connection by its endpoints, once both are known."""
        key = None
        if conn.role == ev.ROLE_CLIENT:
            local, peer = link_endpoint(conn.local), link_endpoint(conn.peer)
            if local is not None and peer is not None:
                key = (local, peer)
        if key == conn.link_key:
            return
        self._unindex_client(conn)
        if key is not None:
            self.client_by_tuple.setdefault(key, []).append(conn)
            conn.link_key = key

    def _unindex_client(self, conn: Connection) -> None:
        key, conn.link_key = conn.link_key, None
        if key is None:
            return
        lst = self.client_by_tuple.get(key)
        if lst and conn in lst:
            lst.remove(conn)
            if not lst:
                del self.client_by_tuple[key]

    def has_client_connection(self, tgid: int) -> bool:
        return any(c.tgid == tgid and c.role == ev.ROLE_CLIENT for c in self.conns.values())

    def _wire(self, conn: Connection) -> None:
        server = conn.role == ev.ROLE_SERVER
        conn.requests = MessageParser(True, self._on_request_head, self._on_request_done, conn)
        conn.responses = MessageParser(False, self._on_response_head, self._on_response_done, conn)
        conn.ingress = conn.requests if server else conn.responses
        conn.egress = conn.responses if server else conn.requests
        conn.requests.keep_body, conn.responses.keep_body = self.body_needs(conn)

    def ports(self, e: ev.ConnEvent) -> None:
        h = e.h
        conn = self.conns.get((h.tgid, h.fd))
        if conn is None or conn.conn_id != h.conn_id:
            # ESTABLISHED can be reported before connect() returns; an open that never
            # comes (its event lost) leaves an entry the cap evicts in time
            self.pending_ports[(h.tgid, h.fd, h.conn_id)] = e
            if len(self.pending_ports) > self.limits.pending_ports:
                self.pending_ports.popitem(last=False)
                self.counts["pending_ports_evicted"] += 1
            return
        conn.local = e.local
        if e.peer:
            conn.peer = e.peer
        self._index_client(conn)

    def address(self, e: ev.ConnEvent) -> None:
        """getpeername/getsockname told an address accept() did not."""
        conn = self.conns.get((e.h.tgid, e.h.fd))
        if conn is None or conn.conn_id != e.h.conn_id:
            return
        if e.peer is not None and conn.peer is None:
            conn.peer = e.peer
        if e.local is not None and link_endpoint(conn.local) is None:
            conn.local = e.local      # also where a wildcard listener's address stood
        self._index_client(conn)

    def close(self, e: ev.ConnEvent) -> None:
        conn = self.conns.get((e.h.tgid, e.h.fd))
        if conn is not None and conn.conn_id == e.h.conn_id:
            self._close(conn, e.h.ts_ns)

    def _count_parsers(self, conn: Connection) -> None:
        """What the connection's parsers counted, into the totals (a connection per
        request closes one per span: the counts are added only when there is any)."""
        ingress, egress = conn.ingress, conn.egress
        assert ingress is not None and egress is not None
        errors = ingress.parse_errors + egress.parse_errors
        if errors:
            self.counts["parse_errors"] += errors
        lost = ingress.lost_bytes + egress.lost_bytes
        if lost:
            self.counts["lost_bytes"] += lost

    def _close(self, conn: Connection, ts: int) -> None:
        key = conn.key
        if key in self.conns:
            del self.conns[key]     # not OrderedDict.pop: a method call, where this is none
        self._unbuffer(conn)
        self._count_parsers(conn)
        assert conn.responses is not None and conn.requests is not None
        conn.responses.close(ts)
        conn.requests.close(ts)    # a request that never finished arriving: not served
        while conn.inflight:
            x = conn.inflight.popleft()
            x.aborted = "connection closed before the response completed"
            if x.response is not None and not x.response.end_ts:
                x.response.end_ts = ts
            self._finish(x, ts)
        self._unindex_client(conn)
        _unwire(conn)

    def process_exit(self, tgid: int, ts: int) -> None:
        self.task_trust.pop(tgid, None)
        for conn in [c for c in self.conns.values() if c.tgid == tgid]:
            self._close(conn, ts)
        self.serving.pop(tgid, None)
        self.unlisted.pop(tgid, None)

    # ---- data ----
    def data(self, e: ev.DataEvent) -> None:
        h = e.h
        key = (h.tgid, h.fd)
        conn = self.conns.get(key)
        if conn is None or conn.conn_id != h.conn_id:
            self.counts["unknown_connection_data"] += 1
            return
        if conn.ignored:
            return
        self.conns.move_to_end(key)
        if e.lost != conn.lost:
            conn.lost = e.lost
            self.gap(conn, "gaps_lost_events")
        elif e.flags & ev.DATA_FAULT:
            self.gap(conn, "gaps_read_faults")
        elif e.flags & ev.DATA_RESUMED:
            self.gap(conn, "gaps_shed")
        if e.direction == ev.DIR_INGRESS:
            assert conn.ingress is not None
            conn.ingress.feed(h.ts_ns, h.tid, e.data, e.length, e.tail)
            self._account(conn, h.ts_ns)
            return
        data, length = e.data, e.length
        conn.owner_fd = e.owner_fd
        if conn.role == ev.ROLE_SERVER and e.owner_fd >= 0:
            self._verify_owner(conn, e.owner_fd)
        if conn.egress_skip:
            # the app is sending again what a partial write did not send
            n = min(conn.egress_skip, length)
            conn.egress_skip -= n
            data, length = data[n:], length - n
            if length <= 0:
                return
        assert conn.egress is not None
        conn.egress.feed(h.ts_ns, h.tid, data, length, e.tail)
        self._account(conn, h.ts_ns)

    def gap(self, conn: Connection, cause: str) -> None:
        """Some of the connection's bytes will never arrive (`cause` is the counter). Which
        direction, and how many requests or responses they held, is unknown, so pairing
        across the gap could give a request another one's response, and every later one
        too on a keep-alive connection. Instead: the exchanges in flight are dropped
        (counted), both parsers wait for the next start line, and responses that come
        before the next request head are dropped (counted) rather than paired."""
        self.counts[cause] += 1
        self.counts["exchanges_dropped_gap"] += len(conn.inflight)
        for x in conn.inflight:
            self._unserve(x)
        conn.inflight.clear()
        conn.refused = 0
        conn.resync = True
        assert conn.requests is not None and conn.responses is not None
        conn.requests.lose_sync()
        conn.responses.lose_sync()
        if conn.buffered:
            self._unbuffer(conn)

    def _account(self, conn: Connection, ts: int) -> None:
        """Keep the bytes parsers buffer under the global budget: over it, cut the
        buffers of the least recently active connections first."""
        assert conn.ingress is not None and conn.egress is not None
        n = len(conn.ingress.buf) + len(conn.egress.buf)
        if n == 0 and conn.buffered == 0:
            return
        self.buffered_bytes += n - conn.buffered
        conn.buffered = n
        if n == 0:
            del self.buffering[conn.key]
            return
        self.buffering[conn.key] = conn
        self.buffering.move_to_end(conn.key)
        while self.buffered_bytes > self.limits.buffered_bytes:
            _, victim = self.buffering.popitem(last=False)
            self.counts["buffered_bytes_cut"] += victim.buffered
            self.buffered_bytes -= victim.buffered
            victim.buffered = 0
            # The cut bytes are a gap in what the agent sees (counted as buffers_cut). Parsing
            # the cut head instead would keep its header values alive in a request that may
            # never be answered: the budget would bound buffers, not memory.
            self.gap(victim, "buffers_cut")

    def _unbuffer(self, conn: Connection) -> None:
        if conn.buffered:
            self.buffered_bytes -= conn.buffered
            conn.buffered = 0
            del self.buffering[conn.key]

    def write_result(self, e: ev.WriteResult) -> None:
        conn = self.conns.get((e.h.tgid, e.h.fd))
        if conn is None or conn.conn_id != e.h.conn_id:
            return
        sent = max(e.ret, 0)
        if sent < e.asked:
            conn.egress_skip += e.asked - sent
        elif sent > e.asked:
            # vectored call with more buffers than the kernel copied: a gap
            assert conn.egress is not None
            conn.egress.feed(e.h.ts_ns, e.h.tid, b"", sent - e.asked)
        # the write finished later than its entry: move the end of what it completed
        last = conn.last_egress
        if last is not None and last.end_ts and e.h.ts_ns > last.end_ts and sent > 0:
            last.end_ts = e.h.ts_ns

    # ---- exchanges ----
    def _request_head(self, conn: Connection, msg: Message) -> None:
        conn.resync = False        # every response from here on answers a request seen
        if conn.refused or len(conn.inflight) >= self.limits.inflight_per_connection:
            # pipelined past the cap: refused in order (and so are their responses,
            # see _response_done), so that every pairing that is made stays right
            conn.refused += 1
            self.counts["inflight_refused"] += 1
            return
        tp = parse_traceparent(msg.headers.get("traceparent"))
        parent = None
        remote = False
        flags = 1
        if conn.role == ev.ROLE_SERVER:
            if tp:
                trace_id, parent, flags = tp
                remote = True
            else:
                up = self._upstream_client(conn)
                if up is not None:
                    trace_id, parent, flags = up.trace_id, up.span_id, up.trace_flags
                    up.linked_downstream = True
                else:
                    trace_id = new_trace_id()
        else:
            if tp:
                trace_id, parent, flags = tp
                remote = True
            else:
                srv = self._task_parent(conn) or self._serving_parent(conn.tgid, msg.tid)
                if srv is not None:
                    trace_id, parent, flags = srv.trace_id, srv.span_id, srv.trace_flags
                else:
                    trace_id = new_trace_id()
        if self.sample is not None:
            flags = self.sample(trace_id, parent, flags, remote)
        x = Exchange(conn, msg, trace_id, new_span_id(), parent, remote, flags)
        conn.inflight.append(x)
        if conn.role == ev.ROLE_SERVER:
            lst = self.serving.setdefault(conn.tgid, [])
            if len(lst) < self.limits.serving_per_process:
                lst.append(x)
                x.listed = True
            else:    # the process's calls out are not linked while this is in flight
                self.unlisted[conn.tgid] = self.unlisted.get(conn.tgid, 0) + 1
                self.counts["serving_unlisted"] += 1
        else:
            assert conn.responses is not None
            conn.responses.pending_methods.append(msg.method or "GET")

    def _request_done(self, conn: Connection, msg: Message) -> None:
        if conn.role != ev.ROLE_SERVER:
            conn.last_egress = msg

    def _response_head(self, conn: Connection, msg: Message) -> None:
        if msg.status is not None and 100 <= msg.status < 200:    # interim: the answer is still due
            return
        for x in conn.inflight:
            if x.response is None and not x.responding:
                x.responding = True
                break

    def _response_done(self, conn: Connection, msg: Message) -> None:
        if conn.role == ev.ROLE_SERVER:
            conn.last_egress = msg
        if msg.interim:
            return
        for x in conn.inflight:
            if x.response is None:
                x.response = msg
                if not msg.complete:    # only a close ends a message incomplete
                    x.aborted = "connection closed before the response completed"
                break
        else:
            if conn.refused:
                conn.refused -= 1     # the response of a refused request
            elif conn.resync:
                self.counts["responses_dropped_gap"] += 1   # its request was before a gap
            else:
                self.counts["unpaired_responses"] += 1
            return
        while conn.inflight and conn.inflight[0].response is not None:
            x = conn.inflight.popleft()
            self._finish(x, msg.end_ts)

    def expire(self, now_ts: int, timeout_ns: int, error_type: str = "timeout") -> int:
        """Give up on requests with no response `timeout_ns` after they started: each is
        handed on now, as an error with what is known, and stays in its connection's queue
        so that later responses still pair with the right requests (HTTP/1 answers in
        order); its own response, if it comes, is counted as late. At stop the agent calls
        this with a timeout of 0 (error_type "agent_stopped"). Returns how many."""
        counter = "exchanges_timed_out" if error_type == "timeout" else "exchanges_in_flight_at_stop"
        given_up = 0
        for conn in self.conns.values():
            for x in conn.inflight:
                if x.response is not None or x.given_up:
                    continue
                if timeout_ns and (x.responding or now_ts - x.request.start_ts < timeout_ns):
                    continue
                x.given_up = True
                self.ready.append(replace(x, aborted=f"no response ({error_type})", error_type=error_type,
                                          ended_ts=max(now_ts, x.request.end_ts or 0), listed=False))
                self.counts[counter] += 1
                self.counts["exchanges"] += 1
                given_up += 1
        return given_up

    def _finish(self, x: Exchange, ts: int) -> None:
        self._unserve(x)
        if x.given_up:      # exported when it was given up on
            if x.response is not None:
                self.counts["late_responses"] += 1
            return
        if x.aborted:
            self.counts["aborted"] += 1
        self.counts["exchanges"] += 1
        self.ready.append(x)

    def _unserve(self, x: Exchange) -> None:
        """A server exchange is no longer in flight in its process."""
        if x.conn.role != ev.ROLE_SERVER:
            return
        tgid = x.conn.tgid
        if x.listed:
            x.listed = False
            lst = self.serving.get(tgid)
            if lst and x in lst:
                lst.remove(x)
                if not lst:
                    del self.serving[tgid]
        elif tgid in self.unlisted:
            self.unlisted[tgid] -= 1
            if not self.unlisted[tgid]:
                del self.unlisted[tgid]

    def drain(self) -> None:
        """Hand finished exchanges on. Called once per batch of events, so that a
        write's own exit (reported for slow writes) can still move its end time."""
        ready, self.ready = self.ready, []
        for x in ready:
            self.emit(x)

    def _verify_owner(self, conn: Connection, owner_fd: int) -> None:
        """A server connection wrote from a task context: the kernel's idea of that
        context's owner must be this very connection. Trust a process's task links only
        once that held a few times, and never again after it failed once."""
        trust = self.task_trust.get(conn.tgid)
        if trust is None:
            if len(self.task_trust) >= self.limits.processes:
                self.counts["task_trust_refused"] += 1   # stays untrusted: no task links
                return
            trust = 0
        if trust < 0:
            return
        if owner_fd == conn.fd:
            self.task_trust[conn.tgid] = trust + 1
        else:
            self.task_trust[conn.tgid] = -1
            self.counts["task_owner_mismatch"] += 1
            _debug.info("pid %d: task context owner %d wrote on server fd %d: asyncio "
                        "links off for this process", conn.tgid, owner_fd, conn.fd)

    def _task_parent(self, conn: Connection) -> Exchange | None:
        """Asyncio: the kernel said which server connection's task wrote this request;
        its one exchange in flight is the parent (HTTP/1.x serves one at a time)."""
        if conn.owner_fd < 0 or self.task_trust.get(conn.tgid, 0) < TASK_TRUST_AFTER:
            return None
        srv = self.conns.get((conn.tgid, conn.owner_fd))
        if srv is None or srv.role != ev.ROLE_SERVER or len(srv.inflight) != 1:
            return None
        if _debug.isEnabledFor(10):
            _debug.debug("task link: client fd %d -> server fd %d serving %s", conn.fd, srv.fd,
                         srv.inflight[0].request.target)
        self.counts["task_links"] += 1
        return srv.inflight[0]

    def _serving_parent(self, tgid: int, tid: int) -> Exchange | None:
        lst = self.serving.get(tgid)
        if not lst or tgid in self.unlisted:    # not all it serves is known
            return None
        if len(lst) == 1:
            return lst[0]
        on_thread = [x for x in lst if x.request.tid == tid]
        return on_thread[0] if len(on_thread) == 1 else None

    def _upstream_client(self, conn: Connection) -> Exchange | None:
        """The traced client connection this server connection is the other end of:
        its peer is the client's local end and its local end the client's peer, all
        four known exactly (no wildcard). Two such clients (other network namespaces)
        are not told apart: unlinked."""
        peer, local = link_endpoint(conn.peer), link_endpoint(conn.local)
        if peer is None or local is None:
            return None
        clients = self.client_by_tuple.get((peer, local))
        if not clients or len(clients) != 1:
            return None
        for x in clients[0].inflight:
            if not x.linked_downstream:
                return x
        return None
