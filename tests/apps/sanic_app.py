"""Sanic test app with its own server (one process, no workers, no reloader):
python -m tests.apps.sanic_app PORT"""

import asyncio
import sys
import time

import httpx
from sanic import Sanic
from sanic.response import json

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, call_path, downstream, record

app = Sanic("spanprobe_test_app", configure_logging=False)  # no INFO chatter
app.config.MOTD = False
app.config.ACCESS_LOG = False


@app.on_request
async def start_clock(request):
    request.ctx.start = time.time_ns()


@app.on_response
async def stop_clock(request, response):
    # a streamed response reaches here when request.respond() sends the headers; it is
    # recorded by the handler after its last send instead
    if not getattr(request.ctx, "streaming", False):
        _record(request)


def _record(request):
    start = getattr(request.ctx, "start", None) or time.time_ns()
    record(request.headers.get("X-Request-Id"), start, time.time_ns())


@app.get("/users/<user_id:int>")
async def user(request, user_id):
    return json({"id": user_id, "name": f"user{user_id}"})


@app.get("/teams/<team>/members/<member>")
async def team_member(request, team, member):
    return json({"team": team, "member": member})


@app.post("/orders")
async def orders(request):
    return json({"created": True, "order": request.load_json()}, status=201)


@app.get("/boom")
async def boom(request):
    raise RuntimeError("boom")


@app.get("/call")
async def call(request):
    args = {k: request.args.get(k) for k in request.args}
    async with httpx.AsyncClient() as client:
        r = await client.get(downstream() + call_path(args), timeout=5)
    return json({"downstream": r.json()}, status=r.status_code)


@app.get("/stream")
async def stream(request):
    request.ctx.streaming = True
    response = await request.respond(content_type="text/plain")
    for i in range(STREAM_CHUNKS):
        await response.send(f"chunk {i}\n")
        await asyncio.sleep(STREAM_PAUSE_S)
    await response.eof()
    _record(request)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False,
            motd=False, auto_reload=False, debug=False)
