"""QEMU test VMs for the Ansible tier: boot a cached base disk through a throw-away qcow2
overlay, reachable by SSH on a port forwarded from 127.0.0.1 only.

Networking is QEMU user mode with restrict=on: the guest reaches nothing outside itself
(no route to the host's networks or anywhere else); the only way in is the forwarded SSH
port on the host's loopback.

Under multi-threaded TCG a vCPU sometimes freezes on a stale translation of kernel text
(tests.support.tcg): each VM's registers are watched from outside, and a frozen VM is
stopped within seconds and booted again with every vCPU on one host thread, where that
cannot happen; so is a boot that does not answer SSH in time. It boots from a fresh overlay
when SSH had never answered, else from its own disk (what the tests did to it kept).
Whatever was running in it fails and names the stop; what comes after waits for SSH to
answer again. Every stopped boot is kept in `restarts`, with its console.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.support.procs import free_port
from tests.support.tcg import FreezeWatch, host_times, monitor, vcpu_states, vcpus

MEMORY = os.environ.get("SPANPROBE_VM_MEMORY", "2048")
ACCEL = os.environ.get("SPANPROBE_VM_ACCEL", "tcg")     # /dev/kvm cannot run guests here


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


class VM:
    """`manifest` names the disk (a qcow2 or raw base, never written: a throw-away overlay
    is booted), the SSH user and key, and either a kernel and initrd to boot directly or
    nothing, and then the disk boots through `firmware` (bios: SeaBIOS, uefi: OVMF).
    `drives` are extra read-only raw drives (a NoCloud seed); `guestfwd` maps guest
    address:port to a port on the host's 127.0.0.1 (a receiver on the host)."""

    def __init__(self, manifest: dict, workdir: Path, firmware: str = "bios", drives: tuple = (),
                 guestfwd: dict[str, int] | None = None, smp: str | None = None):
        self.m = manifest
        self.smp = smp or vcpus(ACCEL)
        self.firmware = firmware
        self.drives = drives
        self.guestfwd = guestfwd or {}
        self.name = manifest["name"]
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.console = self.dir / "console.log"
        self.ssh_config = self.dir / "ssh_config"
        self.proc: subprocess.Popen | None = None
        self.boot_s: float | None = None
        # unix sockets (QEMU's human monitor, for the vCPUs' registers: tests.support.tcg;
        # SSH's connection sharing) in a short path: a socket's name must fit 108 bytes, and
        # a checkout's results directory may be deep (seen: a clone in /work/cold/clone left
        # the VM "debian13-stock" no room for ssh's master socket, and so no SSH at all)
        self.sockets = Path(tempfile.mkdtemp(prefix="spanprobe-vm-"))
        self.monitor_sock = self.sockets / "monitor"
        self.tcg_thread = "multi"
        self.frozen: str | None = None       # what the watch saw, once it stopped the VM
        self.starved = 0                      # samples the watch let off as starved (a busy host), not frozen
        self.slow = 1.0                       # its commands' timeouts scale (a VM at low priority: more)
        # each boot that was stopped and booted again, in order: {"why", "first_boot_s" (that
        # stopped boot's seconds), "first_console" (its console, kept), "last_console" (its last lines),
        # "again_with", "from": "a fresh overlay" (SSH had never answered) or "its own disk"}
        self.restarts: list[dict] = []
        self.boots_again = 0
        self._watch: threading.Thread | None = None
        self._answering = threading.Event()    # SSH answered since the last (re)start
        self._rebooting = False                 # the watch is booting it again from its disk

    @property
    def restarted(self) -> dict | None:
        """The last boot that was stopped and booted again, or None."""
        return self.restarts[-1] if self.restarts else None

    # ---- lifecycle ----
    def start(self, keep_disk: bool = False) -> None:
        """Boot from a new overlay of the base disk, or (keep_disk) from the overlay and
        firmware variables of the boot before."""
        self._answering.clear()
        overlay = self.dir / "overlay.qcow2"
        if not keep_disk:
            overlay.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.m.get("disk_format", "qcow2"),
                            "-b", self.m["disk"], str(overlay)], check=True)
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.m['user']}\n"
            f"  IdentityFile {self.m['ssh_key']}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n"
            "  ServerAliveInterval 15\n  ControlMaster auto\n"
            f"  ControlPath {self.sockets}/cm-%C\n  ControlPersist 300\n")
        accel = ["-accel", "kvm", "-cpu", "host"] if ACCEL == "kvm" else \
            ["-accel", f"tcg,thread={self.tcg_thread}", "-cpu", "max"]
        if self.m.get("vmlinuz"):
            boot = ["-kernel", self.m["vmlinuz"], "-initrd", self.m["initrd"],
                    "-append", self.m.get("cmdline", "console=ttyS0 root=/dev/vda rw panic=-1")]
        elif self.firmware == "uefi":
            if not keep_disk:
                shutil.copyfile(OVMF_VARS, self.dir / "OVMF_VARS.fd")
            boot = ["-machine", "q35", "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={self.dir / 'OVMF_VARS.fd'}"]
        else:
            boot = []
        fwd = "".join(f",guestfwd=tcp:{addr}-tcp:127.0.0.1:{port}" for addr, port in self.guestfwd.items())
        # named vCPU threads ("CPU 0/TCG"): the freeze watch reads their scheduling times
        cmd = ["qemu-system-x86_64", "-name", f"{self.name},debug-threads=on", *accel, "-smp", self.smp, "-m", MEMORY,
               "-nodefaults", "-no-user-config", "-display", "none",
               "-monitor", f"unix:{self.monitor_sock},server=on,wait=off",
               "-serial", f"file:{self.console}", "-no-reboot", *boot,
               "-drive", f"file={overlay},format=qcow2,if=virtio,discard=unmap",
               *[a for d in self.drives for a in ("-drive", f"file={d},format=raw,if=virtio,readonly=on")],
               "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22{fwd}",
               "-device", "virtio-net-pci,netdev=n0",
               "-device", "virtio-rng-pci"]
        (self.dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "qemu.stderr", "w"))
        if ACCEL != "kvm":
            self._watch = threading.Thread(target=self._watch_registers, args=(self.proc,), daemon=True,
                                           name=f"freeze-watch-{self.name}")
            self._watch.start()

    WATCH_GAP_S = 3.0
    MAX_BOOTS_AGAIN = 2     # e.g. a freeze at boot, then one later (on one host thread neither recurs)
    BOOT_AGAIN_TIMEOUT_S = 480

    def _watch_registers(self, proc: subprocess.Popen) -> None:
        """Sample the vCPUs every WATCH_GAP_S until QEMU ends; a frozen one (FreezeWatch)
        stops the VM at once, so whatever waits on it fails now and says why. One that had
        answered SSH is booted again from its own disk at once (wait_ssh does it for a
        boot that had not)."""
        watch = FreezeWatch()
        before = self.starved       # of the boots before this one
        while proc.poll() is None:
            time.sleep(self.WATCH_GAP_S)
            try:
                states = vcpu_states(monitor(self.monitor_sock, "info registers -a"))
            except OSError:         # not listening yet, or QEMU ending
                continue
            verdict = watch.sample(states, time.monotonic(), host_times(proc.pid))
            self.starved = before + watch.starved
            if verdict and proc.poll() is None:
                self.frozen = f"{verdict}, {time.monotonic() - self.t0:.0f} s after start"
                self._rebooting = self._answering.is_set() and self.boots_again < self.MAX_BOOTS_AGAIN
                proc.kill()
                # gone before the next boot opens its disk: a QEMU still dying holds the
                # overlay's write lock (seen once under load: "Failed to get "write" lock")
                proc.wait()
                if self._rebooting:
                    try:
                        self._boot_again(keep_disk=True)
                    finally:
                        self._rebooting = False
                return

    def wait_ssh(self, timeout: float = 900) -> float:
        """Seconds from start to SSH answering. A boot frozen by TCG, or one that does not
        answer SSH within `timeout` for a reason not seen from outside, is booted again with
        tcg,thread=single (slower, so only then), up to MAX_BOOTS_AGAIN in all; the seconds
        are the last boot's, and `restarts` says what happened to each stopped one: why,
        with the vCPUs' instruction pointers and SSH's last error, and its console."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    # first: while the watch boots it again from its disk, start() has cleared
                    # `answering` before the new QEMU replaces the dead one, and a second boot
                    # from here (a fresh overlay) would race it (seen in a cold run: the freeze
                    # check's marker file gone, and once the overlay's write lock taken)
                    if self._rebooting:
                        time.sleep(1)
                        continue
                    if self.frozen and self.boots_again < self.MAX_BOOTS_AGAIN and not self._answering.is_set():
                        self._boot_again(keep_disk=self.boot_s is not None)
                        deadline = time.monotonic() + timeout
                        continue
                    raise RuntimeError(f"{self.name}: {self.frozen or f'qemu exited {self.proc.returncode}'} "
                                       f"during boot; see {self.console}\n{self.console_tail()}")
                try:
                    r = self._ssh("true", timeout=30)
                    up, last = r.returncode == 0, r.stderr.strip()[-300:]
                except subprocess.TimeoutExpired:
                    up, last = False, "ssh did not finish in 30 s"
                if up:
                    self.boot_s = time.monotonic() - self.t0
                    self._answering.set()
                    return self.boot_s
                time.sleep(3)
            why = (f"no SSH after {timeout:.0f} s (vCPUs at {self._vcpus()}; ssh's last error: "
                   f"{last or 'none'})")
            if self.boots_again >= self.MAX_BOOTS_AGAIN or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: {why}; see {self.console}\n{self.console_tail()}")
            self.frozen = why
            self.proc.kill()
            self.proc.wait()
            # a VM that had answered before holds what its tests did: booted again from its
            # disk (seen in CI: a boot again after the freeze check stayed silent, at idle,
            # and a fresh overlay lost the check's marker file)
            self._boot_again(keep_disk=self.boot_s is not None)
            deadline = time.monotonic() + timeout

    def _vcpus(self) -> str:
        """Each vCPU's instruction pointer (and whether it is halted), for a report."""
        try:
            states = vcpu_states(monitor(self.monitor_sock, "info registers -a"))
        except OSError as exc:
            return f"unknown: {exc}"
        return ", ".join(f"{cpu}: {ip}{' halted' if halted else ''}" for cpu, (ip, halted) in sorted(states.items()))

    def _boot_again(self, keep_disk: bool = False) -> None:
        first = self.dir / f"console-stopped-{len(self.restarts) + 1}.log"
        shutil.copyfile(self.console, first)
        self.restarts.append({"why": self.frozen, "first_boot_s": round(time.monotonic() - self.t0, 1),
                              "first_console": str(first), "last_console": self.console_tail(8),
                              "again_with": "tcg,thread=single",
                              "from": "its own disk" if keep_disk else "a fresh overlay"})
        self.boots_again += 1
        self.tcg_thread = "single"
        self.start(keep_disk=keep_disk)
        self.frozen = None

    def stop(self) -> None:
        """Power off a VM that answers SSH, else stop its QEMU; never waits for (or boots
        again) a VM that is not answering."""
        if self.proc is None:
            return
        deadline = time.monotonic() + 60
        while self._rebooting and time.monotonic() < deadline:     # the watch's boot again: then stop that
            time.sleep(0.5)
        if self.proc.poll() is None:
            answering = self._answering.is_set()
            if answering:
                try:
                    self._ssh("sudo systemctl poweroff", timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            try:
                self.proc.wait(90 if answering else 0)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                       capture_output=True)
        (self.dir / "overlay.qcow2").unlink(missing_ok=True)
        if self._watch is not None:
            self._watch.join(timeout=15)
        shutil.rmtree(self.sockets, ignore_errors=True)

    # ---- access ----
    def ssh(self, command: str, check: bool = True, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
        if self._rebooting or (self.restarted and self.boot_s is not None and not self._answering.is_set()):
            # booted again after a freeze: wait for it to answer (a boot of a disk that has
            # booted before: no first-boot work, ~140 s on one host thread under TCG)
            self.wait_ssh(timeout=self.BOOT_AGAIN_TIMEOUT_S * self.slow)
        r = self._ssh(command, timeout * self.slow, input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}{self._freeze_said()}: `{command}` exited {r.returncode}:\n"
                               f"{r.stdout}\n{r.stderr}")
        return r

    def _ssh(self, command: str, timeout: float, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), self.name, command], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def _freeze_said(self) -> str:
        if self.frozen:
            return f" ({self.frozen}: stopped)"
        if self.restarts:
            return " (" + "; then ".join(
                f"stopped: {r['why']}; booted again from {r['from']} with {r['again_with']}; its console "
                f"ended:\n{r['last_console']}\n" for r in self.restarts) + ")"
        return ""

    def put(self, local: Path, remote: str) -> None:
        subprocess.run(["scp", "-q", "-F", str(self.ssh_config), str(local), f"{self.name}:{remote}"],
                       check=True, timeout=120)

    def console_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def inventory_vars(self) -> dict:
        return {"ansible_host": "127.0.0.1", "ansible_port": self.port, "ansible_user": self.m["user"],
                "ansible_ssh_private_key_file": self.m["ssh_key"],
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                           "-o IdentitiesOnly=yes"}
