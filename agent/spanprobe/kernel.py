"""What the running kernel offers, read from /proc and /sys (through SysRoot)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field

from .errors import KernelUnsupported, PermissionProblem
from .procfs import SysRoot

TRACEFS_CANDIDATES = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
SYSCALL_PREFIXES = {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_"}


@dataclass
class KernelFeatures:
    release: str
    arch: str
    btf: bool
    tracefs: str | None
    syscall_tracepoints: set[str] = field(default_factory=set)   # syscalls with enter+exit
    tracepoints: set[str] = field(default_factory=set)           # "sched:sched_process_exec", ...
    kprobes: bool = False
    kprobes_reason: str = ""
    fentry: bool = False
    fentry_reason: str = ""
    ringbuf: bool = False
    uprobes: bool = False
    syscall_prefix: str | None = None

    @property
    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def find_tracefs(root: SysRoot) -> str | None:
    for rel in TRACEFS_CANDIDATES:
        if root.exists(rel, "events"):
            return "/" + rel
    return None


def ensure_tracefs(root: SysRoot) -> str:
    """bcc needs tracefs; mount it where a minimal system (or container) did not."""
    found = find_tracefs(root)
    if found:
        return found
    if root.root.as_posix() != "/":
        raise KernelUnsupported("tracefs is not mounted; mount it: mount -t tracefs nodev /sys/kernel/tracing")
    if os.geteuid() != 0:
        raise PermissionProblem("tracefs is not mounted and only root can mount it: "
                                "mount -t tracefs nodev /sys/kernel/tracing")
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                            capture_output=True, text=True)
    found = find_tracefs(root)
    if not found:
        raise KernelUnsupported("tracefs cannot be mounted (" + result.stderr.strip()
                                + "); the kernel needs CONFIG_FTRACE and tracepoints")
    return found


def _kallsyms_names(root: SysRoot, wanted: set[str]) -> set[str]:
    found = set()
    try:
        with open(root.path("proc/kallsyms"), "r", errors="replace") as f:
            for line in f:
                name = line.rstrip("\n").split(" ", 3)[2] if line.count(" ") >= 2 else ""
                name = name.split("\t", 1)[0]
                if name in wanted:
                    found.add(name)
                    if found == wanted:
                        break
    except OSError:
        pass
    return found


def detect(root: SysRoot, syscalls: list[str], tracepoints: list[str]) -> KernelFeatures:
    release = (root.read_text("proc/sys/kernel/osrelease") or platform.release()).strip()
    arch = platform.machine()
    tracefs = find_tracefs(root)
    feats = KernelFeatures(release=release, arch=arch,
                           btf=root.exists("sys/kernel/btf/vmlinux"), tracefs=tracefs)
    if tracefs:
        events = root.path(tracefs, "events")
        for name in syscalls:
            if (events / "syscalls" / f"sys_enter_{name}").exists() and \
                    (events / "syscalls" / f"sys_exit_{name}").exists():
                feats.syscall_tracepoints.add(name)
        for tp in tracepoints:
            cat, ev = tp.split(":")
            if (events / cat / ev).exists():
                feats.tracepoints.add(tp)
    prefix = SYSCALL_PREFIXES.get(arch)
    probe_syms = {"bpf_trampoline_link_prog", "bpf_ringbuf_output", "register_kprobe"}
    if prefix:
        probe_syms.add(prefix + "read")
    syms = _kallsyms_names(root, probe_syms)
    if prefix and prefix + "read" in syms:
        feats.syscall_prefix = prefix
    kprobe_pmu = root.exists("sys/bus/event_source/devices/kprobe/type")
    kprobe_events = bool(tracefs) and root.exists(tracefs or "", "kprobe_events")
    if not feats.syscall_prefix:
        feats.kprobes_reason = f"no syscall wrapper symbols known for {arch}"
    elif kprobe_pmu or kprobe_events or "register_kprobe" in syms:
        feats.kprobes = kprobe_pmu or kprobe_events
        feats.kprobes_reason = "" if feats.kprobes else "kprobes built in but no kprobe PMU or kprobe_events"
    else:
        feats.kprobes_reason = "kernel built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events)"
    if arch != "x86_64":
        feats.fentry_reason = "bcc supports fentry only on x86_64"
    elif not feats.btf:
        feats.fentry_reason = "no kernel BTF (/sys/kernel/btf/vmlinux)"
    elif "bpf_trampoline_link_prog" not in syms:
        feats.fentry_reason = "no BPF trampolines in this kernel"
    elif not feats.syscall_prefix:
        feats.fentry_reason = "syscall wrapper symbols not found"
    else:
        feats.fentry = True
    feats.ringbuf = "bpf_ringbuf_output" in syms or feats.version >= (5, 8)
    feats.uprobes = root.exists("sys/bus/event_source/devices/uprobe/type") or \
        (bool(tracefs) and root.exists(tracefs or "", "uprobe_events"))
    return feats
