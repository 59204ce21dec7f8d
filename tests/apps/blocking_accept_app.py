"""A server whose one thread waits in a blocking accept(), as Java's ServerSocket, Ruby's
TCPServer or a plain C server do (tests/integration/test_unseen_accept.py):

    python -m tests.apps.blocking_accept_app PORT

listens on 0.0.0.0:PORT and serves one connection at a time, keep-alive, until its client
closes it; every GET is answered 200 with its path. Started before the agent, it sits in
accept() while the agent attaches, so the connection that call returns has an accept()
the kernel side never saw enter.

It accepts with `socket._accept` and reads and writes the bare fd: a socket object made
from an accepted fd would ask the kernel its ends (getsockname), which would tell the agent
what it is to find on its own, as Go, Java or a C server never tell it."""

import os
import socket
import sys


def serve(fd: int) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            body = head.split(b" ", 2)[1]
            os.write(fd, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
    finally:
        os.close(fd)


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(sys.argv[1])))
    listener.listen(16)
    while True:
        fd, _ = listener._accept()      # blocking: accept4(2) until a client connects
        serve(fd)


if __name__ == "__main__":
    main()
