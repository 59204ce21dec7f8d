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

# Shutdown would write two files back after they are deleted below: systemd-random-seed
# saves a seed when it stops, and journald flushes to /var/log/journal until it stops. Stop
# the first now (it saves once, then the file is removed and nothing saves again) and send
# journald back to /run, so the power-off's own logging stays in memory.
systemctl stop systemd-random-seed.service 2>/dev/null || true
journalctl --relinquish-var 2>/dev/null || true

# Per-machine identity: made at first boot (ssh-host-keys.service, systemd, cloud-init).
rm -f /etc/ssh/ssh_host_*
printf 'uninitialized\n' > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /etc/hostname
# Timer stamps of the build's boot: a persistent timer would count from the build's clock.
rm -f /var/lib/systemd/timers/stamp-*
rm -f /etc/cloud/cloud-init.disabled
cloud-init clean --logs --seed >/dev/null 2>&1 || rm -rf /var/lib/cloud

# Logs, caches, temporary files, apt's lists, the build's package manifest.
find /var/log -type f -delete
rm -rf /var/log/journal/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
rm -rf /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/backups/*
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* 2>/dev/null || true
# This script itself (installed by the build as the shutdown command; sh has it open).
rm -f -- "$0"

say "done; trimming and powering off"
sync
fstrim --all || true
systemctl poweroff --no-block
