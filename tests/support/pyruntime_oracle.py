"""The old way of finding a CPython layout, kept only as the tests' oracle: run the
interpreter itself on a script that scans its own structures for known values (its
thread states, thread ids and current context), each offset confirmed twice. The agent
must never do this (it would run the target's code with its privileges); tests may."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from spanprobe.elf import ElfFile
from spanprobe.pyruntime import parse_maps

# Runs inside the interpreter under test: standard library only, prints one JSON line.
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


def calibrate(argv: list[str], timeout: float = 30.0) -> dict:
    """What the interpreter started by `argv` finds about itself: every candidate offset
    of each field (lists), its version, the file holding _PyRuntime and its place there."""
    out = subprocess.run([*argv, "-I", "-S", "-c", CALIBRATION], capture_output=True, text=True,
                         timeout=timeout, env={"PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def running_interpreter() -> tuple[str, int]:
    """(path, size) of the file holding _PyRuntime in this very process."""
    for m in parse_maps(Path("/proc/self/maps").read_text()):
        if m.offset == 0 and os.path.basename(m.path).startswith(("python", "libpython")):
            fd = os.open(m.path, os.O_RDONLY)
            try:
                if "_PyRuntime" in ElfFile(fd, os.fstat(fd).st_size).symbols({"_PyRuntime"}):
                    return m.path, os.fstat(fd).st_size
            finally:
                os.close(fd)
    raise RuntimeError("this interpreter maps no file defining _PyRuntime")
