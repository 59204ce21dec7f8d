"""The agent recognises its own TCP connections by their fds (spanprobe.router.own_tcp_ends,
HostSockets.own_connection): by both ends' ports, never by the client's port alone."""

import os
import socket

from spanprobe.procfs import SysRoot
from spanprobe.router import HostSockets, own_tcp_ends


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
        assert sockets.own_connection(("127.0.0.1", mine), ("127.0.0.1", theirs))
        assert not sockets.own_connection(("127.0.0.1", mine), ("127.0.0.1", theirs + 1))
        assert sockets.own_connection(("127.0.0.1", mine), None)        # server's end unknown
        assert not sockets.own_connection(("192.0.2.1", mine), ("127.0.0.1", theirs))
    finally:
        export.close()
        collector.close()
