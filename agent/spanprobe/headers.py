"""Kernel headers for bcc: the running kernel's own, or the nearest Debian ones.

bcc compiles the kernel side at start-up and needs `/lib/modules/$(uname -r)/build`.
Debian packages headers only for its own kernels; on any other kernel (a cloud or
Firecracker build, like the one the project's CI runs on) we fetch the nearest
`linux-headers-*` from Debian's archive, unpack them into a cache keyed by the package
version, link them in, and say so: `spanprobe check` reports the mismatch.

Standard library only: the bootstrap script runs this with Debian's python3 before any
virtual environment exists (`python3 -m spanprobe.headers ensure`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Suites searched for the nearest headers, newest kernel series first.
DEFAULT_SUITES = ("trixie", "bookworm-backports", "bookworm", "bullseye")
DEFAULT_CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe"))

@dataclass(frozen=True)
class HeadersStatus:
    """What `spanprobe check` says about headers."""

    build_dir: Path | None
    release: str | None      # the release the headers were built for
    exact: bool

    def describe(self, running: str) -> str:
        if self.build_dir is None:
            return "missing: run `scripts/dev.sh setup` (installs the nearest Debian headers)"
        if self.exact:
            return f"{self.build_dir} (exact match)"
        return (f"{self.build_dir} is for {self.release}, not {running}: nearest Debian "
                "headers; syscall and tracepoint data are unaffected")


def kernel_series(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(m.group(1)), int(m.group(2))


def nearest(running: str, candidates: list[str]) -> str | None:
    """Pick the header package whose series is closest to the running kernel.

    Older-or-equal series win ties and are preferred: a newer header tree may use
    constructs an older bcc's clang cannot parse.
    """
    want = kernel_series(running)
    best: tuple[tuple[int, int, int], str] | None = None
    for name in candidates:
        m = re.match(r"linux-headers-(\d+)\.(\d+)", name)
        if not m:
            continue
        series = (int(m.group(1)), int(m.group(2)))
        distance = abs((series[0] - want[0]) * 100 + series[1] - want[1])
        newer = 1 if series > want else 0
        # Among equal distance, prefer older; among equal everything, newest ABI name.
        key = (newer, distance, 0)
        if best is None or key < best[0] or (key == best[0] and _natural(name) > _natural(best[1])):
            best = (key, name)
    return best[1] if best else None


def _natural(name: str) -> list:
    """Sort key comparing digit runs as numbers: ABI 6.1.0-28 is newer than 6.1.0-9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_status(running: str | None = None, root: Path = Path("/")) -> HeadersStatus:
    running = running or os.uname().release
    build = root / "lib/modules" / running / "build"
    if not (build / "include").exists():
        return HeadersStatus(None, None, False)
    release = None
    uts = build / "include/generated/utsrelease.h"
    try:
        m = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts.read_text())
        release = m.group(1) if m else None
    except OSError:
        pass
    if release is None:
        release = build.resolve().name.removeprefix("linux-headers-")
    return HeadersStatus(build, release, release == running)


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine already uses (never a name of our own)."""
    env = os.environ.get("SPANPROBE_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    texts = []
    for path in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    found = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m and re.search(r"/debian/?$", m.group(1)):
                found.append(m.group(1).rstrip("/"))
    if not found:
        raise SystemExit("spanprobe: no Debian mirror in /etc/apt sources; set SPANPROBE_DEBIAN_MIRROR")
    return min(found, key=_mirror_rank)     # the first of the best rank


def _mirror_rank(url: str) -> int:
    """Third-party repositories end in /debian too (download.docker.com/linux/debian,
    packages.gitlab.com/runner/gitlab-runner/debian): prefer Debian's own hosts, then a
    mirror's top-level /debian, then anything else."""
    netloc, _, path = url.split("://", 1)[-1].partition("/")
    host = netloc.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    if host == "debian.org" or host.endswith(".debian.org"):
        return 0
    return 1 if path == "debian" else 2


