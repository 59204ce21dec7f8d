#!/bin/sh
# Unpacks Debian's Python 3.13 (trixie) and 3.14 (sid) interpreters, with the C library
# and stdlib they need, into a tree under $1, for tests/unit/test_pyruntime_oracle.py:
#   SPANPROBE_TEST_PYTHON_ROOTS=$1/root pytest tests/unit/test_pyruntime_oracle.py
# Uses a private apt state under $1 (the machine's sources list is not touched). Packages
# are only unpacked (dpkg-deb -x), never installed.
set -eu
dir=${1:?usage: debian_pythons.sh DIR}
mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
{
    echo "deb [signed-by=$keyring] $mirror trixie main"
    echo "deb [signed-by=$keyring] $mirror sid main"
} >"$dir/sources.list"
set -- -o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
apt-get "$@" update -q
v313=$(apt-cache "$@" madison python3.13-minimal | awk '$6 ~ /^trixie\// {print $3; exit}')
cd "$dir/debs"
apt-get "$@" download "python3.13-minimal=$v313" "libpython3.13-minimal=$v313" \
    "libpython3.13-stdlib=$v313" python3.14-minimal libpython3.14-minimal libpython3.14-stdlib \
    libc6/sid zlib1g/sid libexpat1/sid libffi8/sid
for deb in ./*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
