"""Status-code test app: python -m tests.apps.status_app PORT.

GET /status/<code>[/<anything>] answers <code> with a body naming it, on keep-alive
HTTP/1.1 connections: a span whose status differs from the code in its path was paired
with another request's response (issue 15)."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        parts = self.path.split("?", 1)[0].split("/")
        code = int(parts[2]) if len(parts) > 2 and parts[1] == "status" and parts[2].isdigit() else 0
        if not 200 <= code <= 599 or code in (204, 304):   # bodyless codes are not offered
            code = 400
        body = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a client past it waits for its SYN to be sent
    # again (a second later), so ten connections opened at once did not all open at once
    request_queue_size = 64


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
