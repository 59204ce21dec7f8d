# Base disk -> boot loaders (shell: bootstrap) -> appliance.yml (Ansible: hardening +
# spanprobe) -> package manifest (downloaded) -> clean-up and power-off (shell, as the
# shutdown command). packer/build.py then writes raw, qcow2, box, SHA256SUMS, manifest.
build {
  sources = ["source.qemu.appliance"]

  provisioner "shell" {
    execute_command  = "sudo env {{ .Vars }} sh '{{ .Path }}'"
    environment_vars = ["BASE_SOURCE=${var.base_source}"]
    script           = "${path.root}/scripts/bootstrap.sh"
  }

  provisioner "ansible" {
    playbook_file    = "${path.root}/../ansible/appliance.yml"
    user             = var.ssh_username
    use_proxy        = false
    extra_arguments  = ["--extra-vars", local.ansible_extra_vars]
    ansible_env_vars = ["ANSIBLE_CONFIG=${path.root}/../ansible/ansible.cfg", "ANSIBLE_NOCOLOR=1", "ANSIBLE_HOST_KEY_CHECKING=False"]
  }

  # Every Debian and Python package of the image, with versions, for the manifest.
  provisioner "shell" {
    execute_command = "sudo env {{ .Vars }} sh '{{ .Path }}'"
    script          = "${path.root}/scripts/manifest.sh"
  }

  # The clean-up runs as the shutdown command (it removes the user Packer is logged in as).
  provisioner "file" {
    source      = "${path.root}/scripts/cleanup.sh"
    destination = "/tmp/spanprobe-image-cleanup"
  }

  provisioner "shell" {
    execute_command = "sudo env {{ .Vars }} sh '{{ .Path }}'"
    inline          = ["install -m 0700 /tmp/spanprobe-image-cleanup /usr/local/sbin/spanprobe-image-cleanup && rm -f /tmp/spanprobe-image-cleanup"]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/packages.tsv"
    destination = "${var.output_directory}-packages.tsv"
  }

  # The Vagrant box for libvirt (box.img + metadata.json + Vagrantfile), from the final disk.
  post-processor "vagrant" {
    provider_override   = "libvirt"
    keep_input_artifact = true
    compression_level   = 1
    output              = "${var.output_directory}-{{ .Provider }}.box"
  }
}
