"""CherryPy test app, own server (cheroot, thread pool): python -m tests.apps.cherrypy_app PORT

The CherryPy application is wrapped in common.WsgiTiming and grafted onto the tree, so
the app's clock is the same as for the other WSGI apps."""

import json
import sys
import time

import cherrypy
import requests

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream


class Root:
    @cherrypy.expose
    @cherrypy.tools.json_out()
    def members(self, team, member):
        # the default dispatcher maps /members/<team>/<member> to positional arguments
        return {"team": team, "member": member}

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def users(self, user_id):
        if not user_id.isdigit():
            raise cherrypy.NotFound()
        return {"id": int(user_id), "name": f"user{user_id}"}

    @cherrypy.expose
    @cherrypy.tools.allow(methods=["POST"])
    @cherrypy.tools.json_out()
    @cherrypy.config(**{"request.process_request_body": False})
    def orders(self):
        # read the raw body: JSON whatever the Content-Type (no form parsing)
        body = json.loads(cherrypy.request.rfile.read() or b"null")
        cherrypy.response.status = 201
        return {"created": True, "order": body}

    @cherrypy.expose
    def boom(self):
        raise RuntimeError("boom")

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def call(self, **params):
        r = requests.get(downstream() + call_path(params), timeout=5)
        cherrypy.response.status = r.status_code
        return {"downstream": r.json()}

    @cherrypy.expose
    @cherrypy.config(**{"response.stream": True})
    def stream(self):
        cherrypy.response.headers["Content-Type"] = "text/plain"

        def chunks():
            for i in range(STREAM_CHUNKS):
                yield f"chunk {i}\n".encode()
                time.sleep(STREAM_PAUSE_S)
        return chunks()


def main(port):
    cherrypy.config.update({
        "environment": "production",  # no autoreload, no checker, no tracebacks in pages
        "engine.autoreload.on": False,
        "log.screen": False,
        "server.socket_host": "127.0.0.1",
        "server.socket_port": port,
        "server.thread_pool": 10,
    })
    cp_app = cherrypy.Application(Root(), script_name="")
    cherrypy.tree.graft(WsgiTiming(cp_app), "")
    cherrypy.engine.signals.subscribe()  # SIGTERM / SIGHUP stop the engine
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == "__main__":
    main(int(sys.argv[1]))
