#!/bin/sh
# PID 1 of a kernel-matrix guest (handed over from the image's /usr/local/sbin/spanprobe-init
# once the repository share is mounted at /repo). Sets up the few file systems a system
# without an init needs, runs tests/kernels/guest_run.py and powers off. Results go to the
# writable 9p share mounted at /results; the console (ttyS0) keeps a copy of everything.
#
# Kernel command line switches (set by matrix.py):
#   spanprobe.modes=tracepoint,kprobe,fentry   strategies to run (default: all three)
#   spanprobe.load_check=1                     let `spanprobe check` compile and load too
#   spanprobe.probe=1                          only say SPANPROBE-PROBE-OK and power off
#   spanprobe.idle=1                           say SPANPROBE-IDLE and wait (the stall test)
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

off() {
    sync
    umount /results 2>/dev/null
    echo o > /proc/sysrq-trigger
    sleep 10
    exit 1
}

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
echo "SPANPROBE-GUEST-START $(uname -r) $(date +%s)"
# The heartbeat (ttyS1, the host's heartbeat.log): a line every 2 s while the guest runs;
# matrix.py looks at the vCPUs when it stops (a guest frozen by the emulator is rebooted in
# seconds, not after minutes of soft-lockup reports).
( while :; do cut -d' ' -f1 /proc/uptime; sleep 2; done > /dev/ttyS1 2>/dev/null ) &

for arg in $(cat /proc/cmdline); do
    case "$arg" in
        spanprobe.probe=1) echo "SPANPROBE-PROBE-OK"; off ;;
        spanprobe.idle=1) echo "SPANPROBE-IDLE"; while :; do sleep 60; done ;;
        spanprobe.modes=*) MODES=${arg#spanprobe.modes=} ;;
        spanprobe.load_check=1) LOAD_CHECK=--load-check ;;
    esac
done

mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null
hostname spanprobe-guest
ip link set lo up

if ! mount -t 9p -o trans=virtio,version=9p2000.L,rw results /results; then
    echo "SPANPROBE-GUEST-ERROR cannot mount the results share"
    off
fi

# bcc needs /lib/modules/$(uname -r)/build; the headers package ships the link, but
# make sure (the image's root is writable: matrix.py boots it with -snapshot)
REL=$(uname -r)
if [ ! -e "/lib/modules/$REL/build/include" ] && [ -d "/usr/src/linux-headers-$REL" ]; then
    ln -sfn "/usr/src/linux-headers-$REL" "/lib/modules/$REL/build"
fi

export PYTHONPATH=/repo/agent:/repo:/opt/spanprobe-site
export PYTHONPYCACHEPREFIX=/tmp/pycache      # /repo is read-only
export PYTHONUNBUFFERED=1 LANG=C.UTF-8 HOME=/root
/usr/bin/python3 /repo/tests/kernels/guest_run.py --out /results/result.json \
    --modes "${MODES:-tracepoint,kprobe,fentry}" $LOAD_CHECK 2>&1 | tee /results/guest.log
echo "SPANPROBE-GUEST-DONE rc=$? $(date +%s)"
off
