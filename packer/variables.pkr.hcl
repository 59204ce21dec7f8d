# Every input of the build, typed and checked before anything starts. Set per target in
# <target>.pkrvars.hcl; the rest is passed by packer/build.py (or by hand, see README.md).
# Valid on Packer 1.6.6 (Debian) and current Packer: no regex()/can() in conditions, which
# 1.6.6 evaluates wrongly.

variable "target" {
  type        = string
  description = "What is built: the name of a variables file, debian-13-amd64 or debian-12-amd64."
  validation {
    condition     = contains(["debian-13-amd64", "debian-12-amd64"], var.target)
    error_message = "The target must be debian-13-amd64 or debian-12-amd64 (a packer/<target>.pkrvars.hcl file)."
  }
}

variable "debian_suite" {
  type        = string
  description = "The Debian suite of the image (bookworm for 12, trixie for 13)."
  validation {
    condition     = contains(["bookworm", "trixie"], var.debian_suite)
    error_message = "The debian_suite must be bookworm or trixie."
  }
}

variable "source_date_epoch" {
  type        = number
  description = "Seconds since 1970: every file time in the base disk, and the build's clock for reproducibility."
  validation {
    condition     = var.source_date_epoch > 0
    error_message = "The source_date_epoch must be a positive number of seconds."
  }
}

variable "python_version" {
  type        = string
  description = "The target's CPython (the wheelhouse of the agent's dependencies is built for it)."
  validation {
    condition     = contains(["3.11", "3.13"], var.python_version)
    error_message = "The python_version must be 3.11 (Debian 12) or 3.13 (Debian 13)."
  }
}

variable "base_source" {
  type        = string
  default     = "local"
  description = "local: the base disk built from Debian packages by packer/base/disk.py; cloud: Debian's official cloud image (needs the network)."
  validation {
    condition     = contains(["local", "cloud"], var.base_source)
    error_message = "The base_source must be local or cloud."
  }
}

variable "base_disk" {
  type        = string
  default     = ""
  description = "local: the base qcow2 from packer/base/disk.py (its manifest's disk)."
}

variable "base_disk_checksum" {
  type        = string
  default     = "none"
  description = "local: sha256:<hex> of base_disk."
}

variable "base_kernel" {
  type        = string
  default     = ""
  description = "local: the base disk's kernel, booted directly until bootstrap.sh has installed GRUB."
}

variable "base_initrd" {
  type        = string
  default     = ""
  description = "local: the base disk's initrd."
}

variable "base_cmdline" {
  type        = string
  default     = ""
  description = "local: the kernel command line of the direct boot (root=UUID=...)."
}

variable "cloud_image_url" {
  type        = string
  default     = ""
  description = "cloud: URL of Debian's genericcloud qcow2 for the suite."
}

variable "cloud_image_checksum" {
  type        = string
  default     = "none"
  description = "cloud: its checksum, e.g. file:<URL of SHA512SUMS>."
}

variable "seed_dir" {
  type        = string
  description = "A NoCloud seed (user-data, meta-data) giving the build user its key; ignored by the local base, which has the user already."
}

variable "ssh_username" {
  type        = string
  default     = "packer"
  description = "The build user (removed from the image by scripts/cleanup.sh)."
}

variable "ssh_private_key_file" {
  type        = string
  description = "The build user's private key (packer/base/disk.py makes one per base disk)."
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "QEMU accelerator: tcg (software, works everywhere) or kvm (where it can run guests)."
  validation {
    condition     = contains(["tcg", "kvm"], var.accelerator)
    error_message = "The accelerator must be tcg or kvm."
  }
}

variable "cpus" {
  type        = number
  default     = 2
  description = "vCPUs of the build VM."
  validation {
    condition     = var.cpus >= 1 && var.cpus <= 64
    error_message = "The cpus must be between 1 and 64."
  }
}

variable "memory" {
  type        = number
  default     = 2048
  description = "Memory of the build VM in MiB (bcc and pip need about 1 GiB)."
  validation {
    condition     = var.memory >= 1024
    error_message = "The memory must be at least 1024 (MiB)."
  }
}

variable "wheel" {
  type        = string
  description = "The agent's wheel (built from this repository by packer/build.py)."
}

variable "wheelhouse" {
  type        = string
  description = "A tar of the agent's dependencies as wheels for python_version (the build VM has no package index)."
}

variable "output_directory" {
  type        = string
  description = "Where Packer writes the VM's disk (packer/build.py turns it into the image folder)."
}

variable "ssh_timeout" {
  type        = string
  default     = "30m"
  description = "How long to wait for the build VM's SSH (a TCG boot takes about a minute)."
}
