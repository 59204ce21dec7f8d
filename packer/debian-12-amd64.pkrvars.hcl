# Debian 12 (bookworm), amd64.
target            = "debian-12-amd64"
debian_suite      = "bookworm"
source_date_epoch = 1735689600 # 2025-01-01: every file time in the image, mmdebstrap's clock
python_version    = "3.11"     # the agent's wheelhouse is built for this CPython
