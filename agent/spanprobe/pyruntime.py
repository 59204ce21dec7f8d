"""Where a CPython process keeps the current task's context, for linking outbound calls
of asyncio servers (uvicorn, Sanic, Tornado) to the request they serve.

The kernel sees one thread for every request an event loop serves. What tells requests
apart is the task: asyncio runs each task step inside the task's own `contextvars.Context`,
and the interpreter's per-thread state (PyThreadState) points at the context entered.
So the kernel side walks _PyRuntime -> interpreter -> its thread states, finds the
calling thread's by its native thread id and reads its `context` pointer; a uretprobe on
PyContext_CopyCurrent (called for every new task and callback) tells it which context
was created inside which, and so which server connection each context works for.

Nothing of the target is ever run (the agent's privileges would run with it). The layout
comes from the file the process really maps (opened through /proc/<pid>/map_files, its
device and inode checked against the mapping): its symbols (elf.py), its version
(`Py_Version`), its `_Py_DebugOffsets` (3.13+) and the per-version table
(cpython_layouts.py). Then it is checked against the live process through
/proc/<pid>/mem before the kernel side may use it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from . import cpython_layouts as cl
from .elf import ElfError, ElfFile
from .procfs import SysRoot

log = logging.getLogger("spanprobe.pyruntime")

MAX_CANDIDATES = 4        # files named python*/libpython* tried per process
MAX_THREADS = 1024        # thread states walked when verifying
USER_TOP = 1 << 47        # x86_64 user addresses lie below


@dataclass(frozen=True)
class Layout:
    """Offsets of one interpreter binary, as the kernel side's map `pyrt` takes them."""

    version: str
    binary: str            # the file holding _PyRuntime and PyContext_CopyCurrent
    runtime_rel: int       # _PyRuntime minus the binary's load base
    off_interp: int
    off_head: int
    off_next: int
    off_tid: int
    off_ctx: int


class NoLinking(Exception):
    """Why a process (or every process of a binary) gets no asyncio linking."""


@dataclass(frozen=True)
class Mapping:
    """One file-backed row of /proc/<pid>/maps."""

    start: int
    end: int
    offset: int
    dev: tuple[int, int]   # (major, minor)
    inode: int
    path: str


def parse_maps(text: str) -> list[Mapping]:
    """The file-backed mappings; rows that don't parse are skipped (counted by the caller
    as nothing found: a process that maps no interpreter just gets no linking)."""
    rows = []
    for line in text.splitlines():
        f = line.split(maxsplit=5)
        if len(f) < 6 or f[4] == "0":
            continue
        try:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            major, minor = (int(x, 16) for x in f[3].split(":"))
            rows.append(Mapping(lo, hi, int(f[2], 16), (major, minor), int(f[4]), f[5]))
        except ValueError:
            continue
    return rows


@dataclass(frozen=True)
class Interpreter:
    """What one interpreter file says about itself: cached per (dev, inode, size, mtime)."""

    version: str
    runtime_rel: int
    context_type_rel: int   # the exported PyContext_Type, for the ob_type check
    offsets: cl.Offsets
    has_cookie: bool        # 3.13+: _PyRuntime starts with "xdebugpy"


def _u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 8], "little")


def read_interpreter(elf: ElfFile) -> Interpreter:
    """The layout of one interpreter file, from its bytes alone; NoLinking says why not."""
    syms = elf.symbols({"_PyRuntime", "Py_Version", "PyContext_Type", "PyContext_CopyCurrent",
                        "PyContext_Enter", cl.DEBUG_BUILD_SYMBOL, cl.FREE_THREADED_SYMBOL})
    for name in ("_PyRuntime", "PyContext_Type", "PyContext_CopyCurrent", "PyContext_Enter"):
        if name not in syms:
            raise NoLinking(f"no symbol {name}")
    if "Py_Version" not in syms:
        raise NoLinking("no Py_Version symbol (Python older than 3.11?)")
    if syms["Py_Version"].size not in (4, 8):
        raise NoLinking(f"Py_Version of {syms['Py_Version'].size} bytes")
    hexversion = int.from_bytes(elf.read_at(syms["Py_Version"].value, 4), "little")
    major, minor, micro = hexversion >> 24, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF
    version = f"{major}.{minor}.{micro}"
    table = cl.LAYOUTS.get((major, minor))
    if table is None:
        raise NoLinking(f"Python {version}: no layout known for this version")
    if cl.DEBUG_BUILD_SYMBOL in syms:
        raise NoLinking(f"Python {version} debug build: its layout differs")
    if cl.FREE_THREADED_SYMBOL in syms:
        raise NoLinking(f"Python {version} free-threaded build: its layout differs")
    runtime = syms["_PyRuntime"]
    ctx_type = syms["PyContext_Type"]
    if not elf.maps(runtime.value, max(runtime.size, 8)) or not elf.maps(ctx_type.value, cl.OB_TYPE + 8):
        raise NoLinking("_PyRuntime or PyContext_Type outside the loaded segments")
    offsets = table.headers
    if table.debug is not None:
        offsets = _debug_offsets(elf, runtime.value, table.debug, hexversion, version, table.headers)
    return Interpreter(version, runtime.value - elf.link_base, ctx_type.value - elf.link_base,
                       offsets, table.debug is not None)


