"""Pyramid test app: gunicorn -w1 tests.apps.pyramid_app:app"""

import time
import warnings

import requests

# pyramid 2.1 still imports pkg_resources, which newer setuptools warn about on import
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from pyramid.config import Configurator  # noqa: E402
from pyramid.response import Response  # noqa: E402

from tests.apps.common import (  # noqa: E402
    STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream,
)


def user(request):
    user_id = int(request.matchdict["id"])
    return {"id": user_id, "name": f"user{user_id}"}


def orders(request):
    request.response.status_int = 201
    return {"created": True, "order": request.json_body}


def boom(request):
    raise RuntimeError("boom")


def server_error(exc, request):
    # Pyramid re-raises unhandled exceptions to the WSGI server (which would answer 500
    # without the app ever finishing); an exception view makes it the app's own 500
    return Response("Internal Server Error", status=500, content_type="text/plain")


def call(request):
    r = requests.get(downstream() + call_path(request.GET), timeout=5)
    request.response.status_int = r.status_code
    return {"downstream": r.json()}


def team_member(request):
    return {"team": request.matchdict["team"], "member": request.matchdict["member"]}


def stream(request):
    def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n".encode()
            time.sleep(STREAM_PAUSE_S)
    # app_iter without a Content-Length: the server sends it chunked
    return Response(app_iter=chunks(), content_type="text/plain", charset="utf-8")


with Configurator() as config:
    config.add_route("users", r"/users/{id:\d+}")
    config.add_route("team_member", "/teams/{team}/members/{member}")
    config.add_route("orders", "/orders", request_method="POST")
    config.add_route("boom", "/boom")
    config.add_route("call", "/call")
    config.add_route("stream", "/stream")
    config.add_view(user, route_name="users", renderer="json")
    config.add_view(team_member, route_name="team_member", renderer="json")
    config.add_view(orders, route_name="orders", renderer="json")
    config.add_view(boom, route_name="boom")
    config.add_view(call, route_name="call", renderer="json")
    config.add_view(server_error, context=Exception)
    config.add_view(stream, route_name="stream")
    wsgi = config.make_wsgi_app()

app = WsgiTiming(wsgi)
