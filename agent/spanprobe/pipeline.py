"""The agent: discover -> attach -> decode -> assemble spans -> export, in one loop."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from . import events as ev
from .clock import MonotonicToWall
from .config import Settings
from .discovery import ProcessRegistry, Selection, listen_address, scan
from .errors import PermissionProblem
from .export import ExportQueue, make_exporters
from .kernel import KernelFeatures, detect, ensure_tracefs
from .loader import BpfSession, load_best
from .notify import sd_notify
from .privacy import Redactor
from .probes import SYSCALLS, TRACEPOINTS
from .pyruntime import Calibrations
from .attributes import Extractor, compile_rules
from .caps import check as missing_capabilities
from .procfs import SysRoot
from .routes import RouteMatcher
from .spans import SpanBuilder
from .streams import Assembler, Exchange

log = logging.getLogger("spanprobe")


def agent_resource_attributes(settings: Settings, env: dict[str, str]) -> dict[str, object]:
    """OTEL_RESOURCE_ATTRIBUTES of the agent, then the config's resource_attributes."""
    from urllib.parse import unquote

    attrs: dict[str, object] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        k, sep, v = item.partition("=")
        if sep and k.strip() and k.strip() != "service.name":
            attrs[unquote(k.strip())] = unquote(v.strip())
    attrs.update({str(k): v for k, v in settings["resource_attributes"].items()})
    return attrs


@dataclass
class Stats:
    events: int = 0
    decode_errors: int = 0
    perf_lost: int = 0
    spans: int = 0
    span_errors: int = 0
    started: float = field(default_factory=time.monotonic)


