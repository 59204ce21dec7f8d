# Convenience targets; scripts/dev.sh is the one entry point (it installs what it needs).
#   make test-kernels                               the whole kernel matrix (QEMU guests)
#   make test-kernel KERNEL=6.1 [MODE=kprobe]       one kernel (one cell with MODE)
#   make image [TARGET=debian-12-amd64]             the appliance image (packer/README.md)
.PHONY: test-kernels test-kernel image

test-kernels:
	bash scripts/dev.sh kernel-matrix

test-kernel:
	@test -n "$(KERNEL)" || { echo "usage: make test-kernel KERNEL=<version|name> [MODE=tracepoint|kprobe|fentry]" >&2; exit 2; }
	bash scripts/dev.sh kernel-matrix "$(KERNEL)" "$(MODE)"

TARGET ?= debian-13-amd64
image:
	bash scripts/dev.sh image "$(TARGET)"
