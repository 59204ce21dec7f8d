#!/usr/bin/python3
"""Build (and cache) what the kernel matrix boots: a Debian trixie guest image holding
every pinned kernel's modules and headers, plus each kernel's vmlinuz and initrd.

Standard library only; run with Debian's /usr/bin/python3 as root:

    build.py resolve        re-pin tests/kernels/kernels.json from the Debian archive
    build.py build          build what is missing, print the manifest path (JSON)
    build.py show           print where the cached build is (nothing is built)

Everything goes to ${SPANPROBE_CACHE:-/var/cache/spanprobe}/kernels/, never into the
repository:
    apt/<suite>/            private apt views (the machine's own apt state is untouched)
    debs/                   downloaded .deb files (named by version: a cache by nature)
    rootfs-<key>.tar        mmdebstrap of the guest user space (key: its pins)
    site-<key>/             Python packages trixie lacks, for the guest's python3.13
    <key>/                  the build: disk.ext4, <release>/{vmlinuz,initrd.img},
                            manifest.json (key: hash of every pinned input + recipe)

The Debian mirror is the one this machine's apt sources already use
(spanprobe.headers.debian_mirror); no host name is written anywhere.
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "agent"))
from spanprobe.headers import AptView, debian_mirror  # noqa: E402

PINS = HERE / "kernels.json"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "kernels"
# Bump when the recipe below changes in a way that changes the image.
RECIPE = "4"

# The guest's PID 1, baked into the image: it only mounts the repository share and
# hands over to the repository's own tests/kernels/guest_init.sh, so changes to the
# harness or the agent never need an image rebuild.
STUB_INIT = """#!/bin/sh
# spanprobe kernel-matrix guest: mount the repository share, run its guest_init.sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in netfs 9pnet 9pnet_virtio 9p; do modprobe $m 2>/dev/null; done
mkdir -p /repo
if mount -t 9p -o trans=virtio,version=9p2000.L,ro repo /repo; then
    exec /bin/sh /repo/tests/kernels/guest_init.sh
