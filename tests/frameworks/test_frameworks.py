"""The ten Python frameworks behind the servers people run them with, traced with no
code change. Every cell (framework x server) runs every check; the table is printed and
written to docs/frameworks.md and results/frameworks.json."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support.checks import (call_links, duration_agreement, min_stream_seconds, parallel,
                                  server_spans, stream_span, uid)
from tests.support.procs import REPO, WORD_ROUTES, Agent, App, users_route

ASYNC_IN_FLIGHT = 20


@dataclass(frozen=True)
class Cell:
    framework: str
    server: str
    kind: str              # key of tests.support.procs.SERVERS
    # event-loop servers: what the agent promises for calls in flight on one thread,
    # "linked" (every call under its own request) or "unlinked" (a known limit, README
    # "Known limits": never a wrong parent, and the table says "known limit", not "pass")
    async_links: str | None = None

    @property
    def id(self) -> str:
        return self.kind

    @property
    def service(self) -> str:
        return f"fw-{self.kind}"


CELLS = [
    Cell("FastAPI", "uvicorn", "fastapi-uvicorn", async_links="linked"),
    Cell("Flask", "gunicorn sync", "flask-gunicorn-sync"),
    Cell("Flask", "gunicorn gthread", "flask-gunicorn-gthread"),
    Cell("Django", "gunicorn sync", "django-gunicorn-sync"),
    Cell("Django", "gunicorn gthread", "django-gunicorn-gthread"),
    Cell("Bottle", "gunicorn sync", "bottle-gunicorn-sync"),
    Cell("Bottle", "gunicorn gthread", "bottle-gunicorn-gthread"),
    Cell("Tornado", "tornado", "tornado-server", async_links="linked"),
    Cell("Pyramid", "gunicorn sync", "pyramid-gunicorn-sync"),
    Cell("Pyramid", "gunicorn gthread", "pyramid-gunicorn-gthread"),
    Cell("Sanic", "sanic", "sanic-server", async_links="unlinked"),
    Cell("Falcon", "gunicorn sync", "falcon-gunicorn-sync"),
    Cell("Falcon", "gunicorn gthread", "falcon-gunicorn-gthread"),
    Cell("CherryPy", "cherrypy (cheroot)", "cherrypy-server"),
    Cell("Hug", "gunicorn sync", "hug-gunicorn-sync"),
    Cell("Hug", "gunicorn gthread", "hug-gunicorn-gthread"),
]
CHECKS = ["span", "route", "route source", "post 201", "404", "boom=ERROR", "stream end", "duration",
          "call child", "100 keep-alive", "50 concurrent", "async links"]


@dataclass
class Results:
    rows: dict[str, dict[str, str]] = field(default_factory=dict)

    def set(self, cell: Cell, check: str, ok: bool, detail: str = "") -> None:
        verdict = "pass" if ok else "FAIL"
        if ok and check == "async links" and cell.async_links == "unlinked":
            verdict = "known limit"
        self.rows.setdefault(cell.id, {})[check] = verdict + (f" ({detail})" if detail else "")

    def markdown(self) -> str:
        head = "| framework | server | " + " | ".join(CHECKS) + " |"
        sep = "|---|---|" + "---|" * len(CHECKS)
        lines = [head, sep]
        for cell in CELLS:
            row = self.rows.get(cell.id, {})
            lines.append(f"| {cell.framework} | {cell.server} | " +
                         " | ".join(row.get(c, "—") for c in CHECKS) + " |")
        return "\n".join(lines)


RESULTS = Results()
# counters that grow in a healthy run; every other non-zero counter is shown with a failure
HEALTHY_COUNTERS = {"events_received", "exchanges", "export_calls", "processes_known", "spans_built",
                    "spans_exported", "spans_queued", "task_links"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("frameworks")
    apps: dict[str, App] = {}
    try:
        down = apps["downstream"] = App("stdlib-http-server", tmp, service="fw-downstream")
        for cell in CELLS:
            apps[cell.id] = App(cell.kind, tmp, service=cell.service, downstream=down.url)
        ports = [a for app in apps.values() for a in ("--port", str(app.port))]
        # counters logged every second, so a failed check can show what the agent counted by then
        agent = Agent([*ports, "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp,
                      env={"SPANPROBE_STATS_INTERVAL_S": "1"})
        yield apps, agent
        assert agent.stop() == 0, agent.stderr[-2000:]
        print("\nagent counters:", json.dumps(agent.final_counters(), sort_keys=True))
    finally:
        for app in apps.values():
            app.stop()
        write_table()


def write_table() -> None:
    table = RESULTS.markdown()
    print("\n" + table)
    results = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "frameworks.json").write_text(json.dumps(RESULTS.rows, indent=2, sort_keys=True))
    doc = REPO / "docs" / "frameworks.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(
        "# Frameworks, traced with no code change\n\n"
        "Written by `tests/frameworks/test_frameworks.py` at every run (latest run below).\n"
        "Each app has the same routes (`tests/apps/`); one agent traces them all, selected by port,\n"
        "exporting over OTLP/gRPC to a receiver on loopback.\n\n"
        "* **span/route**: one SERVER span for `/users/<n>`, named `GET {route}` with the route as the\n"
        "  framework writes it (Flask `/users/<int:user_id>`, FastAPI `/users/{user_id}`...), method, status.\n"
        "* **route source**: where the route of a path no heuristic can template\n"
        "  (`/teams/platform/members/ada`) came from, with no `routes` configured: the app's own\n"
        "  route table, read from its source (README: Routes).\n"
        "* **duration**: span vs the app's own measurement over 20 requests: the differences' lower\n"
        "  quartile (under 0.5 ms), median (under 1 ms) and largest, and how many spans started after\n"
        "  the app's clock (none).\n"
        "* **stream end**: `/stream` (4 chunks, 30 ms apart) ends at the last chunk.\n"
        "* **call child**: `/call` has a CLIENT child; the downstream SERVER span is that CLIENT's child.\n"
        "* **100 keep-alive / 50 concurrent**: that many requests give that many distinct spans.\n"
        f"* **async links**: event-loop servers, {ASYNC_IN_FLIGHT} `/call`s in flight on one thread:\n"
        "  correct/wrong/unlinked parents. Wrong must be 0; where linking is promised all must be\n"
        "  correct; \"known limit\" is a server the README lists as left unlinked.\n\n" + table + "\n")


def run(cell: Cell, check: str, fn) -> None:
    try:
        detail = fn()
        RESULTS.set(cell, check, True, detail or "")
    except AssertionError as exc:
        RESULTS.set(cell, check, False, str(exc).splitlines()[0][:80] if str(exc) else "")
        raise


def wait_explained(receiver, svc: str, paths: set[str]) -> list[dict]:
    """The service's SERVER spans for `paths`, one each within the receiver's wait; when some
    are missing, the failure says what became of each: arrived later (when, as what kind,
    for which service), or not at all in 20 s more. Twice a span went missing here with
    every loss counter at zero (bottle, gunicorn sync and gthread, 1 in ~1,500 requests):
    this is what tells a late span from a misattributed one from a lost one."""
    def ours(s):
        return s["resource"]["service.name"] == svc and s["kind"] == "SERVER" and s["attributes"].get("url.path") in paths
    try:
        return receiver.wait_for(ours, len(paths))
    except AssertionError as exc:
        t0 = time.monotonic()
        seen = {s["attributes"].get("url.path") for s in receiver.spans if ours(s)}
        missing = paths - seen
        fates = {}
        while missing - set(fates) and time.monotonic() - t0 < 20:
            for s in list(receiver.spans):
                path = s["attributes"].get("url.path")
                if path in missing and path not in fates:
                    fates[path] = (f"{s['kind']} {s['name']!r} of {s['resource'].get('service.name')!r}, "
                                   f"{s['attributes'].get('error.type', 'no error')}, seen {time.monotonic() - t0:.1f} s later")
            time.sleep(0.5)
        detail = "; ".join(f"{p}: {fates.get(p, 'never arrived in 20 s more')}" for p in sorted(missing))
        raise AssertionError(f"{str(exc).split(';')[0]}; missing: {detail}") from None


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
def test_framework(stack, receiver, cell):
    apps, agent = stack
    app = apps[cell.id]
    svc = cell.service
    failures = []

    def check(name, fn):
        try:
            run(cell, name, fn)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
            # what the agent counted by then: a missing span is either counted there or a bug
            counted = {k: v for k, v in agent.stats().items() if v and k not in HEALTHY_COUNTERS}
            failures.append(f"agent counters after {name!r}: {counted}")

    def span_and_route():
        n = uid()
        r = requests.get(f"{app.url}/users/{n}", timeout=10)
        assert r.status_code == 200, r.status_code
        (s,) = server_spans(receiver, f"/users/{n}", service=svc)
        a = s["attributes"]
        assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200, a
        want = users_route(cell.kind)
        assert s["name"] == f"GET {want}" and a["http.route"] == want, (s["name"], a["http.route"])
        RESULTS.set(cell, "span", True)
    check("route", span_and_route)

    def route_source():
        # a route no heuristic can template, and no `routes` configured: the app's own table
        path, want = WORD_ROUTES[cell.kind.split("-", 1)[0]]
        assert requests.get(f"{app.url}{path}", timeout=10).status_code == 200
        (s,) = server_spans(receiver, path, service=svc)
        assert s["attributes"]["http.route"] == want, (s["attributes"]["http.route"], want)
        return f"app's own table: `{want}`"
    check("route source", route_source)

    def post():
        r = requests.post(f"{app.url}/orders", json={"item": uid()}, timeout=10)
        assert r.status_code == 201, r.status_code
        (s,) = receiver.wait_for(lambda s: s["resource"]["service.name"] == svc and s["kind"] == "SERVER"
                                 and s["attributes"].get("http.request.method") == "POST")
        orders = "orders" if cell.kind.startswith("django") else "/orders"   # Django writes no leading /
        assert s["attributes"]["http.response.status_code"] == 201 and s["name"] == f"POST {orders}", s["name"]
    check("post 201", post)

    def missing():
        assert requests.get(f"{app.url}/missing", timeout=10).status_code == 404
        (s,) = server_spans(receiver, "/missing", service=svc)
        assert s["attributes"]["http.response.status_code"] == 404 and s["status"] == "UNSET"
    check("404", missing)

    def boom():
        assert requests.get(f"{app.url}/boom", timeout=10).status_code == 500
        (s,) = server_spans(receiver, "/boom", service=svc)
        assert s["status"] == "ERROR" and s["attributes"]["http.response.status_code"] == 500
    check("boom=ERROR", boom)

    def stream():
        seconds, _ = stream_span(app, receiver, svc)
        assert min_stream_seconds() <= seconds < 5, f"{seconds * 1000:.0f} ms"
        return f"{seconds * 1000:.0f} ms"
    check("stream end", stream)

    def duration():
        agreement = duration_agreement(app, receiver, svc)
        assert agreement.ok, str(agreement)
        return str(agreement)
    check("duration", duration)

    def call():
        correct, wrong, unlinked = call_links(app, receiver, svc, "fw-downstream", 1, delay_ms=0)
        assert correct == 1, (correct, wrong, unlinked)
    check("call child", call)

    def keepalive():
        base = uid()
        with requests.Session() as session:
            for i in range(100):
                assert session.get(f"{app.url}/users/{base + i}", timeout=10).status_code == 200
        paths = {f"/users/{base + i}" for i in range(100)}
        spans = wait_explained(receiver, svc, paths)
        assert len(spans) == 100 and {s["attributes"]["url.path"] for s in spans} == paths
    check("100 keep-alive", keepalive)

    def concurrent():
        base = uid()
        codes = parallel(50, lambda i: requests.get(f"{app.url}/users/{base + i}", timeout=60).status_code)
        assert all(c == 200 for c in codes), codes
        paths = {f"/users/{base + i}" for i in range(50)}
        spans = wait_explained(receiver, svc, paths)
        time.sleep(0.5)
        again = [s for s in receiver.spans if s["resource"]["service.name"] == svc
                 and s["attributes"].get("url.path") in paths]
        assert len(again) == 50 and len({s["span_id"] for s in again}) == 50, len(again)
        assert {s["attributes"]["url.path"] for s in spans} == paths
    check("50 concurrent", concurrent)

    if cell.async_links:
        def async_links():
            correct, wrong, unlinked = call_links(app, receiver, svc, "fw-downstream", ASYNC_IN_FLIGHT)
            detail = f"{correct}/{ASYNC_IN_FLIGHT} correct, {wrong} wrong, {unlinked} unlinked"
            print(f"{cell.framework}/{cell.server}: {detail}")
            # never a wrong parent; where the task cannot be told for certain, unlinked
            assert wrong == 0, detail
            assert correct + unlinked == ASYNC_IN_FLIGHT, detail
            if cell.async_links == "linked":
                assert correct == ASYNC_IN_FLIGHT, detail
            return detail
        check("async links", async_links)

    assert not failures, "; ".join(failures)
