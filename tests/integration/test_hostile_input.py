"""Hostile requests and responses on real sockets (issue 14): the agent traces a threaded
stdlib server, an asyncio one (FastAPI on uvicorn) and a client process, while raw
sockets send them broken framing, broken numbers, NUL bytes, binary noise and oversized
heads. After each, the agent must be alive, idle, counting what it refused, and still
tracing normal requests correctly; one agent that took all of them must then stop on
SIGTERM, exit 0, within 5 s.

One agent serves the per-input tests; an input that kills or wedges it fails its own
test, and the next test gets a fresh agent (each failure names its input)."""

from __future__ import annotations

import signal
import sys
import time

import pytest
import requests

from tests.support.checks import uid
from tests.support.hostile import (HOSTILE_REQUESTS, HOSTILE_RESPONSES, Hostile, RawResponder,
                                   TracedClient, cpu_seconds, refusals_added, send_raw, stats_lines)
from tests.support.procs import REPO, Agent, App, _env, users_route

SERVERS = ["stdlib-http-server", "fastapi-uvicorn"]
STATS_INTERVAL_S = 0.5
# An idle agent polls its buffer every 50 ms and logs counters twice a second: a few
# percent of a core. A parser looping on one input takes whatever the scheduler gives it
# (half a core or more on this loaded 2-core machine).
IDLE_CPU_SHARE = 0.25
QUIET_WINDOW_S = 1.0


class AgentKeeper:
    """The agent the per-input tests share, replaced when an input broke it."""

    def __init__(self, args: list[str], tmp):
        self.args, self.tmp = args, tmp
        self.agent: Agent | None = None

    def current(self) -> Agent:
        if self.agent is None or self.agent.proc.poll() is not None:
            self.agent = Agent(self.args, self.tmp, env={"SPANPROBE_STATS_INTERVAL_S": str(STATS_INTERVAL_S)},
                               timeout=180)
            wait_stats(self.agent, 0)
        return self.agent

    def discard(self) -> str:
        """Stop a broken agent (SIGTERM, then SIGKILL after 5 s); what happened."""
        agent, self.agent = self.agent, None
        if agent is None:
            return ""
        if agent.proc.poll() is not None:
            return f"agent had exited with {agent.proc.returncode}"
        rc = agent.stop(signal.SIGTERM, timeout=5.0)
        return f"SIGTERM: exit {rc} after {agent.stop_seconds:.1f}s" + (" (killed)" if rc == -9 else "")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("hostile")
    apps: dict[str, App] = {}
    responder = client = keeper = None
    try:
        for kind in SERVERS:
            apps[kind] = App(kind, tmp, service=f"hostile-{kind}")
        responder = RawResponder(HOSTILE_RESPONSES)
        client = TracedClient(sys.executable, _env(), str(REPO))
        args = [a for app in apps.values() for a in ("--port", str(app.port))]
        args += ["--pid", str(client.pid), "--attach-mode", "tracepoint",
                 "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"]
        keeper = AgentKeeper(args, tmp)
        yield apps, responder, client, keeper
    finally:
        if keeper is not None:
            keeper.discard()
        if client is not None:
            client.stop()
        if responder is not None:
            responder.close()
        for app in apps.values():
            app.stop()


def wait_stats(agent: Agent, seen: int, timeout: float = 10.0) -> dict:
    """The first counters line after the `seen` lines already logged."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = stats_lines(agent.stderr)
        if len(lines) > seen:
            return lines[-1]
        if agent.proc.poll() is not None:
            return {}
        time.sleep(0.05)
    return {}


def server_request_traced(receiver, app: App) -> str | None:
    """A normal GET to `app` gives a correct SERVER span; None, or what was wrong."""
    n = uid()
    try:
        status = requests.get(f"{app.url}/users/{n}", timeout=10).status_code
    except requests.RequestException as exc:
        return f"the app itself failed a normal request: {exc}"
    if status != 200:
        return f"the app answered {status} to a normal request"
    try:
        (span,) = receiver.wait_for(lambda s: s["kind"] == "SERVER"
                                    and s["attributes"].get("url.path") == f"/users/{n}", timeout=10)
    except AssertionError as exc:
        return f"no span for a normal request after it: {exc}"
    a = span["attributes"]
    got = (span["name"], a.get("http.request.method"), a.get("http.route"), a.get("http.response.status_code"),
           span["resource"].get("service.name"))
    want = (f"GET {users_route(app.kind)}", "GET", users_route(app.kind), 200, app.service)
    return None if got == want else f"normal request's span is wrong: {got} != {want}"


def client_request_traced(receiver, client: TracedClient, app: App) -> str | None:
    """The traced client's normal GET to `app` gives a correct CLIENT span."""
    n = uid()
    if client.get(app.port, f"/users/{n}") == 0:
        return "the traced client got nothing back from a normal request"
    url = f"http://127.0.0.1:{app.port}/users/{n}"
    try:
        (span,) = receiver.wait_for(lambda s: s["kind"] == "CLIENT" and s["attributes"].get("url.full") == url,
                                    timeout=10)
    except AssertionError as exc:
        return f"no client span for a normal request after it: {exc}"
    a = span["attributes"]
    got = (a.get("http.request.method"), a.get("http.response.status_code"), span["resource"].get("process.pid"))
    want = ("GET", 200, client.pid)
    return None if got == want else f"normal client span is wrong: {got} != {want}"


