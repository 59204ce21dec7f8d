#!/usr/bin/python3
"""Base disks for the Ansible tier: Debian 13 and Debian 12 VMs built locally from Debian
packages, cached outside the repository and never written by a test (each test boots a
qcow2 overlay on top).

    images.py build [NAME...]     build what is missing; print each manifest path
    images.py show                where the cached builds are (nothing is built)

Standard library only; run as root (mmdebstrap, chroot, mke2fs).

Each guest is `mmdebstrap --variant=apt` of its suite with SOURCE_DATE_EPOCH set, the
packages below (everything the roles would install, so a test guest needs no network),
tests/ansible/guest/customize.sh run on the tree (management user `debian` with the test
key, DHCP, fixed machine id), then an ext4 file system made with `mke2fs -d` (fixed UUID,
hash seed and time) converted to qcow2. The kernel and initrd are taken out of the tree
for direct boot (-kernel/-initrd, root=/dev/vda).

Cache: ${SPANPROBE_CACHE:-/var/cache/spanprobe}/ansible-vms/<key>/ where key is the hash
of every pinned input (recipe, suite, packages, epoch, customize.sh). Package versions
float with the mirror; the versions an image was built from are in its manifest.json.
The Debian mirror is the one this machine's apt sources already use.
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
REPO = HERE.parent.parent
if __name__ == "__main__":         # run as a program (fleet_helpers.build_images); the tests
    sys.path[:0] = [str(REPO / "agent"), str(REPO / "packer" / "base")]   # get pyproject's pythonpath
from spanprobe.headers import debian_mirror  # noqa: E402
from disk import build_once  # noqa: E402  (packer/base/disk.py)

CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "ansible-vms"
CUSTOMIZE = HERE / "guest" / "customize.sh"
RECIPE = "3"                        # bump when the recipe below changes the image
SOURCE_DATE_EPOCH = 1735689600      # 2025-01-01
FREE_MB = 2048                      # room for the agent's venv, logs, lynis

# A minimal Debian server as a cloud image has it, plus what the roles install (the
# guests have no route out, so the roles must find their packages already there).
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "initramfs-tools", "zstd",
    "linux-image-amd64", "linux-headers-amd64", "openssh-server", "sudo", "python3",
    "python3-apt", "iproute2", "procps", "less", "ca-certificates", "cron",
]
ROLE_PACKAGES = [
    # roles/spanprobe
    "python3-bpfcc", "python3-venv",
    # roles/hardening
    "nftables", "auditd", "audispd-plugins", "unattended-upgrades", "apt-listchanges",
    "apparmor", "apparmor-utils", "apparmor-profiles", "libpam-pwquality", "libpam-tmpdir",
    "acct", "sysstat", "debsums", "apt-show-versions", "needrestart", "rkhunter",
    # measured by the tests
    "lynis",
]
GUESTS = {
    "debian13": {"suite": "trixie", "python": "3.13"},
    "debian12": {"suite": "bookworm", "python": "3.11"},
}


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    if "capture_output" not in kw:
        kw.setdefault("stdout", sys.stderr)     # stdout carries only the manifest paths
    return subprocess.run([str(c) for c in cmd], **kw)


def key(name: str) -> str:
    g = GUESTS[name]
    h = hashlib.sha256()
    for part in (RECIPE, g["suite"], SOURCE_DATE_EPOCH, FREE_MB, BASE_PACKAGES, ROLE_PACKAGES,
                 CUSTOMIZE.read_bytes().decode()):
        h.update(json.dumps(part).encode() + b"\0")
    return f"{name}-{h.hexdigest()[:16]}"


def image_dir(name: str) -> Path:
    return CACHE / key(name)


def build(name: str) -> Path:
    return build_once(image_dir(name), lambda out: _build(name, out))


def _build(name: str, out: Path) -> Path:
    g = GUESTS[name]
    t0 = time.monotonic()
    times = {}
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    root = tmp / "root"

    # the test key: made with the image, so an image and its key always go together
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"spanprobe-test-{name}",
         "-f", tmp / "id_ed25519"])
    pubkey = (tmp / "id_ed25519.pub").read_text().strip()

    mirror = debian_mirror()
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), SPANPROBE_TEST_PUBKEY=pubkey)
    log(f"{name}: mmdebstrap {g['suite']} ({len(BASE_PACKAGES) + len(ROLE_PACKAGES)} packages)")
    t = time.monotonic()
    run(["mmdebstrap", "--variant=apt", "--quiet", "--format=directory",
         "--include=" + ",".join(BASE_PACKAGES + ROLE_PACKAGES),
         "--aptopt=APT::Install-Recommends \"false\"",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         f"--customize-hook=sh {CUSTOMIZE} \"$1\"",
         g["suite"], root, f"deb {mirror} {g['suite']} main"], env=env)
    times["mmdebstrap_s"] = round(time.monotonic() - t, 1)

    # kernel and initrd for direct boot
    boot = root / "boot"
    vmlinuz = sorted(boot.glob("vmlinuz-*"))
    initrd = sorted(boot.glob("initrd.img-*"))
    if not vmlinuz or not initrd:
        raise SystemExit(f"images: {name}: no kernel or initrd in /boot: {os.listdir(boot)}")
    release = vmlinuz[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(vmlinuz[-1], tmp / "vmlinuz")
    shutil.copy2(initrd[-1], tmp / "initrd.img")
    build = root / "usr/lib/modules" / release / "build"
    target = Path(os.readlink(build)) if build.is_symlink() else build
    if not (root / target.relative_to("/") if target.is_absolute() else build.parent / target).is_dir():
        raise SystemExit(f"images: {name}: no headers for {release} (bcc needs them)")
    versions = dict(line.split("\t", 1) for line in run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True, text=True).stdout.splitlines())

    t = time.monotonic()
    size_mb = int(int(run(["du", "-sm", "--apparent-size", root], capture_output=True, text=True)
                      .stdout.split()[0]) * 1.15) + FREE_MB
    uuid = "5ba9b0be-0000-4000-8000-" + hashlib.sha256(out.name.encode()).hexdigest()[:12]
    raw = tmp / "disk.raw"
    run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-U", uuid, "-E", f"hash_seed={uuid}",
         "-d", root, raw, f"{size_mb}M"], env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH)))
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp / "base.qcow2"])
    raw.unlink()
    shutil.rmtree(root)
    times["image_s"] = round(time.monotonic() - t, 1)

    data = {"name": name, "key": out.name, "suite": g["suite"], "python": g["python"],
            "kernel": release, "disk": str(out / "base.qcow2"), "vmlinuz": str(out / "vmlinuz"),
            "initrd": str(out / "initrd.img"), "ssh_key": str(out / "id_ed25519"), "user": "debian",
            "size_mb": size_mb, "build_times": times, "build_s": round(time.monotonic() - t0, 1),
            "built": time.strftime("%F %T"),
            "versions": {p: versions.get(p) for p in sorted(BASE_PACKAGES + ROLE_PACKAGES)}}
    (tmp / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(out)
    log(f"{name}: built {out} in {data['build_s']} s ({times})")
    return out / "manifest.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="images.py")
    p.add_argument("action", choices=["build", "show"])
    p.add_argument("names", nargs="*", default=list(GUESTS))
    a = p.parse_args(argv)
    for name in a.names:
        if name not in GUESTS:
            raise SystemExit(f"images: unknown guest {name!r}; one of {', '.join(GUESTS)}")
        if a.action == "build":
            print(build(name))
        else:
            m = image_dir(name) / "manifest.json"
            print(f"{name}: {m if m.exists() else 'not built'} (key {key(name)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
