"""What every test app shares: the timing record and the downstream call.

Each app records, per request, how long it itself took, so tests can compare a span's
duration with the app's own measurement: one line "<x-request-id> <start_ns> <end_ns>"
in $APP_TIMING_FILE (wall clock).
"""

import os
import threading
import time

_lock = threading.Lock()
STREAM_CHUNKS = 4
STREAM_PAUSE_S = 0.03


def record(request_id: str | None, start_ns: int, end_ns: int) -> None:
    path = os.environ.get("APP_TIMING_FILE")
    if not path or not request_id:
        return
    with _lock, open(path, "a") as f:
        f.write(f"{request_id} {start_ns} {end_ns}\n")


def call_path(args) -> str:
    """What /call asks downstream for: /users/<n>[?delay=ms], from /call?n=..&delay=.."""
    n = args.get("n") or "7"
    delay = args.get("delay")
    return f"/users/{int(n)}" + (f"?delay={int(delay)}" if delay else "")


def downstream() -> str:
    return os.environ.get("DOWNSTREAM_URL", "http://127.0.0.1:9")


class WsgiTiming:
    """Times a WSGI app from the call until the server closes the response iterable
    (after the last byte was written)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        start = time.time_ns()
        rid = environ.get("HTTP_X_REQUEST_ID")
        body = self.app(environ, start_response)
        return _Closing(body, lambda: record(rid, start, time.time_ns()))


class _Closing:
    def __init__(self, body, on_close):
        self.body = body
        self.on_close = on_close

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.on_close()


class AsgiTiming:
    """Times an ASGI app from the scope until the last body message was sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.time_ns()
        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode() or None

        async def timed_send(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                record(rid, start, time.time_ns())

        return await self.app(scope, receive, timed_send)
