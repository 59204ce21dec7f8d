"""Memory the agent gives back once its probes are compiled and loaded.

bcc compiles the kernel side with clang and LLVM inside the agent's own process, once, at
start. Measured on this machine (bcc 0.26, LLVM 14), the agent's RSS went from 26 MiB
before the compile to 171 MiB after it, and stayed there:

* ~36 MiB of heap the compiler freed, which glibc keeps for the process;
* ~74 MiB of clang's and LLVM's machine code (libLLVM, libclang-cpp), mapped from their
  files and counted in the RSS while mapped, though the agent never runs it again.

So after loading: `malloc_trim` returns the freed heap, and the pages of the compiler's
executable mappings are dropped from the process (madvise MADV_DONTNEED). Only mappings
whose pages all still match their file are dropped (no dirty or anonymous page, which is
what a relocated or patched page would be): a dropped page loses nothing, and should
anything run that code again, the kernel reads it back from the page cache. Nothing here
is needed for tracing, so a failure is logged and the agent goes on.

Then the heap is settled for the loop (`settle_heap`): what start-up made is kept out of
the cyclic garbage collector's passes, and the collector runs on the loop's clock
(`collect_cycles`) instead of after every so many allocations.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from .procfs import SysRoot

log = logging.getLogger("spanprobe.memory")

MADV_DONTNEED = 4
# the compiler bcc links: libLLVM-14.so.1, libLLVM.so.19.1, libclang-cpp.so.14, libclang.so
COMPILER_LIBRARY = re.compile(r"/lib(?:LLVM|clang)[^/]*\.so[^/]*$")
# The loop frees what it allocates by reference counting (streams._unwire keeps
# connections out of cycles), so collections triggered by allocations found nothing and
# cost a few µs a span: at CPython's default (a pass every 700 net allocations) and still
# at 20,000 (bench/span_cost.py, keep-alive: 39.5 µs a span with them, 36.0 without).
# Instead the loop collects every GC_EVERY_S, which bounds what a cycle made by mistake
# can hold to what one second makes.
GC_EVERY_S = 1.0
_RANGE = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+ *(.*)$")


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str               # rwxp
    path: str
    rss_kib: int
    changed_kib: int         # pages that no longer match the file: dirty or anonymous


def mappings(smaps: str) -> list[Mapping]:
    """/proc/<pid>/smaps, one Mapping per range."""
    out: list[Mapping] = []
    head = None
    fields: dict[str, int] = {}

    def flush():
        if head is not None:
            start, end, perms, path = head
            changed = (fields.get("Private_Dirty", 0) + fields.get("Shared_Dirty", 0)
                       + fields.get("Anonymous", 0))
            out.append(Mapping(start, end, perms, path, fields.get("Rss", 0), changed))

    for line in smaps.splitlines():
        m = _RANGE.match(line)
        if m is not None:
            flush()
            head = (int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4).strip())
            fields = {}
            continue
        name, sep, rest = line.partition(":")
        value = rest.split()
        if sep and value and value[0].isdigit():
            fields[name] = int(value[0])
    flush()
    return out


def compiler_code(maps: list[Mapping]) -> list[Mapping]:
    """The compiler's executable mappings whose resident pages can be dropped without
    losing anything."""
    return [m for m in maps if m.perms[:3] == "r-x" and COMPILER_LIBRARY.search(m.path)
            and m.rss_kib and not m.changed_kib]


@dataclass
class Released:
    heap_trimmed: bool = False
    code_dropped_kib: int = 0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"after compiling: heap {'trimmed' if self.heap_trimmed else 'not trimmed'}, "
                f"{self.code_dropped_kib / 1024:.1f} MiB of compiler code dropped")
        return text + (f" ({'; '.join(self.errors)})" if self.errors else "")


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def release_after_compile(root: SysRoot | None = None,
                          madvise: Callable[[int, int, int], int] | None = None,
                          malloc_trim: Callable[[int], int] | None = None) -> Released:
    """Give back the compiler's heap and code (this module's docstring). `root` is where
    /proc is read; `madvise` and `malloc_trim` are libc's unless a test passes others."""
    root = root or SysRoot("/")
    done = Released()
    if madvise is None or malloc_trim is None:
        try:
            libc = _libc()
            madvise = madvise or libc.madvise
            malloc_trim = malloc_trim or getattr(libc, "malloc_trim", None)
        except (OSError, AttributeError) as exc:
            done.errors.append(f"no libc: {exc}")
            return done
    if malloc_trim is not None:       # glibc only
        malloc_trim(0)
        done.heap_trimmed = True
    smaps = root.read_text("proc", "self", "smaps")
    if smaps is None:
        done.errors.append("/proc/self/smaps unreadable")
        return done
    for m in compiler_code(mappings(smaps)):
        if madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            done.code_dropped_kib += m.rss_kib
        else:
            done.errors.append(f"madvise {m.path} failed: errno {ctypes.get_errno()}")
    return done


def settle_heap() -> None:
    """Once the agent is ready: the ~40,000 objects of start-up (bcc, the SDK's exporters,
    gRPC), which live as long as the agent, are frozen out of every later collection, and
    allocations stop triggering collections: the loop calls collect_cycles instead."""
    gc.collect()
    gc.freeze()
    gc.disable()


def collect_cycles() -> int:
    """One full collection (every GC_EVERY_S, from the loop): the objects found unreachable."""
    return gc.collect()
