#!/usr/bin/env python3
"""A wheelhouse: the agent's dependencies as wheels for a host's CPython, in one tar, for
hosts (and image builds) without a package index. The role installs from it when
`spanprobe_wheelhouse` names it.

    python3 ansible/wheelhouse.py 3.13 [--into DIR]     prints the tar's path

Pinned by requirements/constraints.txt; cached by the hash of the pins (an unchanged set
is not downloaded again); the tar is deterministic (sorted, zero times and owners).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "wheelhouses"


def build(python: str, into: Path = CACHE) -> Path:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = REPO / "requirements" / "constraints.txt"
    h = hashlib.sha256(json.dumps(deps).encode() + constraints.read_bytes()).hexdigest()[:16]
    out = into / f"wheelhouse-cp{python.replace('.', '')}-{h}.tar"
    if out.exists():
        return out
    into.mkdir(parents=True, exist_ok=True)
    # One download per key at a time: the image tier builds two images at once.
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        return _download(python, deps, constraints, out)


def _download(python: str, deps: list[str], constraints: Path, out: Path) -> Path:
    tmp = out.with_suffix(".d")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "-d", str(tmp), "--only-binary=:all:", "--python-version", python,
                    "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "-c", str(constraints), *deps], check=True)
    part = out.with_suffix(".part")
    with tarfile.open(part, "w") as tar:
        for f in sorted(tmp.iterdir()):
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(f, "rb") as fh:
                tar.addfile(info, fh)
    part.rename(out)
    shutil.rmtree(tmp)
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="wheelhouse.py", description=__doc__.split("\n\n")[0])
    p.add_argument("python", help="the hosts' CPython, e.g. 3.11 (Debian 12) or 3.13 (Debian 13)")
    p.add_argument("--into", type=Path, default=CACHE, help=f"where the tar goes (default {CACHE})")
    a = p.parse_args()
    print(build(a.python, a.into))
    return 0


if __name__ == "__main__":
    sys.exit(main())