def _debug_offsets(elf: ElfFile, runtime: int, where: cl.DebugOffsetsLayout, hexversion: int,
                   version: str, headers: cl.Offsets) -> cl.Offsets:
    """The offsets the interpreter publishes at the start of _PyRuntime (3.13+), read
    from the file's initialised data; `context` still comes from the table."""
    raw = elf.read_at(runtime, where.size)
    if raw[:8] != cl.DEBUG_COOKIE:
        raise NoLinking(f"Python {version}: _PyRuntime does not start with the debug cookie")
    if _u64(raw, 8) != hexversion:
        raise NoLinking(f"Python {version}: debug offsets of version {_u64(raw, 8):#x}")
    if where.free_threaded is not None and _u64(raw, where.free_threaded):
        raise NoLinking(f"Python {version} free-threaded build: its layout differs")
    found = cl.Offsets(_u64(raw, where.runtime_interpreters_head), _u64(raw, where.interp_threads_head),
                       _u64(raw, where.thread_next), _u64(raw, where.thread_interp),
                       _u64(raw, where.thread_native_thread_id), headers.thread_context)
    if any(not 0 <= v < 1 << 16 or v % 8 for v in vars(found).values()):
        raise NoLinking(f"Python {version}: implausible debug offsets {found}")
    return found


