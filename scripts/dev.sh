#!/usr/bin/env bash
# spanprobe's one entry point for people and CI. Run as root on Debian (12 or newer):
#   scripts/dev.sh setup        install everything the agent and the tests need (idempotent)
#   scripts/dev.sh demo [s]     setup, then trace two demo services for s seconds (default 15)
#   scripts/dev.sh test         setup (+ QEMU tools, wrk, Packer, Vagrant, ansible tier tools),
#                               then every test tier (unit, fuzz, integration, frameworks, bench-smoke,
#                               kernels, image, ansible), with a timing summary
#   scripts/dev.sh test-image   setup, then the image tier alone (two builds, UEFI and BIOS
#                               boots, reproducibility report, vagrant up; ~20 min)
#   scripts/dev.sh test-ansible setup, then the ansible tier alone (Debian 12/13 VMs, ~35-40 min)
#   scripts/dev.sh test-quick   the unit tier only: no root, apt or network once the venv
#                               exists (the first run does the setup, as root)
#   scripts/dev.sh check        setup, then `spanprobe check`
#   scripts/dev.sh image [TARGET]  setup + Packer, then the appliance image (packer/README.md)
#   scripts/dev.sh bench [--smoke] [ARGS]  setup + wrk + the bench venv, then the benchmark
#                               (bench/README.md): full ~10-15 min -> bench/results/latest.*
#   scripts/dev.sh kernel-matrix [KERNEL] [MODE]
#                               setup + QEMU tools, then the kernel tier: Debian kernels booted
#                               under QEMU, the agent run in each per attach strategy
# Downloads and builds are cached outside the repository in $SPANPROBE_CACHE
# (default /var/cache/spanprobe), keyed by their pinned versions.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SPANPROBE_CACHE:-/var/cache/spanprobe}
export SPANPROBE_CACHE=$CACHE
APT_PACKAGES=(python3-bpfcc python3-venv python3-pip python3-dev bpftool gcc libc6-dev curl iproute2 make)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'spanprobe: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*): BPF and apt need it"
}

apt_need() {  # why, then packages: install those not yet installed (APT_RECOMMENDS=1: with recommends)
  local why=$1 missing=() p; shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt: installing ${missing[*]}${why:+ ($why)}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      $([ "${APT_RECOMMENDS:-0}" = 1 ] || echo --no-install-recommends) "${missing[@]}" >/dev/null
  fi
}

setup_apt() { APT_RECOMMENDS=1 apt_need "" "${APT_PACKAGES[@]}"; }

setup_kernel_fs() {
  mountpoint -q /sys/kernel/tracing 2>/dev/null || [ -d /sys/kernel/tracing/events ] \
    || mount -t tracefs nodev /sys/kernel/tracing || die "cannot mount tracefs"
  [ -d /sys/kernel/debug/tracing ] || mountpoint -q /sys/kernel/debug \
    || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
}

setup_headers() {
  PYTHONPATH="$ROOT/agent" /usr/bin/python3 -m spanprobe.headers ensure --cache "$CACHE" >&2
}

venv_dir() {
  local key
  key=$(cat "$ROOT/requirements/dev.txt" "$ROOT/requirements/constraints.txt" | sha256sum | cut -c1-16)
  echo "$CACHE/venv-py$(/usr/bin/python3 -c 'import sys;print("%d%d"%sys.version_info[:2])')-$key"
}

setup_venv() {
  VENV=$(venv_dir)
  # Built in place (console scripts' #! lines hold the venv's path, so it cannot be moved);
  # .complete marks a finished install, and a venv without it is made again.
  if [ ! -e "$VENV/.complete" ]; then
    say "venv: creating $VENV (Debian python3, system site packages for bcc)"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      -r "$ROOT/requirements/dev.txt" -c "$ROOT/requirements/constraints.txt"
    touch "$VENV/.complete"
  fi
  "$VENV/bin/python" -c 'import bcc' 2>/dev/null \
    || die "bcc is not importable from $VENV: is python3-bpfcc installed for /usr/bin/python3?"
  # The checkout's own code is used in place: nothing to reinstall when it changes.
  export PYTHONPATH="$ROOT/agent${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$VENV/bin:$PATH"
}

