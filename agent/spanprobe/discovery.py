"""Discover: which processes to trace, what they are called, what sockets they hold.

Everything is read through procfs.SysRoot, so unit tests run on a fake /proc.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass, field

from . import target_resource
from .privacy import Redactor
from .procfs import TCP_ESTABLISHED, TCP_LISTEN, SysRoot

log = logging.getLogger("spanprobe.discovery")

# what the agent keeps of a process's environment: its own resource settings, and where its
# Python code is found (app_routes: PYTHONPATH, a Django project's settings module)
KEPT_VARIABLES = (*target_resource.VARIABLES, "PYTHONPATH", "DJANGO_SETTINGS_MODULE")
INTERPRETERS = ("python", "node", "ruby", "perl", "php", "bash", "sh", "java", "deno", "bun")
_INSTANCE_NS = uuid.UUID("6f1c9e53-0a1d-4c55-9d3e-5f7a2b8c4e10")


@dataclass
class ProcessInfo:
    pid: int
    exe: str | None
    cmdline: list[str]
    comm: str
    env: dict[str, str]          # the few exec-time variables the agent uses (KEPT_VARIABLES)
    start_time: int | None

    @functools.cached_property
    def own(self) -> target_resource.TargetResource:
        """Its own resource variables, parsed (by the SDK's rules) the first time a span or
        a rule needs them, not for every process a scan of the host reads."""
        return target_resource.read(self.env)

    @property
    def exe_name(self) -> str:
        if self.exe:
            return os.path.basename(self.exe.removesuffix(" (deleted)"))
        return self.comm

    @property
    def script(self) -> str | None:
        """The script or module an interpreter runs (python app.py, python -m pkg)."""
        if not self.exe_name.startswith(INTERPRETERS) or len(self.cmdline) < 2:
            return None
        args = self.cmdline[1:]
        i = 0
        while i < len(args):
            a = args[i]
            if a == "-m" and i + 1 < len(args):
                return args[i + 1]
            if a == "-c":
                return None
            if a.startswith("-"):
                i += 2 if a in ("-W", "-X", "-Q") else 1
                continue
            return os.path.basename(a)
        return None

    @property
    def service_name(self) -> str:
        """As the SDK in the process would name it (OTEL_SERVICE_NAME, then service.name in
        OTEL_RESOURCE_ATTRIBUTES), else the script or program: the SDK's own last resort,
        unknown_service:<exe>, says less than the program's name."""
        if self.own.service_name:
            return self.own.service_name
        script = self.script
        if script:
            return script.removesuffix(".py").removesuffix(".js").removesuffix(".rb")
        return self.exe_name or f"pid-{self.pid}"

    def names(self) -> set[str]:
        out = {self.comm, self.exe_name}
        if self.exe:
            out.add(self.exe)
        if self.script:
            out.add(self.script)
            out.add(self.script.removesuffix(".py"))
        if self.cmdline:
            out.add(os.path.basename(self.cmdline[0]))
        return {n for n in out if n}


class ProcessRegistry:
    """pid -> ProcessInfo, read once per exec and forgotten at exit."""

    def __init__(self, root: SysRoot, redactor: Redactor):
        self.root = root
        self.redactor = redactor
        self.procs: dict[int, ProcessInfo] = {}
        self.seen_exec: dict[int, tuple[str, str]] = {}     # pid -> (comm, filename) from the kernel
        self.parents: dict[int, int] = {}                   # forked child -> parent
        self.boot_id = root.boot_id()

    def get(self, pid: int) -> ProcessInfo | None:
        info = self.procs.get(pid)
        if info is None:
            info = self.read(pid) or self._remembered(pid)
            if info is not None:
                self.procs[pid] = info
        return info

    def _remembered(self, pid: int) -> ProcessInfo | None:
        """A process gone before /proc was read (curl, short scripts): what the kernel
        told at exec, or its parent's identity for a fork that never exec'd."""
        seen = self.seen_exec.get(pid)
        if seen is not None:
            comm, filename = seen
            return ProcessInfo(pid, filename or None, [filename or comm], comm, {}, None)
        parent = self.parents.get(pid)
        if parent is not None and parent != pid:
            p = self.get(parent)
            if p is not None:
                return ProcessInfo(pid, p.exe, p.cmdline, p.comm, p.env, None)
        return None

    def on_exec(self, pid: int, comm: str, filename: str, read: bool = True) -> ProcessInfo | None:
        """A new program image: what was known goes; read /proc now (`read`) while the
        process is surely there, or later, when a connection needs its identity."""
        self.procs.pop(pid, None)
        self.parents.pop(pid, None)
        if len(self.seen_exec) > 20000:
            self.seen_exec.clear()
        self.seen_exec[pid] = (comm, filename)
        return self.get(pid) if read else None

    def size(self) -> int:
        """Entries held, for the stats: bounded by the processes traced."""
        return len(self.procs) + len(self.seen_exec) + len(self.parents)

    def on_fork(self, child: int, parent: int) -> None:
        if len(self.parents) > 20000:
            self.parents.clear()
        self.parents[child] = parent

    def read(self, pid: int) -> ProcessInfo | None:
        cmdline = self.root.cmdline(pid)
        comm = self.root.comm(pid)
        if cmdline is None or comm is None:
            return None
        env = self.root.environ(pid)
        kept = {k: env[k] for k in KEPT_VARIABLES if env.get(k)}
        return ProcessInfo(pid, self.root.exe(pid), cmdline, comm, kept, self.root.start_time(pid))

    def refresh(self, pid: int) -> ProcessInfo | None:
        self.procs.pop(pid, None)
        return self.get(pid)

    def forget(self, pid: int) -> None:
        self.procs.pop(pid, None)
        self.seen_exec.pop(pid, None)
        self.parents.pop(pid, None)

    def instance_id(self, info: ProcessInfo) -> str:
        """Stable for the life of one process, distinct across restarts and hosts."""
        return str(uuid.uuid5(_INSTANCE_NS, f"{self.boot_id}:{info.pid}:{info.start_time}"))

    def resource_attributes(self, info: ProcessInfo) -> dict[str, object]:
        """What the agent derives about a process; its own variables (info.own) are laid
        over these and over the agent's settings by SpanBuilder.resource."""
        return {
            "service.name": info.service_name,
            "service.instance.id": self.instance_id(info),
            "process.pid": info.pid,
            "process.executable.name": info.exe_name,
            "process.executable.path": info.exe or "",
            "process.command_line": self.redactor.command_line(info.cmdline),
        }


@dataclass
class Selection:
    """Which processes to trace. Empty = every process that speaks HTTP."""

    ports: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    exe: set[str] = field(default_factory=set)
    exclude_exe: set[str] = field(default_factory=set)

    @property
    def trace_all(self) -> bool:
        return not (self.ports or self.pids or self.exe)

    def excluded(self, info: ProcessInfo) -> bool:
        return bool(self.exclude_exe & info.names())

    def matches(self, info: ProcessInfo) -> bool:
        if self.excluded(info):
            return False
        if self.trace_all:
            return True
        return info.pid in self.pids or bool(self.exe & info.names())

    def kernel_comms(self) -> list[str]:
        """exe names the kernel can match by comm at exec (first 15 bytes)."""
        return sorted({e[:15] for e in self.exe if "/" not in e})


@dataclass(frozen=True)
class ExistingConnection:
    pid: int
    fd: int
    role: int                 # events.ROLE_SERVER / ROLE_CLIENT
    local: tuple[str, int]
    peer: tuple[str, int]


def scan(root: SysRoot, selection: Selection, self_pid: int) -> tuple[list[int], list[ExistingConnection]]:
    """Processes selected now, and the TCP connections they already hold.

    Connections opened before the agent started are adopted so keep-alive clients
    that connected earlier are still traced; their role follows from the ports that
    are listening in the process's network namespace.
    """
    from .events import ROLE_CLIENT, ROLE_SERVER

    registry = ProcessRegistry(root, Redactor([], []))
    selected: list[int] = []
    existing: list[ExistingConnection] = []
    listen_cache: dict[str, tuple[set[int], dict[int, object]]] = {}
    # listening sockets by namespace: read once for every process of it (the whole table,
    # with tens of thousands of TIME_WAIT rows on a busy host, once more for the selected)
    listeners: dict[str, list] = {}
    for pid in root.pids():
        if pid == self_pid:
            continue
        info = registry.read(pid)
        if info is None:
            continue
        inodes = root.socket_inodes(pid)
        netns = net_namespace(root, pid) if inodes else str(pid)
        by_port = False
        if selection.ports and inodes:
            if netns not in listeners:
                listeners[netns] = root.tcp_sockets(pid, listening_only=True)
            mine = set(inodes.values())
            by_port = any(s.local_port in selection.ports and s.inode in mine for s in listeners[netns])
        if not (selection.matches(info) or (by_port and not selection.excluded(info))):
            continue
        selected.append(pid)
        if not inodes:
            continue
        if netns not in listen_cache:
            socks = root.tcp_sockets(pid)
            listen_cache[netns] = ({s.local_port for s in socks if s.state == TCP_LISTEN},
                                   {s.inode: s for s in socks})
        listening, by_inode = listen_cache[netns]
        for fd, inode in inodes.items():
            s = by_inode.get(inode)
            if s is None or s.state != TCP_ESTABLISHED:
                continue
            role = ROLE_SERVER if s.local_port in listening else ROLE_CLIENT
            existing.append(ExistingConnection(pid, fd, role, (s.local_addr, s.local_port),
                                               (s.remote_addr, s.remote_port)))
    return selected, existing


def listening_ports(root: SysRoot, pids: list[int]) -> set[int]:
    """The TCP ports these processes listen on now (the listening rows of each network
    namespace, read once for all its processes)."""
    ports: set[int] = set()
    listeners: dict[str, dict[int, int]] = {}       # netns -> listening socket inode -> port
    for pid in pids:
        inodes = root.socket_inodes(pid)
        if not inodes:
            continue
        netns = net_namespace(root, pid)
        if netns not in listeners:
            listeners[netns] = {s.inode: s.local_port for s in root.tcp_sockets(pid, listening_only=True)}
        ports.update(listeners[netns][i] for i in inodes.values() if i in listeners[netns])
    return ports


def net_namespace(root: SysRoot, pid: int) -> str:
    """"net:[4026531840]": processes in one namespace share one socket table."""
    try:
        return os.readlink(root.path("proc", str(pid), "ns", "net"))
    except OSError:         # gone, or not ours to read
        return str(pid)


def listen_address(root: SysRoot, pid: int, fd: int) -> tuple[str, int] | None:
    """Local address of a listening socket, from its inode (cached by the caller): looked
    for among the listening sockets first, read without the rest of the table."""
    inode = root.socket_inode(pid, fd)
    if inode is None:
        return None
    for listening_only in (True, False):
        for s in root.tcp_sockets(pid, listening_only):
            if s.inode == inode:
                return s.local_addr, s.local_port
    return None


def tcp_ends(root: SysRoot, pid: int) -> dict[int, tuple[tuple[str, int], tuple[str, int]]]:
    """socket inode -> (local end, peer) of every connected TCP socket in the process's
    network namespace: the ends of connections whose accept() the kernel side saw return
    only, which gives neither. A closed socket's row has no inode: not in it."""
    return {s.inode: ((s.local_addr, s.local_port), (s.remote_addr, s.remote_port))
            for s in root.tcp_sockets(pid) if s.state != TCP_LISTEN and s.inode}
