"""Tornado test app with its own HTTP server: python -m tests.apps.tornado_app PORT"""

import asyncio
import json
import sys
import time

import tornado.web
from tornado.httpclient import AsyncHTTPClient

# Tornado's client runs at most 10 fetches at once by default and starts queued ones from
# another fetch's completion, i.e. from another request's task: room for every test call.
AsyncHTTPClient.configure(None, max_clients=100)

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, call_path, downstream, record


class Timed(tornado.web.RequestHandler):
    """The app's clock is Tornado's own (what request_time() reports): from the moment
    the request was parsed until on_finish() (after the last byte was handed to the
    connection)."""

    def on_finish(self):
        # request_time() is what Tornado logs: parse until connection.finish()
        start = int(self.request._start_time * 1e9)
        record(self.request.headers.get("X-Request-Id"), start,
               start + int(self.request.request_time() * 1e9))


class Users(Timed):
    async def get(self, user_id):
        self.write({"id": int(user_id), "name": f"user{user_id}"})


class TeamMember(Timed):
    async def get(self, team, member):
        self.write({"team": team, "member": member})


class Orders(Timed):
    async def post(self):
        body = json.loads(self.request.body or b"null")
        self.set_status(201)
        self.write({"created": True, "order": body})


class Boom(Timed):
    async def get(self):
        raise RuntimeError("boom")


class Call(Timed):
    async def get(self):
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        r = await AsyncHTTPClient().fetch(downstream() + call_path(args), request_timeout=5,
                                          raise_error=False)
        self.set_status(r.code)
        self.write({"downstream": json.loads(r.body)})


class Stream(Timed):
    async def get(self):
        self.set_header("Content-Type", "text/plain")
        for i in range(STREAM_CHUNKS):
            self.write(f"chunk {i}\n")
            await self.flush()  # the first flush sends the headers without a length: chunked
            await asyncio.sleep(STREAM_PAUSE_S)


class NotFound(Timed):
    def prepare(self):
        raise tornado.web.HTTPError(404)


def make_app():
    return tornado.web.Application([
        (r"/users/(\d+)", Users),
        (r"/teams/([^/]+)/members/([^/]+)", TeamMember),
        (r"/orders", Orders),
        (r"/boom", Boom),
        (r"/call", Call),
        (r"/stream", Stream),
    ], default_handler_class=NotFound)


async def main(port):
    make_app().listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
