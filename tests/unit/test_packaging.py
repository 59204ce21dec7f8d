"""The wheel is what the Ansible role installs: it must carry the kernel side."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_bpf_sources_and_the_command(tmp_path):
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pytest.skip("hatchling not installed (scripts/dev.sh setup installs it)")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", ".venv"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("spanprobe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("spanprobe/bpf/spanprobe.bpf.c", "spanprobe/bpf/spanprobe_events.h",
                   "spanprobe/cli.py", "spanprobe/pipeline.py"):
        assert needed in names
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "spanprobe = spanprobe.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_layout_finds_bpf_inside_the_package(tmp_path, monkeypatch):
    from spanprobe import loader

    pkg = tmp_path / "site" / "spanprobe"
    (pkg / "bpf").mkdir(parents=True)
    (pkg / "bpf" / "spanprobe.bpf.c").write_text("/* */")
    monkeypatch.setattr(loader, "__file__", str(pkg / "loader.py"))
    assert loader.bpf_dir() == pkg / "bpf"
