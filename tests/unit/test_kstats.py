"""kstats: the loss counters read from shared memory, and the kernel's count of skipped
program runs from BPF_OBJ_GET_INFO_BY_FD (the syscall driven here by a stand-in that
answers as the kernel's ABI does: it fills `info_len` bytes and says how many)."""

from __future__ import annotations

import ctypes
import mmap
import struct

from spanprobe import kstats


def test_counters_are_read_from_the_mapped_array(tmp_path):
    f = tmp_path / "array"
    f.write_bytes(struct.pack("<7Q", 1, 2, 3, 4, 5, 6, 7) + bytes(mmap.PAGESIZE - 56))
    with f.open("r+b") as fh:
        c = kstats.MappedCounters(fh.fileno(), 7)
        assert c.read() == (1, 2, 3, 4, 5, 6, 7)
        fh.seek(8)
        fh.write(struct.pack("<Q", 99))     # a kernel-side increment, seen without a call
        fh.flush()
        assert c.read()[1] == 99
        c.close()


def kernel(misses: dict[int, int], filled: int = 232, fail: set[int] = frozenset()):
    calls = []

    def syscall(nr, cmd, attr, size):
        calls.append((nr.value, cmd.value, size.value))
        fd, info_len, info_at = struct.unpack_from("<IIQ", attr.raw, 0)
        if fd in fail:
            return -1
        n = min(info_len, filled)
        blob = bytearray(n)
        if n >= kstats.RECURSION_MISSES_AT + 8:
            struct.pack_into("<Q", blob, kstats.RECURSION_MISSES_AT, misses[fd])
        ctypes.memmove(info_at, bytes(blob), n)
        struct.pack_into("<I", attr, 4, n)
        return 0
    return syscall, calls


def test_program_misses_are_read_per_program():
    syscall, calls = kernel({10: 3, 11: 0, 12: 4})
    assert kstats.program_misses({"a": 10, "b": 11, "c": 12}, syscall=syscall, arch="x86_64") == \
        {"a": 3, "b": 0, "c": 4}
    assert calls == [(321, kstats.BPF_OBJ_GET_INFO_BY_FD, 16)] * 3


def test_a_kernel_that_does_not_count_them_says_unknown_not_zero():
    syscall, _ = kernel({10: 0}, filled=200)             # struct bpf_prog_info before 5.12
    assert kstats.program_misses({"a": 10}, syscall=syscall, arch="x86_64") is None
    syscall, _ = kernel({10: 0}, fail={10})
    assert kstats.program_misses({"a": 10}, syscall=syscall, arch="x86_64") is None
    assert kstats.program_misses({"a": 10}, syscall=syscall, arch="riscv64") is None


def test_no_programs_no_misses():
    syscall, calls = kernel({})
    assert kstats.program_misses({}, syscall=syscall, arch="aarch64") == {} and calls == []
