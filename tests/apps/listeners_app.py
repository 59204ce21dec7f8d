"""A server that listens on more ports when asked, for the kernel side's local ends of
accepted connections (tests/integration/test_listen_ports.py):

    python -m tests.apps.listeners_app PORT BEFORE LATER

listens on 0.0.0.0:PORT and 0.0.0.0:BEFORE at once; GET /listen on any of them opens
0.0.0.0:LATER and a listener on a port the kernel picks (bind to port 0), and answers
{"later": LATER, "ephemeral": its port}; GET /ephemeral opens one more of the latter,
{"ephemeral": its port}. Every other path answers 200 "ok"; a connection per request.

It accepts with `socket._accept` and reads and writes the bare fd: a socket object made
from an accepted fd asks the kernel its local address (getsockname), which tells the
agent the exact local end whatever the kernel side kept, as every Python server does.
Servers in other languages don't ask (Go, libuv): this one behaves as they do."""

import json
import os
import select
import socket
import sys
import threading


def answer(fd: int) -> None:
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = os.read(fd, 4096)
            if not chunk:
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode()
        if path == "/listen":
            body = json.dumps({"later": serve(int(sys.argv[3])), "ephemeral": serve(0)}).encode()
        elif path == "/ephemeral":
            body = json.dumps({"ephemeral": serve(0)}).encode()
        else:
            body = b"ok"
        os.write(fd, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    finally:
        os.close(fd)


def accept_forever(listener: socket.socket) -> None:
    """Waits in select(2), not in accept(2), as socketserver does: an accept(2) entered
    before the agent attached returns unseen (no connection is known of it)."""
    while True:
        if not select.select([listener], [], [], 0.5)[0]:
            continue
        fd, _ = listener._accept()
        threading.Thread(target=answer, args=(fd,), daemon=True).start()


def serve(port: int, forever: bool = False) -> int:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    if forever:
        accept_forever(listener)
    threading.Thread(target=accept_forever, args=(listener,), daemon=True).start()
    return listener.getsockname()[1]


if __name__ == "__main__":
    serve(int(sys.argv[2]))
    serve(int(sys.argv[1]), forever=True)
