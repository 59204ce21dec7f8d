"""The playbooks and roles are ansible-lint clean (production profile) and pass a syntax
check; no VM needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent


def _run(*cmd):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_HOME=str(ANSIBLE / ".ansible"))
    return subprocess.run(cmd, cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def _tools():
    if not (BIN / "ansible-lint").exists():
        pytest.skip(f"ansible-lint is not in {BIN}: scripts/dev.sh setup installs it")


def test_syntax():
    r = _run(str(BIN / "ansible-playbook"), "-i", "inventory/example.yml", "--syntax-check",
             "site.yml", "appliance.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ansible_lint_production_profile():
    r = _run(str(BIN / "ansible-lint"), "--nocolor")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
