"""Unit tests of kernel feature detection (spanprobe.kernel) on a fake /proc and /sys,
and of the probe plan built from it (spanprobe.probes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanprobe import kernel
from spanprobe.config import resolve
from spanprobe.errors import KernelUnsupported
from spanprobe.kernel import KernelFeatures, detect, ensure_tracefs, find_tracefs
from spanprobe.probes import (
    PLAN_ORDER, PROBES, SYSCALLS, TRACEPOINTS, candidates, make_plan, strategy_available,
)
from spanprobe.procfs import SysRoot

KALLSYMS_X86 = (
    "0000000000000000 A fixed_percpu_data\n"
    "ffffffff81000000 T _stext\n"
    "ffffffff81000000 T __x64_sys_read\n"
    "ffffffff81000100 T __x64_sys_write\n"
    "ffffffff81200000 T bpf_trampoline_link_prog\n"
    "ffffffff81300000 T bpf_ringbuf_output\n"
    "ffffffff81400000 T register_kprobe\n"
    "ffffffffc0000000 t some_module_fn\t[nf_tables]\n"
)


class Tree:
    """A fake machine; every piece optional."""

    def __init__(self, base: Path, *, release="6.1.0-28-amd64", tracefs="sys/kernel/tracing",
                 syscalls=("read", "write"), enter_only=(), tracepoints=("sched/sched_process_exec",),
                 kallsyms=KALLSYMS_X86, btf=True, kprobe_pmu=True, kprobe_events=False):
        self.base = base
        if release is not None:
            self.write("proc/sys/kernel/osrelease", release + "\n")
        if kallsyms is not None:
            self.write("proc/kallsyms", kallsyms)
        if tracefs is not None:
            ev = base / tracefs / "events"
            ev.mkdir(parents=True)
            for name in syscalls:
                (ev / "syscalls" / f"sys_enter_{name}").mkdir(parents=True)
                (ev / "syscalls" / f"sys_exit_{name}").mkdir(parents=True)
            for name in enter_only:
                (ev / "syscalls" / f"sys_enter_{name}").mkdir(parents=True)
            for tp in tracepoints:
                (ev / tp).mkdir(parents=True)
            if kprobe_events:
                self.write(f"{tracefs}/kprobe_events", "")
        if btf:
            self.write("sys/kernel/btf/vmlinux", "BTF")
        if kprobe_pmu:
            self.write("sys/bus/event_source/devices/kprobe/type", "6\n")

    def write(self, rel: str, text: str) -> None:
        p = self.base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    @property
    def root(self) -> SysRoot:
        return SysRoot(self.base)


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(kernel.platform, "machine", lambda: "x86_64")


def arch(monkeypatch, name: str) -> None:
    monkeypatch.setattr(kernel.platform, "machine", lambda: name)


def run_detect(tree: Tree) -> KernelFeatures:
    return detect(tree.root, ["read", "write", "sendmsg"],
                  ["sched:sched_process_exec", "sched:sched_process_exit"])


# ---- detect ----

def test_detect_full_x86_kernel(tmp_path, x86):
    f = run_detect(Tree(tmp_path, enter_only=("sendmsg",)))
    assert f.release == "6.1.0-28-amd64"
    assert f.arch == "x86_64"
    assert f.version == (6, 1)
    assert f.btf is True
    assert f.tracefs == "/sys/kernel/tracing"
    assert f.syscall_tracepoints == {"read", "write"}            # sendmsg: no exit tracepoint
    assert f.tracepoints == {"sched:sched_process_exec"}
    assert f.syscall_prefix == "__x64_sys_"
    assert (f.kprobes, f.kprobes_reason) == (True, "")
    assert (f.fentry, f.fentry_reason) == (True, "")
    assert f.ringbuf is True


def test_detect_debugfs_tracing(tmp_path, x86):
    f = run_detect(Tree(tmp_path, tracefs="sys/kernel/debug/tracing"))
    assert f.tracefs == "/sys/kernel/debug/tracing"
    assert f.syscall_tracepoints == {"read", "write"}


def test_detect_without_tracefs(tmp_path, x86):
    f = run_detect(Tree(tmp_path, tracefs=None))
    assert f.tracefs is None
    assert f.syscall_tracepoints == set()
    assert f.tracepoints == set()
    assert f.kprobes is True                                    # the PMU is enough


def test_uprobes_detected_from_pmu_or_uprobe_events(tmp_path, x86):
    tree = Tree(tmp_path)
    assert run_detect(tree).uprobes is False
    tree.write("sys/kernel/tracing/uprobe_events", "")
    assert run_detect(tree).uprobes is True
    (tmp_path / "sys/kernel/tracing/uprobe_events").unlink()
    tree.write("sys/bus/event_source/devices/uprobe/type", "7\n")
    assert run_detect(tree).uprobes is True


def test_kprobe_events_file_without_pmu(tmp_path, x86):
    f = run_detect(Tree(tmp_path, kprobe_pmu=False, kprobe_events=True))
    assert (f.kprobes, f.kprobes_reason) == (True, "")


def test_kprobes_built_in_but_not_reachable(tmp_path, x86):
    f = run_detect(Tree(tmp_path, kprobe_pmu=False))
    assert f.kprobes is False
    assert f.kprobes_reason == "kprobes built in but no kprobe PMU or kprobe_events"


def test_kernel_without_kprobes(tmp_path, x86):
    syms = KALLSYMS_X86.replace("register_kprobe", "unregister_nothing")
    f = run_detect(Tree(tmp_path, kprobe_pmu=False, kallsyms=syms))
    assert f.kprobes is False
    assert f.kprobes_reason == "kernel built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events)"


def test_no_syscall_wrapper_symbols(tmp_path, x86):
    syms = KALLSYMS_X86.replace("__x64_sys_read", "ksys_read")
    f = run_detect(Tree(tmp_path, kallsyms=syms))
    assert f.syscall_prefix is None
    assert f.kprobes is False
    assert f.kprobes_reason == "no syscall wrapper symbols known for x86_64"
    assert f.fentry is False
    assert f.fentry_reason == "syscall wrapper symbols not found"


def test_unreadable_kallsyms(tmp_path, x86):
    f = run_detect(Tree(tmp_path, kallsyms=None))
    assert f.syscall_prefix is None
    assert (f.kprobes, f.fentry) == (False, False)
    assert f.ringbuf is True                                      # 6.1 >= 5.8


def test_fentry_needs_btf(tmp_path, x86):
    f = run_detect(Tree(tmp_path, btf=False))
    assert f.btf is False
    assert (f.fentry, f.fentry_reason) == (False, "no kernel BTF (/sys/kernel/btf/vmlinux)")
    assert f.kprobes is True


def test_fentry_needs_trampolines(tmp_path, x86):
    f = run_detect(Tree(tmp_path, kallsyms=KALLSYMS_X86.replace("bpf_trampoline_link_prog", "x")))
    assert (f.fentry, f.fentry_reason) == (False, "no BPF trampolines in this kernel")


def test_arm64(tmp_path, monkeypatch):
    arch(monkeypatch, "aarch64")
    f = run_detect(Tree(tmp_path, kallsyms=KALLSYMS_X86.replace("__x64_sys_", "__arm64_sys_")))
    assert f.syscall_prefix == "__arm64_sys_"
    assert f.kprobes is True
    assert (f.fentry, f.fentry_reason) == (False, "bcc supports fentry only on x86_64")


def test_arm64_kernel_does_not_take_x86_symbols(tmp_path, monkeypatch):
    arch(monkeypatch, "aarch64")
    f = run_detect(Tree(tmp_path))
    assert f.syscall_prefix is None
    assert f.kprobes_reason == "no syscall wrapper symbols known for aarch64"


def test_unknown_architecture(tmp_path, monkeypatch):
    arch(monkeypatch, "riscv64")
    f = run_detect(Tree(tmp_path))
    assert f.syscall_prefix is None
    assert (f.kprobes, f.kprobes_reason) == (False, "no syscall wrapper symbols known for riscv64")
    assert f.fentry_reason == "bcc supports fentry only on x86_64"


@pytest.mark.parametrize("release, has_symbol, ringbuf", [
    ("5.4.0-150-generic", False, False),
    ("5.4.0-150-generic", True, True),          # a backport
    ("5.8.0", False, True),
    ("6.12.9+bpo-amd64", False, True),
])
def test_ringbuf(tmp_path, x86, release, has_symbol, ringbuf):
    syms = KALLSYMS_X86 if has_symbol else KALLSYMS_X86.replace("bpf_ringbuf_output", "x")
    assert run_detect(Tree(tmp_path, release=release, kallsyms=syms)).ringbuf is ringbuf


@pytest.mark.parametrize("release, version", [
    ("6.12.9+bpo-amd64", (6, 12)), ("5.10.0", (5, 10)), ("4.19", (4, 19)), ("garbage", (0, 0)),
])
def test_version(release, version):
    assert KernelFeatures(release, "x86_64", False, None).version == version


def test_find_and_ensure_tracefs(tmp_path):
    assert find_tracefs(SysRoot(tmp_path)) is None
    with pytest.raises(KernelUnsupported, match="tracefs is not mounted"):
        ensure_tracefs(SysRoot(tmp_path))
    (tmp_path / "sys/kernel/tracing/events").mkdir(parents=True)
    assert ensure_tracefs(SysRoot(tmp_path)) == "/sys/kernel/tracing"


# ---- probes: strategies ----

def features(**kw) -> KernelFeatures:
    base = dict(release="6.1.0", arch="x86_64", btf=True, tracefs="/sys/kernel/tracing",
                syscall_tracepoints=set(SYSCALLS), tracepoints=set(TRACEPOINTS),
                kprobes=True, fentry=True, ringbuf=True, uprobes=True, syscall_prefix="__x64_sys_")
    base.update(kw)
    return KernelFeatures(**base)


def test_candidates_all_available_in_preference_order():
    assert PLAN_ORDER == ("fentry", "tracepoint", "kprobe")
    assert candidates(features(), "auto") == (["fentry", "tracepoint", "kprobe"], [])


def test_candidates_refusals_carry_reasons():
    f = features(fentry=False, fentry_reason="no kernel BTF (/sys/kernel/btf/vmlinux)",
                 kprobes=False, kprobes_reason="kernel built without CONFIG_KPROBES")
    assert candidates(f, "auto") == (
        ["tracepoint"],
        [("fentry", "no kernel BTF (/sys/kernel/btf/vmlinux)"),
         ("kprobe", "kernel built without CONFIG_KPROBES")])


def test_candidates_tracepoint_refusals():
    assert candidates(features(tracefs=None), "tracepoint") == \
        ([], [("tracepoint", "tracefs not mounted")])
    assert candidates(features(syscall_tracepoints=set()), "tracepoint") == \
        ([], [("tracepoint", "no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")])


def test_candidates_forced_mode_tries_only_that():
    assert candidates(features(), "kprobe") == (["kprobe"], [])
    assert candidates(features(fentry=False, fentry_reason="why"), "fentry") == ([], [("fentry", "why")])


def test_unknown_strategy():
    assert strategy_available(features(), "uprobe") == (False, "unknown strategy uprobe")


# ---- probes: plans ----

NO_PORTS = {"select.ports": [], "select.pids": [], "select.exe": []}     # everything traced
PORTS = {**NO_PORTS, "select.ports": [8000]}


def names(probes) -> list[str]:
    return [p.name for p in probes]


def test_plan_with_everything_present():
    plan = make_plan(features(), "tracepoint", NO_PORTS)
    assert plan.strategy == "tracepoint"
    assert plan.transport == "ringbuf"
    assert names(plan.syscalls) == [s for s in SYSCALLS if s != "bind"]
    assert names(plan.tracepoints) == TRACEPOINTS
    assert plan.skipped == []
    assert names(plan.uprobes) == [p.name for p in PROBES if p.kind == "uretprobe"]


def test_uprobes_missing_are_skipped():
    plan = make_plan(features(uprobes=False), "tracepoint", NO_PORTS)
    uprobes = [p.name for p in PROBES if p.kind == "uretprobe"]
    assert plan.uprobes == []
    assert plan.skipped == [(n, "no uprobes in this kernel") for n in uprobes]


@pytest.mark.parametrize("selection", [PORTS, {**NO_PORTS, "select.pids": [42]}, {**NO_PORTS, "select.exe": ["nginx"]}])
def test_bind_when_anything_is_selected(selection):
    """A selected port bound later selects its process; a traced process's bind tells
    the kernel side a port whose connections need their local end: either way."""
    assert "bind" in names(make_plan(features(), "fentry", selection).syscalls)


def test_no_bind_when_everything_is_traced():
    plan = make_plan(features(), "fentry", NO_PORTS)
    assert "bind" not in names(plan.syscalls)
    assert "bind" not in [n for n, _ in plan.skipped]


def test_plan_accepts_real_settings():
    settings = resolve({"select.ports": [8000]}, env={})
    assert "bind" in names(make_plan(features(), "kprobe", settings, settings["buffer"]).syscalls)


def test_optional_probes_missing_are_skipped_with_reasons():
    f = features(syscall_tracepoints=set(SYSCALLS) - {"recvmsg", "sendmsg", "bind"},
                 tracepoints=set(TRACEPOINTS) - {"sock:inet_sock_set_state"})
    plan = make_plan(f, "tracepoint", PORTS)
    assert plan.skipped == [
        ("recvmsg", "syscall recvmsg has no tracepoint hook here"),
        ("sendmsg", "syscall sendmsg has no tracepoint hook here"),
        ("bind", "syscall bind has no tracepoint hook here"),
        ("sock:inet_sock_set_state", "tracepoint sock:inet_sock_set_state not in this kernel"),
    ]
    assert "recvmsg" not in names(plan.syscalls)


@pytest.mark.parametrize("missing", [p.name for p in PROBES if p.required and p.kind == "syscall"])
def test_required_syscall_missing_is_fatal_and_named(missing):
    f = features(syscall_tracepoints=set(SYSCALLS) - {missing})
    with pytest.raises(KernelUnsupported) as err:
        make_plan(f, "tracepoint", NO_PORTS)
    assert f"required probe {missing} (" in str(err.value)
    assert f"syscall {missing} has no tracepoint hook here" in str(err.value)
    assert err.value.exit_code == 3


def test_required_tracepoint_missing_is_fatal_and_named():
    f = features(tracepoints=set(TRACEPOINTS) - {"sched:sched_process_fork"})
    with pytest.raises(KernelUnsupported, match=r"required probe sched:sched_process_fork \(children"):
        make_plan(f, "fentry", NO_PORTS)


def test_kprobe_and_fentry_plans_need_the_wrapper_prefix_not_tracepoints():
    f = features(syscall_tracepoints=set())
    assert names(make_plan(f, "kprobe", NO_PORTS).syscalls) == [s for s in SYSCALLS if s != "bind"]
    with pytest.raises(KernelUnsupported, match="required probe accept4 .*no kprobe hook here"):
        make_plan(features(syscall_prefix=None), "kprobe", NO_PORTS)


@pytest.mark.parametrize("ringbuf, buffer, transport", [
    (True, "auto", "ringbuf"), (False, "auto", "perf"), (True, "perf", "perf"),
    (True, "ringbuf", "ringbuf"),
])
def test_transport(ringbuf, buffer, transport):
    assert make_plan(features(ringbuf=ringbuf), "tracepoint", NO_PORTS, buffer).transport == transport


def test_ringbuf_on_an_old_kernel_is_refused():
    with pytest.raises(KernelUnsupported, match="ringbuf needs Linux 5.8\\+, this is 5.4.0-150"):
        make_plan(features(ringbuf=False, release="5.4.0-150"), "tracepoint", NO_PORTS, "ringbuf")


def test_probe_table_is_consistent():
    assert len({p.name for p in PROBES}) == len(PROBES)
    assert all(p.kind in ("syscall", "tracepoint", "uretprobe") for p in PROBES)
    assert all(":" in p.name for p in PROBES if p.kind == "tracepoint")
    assert {p.name for p in PROBES if p.entry_only} == {"close", "bind"}


def test_kallsyms_names_strip_the_module_column(tmp_path):
    Tree(tmp_path, kallsyms="ffffffffc0001000 t register_kprobe\t[kprobes_mod]\n"
                            "ffffffff81000000 T __x64_sys_read\n"
                            "malformed-line\n")
    found = kernel._kallsyms_names(SysRoot(tmp_path), {"register_kprobe", "__x64_sys_read", "absent"})
    assert found == {"register_kprobe", "__x64_sys_read"}


def btf_with_funcs(*names: str) -> bytes:
    """A minimal vmlinux BTF: one FUNC_PROTO (type 1) and a FUNC per name."""
    import struct

    strings = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    types = struct.pack("<III", 0, 13 << 24, 0)                 # FUNC_PROTO, no params, void
    at = 1
    for n in names:
        types += struct.pack("<III", at, 12 << 24, 1)           # FUNC -> proto
        at += len(n) + 1
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_btf_names_functions():
    idx = kernel.BtfIndex(btf_with_funcs("__x64_sys_read", "bpf_trampoline_link_prog"))
    assert idx.has_func("__x64_sys_read") and idx.has_func("bpf_trampoline_link_prog")
    assert not idx.has_func("__x64_sys_rea") and not idx.has_func("register_kprobe")


@pytest.mark.parametrize("kallsyms", [None, ""], ids=["unreadable", "empty"])
def test_hidden_kallsyms_falls_back_to_btf(tmp_path, x86, kallsyms):
    """A sandboxed agent (systemd's ProtectKernelTunables= mounts an empty file over
    /proc/kallsyms) still finds the syscall wrappers and trampolines by their BTF names."""
    tree = Tree(tmp_path, kallsyms=kallsyms)
    (tmp_path / "sys/kernel/btf/vmlinux").write_bytes(
        btf_with_funcs("__x64_sys_read", "bpf_trampoline_link_prog", "register_kprobe"))
    f = run_detect(tree)
    assert f.syscall_prefix == "__x64_sys_"
    assert (f.kprobes, f.fentry) == (True, True)


def test_hidden_kallsyms_and_btf_without_names(tmp_path, x86):
    tree = Tree(tmp_path, kallsyms=None)
    (tmp_path / "sys/kernel/btf/vmlinux").write_bytes(btf_with_funcs("something_else"))
    f = run_detect(tree)
    assert f.syscall_prefix is None
    assert f.kprobes_reason == "no syscall wrapper symbols known for x86_64"
