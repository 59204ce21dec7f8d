"""The fuzz tier: coverage-guided fuzzing (atheris) of what reads hostile bytes.

Targets (targets.py): the HTTP parser fed request and response streams cut into random
segments with holes, the JSON-prefix reader, the assembler fed whole event sequences, the
route tables read from a target's Python source (app_routes) and a target's own resource
variables (target_resource).
Each runs for SPANPROBE_FUZZ_SECONDS (default 30) in a process of its own (run.py), one
per CPU at a time, seeded from tests/fuzz/corpus/<target>/; new inputs go to a temporary directory, never
into the repository. A crash, a per-input timeout or the memory limit fails the test
with the reproducer's path; it then becomes a unit test in
tests/unit/test_hostile_regressions.py, with the input inline.

    SPANPROBE_FUZZ_SECONDS=300 python -m pytest tests/fuzz -q -s
    python tests/fuzz/run.py http path/to/crash-...     # replay one input
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.seeds import CORPUS, SEEDS
from tests.fuzz.targets import COMPILED_TARGETS, TARGETS

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("SPANPROBE_FUZZ_SECONDS", "30"))
PER_INPUT_TIMEOUT_S = 10        # an input that takes longer is a hang
RSS_LIMIT_MB = 1024
MAX_LEN = {"http": 8192, "jsonprefix": 4096, "assembler": 8192, "app_routes": 4096,
           "target_resource": 4096 + 512}
DICT = {"http": HERE / "http.dict", "jsonprefix": HERE / "json.dict", "assembler": HERE / "http.dict",
        "app_routes": HERE / "python.dict", "target_resource": HERE / "json.dict"}
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def test_committed_corpus_is_what_seeds_py_writes():
    for target, seeds in SEEDS.items():
        for name, data in seeds.items():
            path = CORPUS / target / name
            assert path.is_file(), f"{path} missing: run python tests/fuzz/seeds.py"
            assert path.read_bytes() == data, f"{path} is stale: run python tests/fuzz/seeds.py"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_cleanly(target):
    files = sorted((CORPUS / target).iterdir())
    assert files
    for path in files:
        TARGETS[target](path.read_bytes())


def _fuzz(target: str, where: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """One target's run in a process of its own; new inputs and reproducers under `where`."""
    new = where / "new-inputs"
    new.mkdir(parents=True)
    cmd = [sys.executable, str(HERE / "run.py"), target,
           f"-max_total_time={SECONDS}", f"-timeout={PER_INPUT_TIMEOUT_S}",
           f"-rss_limit_mb={RSS_LIMIT_MB}", f"-max_len={MAX_LEN[target]}",
           f"-dict={DICT[target]}", f"-artifact_prefix={where}/", "-print_final_stats=1",
           str(new), str(CORPUS / target)]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                          timeout=SECONDS + 120), new


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """Every target's run, started together at the first test, one per CPU at a time: each
    is one single-threaded process, so the tier takes its share of the time per core
    instead of the sum. Each test then waits for its own target's run."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    yield {t: pool.submit(_fuzz, t, tmp_path_factory.mktemp(t)) for t in sorted(TARGETS)}
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target, fuzz_runs):
    run, new = fuzz_runs[target].result()
    where = new.parent
    found = sorted(str(p) for p in where.iterdir() if p.name.startswith(ARTIFACTS))
    report = run.stderr[-6000:]
    assert run.returncode == 0 and not found, (
        f"fuzz target {target} failed (exit {run.returncode}); reproducers: {found}\n"
        f"replay: {sys.executable} {HERE / 'run.py'} {target} <reproducer>\n{report}")
    stats = [line for line in run.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert stats and int(stats[-1].split(":")[-1]) > 0, report
    print(f"\n{target}: {stats[-1].split(':')[-1].strip()} inputs in {SECONDS} s, "
          f"{len(list(new.iterdir()))} new")


def _replay(target: str, dirs: list[Path], compiled: bool) -> dict:
    env = dict(os.environ, SPANPROBE_COMPILED="1" if compiled else "0")
    run = subprocess.run([sys.executable, str(HERE / "replay.py"), target, *map(str, dirs)],
                         capture_output=True, text=True, errors="replace", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("target", COMPILED_TARGETS)
def test_compiled_modules_agree_with_their_sources(target, fuzz_runs):
    """The fuzzer explores the sources (coverage is measured in bytecode); the agent runs
    their mypyc build. Every input of the corpus and of this run must come out the same
    through both, failures included."""
    _, new = fuzz_runs[target].result()
    dirs = [CORPUS / target, new]
    compiled = _replay(target, dirs, compiled=True)
    if not compiled["build"].startswith("compiled"):
        pytest.skip(f"the agent's hot modules are not compiled here ({compiled['build']}): "
                    "python scripts/compile_agent.py")
    source = _replay(target, dirs, compiled=False)
    assert source["build"].startswith("source"), source["build"]
    assert compiled["outcomes"].keys() == source["outcomes"].keys()
    differ = sorted(k for k, v in compiled["outcomes"].items() if source["outcomes"][k] != v)
    assert not differ, (f"{len(differ)} of {len(source['outcomes'])} inputs came out differently "
                        f"compiled; replay one with SPANPROBE_COMPILED=0 and =1: "
                        f"{sys.executable} {HERE / 'replay.py'} {target} <dir>\n{differ[:10]}")
    print(f"\n{target}: {len(differ)} of {len(source['outcomes'])} inputs differ between the mypyc "
          "build and the sources")
