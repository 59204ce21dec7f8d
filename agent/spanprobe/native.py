"""The agent's hot modules, compiled with mypyc where a build made them, else their sources.

Why: per span, the agent's CPU goes to parsing HTTP heads, assembling exchanges and
encoding OTLP, pure Python (bench/README.md). mypyc compiles those same source files to C
extension modules (no second implementation to keep in step, and no hand-written C
reading hostile bytes: the compiled code checks bounds and types as Python does).

`scripts/compile_agent.py` builds them into `spanprobe/_compiled/` with `sources.json`:
the SHA-256 of every module of the package, and the Python it was built for. At import,
the package puts that directory first on its own `__path__` only when every source is
unchanged: a module edited since the build would otherwise run its old compiled code. A missing, stale or foreign build (another
Python version: the extension names carry it) leaves the sources in use, and so does
SPANPROBE_COMPILED=0 (to measure one against the other); `state()` says which it is, for
the ready line and `spanprobe check`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import import_module
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
COMPILED = PACKAGE / "_compiled"
SOURCES = COMPILED / "sources.json"
# what scripts/compile_agent.py compiles: the per-record and per-span path
MODULES = ("events", "httpparse", "privacy", "routes", "streams", "router", "spans", "otlp_wire", "clock",
           "ringbuf")
RUNTIME = "spanprobe_hot__mypyc"     # scripts/compile_agent.py's group name + "__mypyc"

_state = "not built"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_sources(package: Path = PACKAGE) -> dict[str, str]:
    """The SHA-256 of every module of the package. All of them, not only MODULES: the
    compiled code checks what it gets from the other modules against their annotations as
    they were at the build, so a change anywhere may make a build wrong."""
    return {p.name: source_hash(p) for p in sorted(package.glob("*.py"))}


def build_record(package: Path = PACKAGE) -> dict:
    """What scripts/compile_agent.py writes to sources.json, and what a usable build must
    match: the modules compiled, this Python's extension suffix, every source."""
    return {"modules": sorted(MODULES), "suffix": EXTENSION_SUFFIXES[0], "sources": package_sources(package)}


def fresh_build(package: Path = PACKAGE) -> tuple[bool, str]:
    """(usable, why): is there a build of MODULES from the sources as they are now, for
    this Python, with every extension module in place?"""
    compiled = package / COMPILED.name
    try:
        listed = json.loads((compiled / SOURCES.name).read_text())
    except FileNotFoundError:
        return False, "not built"
    except (OSError, ValueError) as exc:
        return False, f"unreadable {SOURCES.name}: {exc}"
    if not isinstance(listed, dict) or listed.get("modules") != sorted(MODULES):
        return False, "built for another module list"
    if listed.get("suffix") != EXTENSION_SUFFIXES[0]:
        return False, "no build for this Python"
    try:
        now = package_sources(package)
    except OSError as exc:
        return False, f"unreadable source: {exc}"
    if listed.get("sources") != now:
        was = listed.get("sources") if isinstance(listed.get("sources"), dict) else {}
        changed = sorted(set(now) ^ set(was) | {n for n in now if n in was and was[n] != now[n]})
        return False, f"stale: {', '.join(changed[:3]) or 'the sources'} changed since the build"
    missing = [m for m in (*MODULES, RUNTIME) if not (compiled / f"{m}{EXTENSION_SUFFIXES[0]}").is_file()]
    if missing:
        return False, f"incomplete build: no {missing[0]}{EXTENSION_SUFFIXES[0]}"
    return True, "fresh"


def use_compiled(package_path: list[str], package: Path = PACKAGE) -> None:
    """Called once by the package's __init__: put the compiled directory first on the
    package's search path when its build matches the sources and this Python. The modules
    share one mypyc runtime library, a top-level module to them (RUNTIME): it is loaded
    from the compiled directory by its path, leaving sys.path alone. A runtime that does
    not load leaves the sources in use, said by state()."""
    global _state
    if os.environ.get("SPANPROBE_COMPILED", "1") == "0":
        _state = "SPANPROBE_COMPILED=0"      # for side-by-side measurements
        return
    compiled = package / COMPILED.name
    ok, why = fresh_build(package)
    if ok and RUNTIME not in sys.modules:
        try:
            spec = spec_from_file_location(RUNTIME, compiled / f"{RUNTIME}{EXTENSION_SUFFIXES[0]}")
            if spec is None or spec.loader is None:
                raise ImportError("no loader")
            module = module_from_spec(spec)
            sys.modules[RUNTIME] = module
            spec.loader.exec_module(module)
        except Exception as exc:       # a damaged build must not stop the agent
            sys.modules.pop(RUNTIME, None)
            ok, why = False, f"unloadable build: {type(exc).__name__}: {exc}"
    if ok:
        package_path.insert(0, str(compiled))
    _state = why


def state() -> str:
    """'compiled (mypyc)' when the hot modules run compiled, else why they run from source."""
    if _state != "fresh":
        return f"source ({_state})"
    try:
        loaded = [import_module(f"spanprobe.{m}") for m in MODULES]
    except Exception as exc:     # say it; spanprobe check must still report the rest
        return f"unimportable: {type(exc).__name__}: {exc}"
    compiled = [m for m in loaded if not (getattr(m, "__file__", "") or "").endswith(".py")]
    if len(compiled) == len(MODULES):
        return "compiled (mypyc)"
    return f"mixed: {len(compiled)} of {len(MODULES)} compiled"
