"""Bottle test app: gunicorn -w1 tests.apps.bottle_app:app"""

import json
import time

import bottle
import requests
from bottle import request, response

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream

web = bottle.Bottle()  # catchall: an unhandled exception becomes Bottle's own 500 page


@web.get("/users/<user_id:int>")
def user(user_id):
    return {"id": user_id, "name": f"user{user_id}"}


@web.get("/teams/<team>/members/<member>")
def team_member(team, member):
    return {"team": team, "member": member}


@web.post("/orders")
def orders():
    body = json.loads(request.body.read() or b"null")
    response.status = 201
    return {"created": True, "order": body}


@web.get("/boom")
def boom():
    raise RuntimeError("boom")


@web.get("/call")
def call():
    r = requests.get(downstream() + call_path(request.query), timeout=5)
    response.status = r.status_code
    return {"downstream": r.json()}


@web.get("/stream")
def stream():
    response.content_type = "text/plain"

    def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n"
            time.sleep(STREAM_PAUSE_S)
    return chunks()


app = WsgiTiming(web)
