"""QEMU test VMs for the Ansible tier: boot a cached base disk through a throw-away qcow2
overlay, reachable by SSH on a port forwarded from 127.0.0.1 only.

Networking is QEMU user mode with restrict=on: the guest reaches nothing outside itself
(no route to the host's networks or anywhere else); the only way in is the forwarded SSH
port on the host's loopback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

MEMORY = os.environ.get("SPANPROBE_VM_MEMORY", "2048")
ACCEL = os.environ.get("SPANPROBE_VM_ACCEL", "tcg")     # /dev/kvm cannot run guests here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


class VM:
    """`manifest` names the disk (a qcow2 or raw base, never written: a throw-away overlay
    is booted), the SSH user and key, and either a kernel and initrd to boot directly or
    nothing, and then the disk boots through `firmware` (bios: SeaBIOS, uefi: OVMF).
    `drives` are extra read-only raw drives (a NoCloud seed); `guestfwd` maps guest
    address:port to a port on the host's 127.0.0.1 (a receiver on the host)."""

    def __init__(self, manifest: dict, workdir: Path, firmware: str = "bios", drives: tuple = (),
                 guestfwd: dict[str, int] | None = None):
        self.m = manifest
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

    # ---- lifecycle ----
    def start(self) -> None:
        overlay = self.dir / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.m.get("disk_format", "qcow2"),
                        "-b", self.m["disk"], str(overlay)], check=True)
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.m['user']}\n"
            f"  IdentityFile {self.m['ssh_key']}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n"
            "  ServerAliveInterval 15\n  ControlMaster auto\n"
            f"  ControlPath {self.dir}/cm-%C\n  ControlPersist 300\n")
        accel = ["-accel", "kvm", "-cpu", "host"] if ACCEL == "kvm" else \
            ["-accel", "tcg,thread=multi", "-cpu", "max"]
        if self.m.get("vmlinuz"):
            boot = ["-kernel", self.m["vmlinuz"], "-initrd", self.m["initrd"],
                    "-append", self.m.get("cmdline", "console=ttyS0 root=/dev/vda rw panic=-1")]
        elif self.firmware == "uefi":
            shutil.copyfile(OVMF_VARS, self.dir / "OVMF_VARS.fd")
            boot = ["-machine", "q35", "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={self.dir / 'OVMF_VARS.fd'}"]
        else:
            boot = []
        fwd = "".join(f",guestfwd=tcp:{addr}-tcp:127.0.0.1:{port}" for addr, port in self.guestfwd.items())
        cmd = ["qemu-system-x86_64", *accel, "-smp", "2", "-m", MEMORY,
               "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
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

    def wait_ssh(self, timeout: float = 900) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: qemu exited {self.proc.returncode} during boot; "
                                   f"see {self.console}\n{self.console_tail()}")
            r = self.ssh("true", check=False, timeout=30)
            if r.returncode == 0:
                self.boot_s = time.monotonic() - self.t0
                return self.boot_s
            time.sleep(3)
        raise RuntimeError(f"{self.name}: no SSH after {timeout:.0f} s; see {self.console}\n"
                           f"{self.console_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ssh("sudo systemctl poweroff", check=False, timeout=20)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                       capture_output=True)
        (self.dir / "overlay.qcow2").unlink(missing_ok=True)

    # ---- access ----
    def ssh(self, command: str, check: bool = True, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), self.name, command], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}: `{command}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

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
