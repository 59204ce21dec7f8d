locals {
  base_url      = var.base_source == "local" ? var.base_disk : var.cloud_image_url
  base_checksum = var.base_source == "local" ? var.base_disk_checksum : var.cloud_image_checksum

  # QEMU's user-mode network, but restricted (no route out) and forwarded on 127.0.0.1
  # only; the local base disk has no boot loader yet, so its kernel is booted directly.
  netdev = ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"]
  device = ["-device", "virtio-net,netdev=user.0"]
  qemuargs = var.base_source == "local" ? [
    local.netdev, local.device, ["-serial", "file:${var.output_directory}-console.log"],
    ["-kernel", var.base_kernel], ["-initrd", var.base_initrd], ["-append", var.base_cmdline],
    ] : [
    local.netdev, local.device, ["-serial", "file:${var.output_directory}-console.log"],
  ]

  # JSON, so that booleans stay booleans (key=value pairs would all be strings)
  ansible_extra_vars = jsonencode({
    spanprobe_wheel            = var.wheel
    spanprobe_wheelhouse       = var.wheelhouse
    spanprobe_apt_update_cache = false
    hardening_apt_update_cache = false
  })
}
