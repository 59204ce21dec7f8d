#!/bin/sh
# Boot loaders for both firmware kinds, installed here because only inside the build VM is
# /dev/vda a real disk (packer/base/disk.py made the partitions and file systems). The
# local base disk was booted directly (-kernel); after this it boots by itself, with BIOS
# (GRUB in the BIOS boot partition) and with UEFI (GRUB at the removable-media path of the
# ESP, so no NVRAM entry is needed: the raw image boots on any UEFI machine).
set -eu
# No timer may fire while the build runs: what one does depends on the wall clock, not on
# the inputs. apt-listchanges.timer, hourly, fills /var/lib/apt/listchanges and disables
# itself, so a build that crossed an hour differed from one that did not (seen in CI);
# apt-daily* would fetch lists and upgrade. Stopped, not disabled: the image keeps them
# enabled and the appliance runs them from its first boot.
systemctl stop '*.timer'
echo "bootstrap: timers stopped for the build: $(systemctl list-units --type=timer --state=active --no-legend | wc -l) still active"
disk=/dev/vda
if [ "${BASE_SOURCE:-local}" != local ]; then
    echo "bootstrap: $BASE_SOURCE base: it has its boot loaders already"; exit 0
fi
mountpoint -q /boot/efi || mount /boot/efi
grub-install --target=i386-pc --no-floppy "$disk"
grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram \
    --no-uefi-secure-boot "$disk"
update-grub
echo "bootstrap: GRUB installed for BIOS and UEFI on $disk"
