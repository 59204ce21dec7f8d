"""Quick checks (no root, no QEMU) for what the kernel matrix taught the agent about fentry:
Debian 5.10's BTF has struct pt_regs only as a forward declaration for the socket syscall
wrappers, and the verifier then refuses fentry programs that read their argument."""

from __future__ import annotations

import struct

from spanprobe.kernel import BtfIndex, KernelFeatures
from spanprobe.probes import make_plan, strategy_available


def _btf(pt_regs_kind: int) -> bytes:
    strs = b"\0pt_regs\0regs\0__x64_sys_accept4\0__x64_sys_accept\0"
    off = {name: strs.index(b"\0" + name + b"\0") + 1
           for name in (b"pt_regs", b"regs", b"__x64_sys_accept4", b"__x64_sys_accept")}
    t = b""
    if pt_regs_kind == 4:   # id 1: struct pt_regs { } (no members needed here), size 168
        t += struct.pack("<III", off[b"pt_regs"], 4 << 24, 168)
    else:                   # id 1: forward declaration
        t += struct.pack("<III", off[b"pt_regs"], 7 << 24, 0)
    t += struct.pack("<III", 0, 10 << 24, 1)                 # id 2: const -> 1
    t += struct.pack("<III", 0, 2 << 24, 2)                  # id 3: ptr -> 2
    t += struct.pack("<III", 0, (13 << 24) | 1, 0)           # id 4: func_proto, 1 param
    t += struct.pack("<II", off[b"regs"], 3)
    t += struct.pack("<III", off[b"__x64_sys_accept4"], 12 << 24, 4)   # id 5: func
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(t), len(t), len(strs))
    return hdr + t + strs


def test_pointee_kind_struct_and_fwd():
    assert BtfIndex(_btf(4)).pointee_kind("__x64_sys_accept4") == "struct"
    assert BtfIndex(_btf(7)).pointee_kind("__x64_sys_accept4") == "fwd"
    assert BtfIndex(_btf(7)).pointee_kind("__x64_sys_accept") is None      # a string, no FUNC
    assert BtfIndex(_btf(7)).pointee_kind("__x64_sys_nothing") is None


def _feats(**kw) -> KernelFeatures:
    f = KernelFeatures(release="5.10.0-32-amd64", arch="x86_64", btf=True, tracefs="/sys/kernel/tracing",
                       fentry=True, syscall_prefix="__x64_sys_", ringbuf=True, **kw)
    f.tracepoints = {"sched:sched_process_exec", "sched:sched_process_fork", "sched:sched_process_exit"}
    return f


def test_fentry_unavailable_when_a_required_wrapper_is_unreadable():
    ok, why = strategy_available(_feats(fentry_unreadable={"accept4": "fwd", "connect": "fwd"}), "fentry")
    assert not ok and "forward" in why and "accept4" in why


def test_fentry_skips_an_optional_unreadable_wrapper():
    settings = {"select.ports": [8000]}
    plan = make_plan(_feats(fentry_unreadable={"accept": "fwd"}), "fentry", settings)
    assert "accept" not in [p.name for p in plan.syscalls]
    assert any(name == "accept" and "forward declaration" in why for name, why in plan.skipped)
    assert strategy_available(_feats(fentry_unreadable={"accept": "fwd"}), "fentry")[0]