class AptView:
    """A private apt state over chosen suites: the machine's own lists stay untouched."""

    def __init__(self, mirror: str, suites: tuple[str, ...], workdir: Path):
        self.dir = workdir
        (workdir / "lists/partial").mkdir(parents=True, exist_ok=True)
        (workdir / "archives/partial").mkdir(parents=True, exist_ok=True)
        (workdir / "sources.list").write_text(
            "".join(f"deb {mirror} {suite} main\n" for suite in suites))
        self.opts = [
            "-o", f"Dir::Etc::SourceList={workdir / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={workdir / 'lists'}",
            "-o", f"Dir::Cache={workdir}",
            "-o", f"Dir::Cache::Archives={workdir / 'archives'}",
            "-o", "Debug::NoLocking=1",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.opts, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def header_packages(self, arch: str) -> list[str]:
        out = self.run("apt-cache", "pkgnames", "linux-headers-")
        # The generic flavour only: -rt- and -cloud- trees configure a different kernel.
        return sorted(n for n in out.split()
                      if re.fullmatch(rf"linux-headers-\d+\.\d+\.\d+[-+][\w.+]*-{arch}", n)
                      and "-rt-" not in n and "-cloud-" not in n)

    def depends(self, package: str) -> list[str]:
        out = self.run("apt-cache", "depends", "--no-recommends", "--no-suggests", package)
        return [m.group(1) for m in re.finditer(r"Depends:\s*(linux-headers-\S+)", out)]

    def version(self, package: str) -> str:
        out = self.run("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s*(\S+)", out)
        return m.group(1) if m else "unknown"

    def download(self, package: str, into: Path) -> Path:
        self.run("apt-get", "-q", "download", package, cwd=into)
        debs = sorted(into.glob(f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"spanprobe: apt-get download {package} produced nothing")
        return debs[-1]


def ensure(running: str | None = None, cache: Path = DEFAULT_CACHE,
           suites: tuple[str, ...] = DEFAULT_SUITES, log=print) -> HeadersStatus:
    """Make /lib/modules/<running>/build usable for bcc; idempotent."""
    running = running or os.uname().release
    status = read_status(running)
    if status.build_dir is not None:
        return status
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    exact = f"linux-headers-{running}"
    if subprocess.run(["apt-get", "install", "-y", "-q", exact], capture_output=True).returncode == 0:
        log(f"spanprobe: installed {exact}")
        return read_status(running)

    with tempfile.TemporaryDirectory(prefix="spanprobe-apt-") as tmp:
        view = AptView(debian_mirror(), suites, Path(tmp))
        view.update()
        pick = nearest(running, view.header_packages(arch))
        if pick is None:
            raise SystemExit(f"spanprobe: no linux-headers-*-{arch} in {', '.join(suites)}")
        version = view.version(pick)
        target = cache / "kernel-headers" / f"{pick}_{version}"
        if not (target / ".complete").exists():
            log(f"spanprobe: WARNING no headers packaged for {running}; using nearest Debian {pick} {version}")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for package in [pick, *view.depends(pick)]:
                deb = view.download(package, Path(tmp))
                subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
            (target / ".complete").write_text(f"{pick} {version}\n")
        else:
            log(f"spanprobe: WARNING using cached nearest Debian headers {pick} {version} for {running}")
    link_headers(running, target, pick)
    return read_status(running)


def link_headers(running: str, target: Path, package: str) -> None:
    tree = target / "usr/src" / package
    common = sorted((target / "usr/src").glob(package.rsplit("-", 1)[0] + "-common*"))
    moddir = Path("/lib/modules") / running
    moddir.mkdir(parents=True, exist_ok=True)
    for name, dest in (("build", tree), ("source", common[0] if common else tree)):
        link = moddir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m spanprobe.headers")
    parser.add_argument("action", choices=["ensure", "status"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    running = os.uname().release
    # What ensure unpacks is read by the agent's own unprivileged user: never let a
    # hardened umask (027 from login.defs) make it root's alone.
    os.umask(0o022)
    status = ensure(running, args.cache) if args.action == "ensure" else read_status(running)
    print(f"kernel headers: {status.describe(running)}")
    return 0 if status.build_dir else 1


if __name__ == "__main__":
    sys.exit(main())