fi
echo "SPANPROBE-GUEST-ERROR cannot mount the repository share (9p)"
echo o > /proc/sysrq-trigger
sleep 5
"""

INITRAMFS_CONF = """MODULES=list
BUSYBOX=n
COMPRESS=gzip
"""
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "virtio_console", "ext4", "crc32c_generic"]

USERSPACE_PACKAGES = ["python3", "python3-bpfcc", "python3-yaml", "bpftool", "iproute2", "mount",
                      "util-linux", "kmod", "udev", "initramfs-tools", "procps", "ca-certificates",
                      "klibc-utils"]
PY_REQUIREMENTS = ["opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto",
                   "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-otlp-proto-grpc",
                   "protobuf", "grpcio", "requests"]
KERNEL_SUITES = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12", "sid": None}


def log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


# ---------------------------------------------------------------- apt views
_views: dict[str, AptView] = {}


def view(suite: str, refresh: bool = False) -> AptView:
    if suite not in _views:
        v = AptView(debian_mirror(), (suite,), CACHE / "apt" / suite)
        stamp = CACHE / "apt" / suite / "updated"
        if refresh or not stamp.exists():
            log(f"apt update ({suite})")
            v.update()
            stamp.write_text(time.strftime("%F %T\n"))
        _views[suite] = v
    return _views[suite]


def deb_path(package: str, version: str) -> Path:
    return CACHE / "debs" / f"{package}_{version.replace(':', '%3a')}_amd64.deb"


def fetch(suite: str, package: str, version: str) -> Path:
    """The pinned .deb, downloaded once."""
    out = deb_path(package, version)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for refresh in (False, True):
            try:
                view(suite, refresh).run("apt-get", "-q", "download", f"{package}={version}", cwd=Path(tmp))
                break
            except subprocess.CalledProcessError as exc:
                if refresh:
                    raise SystemExit(f"build: {package}={version} is no longer in {suite}: "
                                     f"re-pin with `{sys.argv[0]} resolve` ({exc.stderr.strip()[-200:]})")
                _views.pop(suite, None)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        got[0].rename(out)
    return out


# ---------------------------------------------------------------- resolve
def resolve() -> dict:
    """Newest generic amd64 kernel of each suite, its headers and their dependencies."""
    kernels = []
    for suite, series in KERNEL_SUITES.items():
        v = view(suite, refresh=True)
        dep = v.run("apt-cache", "depends", "linux-image-amd64")
        image = re.search(r"Depends:\s*(linux-image-\S+)", dep).group(1)
        release = image.removeprefix("linux-image-")
        if series and not release.startswith(series + "."):
            raise SystemExit(f"build: {suite}'s linux-image-amd64 is {release}, expected {series}")
        wanted = [image, f"linux-headers-{release}"]
        # split kernel packages (sid 7.x): image -> binary + modules + base
        for line in v.run("apt-cache", "depends", "--no-recommends", "--no-suggests", image).splitlines():
            m = re.match(r"\s*Depends:\s*(linux-(?:binary|modules|base)-\S+)", line)
            if m and m.group(1).endswith(release):
                wanted.append(m.group(1))
        for line in v.run("apt-cache", "depends", "--no-recommends", "--no-suggests",
                          f"linux-headers-{release}").splitlines():
            m = re.match(r"\s*Depends:\s*(linux-(?:headers|kbuild|base)-\S+)", line)
            if m and (m.group(1).startswith(("linux-headers-", "linux-kbuild-")) or m.group(1).endswith(release)):
                wanted.append(m.group(1))
        pkgs = {}
        for p in dict.fromkeys(wanted):
            pkgs[p] = v.version(p)
        kernels.append({"name": f"{suite}-{release.split('-')[0].rsplit('.', 1)[0] if series is None else series}",
                        "suite": suite, "release": release, "packages": pkgs})
    t = view("trixie")
    userspace = {p: t.version(p) for p in USERSPACE_PACKAGES}
    data = {
        "comment": "Pinned inputs of the kernel matrix; regenerate with tests/kernels/build.py resolve",
        "resolved": time.strftime("%Y-%m-%d"),
        "guest": {"suite": "trixie", "source_date_epoch": 1735689600, "packages": userspace,
                  "python": {"version": "3.13", "platform": "manylinux2014_x86_64",
                             "requirements": PY_REQUIREMENTS,
                             "constraints": "requirements/constraints.txt"}},
        "kernels": kernels,
        # what each kernel must give (test_kernel_matrix.py): kept; a renamed kernel needs its own
        "expect": load_pins().get("expect", {}) if PINS.exists() else {},
    }
    PINS.write_text(json.dumps(data, indent=2) + "\n")
    return data


# ---------------------------------------------------------------- build steps
def load_pins() -> dict:
    return json.loads(PINS.read_text())


def keys(pins: dict, site_dir: Path | None = None) -> dict:
    """Cache keys. The image's key takes the Python packages as installed (their
    dist-info names), not constraints.txt itself: a pin the guest does not use changes
    the site dir's key (a 3 s pip run) but not the image's."""
    g = pins["guest"]
    rootfs = sha("rootfs", RECIPE, g["suite"], g["source_date_epoch"], g["packages"])
    site = sha("site", RECIPE, g["python"], CONSTRAINTS.read_bytes())
    site_dir = site_dir or CACHE / f"site-{site}"
    installed = sorted(d.name for d in site_dir.glob("*.dist-info")) if (site_dir / ".complete").exists() else None
    build = sha("build", RECIPE, rootfs, installed, pins["kernels"], STUB_INIT, INITRAMFS_CONF,
                INITRAMFS_MODULES) if installed is not None else None
    return {"rootfs": rootfs, "site": site, "build": build}


def build_rootfs(pins: dict, key: str) -> Path:
    out = CACHE / f"rootfs-{key}.tar"
    if out.exists():
        return out
    g = pins["guest"]
    include = ",".join(f"{p}={v}" for p, v in sorted(g["packages"].items()))
    tmp = out.with_suffix(".tmp")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(g["source_date_epoch"]))
    log(f"mmdebstrap {g['suite']} -> {out.name}")
    run(["mmdebstrap", "--variant=apt", "--quiet", "--format=tar", f"--include={include}",
         "--aptopt=APT::Install-Recommends \"false\"",
         "--customize-hook=echo spanprobe-guest > \"$1/etc/hostname\"",
         "--customize-hook=printf '# no network in the test guest\\n' > \"$1/etc/resolv.conf\"",
         "--customize-hook=printf '127.0.0.1 localhost spanprobe-guest\\n::1 localhost\\n' > \"$1/etc/hosts\"",
         "--customize-hook=rm -rf \"$1\"/var/cache/apt/*.bin \"$1\"/var/lib/apt/lists/*_Packages",
         g["suite"], tmp, f"deb {debian_mirror()} {g['suite']} main"], env=env)
    tmp.rename(out)
    return out


def build_site(pins: dict, key: str) -> Path:
    out = CACHE / f"site-{key}"
    if (out / ".complete").exists():
        return out
    py = pins["guest"]["python"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"pip --target {out.name} (python {py['version']}, {py['platform']})")
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
         "--target", tmp, "--python-version", py["version"], "--implementation", "cp",
         "--only-binary=:all:", "--platform", py["platform"], "-c", REPO / py["constraints"],
         *py["requirements"]])
    (tmp / ".complete").write_text("\n".join(py["requirements"]) + "\n")
    tmp.rename(out)
    return out


def extract(deb: Path, root: Path) -> None:
    """dpkg-deb -x, but keeping the merged-/usr symlinks (/lib -> usr/lib) of the root."""
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    run(["tar", "-x", "--keep-directory-symlink", "-C", root], stdin=data.stdout)
    if data.wait() != 0:
        raise SystemExit(f"build: dpkg-deb --fsys-tarfile {deb} failed")


def chroot(root: Path, *cmd) -> None:
    mounts = []
    try:
        for fs, target, opts in (("proc", "proc", []), ("sysfs", "sys", []), ("/dev", "dev", ["--bind"])):
            run(["mount", *opts, *([] if opts else ["-t", fs]), fs, root / target])
            mounts.append(root / target)
        run(["chroot", root, *cmd], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)])


def find_vmlinuz(root: Path, release: str) -> Path:
    for rel in (f"boot/vmlinuz-{release}", f"usr/lib/modules/{release}/vmlinuz"):
        if (root / rel).exists():
            return root / rel
    raise SystemExit(f"build: no vmlinuz for {release} in its packages")


def build_all(pins: dict) -> Path:
    """The guests' disk and kernels, built once per key. One build at a time (a lock file in
    the cache): the test command starts this in the background on a cold machine
    (scripts/dev.sh prebuild) and the kernel tier may ask for it while it runs."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_all(pins)


