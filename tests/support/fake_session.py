"""A kernel session without a kernel, and the records a kernel would send.

`FakeSession` implements spanprobe.session.KernelSession with dicts: what the agent asked
of the kernel side is there to inspect, and the raw records a test injects are delivered
through the same callback, by address and size, as bcc's ring buffer delivers them. The
record builders pack the layouts of spanprobe.events (checked against the C header by
tests/unit/test_event_layout.py). `fake_proc` makes a process in a fake /proc tree
for spanprobe.procfs.SysRoot.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Callable

from spanprobe import events as ev
from spanprobe.probes import Plan, Probe


class FakeSession:
    def __init__(self, transport: str = "ringbuf", uprobes: bool = False):
        uprobe = [Probe("PyContext_Enter", "uprobe", False, "asyncio links")] if uprobes else []
        self.plan = Plan("tracepoint", transport, uprobes=uprobe)
        self.attached = ["tracepoint:read", "tracepoint:write"]
        self.compile_s = 0.0
        self.traced: dict[int, dict[str, int | bool]] = {}       # pid -> excluded, capture
        self.comms: set[str] = set()
        self.ports: set[int] = set()
        self.listen_ports: set[int] = set()
        self.python: dict[int, tuple] = {}                        # pid -> (layout, runtime)
        self.adopted: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, fd) -> (conn_id, role)
        self.conns: dict[tuple[int, int], int] = {}     # (pid, fd) -> conn_id the kernel side has now
        self.kernel_counters = {**{name: 0 for name in ev.COUNTERS.values()}, "prog_misses": 0,
                                "ring_records_unreadable": 0}
        self.pending: list[bytes] = []       # injected, delivered at the next poll
        self.on_poll: Callable[[], None] | None = None   # called by each poll, after taking what was pending
        self.polls = 0
        self.now = 0             # now_ns(): 0 = before every record, so nothing times out
        self.closed = False
        self.buffer_reader = "fake"
        self.shed: list[int] = []            # every share set_shed was given, in order
        self.program_ns = 0                  # programs_cpu_ns(): what tests make it
        self.program_time_refused: str | None = None

    def opener(self):
        """A spanprobe.session.SessionOpener that opens this session."""
        def open_session(settings, root, self_pid, trace_all):
            self.opened_with = {"self_pid": self_pid, "trace_all": trace_all}
            return self, [("fentry", "compile/load failed: refused (fake)")]
        return open_session

    def inject(self, *records: bytes) -> None:
        self.pending.extend(records)

    # ---- KernelSession ----
    def select_pid(self, pid: int, excluded: bool = False, capture: int = 0) -> None:
        self.traced[pid] = {"excluded": excluded, "capture": capture}

    def select_comm(self, comm: str) -> None:
        self.comms.add(comm[:15])

    def select_port(self, port: int) -> None:
        self.ports.add(port)

    def note_listen_port(self, port: int) -> None:
        self.listen_ports.add(port)

    def set_python(self, pid: int, layout, runtime: int) -> bool:
        self.python[pid] = (layout, runtime)
        return True

    def unset_python(self, pid: int) -> None:
        self.python.pop(pid, None)

    def conn_is(self, pid: int, fd: int, conn_id: int) -> bool:
        return self.conns.get((pid, fd)) == conn_id

    def adopt_connection(self, pid: int, fd: int, conn_id: int, role: int) -> bool:
        if (pid, fd) in self.adopted:
            return False
        self.adopted[(pid, fd)] = (conn_id, role)
        return True

    def counters(self) -> dict[str, int]:
        return dict(self.kernel_counters)

    def set_shed(self, permille: int) -> None:
        self.shed.append(permille)

    def count_program_time(self) -> str | None:
        return self.program_time_refused

    def programs_cpu_ns(self) -> int | None:
        return None if self.program_time_refused else self.program_ns

    def now_ns(self) -> int:
        """The fake kernel's clock: tests set `now` to the time of their records."""
        return self.now

    def open_buffer(self, on_lost, pages: int) -> None:
        self.on_lost = on_lost

    def poll(self, timeout_ms: int) -> list[bytes]:
        self.polls += 1
        records, self.pending = self.pending, []
        if self.on_poll is not None:
            self.on_poll()
        return records

    def close(self) -> None:
        self.closed = True


# ---- records, as the kernel side packs them ----

def header(kind: int, ts: int, tgid: int, fd: int = -1, conn_id: int = 0, tid: int | None = None) -> bytes:
    return ev.HEADER.pack(ts, kind, tgid, tgid if tid is None else tid, fd, conn_id)


def _addr(ep: tuple[str, int] | None) -> tuple[bytes, int]:
    if ep is None:
        return b"\0" * 16, 0
    return socket.inet_aton(ep[0]) + b"\0" * 12, ep[1]


def conn(kind: int, ts: int, tgid: int, fd: int, conn_id: int, role: int,
         peer: tuple[str, int] | None = None, local: tuple[str, int] | None = None,
         listen_fd: int = -1) -> bytes:
    paddr, pport = _addr(peer)
    laddr, lport = _addr(local)
    return header(kind, ts, tgid, fd, conn_id) + ev.CONN.pack(listen_fd, ev.AF_INET, role, 0, pport,
                                                              lport, 0, paddr, laddr)


def data(ts: int, tgid: int, fd: int, conn_id: int, direction: int, payload: bytes,
         owner_fd: int = -1, flags: int = 0) -> bytes:
    return header(ev.EV_DATA, ts, tgid, fd, conn_id) + ev.DATA.pack(
        len(payload), len(payload), direction, flags, 0, owner_fd, 0, b"\0" * 8) + payload


def proc(kind: int, ts: int, tgid: int, ppid: int = 1, comm: str = "", filename: str = "") -> bytes:
    return header(kind, ts, tgid) + ev.PROC.pack(ppid, 0, comm.encode(), filename.encode())


# ---- a fake /proc ----

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def tcp_row(i: int, local: tuple[str, int], remote: tuple[str, int], state: int, inode: int) -> str:
    def hexaddr(addr: str, port: int) -> str:
        return f"{struct.unpack('<I', socket.inet_aton(addr))[0]:08X}:{port:04X}"
    return (f"{i:4d}: {hexaddr(*local)} {hexaddr(*remote)} {state:02X} 00000000:00000000 "
            f"00:00000000 00000000  1000        0 {inode} 1 ffff888100000000 100 0 0 10 0\n")


def fake_proc(root: Path, pid: int, argv: list[str], exe: str, sockets: dict[int, int] | None = None,
              tcp_rows: list[str] | None = None) -> None:
    """/proc/<pid> with a command line, an executable, socket fds (fd -> inode) and the
    TCP table of its network namespace."""
    p = root / "proc" / str(pid)
    for d in ("fd", "net", "ns"):
        (p / d).mkdir(parents=True, exist_ok=True)
    (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (p / "comm").write_text(os.path.basename(argv[0])[:15] + "\n")
    (p / "environ").write_bytes(b"")
    (p / "stat").write_text(f"{pid} (x) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n")
    (p / "net" / "tcp").write_text(TCP_HEADER + "".join(tcp_rows or []))
    os.symlink("net:[4026531840]", p / "ns" / "net")
    os.symlink(exe, p / "exe")
    for fd, inode in (sockets or {}).items():
        os.symlink(f"socket:[{inode}]", p / "fd" / str(fd))
