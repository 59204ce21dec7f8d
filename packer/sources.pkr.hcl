# The build VM: QEMU, user-mode networking with restrict=on (the guest reaches nothing; the
# only way in is SSH forwarded on 127.0.0.1), the base disk copied as the output disk.
source "qemu" "appliance" {
  vm_name          = "${var.target}.qcow2"
  output_directory = var.output_directory
  format           = "qcow2"
  disk_image       = true
  iso_url          = local.base_url
  iso_checksum     = local.base_checksum
  disk_interface   = "virtio"
  disk_discard     = "unmap"
  disk_compression = false
  skip_resize_disk = true
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  vnc_bind_address = "127.0.0.1"
  qemuargs         = local.qemuargs

  cd_files = ["${var.seed_dir}/user-data", "${var.seed_dir}/meta-data"]
  cd_label = "cidata"

  communicator         = "ssh"
  ssh_host             = "127.0.0.1"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.ssh_timeout
  # The last step: scripts/cleanup.sh removes the build user (and its sudo) and powers off.
  shutdown_command = "sudo /usr/local/sbin/spanprobe-image-cleanup"
  shutdown_timeout = "10m"
}
