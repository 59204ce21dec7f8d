"""Standard-library test app: python -m tests.apps.stdlib_app PORT (keep-alive, pipelining)."""

import json
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, call_path, downstream, record


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def parse_request(self):
        # the app's own clock starts once the request line and headers are read
        self._start = time.time_ns()
        return super().parse_request()

    def _done(self):
        self.wfile.flush()
        record(self.headers.get("X-Request-Id"), self._start, time.time_ns())

    def do_GET(self):
        self._get()
        self._done()

    def _get(self):
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path.startswith("/users/"):
            if "delay" in params:
                time.sleep(int(params["delay"]) / 1000)
            self._json(200, {"id": int(path.rsplit("/", 1)[1])})
        elif path == "/call":
            with urllib.request.urlopen(downstream() + call_path(params), timeout=5) as r:
                self._json(200, {"downstream": json.loads(r.read())})
        elif path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(STREAM_CHUNKS):
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(STREAM_PAUSE_S)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/boom":
            self._json(500, {"error": "boom"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._json(201, {"created": True})
        self._done()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
