"""What the running kernel offers, read from /proc and /sys (through SysRoot)."""

from __future__ import annotations

import os
import platform
import re
import struct
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
    fentry_unreadable: dict[str, str] = field(default_factory=dict)   # syscall -> BTF kind of its pt_regs
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
    """Which of `wanted` the kernel has, from /proc/kallsyms (none when it cannot be read)."""
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


def _load_btf(root: SysRoot) -> BtfIndex | None:
    try:
        with open(root.path("sys/kernel/btf/vmlinux"), "rb") as f:
            return BtfIndex(f.read())
    except (OSError, ValueError, struct.error):
        return None


# BTF kinds (include/uapi/linux/btf.h) and the bytes each adds after its 12-byte header:
# (fixed, per vlen item)
_BTF_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
              15: (0, 12), 17: (4, 0), 19: (0, 12)}
_BTF_KINDS = {1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union", 6: "enum", 7: "fwd",
              8: "typedef", 9: "volatile", 10: "const", 11: "restrict", 12: "func", 13: "func_proto",
              14: "var", 15: "datasec", 16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64"}
_BTF_MODIFIERS = (8, 9, 10, 11, 18)


class BtfIndex:
    """Just enough of vmlinux BTF to see what a kernel function's argument points to,
    as the verifier will when an fentry program reads it."""

    def __init__(self, data: bytes):
        self.data = data
        self.offsets = [0]                  # type id -> offset; id 0 is void
        self.funcs: dict[int, int] = {}     # name offset -> FUNC type id
        magic, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise ValueError("not BTF")
        self.strs, self.str_len = hdr_len + str_off, str_len
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack, extra, offsets, funcs = struct.unpack_from, _BTF_EXTRA, self.offsets, self.funcs
        while pos < end:
            name_off, info = unpack("<II", data, pos)
            kind = (info >> 24) & 0x1F
            offsets.append(pos)
            if kind == 12:
                funcs[name_off] = len(offsets) - 1
            fixed, per = extra.get(kind, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    def has_func(self, name: str) -> bool:
        """Whether the kernel has a (non-inlined) function of that name: BTF lists them,
        so symbol names are known without /proc/kallsyms."""
        at = self.data.find(b"\0" + name.encode() + b"\0", self.strs, self.strs + self.str_len)
        return at >= 0 and (at + 1 - self.strs) in self.funcs

    def _kind(self, tid: int) -> tuple[int, int]:
        if not 0 < tid < len(self.offsets):
            return 0, 0
        _, info, ref = struct.unpack_from("<III", self.data, self.offsets[tid])
        return (info >> 24) & 0x1F, ref

    def pointee_kind(self, func: str, arg: int = 0) -> str | None:
        """"struct", or "fwd" when only a forward declaration made it into the BTF;
        None when the BTF cannot say (no such function, not a pointer)."""
        at = self.data.find(b"\0" + func.encode() + b"\0", self.strs, self.strs + self.str_len)
        fid = self.funcs.get(at + 1 - self.strs) if at >= 0 else None
        if fid is None:
            return None
        _, proto = self._kind(fid)
        kind, _ = self._kind(proto)
        if kind != 13:
            return None
        _, info = struct.unpack_from("<II", self.data, self.offsets[proto])
        if arg >= (info & 0xFFFF):
            return None
        tid = struct.unpack_from("<I", self.data, self.offsets[proto] + 12 + 8 * arg + 4)[0]
        kind, ref = self._kind(tid)
        while kind in _BTF_MODIFIERS:
            kind, ref = self._kind(ref)
        if kind != 2:
            return None
        kind, ref = self._kind(ref)
        while kind in _BTF_MODIFIERS:
            kind, ref = self._kind(ref)
        return _BTF_KINDS.get(kind)


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
    btf = None
    if not syms:
        # kallsyms hidden: systemd's ProtectKernelTunables= mounts an empty file over it
        # (readable with CAP_DAC_READ_SEARCH, so not even an error). BTF names the same
        # functions; kprobes and fentry attach by name, which kptr_restrict does not affect.
        btf = _load_btf(root) if feats.btf else None
        syms = {name for name in probe_syms if btf is not None and btf.has_func(name)}
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
        # fentry programs read the syscall wrappers' pt_regs argument. Where the kernel's
        # BTF has struct pt_regs there only as a forward declaration (Debian's 5.10, for
        # the wrappers defined in files that never include its definition) the verifier
        # refuses that read: "arg0 type FWD is not a struct".
        btf = btf or _load_btf(root)
        if btf is not None:
            try:
                for name in syscalls:
                    kind = btf.pointee_kind(feats.syscall_prefix + name)
                    if kind not in (None, "struct"):
                        feats.fentry_unreadable[name] = kind
            except (ValueError, struct.error):
                pass
    feats.ringbuf = "bpf_ringbuf_output" in syms or feats.version >= (5, 8)
    feats.uprobes = root.exists("sys/bus/event_source/devices/uprobe/type") or \
        (bool(tracefs) and root.exists(tracefs or "", "uprobe_events"))
    return feats
