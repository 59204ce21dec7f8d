"""Kernel tier: Debian kernels booted under QEMU, the agent run in each of them once per
attach strategy (tests/kernels/matrix.py), then each kernel's row held to what
kernels.json says it must give: "pass", or "unsupported" with the expected reason. An
unexpected "unsupported" fails as surely as a failed cell.

A row reused from an earlier run with the same inputs (matrix.py's key) is checked the
same way, and its test carries the JUnit property `reused` (when, and the key): the tier
summary counts it as reused, not as a test that ran.

Boots QEMU guests for ~15 minutes cold, so it runs only when asked:
`make test-kernels`, `make test-kernel KERNEL=6.1 MODE=kprobe`, or
`scripts/dev.sh kernel-matrix [KERNEL] [MODE]` (which set SPANPROBE_KERNEL_MATRIX=1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
import matrix as matrix_runner  # tests/kernels/matrix.py, beside this file

PINS = json.loads((HERE / "kernels.json").read_text())
EXPECT = {k: v for k, v in PINS["expect"].items() if k != "comment"}
KERNEL, MODE = os.environ.get("SPANPROBE_KERNEL"), os.environ.get("SPANPROBE_MODE")

pytestmark = pytest.mark.skipif(
    os.environ.get("SPANPROBE_KERNEL_MATRIX") != "1",
    reason="kernel tier: run it with `make test-kernels` (boots QEMU guests, minutes)")


@pytest.fixture(scope="module")
def matrix(matrix_run) -> dict:
    """matrix.py's one run (conftest.py starts it), once it has ended: {kernel name: row}."""
    return {r["name"]: r for r in json.loads(matrix_run.wait().read_text())["rows"]}


def expected_cell(want: str, cell: dict | None) -> str | None:
    """Why `cell` is not what `want` ("pass" or "unsupported: <reason>") says; None if it is."""
    if cell is None:
        return "not run"
    status, _, reason = want.partition(": ")
    if cell["status"] != status:
        return f"{cell['status']} ({cell.get('reason')}), expected {want}{failed_details(cell)}"
    if reason and reason not in (cell.get("reason") or ""):
        return f"unsupported for another reason: {cell.get('reason')!r}, expected {reason!r}"
    return None


def failed_details(cell: dict, limit: int = 400) -> str:
    """What each failed check saw, and what the kernel side lost (events_received's detail:
    skipped program runs by program), cut to `limit` characters each: CI keeps only the
    test's output, and a cell that fails once in many runs must be explainable from it."""
    checks = cell.get("checks") or {}
    shown = {k: v.get("detail") for k, v in checks.items() if not v.get("ok")}
    if shown and "events_received" in checks:
        shown.setdefault("events_received", checks["events_received"].get("detail"))
    for key in ("span_counts", "collect_note"):
        if cell.get(key) is not None:
            shown[key] = cell[key]
    warned = [ln[-limit:] for ln in (cell.get("stderr_tail") or "").splitlines() if " WARNING " in ln or " ERROR " in ln]
    if warned:
        shown["agent_warnings"] = warned[-4:]
    return "".join(f"\n    {k}: {json.dumps(v, default=str)[:limit]}" for k, v in shown.items())


def selected() -> list[str]:
    """The kernels SPANPROBE_KERNEL names (matrix.py's own selection), or all and the host."""
    if KERNEL:
        return [k["name"] for k in matrix_runner.select(PINS["kernels"], KERNEL)]
    return [k["name"] for k in PINS["kernels"]] + ["host"]


def test_every_kernel_has_expectations():
    missing = [n for n in [k["name"] for k in PINS["kernels"]] + ["host"] if n not in EXPECT]
    assert not missing, f"kernels.json has no \"expect\" entry for {missing}"


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", selected())
def test_kernel(matrix, name, record_property):
    row = matrix.get(name)
    assert row is not None, f"matrix.py gave no row for {name} (rows: {sorted(matrix)})"
    if row.get("reused"):
        record_property("reused", f"{row['reused']['measured']}, key {row['reused']['key']}")
    want = EXPECT[name]
    modes = MODE.split(",") if MODE else list(want)
    problems = {m: why for m in modes if (why := expected_cell(want[m], row["cells"].get(m)))}
    assert not problems, (f"{row['release']}: " + "; ".join(f"{m}: {why}" for m, why in problems.items())
                          + " (see results/kernel-matrix.md)")
