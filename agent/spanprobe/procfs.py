"""Every /proc and /sys read of the agent goes through one `SysRoot`.

Unit tests point it at a fake tree (tmp_path) so they need neither root nor a kernel;
the agent uses the real root. Reads that race with a process exiting return None
instead of raising: processes come and go while we look at them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Socket:
    """One row of /proc/<pid>/net/tcp{,6}."""

    inode: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    state: int          # 0x0A = LISTEN, 0x01 = ESTABLISHED


# how much of a process's cmdline and environ is read: a real one is a few KiB, the kernel
# lets a process have up to a quarter of its stack limit (2 MiB by default)
ARGS_LIMIT = 256 * 1024

TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A


def _decode_addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    # IPv6: four little-endian 32-bit words.
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    full = b"".join(words)
    if full[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in full[12:])
    import ipaddress
    return str(ipaddress.IPv6Address(full))


def _socket_inode(link: str) -> int | None:
    """The inode of an fd's link "socket:[N]"; None for anything else."""
    if link.startswith("socket:[") and link.endswith("]") and link[8:-1].isdigit():
        return int(link[8:-1])
    return None


class SysRoot:
    """The machine's /proc and /sys, or a fake copy of them under `root`."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*[p.lstrip("/") for p in parts])

    def read_text(self, *parts: str) -> str | None:
        try:
            return self.path(*parts).read_text(errors="replace")
        except (OSError, ValueError):
            return None

    def read_bytes(self, *parts: str, limit: int | None = None) -> bytes | None:
        """The file's bytes, or its first `limit` bytes: a target sets the size of its own
        cmdline and environment, the agent decides how much of them it reads."""
        try:
            if limit is None:
                return self.path(*parts).read_bytes()
            with open(self.path(*parts), "rb") as handle:
                return handle.read(limit)
        except OSError:
            return None

    def exists(self, *parts: str) -> bool:
        return self.path(*parts).exists()

    # ---- processes ----
    def pids(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.path("proc")) if n.isdigit())
        except OSError:
            return []

    def cmdline(self, pid: int) -> list[str] | None:
        raw = self.read_bytes("proc", str(pid), "cmdline", limit=ARGS_LIMIT)
        if raw is None:
            return None
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]

    def comm(self, pid: int) -> str | None:
        text = self.read_text("proc", str(pid), "comm")
        return text.strip() if text is not None else None

    def exe(self, pid: int) -> str | None:
        try:
            return os.readlink(self.path("proc", str(pid), "exe"))
        except OSError:
            return None

    def environ(self, pid: int) -> dict[str, str]:
        raw = self.read_bytes("proc", str(pid), "environ", limit=ARGS_LIMIT + 1) or b""
        items = raw.split(b"\0")
        if len(raw) > ARGS_LIMIT:
            items.pop()                 # cut at the bound: the last variable is not whole
        env = {}
        for item in items:
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
        return env

    def _stat_field(self, pid: int, index: int) -> int | None:
        """A numeric field of /proc/<pid>/stat, counted after the ")" closing comm."""
        text = self.read_text("proc", str(pid), "stat")
        if not text:
            return None
        try:
            return int(text.rsplit(")", 1)[1].split()[index])
        except (IndexError, ValueError):
            return None

    def start_time(self, pid: int) -> int | None:
        """Start time in clock ticks since boot (field 22 of stat): pid + this is unique."""
        return self._stat_field(pid, 19)

    def fd_links(self, pid: int) -> dict[int, str]:
        fddir = self.path("proc", str(pid), "fd")
        links = {}
        try:
            names = os.listdir(fddir)
        except OSError:
            return links
        for name in names:
            try:
                links[int(name)] = os.readlink(fddir / name)
            except (OSError, ValueError):
                continue
        return links

    def socket_inode(self, pid: int, fd: int) -> int | None:
        """The socket inode behind one fd (one readlink, where socket_inodes reads every
        fd of the process); None for a closed fd or one that is not a socket."""
        try:
            return _socket_inode(os.readlink(self.path("proc", str(pid), "fd", str(fd))))
        except OSError:
            return None

    def socket_inodes(self, pid: int) -> dict[int, int]:
        """fd -> socket inode for every socket the process holds."""
        out = {}
        for fd, target in self.fd_links(pid).items():
            inode = _socket_inode(target)
            if inode is not None:
                out[fd] = inode
        return out

    def tcp_sockets(self, pid: int | str = "self", listening_only: bool = False) -> list[Socket]:
        """The TCP sockets of the process's network namespace. `listening_only`: those in
        LISTEN, read without the rest of the table. The kernel lists listening sockets
        first (its walk takes the listening hash, then the established one), and a server
        under load has thousands of others in TIME_WAIT: with 14,000 of them, the whole
        table took 119 ms to read here, its listening rows 7 ms. The reading stops at the
        first row in another state."""
        rows = []
        for name in ("tcp", "tcp6"):
            try:
                with open(self.path("proc", str(pid), "net", name), errors="replace") as handle:
                    next(handle, None)       # the column names
                    for line in handle:
                        f = line.split()
                        if len(f) < 10:
                            continue
                        state = int(f[3], 16)
                        if listening_only and state != TCP_LISTEN:
                            break
                        local, remote = f[1].split(":"), f[2].split(":")
                        rows.append(Socket(int(f[9]), _decode_addr(local[0]), int(local[1], 16),
                                           _decode_addr(remote[0]), int(remote[1], 16), state))
            except OSError:         # gone, or not ours to read: as an empty table
                continue
        return rows

    # ---- host ----
    def hostname(self) -> str:
        text = self.read_text("proc/sys/kernel/hostname")
        return text.strip() if text else os.uname().nodename

    def boot_id(self) -> str:
        text = self.read_text("proc/sys/kernel/random/boot_id")
        return text.strip() if text else "unknown"
