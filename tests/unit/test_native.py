"""spanprobe.native: the mypyc build is used only when it was made from the sources as they
are, for this Python; otherwise the sources run, and the agent says which."""

from __future__ import annotations

import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

from spanprobe import native


def make_package(tmp_path, edit: str | None = None, record=None, built: bool = True):
    """A package of stand-in sources with a build record, and (`built`) empty stand-ins of
    the extension modules for this Python; `edit`: a source changed after the build."""
    pkg = tmp_path / "spanprobe"
    (pkg / "_compiled").mkdir(parents=True)
    for m in (*native.MODULES, "pipeline"):
        (pkg / f"{m}.py").write_text(f"# {m}\n")
    (pkg / "_compiled" / "sources.json").write_text(json.dumps(native.build_record(pkg) if record is None else record))
    if built:
        for m in (*native.MODULES, native.RUNTIME):
            (pkg / "_compiled" / f"{m}{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    if edit:
        (pkg / f"{edit}.py").write_text("# edited after the build\n")
    return pkg


@pytest.fixture(autouse=True)
def keep_state(monkeypatch):
    monkeypatch.setattr(native, "_state", native._state)
    monkeypatch.delenv("SPANPROBE_COMPILED", raising=False)


def test_a_build_of_the_sources_as_they_are_is_fresh(tmp_path):
    assert native.fresh_build(make_package(tmp_path)) == (True, "fresh")


def test_a_source_edited_since_the_build_makes_it_stale(tmp_path):
    ok, why = native.fresh_build(make_package(tmp_path, edit="streams"))
    assert not ok and why == "stale: streams.py changed since the build"


def test_a_module_that_is_not_compiled_counts_too(tmp_path):
    # the compiled code checks what other modules return against their annotations
    ok, why = native.fresh_build(make_package(tmp_path, edit="pipeline"))
    assert not ok and why == "stale: pipeline.py changed since the build"
    pkg = make_package(tmp_path / "new")
    (pkg / "added.py").write_text("# new module\n")
    assert native.fresh_build(pkg) == (False, "stale: added.py changed since the build")


def test_no_build_and_a_build_of_other_modules_are_not_used(tmp_path):
    pkg = make_package(tmp_path)
    (pkg / "_compiled" / "sources.json").unlink()
    assert native.fresh_build(pkg) == (False, "not built")
    other = make_package(tmp_path / "b", record={"modules": ["httpparse"], "suffix": EXTENSION_SUFFIXES[0],
                                                 "sources": {}})
    assert native.fresh_build(other) == (False, "built for another module list")
    (other / "_compiled" / "sources.json").write_text("{not json")
    ok, why = native.fresh_build(other)
    assert not ok and why.startswith("unreadable sources.json")


def test_a_build_missing_an_extension_module_is_not_used(tmp_path):
    pkg = make_package(tmp_path)
    (pkg / "_compiled" / f"streams{EXTENSION_SUFFIXES[0]}").unlink()
    assert native.fresh_build(pkg) == (False, f"incomplete build: no streams{EXTENSION_SUFFIXES[0]}")


def test_a_build_for_another_python_leaves_the_path_alone(tmp_path):
    record = native.build_record(make_package(tmp_path / "a"))
    pkg = make_package(tmp_path, record={**record, "suffix": ".cpython-399-x86_64-linux-gnu.so"})
    path = [str(pkg)]
    native.use_compiled(path, pkg)
    assert path == [str(pkg)]
    assert native.state() == "source (no build for this Python)"


def test_a_runtime_library_that_does_not_load_leaves_the_sources(tmp_path, monkeypatch):
    # an empty file where the mypyc runtime should be: the agent still starts, from source
    monkeypatch.setattr(native, "RUNTIME", "spanprobe_test_broken__mypyc")
    pkg = make_package(tmp_path)
    path = [str(pkg)]
    native.use_compiled(path, pkg)
    assert path == [str(pkg)]
    assert native.state().startswith("source (unloadable build: ImportError")
    assert "spanprobe_test_broken__mypyc" not in sys.modules


def test_stale_build_is_said_and_not_used(tmp_path):
    pkg = make_package(tmp_path, edit="httpparse")
    path = [str(pkg)]
    native.use_compiled(path, pkg)
    assert path == [str(pkg)]
    assert native.state() == "source (stale: httpparse.py changed since the build)"


def test_spanprobe_compiled_0_runs_the_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANPROBE_COMPILED", "0")
    pkg = make_package(tmp_path)
    path = [str(pkg)]
    native.use_compiled(path, pkg)
    assert path == [str(pkg)]
    assert native.state() == "source (SPANPROBE_COMPILED=0)"


def test_this_checkout_runs_its_build():
    """scripts/dev.sh setup compiles the hot modules: the tests then run the compiled code,
    as the benchmark's agent does."""
    ok, why = native.fresh_build()
    if not ok:
        pytest.skip(f"no usable mypyc build in this checkout ({why}): python scripts/compile_agent.py")
    if native.state() == "source (SPANPROBE_COMPILED=0)":    # as this process started
        pytest.skip("SPANPROBE_COMPILED=0: the sources were asked for")
    assert native.state() == "compiled (mypyc)"


def test_no_name_is_bound_by_except_clauses_of_different_types():
    """mypy lets each `except E as name` give `name` its own type, but in a mypyc-compiled
    function a local has one: the second clause's exception is then a TypeError raised
    inside the handler, past the isolation it was written for. (Seen: the router's decode
    error and any other exception shared `exc`.)"""
    import ast

    found = []
    for m in native.MODULES:
        tree = ast.parse((native.PACKAGE / f"{m}.py").read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                types: dict[str, set[str]] = {}
                for node in ast.walk(fn):
                    if isinstance(node, ast.ExceptHandler) and node.name:
                        types.setdefault(node.name, set()).add(ast.unparse(node.type) if node.type else "")
                found += [f"{m}.{fn.name}: {name} {sorted(t)}" for name, t in types.items() if len(t) > 1]
    assert not found


# made a handful of times (at start, per configured route): their generated __init__ costs nothing
COLD_DATACLASSES = {"streams.AssemblerLimits", "routes.Template"}


def test_every_dataclass_made_per_event_writes_its_own_init():
    """The __init__ that dataclasses generates is Python source made at import: it runs
    interpreted even in the compiled build (0.4-0.9 µs a call against ~0.1 compiled), and
    the hot path makes several such objects a record. So a dataclass of a compiled module
    says init=False and writes its own, or is listed above as made rarely."""
    import ast

    generated = []
    for m in native.MODULES:
        tree = ast.parse((native.PACKAGE / f"{m}.py").read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for deco in cls.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                name = ast.unparse(call.func if call else deco)
                if name not in ("dataclass", "dataclasses.dataclass"):
                    continue
                init_false = call is not None and any(
                    k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in call.keywords)
                has_init = any(isinstance(n, ast.FunctionDef) and n.name == "__init__" for n in cls.body)
                if not (init_false and has_init) and f"{m}.{cls.name}" not in COLD_DATACLASSES:
                    generated.append(f"{m}.{cls.name}")
    assert not generated


def test_the_hot_classes_run_compiled_inits():
    """The check above, seen from the build: the objects made per record have a compiled
    __init__ (a Python function here would be the generated one)."""
    import types

    if native.state() != "compiled (mypyc)":
        pytest.skip(f"hot modules: {native.state()}")
    from spanprobe import events, httpparse, streams
    for cls in (events.Header, events.DataEvent, events.ConnEvent, httpparse.Message,
                streams.Exchange, streams.Connection):
        assert not isinstance(cls.__init__, types.FunctionType), cls
