"""Issue 17, item 5: route tables read from an application's own source with `ast` (never
imported or run), for the ten frameworks, in each one's own syntax; bounded and safe
against what a target's owner can put in its files."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from spanprobe import app_routes as ar
from spanprobe.routes import RouteMatcher

REPO = Path(__file__).resolve().parents[2]


def table(tmp_path: Path, files: dict[str, str], entries: list[str], env=None) -> ar.AppRoutes:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return ar.find(ar.Reader(tmp_path, [tmp_path]), entries)


# Routes no heuristic can template: words, not numbers, in the parameters
WORDS = "/teams/platform/members/ada"


@pytest.mark.parametrize("framework, source, want", [
    ("flask", """
        from flask import Flask
        app = Flask(__name__)
        @app.route("/teams/<team>/members/<member>")
        def member(team, member): ...
     """, "/teams/<team>/members/<member>"),
    ("fastapi", """
        from fastapi import FastAPI
        api = FastAPI()
        @api.get("/teams/{team}/members/{member}")
        async def member(team: str, member: str): ...
     """, "/teams/{team}/members/{member}"),
    ("bottle", """
        import bottle
        web = bottle.Bottle()
        @web.get("/teams/<team>/members/<member>")
        def member(team, member): ...
     """, "/teams/<team>/members/<member>"),
    ("sanic", """
        from sanic import Sanic
        app = Sanic("x")
        @app.get("/teams/<team:str>/members/<member:str>")
        async def member(request, team, member): ...
     """, "/teams/<team:str>/members/<member:str>"),
    ("hug", """
        import hug
        @hug.get("/teams/{team}/members/{member}")
        def member(team, member): ...
     """, "/teams/{team}/members/{member}"),
    ("falcon", """
        import falcon
        app = falcon.App()
        app.add_route("/teams/{team}/members/{member}", Members())
     """, "/teams/{team}/members/{member}"),
    ("pyramid", """
        from pyramid.config import Configurator
        with Configurator() as config:
            config.add_route("member", "/teams/{team}/members/{member}")
     """, "/teams/{team}/members/{member}"),
    ("tornado", r"""
        import tornado.web
        def make_app():
            return tornado.web.Application([(r"/teams/([^/]+)/members/(?P<member>[^/]+)", Member)])
     """, r"/teams/([^/]+)/members/(?P<member>[^/]+)"),
    ("django", """
        from django.urls import path
        urlpatterns = [path("teams/<slug:team>/members/<str:member>", member)]
     """, "teams/<slug:team>/members/<str:member>"),
    ("cherrypy", """
        import cherrypy
        class Teams:
            @cherrypy.expose
            def members(self, team, member): ...
        cherrypy.tree.mount(Teams(), "/teams")
     """, "/teams/members/{team}/{member}"),
])
def test_every_framework_names_a_route_no_heuristic_could(tmp_path, framework, source, want):
    t = table(tmp_path, {"app.py": source}, ["app"])
    assert t.framework == framework
    path = "/teams/members/platform/ada" if framework == "cherrypy" else WORDS
    assert t.route(path) == want
    assert RouteMatcher([]).route(path)[0] == path       # the heuristic keeps the words


def test_blueprint_and_router_prefixes_are_joined(tmp_path):
    t = table(tmp_path, {
        "app.py": """
            from flask import Flask
            from shop.api import bp
            app = Flask(__name__)
            app.register_blueprint(bp, url_prefix="/v1")
        """,
        "shop/__init__.py": "",
        "shop/api.py": """
            from flask import Blueprint
            bp = Blueprint("api", __name__, url_prefix="/shop")
            @bp.get("/items/<slug>")
            def item(slug): ...
        """}, ["app"])
    assert t.route("/v1/shop/items/blue-shirt") == "/v1/shop/items/<slug>"

    t = table(tmp_path / "f", {
        "main.py": """
            from fastapi import FastAPI, APIRouter
            router = APIRouter(prefix="/shop")
            @router.get("/{item}/items/{colour}")
            def f(item, colour): ...
            app = FastAPI()
            app.include_router(router, prefix="/api")
        """}, ["main"])
    assert t.route("/api/shop/12/items/blue-shirt") == "/api/shop/{item}/items/{colour}"

    t = table(tmp_path / "s", {
        "main.py": """
            from starlette.applications import Starlette
            from starlette.routing import Mount, Route
            app = Starlette(routes=[
                Route("/health", health),
                Mount("/api", routes=[
                    Route("/teams/{team}", team),
                    Mount("/v2", routes=[Route("/teams/{team}/members/{member}", member)]),
                ]),
                Mount("/static", app=StaticFiles(directory="static")),
            ])
        """}, ["main"])
    assert t.route("/api/teams/platform") == "/api/teams/{team}"
    assert t.route("/api/v2/teams/platform/members/ada") == "/api/v2/teams/{team}/members/{member}"
    assert t.route("/health") == "/health"
    assert t.route("/teams/platform") is None          # a mounted route is not also at the root


def test_django_includes_are_followed_from_the_settings_module(tmp_path):
    files = {
        "site/__init__.py": "", "site/settings.py": 'ROOT_URLCONF = "site.urls"\n',
        "site/urls.py": """
            from django.urls import include, path
            urlpatterns = [path("shop/", include("shop.urls"))]
        """,
        "shop/__init__.py": "",
        "shop/urls.py": """
            from django.urls import path, re_path
            urlpatterns = [path("items/<slug:item>", item), re_path(r"^tags/(?P<tag>[a-z]+)/$", tag)]
        """}
    t = table(tmp_path, files, ar.entry_points(["python", "-m", "gunicorn", "site.wsgi"],
                                               {"DJANGO_SETTINGS_MODULE": "site.settings"}))
    assert t.route("/shop/items/blue-shirt") == "shop/items/<slug:item>"
    assert t.route("/shop/tags/summer/") == "shop/^tags/(?P<tag>[a-z]+)/$"


def test_literal_segments_win_and_int_converters_are_checked(tmp_path):
    t = table(tmp_path, {"app.py": """
        from flask import Flask
        app = Flask(__name__)
        @app.get("/users/<int:uid>")
        def a(uid): ...
        @app.get("/users/me")
        def b(): ...
        @app.get("/files/<path:rest>")
        def c(rest): ...
    """}, ["app"])
    assert t.route("/users/me") == "/users/me"
    assert t.route("/users/42") == "/users/<int:uid>"
    assert t.route("/users/ada") is None                     # Flask would 404: no route
    assert t.route("/files/a/b/c.txt") == "/files/<path:rest>"


def test_an_apps_regex_is_never_compiled(tmp_path, monkeypatch):
    # a catastrophic pattern in the target's source must cost the agent nothing
    evil = r"/x/((a+)+$)"
    t = table(tmp_path, {"app.py": f"""
        import tornado.web
        tornado.web.Application([(r"{evil}", H), (r"/y/(\\d+)/(.*)", H)])
    """}, ["app"])
    t0 = time.process_time()
    assert t.route("/x/" + "a" * 40 + "!") == evil           # any text: one segment
    assert t.route("/y/7/any/thing") == r"/y/(\d+)/(.*)"
    assert time.process_time() - t0 < 0.1


def test_entry_points_of_the_usual_command_lines():
    assert ar.entry_points(["python3", "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "pkg.app:create_app()"],
                           {}) == ["pkg.app"]
    assert ar.entry_points(["/venv/bin/python", "/venv/bin/uvicorn", "--port", "1", "main:app"], {}) == ["main"]
    assert ar.entry_points(["python", "-m", "shop.server", "8000"], {}) == ["shop.server"]
    assert ar.entry_points(["python3", "app.py"], {}) == ["app.py"]
    assert ar.entry_points(["python3", "-c", "print(1)"], {}) == []
    assert ar.entry_points(["python3", "manage.py", "runserver"], {"DJANGO_SETTINGS_MODULE": "site.settings"}) == \
        ["manage.py", "django-settings:site.settings"]


def test_the_ten_test_apps_as_the_frameworks_tier_runs_them():
    want = {"flask": "/users/<int:user_id>", "fastapi": "/users/{user_id}", "django": "users/<int:user_id>",
            "bottle": "/users/<user_id:int>", "pyramid": r"/users/{id:\d+}", "falcon": "/users/{user_id:int}",
            "hug": "/users/{user_id}", "tornado": r"/users/(\d+)", "sanic": "/users/<user_id:int>",
            "cherrypy": "/users/{user_id}"}
    for fw, route in want.items():
        t = ar.find(ar.Reader(REPO, [REPO]), [f"tests.apps.{fw}_app"])
        assert (t.framework, t.route("/users/42")) == (fw, route), fw


# ---- bounds and what is not read

def test_bounded_files_and_sizes_are_counted(tmp_path):
    files = {"app.py": "from flask import Flask\n" + "".join(f"import m{i}\n" for i in range(ar.MAX_FILES + 5))}
    files.update({f"m{i}.py": "x = 1\n" for i in range(ar.MAX_FILES + 5)})
    t = table(tmp_path, files, ["app"])
    assert t.files == ar.MAX_FILES and t.unreadable >= 5
    big = table(tmp_path / "b", {"app.py": "x = 1\n" * (ar.MAX_FILE_BYTES // 6 + 10)}, ["app"])
    assert big.unreadable == 1 and big.templates == []


def test_a_file_that_does_not_parse_is_counted_and_gives_no_routes(tmp_path):
    t = table(tmp_path, {"app.py": "@app.get('/x'\ndef broken(:\n"}, ["app"])
    assert t.unreadable == 1 and t.route("/x") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a file of another owner: run as root")
def test_a_file_its_owner_could_not_read_is_not_read(tmp_path):
    (tmp_path / "app.py").write_text("from flask import Flask\n@app.get('/secret/<x>')\ndef f(x): ...\n")
    os.chmod(tmp_path / "app.py", 0o600)          # root's, not readable by uid 65534
    t = ar.find(ar.Reader(tmp_path, [tmp_path], uid=65534), ["app"])
    assert t.unreadable == 1 and t.route("/secret/a") is None
    t = ar.find(ar.Reader(tmp_path, [tmp_path], uid=0), ["app"])
    assert t.route("/secret/a") == "/secret/<x>"


# ---- in the span builder: configured > the app's own table > heuristic

def test_precedence_in_spans(tmp_path):
    from spanprobe import events as ev
    from spanprobe.clock import MonotonicToWall
    from spanprobe.discovery import ProcessRegistry
    from spanprobe.httpparse import Message
    from spanprobe.privacy import Redactor
    from spanprobe.procfs import SysRoot
    from spanprobe.spans import SpanBuilder
    from spanprobe.streams import Connection, Exchange

    app_dir = tmp_path / "srv"
    app_dir.mkdir()
    (app_dir / "shop.py").write_text(textwrap.dedent("""
        from flask import Flask
        app = Flask(__name__)
        @app.get("/teams/<team>/members/<member>")
        def m(team, member): ...
        @app.get("/orders/<oid>")
        def o(oid): ...
    """))
    proc = tmp_path / "proc" / "77"
    proc.mkdir(parents=True)
    argv = ["/usr/bin/python3", "-m", "gunicorn", "shop:app"]
    (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "comm").write_text("gunicorn\n")
    (proc / "environ").write_bytes(b"")
    (proc / "stat").write_text("77 (gunicorn) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0\n")
    os.symlink("/usr/bin/python3.11", proc / "exe")
    os.symlink(app_dir, proc / "cwd")
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("0f3c2d1e-aaaa-bbbb-cccc-123456789abc\n")
    redactor = Redactor([], [])
    b = SpanBuilder(ProcessRegistry(SysRoot(tmp_path), redactor), RouteMatcher(["/orders/{id}"]), redactor,
                    MonotonicToWall(), "host", {})

    def span(path, role=ev.ROLE_SERVER):
        req = Message(True, 10, 1, end_ts=11, method="GET", target=path, version="1.1", complete=True)
        resp = Message(False, 20, 1, end_ts=30, status=200, complete=True)
        conn = Connection(77, 5, 1, role, 0, ("127.0.0.1", 5000), ("127.0.0.1", 8000))
        return b.build(Exchange(conn, req, 1, 2, None, False, response=resp))

    assert span(WORDS).attributes["http.route"] == "/teams/<team>/members/<member>"
    assert span(WORDS).name == "GET /teams/<team>/members/<member>"
    assert span("/orders/abc").attributes["http.route"] == "/orders/{id}"       # configured wins
    assert span("/other/12").attributes["http.route"] == "/other/{id}"          # heuristic for the rest
    assert span(WORDS, ev.ROLE_CLIENT).attributes["url.template"] == WORDS      # client side untouched
    assert b.counts["app_route_tables"] == 1 and b.counts["app_route_files_unreadable"] == 0


def test_a_module_name_that_is_not_identifiers_names_no_file(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "outside.py").write_text("x = 1\n")
    reader = ar.Reader(tmp_path / "proj", [tmp_path / "proj"])
    for name in ("/etc/passwd", "..outside", "a/../../outside", "", "x.", "1st"):
        assert reader.module_file(name) is None, name
    (tmp_path / "proj" / "ok.py").write_text("")
    assert reader.module_file("ok") == tmp_path / "proj" / "ok.py"


def test_routes_are_kept_per_path_up_to_a_bound(monkeypatch):
    """A path's route is looked up once (the same answer after), and no more than
    ROUTE_CACHE_LIMIT paths are kept: a client sending endless paths can't grow it."""
    from spanprobe.routes import compile_template
    monkeypatch.setattr(ar, "ROUTE_CACHE_LIMIT", 3)
    t = ar.AppRoutes([compile_template("/teams/{team}/members/{member}")])
    assert t.route(WORDS) == "/teams/{team}/members/{member}"
    assert t.route(WORDS) == "/teams/{team}/members/{member}"
    assert t.route("/nothing/here") is None
    assert t.route("/nothing/here") is None
    for i in range(10):
        assert t.route(f"/teams/t{i}/members/m") == "/teams/{team}/members/{member}"
    assert len(t._routes) == 3
