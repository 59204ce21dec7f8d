"""The agent: discover -> attach -> one loop of stages -> export.

The stages and what flows between them, each batch:

    raw records (bytes, from the KernelSession's buffer)
      -> Router.route: decode (events.decode) and hand each event to its stage
         -> list[Exchange]             (streams.Assembler, connection events)
         +  list[Request]              (session.py: what the stages need from the kernel)
      -> build_spans: list[Span]       (spans.SpanBuilder)
      -> ExportQueue.submit             (export.py, its own thread)
    and the agent applies the requests to the session.

The stages never call back into the agent; only the agent touches the session.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import native
from .adoption import adopt_established
from .budget import EVERY_S as BUDGET_EVERY_S
from .budget import CpuBudget, Reading
from .attributes import Extractor, compile_rules
from .clock import MonotonicToWall
from .config import Settings, otel_resource_attributes
from .discovery import ProcessRegistry, Selection, listening_ports, scan
from .export import ExportQueue, export_ports, make_exporters
from .faults import Faults
from .losses import LossReport
from .memory import GC_EVERY_S, collect_cycles
from .notify import Watchdog, sd_notify
from .privacy import Redactor
from .procfs import SysRoot
from .pyruntime import Calibrations
from .router import HostSockets, Router, RuleScopes
from .routes import RouteMatcher
from .sampling import HeadSampler
from .session import (CaptureRequest, KernelSession, ListenPortRequest, ProcessGone, PythonCheckRequest,
                      PythonLinkRequest, Request, SelectRequest, SessionOpener)
from .spans import SpanBuilder, build_spans
from .streams import Exchange

log = logging.getLogger("spanprobe")

STOP_DRAIN_S = 0.5      # at stop, time left to handle what the buffer still holds
EXPIRE_EVERY_S = 1.0    # how often requests past request_timeout_s are looked for


def agent_resource_attributes(settings: Settings, env: dict[str, str]) -> dict[str, object]:
    """OTEL_RESOURCE_ATTRIBUTES of the agent (parsed by config's strict SDK rules; its
    service.name names the agent, not the traced processes), then resource_attributes."""
    attrs: dict[str, object] = {k: v for k, v in otel_resource_attributes(env).items()
                                if k != "service.name"}
    attrs.update({str(k): v for k, v in settings["resource_attributes"].items()})
    return attrs


@dataclass
class Stats:
    events: int = 0
    perf_lost: int = 0
    spans: int = 0
    unsampled: int = 0      # exchanges head sampling dropped: no span built
    started: float = field(default_factory=time.monotonic)


def _open_bpf_session(settings, root, self_pid, trace_all):
    from .loader import open_session
    return open_session(settings, root, self_pid, trace_all)


class Agent:
    """Wires the stages, owns the kernel session, runs the loop.

    open_session, exporters and calibrations are what a test replaces (a FakeSession,
    an in-memory exporter, a fixed Python layout) to drive this very wiring without root."""

    def __init__(self, settings: Settings, root: SysRoot | None = None,
                 stop_after: float | None = None, env: dict[str, str] | None = None,
                 open_session: SessionOpener = _open_bpf_session,
                 exporters: Sequence | None = None, calibrations: Calibrations | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.root = root or SysRoot("/")
        self.env = dict(os.environ if env is None else env)
        self.stop_after = stop_after
        self.stop = threading.Event()
        self.stats = Stats()
        self.faults = Faults(clock)
        self.watchdog = Watchdog(self.env, os.getpid(), clock)
        self.open_session = open_session
        self.exporters = exporters
        redactor = Redactor(settings["privacy.redact_headers"], settings["privacy.redact_query_params"])
        self.selection = Selection(set(settings["select.ports"]), set(settings["select.pids"]),
                                   set(settings["select.exe"]), set(settings["select.exclude_exe"]))
        self.registry = ProcessRegistry(self.root, redactor)
        self.clock = MonotonicToWall()
        self.extractor = Extractor(compile_rules(settings["attributes.rules"], redactor),
                                   settings["attributes.max_value_length"],
                                   settings["attributes.max_cardinality"])
        requests: list[Request] = []
        self.scopes = RuleScopes(self.extractor, self.registry, settings["attributes.max_body_bytes"],
                                 settings["capture_bytes"], requests)
        self.builder = SpanBuilder(self.registry, RouteMatcher(settings["routes"]), redactor,
                                   self.clock, self.root.hostname(),
                                   agent_resource_attributes(settings, self.env),
                                   self.extractor, self.scopes.rules_for)
        self.router = Router(self.registry, self.selection, self.scopes,
                             HostSockets(self.root, os.getpid(), export_ports(settings)), self.builder, requests, self.faults,
                             HeadSampler(settings["sampling.sampler"], settings["sampling.ratio"]).for_assembler())
        self.assembler = self.router.assembler
        self.calibrations = calibrations or Calibrations(self.root)
        self.python_pending: dict[int, tuple] = {}   # calibrated, linking not on yet (no call out)
        self._batch: list[bytes] = []
        self.session: KernelSession | None = None
        self.exporter: ExportQueue | None = None
        self.passed_over: list[tuple[str, str]] = []
        self._kernel_counters: dict[str, int] = {}
        self.losses = LossReport()
        self.budget: CpuBudget | None = None
        self._shed_written = 0            # the share the kernel side was last given

    # ---- set-up ----
    def start(self) -> None:
        self_pid = os.getpid()
        selected, _ = scan(self.root, self.selection, self_pid)
        self.session, self.passed_over = self.open_session(self.settings, self.root, self_pid,
                                                           self.selection.trace_all)
        s = self.session
        self.router.sockets.conn_is = s.conn_is
        for comm in self.selection.kernel_comms():
            s.select_comm(comm)
        for port in self.selection.ports:
            s.select_port(port)
        if not self.selection.trace_all:
            for pid in selected:
                s.select_pid(pid)
        elif self.selection.exclude_exe:
            for pid in self.root.pids():
                info = self.registry.read(pid)      # not kept: an excluded exit is not reported
                if info is not None and self.selection.excluded(info):
                    s.select_pid(pid, excluded=True)
        # now, not at launch: what opened while the probes were compiled is in /proc too
        adoption = adopt_established(self.root, self.selection, self_pid, s, self.assembler, set(selected))
        selected = adoption.selected
        self.router.traced.update(selected)
        # the ports whose accepted connections need their local end from the kernel side:
        # the selected ones and where the selected processes listen now (those that bind
        # later are seen binding; Assembler._accepted_local catches the rest). Tracing
        # everything, the kernel side keeps every port's.
        if not self.selection.trace_all:
            try:
                for port in sorted(self.selection.ports | listening_ports(self.root, selected)):
                    s.note_listen_port(port)
                    self.router.listen_ports.add(port)
            except OSError as exc:      # the map not mapped: wildcard listeners' ends from /proc
                self.faults.record("apply", exc)
                log.warning("the kernel side was not told the traced ports (%s): connections to a "
                            "wildcard listener get its address (0.0.0.0), not their own", exc)
        for pid in selected:           # after adoption: a pid with client connections links now
            self.router.python_candidate(pid)
        self.apply(self.router.take_requests())
        s.open_buffer(self._on_lost, self.settings["ring_buffer_pages"])
        exporters = make_exporters(self.settings) if self.exporters is None else list(self.exporters)
        self.exporter = ExportQueue(exporters, self.settings["export.queue_size"],
                                    self.settings["export.batch_size"], self.settings["export.max_attempts"],
                                    max_retry_delay=self.settings["export.max_retry_delay_s"])
        log.info("ready strategy=%s transport=%s reader=%s compile=%.1fs selected=%s adopted=%d hot_modules=%s hooks=%s",
                 s.plan.strategy, s.plan.transport, s.buffer_reader.split(" ", 1)[0], s.compile_s,
                 "all" if self.selection.trace_all else len(selected), adoption.adopted,
                 native.state().split(" ", 1)[0], ",".join(s.attached))
        for name, why in s.plan.skipped:
            log.info("probe %s skipped: %s", name, why)
        for name, why in self.passed_over:
            log.info("strategy %s passed over: %s", name, why)
        if self.watchdog.every is not None:
            log.info("systemd watchdog: a ping every %.1f s", self.watchdog.every)
        self._start_budget()
        sd_notify(f"READY=1\nSTATUS=tracing with {s.plan.strategy}", self.env)

    def _start_budget(self) -> None:
        limit = self.settings["budget.max_cpu_percent"]
        if limit is None:
            return
        why = self.session.count_program_time()
        self.budget = CpuBudget(limit)
        self.session.set_shed(0)          # a budget is set: the kernel side keeps what it needs
        log.info("CPU budget: max_cpu_percent %.1f%% of one CPU, for the agent %s", limit,
                 "and its kernel programs" if why is None
                 else f"alone: its kernel programs' run time is not known ({why})")
        self._budget_step()

    def _budget_step(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)      # every thread of the agent
        self.budget.step(Reading(time.monotonic(), usage.ru_utime + usage.ru_stime,
                                 self.session.programs_cpu_ns()))
        share = self.budget.permille
        if share != self._shed_written:   # until written: a failed write is tried again
            self.session.set_shed(share)
            self._shed_written = share

    # ---- the event buffer ----
    def poll(self, timeout_ms: int) -> None:
        """Take what the kernel side sent (within `timeout_ms`) into the next batch."""
        self._batch += self.session.poll(timeout_ms)

    def _on_lost(self, count) -> None:
        self.stats.perf_lost += count

    # ---- the loop ----
    def run(self) -> int:
        deadline = time.monotonic() + self.stop_after if self.stop_after else None
        interval = self.settings["poll_interval_ms"]
        next_stats = time.monotonic() + self.settings["stats_interval_s"]
        next_expire = time.monotonic() + EXPIRE_EVERY_S
        next_collect = time.monotonic() + GC_EVERY_S
        next_budget = time.monotonic() + BUDGET_EVERY_S
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                self.watchdog.tick()
                self.poll(interval)
                self.process_batch(self._checkpoint)
                self.losses.poll(self.counters)
                now = time.monotonic()
                if now >= next_collect:      # the collector's only runs (memory.settle_heap)
                    collect_cycles()
                    next_collect = now + GC_EVERY_S
                if self.budget is not None and now >= next_budget:
                    try:
                        self._budget_step()
                    except Exception as exc:      # the budget must not stop the tracing
                        self.faults.record("budget", exc)
                    next_budget = now + BUDGET_EVERY_S
                if now >= next_expire:
                    self.expire(self.session.now_ns(), self.settings["request_timeout_s"])
                    next_expire = now + EXPIRE_EVERY_S
                if now >= next_stats:
                    self.log_stats("stats")
                    self.faults.summarise()
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

    def _checkpoint(self) -> bool:
        """Between events, every few hundred: the loop is alive (watchdog); stop now?"""
        self.watchdog.tick()
        return self.stop.is_set()

    def process_batch(self, should_stop: Callable[[], bool] | None = None) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self.session.plan.transport == "perf":
            # per-CPU buffers: restore time order (ts_ns is the first, little-endian, field)
            batch.sort(key=lambda raw: int.from_bytes(raw[:8], "little"))
        self.stats.events += len(batch)
        exchanges = self.router.route(batch, should_stop or self._checkpoint)
        spans = self._build(exchanges)
        self.router.forget_exited()
        self.apply(self.router.take_requests())
        self._submit(spans)

    def _build(self, exchanges: list[Exchange]) -> list:
        """Spans of the sampled exchanges; the others (head sampling) are only counted."""
        spans, unsampled = build_spans(self.builder.build, exchanges, self.faults.record)
        self.stats.unsampled += unsampled
        return spans

    def _submit(self, spans: list) -> None:
        if spans:
            self.stats.spans += len(spans)
            self.exporter.submit(spans)

    def expire(self, now_ns: int, timeout_s: float, error_type: str = "timeout") -> None:
        """Requests with no response `timeout_s` after they started, exported now as errors
        with what is known (Assembler.expire); `now_ns` on the kernel's clock (monotonic)."""
        if self.assembler.expire(now_ns, int(timeout_s * 1_000_000_000), error_type):
            self._submit(self._build(self.router.finished()))

    # ---- requests from the stages -> the kernel session ----
    def apply(self, requests: list[Request]) -> None:
        for r in requests:
            try:
                self._apply(r)
            except Exception as exc:   # a full map, a process gone: that request only
                self.faults.record("apply", exc)

    def _apply(self, r: Request) -> None:
        s = self.session
        if isinstance(r, SelectRequest):
            s.select_pid(r.pid, excluded=r.excluded)
        elif isinstance(r, CaptureRequest):
            s.select_pid(r.pid, capture=r.capture)
        elif isinstance(r, PythonCheckRequest):
            self._python_check(r.pid)
        elif isinstance(r, PythonLinkRequest):
            self._python_link(r.pid)
        elif isinstance(r, ListenPortRequest):
            s.note_listen_port(r.port)
        elif isinstance(r, ProcessGone):
            self.python_pending.pop(r.pid, None)
            s.unset_python(r.pid)

    def _python_check(self, pid: int) -> None:
        """Asyncio linking for a Python server process, calibrated once per interpreter and
        turned on at its first outbound connection: until a process calls out there is no
        child span to link, and the context uprobes would cost it a trap per task."""
        if not self.session.plan.uprobes:
            return
        info = self.registry.get(pid)
        found = self.calibrations.for_process(pid, info.exe if info else None)
        if found is None:
            return
        self.python_pending[pid] = found
        if self.assembler.has_client_connection(pid):
            self._python_link(pid)

    def _python_link(self, pid: int) -> None:
        found = self.python_pending.pop(pid, None)
        if found is not None and self.session.set_python(pid, *found):
            log.info("asyncio linking on for pid %d (Python %s): it calls out", pid, found[0].version)

    # ---- reporting and stop ----
    def counters(self) -> dict[str, object]:
        out: dict[str, object] = {
            "events_received": self.stats.events,
            "decode_errors": self.router.decode_errors,
            "spans_built": self.stats.spans,
            "spans_unsampled": self.stats.unsampled,
            "span_build_errors": self.faults.counts["build"],
            "perf_events_lost": self.stats.perf_lost,
            "events_abandoned_at_stop": self.router.abandoned,
            "processes_known": self.registry.size(),
        }
        out.update(self.faults.counters())
        kernel = self.session.counters() if self.session is not None else self._kernel_counters
        out.update({f"kernel_{k}": v for k, v in kernel.items()})
        out.update(self.assembler.counts)
        out.update(self.extractor.counts)
        out.update(self.builder.counts)
        if self.exporter is not None:
            out.update(self.exporter.counts)
        if self.budget is not None:
            out.update(self.budget.counters())
        return out

    def log_stats(self, label: str) -> None:
        log.info("%s %s", label, json.dumps(self.counters(), sort_keys=True))

    def shutdown(self) -> None:
        """Flush and detach in parallel, within the 5 s a service manager allows."""
        if self.session is None:
            return
        try:
            self.poll(0)
            drain_until = time.monotonic() + STOP_DRAIN_S
            self.process_batch(lambda: time.monotonic() > drain_until)
            # requests still waiting for a response: exported as such, never dropped silently
            self.expire(self.session.now_ns(), 0, "agent_stopped")
        except Exception as exc:
            log.warning("final drain failed: %s", exc)
        self._kernel_counters = self.session.counters()
        detach = threading.Thread(target=self.session.close, name="spanprobe-detach")
        detach.start()
        if self.exporter is not None:
            self.exporter.shutdown(timeout=3.0)
        detach.join()
        self.session = None
        self.faults.summarise(force=True)
        self.log_stats("final")
        log.info("stopped: every probe detached")


def install_signal_handlers(agent: Agent) -> None:
    def handler(signum, frame):
        agent.stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
