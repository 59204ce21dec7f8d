"""Where CPython keeps what the kernel side walks, per minor version, for x86_64 builds
with the GIL and without debugging (the only ones linked; others are refused by name).

How the numbers were obtained: tests/support/cpython_offsets.c, compiled with
`gcc -std=c11 -DSP_DEBUG_OFFSETS` (3.13+) against each version's own headers
(`-I<include>/python3.X`, internal headers enabled by Py_BUILD_CORE), prints offsetof()
of every field below. Headers used, all non-debug x86_64 builds:
- 3.11: Debian bookworm python3.11-dev 3.11.2 (/usr/include/python3.11) and pyenv 3.11.7:
  same values.
- 3.12: pyenv 3.12.1 (no Debian suite carries 3.12).
- 3.13: Debian trixie libpython3.13-dev 3.13.5 and pyenv 3.13.0: same values.
- 3.14: Debian sid libpython3.14-dev 3.14.10.

From 3.13 on the interpreter publishes most of these offsets itself in `_Py_DebugOffsets`
(the first member of `_PyRuntime`, statically initialised), and those are used; the
table then supplies only where in that struct each offset sits and the thread state's
`context`, which the debug offsets don't carry. The header values of the published
fields are kept too, so the tests can check the debug offsets read from real binaries
against them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEBUG_COOKIE = b"xdebugpy"
OB_TYPE = 8        # PyObject: ob_refcnt (8 bytes), then ob_type, in GIL builds


@dataclass(frozen=True)
class Offsets:
    """Byte offsets of the fields the kernel side and the verification read."""

    runtime_interpreters_head: int   # _PyRuntimeState.interpreters.head
    interp_threads_head: int         # PyInterpreterState.threads.head
    thread_next: int                 # PyThreadState.next
    thread_interp: int               # PyThreadState.interp
    thread_native_thread_id: int     # PyThreadState.native_thread_id (unsigned long)
    thread_context: int              # PyThreadState.context


@dataclass(frozen=True)
class DebugOffsetsLayout:
    """Where `_Py_DebugOffsets` stores each offset (bytes from its start; each a uint64)."""

    size: int                        # sizeof(_Py_DebugOffsets): the bytes to read
    free_threaded: int | None        # 3.14+: nonzero in free-threaded builds
    runtime_interpreters_head: int
    interp_threads_head: int
    thread_next: int
    thread_interp: int
    thread_native_thread_id: int


@dataclass(frozen=True)
class VersionLayout:
    headers: Offsets                 # from that version's headers (see the module docstring)
    debug: DebugOffsetsLayout | None  # 3.13+: read the offsets from the binary instead


LAYOUTS: dict[tuple[int, int], VersionLayout] = {
    (3, 11): VersionLayout(Offsets(40, 16, 8, 16, 160, 224), None),
    (3, 12): VersionLayout(Offsets(40, 72, 8, 16, 144, 208), None),
    (3, 13): VersionLayout(Offsets(632, 7344, 8, 16, 160, 208),
                           DebugOffsetsLayout(584, None, 40, 72, 168, 176, 200)),
    (3, 14): VersionLayout(Offsets(808, 7344, 8, 16, 160, 208),
                           DebugOffsetsLayout(760, 16, 40, 72, 192, 200, 224)),
}

# Exported only by builds the table doesn't describe: refcount debugging (Py_REF_DEBUG,
# implied by Py_DEBUG) and, in 3.13+, free threading (Py_GIL_DISABLED).
DEBUG_BUILD_SYMBOL = "_Py_NegativeRefcount"
FREE_THREADED_SYMBOL = "_Py_MergeZeroLocalRefcount"
