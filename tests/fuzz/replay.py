"""Replay fuzz inputs through one build of the agent's modules and print what each gave.

    python tests/fuzz/replay.py TARGET DIR... > outcomes.json

test_fuzz.py runs this twice, with the agent's hot modules compiled by mypyc and with
SPANPROBE_COMPILED=0 (their sources, which the fuzzer explored with coverage), and
compares: the compiled modules must make of every input exactly what the sources make.
Prints one JSON object: the build in use (spanprobe.native.state()) and, per input file,
the SHA-256 of its outcome's repr, or the exception it raised.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from spanprobe import native  # noqa: E402
from tests.fuzz.targets import TARGETS  # noqa: E402


def main() -> None:
    target = TARGETS[sys.argv[1]]
    outcomes = {}
    for d in sys.argv[2:]:
        for path in sorted(Path(d).iterdir()):
            try:
                got = repr(target(path.read_bytes()))
            except Exception as exc:     # a failure is an outcome to compare too
                got = f"raised {type(exc).__name__}: {exc}"
            outcomes[f"{Path(d).name}/{path.name}"] = hashlib.sha256(got.encode()).hexdigest()
    print(json.dumps({"build": native.state(), "outcomes": outcomes}))


if __name__ == "__main__":
    main()
