"""Hostile HTTP for the integration tier: the bytes, a raw sender, a raw "server" that
answers hostile responses, a traced client process, and readers of an agent's health.

Every payload here is something a peer can send to a traced process over a real socket;
the agent sees it only through the kernel's capture. `must_count`: the message breaks
RFC 9110/9112 framing or syntax, so a strict agent counts it (parse error, unpaired
response, non-HTTP connection, ...) instead of turning it into a span with made-up
numbers. The oversized ones are legal to cut short, so they only have to be survived.

    python -m tests.support.hostile client   # the traced client, driven over stdin
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    must_count: bool = True


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body


def _chunked(size_line: bytes, data: bytes = b"abcd") -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", size_line + b"\r\n" + data + b"\r\n0\r\n\r\n")


def _length(value: bytes, body: bytes = b"hello") -> bytes:
    return _post(b"Content-Length: " + value + b"\r\n", body)


# Binary noise with no HTTP start: the kernel classifies the connection as not HTTP.
_GARBAGE = bytes((i * 167 + 13) % 256 for i in range(1500))

HOSTILE_REQUESTS = [
    Hostile("length-negative", _length(b"-100000", b"ab")),
    Hostile("chunk-size-negative", _chunked(b"-6")),
    Hostile("length-plus-sign", _length(b"+5")),
    Hostile("chunk-size-leading-space", _chunked(b" 5", b"abcde")),
    Hostile("length-underscore", _length(b"5_0", b"h" * 50)),
    Hostile("length-hex-prefix", _length(b"0x10", b"h" * 16)),
    Hostile("length-non-ascii-digits", _length("٥".encode())),
    Hostile("length-30-digits", _length(b"123456789012345678901234567890")),
    Hostile("chunk-size-huge", _chunked(b"ffffffffffffffffffff")),
    Hostile("length-two-values", _post(b"Content-Length: 5\r\nContent-Length: 50\r\n", b"hello")),
    Hostile("nul-bytes", b"GET /nul HTTP/1.1\x00\r\nHost: 127.0.0.1\r\nX-Nul: a\x00b\r\n\r\n"),
    Hostile("binary-after-method", b"GET " + _GARBAGE.replace(b" ", b"\x00") + b"\r\n\r\n"),
    Hostile("binary-garbage", b"\x16\x03\x01" + _GARBAGE),
    Hostile("header-line-100k", b"GET /big-header HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
            + b"b" * (100 * 1024) + b"\r\n\r\n", must_count=False),
    Hostile("request-line-70k", b"GET /" + b"r" * (70 * 1024) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            must_count=False),
]


def _response(status_line: bytes, headers: bytes = b"Content-Length: 2\r\n", body: bytes = b"ok") -> bytes:
    return status_line + b"\r\n" + headers + b"Connection: close\r\n\r\n" + body


HOSTILE_RESPONSES = [
    Hostile("status-negative", _response(b"HTTP/1.1 -200 OK")),
    Hostile("status-4-digits", _response(b"HTTP/1.1 2000 OK")),
    Hostile("status-non-numeric", _response(b"HTTP/1.1 abc OK")),
    # latin-1 superscript two: str.isdigit() says yes, int() says no
    Hostile("status-non-ascii-digit", _response(b"HTTP/1.1 \xb200 OK")),
    Hostile("response-length-negative", _response(b"HTTP/1.1 200 OK", b"Content-Length: -100000\r\n")),
    Hostile("response-length-30-digits",
            _response(b"HTTP/1.1 200 OK", b"Content-Length: 123456789012345678901234567890\r\n")),
    Hostile("response-chunk-size-negative",
            _response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked\r\n", b"-6\r\nabcd\r\n0\r\n\r\n")),
    Hostile("response-chunk-size-huge",
            _response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked\r\n",
                      b"ffffffffffffffffffff\r\nabcd\r\n0\r\n\r\n")),
    Hostile("response-length-two-values",
            _response(b"HTTP/1.1 200 OK", b"Content-Length: 2\r\nContent-Length: 20\r\n")),
]


def send_raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send `data` in one write, half-close, and read what comes back until the server
    closes or `timeout` passes (a server waiting for a body it will never get sees EOF)."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:          # the server refused an oversized head and closed first
            return bytes(got)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


class RawResponder:
    """A "server" on 127.0.0.1 that answers `GET /hostile/<name>` with that hostile
    response, verbatim, and closes. Runs in the test process, which is not traced."""

    def __init__(self, responses: list[Hostile]):
        self.responses = {h.name: h.data for h in responses}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True, name="raw-responder")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                try:
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    m = re.match(rb"GET /hostile/([\w-]+) ", head)
                    conn.sendall(self.responses.get(m.group(1).decode(), b"") if m else b"")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


class TracedClient:
    """A separate process the agent traces by pid: it makes one request per command on
    a new connection, reads until the server closes, and says how much it got."""

    def __init__(self, python: str, env: dict[str, str], cwd: str):
        import subprocess
        self.proc = subprocess.Popen([python, "-m", "tests.support.hostile", "client"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, port: int, path: str) -> int:
        """GET `path` from 127.0.0.1:`port`; the number of bytes that came back."""
        self.proc.stdin.write(json.dumps({"port": port, "path": path}) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"traced client exited with {self.proc.poll()}")
        return int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def _client_main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        req = (f"GET {cmd['path']} HTTP/1.1\r\nHost: 127.0.0.1:{cmd['port']}\r\n"
               "Connection: close\r\n\r\n").encode()
        got = 0
        try:
            with socket.create_connection(("127.0.0.1", cmd["port"]), timeout=5) as s:
                s.sendall(req)
                while chunk := s.recv(65536):
                    got += len(chunk)
        except OSError:
            pass
        print(got, flush=True)


# ---- the agent's health, read from /proc and from its log ----

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def stats_lines(stderr: str) -> list[dict]:
    """Every `stats {...}` and `final {...}` counter line the agent logged, in order."""
    return [json.loads(m) for m in re.findall(r" (?:stats|final) (\{.*\})", stderr)]


# Counter names under which an agent reports input it refused or could not use. Loss of
# events or of export capacity is not about the input, so those stay out.
_REFUSAL = re.compile(r"error|invalid|malformed|reject|refus|unparse|unpaired|non_http|"
                      r"evict|limit|dropped|cut|oversize|too_large|resync|overflow")
_NOT_INPUT = re.compile(r"^(spans_|export|attributes_)|events_lost")


def _flat(stats: dict, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in stats.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, int) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def refusal_counters(stats: dict) -> dict[str, int]:
    """Counters (nested ones as "outer.inner") that count refused or unusable input."""
    return {k: v for k, v in _flat(stats).items() if _REFUSAL.search(k) and not _NOT_INPUT.search(k)}


def refusals_added(before: dict, after: dict) -> dict[str, int]:
    """Refusal counters that grew between two stats lines, and by how much."""
    b, a = refusal_counters(before), refusal_counters(after)
    return {k: v - b.get(k, 0) for k, v in a.items() if v > b.get(k, 0)}


if __name__ == "__main__":
    if sys.argv[1:] == ["client"]:
        _client_main()
    else:
        sys.exit("usage: python -m tests.support.hostile client")