def health(agent: Agent, log_from: int) -> list[str]:
    """Alive, near idle over a quiet window, no traceback logged since `log_from`."""
    problems = []
    if agent.proc.poll() is not None:
        return [f"agent exited with {agent.proc.returncode}"]
    before = cpu_seconds(agent.proc.pid)
    time.sleep(QUIET_WINDOW_S)
    if agent.proc.poll() is not None:
        return [f"agent exited with {agent.proc.returncode}"]
    used = cpu_seconds(agent.proc.pid) - before
    if used > IDLE_CPU_SHARE * QUIET_WINDOW_S:
        problems.append(f"agent busy when quiet: {used:.2f}s CPU in {QUIET_WINDOW_S}s")
    if "Traceback" in agent.stderr[log_from:]:
        problems.append("a traceback was logged")
    return problems


def survive(keeper: AgentKeeper, receiver, hostile: Hostile, send, traced) -> None:
    """Send one hostile input with `send()`, then check the agent with `traced()`."""
    agent = keeper.current()
    log_from = len(agent.stderr)
    seen = len(stats_lines(agent.stderr))
    before = stats_lines(agent.stderr)[-1]
    send()
    problems = []
    wrong = traced()
    if wrong:
        problems.append(wrong)
    problems += health(agent, log_from)
    after = wait_stats(agent, seen + 1) if agent.proc.poll() is None else {}
    added = refusals_added(before, after) if after else {}
    if hostile.must_count and not added:
        problems.append("the hostile message was not counted (no refusal counter grew)")
    if problems:
        log = agent.stderr[log_from:]
        what = keeper.discard()
        pytest.fail(f"{hostile.name}: " + "; ".join(problems) + f"; {what}\nrefusal counters added: {added}\n"
                    f"agent log since the input:\n{log[-4000:]}", pytrace=False)


@pytest.mark.parametrize("hostile", HOSTILE_REQUESTS, ids=lambda h: h.name)
@pytest.mark.parametrize("kind", SERVERS)
def test_hostile_request_to_a_traced_server(stack, receiver, kind, hostile):
    apps, _, _, keeper = stack
    app = apps[kind]
    survive(keeper, receiver, hostile, lambda: send_raw(app.port, hostile.data),
            lambda: server_request_traced(receiver, app))


@pytest.mark.parametrize("hostile", HOSTILE_RESPONSES, ids=lambda h: h.name)
def test_hostile_response_to_a_traced_client(stack, receiver, hostile):
    apps, responder, client, keeper = stack
    survive(keeper, receiver, hostile, lambda: client.get(responder.port, f"/hostile/{hostile.name}"),
            lambda: client_request_traced(receiver, client, apps["stdlib-http-server"]))


def test_one_agent_takes_every_hostile_input_then_stops_on_sigterm(stack, receiver):
    """The whole list on one agent: still alive and idle, every refused message counted,
    normal requests traced on both servers and the client, then SIGTERM: exit 0 < 5 s."""
    apps, responder, client, keeper = stack
    keeper.discard()
    agent = keeper.current()
    before = stats_lines(agent.stderr)[-1]
    counted = 0
    for app in apps.values():
        for h in HOSTILE_REQUESTS:
            send_raw(app.port, h.data)
            counted += h.must_count
    for h in HOSTILE_RESPONSES:
        client.get(responder.port, f"/hostile/{h.name}")
        counted += h.must_count
    problems = [p for p in [server_request_traced(receiver, app) for app in apps.values()]
                + [client_request_traced(receiver, client, apps["stdlib-http-server"])] if p]
    problems += health(agent, 0)
    seen = len(stats_lines(agent.stderr))
    after = wait_stats(agent, seen) if agent.proc.poll() is None else {}
    added = refusals_added(before, after) if after else {}
    if sum(added.values()) < counted:
        problems.append(f"{counted} refused messages sent, counters grew by {sum(added.values())}: {added}")
    keeper.agent = None             # this test stops it itself
    rc = agent.stop(signal.SIGTERM, timeout=10.0)
    if rc != 0:
        problems.append(f"SIGTERM: exit {rc}")
    if agent.stop_seconds is not None and agent.stop_seconds >= 5.0:
        problems.append(f"SIGTERM took {agent.stop_seconds:.1f}s")
    if " final {" not in agent.stderr:
        problems.append("no final counters line")
    if "Traceback" in agent.stderr:
        problems.append("a traceback was logged")
    assert not problems, "; ".join(problems) + f"\nagent log:\n{agent.stderr[-4000:]}"
