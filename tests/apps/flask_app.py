"""Flask test app: gunicorn -w1 tests.apps.flask_app:app"""

import time

import requests
from flask import Flask, Response, jsonify, request

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream

flask = Flask(__name__)


@flask.get("/users/<int:user_id>")
def user(user_id):
    return jsonify(id=user_id, name=f"user{user_id}")


@flask.post("/orders")
def orders():
    body = request.get_json(force=True)
    return jsonify(created=True, order=body), 201, {"X-Order-Status": "accepted"}


@flask.get("/customers/<cid>/orders/<int:oid>")
def customer_order(cid, oid):
    return jsonify(customer=cid, order=oid)


@flask.get("/teams/<team>/members/<member>")
def team_member(team, member):
    return jsonify(team=team, member=member)


@flask.get("/boom")
def boom():
    raise RuntimeError("boom")


@flask.get("/call")
def call():
    r = requests.get(downstream() + call_path(request.args), timeout=5)
    return jsonify(downstream=r.json()), r.status_code


@flask.get("/stream")
def stream():
    def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n"
            time.sleep(STREAM_PAUSE_S)
    return Response(chunks(), mimetype="text/plain")


app = WsgiTiming(flask.wsgi_app)
