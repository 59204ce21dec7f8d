"""The agent recognises its own TCP connections by their fds (spanprobe.router.own_tcp_ends,
HostSockets.own_connection): by both ends' ports, never by the client's port alone, and
never from a reading of its sockets older than the accept."""

import os
import socket
import time

from spanprobe.procfs import SysRoot
from spanprobe.export import export_ports
from spanprobe.router import OTHER_PORTS_READ_NS, HostSockets, own_tcp_ends


def test_own_tcp_ends_lists_this_process_connected_tcp_sockets_only():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    r, w = os.pipe()
    try:
        fds = [listener.fileno(), client.fileno(), udp.fileno(), r, 999999]
        ends = own_tcp_ends(fds)
        assert ends == {(client.getsockname()[1], listener.getsockname()[1])}
        client.getsockname()                      # still open: own_tcp_ends closed nothing
        os.fstat(r)
    finally:
        for s in (listener, client, udp):
            s.close()
        os.close(r)
        os.close(w)


def test_a_traced_client_sharing_the_agents_client_port_is_not_the_agent():
    """Linux gives two connections to different servers the same client port when it can;
    a request from such a client was dropped unseen, counted only as the agent's own."""
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen()
    export = socket.create_connection(collector.getsockname())     # the agent's own, to a collector
    try:
        mine, theirs = export.getsockname()[1], collector.getsockname()[1]
        sockets = HostSockets(SysRoot("/"), os.getpid())
        now = time.monotonic_ns()
        assert sockets.own_connection(("127.0.0.1", mine), ("127.0.0.1", theirs), now)
        assert not sockets.own_connection(("127.0.0.1", mine), ("127.0.0.1", theirs + 1), now)
        assert sockets.own_connection(("127.0.0.1", mine), None, now)        # server's end unknown
        assert not sockets.own_connection(("192.0.2.1", mine), ("127.0.0.1", theirs), now)
    finally:
        export.close()
        collector.close()


def pair(collector):
    export = socket.create_connection(collector.getsockname())
    return export, ("127.0.0.1", export.getsockname()[1]), ("127.0.0.1", collector.getsockname()[1])


def test_an_export_connection_opened_just_after_a_reading_is_still_the_agents():
    """The exporter's first connection, kept alive for every later export, was accepted
    within 100 ms of a reading of the agent's sockets taken for another connection: it
    was traced, and every export it carried became a span (15 in one CI run)."""
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen()
    sockets = HostSockets(SysRoot("/"), os.getpid(), frozenset({collector.getsockname()[1]}))
    assert not sockets.own_connection(("127.0.0.1", 40000), ("127.0.0.1", 8000), time.monotonic_ns())
    export, peer, local = pair(collector)              # connected after that reading
    try:
        assert sockets.own_connection(peer, local, time.monotonic_ns())
    finally:
        export.close()
        collector.close()


def test_a_reading_newer_than_the_accept_decides_without_reading_again():
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen()
    sockets = HostSockets(SysRoot("/"), os.getpid(), frozenset({collector.getsockname()[1]}))
    accepted = time.monotonic_ns()
    assert not sockets.own_connection(("127.0.0.1", 40000), ("127.0.0.1", 8000), accepted)
    export, peer, local = pair(collector)              # after the accept asked about: not in it
    try:
        assert not sockets.own_connection(peer, local, accepted)
        assert sockets.own_connection(peer, local, time.monotonic_ns())
    finally:
        export.close()
        collector.close()


def test_other_server_ports_are_read_for_at_most_once_a_second():
    """A reading walks every fd of the agent: a host accepting loopback connections at a
    high rate must not pay it per connection where the agent does not export."""
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen()
    sockets = HostSockets(SysRoot("/"), os.getpid(), frozenset({4318}))
    assert not sockets.own_connection(("127.0.0.1", 40000), ("127.0.0.1", 8000), time.monotonic_ns())
    export, peer, local = pair(collector)
    try:
        assert not sockets.own_connection(peer, local, time.monotonic_ns())     # within a second
        sockets.own_ends_ns -= OTHER_PORTS_READ_NS // 2
        assert not sockets.own_connection(peer, local, time.monotonic_ns())     # still within
        sockets.own_ends_ns -= OTHER_PORTS_READ_NS // 2
        assert sockets.own_connection(peer, local, time.monotonic_ns())
    finally:
        export.close()
        collector.close()


def test_export_ports_are_the_endpoints_port_or_its_schemes():
    assert export_ports({"export.otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}) == {4318}
    assert export_ports({"export.otlp_endpoint": "https://collector.example"}) == {443}
    assert export_ports({"export.otlp_endpoint": "http://collector.example"}) == {80}
    assert export_ports({"export.otlp_endpoint": None}) == frozenset()
