"""hug test app (own venv: hug 2.6.1 on falcon 2.0.0): gunicorn -w1 tests.apps.hug_app:app"""

import json
import sys
import time
import traceback

import hug
import requests

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream


@hug.get("/teams/{team}/members/{member}")
def team_member(team, member):
    return {"team": team, "member": member}


@hug.get("/users/{user_id}")
def user(user_id):
    # hug.types.number would answer 400 for /users/abc; the other apps answer 404
    if not user_id.isdigit():
        raise hug.HTTPNotFound()
    return {"id": int(user_id), "name": f"user{user_id}"}


@hug.post("/orders", parse_body=False)
def orders(request, response):
    # JSON whatever the Content-Type (like Flask's get_json(force=True))
    body = json.loads(request.bounded_stream.read() or b"null")
    response.status = hug.HTTP_201
    return {"created": True, "order": body}


@hug.get("/boom")
def boom():
    raise RuntimeError("boom")


@hug.exception(Exception, exclude=(hug.HTTPError,))
def server_error(exception, response):
    # falcon 2.0 (under hug) has no default handler for unhandled exceptions: they leave
    # the WSGI app and the server answers 500 without the app finishing; this makes the
    # 500 the app's own answer
    traceback.print_exception(exception, file=sys.stderr)
    response.status = hug.HTTP_500
    return {"error": "boom"}


@hug.get("/call")
def call(request, response):
    r = requests.get(downstream() + call_path(request.params), timeout=5)
    response.status = getattr(hug, f"HTTP_{r.status_code}")
    return {"downstream": r.json()}


class _Chunks:
    """A generator made file-like: hug hands an object with read() to falcon as
    response.stream unbuffered (no Content-Length, one write per chunk), while a bare
    generator would go through the output format and be buffered."""

    def __init__(self, gen):
        self.gen = gen

    def read(self, size=-1):
        return next(self.gen, b"")

    def close(self):
        self.gen.close()


@hug.get("/stream", output=hug.output_format.text)
def stream():
    def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n".encode()
            time.sleep(STREAM_PAUSE_S)
    return _Chunks(chunks())


app = WsgiTiming(__hug_wsgi__)  # noqa: F821  (hug puts it in the module's globals)
