# Debian 13 (trixie), amd64: the default target.
target            = "debian-13-amd64"
debian_suite      = "trixie"
source_date_epoch = 1735689600 # 2025-01-01: every file time in the image, mmdebstrap's clock
python_version    = "3.13"     # the agent's wheelhouse is built for this CPython
