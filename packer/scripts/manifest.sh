#!/bin/sh
# Every Debian and Python package of the image, one per line: kind, name, version.
# Written to /tmp/packages.tsv, downloaded by Packer, removed by the clean-up.
set -eu
out=/tmp/packages.tsv
dpkg-query -W -f='deb\t${Package}\t${Version}\n' > "$out"
/opt/spanprobe/venv/bin/python -m pip list --disable-pip-version-check --local --format=freeze \
    | sed 's/==/\t/; s/^/python\t/' >> "$out"
chmod 644 "$out"