# Apps whose pins clash with the main venv get one of their own (requirements/app-*.txt),
# exported as SPANPROBE_<NAME>_PYTHON for the framework tier.
setup_app_venvs() {
  local req name key dir
  for req in "$ROOT"/requirements/app-*.txt; do
    [ -e "$req" ] || continue
    name=$(basename "$req" .txt); name=${name#app-}
    key=$(sha256sum "$req" | cut -c1-16)
    dir="$CACHE/venv-app-$name-$key"
    if [ ! -e "$dir/.complete" ]; then
      say "venv: creating $dir"
      rm -rf "$dir"
      /usr/bin/python3 -m venv "$dir"
      "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
      touch "$dir/.complete"
    fi
    export "SPANPROBE_${name^^}_PYTHON=$dir/bin/python"
  done
}

# The kernel tier only: QEMU guests built with mmdebstrap into an ext4 image.
KERNEL_MATRIX_PACKAGES=(mmdebstrap qemu-system-x86 e2fsprogs python3-pip)
setup_kernel_matrix() { apt_need "kernel matrix" "${KERNEL_MATRIX_PACKAGES[@]}"; }

# The ansible tier only: Debian VMs built with mmdebstrap, booted under QEMU, reached by SSH.
ANSIBLE_TIER_PACKAGES=(mmdebstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client)
setup_ansible_tier() { apt_need "ansible tier" "${ANSIBLE_TIER_PACKAGES[@]}"; }

# The appliance image (packer/): Packer 1.6.6 from Debian, QEMU and OVMF, the base disk's tools.
IMAGE_PACKAGES=(packer mmdebstrap qemu-system-x86 qemu-utils ovmf e2fsprogs fdisk dosfstools mtools xorriso openssh-client
                vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu)
setup_image() { apt_need "appliance image" "${IMAGE_PACKAGES[@]}"; }

# The benchmark (bench/): wrk from Debian, and a venv of its own (requirements/bench.txt: the
# apps, in-process OpenTelemetry auto-instrumentation, matplotlib) as SPANPROBE_BENCH_PYTHON.
BENCH_PACKAGES=(wrk)
setup_bench() {
  apt_need "benchmark" "${BENCH_PACKAGES[@]}"
  local req="$ROOT/requirements/bench.txt" key dir
  key=$(sha256sum "$req" | cut -c1-16)
  dir="$CACHE/venv-bench-$key"
  if [ ! -e "$dir/.complete" ]; then
    say "venv: creating $dir"
    rm -rf "$dir"
    /usr/bin/python3 -m venv --system-site-packages "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
    touch "$dir/.complete"
  fi
  export SPANPROBE_BENCH_PYTHON=$dir/bin/python
}

# The agent's hot modules compiled by mypyc (scripts/compile_agent.py; spanprobe/native.py
# uses the build only while its sources are unchanged); rebuilt when they change.
setup_native() { "$VENV/bin/python" "$ROOT/scripts/compile_agent.py"; }

setup() {
  need_root
  local t0=$SECONDS
  setup_apt
  setup_kernel_fs
  setup_headers
  setup_venv
  setup_native
  setup_app_venvs
  say "setup done in $((SECONDS - t0)) s (venv $VENV)"
}

# A cold machine builds the VM tiers' root file systems (the kernel guests' disk, the fleet
# images, the appliance's base disk: mmdebstrap and downloads, ~6 minutes; and the kernel
# tier's 30-second KVM probe boot, which fails here) in the background
# while the host tiers run, which keep about half a CPU busy; at low priority, so the tests
# in front come first. Each builder takes a lock, so a tier that needs a build still in
# progress waits for it; on a warm machine each finds its build and returns at once.
prebuild_start() {
  rm -f "$RESULTS/prebuild.status" "$RESULTS/lynis-before.status" "$RESULTS/lynis-before.pid"
  (
    t0=$SECONDS rc=0
    low() { nice -n 10 ionice -c 2 -n 7 /usr/bin/python3 "$@"; }
    idle() { chrt --idle 0 ionice -c 2 -n 7 /usr/bin/python3 "$@"; }
    # first the image lynis "before" audits (~2 minutes), so that audit starts while the host
    # tiers leave CPU idle; then each build in the order its tier needs it
    low tests/ansible/images.py build debian13 || rc=$?
    # the stock fleet image's lynis index, unless a run kept it: ~10 minutes of one core,
    # under SCHED_IDLE, so only in what the tiers leave idle (at nice 10 the kernel and image
    # tiers beside it took ~2 minutes more in a cold run); its lock makes the ansible tier
    # wait for it, at normal priority then, instead of auditing it again
    ( s=0; idle tests/ansible/lynis_before.py || s=$?; echo "$s $SECONDS" > "$RESULTS/lynis-before.status" ) \
      > "$RESULTS/lynis-before.log" 2>&1 &
    echo $! > "$RESULTS/lynis-before.pid"
    low tests/kernels/matrix.py --probe || rc=$?     # the kernel guests' disk, then the KVM probe boot
    low packer/base/disk.py build "${SPANPROBE_IMAGE_TARGET:-debian-13-amd64}" || rc=$?
    low tests/ansible/images.py build || rc=$?        # debian12, for the last tier
    echo "$((SECONDS - t0)) $rc" > "$RESULTS/prebuild.status"
  ) > "$RESULTS/prebuild.log" 2>&1 &
  PREBUILD_PID=$!
}

prebuild_report() {  # after the tiers: how long the background builds took (not a tier: they overlapped)
  wait "$PREBUILD_PID" 2>/dev/null || true
  local secs rc
  read -r secs rc < "$RESULTS/prebuild.status" 2>/dev/null || { secs="?"; rc="?"; }
  say "prebuild in the background, beside the host tiers: $secs s, rc $rc (log $RESULTS/prebuild.log;" \
      "a failed build is made again by the tier that needs it)"
  local lpid lrc lend
  lpid=$(cat "$RESULTS/lynis-before.pid" 2>/dev/null || true)
  if [ -e "$RESULTS/lynis-before.status" ] && read -r lrc lend < "$RESULTS/lynis-before.status"; then
    say "lynis before, in the background: $(grep '^lynis before' "$RESULTS/lynis-before.log" ||
      echo "no index (rc $lrc, log $RESULTS/lynis-before.log)"), ended $((lend - PREBUILD_T0)) s after the background builds began"
  elif [ -n "$lpid" ]; then   # the ansible tier did not wait for it (did not run, or ended early): not left running
    pkill -TERM -P "$lpid" 2>/dev/null || true
    say "lynis before, in the background: stopped unfinished (log $RESULTS/lynis-before.log)"
  fi
}

