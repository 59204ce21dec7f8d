"""Attach: compile the kernel side with bcc for one plan, attach its probes, detach.

All variation is passed as -D constants; the C source is never templated.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import caps
from . import events as ev
from .errors import KernelUnsupported, PermissionProblem, ProbeAttachError
from .kernel import KernelFeatures, detect, ensure_tracefs
from .kstats import MappedCounters, MappedPortSet, enable_run_time_stats, program_misses, programs_run_ns
from .memory import release_after_compile
from .probes import MODE_IDS, SYSCALLS, TRACEPOINTS, Plan, candidates, make_plan
from .procfs import SysRoot
from .ringbuf import MappedRing, supported as mapped_reader_supported
from .writeguard import WriteGuard

log = logging.getLogger("spanprobe.loader")

SLOW_WRITE_NS = 100_000
# A CPU wakes the ring buffer's reader once it has written this share of the buffer,
# split among the CPUs, since its last wake-up: all of them just short of it fill a
# quarter, and the agent's poll_interval_ms timer drains the rest.
WAKEUP_SHARE = 4
MIN_WAKEUP_BYTES = 4096


def wakeup_bytes(ring_pages: int, cpus: int) -> int:
    """Bytes a CPU outputs before it wakes the agent (bpf/spanprobe.bpf.c output())."""
    return max(MIN_WAKEUP_BYTES, ring_pages * 4096 // (WAKEUP_SHARE * max(1, cpus)))
BPF_NOEXIST = 1                 # bpf_update_elem flag: only if the key is absent
KRETPROBE_MAXACTIVE = 4096      # the kernel's upper limit (KRETPROBE_MAXACTIVE_MAX)
QUIET = ["-Wno-duplicate-decl-specifier", "-Wno-address-of-packed-member",
         "-Wno-ignored-attributes", "-Wno-unknown-warning-option", "-Wno-macro-redefined"]


def bpf_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent.parent / "bpf"):
        if (candidate / "spanprobe.bpf.c").exists():
            return candidate
    raise KernelUnsupported("bpf/spanprobe.bpf.c not found next to the package; reinstall spanprobe")


def import_bcc():
    try:
        import bcc  # noqa: F401
        return bcc
    except ImportError:
        raise KernelUnsupported(
            "bcc's Python module is missing: apt-get install python3-bpfcc, and run the agent "
            "with Debian's python3 or a venv made by /usr/bin/python3 -m venv --system-site-packages"
        ) from None


@dataclass
class BpfSession:
    plan: Plan
    bpf: object
    attached: list[str] = field(default_factory=list)
    compile_s: float = 0.0
    python_pids: dict[int, str] = field(default_factory=dict)     # asyncio linking on: pid -> binary
    python_warned: set[str] = field(default_factory=set)          # binaries whose uprobes failed once
    losses: MappedCounters | None = None                          # the counters map, mmapped at the first read
    control: MappedCounters | None = None                         # the control map, mmapped at the first write
    listen_ports: MappedPortSet | None = None                     # `listen_ports`, mmapped at the first port
    run_stats_fd: int | None = None                               # held while programs' run time is counted
    write_guard: WriteGuard = field(default_factory=WriteGuard)   # map writes unpreempted (writeguard.py)
    ring: MappedRing | None = None                                # the ring buffer, read in place (ringbuf.py)
    buffer_reader: str = "bcc"                                    # who reads the buffer: "mapped" or "bcc (why)"
    _records: list[bytes] = field(default_factory=list)           # bcc's callbacks put records here

    # ---- maps ----
    def table(self, name: str):
        return self.bpf[name.encode()]

    def select_pid(self, pid: int, excluded: bool = False, capture: int = 0) -> None:
        t = self.table("traced")
        with self.write_guard():
            t[t.Key(pid)] = t.Leaf(capture=capture, excluded=1 if excluded else 0)

    def select_comm(self, comm: str) -> None:
        t = self.table("exe_names")
        key = t.Key()
        key.name = comm.encode()[:15]
        with self.write_guard():
            t[key] = t.Leaf(1)

    def select_port(self, port: int) -> None:
        t = self.table("ports")
        with self.write_guard():
            t[t.Key(port)] = t.Leaf(1)

    def note_listen_port(self, port: int) -> None:
        """Connections accepted on `port` (a traced process listens there) get their local
        end from the kernel side: written through mmap(2), no bpf(2) call (kstats.py says
        why that matters). Without the TCP state tracepoint there is no such map."""
        if not self.plan.with_ports:
            return
        if self.listen_ports is None:
            self.listen_ports = MappedPortSet(self.table("listen_ports").map_fd)
        self.listen_ports.add(port)

    def set_python(self, pid: int, layout, runtime: int) -> bool:
        """Asyncio linking for one process: the context uprobes attached to it alone.

        Per process, not per binary: a uprobe costs every process of the binary a trap per
        call (measured here: ~14 µs each, FastAPI 9,100 -> 5,600 requests/s), so only the
        processes that need linking pay it (the caller enables it at a process's first
        outbound connection: README.md, "Where the time went, and what was fixed")."""
        if not self.plan.uprobes:
            return False
        if pid in self.python_pids:
            return True
        name = layout.binary.encode()
        try:
            self.bpf.attach_uretprobe(name=name, sym=b"PyContext_CopyCurrent",
                                      fn_name=b"sp_py_ctx_copy", pid=pid)
            self.bpf.attach_uprobe(name=name, sym=b"PyContext_Enter", fn_name=b"sp_py_ctx_enter", pid=pid)
        except Exception as exc:      # also when the process exited meanwhile: the next one retries
            self._detach_python(layout.binary, pid)
            if layout.binary not in self.python_warned:
                self.python_warned.add(layout.binary)
                log.warning("uprobes on %s for pid %d failed: %s; no asyncio links for it",
                            layout.binary, pid, exc)
            return False
        self.python_pids[pid] = layout.binary
        t = self.table("pyrt")
        leaf = t.Leaf(runtime=runtime, off_interp=layout.off_interp, off_head=layout.off_head,
                      off_next=layout.off_next, off_tid=layout.off_tid, off_ctx=layout.off_ctx)
        with self.write_guard():
            t[t.Key(pid)] = leaf
        return True

    def unset_python(self, pid: int) -> None:
        binary = self.python_pids.pop(pid, None)
        if binary is None:
            return
        self._detach_python(binary, pid)
        t = self.table("pyrt")
        try:
            with self.write_guard():
                del t[t.Key(pid)]
        except KeyError:
            pass

    def _detach_python(self, binary: str, pid: int) -> None:
        for detach, sym in ((self.bpf.detach_uretprobe, b"PyContext_CopyCurrent"),
                            (self.bpf.detach_uprobe, b"PyContext_Enter")):
            try:
                detach(name=binary.encode(), sym=sym, pid=pid)
            except Exception as exc:      # not attached (a partial attach), or already gone
                log.debug("detach %s %s pid %d: %s", binary, sym.decode(), pid, exc)

    def adopt_connection(self, pid: int, fd: int, conn_id: int, role: int) -> bool:
        """Add the connection unless the kernel side has it already (it saw it open after
        attaching: its entry and the open event it sent stay authoritative)."""
        import ctypes as ct

        from bcc.libbcc import lib
        t = self.table("conns")
        key, leaf = t.Key(tgid=pid, fd=fd), t.Leaf(conn_id=conn_id, role=role, proto=0)
        with self.write_guard():
            ok = lib.bpf_update_elem(t.map_fd, ct.byref(key), ct.byref(leaf), BPF_NOEXIST) == 0
            err = 0 if ok else ct.get_errno()
        if ok:
            return True
        if err == errno.EEXIST:
            return False
        raise OSError(err, f"conns map: {os.strerror(err)}")

    def conn_is(self, pid: int, fd: int, conn_id: int) -> bool:
        """A bpf(2) lookup, so under the write guard: a lookup preempted holds the CPU's
        bpf_prog_active as a write does (writeguard.py). Made for rare events only."""
        import ctypes as ct

        from bcc.libbcc import lib
        t = self.table("conns")
        key, leaf = t.Key(tgid=pid, fd=fd), t.Leaf()
        with self.write_guard():
            found = lib.bpf_lookup_elem(t.map_fd, ct.byref(key), ct.byref(leaf)) == 0
        return found and leaf.conn_id == conn_id

    def now_ns(self) -> int:
        return time.monotonic_ns()      # bpf_ktime_get_ns is CLOCK_MONOTONIC

    def counters(self) -> dict[str, int]:
        """Read without a bpf(2) map call (kstats.py says why); `prog_misses` only where
        the kernel counts them (5.12+)."""
        if self.losses is None:
            self.losses = MappedCounters(self.table("counters").map_fd, ev.COUNTER_SLOTS)
        values = self.losses.read()
        out = {name: values[slot] for slot, name in ev.COUNTERS.items()}
        each = program_misses({name.decode(): f.fd for name, f in list(self.bpf.funcs.items())})
        if each is not None:
            out["prog_misses"] = sum(each.values())
            # which hooks skipped runs, only those that did (the stats line stays short)
            out.update({f"prog_misses_{name}": n for name, n in sorted(each.items()) if n})
        out["map_writes_unguarded"] = self.write_guard.unguarded
        # records the mapped reader gave up on (a header out of bounds: never seen)
        out["ring_records_unreadable"] = self.ring.reader.unreadable if self.ring is not None else 0
        return out

    # ---- the CPU budget (budget.py) ----
    def set_shed(self, permille: int) -> None:
        """Thousandths of connections the kernel side leaves out from their next request
        on (the first call also says a budget is set): written through mmap(2), no bpf(2)
        call (kstats.py says why that matters)."""
        if self.control is None:
            self.control = MappedCounters(self.table("control").map_fd, ev.CONTROL_SLOTS, writable=True)
            self.control.write(ev.CONTROL_BUDGET, 1)
        self.control.write(ev.CONTROL_SHED_PERMILLE, permille)

    def count_program_time(self) -> str | None:
        """Have the kernel account the programs' run time; None, or why it will not."""
        if self.run_stats_fd is None:
            self.run_stats_fd, why = enable_run_time_stats()
            return why
        return None

    def programs_cpu_ns(self) -> int | None:
        """The programs' run time so far, as the kernel accounts it (while counted)."""
        if self.run_stats_fd is None:
            return None
        return programs_run_ns({name.decode(): f.fd for name, f in list(self.bpf.funcs.items())})

    # ---- events ----
    def open_buffer(self, on_lost, pages: int) -> None:
        events = self.table("events")
        if self.plan.transport == "ringbuf":
            why = mapped_reader_supported()
            if why is None:
                try:
                    self.ring = MappedRing(events.map_fd, events.max_entries)
                    self.buffer_reader = "mapped"
                    return
                except (OSError, ValueError) as exc:
                    why = f"mapping it failed: {exc}"
            log.warning("ring buffer read through bcc's callbacks (slower): %s", why)
            self.buffer_reader = f"bcc ({why})"
            events.open_ring_buffer(self._on_raw)
        else:
            events.open_perf_buffer(self._on_raw, page_cnt=max(8, pages // os.cpu_count()),
                                    lost_cb=on_lost)

    def _on_raw(self, ctx, data, size) -> int:
        self._records.append(ctypes.string_at(data, size))
        return 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        if self.ring is not None:
            records: list[bytes] = []
            self.ring.poll(timeout_ms, records)
            return records
        if self.plan.transport == "ringbuf":
            self.bpf.ring_buffer_poll(timeout_ms)
            self.bpf.ring_buffer_consume()
        else:
            self.bpf.perf_buffer_poll(timeout_ms)
        records, self._records = self._records, []
        return records

    def close(self) -> None:
        """Detach everything. Each syscall tracepoint's removal waits for an RCU grace
        period (~65 ms here, 2 s for all of them one by one); in parallel threads the
        waits overlap, which keeps the agent's stop well within 5 s."""
        from concurrent.futures import ThreadPoolExecutor

        b = self.bpf

        def detach(tp):
            try:
                b.detach_tracepoint(tp)
            except Exception as exc:   # cleanup() below retries whatever is left
                log.debug("detach %s: %s", tp, exc)

        if self.losses is not None:
            self.losses.close()
        if self.ring is not None:
            try:
                self.ring.close()
            except Exception as exc:    # the rest of the clean-up must still run
                log.warning("ring buffer mapping not closed: %s", exc)
            self.ring = None
        if self.control is not None:
            self.control.close()
        if self.listen_ports is not None:
            self.listen_ports.close()
        if self.run_stats_fd is not None:
            os.close(self.run_stats_fd)
        tps = list(b.tracepoint_fds)
        if tps:
            with ThreadPoolExecutor(min(16, len(tps))) as pool:
                list(pool.map(detach, tps))
        release_bpf(b)


def cflags(plan: Plan, settings, feats: KernelFeatures, self_pid: int, trace_all: bool) -> list[str]:
    flags = [f"-I{bpf_dir()}",
             f"-DSP_MODE={MODE_IDS[plan.strategy]}",
             f"-DSP_USE_RINGBUF={1 if plan.transport == 'ringbuf' else 0}",
             f"-DSP_TRACE_ALL={1 if trace_all else 0}",
             f"-DSP_SELF_TGID={self_pid}",
             f"-DSP_CAPTURE_BYTES={settings['capture_bytes']}",
             f"-DSP_RINGBUF_PAGES={settings['ring_buffer_pages']}",
             f"-DSP_WAKEUP_BYTES={wakeup_bytes(settings['ring_buffer_pages'], os.cpu_count() or 1)}",
             f"-DSP_SLOW_WRITE_NS={SLOW_WRITE_NS}",
             f"-DSP_WITH_PORTS={1 if plan.with_ports else 0}",
             f"-DSP_SYSCALL_PREFIX={feats.syscall_prefix or '__x64_sys_'}"]
    flags.append(f"-DSP_WITH_PYTHON={1 if plan.uprobes else 0}")
    flags += [f"-DSP_HOOK_{p.name}=1" for p in plan.syscalls]
    return flags + QUIET


def _short(exc: BaseException, stderr: str) -> str:
    """The first compiler or verifier line worth showing."""
    if "super-user" in str(exc) and os.geteuid() == 0:
        # bcc says this for any EPERM, but we are root: the kernel refused the program
        return "the kernel refused to load it (EPERM as root: lockdown or a restricted kernel)"
    for line in stderr.splitlines():
        if re.search(r"error:|invalid|unknown func|R\d+ |permission|not supported", line, re.I):
            return line.strip()[:300]
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def load(plan: Plan, settings, feats: KernelFeatures, self_pid: int, trace_all: bool) -> BpfSession:
    bcc = import_bcc()
    src = bpf_dir() / "spanprobe.bpf.c"
    flags = cflags(plan, settings, feats, self_pid, trace_all)
    t0 = time.monotonic()
    if plan.strategy == "fentry" and (why := fentry_refused(bcc, plan, feats)):
        raise ProbeAttachError(f"fentry: compile/load failed: {why}")
    err = io.StringIO()
    try:
        with _capture_stderr(err):
            b = _new_bpf(bcc, src_file=str(src).encode(), cflags=flags)
    except Exception as exc:
        why = _short(exc, err.getvalue())
        if "perf_event_open" in why and "Permission denied" in why:
            why = "; ".join(filter(None, (why, caps.perf_denied_hint_here())))
        raise ProbeAttachError(f"{plan.strategy}: compile/load failed: {why}") from None
    session = BpfSession(plan, b, compile_s=time.monotonic() - t0)
    try:
        for p in plan.tracepoints:
            session.attached.append(p.name)      # TRACEPOINT_PROBE: bcc attached it at load
        for p in plan.syscalls:
            _attach_syscall(session, p, feats)
    except ProbeAttachError:
        session.close()
        raise
    return session


def fentry_refused(bcc, plan: Plan, feats: KernelFeatures) -> str | None:
    """Why the kernel refuses fentry programs, or None when it loads one.

    The whole fentry plan is a few seconds of compiling (a program pair per syscall) before
    the kernel can say no, and a kernel that refuses fentry (lockdown, a restricted build:
    EPERM here) refuses it for every function. One empty program on the plan's first
    syscall asks the same question in a fraction of that time."""
    fn = f"{feats.syscall_prefix or '__x64_sys_'}{plan.syscalls[0].name}"
    err = io.StringIO()
    try:
        with _capture_stderr(err):
            release_bpf(_new_bpf(bcc, text=f"KFUNC_PROBE({fn}) {{ return 0; }}".encode(), cflags=QUIET))
    except Exception as exc:   # noqa: BLE001 - bcc raises plain Exception
        return _short(exc, err.getvalue())
    return None


def _new_bpf(bcc, **kw):
    """bcc.BPF(**kw), releasing what a failed construction created.

    A BPF object registers its own cleanup with atexit before it compiles, so one whose
    construction failed (fentry refused by the kernel, after its maps were created) stays
    referenced for the agent's whole life, with its maps (~20 MiB locked memory, a second
    ring buffer). Built in two steps, the half-constructed object is still in hand here
    to close."""
    b = bcc.BPF.__new__(bcc.BPF)
    try:
        b.__init__(**kw)
    except BaseException:
        release_bpf(b)
        raise
    return b


def release_bpf(b) -> None:
    """Detach, close every fd and the module of a BPF object, and drop bcc's atexit
    reference to it, so nothing it created outlives this call."""
    try:
        b.cleanup()
    except Exception as exc:      # noqa: BLE001 - a half-built object may lack attributes
        log.debug("cleanup of a BPF object: %s", exc)
        if getattr(b, "module", None):
            b.close()
    atexit.unregister(b.cleanup)


def _attach_syscall(session: BpfSession, probe, feats: KernelFeatures) -> None:
    b = session.bpf
    name = probe.name
    strategy = session.plan.strategy
    try:
        # tracepoint and kprobe: the same two programs on every syscall (they tell the
        # syscalls apart by number), loaded and verified by bcc at their first attach;
        # close's enter tracepoint has a program of its own (a record of one argument)
        if strategy == "tracepoint":
            enter = b"sp_enter_close" if name == "close" else b"sp_enter"
            b.attach_tracepoint(tp=f"syscalls:sys_enter_{name}".encode(), fn_name=enter)
            if not probe.entry_only:
                b.attach_tracepoint(tp=f"syscalls:sys_exit_{name}".encode(), fn_name=b"sp_exit")
        elif strategy == "kprobe":
            fn = f"{feats.syscall_prefix}{name}".encode()
            b.attach_kprobe(event=fn, fn_name=b"sp_enter")
            if not probe.entry_only:
                _attach_kretprobe(b, fn, b"sp_exit")
        elif strategy == "fentry":
            # bcc attached the KFUNC_PROBE programs when it loaded them; their names
            # depend on the bcc version (kfunc__<fn> in 0.26, kfunc__vmlinux__<fn> later)
            fn = f"{feats.syscall_prefix}{name}"
            if not {f"kfunc__{fn}".encode(), f"kfunc__vmlinux__{fn}".encode()} & set(b.kfunc_entry_fds):
                raise RuntimeError("fentry program not attached")
    except Exception as exc:
        if probe.required:
            raise ProbeAttachError(f"{strategy}: required probe {name} failed to attach: {exc}") from None
        session.plan.skipped.append((name, f"attach failed: {exc}"))
        log.warning("optional probe %s not attached (%s): %s", name, probe.why, exc)
        return
    session.attached.append(f"{strategy}:{name}")


def _attach_kretprobe(b, fn: bytes, prog: bytes) -> None:
    """A kretprobe with room for KRETPROBE_MAXACTIVE calls in flight at once.

    Each call blocked inside a probed syscall (any process's: the probe is not filtered
    by pid) holds one kretprobe instance until it returns; a call that finds none free is
    missed, and so is the data it read. The kernel's default pool is tiny: max(10, 2 x
    CPUs) with CONFIG_PREEMPTION, and just the number of CPUs without (Debian 5.10),
    which lost every request a server thread read while two other threads were blocked
    in recvfrom (seen in the kernel matrix, 5.10 kprobe cell). bcc needs tracefs'
    kprobe_events for this (the perf kprobe PMU takes no maxactive); where that fails,
    attach with the kernel's default and say so."""
    try:
        b.attach_kretprobe(event=fn, fn_name=prog, maxactive=KRETPROBE_MAXACTIVE)
        return
    except Exception as exc:   # noqa: BLE001 - bcc raises plain Exception
        log.warning("kretprobe %s with maxactive=%d failed (%s); using the kernel's default, "
                    "which misses calls when many threads block in it at once",
                    fn.decode(), KRETPROBE_MAXACTIVE, exc)
    b.attach_kretprobe(event=fn, fn_name=prog)


@contextlib.contextmanager
def _capture_stderr(sink: io.StringIO):
    """bcc prints compiler and verifier output on fd 2; keep it for the error message."""
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read()
            sink.write(text)
            if log.isEnabledFor(logging.DEBUG) and text:
                log.debug("bcc output:\n%s", text[-4000:])


def load_best(feats: KernelFeatures, settings, self_pid: int, trace_all: bool) -> tuple[BpfSession, list[tuple[str, str]]]:
    """Try each usable strategy in order; return the first that attaches, with the
    reasons the others were passed over."""
    usable, refused = candidates(feats, settings["attach_mode"])
    tried = list(refused)
    for strategy in usable:
        try:
            plan = make_plan(feats, strategy, settings, settings["buffer"])
            session = load(plan, settings, feats, self_pid, trace_all)
            return session, tried
        except (ProbeAttachError, KernelUnsupported) as exc:
            log.info("strategy %s not usable: %s", strategy, exc)
            tried.append((strategy, str(exc).removeprefix(f"{strategy}: ")))   # named once, by the pair
    reasons = "; ".join(f"{s}: {why}" for s, why in tried)
    if settings["attach_mode"] != "auto":
        raise ProbeAttachError(f"attach_mode {settings['attach_mode']} is not usable here ({reasons}); "
                               "use --attach-mode auto")
    raise ProbeAttachError(f"no attach strategy works on this kernel ({reasons})")


def open_session(settings, root: SysRoot, self_pid: int,
                 trace_all: bool) -> tuple[BpfSession, list[tuple[str, str]]]:
    """The privileged start (session.SessionOpener): capabilities, tracefs, the kernel's
    features, then the best plan loaded and attached."""
    if (problem := caps.check()) is not None:   # not root: capabilities
        raise PermissionProblem(problem)
    ensure_tracefs(root)
    feats = detect(root, SYSCALLS, TRACEPOINTS)
    loaded = load_best(feats, settings, self_pid, trace_all)
    log.info("%s", release_after_compile(root).describe())     # the compiler is not needed again
    return loaded
