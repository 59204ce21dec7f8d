"""The kernel tier's one run of matrix.py, started before its first test that boots a guest.

matrix.py keeps the machine's two cores busy with two guests at a time for minutes when its
rows are not kept; the stall test (test_frozen_guest.py) boots one more guest that is idle
most of its minute. Started here, the matrix runs while the stall test does, instead of
after it; test_kernel_matrix.py's tests wait for it to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MATRIX_TIMEOUT_S = 3500


class MatrixRun:
    """matrix.py running in the background, in a process group of its own (its QEMU guests
    with it): `wait()` gives its results document's path."""

    def __init__(self, kernel: str | None, mode: str | None):
        args = [sys.executable, str(HERE / "matrix.py")]
        if kernel:
            args += ["--kernel", kernel]
        if mode:
            args += ["--mode", mode]
        results = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results"))
        self.doc = results / "kernel-matrix.json"
        self.doc.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args + ["--results", str(results)], start_new_session=True)

    def wait(self) -> Path:
        rc = self.proc.wait(timeout=max(1.0, MATRIX_TIMEOUT_S - (time.monotonic() - self.started)))
        assert self.doc.exists(), f"matrix.py wrote no results (exit {rc})"
        return self.doc

    def stop(self) -> None:
        """The session ended first (a failure, -x, Ctrl-C): matrix.py and its guests go."""
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break


@pytest.fixture(scope="session")
def matrix_run(request):
    """The run, started once the session has a test that needs its rows (test_kernel_matrix.py's
    `matrix` fixture); None in a session without one (the stall test alone)."""
    if not any("matrix" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    if os.geteuid() != 0:
        pytest.fail("the kernel matrix needs root (mmdebstrap, chroot, QEMU guests)")
    run = MatrixRun(os.environ.get("SPANPROBE_KERNEL"), os.environ.get("SPANPROBE_MODE"))
    yield run
    run.stop()