cpu_ticks() {  # busy and total CPU ticks of the whole machine so far (/proc/stat's first line)
  awk '/^cpu /{t=0; for (i=2; i<=NF; i++) t+=$i; print t-$5-$6, t; exit}' /proc/stat
}

run_tier() {  # name, then pytest arguments
  local name=$1; shift
  local xml="$RESULTS/junit-$name.xml" t0=$SECONDS rc=0 c0
  c0=$(cpu_ticks)
  say "tier $name"
  # xunit1: the JUnit flavour that holds per-test properties (`reused`, `reused_input`)
  python -m pytest -p no:cacheprovider -o junit_family=xunit1 --junitxml="$xml" "$@" || rc=$?
  [ $rc = 5 ] && say "tier $name collected no test: that is a failure, not a pass"
  # the machine's CPU ticks before and after: summary() turns them into CPUs busy
  TIER_TIMES+=("$name $((SECONDS - t0)) $rc $c0 $(cpu_ticks) $xml")
  return 0
}

summary() {  # the per-tier table from the JUnit files; a test marked `reused` is not counted as run
  python - "${TIER_TIMES[@]}" <<'PY'
import os, sys, xml.etree.ElementTree as ET
rows, tot, reused_from = [], {"passed": 0, "failed": 0, "skipped": 0, "reused": 0}, []
for item in sys.argv[1:]:
    name, secs, rc, busy0, all0, busy1, all1, xml = item.split(" ", 7)
    # how many of the machine's CPUs the tier kept busy on average: what running tiers
    # side by side could gain
    ticks = int(all1) - int(all0)
    cpus = os.cpu_count() * (int(busy1) - int(busy0)) / ticks if ticks > 0 else 0.0
    n = {"passed": 0, "failed": 0, "skipped": 0, "reused": 0}
    try:
        cases = [] if xml == "-" else ET.parse(xml).getroot().iter("testcase")   # "-": setup, no tests
        for case in cases:
            if case.find("failure") is not None or case.find("error") is not None:
                n["failed"] += 1
            elif case.find("skipped") is not None:
                n["skipped"] += 1
            else:
                reused = [p.get("value") for p in case.iter("property") if p.get("name") == "reused"]
                n["reused" if reused else "passed"] += 1
                reused_from += [f"{name}: {case.get('name')} reused from {r}" for r in reused]
            reused_from += [f"{name}: {case.get('name')} shows a value reused from an earlier run: {p.get('value')}"
                            for p in case.iter("property") if p.get("name") == "reused_input"]
    except (OSError, ET.ParseError):
        pass
    if rc != "0" and n["failed"] == 0:
        n["failed"] = 1
    rows.append((name, int(secs), cpus, n))
    for k in tot:
        tot[k] += n[k]
print("\ntiming summary")
print(f"{'tier':<14}{'seconds':>8}{'CPUs busy':>10}{'passed':>8}{'failed':>8}{'skipped':>9}{'reused':>8}")
for name, secs, cpus, n in rows:
    print(f"{name:<14}{secs:>8}{cpus:>10.2f}{n['passed']:>8}{n['failed']:>8}{n['skipped']:>9}{n['reused']:>8}")
total_s = sum(r[1] for r in rows)
busy = sum(r[1] * r[2] for r in rows) / total_s if total_s else 0.0
print(f"{'total':<14}{total_s:>8}{busy:>10.2f}{tot['passed']:>8}{tot['failed']:>8}{tot['skipped']:>9}"
      f"{tot['reused']:>8}")
for line in reused_from:
    print(f"  {line}")
print(f"{tot['passed']} passed, {tot['failed']} failed, {tot['skipped']} skipped, "
      f"{tot['reused']} reused from earlier runs (not run now)")
sys.exit(1 if tot["failed"] else 0)
PY
}

