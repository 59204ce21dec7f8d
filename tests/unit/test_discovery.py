"""Unit tests of process discovery (spanprobe.discovery) over a fake /proc tree."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from spanprobe import events as ev
from spanprobe.discovery import (
    ExistingConnection, ProcessInfo, ProcessRegistry, Selection, listen_address, scan, tcp_ends,
)
from spanprobe.privacy import Redactor
from spanprobe.procfs import SysRoot

APP = 100        # python3 app.py: listens on 8000, one accepted client, one connection to postgres
WORKER = 200     # worker: one connection to redis, nothing listening
SELF = 300       # the agent itself

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode\n")


def hexaddr(addr: str, port: int) -> str:
    # /proc/net/tcp: the address as a host-order (little-endian) 32-bit word
    word = struct.unpack("<I", socket.inet_aton(addr))[0]
    return f"{word:08X}:{port:04X}"


def tcp_row(i: int, local: tuple[str, int], remote: tuple[str, int], state: int, inode: int) -> str:
    return (f"{i:4d}: {hexaddr(*local)} {hexaddr(*remote)} {state:02X} 00000000:00000000 "
            f"00:00000000 00000000  1000        0 {inode} 1 ffff888100000000 100 0 0 10 0\n")


# one network namespace: every process sees every row
TCP = TCP_HEADER + "".join([
    tcp_row(0, ("0.0.0.0", 8000), ("0.0.0.0", 0), 0x0A, 1001),               # APP listen
    tcp_row(1, ("127.0.0.1", 8000), ("127.0.0.1", 40000), 0x01, 1002),       # APP accepted
    tcp_row(2, ("10.0.0.5", 45678), ("10.0.0.8", 5432), 0x01, 1003),         # APP -> postgres
    tcp_row(3, ("10.0.0.5", 46000), ("10.0.0.9", 6379), 0x01, 2001),         # WORKER -> redis
    tcp_row(4, ("127.0.0.1", 40000), ("127.0.0.1", 8000), 0x01, 3001),       # SELF's client side
    tcp_row(5, ("10.0.0.5", 47000), ("10.0.0.8", 5432), 0x06, 1004),         # APP TIME_WAIT
])


def make_proc(root: Path, pid: int, argv: list[str], comm: str, exe: str | None,
              fds: dict[int, str], env: dict[str, str] | None = None, start: int = 1234) -> Path:
    p = root / "proc" / str(pid)
    (p / "net").mkdir(parents=True)
    (p / "fd").mkdir()
    (p / "ns").mkdir()
    (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (p / "comm").write_text(comm + "\n")
    (p / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
    (p / "stat").write_text(f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 "
                            f"{start} 0 0\n")
    (p / "net" / "tcp").write_text(TCP)
    os.symlink("net:[4026531840]", p / "ns" / "net")
    if exe:
        os.symlink(exe, p / "exe")
    for fd, target in fds.items():
        os.symlink(target, p / "fd" / str(fd))
    return p


@pytest.fixture
def root(tmp_path: Path) -> SysRoot:
    make_proc(tmp_path, APP, ["/usr/bin/python3", "app.py"], "python3", "/usr/bin/python3.11",
              {0: "/dev/null", 1: "pipe:[77]", 3: "socket:[1001]", 4: "socket:[1002]",
               5: "socket:[1003]", 6: "socket:[1004]", 7: "socket:[99999]"})
    make_proc(tmp_path, WORKER, ["/opt/worker/bin/worker", "--queue", "emails"], "worker",
              "/opt/worker/bin/worker", {3: "socket:[2001]"})
    make_proc(tmp_path, SELF, ["/usr/bin/python3", "-m", "spanprobe", "run"], "spanprobe",
              "/usr/bin/python3.11", {9: "socket:[3001]"})
    (tmp_path / "proc" / "self").mkdir()          # not a pid: skipped
    return SysRoot(tmp_path)


APP_SERVER = ExistingConnection(APP, 4, ev.ROLE_SERVER, ("127.0.0.1", 8000), ("127.0.0.1", 40000))
APP_CLIENT = ExistingConnection(APP, 5, ev.ROLE_CLIENT, ("10.0.0.5", 45678), ("10.0.0.8", 5432))
WORKER_CLIENT = ExistingConnection(WORKER, 3, ev.ROLE_CLIENT, ("10.0.0.5", 46000), ("10.0.0.9", 6379))


# ---- ProcessInfo ----

def info(argv, exe="/usr/bin/python3.11", comm="python3", env_name=None, pid=42, env=None) -> ProcessInfo:
    kept = dict(env or {}, **({"OTEL_SERVICE_NAME": env_name} if env_name else {}))
    return ProcessInfo(pid, exe, argv, comm, kept, 1)


@pytest.mark.parametrize("argv, exe, script, service", [
    (["python3", "app.py"], "/usr/bin/python3.11", "app.py", "app"),
    (["python3", "/srv/site/main.py", "--port", "80"], "/usr/bin/python3.11", "main.py", "main"),
    (["python", "-m", "http.server", "8000"], "/usr/bin/python3.11", "http.server", "http.server"),
    (["python3", "-u", "-O", "app.py"], "/usr/bin/python3.11", "app.py", "app"),
    (["python3", "-W", "ignore", "app.py"], "/usr/bin/python3.11", "app.py", "app"),
    (["python3", "-X", "dev", "-m", "uvicorn", "main:app"], "/usr/bin/python3.11", "uvicorn", "uvicorn"),
    (["python3", "-c", "import app; app.run()"], "/usr/bin/python3.11", None, "python3.11"),
    (["python3"], "/usr/bin/python3.11", None, "python3.11"),
    (["python3", "-m"], "/usr/bin/python3.11", None, "python3.11"),
    (["/usr/bin/python3", "/usr/bin/gunicorn", "app:app"], "/usr/bin/python3.11", "gunicorn", "gunicorn"),
    (["node", "server.js"], "/usr/bin/node", "server.js", "server"),
    (["ruby", "app.rb"], "/usr/bin/ruby3.1", "app.rb", "app"),
    (["nginx: master process /usr/sbin/nginx"], "/usr/sbin/nginx", None, "nginx"),
    (["/usr/sbin/nginx", "-g", "daemon off;"], "/usr/sbin/nginx", None, "nginx"),
])
def test_script_and_service_name(argv, exe, script, service):
    p = info(argv, exe)
    assert p.script == script
    assert p.service_name == service


def test_service_name_from_environment_wins():
    assert info(["python3", "app.py"], env_name="checkout").service_name == "checkout"


def test_service_name_from_resource_attributes_beats_the_program_name():
    # issue 17: a gunicorn service named by its own OTEL_RESOURCE_ATTRIBUTES
    p = info(["/usr/bin/python3", "/usr/bin/gunicorn", "app:app"],
             env={"OTEL_RESOURCE_ATTRIBUTES": "service.name=catalogue,service.namespace=shop"})
    assert p.service_name == "catalogue"
    assert p.own.attributes == {"service.name": "catalogue", "service.namespace": "shop"}


def test_otel_service_name_beats_service_name_in_resource_attributes():
    p = info(["python3", "app.py"], env_name="checkout",
             env={"OTEL_RESOURCE_ATTRIBUTES": "service.name=catalogue"})
    assert p.service_name == "checkout"


def test_exe_name_falls_back_to_comm_and_drops_deleted():
    assert info(["x"], exe=None, comm="gunicorn").exe_name == "gunicorn"
    assert info(["x"], exe="/usr/bin/python3.11 (deleted)").exe_name == "python3.11"


def test_service_name_of_a_nameless_process_is_its_pid():
    assert ProcessInfo(7, None, [], "", {}, None).service_name == "pid-7"


def test_names():
    p = info(["/usr/bin/python3", "app.py"], comm="python3")
    assert p.names() == {"python3", "python3.11", "/usr/bin/python3.11", "app.py", "app"}
    q = info(["nginx: worker process"], exe="/usr/sbin/nginx", comm="nginx")
    assert q.names() == {"nginx", "/usr/sbin/nginx", "nginx: worker process"}
    assert "" not in ProcessInfo(1, None, [], "", {}, None).names()


# ---- Selection ----

def test_empty_selection_traces_everything_but_the_excluded():
    sel = Selection(exclude_exe={"python3.11"})
    assert sel.trace_all
    assert sel.matches(info(["node", "s.js"], exe="/usr/bin/node", comm="node"))
    assert not sel.matches(info(["python3", "app.py"]))
    assert sel.excluded(info(["python3", "app.py"]))


def test_selection_by_pid_exe_script_and_path():
    app = info(["python3", "app.py"], pid=42)
    assert Selection(pids={42}).matches(app)
    assert not Selection(pids={43}).matches(app)
    assert Selection(exe={"app"}).matches(app)
    assert Selection(exe={"app.py"}).matches(app)
    assert Selection(exe={"/usr/bin/python3.11"}).matches(app)
    assert not Selection(exe={"node"}).matches(app)
    assert not Selection(ports={8000}).matches(app)     # ports are checked by scan
    assert not Selection(ports={8000}).trace_all


def test_exclusion_beats_every_selector():
    app = info(["python3", "app.py"], pid=42)
    assert not Selection(pids={42}, exclude_exe={"app"}).matches(app)
    assert not Selection(exe={"app"}, exclude_exe={"python3"}).matches(app)


def test_kernel_comms_truncated_and_without_paths():
    sel = Selection(exe={"a-very-long-executable-name", "/usr/bin/nginx", "nginx", "app"})
    assert sel.kernel_comms() == ["a-very-long-exe", "app", "nginx"]
    assert Selection().kernel_comms() == []


# ---- scan ----

def test_scan_selects_by_port(root):
    selected, existing = scan(root, Selection(ports={8000}), SELF)
    assert selected == [APP]
    assert sorted(existing, key=lambda c: c.fd) == [APP_SERVER, APP_CLIENT]


def test_scan_reads_a_namespace_s_whole_socket_table_once_and_its_listeners_once(root, monkeypatch):
    """Every process with sockets is checked for a selected listening port, but a busy
    host's table has tens of thousands of TIME_WAIT rows: the listening rows are read once
    per network namespace for that check, the whole table once for the selected."""
    calls = []
    real = type(root).tcp_sockets

    def counted(self, pid="self", listening_only=False):
        calls.append(listening_only)
        return real(self, pid, listening_only)
    monkeypatch.setattr(type(root), "tcp_sockets", counted)
    selected, _ = scan(root, Selection(ports={8000}), SELF)
    assert selected == [APP]
    assert sorted(calls) == [False, True], calls


def test_scan_selects_by_pid(root):
    selected, existing = scan(root, Selection(pids={WORKER}), SELF)
    assert selected == [WORKER]
    assert existing == [WORKER_CLIENT]


def test_scan_selects_by_exe(root):
    assert scan(root, Selection(exe={"app"}), SELF)[0] == [APP]
    assert scan(root, Selection(exe={"worker"}), SELF)[0] == [WORKER]
    assert scan(root, Selection(exe={"/opt/worker/bin/worker"}), SELF)[0] == [WORKER]


def test_scan_all_skips_the_agent_itself(root):
    selected, existing = scan(root, Selection(), SELF)
    assert selected == [APP, WORKER]
    assert set(existing) == {APP_SERVER, APP_CLIENT, WORKER_CLIENT}


def test_scan_port_nobody_listens_on(root):
    # 5432 appears only as a remote port; 40000 only as a client's local port
    assert scan(root, Selection(ports={5432, 40000}), SELF) == ([], [])


def test_scan_port_selection_respects_exclusion(root):
    assert scan(root, Selection(ports={8000}, exclude_exe={"python3"}), SELF) == ([], [])


def test_scan_survives_a_process_that_vanished(root, tmp_path):
    (tmp_path / "proc" / "555").mkdir()            # no cmdline, no comm: gone mid-scan
    assert scan(root, Selection(), SELF)[0] == [APP, WORKER]


def test_listen_address(root):
    assert listen_address(root, APP, 3) == ("0.0.0.0", 8000)
    assert listen_address(root, APP, 5) == ("10.0.0.5", 45678)   # any socket by inode
    assert listen_address(root, APP, 0) is None                   # not a socket
    assert listen_address(root, APP, 7) is None                   # not TCP


def test_tcp_ends(root):
    """Every connected TCP socket of the process's namespace by inode: the listener is not
    one, nor a socket of another kind."""
    ends = tcp_ends(root, APP)
    assert ends[1002] == (("127.0.0.1", 8000), ("127.0.0.1", 40000))
    assert ends[1003] == (("10.0.0.5", 45678), ("10.0.0.8", 5432))
    assert 1001 not in ends and 99999 not in ends
    assert tcp_ends(root, 4242) == {}               # no such process


def test_host_sockets_take_ends_only_while_the_fd_is_still_that_connection(root):
    """The agent reads an unseen accept's ends a batch after the kernel wrote its record:
    by then the fd may be another connection's. The kernel side is asked, after the fd was
    read, whether it is still that connection (a close removes it before any reuse); until
    a session is there to ask, no ends are taken."""
    from spanprobe.router import HostSockets
    sockets = HostSockets(root, SELF)
    assert sockets.socket_ends(APP, 4, 77, 0) is None             # no session yet
    asked = []
    sockets.conn_is = lambda pid, fd, conn_id: asked.append((pid, fd, conn_id)) or conn_id == 77
    assert sockets.socket_ends(APP, 4, 77, 0) == (("127.0.0.1", 8000), ("127.0.0.1", 40000))
    assert sockets.socket_ends(APP, 4, 78, 0) is None              # another connection's fd now
    assert asked == [(APP, 4, 77), (APP, 4, 78)]
    assert sockets.socket_ends(APP, 3, 77, 0) is None              # the listener: no row
    assert sockets.socket_ends(APP, 42, 77, 0) is None             # no such fd


def test_host_sockets_read_the_table_again_only_for_an_accept_after_the_last_reading(root):
    """Prefork workers all in accept() when the agent starts: one reading of the TCP table
    serves every accept made before it; an accept after it needs a fresh one."""
    from spanprobe.router import HostSockets
    sockets = HostSockets(root, SELF)
    sockets.conn_is = lambda pid, fd, conn_id: True
    reads = []
    real = root.tcp_sockets
    root.tcp_sockets = lambda *a, **k: reads.append(a) or real(*a, **k)
    assert sockets.socket_ends(APP, 4, 1, 0) is not None
    assert sockets.socket_ends(APP, 5, 2, 0) is not None
    assert len(reads) == 1
    assert sockets.socket_ends(APP, 4, 3, time.monotonic_ns() + 10**9) is not None
    assert len(reads) == 2


# ---- ProcessRegistry ----

@pytest.fixture
def registry(root) -> ProcessRegistry:
    return ProcessRegistry(root, Redactor([], []))


def test_registry_reads_proc(registry):
    p = registry.get(APP)
    assert (p.pid, p.exe, p.cmdline, p.comm, p.start_time) == \
        (APP, "/usr/bin/python3.11", ["/usr/bin/python3", "app.py"], "python3", 1234)
    assert registry.get(APP) is p
    assert registry.get(12345) is None


def test_registry_remembers_exec_of_a_process_gone_from_proc(registry):
    p = registry.on_exec(555, "curl", "/usr/bin/curl")
    assert p is not None
    assert (p.pid, p.exe, p.cmdline, p.comm, p.env, p.start_time) == \
        (555, "/usr/bin/curl", ["/usr/bin/curl"], "curl", {}, None)
    assert p.service_name == "curl"
    assert registry.get(555) is p
    registry.forget(555)
    assert registry.get(555) is None


def test_registry_exec_with_empty_filename_uses_comm(registry):
    p = registry.on_exec(556, "sh", "")
    assert (p.exe, p.cmdline, p.exe_name) == (None, ["sh"], "sh")


def test_registry_exec_rereads_a_live_process(registry, tmp_path):
    assert registry.get(WORKER).service_name == "worker"
    (tmp_path / "proc" / str(WORKER) / "environ").write_bytes(b"OTEL_SERVICE_NAME=mailer\0")
    assert registry.get(WORKER).service_name == "worker"            # cached
    assert registry.on_exec(WORKER, "worker", "/opt/worker/bin/worker").service_name == "mailer"


def test_registry_forked_child_takes_its_parents_identity(registry):
    registry.on_fork(600, APP)
    child = registry.get(600)
    assert child.pid == 600
    assert (child.exe, child.cmdline, child.comm) == \
        ("/usr/bin/python3.11", ["/usr/bin/python3", "app.py"], "python3")
    assert child.start_time is None
    assert child.service_name == "app"


def test_registry_fork_of_a_remembered_exec(registry):
    registry.on_exec(700, "curl", "/usr/bin/curl")
    registry.on_fork(701, 700)
    assert registry.get(701).exe == "/usr/bin/curl"


def test_registry_child_exec_replaces_the_parents_identity(registry):
    registry.on_fork(600, APP)
    p = registry.on_exec(600, "wget", "/usr/bin/wget")
    assert (p.exe, p.comm) == ("/usr/bin/wget", "wget")


def test_registry_fork_of_unknown_parent_or_itself(registry):
    registry.on_fork(800, 801)
    assert registry.get(800) is None
    registry.on_fork(802, 802)
    assert registry.get(802) is None


def test_resource_attributes_redact_the_command_line(tmp_path):
    make_proc(tmp_path, 900, ["/srv/api", "--token", "s3cr3t", "--db=postgres://u:pw@db/x"], "api",
              "/srv/api", {}, env={"OTEL_SERVICE_NAME": "api"}, start=42)
    reg = ProcessRegistry(SysRoot(tmp_path), Redactor([], []))
    attrs = reg.resource_attributes(reg.get(900))
    assert attrs["service.name"] == "api"
    assert attrs["process.command_line"] == "/srv/api --token REDACTED --db=postgres://u:REDACTED@db/x"
    assert attrs["process.executable.path"] == "/srv/api"
    assert attrs["process.executable.name"] == "api"
    assert attrs["process.pid"] == 900


class CountingRoot(SysRoot):
    def __init__(self, base):
        super().__init__(base)
        self.tcp_reads: list = []

    def tcp_sockets(self, pid="self"):
        self.tcp_reads.append(pid)
        return super().tcp_sockets(pid)


def test_scan_reads_one_socket_table_per_network_namespace(root, tmp_path):
    counting = CountingRoot(tmp_path)
    selected, existing = scan(counting, Selection(), SELF)
    assert selected == [APP, WORKER]
    assert counting.tcp_reads == [APP]            # WORKER shares APP's namespace
    assert set(existing) == {APP_SERVER, APP_CLIENT, WORKER_CLIENT}


def test_scan_namespaces_apart_or_unreadable(root, tmp_path):
    ns = tmp_path / "proc" / str(WORKER) / "ns" / "net"
    ns.unlink()
    os.symlink("net:[4026532000]", ns)            # another namespace
    counting = CountingRoot(tmp_path)
    assert set(scan(counting, Selection(), SELF)[1]) == {APP_SERVER, APP_CLIENT, WORKER_CLIENT}
    assert counting.tcp_reads == [APP, WORKER]
    ns.unlink()                                   # unreadable: the process's own table
    counting = CountingRoot(tmp_path)
    assert set(scan(counting, Selection(), SELF)[1]) == {APP_SERVER, APP_CLIENT, WORKER_CLIENT}
    assert counting.tcp_reads == [APP, WORKER]
