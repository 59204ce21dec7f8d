"""Unit tests of /proc reading (spanprobe.procfs) on a fake tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spanprobe import procfs
from spanprobe.procfs import TCP_ESTABLISHED, TCP_LISTEN, Socket, SysRoot

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode\n")
TCP6_HEADER = ("  sl  local_address                         remote_address                        "
               "st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")

# 127.0.0.1:8000 LISTEN; 10.0.0.5:8000 <- 10.0.0.9:51000 ESTABLISHED; 0.0.0.0:5432 LISTEN
TCP_ROWS = (
    "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 "
    "ffff8881029a8000 100 0 0 10 0\n"
    "   1: 0500000A:1F40 0900000A:C738 01 00000000:00000000 02:000A7D1C 00000000  1000        0 41240 2 "
    "ffff8881029a9a00 20 4 30 10 -1\n"
    "   2: 00000000:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 17001 1 "
    "ffff8881029aa000 100 0 0 10 0\n"
)
# [::]:8080 LISTEN; [::1]:8080 <- [::1]:40000 ESTABLISHED;
# [::ffff:127.0.0.1]:8080 <- [::ffff:127.0.0.1]:40001; [2001:db8::1]:443 -> [2001:db8:0:0:0:0:0:2]:33000
TCP6_ROWS = (
    "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000        0 50001 1 ffff888103c0c000 100 0 0 10 0\n"
    "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9C40 01 "
    "00000000:00000000 00:00000000 00000000  1000        0 50002 1 ffff888103c0c880 20 4 30 10 -1\n"
    "   2: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:9C41 01 "
    "00000000:00000000 00:00000000 00000000  1000        0 50003 1 ffff888103c0d100 20 4 30 10 -1\n"
    "   3: B80D0120000000000000000001000000:01BB B80D0120000000000000000002000000:80E8 01 "
    "00000000:00000000 00:00000000 00000000  1000        0 50004 1 ffff888103c0d980 20 4 30 10 -1\n"
)

# comm with a space and a parenthesis, as a process may name itself
STAT = ("4321 (my) (app) S 4000 4321 4000 34816 4321 4194560 1234 0 0 0 15 3 0 0 20 0 4 0 "
        "987654 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 4096 16386 0 0 0 17 3 0 0 0 0 0\n")


@pytest.fixture
def root(tmp_path: Path) -> SysRoot:
    proc = tmp_path / "proc"
    p = proc / "4321"
    (p / "net").mkdir(parents=True)
    (p / "cmdline").write_bytes(b"/usr/bin/python3\0-m\0gunicorn\0app:app\0")
    (p / "comm").write_text("gunicorn: maste\n")
    (p / "environ").write_bytes(b"PATH=/usr/bin\0OTEL_SERVICE_NAME=shop\0EMPTY=\0NOEQUALS\0"
                                b"URL=http://x/?a=b\0")
    (p / "stat").write_text(STAT)
    (p / "net" / "tcp").write_text(TCP_HEADER + TCP_ROWS)
    (p / "net" / "tcp6").write_text(TCP6_HEADER + TCP6_ROWS)
    fd = p / "fd"
    fd.mkdir()
    os.symlink("socket:[41234]", fd / "3")
    os.symlink("/var/log/app.log", fd / "4")
    os.symlink("socket:[50002]", fd / "7")
    os.symlink("pipe:[999]", fd / "9")
    os.symlink("/usr/bin/python3.11", p / "exe")
    (proc / "77").mkdir()
    (proc / "self").mkdir()
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "hostname").write_text("web-01\n")
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text("1b7a1e2c-0000-4000-8000-000000000001\n")
    return SysRoot(tmp_path)


def test_path_joins_under_root(root, tmp_path):
    assert root.path("proc", "1", "stat") == tmp_path / "proc" / "1" / "stat"
    assert root.path("/proc/1") == tmp_path / "proc" / "1"
    assert SysRoot().path("/proc/self") == Path("/proc/self")


def test_pids(root):
    assert root.pids() == [77, 4321]


def test_pids_without_proc(tmp_path):
    assert SysRoot(tmp_path / "nothing").pids() == []


def test_cmdline(root):
    assert root.cmdline(4321) == ["/usr/bin/python3", "-m", "gunicorn", "app:app"]


def test_cmdline_invalid_utf8(root, tmp_path):
    (tmp_path / "proc" / "77" / "cmdline").write_bytes(b"caf\xe9\0x\0")
    assert root.cmdline(77) == ["caf\ufffd", "x"]


def test_comm(root):
    assert root.comm(4321) == "gunicorn: maste"


def test_exe(root):
    assert root.exe(4321) == "/usr/bin/python3.11"
    assert root.exe(77) is None


def test_environ(root):
    assert root.environ(4321) == {"PATH": "/usr/bin", "OTEL_SERVICE_NAME": "shop", "EMPTY": "",
                                  "URL": "http://x/?a=b"}


def test_environ_and_cmdline_are_read_to_a_bound(root, tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "ARGS_LIMIT", 32)
    (tmp_path / "proc" / "77").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc" / "77" / "environ").write_bytes(b"A=1\0B=2\0" + b"C=" + b"x" * 100 + b"\0")
    assert root.environ(77) == {"A": "1", "B": "2"}     # the cut variable is not kept
    (tmp_path / "proc" / "77" / "cmdline").write_bytes(b"python\0" + b"y" * 100)
    assert root.cmdline(77) == ["python", "y" * 25]


def test_start_time(root):
    assert root.start_time(4321) == 987654


def test_stat_garbage(root, tmp_path):
    (tmp_path / "proc" / "77" / "stat").write_text("77 (short) S\n")
    assert root.start_time(77) is None
    (tmp_path / "proc" / "77" / "stat").write_text("77 (x) S " + "1 " * 18 + "notanumber\n")
    assert root.start_time(77) is None


def test_vanished_process_reads_give_none(root):
    assert root.cmdline(999) is None
    assert root.comm(999) is None
    assert root.environ(999) == {}
    assert root.start_time(999) is None
    assert root.fd_links(999) == {}
    assert root.socket_inodes(999) == {}
    assert root.tcp_sockets(999) == []


def test_fd_links_and_socket_inodes(root):
    assert root.fd_links(4321) == {3: "socket:[41234]", 4: "/var/log/app.log",
                                   7: "socket:[50002]", 9: "pipe:[999]"}
    assert root.socket_inodes(4321) == {3: 41234, 7: 50002}
    # one fd's, by one readlink: a socket's inode, or None for anything else
    assert [root.socket_inode(4321, fd) for fd in (3, 4, 7, 9, 42)] == [41234, None, 50002, None, None]
    assert root.socket_inode(999, 3) is None


def test_socket_inode_takes_only_a_well_formed_link(root, tmp_path):
    fd = tmp_path / "proc" / "4321" / "fd"
    for n, target in ((20, "socket:[12x]"), (21, "socket:[]"), (22, "socket:[5"), (23, "socket:[-5]")):
        os.symlink(target, fd / str(n))
        assert root.socket_inode(4321, n) is None, target


def test_tcp_sockets(root):
    assert root.tcp_sockets(4321) == [
        Socket(41234, "127.0.0.1", 8000, "0.0.0.0", 0, TCP_LISTEN),
        Socket(41240, "10.0.0.5", 8000, "10.0.0.9", 51000, TCP_ESTABLISHED),
        Socket(17001, "0.0.0.0", 5432, "0.0.0.0", 0, TCP_LISTEN),
        Socket(50001, "::", 8080, "::", 0, TCP_LISTEN),
        Socket(50002, "::1", 8080, "::1", 40000, TCP_ESTABLISHED),
        Socket(50003, "127.0.0.1", 8080, "127.0.0.1", 40001, TCP_ESTABLISHED),
        Socket(50004, "2001:db8::1", 443, "2001:db8::2", 33000, TCP_ESTABLISHED),
    ]


def test_tcp_sockets_listening_only_stops_at_the_first_row_in_another_state(root):
    # the fake tables list a LISTEN row after an ESTABLISHED one, which the kernel never
    # does: the reading has stopped before it (listen_address then reads all of it)
    assert root.tcp_sockets(4321, listening_only=True) == [
        Socket(41234, "127.0.0.1", 8000, "0.0.0.0", 0, TCP_LISTEN),
        Socket(50001, "::", 8080, "::", 0, TCP_LISTEN),
    ]


def test_tcp_sockets_skips_short_rows_and_missing_tcp6(root, tmp_path):
    net = tmp_path / "proc" / "77" / "net"
    net.mkdir()
    (net / "tcp").write_text(TCP_HEADER + "   0: 0100007F:1F40\n" + TCP_ROWS.splitlines(True)[1])
    assert root.tcp_sockets(77) == [Socket(41240, "10.0.0.5", 8000, "10.0.0.9", 51000, TCP_ESTABLISHED)]


def test_tcp_sockets_of_self(root, tmp_path):
    net = tmp_path / "proc" / "self" / "net"
    net.mkdir()
    (net / "tcp").write_text(TCP_HEADER + TCP_ROWS.splitlines(True)[2])
    assert root.tcp_sockets() == [Socket(17001, "0.0.0.0", 5432, "0.0.0.0", 0, TCP_LISTEN)]


def test_tcp_rows_match_real_kernel_format():
    """Our rows decode like the ones this very machine writes for a listening socket."""
    import socket
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        inode = os.fstat(s.fileno()).st_ino
        found = [x for x in SysRoot().tcp_sockets() if x.inode == inode]
    finally:
        s.close()
    if not found and not Path("/proc/self/net/tcp").exists():
        pytest.skip("no /proc/self/net/tcp here")
    assert found == [Socket(inode, "127.0.0.1", port, "0.0.0.0", 0, TCP_LISTEN)]


def test_hostname_boot_id(root):
    assert root.hostname() == "web-01"
    assert root.boot_id() == "1b7a1e2c-0000-4000-8000-000000000001"


def test_host_fallbacks(tmp_path):
    empty = SysRoot(tmp_path)
    assert empty.hostname() == os.uname().nodename
    assert empty.boot_id() == "unknown"


def test_read_helpers(root, tmp_path):
    assert root.exists("proc", "4321", "stat")
    assert not root.exists("proc", "4321", "nope")
    assert root.read_text("proc", "4321", "nope") is None
    assert root.read_bytes("proc", "4321", "nope") is None
    assert root.read_text("proc", "4321") is None            # a directory
    (tmp_path / "bin.dat").write_bytes(b"ok\xff")
    assert root.read_text("bin.dat") == "ok\ufffd"


def test_this_kernel_lists_listening_sockets_before_the_others():
    """What tcp_sockets(listening_only=True) relies on, on this machine's kernel: with
    connections established and in TIME_WAIT beside them, every LISTEN row comes first."""
    import socket
    server = socket.socket()
    clients, accepted = [], []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        for i in range(20):
            c = socket.create_connection(server.getsockname())
            a, _ = server.accept()
            if i % 2:
                c.close()           # the client closes first: its end waits in TIME_WAIT
                a.close()
            else:
                clients.append(c)
                accepted.append(a)
        inode = os.fstat(server.fileno()).st_ino
        table = SysRoot().read_text("proc/self/net/tcp")
        listening = SysRoot().tcp_sockets(listening_only=True)
    finally:
        for s in [server, *clients, *accepted]:
            s.close()
    if table is None:
        pytest.skip("no /proc/self/net/tcp here")
    states = [int(line.split()[3], 16) for line in table.splitlines()[1:]]
    assert states.count(TCP_LISTEN) < len(states) - 20     # ours: 10 in TIME_WAIT, 20 established
    first_other = next(i for i, state in enumerate(states) if state != TCP_LISTEN)
    assert TCP_LISTEN not in states[first_other:]
    assert inode in {s.inode for s in listening}
    assert {s.state for s in listening} == {TCP_LISTEN}