def _build_all(pins: dict) -> Path:
    times = {}
    t0 = time.monotonic()
    site = build_site(pins, keys(pins)["site"])
    times["site_s"] = round(time.monotonic() - t0, 1)
    k = keys(pins, site)
    out = CACHE / k["build"]
    manifest = out / "manifest.json"
    if manifest.exists():
        return manifest
    t0 = time.monotonic()
    debs = {kern["release"]: [fetch(kern["suite"], p, v) for p, v in kern["packages"].items()]
            for kern in pins["kernels"]}
    times["download_s"] = round(time.monotonic() - t0, 1)
    t = time.monotonic()
    tar = build_rootfs(pins, k["rootfs"])
    times["rootfs_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    work = CACHE / f"work-{k['build']}"
    tmp = out.with_name(out.name + ".tmp")
    for d in (work, tmp):
        if d.exists():
            subprocess.run(["umount", "-R", "-l", str(d / "root")], capture_output=True)
            shutil.rmtree(d)
    root = work / "root"
    root.mkdir(parents=True)
    tmp.mkdir(parents=True)
    run(["tar", "-x", "-C", root, "-f", tar])
    conf = root / "etc/spanprobe-initramfs"
    (conf / "scripts").mkdir(parents=True)
    (conf / "initramfs.conf").write_text(INITRAMFS_CONF)
    (conf / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
    kernels_out = []
    for kern in pins["kernels"]:
        rel = kern["release"]
        log(f"kernel {rel}: unpack {len(debs[rel])} packages, depmod, mkinitramfs")
        for deb in debs[rel]:
            extract(deb, root)
        mod = root / "usr/lib/modules" / rel
        build = mod / "build"
        if not build.exists() and not build.is_symlink():
            build.symlink_to(f"/usr/src/linux-headers-{rel}")
        chroot(root, "depmod", "-a", rel)
        (tmp / rel).mkdir()
        chroot(root, "mkinitramfs", "-d", "/etc/spanprobe-initramfs", "-o", f"/tmp/initrd-{rel}", rel)
        shutil.move(root / f"tmp/initrd-{rel}", tmp / rel / "initrd.img")
        vmlinuz = find_vmlinuz(root, rel)
        shutil.copy2(vmlinuz, tmp / rel / "vmlinuz")
        if vmlinuz.is_relative_to(root / "boot"):
            vmlinuz.unlink()        # booted with -kernel: no second copy in the image
        kernels_out.append({"name": kern["name"], "suite": kern["suite"], "release": rel,
                            "vmlinuz": str(out / rel / "vmlinuz"), "initrd": str(out / rel / "initrd.img")})
    shutil.rmtree(conf)
    # the Python packages trixie lacks, and PID 1
    (root / "opt/spanprobe-site").mkdir(parents=True)
    run(["cp", "-a", f"{site}/.", root / "opt/spanprobe-site"])
    (root / "opt/spanprobe-site/.complete").unlink(missing_ok=True)
    init = root / "usr/local/sbin/spanprobe-init"
    init.write_text(STUB_INIT)
    init.chmod(0o755)
    for d in ("repo", "results"):
        (root / d).mkdir(exist_ok=True)
    times["assemble_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    size_mb = int(int(subprocess.run(["du", "-sm", "--apparent-size", str(root)], capture_output=True,
                                     text=True, check=True).stdout.split()[0]) * 1.25) + 512
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(pins["guest"]["source_date_epoch"]))
    uuid = "5ba9b0be-0000-4000-8000-" + k["build"][:12]
    run(["mke2fs", "-q", "-t", "ext4", "-L", "spanprobe", "-U", uuid, "-E",
         f"hash_seed={uuid},root_owner=0:0", "-d", root, tmp / "disk.ext4", f"{size_mb}M"], env=env)
    times["image_s"] = round(time.monotonic() - t, 1)
    shutil.rmtree(work)
    data = {"key": k, "disk": str(out / "disk.ext4"), "kernels": kernels_out,
            "build_times": times, "built": time.strftime("%F %T")}
    (tmp / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(out)
    prune(keep={out.name, f"rootfs-{k['rootfs']}.tar", site.name})
    log(f"built {out} in {time.monotonic() - t0:.0f} s: {times}")
    return manifest


def prune(keep: set[str]) -> None:
    """Older builds (an image is a few GB), root file systems and site dirs go; the
    downloaded .debs and apt lists stay."""
    for p in CACHE.iterdir():
        if p.name in keep:
            continue
        if re.fullmatch(r"[0-9a-f]{16}(\.tmp)?|work-[0-9a-f]{16}|rootfs-[0-9a-f]{16}\.(tar|tmp)|site-[0-9a-f]{16}(\.tmp)?",
                        p.name):
            log(f"prune {p.name}")
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="build.py")
    p.add_argument("action", choices=["resolve", "build", "show"])
    a = p.parse_args(argv)
    if a.action == "resolve":
        data = resolve()
        print(json.dumps([{k["release"]: k["packages"]} for k in data["kernels"]], indent=1))
        return 0
    pins = load_pins()
    if a.action == "show":
        key = keys(pins)["build"]
        m = CACHE / str(key) / "manifest.json"
        print(m if m.exists() else f"not built: {m}")
        return 0 if m.exists() else 1
    if os.geteuid() != 0:
        raise SystemExit("build: run as root (mmdebstrap, chroot, mounts)")
    print(build_all(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
