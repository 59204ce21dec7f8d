"""Kernel tier: Debian kernels booted under QEMU, the agent run in each of them once per
attach strategy (tests/kernels/matrix.py). Every cell must pass or be an explained
"unsupported" (the kernel or bcc cannot offer that strategy, and the cell says why).

Boots QEMU guests for ~15 minutes cold, so it runs only when asked:
`make test-kernels`, `make test-kernel KERNEL=6.1 MODE=kprobe`, or
`scripts/dev.sh kernel-matrix [KERNEL] [MODE]` (which set SPANPROBE_KERNEL_MATRIX=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.skipif(
    os.environ.get("SPANPROBE_KERNEL_MATRIX") != "1",
    reason="kernel tier: run it with `make test-kernels` (boots QEMU guests, minutes)")


@pytest.mark.timeout(3600)
def test_kernel_matrix():
    if os.geteuid() != 0:
        pytest.fail("the kernel matrix needs root (mmdebstrap, chroot, QEMU guests)")
    args = [sys.executable, str(HERE / "matrix.py")]
    kernel, mode = os.environ.get("SPANPROBE_KERNEL"), os.environ.get("SPANPROBE_MODE")
    if kernel:
        args += ["--kernel", kernel]
    if mode:
        args += ["--mode", mode]
    results = REPO / "results"
    doc_path = results / "kernel-matrix.json"
    doc_path.unlink(missing_ok=True)
    proc = subprocess.run(args + ["--results", str(results)], timeout=3500)
    assert doc_path.exists(), f"matrix.py wrote no results (exit {proc.returncode})"
    doc = json.loads(doc_path.read_text())
    rows = doc["rows"]
    assert rows, "no kernel was run"
    if not kernel:
        assert len([r for r in rows if r["name"] != "host"]) >= 4, [r["name"] for r in rows]
    problems = []
    for row in rows:
        for m, cell in row["cells"].items():
            if cell["status"] == "pass":
                continue
            if cell["status"] == "unsupported" and cell.get("reason"):
                continue
            problems.append(f"{row['release']} / {m}: {cell['status']}: {cell.get('reason')}")
    assert not problems, "kernel matrix cells failed (see results/kernel-matrix.md):\n" + "\n".join(problems)
    assert proc.returncode == 0
