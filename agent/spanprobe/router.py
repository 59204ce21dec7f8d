"""Routing: raw records -> decoded events -> the stage for their kind -> finished Exchanges.

Connection events go to the assembler (streams.Assembler), process events to the process
registry. Each event is handled inside its own isolation boundary: a failure is counted by
stage (faults.Faults), the connection it concerned is dropped, and the next event goes on.
What a stage needs from the kernel side is recorded as a typed request (session.py) in
`requests`, for the agent to apply after the batch; the router never touches the session.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Final

from . import events as ev
from .attributes import Extractor
from .discovery import ProcessRegistry, Selection, listen_address, net_namespace, tcp_ends
from .faults import Faults
from .procfs import SysRoot
from .session import (CaptureRequest, ListenPortRequest, ProcessGone, PythonCheckRequest, PythonLinkRequest,
                      Request, SelectRequest)
from .spans import SpanBuilder
from .streams import Assembler, Connection, Exchange

log = logging.getLogger("spanprobe")
# One line per kernel record when debugging (`--log-level debug`): what the kernel side
# reported, in the order the agent handled it, so that a span that never came can be traced
# to the record that was missing. Headers and sizes only, never the captured bytes.
records_log = logging.getLogger("spanprobe.records")

# The stop flag is looked at every this many events: a huge batch still stops within
# milliseconds of SIGTERM, and the check costs nothing per event.
STOP_CHECK_EVERY: Final = 256
PROC_KINDS: Final = frozenset((ev.EV_PROC_EXEC, ev.EV_PROC_FORK, ev.EV_PROC_EXIT))
# how often the agent's sockets may be read again for a server port it does not export to
OTHER_PORTS_READ_NS: Final = 1_000_000_000


def describe_record(e) -> str:
    """A decoded record as one line for the debug log: its header, its sizes and endpoints,
    not one byte of what it captured (credentials stay out of logs too)."""
    h = e.h
    out = f"kind={h.kind} ts={h.ts_ns} pid={h.tgid} tid={h.tid} fd={h.fd} conn={h.conn_id}"
    if isinstance(e, ev.DataEvent):
        return (f"{out} dir={e.direction} len={e.length} captured={len(e.data)} flags={e.flags}"
                f" iov={e.iov_index} owner_fd={e.owner_fd} lost={e.lost}")
    if isinstance(e, ev.WriteResult):
        return f"{out} ret={e.ret} asked={e.asked}"
    if isinstance(e, ev.ConnEvent):
        return f"{out} role={e.role} listen_fd={e.listen_fd} peer={e.peer} local={e.local}"
    return f"{out} ppid={e.ppid} comm={e.comm!r} file={e.filename!r}"


class RuleScopes:
    """Which business-attribute rules apply to a connection, by its process and listening
    port; and, once per process, the kernel capture its json_body rules need (a request)."""

    def __init__(self, extractor: Extractor, registry: ProcessRegistry, max_body_bytes: int,
                 capture_bytes: int, requests: list[Request]):
        self.extractor = extractor
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.capture_bytes = capture_bytes
        self.requests = requests
        self.rules: dict[tuple[int, int | None], list] = {}
        self.wide_capture: set[int] = set()

    def rules_for(self, conn: Connection) -> list:
        port = conn.local[1] if conn.local and conn.role == ev.ROLE_SERVER else None
        key = (conn.tgid, port)
        rules = self.rules.get(key)
        if rules is None:
            if not self.extractor.rules:
                rules = []
            else:
                info = self.registry.get(conn.tgid)
                service = info.service_name if info else f"pid-{conn.tgid}"
                rules = self.extractor.for_service(service, port, info.names() if info else set())
            self.rules[key] = rules
        return rules

    def body_needs(self, conn: Connection) -> tuple[int, int]:
        """Bytes of request and response body to keep for this connection."""
        rules = self.rules_for(conn)
        if not rules:
            return 0, 0
        req, resp = self.extractor.body_bytes(rules)
        bound = self.max_body_bytes
        if (req or resp) and conn.tgid not in self.wide_capture:
            # the kernel copies as much as this process's rules need, bounded
            self.wide_capture.add(conn.tgid)
            self.requests.append(CaptureRequest(conn.tgid, min(ev.MAX_CAPTURE,
                                                               max(bound + 1024, self.capture_bytes))))
        return (bound if req else 0), (bound if resp else 0)

    def forget(self, pid: int) -> None:
        for key in [k for k in self.rules if k[0] == pid]:
            del self.rules[key]
        self.wide_capture.discard(pid)


class HostSockets:
    """Read-only lookups the assembler needs about sockets on this host: a listening
    socket's address, and whether a peer is one of the agent's own sockets."""

    def __init__(self, root: SysRoot, self_pid: int, export_ports: frozenset[int] = frozenset()):
        self.root = root
        self.self_pid = self_pid
        # the server ports the agent exports to (export.otlp_endpoint's)
        self.export_ports = export_ports
        # (local port, remote port) of each of the agent's connected TCP sockets, and when
        # they were read (CLOCK_MONOTONIC, the clock of the kernel's event times)
        self.own_ends: set[tuple[int, int]] = set()
        self.own_ends_ns = 0
        self.listen_cache: dict[tuple[int, int], tuple[str, int] | None] = {}
        # (pid, fd, conn_id) -> is that fd still that connection for the kernel side: set
        # to the session's once it is open; until then no ends are taken from /proc
        self.conn_is: Callable[[int, int, int], bool] = lambda pid, fd, conn_id: False
        # the TCP table last read for an unseen accept: (its namespace, when, inode -> ends)
        self.ends_table: tuple[str, int, dict] = ("", 0, {})

    def own_connection(self, peer: tuple[str, int], local: tuple[str, int] | None, accepted_ns: int) -> bool:
        """Is this accepted connection one the agent itself opened (its OTLP export to a
        traced collector)? Its peer must be one of the agent's sockets and its local end that
        socket's remote end: two connections to different servers may share a client port,
        so the port alone would take a traced client for the agent, and drop its request
        unseen. Checked on loopback peers only.

        The agent's sockets are re-read when the last reading is older than the accept
        (`accepted_ns`, the kernel's time): a client is connected before its server's accept
        returns, so a reading taken after it holds the agent's end if it is one. Reading
        costs a few hundred microseconds (every fd of the agent), so for a server port the
        agent does not export to (its own connection there is the rare case of a traced
        proxy) it happens at most once every OTHER_PORTS_READ_NS: at ten times a second it
        was 5% of the agent's CPU under the Flask benchmark's connection per request. For
        an export port always, or one exporter connection, kept alive, would be traced with
        every export it carries."""
        if not (peer[0].startswith("127.") or peer[0] == "::1"):
            return False
        if self._own(peer, local):
            return True
        if self.own_ends_ns >= accepted_ns:
            return False
        now = time.monotonic_ns()
        export_port = local is None or not local[1] or local[1] in self.export_ports
        if not export_port and now - self.own_ends_ns < OTHER_PORTS_READ_NS:
            return False
        self.own_ends_ns = now
        self.own_ends = own_tcp_ends(self.root.socket_inodes(self.self_pid))
        return self._own(peer, local)

    def _own(self, peer: tuple[str, int], local: tuple[str, int] | None) -> bool:
        if local is None or not local[1]:       # the server's end unknown: the client's port alone
            return any(mine == peer[1] for mine, _ in self.own_ends)
        return (peer[1], local[1]) in self.own_ends

    def listen_address(self, pid: int, fd: int, fresh: bool = False) -> tuple[str, int] | None:
        key = (pid, fd)
        if fresh or key not in self.listen_cache:
            self.listen_cache[key] = listen_address(self.root, pid, fd)
        return self.listen_cache[key]

    def socket_ends(self, pid: int, fd: int, conn_id: int,
                    accepted_ns: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """Both ends of connection `conn_id`, `fd` of `pid`, accepted at `accepted_ns`
        (the kernel's clock), from /proc: the fd's socket inode, then its row of the TCP
        table. The table is read again only if the last reading (of that namespace) came
        before the accept: prefork workers all waiting in accept() when the agent starts
        cost one reading, not one each (with thousands of TIME_WAIT rows, a reading is
        ~0.1 s). The agent reads records a batch after the kernel wrote them, and by then
        the fd may be the next connection's: the ends are taken only if the kernel side,
        asked after the fd was read, still has that fd as this connection (the close it
        saw removed it; a descriptor replaced without a close it sees, by dup2 or
        close_range, it cannot tell: Known limits)."""
        inode = self.root.socket_inode(pid, fd)
        if inode is None:
            return None
        ns = net_namespace(self.root, pid)
        table_ns, read_ns, table = self.ends_table
        if table_ns != ns or read_ns < accepted_ns:
            read_ns = time.monotonic_ns()       # CLOCK_MONOTONIC, the kernel's event clock
            table = tcp_ends(self.root, pid)
            self.ends_table = (ns, read_ns, table)
        ends = table.get(inode)
        if ends is None or not self.conn_is(pid, fd, conn_id):
            return None
        return ends

    def forget(self, pid: int) -> None:
        for key in [k for k in self.listen_cache if k[0] == pid]:
            del self.listen_cache[key]


class Router:
    """Event kind -> stage, per-process lifecycle (exec, fork, exit), isolation."""

    def __init__(self, registry: ProcessRegistry, selection: Selection, scopes: RuleScopes,
                 sockets: HostSockets, builder: SpanBuilder, requests: list[Request], faults: Faults,
                 sample: Callable[[int, int | None, int, bool], int] | None = None):
        self.registry = registry
        self.selection = selection
        self.scopes = scopes
        self.sockets = sockets
        self.builder = builder
        self.requests = requests
        self.faults = faults
        self._finished: list[Exchange] = []
        self.assembler = Assembler(self._finished.append, sockets.listen_address, sockets.own_connection,
                                   scopes.body_needs, sample=sample, listen_port=self._listen_port,
                                   resolve_ends=sockets.socket_ends)
        self.listen_ports: set[int] = set()        # told to the kernel side (ListenPortRequest)
        self.python_checked: set[int] = set()      # PythonCheckRequest recorded
        self.python_called_out: set[int] = set()   # PythonLinkRequest recorded
        # pids the kernel traces besides what Selection matches (selected at start, by a
        # bound port, a fork): their exits are reported, so this is bounded by what is traced
        self.traced: set[int] = set()
        self.exited: list[int] = []                # forgotten once their last spans are built
        self.decode_errors = 0
        self.abandoned = 0                         # records left unhandled at stop
        asm = self.assembler
        self.handlers: dict[int, Callable] = {
            ev.EV_DATA: asm.data,
            ev.EV_WRITE_RESULT: asm.write_result,
            ev.EV_CONN_OPEN: self._opened,
            ev.EV_CONN_CLOSE: asm.close,
            ev.EV_CONN_PORTS: asm.ports,
            ev.EV_CONN_ADDR: asm.address,
            ev.EV_PROC_EXEC: self._exec,
            ev.EV_PROC_FORK: self._fork,
            ev.EV_PROC_EXIT: self._exit,
        }

    def route(self, batch: list[bytes], should_stop: Callable[[], bool]) -> list[Exchange]:
        """Handle a batch of raw records in order; the exchanges they finished."""
        handlers = self.handlers
        on_data = handlers[ev.EV_DATA]
        describe = records_log.isEnabledFor(logging.DEBUG)
        for i, raw in enumerate(batch):
            if not i % STOP_CHECK_EVERY and should_stop():
                self.abandoned += len(batch) - i
                log.info("stop: %d events of the batch left unhandled (counted)", len(batch) - i)
                break
            try:
                e = ev.decode(raw)    # a native call; through a local name it was a Python one
            except ev.DecodeError as bad:     # (a name of its own: compiled, a name has one type)
                self.decode_errors += 1
                log.debug("decode error: %s", bad)
                continue
            except Exception as exc:
                self.faults.record("decode", exc)
                continue
            if describe:
                records_log.debug("record %s", describe_record(e))
            try:
                if isinstance(e, ev.DataEvent):   # most records: no lookup of the kind in the table
                    on_data(e)
                else:
                    handlers[e.h.kind](e)
            except Exception as exc:
                self._failed(e, exc)
        return self.finished()

    def finished(self) -> list[Exchange]:
        """The exchanges finished since the last call (by a batch, or given up on by
        Assembler.expire)."""
        self.assembler.drain()
        out = self._finished[:]
        self._finished.clear()
        return out

    def _failed(self, e, exc: Exception) -> None:
        h = e.h
        if h.kind in PROC_KINDS:
            self.faults.record("process", exc)
            return
        self.faults.record("assemble", exc)
        self.assembler.drop_connection(h.tgid, h.fd)

    def _listen_port(self, port: int) -> None:
        if port and port not in self.listen_ports:
            self.listen_ports.add(port)
            self.requests.append(ListenPortRequest(port))

    # ---- per-process ----
    def python_candidate(self, pid: int) -> None:
        """A process that serves: check it once for asyncio linking."""
        self.python_checked.add(pid)
        self.requests.append(PythonCheckRequest(pid))

    def _opened(self, e: ev.ConnEvent) -> None:
        self.assembler.open(e)
        pid = e.h.tgid
        self.traced.add(pid)      # the kernel reports connections of traced processes only
        if pid not in self.registry.procs:
            self.registry.get(pid)    # read /proc while the process is there
        if e.role == ev.ROLE_SERVER:
            if pid not in self.python_checked:
                self.python_candidate(pid)
        elif e.role == ev.ROLE_CLIENT and pid in self.python_checked and pid not in self.python_called_out:
            self.python_called_out.add(pid)
            self.requests.append(PythonLinkRequest(pid))

    def _exec(self, e: ev.ProcEvent) -> None:
        """Every exec on the host is reported (the kernel can't match paths or scripts), but
        the kernel reports exits of traced processes only: whatever is kept here for a process
        that is not traced would never go, so nothing is, and /proc is read only when the
        answer decides something."""
        pid = e.h.tgid
        self.builder.forget(pid)
        self.scopes.forget(pid)
        self.sockets.forget(pid)    # a new program: its fds are other sockets
        self.python_checked.discard(pid)
        self.python_called_out.discard(pid)
        sel = self.selection
        if sel.trace_all and not sel.exclude_exe:
            self.registry.on_exec(pid, e.comm, e.filename, read=False)   # its exit is reported
            return
        ours = pid in self.traced or pid in self.registry.parents
        if not sel.trace_all and not sel.exe and not ours:
            self.registry.forget(pid)       # selected by port or pid only: none of ours
            return
        info = self.registry.on_exec(pid, e.comm, e.filename)
        if sel.trace_all:
            if info is not None and sel.excluded(info):
                self.requests.append(SelectRequest(pid, excluded=True))
                self.registry.forget(pid)   # excluded: its exit will not be reported
        elif info is not None and sel.matches(info):
            self.traced.add(pid)
            self.requests.append(SelectRequest(pid))
        elif not ours:
            self.registry.forget(pid)

    def _fork(self, e: ev.ProcEvent) -> None:
        self.registry.on_fork(e.h.tgid, e.ppid)

    def _exit(self, e: ev.ProcEvent) -> None:
        pid = e.h.tgid
        self.traced.discard(pid)
        self.assembler.process_exit(pid, e.h.ts_ns)
        self.python_checked.discard(pid)
        self.python_called_out.discard(pid)
        self.requests.append(ProcessGone(pid))
        self.exited.append(pid)

    def forget_exited(self) -> None:
        """After the batch's spans are built (they need their process's identity): what
        is known about the processes that exited goes."""
        for pid in self.exited:
            if pid in self.registry.procs:
                log.debug("process %d exited: forgotten", pid)
            self.registry.forget(pid)
            self.builder.forget(pid)
            self.scopes.forget(pid)
            self.sockets.forget(pid)
        self.exited.clear()

    def take_requests(self) -> list[Request]:
        out = self.requests[:]
        self.requests.clear()
        return out


def own_tcp_ends(fds) -> set[tuple[int, int]]:
    """(local port, remote port) of this process's connected TCP sockets, by getsockname()
    and getpeername() on its own fds.

    Not from /proc/self/net/tcp: that lists every TCP socket of the network namespace,
    TIME_WAIT ones included (tens of thousands on a busy host: a one-worker gunicorn app
    leaves one per request for a minute), and parsing it took most of the agent's CPU."""
    ends = set()
    for fd in fds:
        try:
            s = socket.socket(fileno=fd)             # family and type are read from the fd
        except OSError:                             # closed meanwhile, or not a socket
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                ends.add((s.getsockname()[1], s.getpeername()[1]))
        except OSError:                             # not connected (a listener): no peer
            pass
        finally:
            s.detach()                              # the fd stays open: it is not ours to close
    return ends