class ProcessMemory:
    """Bounded 8-byte reads of a process's memory through /proc/<pid>/mem."""

    def __init__(self, root: SysRoot, pid: int):
        try:
            self.fd = os.open(root.path("proc", str(pid), "mem"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NoLinking(f"cannot read the memory of pid {pid}: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def bytes(self, addr: int, length: int) -> bytes:
        if not 0 < addr < USER_TOP - length:
            raise NoLinking(f"address {addr:#x} outside user space")
        try:
            data = os.pread(self.fd, length, addr)
        except OSError as exc:
            raise NoLinking(f"unreadable address {addr:#x}: {exc.strerror}") from None
        if len(data) != length:
            raise NoLinking(f"short read at {addr:#x}")
        return data

    def pointer(self, addr: int, what: str) -> int:
        value = _u64(self.bytes(addr, 8), 0)
        if value and (value % 8 or value >= USER_TOP):
            raise NoLinking(f"{what} {value:#x} is not a pointer")
        return value


def verify(root: SysRoot, pid: int, interp: Interpreter, runtime: int, context_type: int) -> None:
    """Check the layout against the live process: the interpreter pointer, its thread list
    reaching a thread of this process, each thread state pointing back at the interpreter
    and each context set being a PyContext. Raises NoLinking on any mismatch."""
    off = interp.offsets
    try:
        tids = {int(n) for n in os.listdir(root.path("proc", str(pid), "task")) if n.isdigit()}
    except OSError as exc:
        raise NoLinking(f"cannot list the threads of pid {pid}: {exc.strerror}") from None
    mem = ProcessMemory(root, pid)
    try:
        if interp.has_cookie and mem.bytes(runtime, 8) != cl.DEBUG_COOKIE:
            raise NoLinking("no debug cookie at _PyRuntime in the process")
        main = mem.pointer(runtime + off.runtime_interpreters_head, "interpreter")
        if not main:
            raise NoLinking("no interpreter in _PyRuntime")
        ts = mem.pointer(main + off.interp_threads_head, "thread state")
        seen: set[int] = set()
        matched = False
        while ts:
            if ts in seen or len(seen) >= MAX_THREADS:
                raise NoLinking("thread state list loops or is too long")
            seen.add(ts)
            if mem.pointer(ts + off.thread_interp, "thread's interpreter") != main:
                raise NoLinking("a thread state does not point back at its interpreter")
            matched |= _u64(mem.bytes(ts + off.thread_native_thread_id, 8), 0) in tids
            ctx = mem.pointer(ts + off.thread_context, "context")
            if ctx and mem.pointer(ctx + cl.OB_TYPE, "context's type") != context_type:
                raise NoLinking("a thread's context is not a PyContext")
            ts = mem.pointer(ts + off.thread_next, "next thread state")
        if not matched:
            raise NoLinking("no thread state carries a thread id of the process")
    finally:
        mem.close()


class Calibrations:
    """Interpreter layouts, read once per mapped file (device, inode, size, mtime) and
    checked against every process before it is used."""

    def __init__(self, root: SysRoot):
        self.root = root
        self.by_file: dict[tuple[int, int, int, int], Interpreter | NoLinking] = {}
        self.warned: set[tuple] = set()

    def for_process(self, pid: int, exe: str | None) -> tuple[Layout, int] | None:
        """(layout, absolute _PyRuntime address in pid), or None if not a usable Python.

        `exe` only names the process in logs: which file holds the interpreter is read
        from the mappings (an executable or a libpython3.X.so, whatever the process is
        called)."""
        maps = parse_maps(self.root.read_text("proc", str(pid), "maps") or "")
        candidates = [m for m in maps if m.offset == 0 and _named_like_python(m.path)]
        for mapping in candidates[:MAX_CANDIDATES]:
            try:
                key, found = self._interpreter(pid, mapping)
            except NoLinking as exc:
                self._warn(("open", mapping.dev, mapping.inode), pid, exe, mapping.path, exc)
                return None
            if found is None:
                continue                      # maps no _PyRuntime: the next candidate may
            try:
                if isinstance(found, NoLinking):
                    raise found
                layout = self._layout(pid, mapping, found)
            except NoLinking as exc:
                self._warn(key, pid, exe, mapping.path, exc)
                return None
            return layout, mapping.start + found.runtime_rel
        return None

    def _interpreter(self, pid: int, mapping: Mapping):
        """(cache key, Interpreter or the NoLinking it got), or (key, None) when the file
        defines no _PyRuntime. Reads the mapped file itself, never a path resolved again."""
        if mapping.path.endswith(" (deleted)"):
            raise NoLinking("the mapped file was deleted or replaced since it was mapped")
        fd = self._open_mapped(pid, mapping)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in self.by_file:
                self.by_file[key] = self._read_file(fd, st.st_size, mapping.path)
            return key, self.by_file[key]
        finally:
            os.close(fd)

    def _open_mapped(self, pid: int, mapping: Mapping) -> int:
        """A read-only descriptor of the very file the mapping shows. /proc/<pid>/map_files
        opens the mapped file itself but needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE);
        without, the path is opened in the process's root with O_PATH (which opens no
        device and reads nothing), checked to be a regular file with the mapping's device
        and inode, and only then reopened for reading through that descriptor (so the
        file read is the file checked, whatever happens to the path meanwhile)."""
        link = self.root.path("proc", str(pid), "map_files", f"{mapping.start:x}-{mapping.end:x}")
        try:
            fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            fd = None
        if fd is not None:
            if _is_mapped_file(os.fstat(fd), mapping):
                return fd
            os.close(fd)
            raise NoLinking("the opened file is not the mapped one (device or inode differ)")
        inside = self.root.path("proc", str(pid), "root", mapping.path)
        try:
            handle = os.open(inside, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise NoLinking(f"cannot open the mapped file: {exc.strerror}") from None
        try:
            if not _is_mapped_file(os.fstat(handle), mapping):
                raise NoLinking("the file at the mapped path is not the mapped one (replaced?)")
            # the agent's own descriptor: reopening it reads the inode just checked
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise NoLinking(f"cannot reopen the mapped file: {exc.strerror}") from None
        finally:
            os.close(handle)

    @staticmethod
    def _read_file(fd: int, size: int, path: str) -> Interpreter | NoLinking | None:
        try:
            elf = ElfFile(fd, size)
            if "_PyRuntime" not in elf.symbols({"_PyRuntime"}):
                return None
            found = read_interpreter(elf)
        except ElfError as exc:
            return NoLinking(f"unreadable ELF file: {exc}")
        except NoLinking as exc:
            return exc
        log.info("read the layout of %s (Python %s) from its symbols", path, found.version)
        return found

    def _layout(self, pid: int, mapping: Mapping, found: Interpreter) -> Layout:
        """The layout for the loader, once the live process agrees with it and the path
        the uprobes attach to leads to the file the process maps."""
        try:
            st = os.stat(mapping.path)
        except OSError as exc:
            raise NoLinking(f"the uprobes' path is unusable: {exc.strerror}") from None
        if not _is_mapped_file(st, mapping):
            raise NoLinking("the path leads to another file than the mapped one "
                            "(another mount namespace, or replaced)")
        off = found.offsets
        verify(self.root, pid, found, mapping.start + found.runtime_rel,
               mapping.start + found.context_type_rel)
        return Layout(found.version, mapping.path, found.runtime_rel, off.runtime_interpreters_head,
                      off.interp_threads_head, off.thread_next, off.thread_native_thread_id,
                      off.thread_context)

    def _warn(self, key: tuple, pid: int, exe: str | None, path: str, exc: NoLinking) -> None:
        if key in self.warned:
            log.debug("no asyncio linking for pid %d (%s): %s", pid, path, exc)
            return
        self.warned.add(key)
        log.warning("no asyncio linking for pid %d (%s, file %s): %s", pid, exe, path, exc)


def _is_mapped_file(st: os.stat_result, mapping: Mapping) -> bool:
    return (stat.S_ISREG(st.st_mode) and st.st_ino == mapping.inode
            and (os.major(st.st_dev), os.minor(st.st_dev)) == mapping.dev)


def _named_like_python(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith("python") or name.startswith("libpython")
