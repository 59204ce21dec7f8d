#!/usr/bin/env python3
"""Reproducibility report: compare the file trees of two builds of the image.

    python packer/compare.py A.raw B.raw [--json OUT]

Each partition with a file system is read without writing to the image (the root: a loop
device at the partition's offset, mounted `ro,noload`; the ESP: copied out with mtools) and
walked; every entry is compared by path, type, mode, owner, size and
content hash (symbolic links by target). Differences matching ALLOWED are listed apart,
each with its reason; the exit status is 1 when any other difference is found. Also says
whether the two raw images are bit-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

# Paths allowed to differ between two builds from the same inputs (regex -> why). Kept
# short on purpose: every entry is a known source of randomness we could not remove.
ALLOWED: dict[str, str] = {}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def partitions(raw: Path) -> list[dict]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    out = []
    for p in table["partitions"]:
        name = p.get("name") or p["node"]
        if name == "bios":
            continue                    # GRUB's core image, no file system: compared as bytes
        out.append({"name": name, "offset": p["start"] * sector, "size": p["size"] * sector})
    return out


def fs_type(raw: Path, part: dict) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", "-O", str(part["offset"]), str(raw)],
                          capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def mounted(raw: Path, part: dict):
    """The partition's files under a directory, read-only. FAT (the ESP) is copied out with
    mtools rather than mounted: a host kernel need not have vfat (this one has not), and FAT
    has no modes or owners to preserve anyway."""
    fstype = fs_type(raw, part)
    if fstype == "vfat":
        out = tempfile.mkdtemp(prefix="spanprobe-compare-esp-")
        try:
            subprocess.run(["mcopy", "-s", "-n", "-m", "-i", f"{raw}@@{part['offset']}", "::*", out],
                           env=dict(os.environ, MTOOLS_SKIP_CHECK="1"), capture_output=True, text=True, check=True)
            yield Path(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset", str(part["offset"]),
                           "--sizelimit", str(part["size"]), str(raw)], capture_output=True, text=True,
                          check=True).stdout.strip()
    mnt = tempfile.mkdtemp(prefix="spanprobe-compare-")
    try:
        # noload: an ext4 journal is not replayed, so nothing at all is written to the image.
        opts = "ro,noload" if fstype.startswith("ext") else "ro"
        subprocess.run(["mount", "-o", opts, loop, mnt], check=True)
        try:
            yield Path(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.rmdir(mnt)


def tree(top: Path, label: str) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = f"{label}:/{p.relative_to(top)}"
            if stat.S_ISREG(st.st_mode):
                what = ("file", sha256(p))
            elif stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", "")
            else:
                what = ("special", f"{st.st_rdev}")
            out[rel] = (what[0], oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                        st.st_size if what[0] == "file" else 0, what[1])
    return out


def bios_boot(raw: Path) -> str:
    """The MBR and the BIOS boot partition (GRUB's boot and core images)."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    h = hashlib.sha256()
    with open(raw, "rb") as f:
        h.update(f.read(440))
        for p in table["partitions"]:
            if p.get("name") == "bios":
                f.seek(p["start"] * 512)
                h.update(f.read(p["size"] * 512))
    return h.hexdigest()


def compare(a: Path, b: Path) -> dict:
    trees = []
    for raw in (a, b):
        t = {}
        for part in partitions(raw):
            with mounted(raw, part) as mnt:
                t.update(tree(mnt, part["name"]))
        t["bios:/boot-code"] = ("bytes", "", 0, 0, 0, bios_boot(raw))
        trees.append(t)
    ta, tb = trees
    diffs, allowed = [], []
    for path in sorted(set(ta) | set(tb)):
        if ta.get(path) == tb.get(path):
            continue
        fields = ("type", "mode", "uid", "gid", "size", "content")
        if path not in ta or path not in tb:
            what = "only in " + ("B" if path not in ta else "A")
        else:
            what = ", ".join(f for f, x, y in zip(fields, ta[path], tb[path]) if x != y)
        reason = next((r for pat, r in ALLOWED.items() if re.search(pat, path)), None)
        (allowed if reason else diffs).append({"path": path, "differs": what, **({"allowed": reason} if reason else {})})
    return {"a": str(a), "b": str(b), "entries": len(ta), "differences": diffs, "allowed": allowed,
            "bit_identical": sha256(a) == sha256(b)}


def main() -> int:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    r = compare(args.a, args.b)
    for d in r["differences"]:
        print(f"DIFF     {d['path']}: {d['differs']}")
    for d in r["allowed"]:
        print(f"allowed  {d['path']}: {d['differs']} ({d['allowed']})")
    print(f"reproducibility: {r['entries']} entries, {len(r['differences'])} differences, "
          f"{len(r['allowed'])} allowed; raw images bit-identical: {'yes' if r['bit_identical'] else 'no'}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 1 if r["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
