#!/usr/bin/python3
"""The appliance's base disk, built locally from Debian packages (official cloud images
cannot be downloaded here; `-var base_source=cloud` in Packer switches to them where the
network allows).

    disk.py build TARGET      build what is missing; print the manifest's path
    disk.py show TARGET       where the cached build is (nothing is built)
    disk.py key TARGET        the cache key of its pinned inputs

TARGET names a variables file, packer/<TARGET>.pkrvars.hcl (debian-13-amd64, ...): the
suite and the epoch come from there, so Packer and this script read one truth.

Why this shape. The disk must boot with UEFI and with BIOS, so it is partitioned (GPT:
a BIOS boot partition, an EFI system partition, the root file system). Each file system
is made in a file of its own without mounting anything (`mke2fs -d`, `mkfs.vfat` +
mtools), then the three are written at their offsets into one raw disk with a fixed
GPT (disk and partition GUIDs derived from the target). Boot loaders are installed by
Packer's bootstrap step, inside the build VM, where /dev/vda is a real disk: until then
the build VM boots the kernel and initrd of this manifest directly.

Reproducible by construction: mmdebstrap with SOURCE_DATE_EPOCH, fixed UUIDs, hash seed,
volume id and file system time, file times clamped to the epoch. Package versions float
with the mirror; those of a build are in its manifest.

Cache: ${SPANPROBE_CACHE:-/var/cache/spanprobe}/appliance-base/<TARGET>-<key>/. Standard
library only; run as root (mmdebstrap, chroot).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKER = HERE.parent
REPO = PACKER.parent
sys.path.insert(0, str(REPO / "agent"))
from spanprobe.headers import debian_mirror  # noqa: E402

CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "appliance-base"
CUSTOMIZE = HERE / "customize.sh"
RECIPE = "1"                # bump when the recipe below changes the disk
ESP_MB = 127
BIOS_BOOT_MB = 1
FREE_MB = 2560              # room for the agent's venv, logs, the build's work

# A minimal Debian server as a cloud image has it ...
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "initramfs-tools", "zstd", "e2fsprogs",
    "dosfstools", "linux-image-amd64", "linux-headers-amd64", "grub-pc-bin", "grub-efi-amd64-bin",
    "grub2-common", "openssh-server", "sudo", "python3", "python3-apt", "cloud-init",
    "qemu-guest-agent", "iproute2", "procps", "less", "ca-certificates", "cron", "netbase",
]
# ... plus what the roles install: the build VM has no route out (restrict=on), so the
# roles find their packages already there and are told not to refresh apt's lists.
ROLE_PACKAGES = [
    "python3-bpfcc", "python3-venv",
    "nftables", "auditd", "audispd-plugins", "unattended-upgrades", "apt-listchanges",
    "apparmor", "apparmor-utils", "apparmor-profiles", "libpam-pwquality", "libpam-tmpdir",
    "acct", "sysstat", "debsums", "apt-show-versions", "needrestart", "rkhunter", "lynis",
]
# GPT type GUIDs
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4773-8E79-3D69D8477DE4"


def log(msg: str) -> None:
    print(f"base-disk: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    if "capture_output" not in kw:
        kw.setdefault("stdout", sys.stderr)     # stdout carries only the manifest path
    return subprocess.run([str(c) for c in cmd], **kw)


def target_vars(target: str) -> dict[str, str]:
    """The simple `name = "value"` / `name = 123` lines of packer/<target>.pkrvars.hcl."""
    path = PACKER / f"{target}.pkrvars.hcl"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".pkrvars.hcl") for p in PACKER.glob("*.pkrvars.hcl"))
        raise SystemExit(f"base-disk: no target {target!r}; one of {', '.join(known)}")
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r'\s*(\w+)\s*=\s*(?:"([^"]*)"|(\d+))\s*(?:#.*)?$', line)
        if m:
            out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    for name in ("debian_suite", "source_date_epoch"):
        if name not in out:
            raise SystemExit(f"base-disk: {path} does not set {name}")
    return out


def fixed_uuid(target: str, what: str) -> str:
    return str(uuid.UUID(hashlib.sha256(f"spanprobe:{target}:{what}".encode()).hexdigest()[:32], version=4))


def key(target: str) -> str:
    v = target_vars(target)
    h = hashlib.sha256()
    for part in (RECIPE, v["debian_suite"], v["source_date_epoch"], ESP_MB, FREE_MB,
                 BASE_PACKAGES, ROLE_PACKAGES, CUSTOMIZE.read_text(), Path(__file__).read_text()):
        h.update(json.dumps(part).encode() + b"\0")
    return f"{target}-{h.hexdigest()[:16]}"


def build_once(out: Path, make) -> Path:
    """out/manifest.json, made by make(out) unless a build of that key is there already;
    one build of a key at a time (a lock file beside it). Also used by tests/ansible/images.py."""
    manifest = out / "manifest.json"
    if manifest.exists():
        return manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return manifest if manifest.exists() else make(out)


def build(target: str) -> Path:
    return build_once(CACHE / key(target), lambda out: _build(target, out))


def _build(target: str, out: Path) -> Path:
    v = target_vars(target)
    suite, epoch = v["debian_suite"], int(v["source_date_epoch"])
    t0 = time.monotonic()
    times: dict[str, float] = {}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = tmp / "root"

    # The build key: made with the disk, so a disk and its key always go together. The
    # build user and its key are removed by the image's clean-up, never shipped.
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"spanprobe-build-{target}",
         "-f", tmp / "build_ed25519"])
    uuids = {w: fixed_uuid(target, w) for w in ("disk", "bios", "esp", "root", "root-part")}
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch),
               SPANPROBE_BUILD_PUBKEY=(tmp / "build_ed25519.pub").read_text().strip(),
               SPANPROBE_ROOT_UUID=uuids["root"], SPANPROBE_ESP_PARTUUID=uuids["esp"])

    t = time.monotonic()
    packages = BASE_PACKAGES + ROLE_PACKAGES
    log(f"{target}: mmdebstrap {suite} ({len(packages)} packages)")
    run(["mmdebstrap", "--variant=apt", "--quiet", "--format=directory",
         "--include=" + ",".join(packages),
         "--aptopt=APT::Install-Recommends \"false\"",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         f"--customize-hook=sh {CUSTOMIZE} \"$1\"",
         suite, root, f"deb {debian_mirror()} {suite} main"], env=env)
    times["mmdebstrap_s"] = round(time.monotonic() - t, 1)

    boot = root / "boot"
    vmlinuz, initrd = sorted(boot.glob("vmlinuz-*")), sorted(boot.glob("initrd.img-*"))
    if not vmlinuz or not initrd:
        raise SystemExit(f"base-disk: {target}: no kernel or initrd in /boot: {os.listdir(boot)}")
    release = vmlinuz[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(vmlinuz[-1], tmp / "vmlinuz")
    shutil.copy2(initrd[-1], tmp / "initrd.img")
    versions = dict(line.split("\t", 1) for line in run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True, text=True).stdout.splitlines())

    t = time.monotonic()
    raw = tmp / "disk.raw"
    root_mb = _make_disk(root, raw, tmp, uuids, epoch)
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp / "base.qcow2"])
    raw.unlink()
    shutil.rmtree(root)
    times["disk_s"] = round(time.monotonic() - t, 1)

    digest = hashlib.sha256()
    with open(tmp / "base.qcow2", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    data = {
        "target": target, "key": out.name, "suite": suite, "source_date_epoch": epoch,
        "kernel": release, "disk": str(out / "base.qcow2"), "disk_sha256": digest.hexdigest(),
        "vmlinuz": str(out / "vmlinuz"), "initrd": str(out / "initrd.img"),
        "cmdline": f"console=ttyS0 root=UUID={uuids['root']} rw",
        "ssh_key": str(out / "build_ed25519"), "ssh_user": "packer",
        "root_mb": root_mb, "uuids": uuids, "build_times": times,
        "build_s": round(time.monotonic() - t0, 1), "built": time.strftime("%F %T"),
        "versions": {p: versions.get(p) for p in sorted(packages)},
    }
    (tmp / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(out)
    log(f"{target}: built {out} in {data['build_s']} s ({times})")
    return out / "manifest.json"


def _make_disk(root: Path, raw: Path, tmp: Path, uuids: dict, epoch: int) -> int:
    """GPT disk: BIOS boot (for GRUB's core image), ESP (vfat, /boot/efi), root (ext4)."""
    fake_time = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch), SOURCE_DATE_EPOCH=str(epoch))
    # every file time at the epoch: the tree then says nothing about the day it was built
    run(["find", root, "-newermt", f"@{epoch}", "-exec", "touch", "--no-dereference",
         f"--date=@{epoch}", "{}", "+"])
    size_mb = int(int(run(["du", "-sm", "--apparent-size", root], capture_output=True, text=True)
                      .stdout.split()[0]) * 1.15) + FREE_MB
    ext4 = tmp / "root.ext4"
    run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-U", uuids["root"], "-E",
         f"hash_seed={uuids['root']}", "-d", root, ext4, f"{size_mb}M"], env=fake_time)
    esp = tmp / "esp.vfat"
    run(["truncate", "-s", f"{ESP_MB}M", esp])
    # --invariant fixes the volume id (1234-ABCD) and times: the ESP is mounted by PARTUUID
    run(["mkfs.vfat", "-F", "32", "-n", "EFI", "--invariant", esp], env=fake_time)

    start = 1 + BIOS_BOOT_MB + ESP_MB            # MiB; the first MiB holds the GPT
    total = start + size_mb + 1                   # + the backup GPT
    run(["truncate", "-s", f"{total}M", raw])
    layout = (f"label: gpt\nlabel-id: {uuids['disk']}\n"
              f"start=1MiB, size={BIOS_BOOT_MB}MiB, type={BIOS_BOOT}, uuid={uuids['bios']}, name=bios\n"
              f"start={1 + BIOS_BOOT_MB}MiB, size={ESP_MB}MiB, type={ESP}, uuid={uuids['esp']}, name=esp\n"
              f"start={start}MiB, size={size_mb}MiB, type={LINUX}, uuid={uuids['root-part']}, name=root\n")
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", raw], input=layout.encode(),
        stdout=subprocess.DEVNULL)
    for part, offset_mb in ((esp, 1 + BIOS_BOOT_MB), (ext4, start)):
        run(["dd", f"if={part}", f"of={raw}", "bs=1M", f"seek={offset_mb}", "conv=notrunc,sparse",
             "status=none"])
        part.unlink()
    return size_mb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="disk.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["build", "show", "key"])
    p.add_argument("target", nargs="?", default="debian-13-amd64")
    a = p.parse_args(argv)
    if a.action == "key":
        print(key(a.target))
    elif a.action == "build":
        print(build(a.target))
    else:
        m = CACHE / key(a.target) / "manifest.json"
        print(m if m.exists() else f"{a.target}: not built (key {key(a.target)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
