"""Where a CPython process keeps the current task's context, for linking outbound calls
of asyncio servers (uvicorn, Sanic, Tornado) to the request they serve.

The kernel sees one thread for every request an event loop serves. What tells requests
apart is the task: asyncio runs each task step inside the task's own `contextvars.Context`,
and the interpreter's per-thread state (PyThreadState) points at the context entered.
So the kernel side walks _PyRuntime -> main interpreter -> its thread states, finds the
calling thread's by its native thread id and reads its `context` pointer; a uretprobe on
PyContext_CopyCurrent (called for every new task and callback) tells it which context
was created inside which, and so which server connection each context works for.

Struct layouts change between Python versions, so no offset is written down here:
`calibrate()` runs the target's own interpreter on a short script that finds each offset
by looking for known values (its own thread state, thread id and current context) and
checks them twice, with a second thread and a second context.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass

from .procfs import SysRoot

log = logging.getLogger("spanprobe.pyruntime")

# Runs inside the target's interpreter: standard library only, prints one JSON line.
CALIBRATION = r'''
import ctypes, contextvars, json, sys, threading
api = ctypes.pythonapi
api.PyThreadState_Get.restype = ctypes.c_void_p
api.PyInterpreterState_Main.restype = ctypes.c_void_p
W = lambda a: ctypes.c_uint64.from_address(a).value
def scan(base, value, span):
    return [o for o in range(0, span, 8) if W(base + o) == value]
runtime = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
interp = api.PyInterpreterState_Main()
main_ts = api.PyThreadState_Get()
box, ready, done = {}, threading.Event(), threading.Event()
def worker():
    box["ts"] = api.PyThreadState_Get(); box["tid"] = threading.get_native_id()
    ready.set(); done.wait()
t = threading.Thread(target=worker); t.start(); ready.wait()
try:
    off_interp = scan(runtime, interp, 4096)
    off_head = scan(interp, box["ts"], 65536)         # newest thread first
    off_next = scan(box["ts"], main_ts, 64)
    tid_main = threading.get_native_id()
    off_tid = [o for o in range(0, 1024, 8) if W(main_ts + o) == tid_main and W(box["ts"] + o) == box["tid"]]
finally:
    done.set(); t.join()
c1, c2 = contextvars.copy_context(), contextvars.copy_context()
o1 = c1.run(lambda: scan(api.PyThreadState_Get(), id(c1), 1024))
o2 = c2.run(lambda: scan(api.PyThreadState_Get(), id(c2), 1024))
off_ctx = sorted(set(o1) & set(o2))
where = None
for line in open("/proc/self/maps"):
    f = line.split()
    lo, hi = (int(x, 16) for x in f[0].split("-"))
    if lo <= runtime < hi and len(f) >= 6:
        where = f[5]
        break
base = None
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) >= 6 and f[5] == where and int(f[2], 16) == 0:
        base = int(f[0].split("-")[0], 16)
        break
print(json.dumps({"version": "%d.%d.%d" % sys.version_info[:3], "binary": where,
                  "runtime_rel": runtime - base if base is not None else None,
                  "off_interp": off_interp, "off_head": off_head, "off_next": off_next,
                  "off_tid": off_tid, "off_ctx": off_ctx}))
'''


@dataclass(frozen=True)
class Layout:
    """Offsets of one interpreter binary."""

    version: str
    binary: str            # the file holding _PyRuntime and PyContext_CopyCurrent
    runtime_rel: int       # _PyRuntime minus the binary's load base
    off_interp: int
    off_head: int
    off_next: int
    off_tid: int
    off_ctx: int


class CalibrationError(RuntimeError):
    pass


def parse(out: str) -> Layout:
    data = json.loads(out.strip().splitlines()[-1])
    picks = {}
    for key in ("off_interp", "off_head", "off_next", "off_tid", "off_ctx"):
        found = data.get(key) or []
        if not found:
            raise CalibrationError(f"{key} not found for Python {data.get('version')}")
        picks[key] = found[0]
    if not data.get("binary") or data.get("runtime_rel") is None:
        raise CalibrationError("cannot tell which file holds _PyRuntime")
    return Layout(data["version"], data["binary"], data["runtime_rel"], **picks)


def calibrate(exe: str, timeout: float = 10.0) -> Layout:
    try:
        out = subprocess.run([exe, "-I", "-S", "-c", CALIBRATION], capture_output=True, text=True,
                             timeout=timeout, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CalibrationError(f"cannot run {exe}: {exc}") from None
    if out.returncode != 0:
        raise CalibrationError(f"{exe} calibration failed: {out.stderr.strip()[-300:]}")
    return parse(out.stdout)


def load_base(root: SysRoot, pid: int, binary: str) -> int | None:
    text = root.read_text("proc", str(pid), "maps") or ""
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == binary and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    return None


def is_python(exe: str | None) -> bool:
    return bool(exe) and os.path.basename(exe).startswith("python")


class Calibrations:
    """One calibration per interpreter binary (by path and inode), reused by every
    process that runs it."""

    def __init__(self, root: SysRoot):
        self.root = root
        self.by_exe: dict[tuple[str, int], Layout | None] = {}

    def for_process(self, pid: int, exe: str | None) -> tuple[Layout, int] | None:
        """(layout, absolute _PyRuntime address in pid), or None if not a usable Python."""
        if not is_python(exe):
            return None
        exe = exe.removesuffix(" (deleted)")
        try:
            st = os.stat(exe)
        except OSError:
            return None
        key = (exe, st.st_ino)
        if key not in self.by_exe:
            try:
                self.by_exe[key] = calibrate(exe)
                log.info("calibrated %s (Python %s)", exe, self.by_exe[key].version)
            except (CalibrationError, ValueError) as exc:
                log.warning("no asyncio linking for %s: %s", exe, exc)
                self.by_exe[key] = None
        layout = self.by_exe[key]
        if layout is None:
            return None
        base = load_base(self.root, pid, layout.binary)
        if base is None:
            return None
        return layout, base + layout.runtime_rel
