"""Unit tests of kernel header selection (spanprobe.headers): no apt, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanprobe.headers import HeadersStatus, debian_mirror, kernel_series, nearest, read_status


def h(version: str, arch: str = "amd64") -> str:
    return f"linux-headers-{version}-{arch}"


DEBIAN = [h("5.10.0-30"), h("6.1.0-28"), h("6.12.12+bpo"), h("7.0.0-1")]


@pytest.mark.parametrize("running, candidates, expected", [
    ("6.18.3", [h("6.1.0-28"), h("6.12.12+bpo"), h("7.0.0-1")], h("6.12.12+bpo")),
    ("5.10.0-cloud", DEBIAN, h("5.10.0-30")),
    ("6.1.102", DEBIAN, h("6.1.0-28")),
    ("6.5.0", DEBIAN, h("6.1.0-28")),
    ("6.13.0", DEBIAN, h("6.12.12+bpo")),
    # older is preferred even when a newer series is closer
    ("6.18.0", [h("6.1.0-28"), h("7.0.0-1")], h("6.1.0-28")),
    ("6.11.0", [h("6.1.0-28"), h("6.12.12+bpo")], h("6.1.0-28")),
    # nothing older: the nearest newer one
    ("5.4.0-150-generic", DEBIAN, h("5.10.0-30")),
    ("4.19.0", [h("6.1.0-28"), h("5.10.0-30")], h("5.10.0-30")),
    # same series: the newest ABI, compared as numbers
    ("6.1.5", [h("6.1.0-9"), h("6.1.0-28"), h("6.1.0-10")], h("6.1.0-28")),
    ("6.12.30", [h("6.12.12+bpo"), h("6.12.27")], h("6.12.27")),
])
def test_nearest(running, candidates, expected):
    assert nearest(running, candidates) == expected
    assert nearest(running, list(reversed(candidates))) == expected


def test_nearest_ignores_other_names_and_may_find_nothing():
    assert nearest("6.1.0", []) is None
    assert nearest("6.1.0", ["linux-headers-amd64", "linux-image-6.1.0-28-amd64"]) is None
    assert nearest("6.1.0", ["linux-headers-amd64", h("6.1.0-28")]) == h("6.1.0-28")


def test_kernel_series():
    assert kernel_series("6.12.9+bpo-amd64") == (6, 12)
    assert kernel_series("5.10") == (5, 10)
    with pytest.raises(ValueError, match="not a kernel release"):
        kernel_series("linux")


# ---- mirror ----

@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("SPANPROBE_DEBIAN_MIRROR", raising=False)


def apt_dir(tmp_path: Path, sources_list: str | None = None, **parts: str) -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (d / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (d / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return d


def test_mirror_from_deb822(tmp_path, no_env):
    d = apt_dir(tmp_path, debian_sources=(
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: trixie trixie-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian-security\n"
        "Suites: trixie-security\n"))
    assert debian_mirror(d) == "http://deb.debian.org/debian"


def test_mirror_deb822_security_first_is_skipped(tmp_path, no_env):
    d = apt_dir(tmp_path, debian_sources=(
        "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: trixie-security\n\n"
        "Types: deb\nURIs: https://mirror.example.org/debian/\nSuites: trixie\n"))
    assert debian_mirror(d) == "https://mirror.example.org/debian"


def test_mirror_from_one_line_sources_with_options(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list=(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://ftp.example.de/debian/ "
        "bookworm main contrib\n"))
    assert debian_mirror(d) == "http://ftp.example.de/debian"


def test_mirror_one_line_without_options(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list="deb http://deb.debian.org/debian bookworm main\n")
    assert debian_mirror(d) == "http://deb.debian.org/debian"


def test_mirror_sources_list_before_sources_list_d(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list="deb http://first.example/debian bookworm main\n",
                a_sources="URIs: http://second.example/debian\n")
    assert debian_mirror(d) == "http://first.example/debian"


def test_mirror_sources_list_d_in_name_order(tmp_path, no_env):
    d = apt_dir(tmp_path, z_list="deb http://z.example/debian bookworm main\n",
                a_list="deb http://a.example/debian bookworm main\n")
    assert debian_mirror(d) == "http://a.example/debian"


def test_mirror_environment_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANPROBE_DEBIAN_MIRROR", "http://cache.internal:3142/debian/")
    d = apt_dir(tmp_path, sources_list="deb http://deb.debian.org/debian bookworm main\n")
    assert debian_mirror(d) == "http://cache.internal:3142/debian"


def test_no_mirror_is_an_error(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list="deb-src http://src.example/debian bookworm main\n")
    with pytest.raises(SystemExit, match="no Debian mirror"):
        debian_mirror(d)
    with pytest.raises(SystemExit, match="SPANPROBE_DEBIAN_MIRROR"):
        debian_mirror(tmp_path / "missing")


# ---- status ----

def headers_tree(root: Path, rel: str, uts: str | None) -> Path:
    build = root / "usr/src" / f"linux-headers-{rel}"
    (build / "include/generated").mkdir(parents=True)
    if uts is not None:
        (build / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{uts}"\n')
    return build


def link_build(root: Path, running: str, target: Path) -> Path:
    moddir = root / "lib/modules" / running
    moddir.mkdir(parents=True)
    (moddir / "build").symlink_to(target)
    return moddir / "build"


def test_status_exact(tmp_path):
    build = root_build = tmp_path / "lib/modules/6.1.0-28-amd64/build"
    (root_build / "include/generated").mkdir(parents=True)
    (build / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-28-amd64"\n')
    st = read_status("6.1.0-28-amd64", tmp_path)
    assert st == HeadersStatus(build, "6.1.0-28-amd64", True)
    assert st.describe("6.1.0-28-amd64") == f"{build} (exact match)"


def test_status_nearest_headers(tmp_path):
    tree = headers_tree(tmp_path, "6.1.0-28-amd64", "6.1.0-28-amd64")
    build = link_build(tmp_path, "6.1.102-firecracker", tree)
    st = read_status("6.1.102-firecracker", tmp_path)
    assert st == HeadersStatus(build, "6.1.0-28-amd64", False)
    assert st.describe("6.1.102-firecracker") == (
        f"{build} is for 6.1.0-28-amd64, not 6.1.102-firecracker: nearest Debian headers; "
        "syscall and tracepoint data are unaffected")


def test_status_release_from_the_directory_name_without_utsrelease(tmp_path):
    tree = headers_tree(tmp_path, "6.12.12+bpo-amd64", None)
    link_build(tmp_path, "6.12.40", tree)
    st = read_status("6.12.40", tmp_path)
    assert (st.release, st.exact) == ("6.12.12+bpo-amd64", False)


def test_status_missing(tmp_path):
    st = read_status("6.1.0", tmp_path)
    assert st == HeadersStatus(None, None, False)
    assert st.describe("6.1.0").startswith("missing: ")
    # a build link whose tree is gone is missing too
    link_build(tmp_path, "6.2.0", tmp_path / "nowhere")
    assert read_status("6.2.0", tmp_path).build_dir is None


def test_mirror_third_party_debian_paths_lose_to_a_debian_archive(tmp_path, no_env):
    # caddy-stable.list sorts before debian.sources; docker's line comes first in sources.list
    d = apt_dir(tmp_path,
                sources_list="deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n",
                caddy_stable_list="deb https://dl.cloudsmith.io/public/caddy/stable/deb/debian any-version main\n",
                debian_sources="Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n")
    assert debian_mirror(d) == "http://deb.debian.org/debian"


def test_mirror_top_level_debian_path_beats_a_deeper_one(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list=(
        "deb https://packages.gitlab.com/runner/gitlab-runner/debian/ bookworm main\n"
        "deb http://apt-cache.internal:3142/debian bookworm main\n"))
    assert debian_mirror(d) == "http://apt-cache.internal:3142/debian"


def test_mirror_deeper_path_used_when_nothing_better(tmp_path, no_env):
    d = apt_dir(tmp_path, sources_list="deb http://mirror.example.edu/pub/debian bookworm main\n")
    assert debian_mirror(d) == "http://mirror.example.edu/pub/debian"
