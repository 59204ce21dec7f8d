"""The demo's traffic: two small HTTP services (standard library only) and a client.

`python -m spanprobe.demo_app serve --port 8081 [--downstream http://127.0.0.1:8082]`
`python -m spanprobe.demo_app load --url http://127.0.0.1:8081 [--rate 2]`
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(port: int, downstream: str | None) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path.startswith("/users/"):
                self._send(200, {"user": path.rsplit("/", 1)[1]})
            elif path == "/checkout" and downstream:
                with urllib.request.urlopen(f"{downstream}/inventory/{int(time.time()) % 100}") as r:
                    self._send(200, {"checkout": "ok", "inventory": json.loads(r.read())})
            elif path.startswith("/inventory/"):
                self._send(200, {"in_stock": True})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            self._send(201, {"created": True})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def load(url: str, rate: float) -> None:
    host = url.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=5)
    paths = ["/users/42", "/checkout?token=s3cr3t", "/missing", "/users/7"]
    i = 0
    while True:
        try:
            if i % 5 == 4:
                conn.request("POST", "/orders", body=b'{"item": 1}',
                             headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", paths[i % len(paths)])
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, timeout=5)
        i += 1
        time.sleep(1.0 / rate)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--downstream")
    lo = sub.add_parser("load")
    lo.add_argument("--url", required=True)
    lo.add_argument("--rate", type=float, default=2.0)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.port, a.downstream)
    else:
        load(a.url, a.rate)


if __name__ == "__main__":
    main()
