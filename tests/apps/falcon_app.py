"""Falcon test app: gunicorn -w1 tests.apps.falcon_app:app"""

import json
import time

import falcon
import requests

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream


class Users:
    def on_get(self, req, resp, user_id):
        resp.media = {"id": user_id, "name": f"user{user_id}"}


class TeamMember:
    def on_get(self, req, resp, team, member):
        resp.media = {"team": team, "member": member}


class Orders:
    def on_post(self, req, resp):
        # JSON whatever the Content-Type (like Flask's get_json(force=True))
        resp.media = {"created": True, "order": json.loads(req.bounded_stream.read() or b"null")}
        resp.status = falcon.HTTP_201


class Boom:
    def on_get(self, req, resp):
        raise RuntimeError("boom")


class Call:
    def on_get(self, req, resp):
        r = requests.get(downstream() + call_path(req.params), timeout=5)
        resp.media = {"downstream": r.json()}
        resp.status = r.status_code


class Stream:
    def on_get(self, req, resp):
        def chunks():
            for i in range(STREAM_CHUNKS):
                yield f"chunk {i}\n".encode()
                time.sleep(STREAM_PAUSE_S)
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = chunks()  # no content_length: the server sends it chunked


web = falcon.App()
web.add_route("/users/{user_id:int}", Users())
web.add_route("/teams/{team}/members/{member}", TeamMember())
web.add_route("/orders", Orders())
web.add_route("/boom", Boom())
web.add_route("/call", Call())
web.add_route("/stream", Stream())

app = WsgiTiming(web)
