"""What the kernel side counted, read without a bpf(2) map operation.

The kernel runs every map lookup, update or delete made through bpf(2) with the CPU's
`bpf_prog_active` raised and only migration disabled. On a preemptible kernel (Debian's
default from 7.x is PREEMPT_LAZY) such a call can be preempted there, and every tracepoint
or kprobe program that runs on that CPU meanwhile is skipped: no event, nothing counted
but the program's `recursion_misses`. So the agent reads its loss counters through mmap(2)
of an mmapable array (no syscall at all), and reads the kernel's own count of skipped runs
per program (BPF_OBJ_GET_INFO_BY_FD, which does not raise `bpf_prog_active`), so that what
anyone's map calls cost the tracing is counted, not silent.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import struct

BPF_OBJ_GET_INFO_BY_FD = 15
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
# struct bpf_prog_info: recursion_misses (Linux 5.12+) is the u64 at this offset; the
# struct only ever grows, and the kernel says how much of it it filled in.
RECURSION_MISSES_AT = 208
PROG_INFO_SIZE = 256


class MappedCounters:
    """An mmapable BPF array of u64 counters, read from shared memory."""

    def __init__(self, fd: int, slots: int):
        self.slots = slots
        size = max(mmap.PAGESIZE, -(-slots * 8 // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)

    def read(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.slots}Q", self._mem, 0)

    def close(self) -> None:
        self._mem.close()


@functools.cache
def _libc_syscall():
    """libc's syscall(2), looked up once (the counters are read every second)."""
    return ctypes.CDLL(None, use_errno=True).syscall


def program_misses(programs: dict[str, int], syscall=None, arch: str | None = None) -> dict[str, int] | None:
    """The kernel's count of skipped runs per program (name -> fd given): which hooks
    lost events says what the loss cost, a fork seen late or a request's read. None when
    this kernel does not count them (before 5.12), the architecture is not known here, or
    the kernel would not say."""
    nr = BPF_SYSCALL.get(arch or platform.machine())
    if nr is None:
        return None
    call = syscall or _libc_syscall()
    out = {}
    for name, fd in programs.items():
        info = ctypes.create_string_buffer(PROG_INFO_SIZE)
        attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, PROG_INFO_SIZE, ctypes.addressof(info)), 16)
        if call(ctypes.c_long(nr), ctypes.c_long(BPF_OBJ_GET_INFO_BY_FD), attr, ctypes.c_long(16)) != 0:
            return None
        if struct.unpack_from("<I", attr.raw, 4)[0] < RECURSION_MISSES_AT + 8:
            return None
        out[name] = struct.unpack_from("<Q", info.raw, RECURSION_MISSES_AT)[0]
    return out
