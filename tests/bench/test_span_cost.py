"""bench/span_cost.py keeps working: its timed table and the paths its `--instructions`
mode counts under valgrind (run here without valgrind, once each, small). No figure is
asserted (timing on a shared machine means nothing); what is: every path builds and
encodes exactly the spans it was asked for, and the table has every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "span_cost.py"


@pytest.mark.parametrize("path", ["build", "total", "per-request", "wiring", "wiring-per-request", "sdk"])
def test_each_counted_path_runs_and_makes_its_spans(path):
    # each path asserts its own span count; a failure is a non-zero exit
    done = subprocess.run([sys.executable, str(SCRIPT), "--path", path, "--spans", "60"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_timed_table_has_every_row():
    done = subprocess.run([sys.executable, str(SCRIPT), "--spans", "300", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("agent: decode + assemble + build", "agent: total per span", "agent, a connection per request",
                "SDK's OTLP encoder, same spans", "SDK tracer API (no export)"):
        assert row in done.stdout, done.stdout
