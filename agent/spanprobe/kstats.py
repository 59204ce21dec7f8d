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
import os
import platform
import struct

BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
# struct bpf_prog_info: recursion_misses (Linux 5.12+) is the u64 at this offset; the
# struct only ever grows, and the kernel says how much of it it filled in.
RECURSION_MISSES_AT = 208
RUN_TIME_NS_AT = 192             # run_time_ns (5.1+), counted while statistics are on
PROG_INFO_SIZE = 256


class MappedCounters:
    """An mmapable BPF array of u64 slots in shared memory: the loss counters, read; the
    control settings (enum sp_control), written with `writable`."""

    def __init__(self, fd: int, slots: int, writable: bool = False):
        self.slots = slots
        size = max(mmap.PAGESIZE, -(-slots * 8 // mmap.PAGESIZE) * mmap.PAGESIZE)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._mem = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)

    def read(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.slots}Q", self._mem, 0)

    def write(self, slot: int, value: int) -> None:
        """One store of an aligned 8-byte slot, which programs read with a load each."""
        struct.pack_into("<Q", self._mem, slot * 8, value)

    def close(self) -> None:
        self._mem.close()


class MappedPortSet:
    """The kernel side's `listen_ports` in shared memory: 8,192 u64 slots, a byte a port
    (port p is byte p & 7 of slot p >> 3, so byte p of the mapping). A port is added with
    one byte store, which neither a program's store to a neighbouring byte (a traced
    process's bind) nor a second writer can undo, as a read-modify-write of the slot could."""

    PORTS = 65536

    def __init__(self, fd: int):
        self._mem = mmap.mmap(fd, self.PORTS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def add(self, port: int) -> None:
        if not 0 < port < self.PORTS:
            raise ValueError(f"port {port} out of range")
        self._mem[port] = 1

    def close(self) -> None:
        self._mem.close()


@functools.cache
def _libc_syscall():
    """libc's syscall(2), looked up once (the counters are read every second)."""
    return ctypes.CDLL(None, use_errno=True).syscall


def _prog_info(call, nr: int, fd: int, need: int) -> bytes | None:
    """struct bpf_prog_info of one program, when the kernel filled at least `need` bytes."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, PROG_INFO_SIZE, ctypes.addressof(info)), 16)
    if call(ctypes.c_long(nr), ctypes.c_long(BPF_OBJ_GET_INFO_BY_FD), attr, ctypes.c_long(16)) != 0:
        return None
    if struct.unpack_from("<I", attr.raw, 4)[0] < need:
        return None
    return info.raw


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
        raw = _prog_info(call, nr, fd, RECURSION_MISSES_AT + 8)
        if raw is None:
            return None
        out[name] = struct.unpack_from("<Q", raw, RECURSION_MISSES_AT)[0]
    return out


def programs_run_ns(programs: dict[str, int], syscall=None, arch: str | None = None) -> int | None:
    """The kernel's account of the time these programs ran (name -> fd), in nanoseconds,
    summed: counted only while run-time statistics are on (enable_run_time_stats). None
    when the kernel would not say."""
    nr = BPF_SYSCALL.get(arch or platform.machine())
    if nr is None:
        return None
    call = syscall or _libc_syscall()
    total = 0
    for fd in programs.values():
        raw = _prog_info(call, nr, fd, RUN_TIME_NS_AT + 8)
        if raw is None:
            return None
        total += struct.unpack_from("<Q", raw, RUN_TIME_NS_AT)[0]
    return total


def enable_run_time_stats(syscall=None, arch: str | None = None) -> tuple[int | None, str | None]:
    """Turn the kernel's accounting of BPF programs' run time on for as long as the
    returned fd stays open (BPF_ENABLE_STATS, Linux 5.8+): (fd, None), or (None, why).
    Costs each run of every program two clock reads, so only a CPU budget asks for it."""
    nr = BPF_SYSCALL.get(arch or platform.machine())
    if nr is None:
        return None, f"no bpf(2) number known for {arch or platform.machine()}"
    call = syscall or _libc_syscall()
    attr = ctypes.create_string_buffer(struct.pack("<I", BPF_STATS_RUN_TIME), 8)
    fd = call(ctypes.c_long(nr), ctypes.c_long(BPF_ENABLE_STATS), attr, ctypes.c_long(8))
    if fd < 0:
        err = ctypes.get_errno()
        return None, f"BPF_ENABLE_STATS refused: {os.strerror(err) if err else 'unknown error'}"
    return fd, None
