"""What the agent gives back after compiling (spanprobe.memory): which mappings it drops,
read from a fake /proc/self/smaps, with libc's calls recorded instead of made; and how
its heap is settled for the loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spanprobe import memory
from spanprobe.memory import MADV_DONTNEED, compiler_code, mappings, release_after_compile
from spanprobe.procfs import SysRoot


def block(range_, perms, path, rss, private_dirty=0, anonymous=0):
    return (f"{range_} {perms} 00000000 08:01 1234 {path}\n"
            f"Size:               4096 kB\nRss:             {rss} kB\nPss:             {rss} kB\n"
            f"Shared_Clean:          0 kB\nShared_Dirty:          0 kB\nPrivate_Clean:   {rss} kB\n"
            f"Private_Dirty:   {private_dirty} kB\nAnonymous:       {anonymous} kB\n"
            "VmFlags: rd ex mr mw me sd\n")


SMAPS = "".join([
    block("7f0000000000-7f0000400000", "r-xp", "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", 47904),
    block("7f0000400000-7f0000500000", "r--p", "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", 7612),
    block("7f0000500000-7f0000600000", "rw-p", "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", 900, 900),
    block("7f0001000000-7f0001400000", "r-xp", "/usr/lib/llvm-14/lib/libclang-cpp.so.14", 26060),
    # a compiler page that no longer matches its file (a debugger's breakpoint): kept
    block("7f0002000000-7f0002001000", "r-xp", "/usr/lib/llvm-19/lib/libclang.so.19.1", 4, 4, 4),
    block("7f0003000000-7f0003100000", "r-xp", "/usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0", 1532),
    block("7f0004000000-7f0004100000", "r-xp", "/usr/bin/python3.11", 2756),
    block("7f0005000000-7f0005100000", "r-xp", "/tmp/libLLVMish/python3", 10),
    block("7f0006000000-7f0006100000", "rw-p", "", 11480, 11480, 11480),
    block("7f0007000000-7f0007100000", "r-xp", "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1 (deleted)", 0),
])


def fake_root(tmp_path, smaps=SMAPS):
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "smaps").write_text(smaps)
    return SysRoot(tmp_path)


def test_mappings_are_read_with_their_changed_pages():
    maps = mappings(SMAPS)
    assert len(maps) == 10
    llvm = maps[0]
    assert (llvm.start, llvm.end, llvm.perms, llvm.rss_kib, llvm.changed_kib) == \
        (0x7f0000000000, 0x7f0000400000, "r-xp", 47904, 0)
    assert maps[4].changed_kib == 8 and maps[8].path == ""


def test_only_the_compilers_unchanged_code_is_chosen():
    chosen = compiler_code(mappings(SMAPS))
    assert [(m.path.rsplit("/", 1)[1], m.perms) for m in chosen] == \
        [("libLLVM-14.so.1", "r-xp"), ("libclang-cpp.so.14", "r-xp")]


def test_release_trims_the_heap_and_drops_the_chosen_ranges(tmp_path):
    calls, trims = [], []
    done = release_after_compile(fake_root(tmp_path), madvise=lambda *a: calls.append(a) or 0,
                                 malloc_trim=lambda pad: trims.append(pad) or 1)
    assert trims == [0]
    assert calls == [(0x7f0000000000, 0x400000, MADV_DONTNEED), (0x7f0001000000, 0x400000, MADV_DONTNEED)]
    assert done.heap_trimmed and done.code_dropped_kib == 47904 + 26060 and not done.errors
    assert done.describe() == "after compiling: heap trimmed, 72.2 MiB of compiler code dropped"


def test_a_refused_range_is_said_and_not_counted(tmp_path):
    done = release_after_compile(fake_root(tmp_path), madvise=lambda start, size, advice: -1,
                                 malloc_trim=lambda pad: 1)
    assert done.code_dropped_kib == 0
    assert len(done.errors) == 2 and "libLLVM-14.so.1" in done.errors[0]


def test_unreadable_smaps_is_said(tmp_path):
    done = release_after_compile(SysRoot(tmp_path), madvise=lambda *a: 0, malloc_trim=lambda pad: 1)
    assert done.heap_trimmed and done.errors == ["/proc/self/smaps unreadable"]


def test_this_process_really_gives_back_memory():
    """libc's own calls on this very process: nothing breaks, and what is chosen is dropped
    (a test process that loaded no compiler has nothing to drop)."""
    done = release_after_compile()
    assert done.heap_trimmed and not done.errors


def test_settle_heap_freezes_what_start_up_made_and_leaves_collections_to_the_loop():
    """In a child interpreter (freezing this one would keep the test run's objects for good):
    the objects alive at the call leave the collector's passes, allocations no longer start
    a collection, and collect_cycles (the loop's, on its clock) still finds a cycle."""
    code = ("import gc, sys; from spanprobe import memory\n"
            "kept = [[i] for i in range(1000)]\n"
            "assert gc.get_freeze_count() == 0 and gc.isenabled()\n"
            "memory.settle_heap()\n"
            "before = gc.get_stats()[0]['collections']\n"
            "for _ in range(100000):\n"
            "    cycle = []; cycle.append(cycle)\n"
            "print(gc.get_freeze_count() >= 1000, gc.isenabled(),\n"
            "      gc.get_stats()[0]['collections'] == before, memory.collect_cycles() >= 99999)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(memory.__file__).parents[1])})
    assert out.stdout.split() == ["True", "False", "True", "True"], out.stderr
