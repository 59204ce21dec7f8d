"""The layout read without running anything, against what each interpreter available here
finds about itself when run (the old calibration, tests/support/pyruntime_oracle.py).

Interpreters: Debian's /usr/bin/python3.11, the one running the tests (the venv's),
every pyenv build, and Debian root trees named by SPANPROBE_TEST_PYTHON_ROOTS (colon-
separated; each holding usr/bin/python3.X and its own loader in usr/lib/x86_64-linux-gnu,
run through that loader: tests/support/debian_pythons.sh makes such trees of trixie's 3.13
and sid's 3.14). Versions before 3.11 must get no linking.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from spanprobe.procfs import SysRoot
from spanprobe.pyruntime import Calibrations
from tests.support.pyruntime_oracle import calibrate

# The target: two threads, each inside a context of its own, until told to stop.
TARGET = r'''
import contextvars, sys, threading, time
ready = threading.Event()
def worker():
    contextvars.copy_context().run(lambda: (ready.set(), time.sleep(300)))
threading.Thread(target=worker, daemon=True).start(); ready.wait()
contextvars.copy_context().run(lambda: (print("ready", flush=True), sys.stdin.readline()))
'''


def interpreters() -> list[list[str]]:
    found = [[p] for p in ["/usr/bin/python3.11", sys.executable,
                           *sorted(glob.glob("/root/.pyenv/versions/*/bin/python3"))] if os.path.exists(p)]
    for root in filter(None, os.environ.get("SPANPROBE_TEST_PYTHON_ROOTS", "").split(":")):
        libs = os.path.join(root, "usr/lib/x86_64-linux-gnu")
        for exe in sorted(glob.glob(os.path.join(root, "usr/bin/python3.[0-9]*"))):
            if not exe.endswith("-config"):
                found.append([os.path.join(libs, "ld-linux-x86-64.so.2"), "--library-path", libs, exe])
    return found


def version_of(argv: list[str]) -> tuple[int, int]:
    out = subprocess.run([*argv, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30, check=True)
    major, minor = out.stdout.split()
    return int(major), int(minor)


# Older interpreters (no contextvars, no native thread ids before 3.8) only wait.
WAIT = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline()"


@pytest.mark.parametrize("argv", interpreters(), ids=lambda a: a[-1])
def test_no_exec_layout_matches_what_the_interpreter_finds_itself(argv):
    old = version_of(argv) < (3, 11)
    target = subprocess.Popen([*argv, "-S", "-c", WAIT if old else TARGET], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        found = Calibrations(SysRoot("/")).for_process(target.pid, argv[-1])
    finally:
        target.stdin.close()
        target.wait(30)
    if old:
        assert found is None
        return
    oracle = calibrate(argv)
    assert found is not None, f"no layout for {oracle}"
    layout, runtime = found
    assert layout.version == oracle["version"]
    assert layout.binary == oracle["binary"]
    assert layout.runtime_rel == oracle["runtime_rel"]
    # the oracle lists every offset holding the value it looked for; ours must be one of
    # them (off_interp: interpreters.head, which equals .main with one interpreter)
    for field in ("off_interp", "off_head", "off_next", "off_tid", "off_ctx"):
        assert getattr(layout, field) in oracle[field], (field, oracle)
