"""Probes as data, and the plan that picks, from what this kernel offers, how to attach
them. The fallback logic is the one loop in loader.load_best over PLAN_ORDER."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import KernelUnsupported
from .kernel import KernelFeatures


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str                 # "syscall" (entry+exit per strategy) or "tracepoint" (category:event)
    required: bool
    why: str
    entry_only: bool = False  # syscall whose result we do not need
    only_with: tuple[str, ...] = ()  # settings of which one must be truthy for the probe to be wanted


PROBES: tuple[Probe, ...] = (
    Probe("accept4", "syscall", True, "inbound connections (glibc, Python, Go)"),
    Probe("accept", "syscall", False, "inbound connections (older servers)"),
    Probe("connect", "syscall", True, "outbound connections"),
    Probe("read", "syscall", True, "bytes received"),
    Probe("recvfrom", "syscall", True, "bytes received (socket.recv)"),
    Probe("readv", "syscall", False, "bytes received into several buffers"),
    Probe("recvmsg", "syscall", False, "bytes received with recvmsg"),
    Probe("write", "syscall", True, "bytes sent"),
    Probe("sendto", "syscall", True, "bytes sent (socket.send)"),
    Probe("writev", "syscall", False, "bytes sent from several buffers"),
    Probe("sendmsg", "syscall", False, "bytes sent with sendmsg"),
    Probe("close", "syscall", True, "end of a connection", entry_only=True),
    Probe("getpeername", "syscall", False, "peer address where accept() was given no buffer (libuv)"),
    Probe("getsockname", "syscall", False, "local address where accept() was given no buffer"),
    Probe("bind", "syscall", False, "services that start listening later: on a selected port (selects "
          "them), or traced (local ends of their connections)",
          entry_only=True, only_with=("select.ports", "select.pids", "select.exe")),
    Probe("sched:sched_process_exec", "tracepoint", True, "processes started after the agent"),
    Probe("sched:sched_process_fork", "tracepoint", True, "children of traced processes"),
    Probe("sched:sched_process_exit", "tracepoint", True, "processes that exit"),
    Probe("sock:inet_sock_set_state", "tracepoint", False,
          "a client's own port: links services on one host into one trace"),
    Probe("PyContext_CopyCurrent", "uretprobe", False,
          "Python asyncio servers: links outbound calls to the request their task serves"),
)
SYSCALLS = [p.name for p in PROBES if p.kind == "syscall"]
TRACEPOINTS = [p.name for p in PROBES if p.kind == "tracepoint"]

# Preference when attach_mode is auto: fentry costs least (no syscall slow path for
# every process), tracepoints exist everywhere, kprobes are the last resort.
PLAN_ORDER = ("fentry", "tracepoint", "kprobe")
MODE_IDS = {"tracepoint": 1, "kprobe": 2, "fentry": 3}


@dataclass
class Plan:
    strategy: str
    transport: str                      # "ringbuf" | "perf"
    syscalls: list[Probe] = field(default_factory=list)
    tracepoints: list[Probe] = field(default_factory=list)
    uprobes: list[Probe] = field(default_factory=list)     # attached per binary, later
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (probe, reason)

    @property
    def with_ports(self) -> bool:
        """The TCP state tracepoint is attached: client ports, and the local ends of
        accepted connections (SP_WITH_PORTS, its maps `accepted` and `listen_ports`)."""
        return any(p.name == "sock:inet_sock_set_state" for p in self.tracepoints)


def strategy_available(feats: KernelFeatures, strategy: str) -> tuple[bool, str]:
    if strategy == "tracepoint":
        if not feats.tracefs:
            return False, "tracefs not mounted"
        return (bool(feats.syscall_tracepoints),
                "" if feats.syscall_tracepoints else "no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")
    if strategy == "kprobe":
        return feats.kprobes, feats.kprobes_reason
    if strategy == "fentry":
        if feats.fentry:
            bad = [p.name for p in PROBES if p.kind == "syscall" and p.required
                   and p.name in feats.fentry_unreadable]
            if bad:
                return False, (f"the kernel's BTF declares struct pt_regs, the argument of "
                               f"{feats.syscall_prefix}{{{','.join(bad)}}}, only as a forward "
                               "declaration, so the verifier refuses fentry programs that read it")
        return feats.fentry, feats.fentry_reason
    return False, f"unknown strategy {strategy}"


def candidates(feats: KernelFeatures, attach_mode: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(strategies to try in order, [(strategy, why not)])."""
    order = PLAN_ORDER if attach_mode == "auto" else (attach_mode,)
    usable, refused = [], []
    for s in order:
        ok, why = strategy_available(feats, s)
        (usable.append(s) if ok else refused.append((s, why)))
    return usable, refused


def make_plan(feats: KernelFeatures, strategy: str, settings, buffer: str = "auto") -> Plan:
    if buffer == "ringbuf" and not feats.ringbuf:
        raise KernelUnsupported(f"buffer: ringbuf needs Linux 5.8+, this is {feats.release}; "
                                "use buffer: perf or auto")
    transport = buffer if buffer != "auto" else ("ringbuf" if feats.ringbuf else "perf")
    plan = Plan(strategy, transport)
    for p in PROBES:
        if p.only_with and not any(settings[name] for name in p.only_with):
            continue
        if p.kind == "uretprobe":
            if feats.uprobes:
                plan.uprobes.append(p)
            else:
                plan.skipped.append((p.name, "no uprobes in this kernel"))
            continue
        if p.kind == "tracepoint":
            present = p.name in feats.tracepoints
            reason = f"tracepoint {p.name} not in this kernel"
            target = plan.tracepoints
        else:
            present = p.name in feats.syscall_tracepoints if strategy == "tracepoint" \
                else bool(feats.syscall_prefix)
            reason = f"syscall {p.name} has no {strategy} hook here"
            if strategy == "fentry" and p.name in feats.fentry_unreadable:
                present = False
                reason = (f"BTF has only a forward declaration of struct pt_regs for "
                          f"{feats.syscall_prefix}{p.name}: the verifier refuses to read it")
            target = plan.syscalls
        if present:
            target.append(p)
        elif p.required:
            raise KernelUnsupported(f"required probe {p.name} ({p.why}) is missing: {reason}")
        else:
            plan.skipped.append((p.name, reason))
    return plan
