#!/bin/sh
# mmdebstrap --customize-hook for the Ansible test guests: "$1" is the new root.
# Makes the tree a bootable, SSH-reachable test VM like a cloud image: a management user
# `debian` with the test key and passwordless sudo, DHCP on the user-mode NIC, no DNS.
# Part of the image cache key (tests/ansible/images.py): change it and images rebuild.
set -eu
root=$1
: "${SPANPROBE_TEST_PUBKEY:?the test SSH public key}"

echo spanprobe-test > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tspanprobe-test\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$root/etc/hosts"
# The guest's NIC is QEMU user-mode networking with restrict=on: nothing leaves it but the
# forwarded SSH port, so there is no DNS to point at.
printf '# no name service in the test guest\n' > "$root/etc/resolv.conf"
printf '/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n' > "$root/etc/fstab"

mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    > "$root/etc/systemd/network/10-qemu-user.network"
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Waiting for "online" only slows the boot of a test guest.
chroot "$root" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1

# The management user, as Debian's cloud images have it.
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo --uid 1000 debian
install -d -m 700 -o 1000 -g 1000 "$root/home/debian/.ssh"
printf '%s\n' "$SPANPROBE_TEST_PUBKEY" > "$root/home/debian/.ssh/authorized_keys"
chown 1000:1000 "$root/home/debian/.ssh/authorized_keys"
chmod 600 "$root/home/debian/.ssh/authorized_keys"
printf 'debian ALL=(ALL) NOPASSWD:ALL\n' > "$root/etc/sudoers.d/90-debian"
chmod 440 "$root/etc/sudoers.d/90-debian"

# A fixed machine id keeps the image reproducible; each test boots a throw-away overlay.
echo 5ba9b0be5ba9b0be5ba9b0be5ba9b0be > "$root/etc/machine-id"
# Package lists are not needed (everything the roles install is in the image) and would
# only make the image differ from one build day to the next.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