class Agent:
    def __init__(self, settings: Settings, root: SysRoot | None = None,
                 stop_after: float | None = None, env: dict[str, str] | None = None):
        self.settings = settings
        self.root = root or SysRoot("/")
        self.env = dict(os.environ if env is None else env)
        self.stop_after = stop_after
        self.stop = threading.Event()
        self.stats = Stats()
        self.redactor = Redactor(settings["privacy.redact_headers"], settings["privacy.redact_query_params"])
        self.selection = Selection(set(settings["select.ports"]), set(settings["select.pids"]),
                                   set(settings["select.exe"]), set(settings["select.exclude_exe"]))
        self.registry = ProcessRegistry(self.root, self.redactor)
        self.clock = MonotonicToWall()
        self.extractor = Extractor(compile_rules(settings["attributes.rules"], self.redactor),
                                   settings["attributes.max_value_length"],
                                   settings["attributes.max_cardinality"])
        self._rules: dict[tuple[int, int | None], list] = {}
        self.builder = SpanBuilder(self.registry, RouteMatcher(settings["routes"]), self.redactor,
                                   self.clock, self.root.hostname(),
                                   agent_resource_attributes(settings, self.env),
                                   self.extractor, self._rules_for)
        self.assembler = Assembler(self._exchange_done, self._listen_address, self._own_peer,
                                   self._body_needs)
        self.calibrations = Calibrations(self.root)
        self._wide_capture: set[int] = set()
        self._python_checked: set[int] = set()
        self._python_pending: dict[int, tuple] = {}   # calibrated, linking not on yet (no call out)
        self._own_ports: set[int] = set()
        self._own_ports_at = 0.0
        self._listen_cache: dict[tuple[int, int], tuple[str, int] | None] = {}
        self._batch: list[bytes] = []
        self._spans: list = []
        self.session: BpfSession | None = None
        self.exporter: ExportQueue | None = None
        self.features: KernelFeatures | None = None
        self.passed_over: list[tuple[str, str]] = []
        self._kernel_counters: dict[str, int] = {}
        asm = self.assembler
        self._handlers = {   # event kind -> the stage that takes it
            ev.EV_DATA: asm.data,
            ev.EV_WRITE_RESULT: asm.write_result,
            ev.EV_CONN_OPEN: self._opened,
            ev.EV_CONN_CLOSE: asm.close,
            ev.EV_CONN_PORTS: asm.ports,
            ev.EV_CONN_ADDR: asm.address,
            ev.EV_PROC_EXEC: self._exec,
            ev.EV_PROC_FORK: lambda e: self.registry.on_fork(e.h.tgid, e.ppid),
            ev.EV_PROC_EXIT: lambda e: self._exit(e.h.tgid, e.h.ts_ns),
        }

    # ---- set-up ----
    def start(self) -> None:
        if (problem := missing_capabilities()) is not None:   # not root: capabilities
            raise PermissionProblem(problem)
        ensure_tracefs(self.root)
        self.features = detect(self.root, SYSCALLS, TRACEPOINTS)
        self_pid = os.getpid()
        selected, existing = scan(self.root, self.selection, self_pid)
        self.session, self.passed_over = load_best(self.features, self.settings, self_pid,
                                                   self.selection.trace_all)
        s = self.session
        for comm in self.selection.kernel_comms():
            s.select_comm(comm)
        for port in self.selection.ports:
            s.select_port(port)
        if not self.selection.trace_all:
            for pid in selected:
                s.select_pid(pid)
        elif self.selection.exclude_exe:
            for pid in self.root.pids():
                info = self.registry.get(pid)
                if info is not None and self.selection.excluded(info):
                    s.select_pid(pid, excluded=True)
        now = time.monotonic_ns()
        for i, c in enumerate(existing):
            conn_id = now + i
            s.adopt_connection(c.pid, c.fd, conn_id, c.role)
            self.assembler.adopt(c.pid, c.fd, conn_id, c.role, c.local, c.peer, now)
        for pid in selected:           # after adoption: a pid with client connections links now
            self._python(pid)
        s.open_buffer(self._on_raw, self._on_lost, self.settings["ring_buffer_pages"])
        self.exporter = ExportQueue(make_exporters(self.settings), self.settings["export.queue_size"],
                                    self.settings["export.batch_size"], self.settings["export.max_attempts"])
        hooks = ",".join(s.attached)
        log.info("ready strategy=%s transport=%s compile=%.1fs selected=%s adopted=%d hooks=%s",
                 s.plan.strategy, s.plan.transport, s.compile_s,
                 "all" if self.selection.trace_all else len(selected), len(existing), hooks)
        for name, why in s.plan.skipped:
            log.info("probe %s skipped: %s", name, why)
        for name, why in self.passed_over:
            log.info("strategy %s passed over: %s", name, why)
        sd_notify(f"READY=1\nSTATUS=tracing with {s.plan.strategy}", self.env)

    # ---- buffer callbacks (called from inside bcc's poll) ----
    def _on_raw(self, ctx, data, size) -> int:
        self._batch.append(ctypes.string_at(data, size))
        return 0

    def _on_lost(self, count) -> None:
        self.stats.perf_lost += count

    # ---- the loop ----
    def run(self) -> int:
        deadline = time.monotonic() + self.stop_after if self.stop_after else None
        interval = self.settings["poll_interval_ms"]
        next_stats = time.monotonic() + self.settings["stats_interval_s"]
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                self.session.poll(interval)
                self.process_batch()
                now = time.monotonic()
                if now >= next_stats:
                    self.log_stats("stats")
                    next_stats = now + self.settings["stats_interval_s"]
                    self.clock.tick()
                if deadline and now >= deadline:
                    break
                # the poll returns early when woken; keep the cadence so events batch
                rest = interval / 1000 - (time.monotonic() - t0)
                if rest > 0:
                    self.stop.wait(rest)
        finally:
            self.shutdown()
        return 0

    def process_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self.session.plan.transport == "perf":
            # per-CPU buffers: restore time order (ts_ns is the first, little-endian, field)
            batch.sort(key=lambda raw: int.from_bytes(raw[:8], "little"))
        self.stats.events += len(batch)
        decode = ev.decode
        handlers = self._handlers
        for raw in batch:
            try:
                e = decode(raw)
            except ev.DecodeError as exc:
                self.stats.decode_errors += 1
                log.debug("decode error: %s", exc)
                continue
            handlers[e.h.kind](e)
        asm = self.assembler
        asm.drain()
        if self._spans:
            spans, self._spans = self._spans, []
            self.stats.spans += len(spans)
            self.exporter.submit(spans)

    def _opened(self, e: ev.ConnEvent) -> None:
        self.assembler.open(e)
        self.registry.get(e.h.tgid)    # read /proc while the process is there
        if e.role == ev.ROLE_SERVER and e.h.tgid not in self._python_checked:
            self._python(e.h.tgid)
        elif e.role == ev.ROLE_CLIENT and e.h.tgid in self._python_pending:
            self._python_calls_out(e.h.tgid)

    def _exchange_done(self, x: Exchange) -> None:
        try:
            self._spans.append(self.builder.build(x))
        except Exception as exc:    # one odd exchange must not stop the agent
            self.stats.span_errors += 1
            log.debug("span build failed: %s", exc, exc_info=True)

    def _exec(self, e: ev.ProcEvent) -> None:
        pid = e.h.tgid
        info = self.registry.on_exec(pid, e.comm, e.filename)
        self.builder.forget(pid)
        self._forget_rules(pid)
        if info is None:
            return
        if self.selection.trace_all:
            if self.selection.excluded(info):
                self.session.select_pid(pid, excluded=True)
        elif self.selection.matches(info):
            self.session.select_pid(pid)
        self._python_checked.discard(pid)

    # ---- business attributes ----
    def _rules_for(self, conn) -> list:
        """Rules that apply to a connection's process (by service, port, executable)."""
        port = conn.local[1] if conn.local and conn.role == ev.ROLE_SERVER else None
        key = (conn.tgid, port)
        rules = self._rules.get(key)
        if rules is None:
            if not self.extractor.rules:
                rules = []
            else:
                info = self.registry.get(conn.tgid)
                service = info.service_name if info else f"pid-{conn.tgid}"
                rules = self.extractor.for_service(service, port, info.names() if info else set())
            self._rules[key] = rules
        return rules

    def _body_needs(self, conn) -> tuple[int, int]:
        rules = self._rules_for(conn)
        if not rules:
            return 0, 0
        req, resp = self.extractor.body_bytes(rules)
        bound = self.settings["attributes.max_body_bytes"]
        if (req or resp) and conn.tgid not in self._wide_capture:
            # the kernel copies as much as this process's rules need, bounded
            self._wide_capture.add(conn.tgid)
            self.session.select_pid(conn.tgid, capture=min(4096, max(bound + 1024,
                                                                     self.settings["capture_bytes"])))
        return (bound if req else 0), (bound if resp else 0)

    def _python(self, pid: int) -> None:
        """Asyncio linking for a Python server process, calibrated once per interpreter and
        turned on at its first outbound connection: until a process calls out there is no
        child span to link, and the context uprobes would cost it a trap per task."""
        self._python_checked.add(pid)
        if not self.session.plan.uprobes:
            return
        info = self.registry.get(pid)
        found = self.calibrations.for_process(pid, info.exe if info else None)
        if found is None:
            return
        self._python_pending[pid] = found
        if self.assembler.has_client_connection(pid):
            self._python_calls_out(pid)

    def _python_calls_out(self, pid: int) -> None:
        found = self._python_pending.pop(pid, None)
        if found is not None and self.session.set_python(pid, *found):
            log.info("asyncio linking on for pid %d (Python %s): it calls out", pid, found[0].version)

    def _forget_rules(self, pid: int) -> None:
        for key in [k for k in self._rules if k[0] == pid]:
            del self._rules[key]
        self._wide_capture.discard(pid)

    def _exit(self, pid: int, ts: int) -> None:
        self._forget_rules(pid)
        self._python_checked.discard(pid)
        self._python_pending.pop(pid, None)
        if self.session is not None:
            self.session.unset_python(pid)
        if pid in self.registry.procs:
            log.debug("process %d exited: forgotten", pid)
        self.assembler.process_exit(pid, ts)
        self.assembler.drain()
        self.registry.forget(pid)
        self.builder.forget(pid)
        for key in [k for k in self._listen_cache if k[0] == pid]:
            del self._listen_cache[key]

    def _own_peer(self, peer: tuple[str, int]) -> bool:
        """Is this peer one of the agent's own sockets (its OTLP exporter's)? Checked on
        loopback peers only, the agent's ports re-read at most ten times a second."""
        if not (peer[0].startswith("127.") or peer[0] == "::1"):
            return False
        if peer[1] in self._own_ports:
            return True
        now = time.monotonic()
        if now - self._own_ports_at < 0.1:
            return False
        self._own_ports_at = now
        self._own_ports = own_tcp_ports(self.root.socket_inodes(os.getpid()))
        return peer[1] in self._own_ports

    def _listen_address(self, pid: int, fd: int):
        key = (pid, fd)
        if key not in self._listen_cache:
            self._listen_cache[key] = listen_address(self.root, pid, fd)
        return self._listen_cache[key]

    # ---- reporting and stop ----
    def counters(self) -> dict[str, object]:
        out: dict[str, object] = {
            "events_received": self.stats.events,
            "decode_errors": self.stats.decode_errors,
            "spans_built": self.stats.spans,
            "span_build_errors": self.stats.span_errors,
            "perf_events_lost": self.stats.perf_lost,
        }
        kernel = self.session.counters() if self.session is not None else self._kernel_counters
        out.update({f"kernel_{k}": v for k, v in kernel.items()})
        out.update(self.assembler.counts)
        out.update(self.extractor.counts)
        if self.exporter is not None:
            out.update(self.exporter.counts)
        return out

    def log_stats(self, label: str) -> None:
        log.info("%s %s", label, json.dumps(self.counters(), sort_keys=True))

    def shutdown(self) -> None:
        """Flush and detach in parallel, within the 5 s a service manager allows."""
        if self.session is None:
            return
        try:
            self.session.poll(0)
            self.process_batch()
        except Exception as exc:
            log.warning("final drain failed: %s", exc)
        self._kernel_counters = self.session.counters()
        detach = threading.Thread(target=self.session.close, name="spanprobe-detach")
        detach.start()
        if self.exporter is not None:
            self.exporter.shutdown(timeout=3.0)
        detach.join()
        self.session = None
        self.log_stats("final")
        log.info("stopped: every probe detached")


def install_signal_handlers(agent: Agent) -> None:
    def handler(signum, frame):
        agent.stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def own_tcp_ports(fds) -> set[int]:
    """The local ports of this process's TCP sockets, by getsockname() on its own fds.

    Not from /proc/self/net/tcp: that lists every TCP socket of the network namespace,
    TIME_WAIT ones included (tens of thousands on a busy host: a one-worker gunicorn app
    leaves one per request for a minute), and parsing it took most of the agent's CPU."""
    ports = set()
    for fd in fds:
        try:
            s = socket.socket(fileno=fd)             # family and type are read from the fd
        except OSError:                             # closed meanwhile, or not a socket
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                ports.add(s.getsockname()[1])
        except OSError:
            pass
        finally:
            s.detach()                              # the fd stays open: it is not ours to close
    return ports
