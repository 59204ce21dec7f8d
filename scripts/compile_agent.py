"""Compile the agent's hot modules (spanprobe.native.MODULES) with mypyc.

    python scripts/compile_agent.py          # build if the sources changed since the last build
    python scripts/compile_agent.py --clean  # remove the build

The extension modules go to agent/spanprobe/_compiled/ (not in git, not in the wheel), with
sources.json (spanprobe.native.build_record: the modules, this Python's extension suffix,
the SHA-256 of every source of the package); spanprobe.native uses them only while that
record still holds. Needs mypy (requirements/dev.txt), a C compiler and Python's headers
(scripts/dev.sh setup installs them). mypy's cache is kept in $SPANPROBE_CACHE/mypyc-build;
every build compiles the whole group again (~30-60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
os.environ["SPANPROBE_COMPILED"] = "0"     # this script reads the sources, never a build of them

from spanprobe import native  # noqa: E402

GROUP = native.RUNTIME.removesuffix("__mypyc")   # the group of modules mypyc builds together


def build() -> None:
    record = native.build_record()
    try:
        if json.loads(native.SOURCES.read_text()) == record and native.fresh_build()[0]:
            print("compile_agent: up to date")
            return
    except (OSError, ValueError):
        pass
    t0 = time.monotonic()
    work = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "mypyc-build"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spanprobe-mypyc-") as tmp:
        # a copy of the package laid out as mypyc needs it (module names from the paths),
        # so the build writes nothing into the source tree but its result
        src = Path(tmp) / "src"
        shutil.copytree(native.PACKAGE, src / "spanprobe",
                        ignore=shutil.ignore_patterns("_compiled", "__pycache__", "*.so"))
        setup = Path(tmp) / "setup.py"
        setup.write_text(
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='spanprobe-hot', ext_modules=mypycify(['--ignore-missing-imports', '--check-untyped-defs', '--follow-imports=silent', *{[f'spanprobe/{m}.py' for m in native.MODULES]!r}]"
            f", opt_level='3', group_name={GROUP!r}, target_dir={str(work / 'c')!r}))\n")
        out = Path(tmp) / "out"
        env = dict(os.environ, MYPY_CACHE_DIR=str(work / "mypy-cache"))
        # mypy's checks decide what mypyc may assume: a type error here is a build error
        subprocess.run([sys.executable, str(setup), "-q", "build_ext", "--build-lib", str(out),
                        "--build-temp", str(work / "obj")], cwd=src, env=env, check=True)
        built = sorted(out.rglob("*.so"))
        if len(built) != len(native.MODULES) + 1:
            raise SystemExit(f"compile_agent: expected {len(native.MODULES) + 1} extension modules, "
                             f"got {[p.name for p in built]}")
        shutil.rmtree(native.COMPILED, ignore_errors=True)
        native.COMPILED.mkdir()
        for so in built:
            shutil.copy2(so, native.COMPILED / so.name)
        (native.COMPILED / "sources.json").write_text(json.dumps(record, indent=1) + "\n")
    ok, why = native.fresh_build()
    if not ok:
        raise SystemExit(f"compile_agent: the build is not usable: {why}")
    print(f"compile_agent: {len(native.MODULES)} modules compiled in {time.monotonic() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clean", action="store_true")
    a = p.parse_args()
    if a.clean:
        shutil.rmtree(native.COMPILED, ignore_errors=True)
        return
    build()


if __name__ == "__main__":
    main()