cmd=${1:-help}
case "$cmd" in
  setup) setup ;;
  check) setup; exec python -m spanprobe check ;;
  demo) setup; exec python -m spanprobe demo --duration "${2:-15}" ;;
  test|test-quick)
    TIER_TIMES=()
    if [ "$cmd" = test ]; then
      # installs and downloads are part of the command's time: a row of the summary, no tests
      t0=$SECONDS c0=$(cpu_ticks)
      setup; setup_kernel_matrix; setup_bench; setup_image; setup_ansible_tier
      TIER_TIMES+=("setup $((SECONDS - t0)) 0 $c0 $(cpu_ticks) -")
    elif [ -e "$(venv_dir)/.complete" ]; then
      setup_venv        # the inner loop: no root, apt or network once the venv exists
    else
      setup
    fi
    RESULTS=${SPANPROBE_RESULTS:-$ROOT/results}
    mkdir -p "$RESULTS"
    cd "$ROOT"
    if [ "$cmd" = test ]; then
      # this run's name: what it measures in the background is its own, not an earlier run's
      export SPANPROBE_RUN="$(date -u +%Y%m%dT%H%M%SZ)-$$"
      PREBUILD_T0=$SECONDS
      prebuild_start
    fi
    run_tier unit tests/unit -q
    if [ "$cmd" = test ]; then
      run_tier fuzz tests/fuzz -q -s
      # each test starts its own agent and apps on ports of its own: a file per worker, both CPUs
      run_tier integration tests/integration -q -n auto --maxprocesses 2 --dist loadfile
      run_tier frameworks tests/frameworks -q -s
      run_tier bench-smoke tests/bench -q
      export SPANPROBE_KERNEL_MATRIX=1
      run_tier kernels tests/kernels -q -s
      export SPANPROBE_IMAGE=1
      run_tier image tests/image -q -s
      export SPANPROBE_ANSIBLE=1
      run_tier ansible tests/ansible -q -s
      prebuild_report
    fi
    summary
    ;;
  test-ansible)   # the ansible tier alone (also the last tier of `test`)
    setup
    setup_ansible_tier
    cd "$ROOT"
    SPANPROBE_ANSIBLE=1 exec python -m pytest -p no:cacheprovider -q -s tests/ansible
    ;;
  test-image)   # the image tier alone (also a tier of `test`)
    setup
    setup_image
    cd "$ROOT"
    SPANPROBE_IMAGE=1 exec python -m pytest -p no:cacheprovider -q -s tests/image
    ;;
  image)   # the appliance image: packer/build.py [TARGET]
    setup
    setup_image
    cd "$ROOT"
    exec python packer/build.py "${@:2}"
    ;;
  bench)   # the benchmark (bench/README.md); `bench --smoke` for the short check
    setup
    setup_bench
    cd "$ROOT"
    exec python -m bench "${@:2}"
    ;;
  kernel-matrix)
    setup
    setup_kernel_matrix
    cd "$ROOT"
    export SPANPROBE_KERNEL_MATRIX=1 SPANPROBE_KERNEL=${2:-} SPANPROBE_MODE=${3:-}
    exec python -m pytest -p no:cacheprovider -q -s tests/kernels/test_kernel_matrix.py
    ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
