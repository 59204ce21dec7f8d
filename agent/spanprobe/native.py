"""The agent's hot modules, compiled with mypyc where a build made them, else their sources.

Why: per span, the agent's CPU goes to parsing HTTP heads, assembling exchanges and
encoding OTLP, pure Python (bench/README.md). mypyc compiles those same source files to C
extension modules (no second implementation to keep in step, and no hand-written C
reading hostile bytes: the compiled code checks bounds and types as Python does).

`scripts/compile_agent.py` builds them into `spanprobe/_compiled/` with `sources.json`,
the SHA-256 of each source it compiled. At import, the package puts that directory first
on its own `__path__` only when every listed source is unchanged: a module edited since the
build would otherwise run its old compiled code. A missing, stale or foreign build (another
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
MODULES = ("events", "httpparse", "privacy", "routes", "streams", "router", "spans", "otlp_wire")
RUNTIME = "spanprobe_hot__mypyc"     # scripts/compile_agent.py's group name + "__mypyc"

_state = "not built"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fresh_build(package: Path = PACKAGE) -> tuple[bool, str]:
    """(usable, why): is there a build of MODULES from the sources as they are now?"""
    sources = package / COMPILED.name / SOURCES.name
    try:
        listed = json.loads(sources.read_text())
    except FileNotFoundError:
        return False, "not built"
    except (OSError, ValueError) as exc:
        return False, f"unreadable {sources.name}: {exc}"
    if not isinstance(listed, dict) or sorted(listed) != sorted(MODULES):
        return False, "built for another module list"
    for name, digest in listed.items():
        src = package / f"{name}.py"
        try:
            if source_hash(src) != digest:
                return False, f"stale: {name}.py changed since the build"
        except OSError as exc:
            return False, f"unreadable {src.name}: {exc}"
    return True, "fresh"


def use_compiled(package_path: list[str], package: Path = PACKAGE) -> None:
    """Called once by the package's __init__: put the compiled directory first on the
    package's search path when its build matches the sources and this Python. The modules
    share one mypyc runtime library, a top-level module to them (RUNTIME): it is loaded
    from the compiled directory by its path, leaving sys.path alone."""
    global _state
    if os.environ.get("SPANPROBE_COMPILED", "1") == "0":
        _state = "SPANPROBE_COMPILED=0"      # for side-by-side measurements
        return
    compiled = package / COMPILED.name
    ok, why = fresh_build(package)
    if ok:
        runtime = next((compiled / f"{RUNTIME}{suffix}" for suffix in EXTENSION_SUFFIXES
                        if (compiled / f"{RUNTIME}{suffix}").is_file()), None)
        if runtime is None:
            ok, why = False, "no build for this Python"
        elif RUNTIME not in sys.modules:
            spec = spec_from_file_location(RUNTIME, runtime)
            assert spec is not None and spec.loader is not None
            module = module_from_spec(spec)
            sys.modules[RUNTIME] = module
            spec.loader.exec_module(module)
    if ok:
        package_path.insert(0, str(compiled))
    _state = why


def state() -> str:
    """'compiled (mypyc)' when the hot modules run compiled, else why they run from source."""
    if _state != "fresh":
        return f"source ({_state})"
    loaded = [import_module(f"spanprobe.{m}") for m in MODULES]
    compiled = [m for m in loaded if not (getattr(m, "__file__", "") or "").endswith(".py")]
    if len(compiled) == len(MODULES):
        return "compiled (mypyc)"
    return f"mixed: {len(compiled)} of {len(MODULES)} compiled"
