"""The agent recognises its own TCP sockets by their fds (spanprobe.router.own_tcp_ports)."""

import os
import socket

from spanprobe.router import own_tcp_ports


def test_own_tcp_ports_lists_this_process_tcp_sockets_only():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    r, w = os.pipe()
    try:
        fds = [listener.fileno(), client.fileno(), udp.fileno(), r, 999999]
        ports = own_tcp_ports(fds)
        assert ports == {listener.getsockname()[1], client.getsockname()[1]}
        client.getsockname()                      # still open: own_tcp_ports closed nothing
        os.fstat(r)
    finally:
        for s in (listener, client, udp):
            s.close()
        os.close(r)
        os.close(w)
