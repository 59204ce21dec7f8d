#!/usr/bin/env python3
"""Build the appliance image: base disk -> Packer (bootstrap, appliance.yml, clean-up) ->
one output folder with a raw disk (UEFI and BIOS), a qcow2, a Vagrant box for libvirt,
SHA256SUMS, the package manifest and the build metadata.

    python packer/build.py [TARGET] [--out DIR] [--accelerator tcg|kvm]

TARGET is a packer/<TARGET>.pkrvars.hcl (default debian-13-amd64). Run as root with the
project's venv on PATH (`make image` does both). Progress: each stage says what it does
and how long it took; Packer's own output is streamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "base"))
sys.path.insert(0, str(REPO / "ansible"))
import disk  # noqa: E402  (packer/base/disk.py)
from compare import sha256  # noqa: E402  (packer/compare.py)
from controller import mitogen_env  # noqa: E402  (ansible/controller.py)
import wheelhouse  # noqa: E402  (ansible/wheelhouse.py)

DEFAULT_OUT = Path(os.environ.get("SPANPROBE_IMAGE_OUT", REPO / "build" / "image"))


def log(msg: str) -> None:
    print(f"\033[1mimage: {msg}\033[0m", file=sys.stderr, flush=True)


def agent_wheel(epoch: int, into: Path) -> Path:
    """The agent from this checkout; hatchling honours SOURCE_DATE_EPOCH, so the same tree
    gives the same bytes."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", str(into), str(REPO)],
                   env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch)), check=True)
    return next(into.glob("spanprobe-*.whl"))


