#!/bin/sh
# The image build's last step, run by Packer as the shutdown command: leave nothing of the
# build and nothing that must differ per machine, then power off. What stays on purpose:
# kernel headers (bcc compiles against them), the agent's venv and its wheel.
set -eu
say() { echo "cleanup: $*"; }

# The build user, its sudo rule and key; cloud-init gives the user's own at first boot.
rm -f /etc/sudoers.d/90-packer-build
userdel --force --remove packer 2>/dev/null || true
rm -rf /root/.ssh /root/.bash_history /root/.cache /root/.ansible /home/*/.bash_history

# Per-machine identity: made at first boot (ssh-host-keys.service, systemd, cloud-init).
rm -f /etc/ssh/ssh_host_*
printf 'uninitialized\n' > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /etc/hostname
rm -f /etc/cloud/cloud-init.disabled
cloud-init clean --logs --seed >/dev/null 2>&1 || rm -rf /var/lib/cloud

# Logs, caches, temporary files, apt's lists, the build's package manifest.
find /var/log -type f -delete
rm -rf /var/log/journal/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
rm -rf /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/backups/*
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* 2>/dev/null || true

say "done; trimming and powering off"
sync
fstrim --all || true
systemctl poweroff --no-block
