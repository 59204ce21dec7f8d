#!/bin/sh
# mmdebstrap --customize-hook for the appliance's base disk: "$1" is the new root.
# Only what the build VM needs to boot and be reached by Packer, and what the appliance
# needs at first boot; everything build-only is undone by packer/scripts/cleanup.sh.
# Part of the base disk's cache key (packer/base/disk.py): change it and the disk rebuilds.
set -eu
root=$1
: "${SPANPROBE_BUILD_PUBKEY:?the build SSH public key}"
: "${SPANPROBE_ROOT_UUID:?}" "${SPANPROBE_ESP_PARTUUID:?}"

# --- the appliance (kept) -------------------------------------------------------------
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\nPARTUUID=%s\t/boot/efi\tvfat\tumask=0077\t0\t2\n' \
    "$SPANPROBE_ROOT_UUID" "$SPANPROBE_ESP_PARTUUID" > "$root/etc/fstab"
mkdir -p "$root/boot/efi"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

# GRUB for both firmware kinds (installed by packer/scripts/bootstrap.sh): serial and
# screen console, no OS prober, a short menu.
cat > "$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF

# Network: DHCP on the first Ethernet NIC, as cloud images do; cloud-init leaves it alone.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/10-dhcp.network"
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
chroot "$root" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1

# cloud-init: NoCloud seeds (a `cidata` drive) give the user's key and the hostname.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat > "$root/etc/cloud/cloud.cfg.d/90-spanprobe.cfg" <<'EOF'
# spanprobe appliance: seeds from a NoCloud drive (label cidata); the network is
# configured by systemd-networkd (DHCP), not by cloud-init.
datasource_list: [NoCloud, None]
network: {config: disabled}
EOF

# SSH host keys are made at first boot, never shipped: the package made some, drop them.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable ssh-host-keys.service >/dev/null 2>&1

# --- the build only (undone by cleanup.sh) ----------------------------------------------
echo spanprobe-build > "$root/etc/hostname"
printf '# no name service in the build VM\n' > "$root/etc/resolv.conf"
# cloud-init would make its default user and new host keys in the build VM
touch "$root/etc/cloud/cloud-init.disabled"
chroot "$root" useradd --create-home --shell /bin/bash --comment "image build (removed)" packer
install -d -m 700 "$root/home/packer/.ssh"
printf '%s\n' "$SPANPROBE_BUILD_PUBKEY" > "$root/home/packer/.ssh/authorized_keys"
chmod 600 "$root/home/packer/.ssh/authorized_keys"
chroot "$root" chown -R packer:packer /home/packer/.ssh
printf 'packer ALL=(ALL) NOPASSWD:ALL\n' > "$root/etc/sudoers.d/90-packer-build"
chmod 440 "$root/etc/sudoers.d/90-packer-build"
echo 5ba9b0be5ba9b0be5ba9b0be5ba9b0be > "$root/etc/machine-id"

# Package lists would only make one build day's disk differ from the next.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
rm -f "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/var/cache/ldconfig/aux-cache
