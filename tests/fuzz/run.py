"""Run one fuzz target under atheris (coverage-guided, libFuzzer underneath).

    python tests/fuzz/run.py TARGET [libFuzzer options] [corpus dirs]

atheris wants a process of its own: test_fuzz.py starts this with a time budget, a
per-input timeout, a memory limit, a temporary directory for new inputs first (libFuzzer
writes there) and the repository's corpus after it (only read).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "agent")]
# atheris measures coverage in Python bytecode: the agent's sources, not its mypyc build
# (test_fuzz.py replays every input through the build and compares: replay.py)
os.environ["SPANPROBE_COMPILED"] = "0"

import atheris  # noqa: E402

# coverage comes from the agent's modules, so they are imported instrumented
with atheris.instrument_imports(include=["spanprobe"]):
    from tests.fuzz.targets import TARGETS  # noqa: E402


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