def seed(into: Path, pubkey: str) -> Path:
    """The build's NoCloud seed: only the cloud base reads it (the build user's key)."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "meta-data").write_text("instance-id: spanprobe-build\nlocal-hostname: spanprobe-build\n")
    (into / "user-data").write_text(
        "#cloud-config\nusers:\n  - name: packer\n    sudo: ALL=(ALL) NOPASSWD:ALL\n"
        f"    shell: /bin/bash\n    ssh_authorized_keys: [{json.dumps(pubkey)}]\n")
    return into


def inputs_key(target: str) -> str:
    """Everything an image is made from: the base disk's key, and the agent, the roles and
    the template as they are in this checkout. An output folder with the same key is reused."""
    h = hashlib.sha256(disk.key(target).encode())
    files = [REPO / "pyproject.toml", REPO / "requirements" / "constraints.txt"]
    for top in ("agent/spanprobe", "bpf", "ansible/roles", "packer/scripts"):
        # (not the agent's mypyc build, spanprobe/_compiled: built per checkout, not in the wheel)
        files += sorted(p for p in (REPO / top).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and "_compiled" not in p.parts)
    files += sorted(HERE.glob("*.pkr.hcl")) + [HERE / f"{target}.pkrvars.hcl", REPO / "ansible" / "appliance.yml",
                                               REPO / "ansible" / "ansible.cfg", Path(__file__)]
    files += sorted((REPO / "ansible").glob("*.py"))      # the wheelhouse, how Ansible reaches the VM
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cached(out: Path, key: str) -> bool:
    try:
        meta = json.loads((out / "build.json").read_text())
        sums = (out / "SHA256SUMS").read_text().splitlines()
    except (OSError, ValueError):
        return False
    return meta.get("inputs_key") == key and all((out / line.split("  ", 1)[1]).exists() for line in sums)


def packer_version() -> str:
    return subprocess.run(["packer", "version"], capture_output=True, text=True).stdout.split("\n")[0].strip()


def build(target: str, out_root: Path, accelerator: str, fresh: bool = False) -> Path:
    t0 = time.monotonic()
    times: dict[str, float] = {}
    tvars = disk.target_vars(target)
    epoch = int(tvars["source_date_epoch"])
    out = out_root / target
    key = inputs_key(target)
    if not fresh and cached(out, key):
        log(f"{target}: {out} is already built from these inputs ({key}); --fresh builds it anew")
        return out
    work = out_root / f".{target}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    log(f"{target}: base disk (packer/base/disk.py; cached by its inputs)")
    t = time.monotonic()
    base = json.loads(disk.build(target).read_text())
    times["base_disk_s"] = round(time.monotonic() - t, 1)

    log(f"{target}: the agent's wheel and its dependencies for CPython {tvars['python_version']}")
    t = time.monotonic()
    wheel = agent_wheel(epoch, work / "wheel")
    house = wheelhouse.build(tvars["python_version"])
    seed_dir = seed(work / "seed", Path(base["ssh_key"] + ".pub").read_text().strip())
    times["wheels_s"] = round(time.monotonic() - t, 1)

    pk_out = work / "packer"
    variables = {
        "base_disk": base["disk"], "base_disk_checksum": f"sha256:{base['disk_sha256']}",
        "base_kernel": base["vmlinuz"], "base_initrd": base["initrd"], "base_cmdline": base["cmdline"],
        "ssh_private_key_file": base["ssh_key"], "seed_dir": str(seed_dir), "wheel": str(wheel),
        "wheelhouse": str(house), "output_directory": str(pk_out), "accelerator": accelerator,
    }
    if accelerator == "tcg":
        # One vCPU under emulation. A cold run's second build died of a guest Oops (Debian
        # 13's kernel, "int3" in hash_conntrack_raw as nftables' conntrack loaded: a static
        # key being patched live), most likely QEMU's multi-threaded TCG running a stale
        # translation of code another vCPU had just patched. One vCPU can't race itself,
        # and a TCG build keeps about one core busy either way (the image tier runs two at
        # once: 268 and 272 s with one vCPU each, against 438 s for a two-vCPU build).
        variables["cpus"] = "1"
    cmd = ["packer", "build", "-color=false", "-timestamp-ui", f"-var-file={HERE / f'{target}.pkrvars.hcl'}",
           *[a for k, v in variables.items() for a in ("-var", f"{k}={v}")], str(HERE)]
    # Packer's ansible provisioner runs ansible-playbook with Packer's environment, so the
    # play takes Mitogen's strategy from here when it is installed (ansible/controller.py)
    strategy = mitogen_env()
    log(f"{target}: packer build ({packer_version()}, {accelerator}, Ansible strategy "
        f"{strategy.get('ANSIBLE_STRATEGY', 'linear (plain)')}); console in {pk_out}-console.log")
    t = time.monotonic()
    env = dict(os.environ, PACKER_NO_COLOR="1", SOURCE_DATE_EPOCH=str(epoch),
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               PACKER_CACHE_DIR=str(disk.CACHE.parent / "packer_cache"), CHECKPOINT_DISABLE="1", **strategy)
    r = subprocess.run(cmd, cwd=HERE, env=env)
    times["packer_s"] = round(time.monotonic() - t, 1)
    if r.returncode != 0:
        raise SystemExit(f"image: packer build failed (exit {r.returncode}); console: {pk_out}-console.log")

    log(f"{target}: raw disk, qcow2, box, manifest, SHA256SUMS in {out}")
    t = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    qcow2 = out / f"spanprobe-{target}.qcow2"
    raw = out / f"spanprobe-{target}.raw"
    box = out / f"spanprobe-{target}-libvirt.box"
    shutil.move(pk_out / f"{target}.qcow2", qcow2)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)], check=True)
    shutil.move(f"{pk_out}-libvirt.box", box)
    packages = {"debian": {}, "python": {}}
    for line in Path(f"{pk_out}-packages.tsv").read_text().splitlines():
        kind, name, version = line.split("\t")
        packages["debian" if kind == "deb" else "python"][name] = version
    (out / "packages.json").write_text(json.dumps(packages, indent=1, sort_keys=True) + "\n")
    shutil.copy2(f"{pk_out}-console.log", out / "build-console.log")
    times["outputs_s"] = round(time.monotonic() - t, 1)

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True,
                                text=True).stdout.strip())
    meta = {
        "target": target, "inputs_key": key, "suite": base["suite"], "kernel": base["kernel"],
        "source_date_epoch": epoch, "base_disk": {"key": base["key"], "sha256": base["disk_sha256"]},
        "agent_wheel": {"name": wheel.name, "sha256": sha256(wheel)},
        "wheelhouse": {"name": house.name, "sha256": sha256(house)},
        "git_commit": commit, "git_dirty": dirty, "packer": packer_version(), "accelerator": accelerator,
        "ansible_strategy": strategy.get("ANSIBLE_STRATEGY", "linear"),
        "built": time.strftime("%F %T %Z"), "times": times,
        "packages": {"debian": len(packages["debian"]), "python": len(packages["python"])},
    }
    times["total_s"] = round(time.monotonic() - t0, 1)
    (out / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    files = sorted(p for p in out.iterdir() if p.is_file())
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))
    shutil.rmtree(work, ignore_errors=True)
    for p in sorted(out.iterdir()):
        log(f"  {p.name:<40} {p.stat().st_size / 2**20:10.1f} MiB")
    log(f"{target}: built in {times['total_s']} s ({times})")
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", default="debian-13-amd64")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output root (default {DEFAULT_OUT})")
    p.add_argument("--accelerator", choices=["tcg", "kvm"], default=os.environ.get("SPANPROBE_VM_ACCEL", "tcg"))
    p.add_argument("--fresh", action="store_true", help="build even when the output is from the same inputs")
    a = p.parse_args()
    if shutil.which("packer") is None:
        raise SystemExit("image: packer is not installed: run `make image` (scripts/dev.sh installs it)")
    print(build(a.target, a.out, a.accelerator, a.fresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
