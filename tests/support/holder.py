"""Both ends of a resource-exhaustion test, as processes that hold many sockets:

    python -m tests.support.holder serve SMALL_READ LARGE_READ
        accepts everything on two loopback ports and never answers; prints
        "ready SMALL_PORT LARGE_PORT". The first port is read SMALL_READ bytes per recv
        (no more than the agent captures, so it is handed every byte of a half-sent
        head), the second LARGE_READ bytes per recv (a normal server's read, for a
        flood). A line "count" on stdin prints "<open connections> <bytes received>".
    python -m tests.support.holder connect PORT N HEAD_BYTES SOURCE
        opens N connections from address SOURCE (127.x.y.z) to PORT, sends HEAD_BYTES of
        a request head on each, no blank line, paced so a tracer's buffer can keep up;
        prints "held N". A source address per connector keeps every connection's peer
        (address, port) distinct across connectors, as peers of a busy server are.

Both stay until stdin closes. Each raises its own open-file limit as far as it needs;
where the hard limit is lower and can't be raised (no CAP_SYS_RESOURCE, as in some
containers), the test splits its connections over several pairs of these.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import sys
import time

HEADROOM = 64          # fds besides the connections: stdio, listeners, the interpreter's own
# ~250 connections a second per connector, ~1,700 events a second (accept, addresses, 2 KiB
# reads): what the agent's one consumer thread keeps up with here, so its ring buffer
# doesn't overflow (event loss is not what these tests are about)
PACE_BATCH, PACE_PAUSE_S = 25, 0.1


def fd_capacity() -> int:
    """Connections one process can hold: its hard open-file limit, less headroom."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - HEADROOM


def raise_fd_limit(connections: int) -> None:
    need = connections + HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))


class Hold(asyncio.BufferedProtocol):
    open = 0
    received = 0

    def __init__(self, read_size: int):
        self.buf = bytearray(read_size)

    def connection_made(self, transport):
        Hold.open += 1

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        Hold.received += nbytes

    def eof_received(self):
        return False        # close our side too

    def connection_lost(self, exc):
        Hold.open -= 1


async def serve(small: int, large: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda n=n: Hold(n), "127.0.0.1", 0, backlog=4096)
               for n in (small, large)]
    print("ready", *(s.sockets[0].getsockname()[1] for s in servers), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"count":
            print(Hold.open, Hold.received, flush=True)
    for s in servers:
        s.close()


def no_time_wait(s: socket.socket) -> None:
    """Close with a reset: 20,000 sockets in TIME_WAIT would outlive the test by a minute
    and slow down everything on the host that reads /proc/net/tcp."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def connect(port: int, n: int, head_bytes: int, source: str) -> None:
    socks = []
    pad = b"p" * head_bytes
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        no_time_wait(s)
        socks.append(s)
        s.sendall((f"GET /half/{port}/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".encode() + pad)[:head_bytes])
        if i % PACE_BATCH == PACE_BATCH - 1:
            time.sleep(PACE_PAUSE_S)
    print("held", len(socks), flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        raise_fd_limit(fd_capacity())
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    elif sys.argv[1] == "connect":
        raise_fd_limit(int(sys.argv[3]))
        connect(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)
