"""The Packer template on Debian's Packer (1.6.6): formatted, valid for each target's
variables file, and a bad variable stopped with the rule that names it. Seconds, no VM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from image_helpers import BIN, REPO

PACKER = REPO / "packer"
TARGETS = sorted(p.name.removesuffix(".pkrvars.hcl") for p in PACKER.glob("*.pkrvars.hcl"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """Stand-ins for what packer/build.py passes (files that exist; validate opens them)."""
    d = tmp_path_factory.mktemp("packer-inputs")
    (d / "seed").mkdir()
    for f in ("user-data", "meta-data"):
        (d / "seed" / f).write_text("#cloud-config\n" if f == "user-data" else "instance-id: x\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "key")], check=True)
    for f in ("base.qcow2", "vmlinuz", "initrd", "w.whl", "h.tar"):
        (d / f).write_bytes(b"")
    values = {"seed_dir": d / "seed", "ssh_private_key_file": d / "key", "base_disk": d / "base.qcow2",
              "base_disk_checksum": "sha256:" + "0" * 64, "base_kernel": d / "vmlinuz", "base_initrd": d / "initrd",
              "base_cmdline": "console=ttyS0", "wheel": d / "w.whl", "wheelhouse": d / "h.tar",
              "output_directory": d / "out"}
    return [a for k, v in values.items() for a in ("-var", f"{k}={v}")]


def validate(target: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["packer", "validate", f"-var-file={PACKER / f'{target}.pkrvars.hcl'}", *extra, "."],
                          cwd=PACKER, capture_output=True, text=True,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "CHECKPOINT_DISABLE": "1"})   # ansible-playbook


def test_targets_are_debian_13_and_12():
    assert TARGETS == ["debian-12-amd64", "debian-13-amd64"]


def test_template_is_formatted():
    r = subprocess.run(["packer", "fmt", "-check", "-diff", "."], cwd=PACKER, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_template_is_valid_for_each_target(inputs, target):
    r = validate(target, *inputs)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("var, value, says", [
    ("accelerator", "hvf", "The accelerator must be tcg or kvm."),
    ("memory", "512", "The memory must be at least 1024 (MiB)."),
    ("base_source", "url", "base_source"),
    ("debian_suite", "sid", "debian_suite"),
])
def test_a_bad_variable_is_named(inputs, var, value, says):
    r = validate("debian-13-amd64", *inputs, "-var", f"{var}={value}")
    assert r.returncode != 0
    assert says in r.stdout + r.stderr, r.stdout + r.stderr
