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


def test_control_slots_are_written_through_the_mapping(tmp_path):
    f = tmp_path / "control"
    f.write_bytes(bytes(mmap.PAGESIZE))
    with f.open("r+b") as fh:
        c = kstats.MappedCounters(fh.fileno(), 1, writable=True)
        c.write(0, 750)
        assert c.read() == (750,)
        c.close()
    assert struct.unpack_from("<Q", f.read_bytes(), 0)[0] == 750      # what a program would load


def test_programs_run_time_is_summed_and_unknown_when_a_kernel_will_not_say():
    def syscall(nr, cmd, attr, size):
        fd, info_len, info_at = struct.unpack_from("<IIQ", attr.raw, 0)
        blob = bytearray(232)
        struct.pack_into("<Q", blob, kstats.RUN_TIME_NS_AT, fd * 1000)
        ctypes.memmove(info_at, bytes(blob), 232)
        struct.pack_into("<I", attr, 4, 232 if fd != 13 else 100)
        return 0
    assert kstats.programs_run_ns({"a": 10, "b": 11}, syscall=syscall, arch="x86_64") == 21000
    assert kstats.programs_run_ns({"a": 13}, syscall=syscall, arch="x86_64") is None


def test_run_time_statistics_are_asked_for_with_bpf_enable_stats():
    asked = []

    def syscall(nr, cmd, attr, size):
        asked.append((nr.value, cmd.value, struct.unpack_from("<I", attr.raw, 0)[0]))
        return 42
    assert kstats.enable_run_time_stats(syscall=syscall, arch="x86_64") == (42, None)
    assert asked == [(321, kstats.BPF_ENABLE_STATS, kstats.BPF_STATS_RUN_TIME)]
    fd, why = kstats.enable_run_time_stats(syscall=lambda *a: -1, arch="x86_64")
    assert fd is None and why.startswith("BPF_ENABLE_STATS refused")
