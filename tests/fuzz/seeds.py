"""Write the fuzz corpus seeds (tests/fuzz/corpus/<target>/<name>) from readable traffic.

    python tests/fuzz/seeds.py

Seeds are valid requests and responses (plain, chunked, pipelined, 1xx, HEAD), and the
hostile inputs that once broke the agent. The files are committed; run this again after
changing a seed or an input layout in targets.py (test_fuzz.py checks they agree).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from tests.fuzz.targets import SYNTAXES, Ops, encode_http, encode_ops  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"

GET = b"GET /users/42?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
POST = b'POST /orders HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{"order": {"id": 123}}'
CHUNKED_POST = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n5\r\ndefgh\r\n0\r\nX-Sum: 1\r\n\r\n")
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 12}\n"
CHUNKED_OK = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until close"

HTTP = {
    "get": encode_http(GET, requests=True),
    "post-json-kept": encode_http(POST, requests=True, keep_body=True, seed=7),
    "chunked-post": encode_http(CHUNKED_POST, requests=True, seed=3),
    "pipelined": encode_http(GET + POST + CHUNKED_POST + GET, requests=True, seed=11),
    "ok": encode_http(OK, requests=False, keep_body=True),
    "chunked-ok": encode_http(CHUNKED_OK, requests=False, seed=5),
    "interim-then-204": encode_http(INTERIM + OK, requests=False, seed=2),
    "until-close": encode_http(UNTIL_CLOSE, requests=False, seed=9),
    "big-header": encode_http(b"GET / HTTP/1.1\r\nCookie: " + b"c" * 3000 + b"\r\n\r\n" + GET,
                              requests=True, seed=1),
    # the hostile ones (issue 14)
    "negative-content-length": encode_http(
        b"POST /orders HTTP/1.1\r\nContent-Length: -100000\r\n\r\nab" + GET, requests=True),
    "negative-chunk-size": encode_http(
        b"POST /o HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n0\r\n\r\n",
        requests=True),
    "superscript-status": encode_http(b"HTTP/1.1 \xb9\xb2\xb3 OK\r\n\r\n" + OK, requests=False),
    "huge-chunk-size": encode_http(CHUNKED_OK.replace(b"5\r\n", b"10000000000000000\r\n", 1),
                                   requests=False),
    "conflicting-lengths": encode_http(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", requests=False),
}

DOC = {"order": {"id": 1234, "price": 12.5, "tags": ["a", "b"], "ok": True, "n": None},
       "a": [{"b": "x\u00eb\\\"y"}], "e": -1.5e-3}
JSON = {
    "object": json.dumps(DOC).encode(),
    "object-cut": json.dumps(DOC).encode()[:40],
    "array": b'[1, -0.5, 2e10, "s", true, false, null, {}, []]',
    "escapes": b'{"a": "\\u00e9\\ud83d\\ude00\\n\\t", "b": "\xc3\xab"}',
    "deep": b"[" * 100 + b"]" * 100,
    "deep-open": b'{"a":' * 200,
    "number-cut": b'{"a": 12',
}

ASSEMBLER = {
    "server-keepalive": encode_ops([
        (Ops.OPEN, 0, 1, 1), (Ops.READ, 0, 1, GET, 0), (Ops.WRITE, 0, 1, OK, 0),
        (Ops.READ, 0, 1, POST, 0), (Ops.WRITE, 0, 1, CHUNKED_OK, 0), (Ops.DRAIN,), (Ops.CLOSE, 0, 1),
        (Ops.DRAIN,)], keep_body=True),
    "client-with-gaps": encode_ops([
        (Ops.OPEN, 2, 1, 2), (Ops.PORTS, 2, 1), (Ops.WRITE, 2, 1, POST, 3000),
        (Ops.WRITE_RESULT, 2, 1, 100, 40), (Ops.READ, 2, 1, OK[:20], 500), (Ops.EXIT, 2), (Ops.DRAIN,)]),
    "server-and-client-one-process": encode_ops([
        (Ops.OPEN, 0, 1, 1), (Ops.OPEN, 1, 3, 2), (Ops.READ, 0, 1, GET, 0),
        (Ops.WRITE, 1, 3, GET, 0), (Ops.READ, 1, 3, OK, 0), (Ops.WRITE, 0, 1, OK, 0), (Ops.DRAIN,)]),
    "adopted-hostile": encode_ops([
        (Ops.ADOPT, 3, 0, 1), (Ops.READ, 3, 0, b"POST /o HTTP/1.1\r\nContent-Length: -100000\r\n\r\nab", 0),
        (Ops.READ, 3, 0, b"POST /o HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n", 0),
        (Ops.WRITE, 3, 0, b"HTTP/1.1 -1 X\r\n\r\n", 0), (Ops.CLOSE, 3, 0), (Ops.DRAIN,)]),
}

def _source(syntax: str, text: str) -> bytes:
    return bytes([SYNTAXES.index(syntax)]) + text.encode()


APP_ROUTES = {
    "flask-blueprint": _source("angle", """/teams/<team>/members/<int:member>
from flask import Flask, Blueprint
bp = Blueprint("api", __name__, url_prefix="/shop")
@bp.get("/items/<slug>")
def item(slug): ...
app = Flask(__name__)
app.register_blueprint(bp, url_prefix="/v1")
app.add_url_rule("/users/<uuid:user_id>", view_func=user)
"""),
    "fastapi-router": _source("brace", """/teams/{team}/members/{member:int}
from fastapi import FastAPI, APIRouter
router = APIRouter(prefix="/shop")
@router.get("/{item}/items/{colour}")
async def f(item, colour): ...
app = FastAPI()
app.include_router(router, prefix="/api")
"""),
    "starlette-mount": _source("brace", """/static/{path:path}
from starlette.routing import Mount, Route
routes = [Route("/health", h), Mount("/api", routes=[Route("/t/{team}", t),
          Mount("/v2", routes=[Route("/m/{member}", m)])])]
"""),
    "django-urls": _source("regex", r"""^teams/(?P<team>[\w-]+)/members/([0-9]+)$
from django.urls import include, path, re_path
urlpatterns = [path("teams/<slug:team>/", include("shop.urls")), re_path(r"^x/(\d+)$", v),
               path("api/", include("/etc/passwd"))]
"""),
    "tornado-cherrypy-falcon-pyramid": _source("regex", r"""/teams/([^/]+)/members/(?P<m>[^/]+)
import tornado.web, cherrypy, falcon
app = tornado.web.Application([(r"/teams/([^/]+)/members/(?P<m>[^/]+)", M), (r"/(.*)", S)])
class Teams:
    @cherrypy.expose
    def members(self, team, member): ...
cherrypy.tree.mount(Teams(), "/teams")
falcon.App().add_route("/u/{user_id:int}", U())
config.add_route("member", "/teams/{team}/members/{member:\w+}")
"""),
    "deep-nesting": _source("brace", "/" + "{a}/" * 50 + "\nx = " + "(" * 150 + ")" * 150),
}

TARGET_RESOURCE = {
    "both": b"service.name=catalogue,service.namespace=shop,k=%20v%2C\0checkout",
    "escapes-and-junk": b"a=b,,=c,d,e=%zz,f=\xff\xfe,service.name=",
    "many": b",".join(b"k%d=v%d" % (i, i) for i in range(40)),
}

SEEDS = {"http": HTTP, "jsonprefix": JSON, "assembler": ASSEMBLER,
         "app_routes": APP_ROUTES, "target_resource": TARGET_RESOURCE}


def main() -> None:
    for target, seeds in SEEDS.items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    main()
