"""The kernel side keeps the local end of accepted connections only for the ports traced
processes listen on (`listen_ports`): every other socket on the host costs its TCP state
program one array load. So each way a traced process comes to listen must reach that set,
or its connections to a wildcard listener lose the exact local end same-host linking needs:
a listener it had before the agent started (read from /proc at start), one it binds later
(seen binding), one on a port the kernel picked (bind to port 0: read from /proc at its
first connection, told to the kernel for the next). And an end the kernel finds by the peer
alone must not be taken for another port's connection of the same client port."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.support.checks import server_spans, uid
from tests.support.procs import REPO, Agent, free_port, wait_port


def curl(port: int, path: str) -> None:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=30)
    assert out.stdout == "200", out.stderr


def client_span(receiver, path: str) -> dict:
    (cli,) = receiver.wait_for(lambda s: s["kind"] == "CLIENT"
                               and s["attributes"].get("url.full", "").endswith(path))
    return cli


@contextlib.contextmanager
def listeners_traced(tmp, receiver, by_pid: bool = False):
    """The app listening on two ports, then the agent (selecting it by its first port, or
    by its pid: no port selected), then the app's later listeners opened."""
    port, before, later = free_port(), free_port(), free_port()
    app = subprocess.Popen([sys.executable, "-m", "tests.apps.listeners_app", str(port), str(before), str(later)],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    agent = None
    try:
        wait_port(port, app, timeout=30)
        wait_port(before, app, timeout=30)
        # by pid: the app alone (the module's agent traces curl: two agents tracing it
        # would make two client spans of one call)
        select = ["--pid", str(app.pid)] if by_pid else ["--port", str(port), "--exe", "curl"]
        agent = Agent([*select, "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/listen", timeout=10) as r:
            ports = json.load(r)
        assert ports["later"] == later
        yield {"port": port, "before": before, **ports, "agent": agent}
        assert agent.stop() == 0, agent.stderr[-2000:]
    finally:
        if agent is not None:
            agent.stop()        # a test that failed inside the block: no agent left behind
        app.terminate()
        app.wait(10)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, receiver):
    with listeners_traced(tmp_path_factory.mktemp("listen-ports"), receiver) as ports:
        yield ports


@pytest.mark.parametrize("which", ["port", "before", "later"])
def test_a_listener_known_to_the_kernel_side_gives_the_exact_local_end(traced, receiver, which):
    """Selected, listening since before the agent, bound after it: each to 0.0.0.0, and
    the server span has 127.0.0.1 as its local end, so curl's call links to it."""
    path = f"/{which}-{uid()}"
    curl(traced[which], path)
    (down,) = server_spans(receiver, path)
    cli = client_span(receiver, path)
    assert (down["attributes"]["network.local.address"], down["attributes"]["network.local.port"]) \
        == ("127.0.0.1", traced[which])
    assert (down["trace_id"], down["parent_span_id"]) == (cli["trace_id"], cli["span_id"])


def test_a_process_selected_by_pid_has_its_later_listeners_seen_binding(tmp_path, receiver):
    """No port selected: bind is hooked all the same, for the traced process's ports, so
    the later listener's connections have their exact local end."""
    with listeners_traced(tmp_path, receiver, by_pid=True) as by_pid:
        path = f"/by-pid-{uid()}"
        curl(by_pid["later"], path)
        (down,) = server_spans(receiver, path)
        assert (down["attributes"]["network.local.address"], down["attributes"]["network.local.port"]) \
            == ("127.0.0.1", by_pid["later"])


def test_a_port_the_kernel_picked_is_learnt_at_its_first_connection(traced, receiver):
    """bind(2) asked for port 0: the kernel side can't know it. The first connection's
    local end is the listener's (the wildcard, read from /proc), and the port is told to
    the kernel side: from then on, exact ends and links."""
    port = traced["ephemeral"]
    first = f"/first-{uid()}"
    curl(port, first)
    (down,) = server_spans(receiver, first)
    assert down["attributes"]["network.local.port"] == port
    path = f"/next-{uid()}"
    curl(port, path)
    (down,) = server_spans(receiver, path)
    cli = client_span(receiver, path)
    assert down["attributes"]["network.local.address"] == "127.0.0.1", down["attributes"]
    assert (down["trace_id"], down["parent_span_id"]) == (cli["trace_id"], cli["span_id"])


def test_a_client_port_in_use_towards_two_ports_gets_each_its_own_end(traced, receiver):
    """One client port connected to the selected port (its end kept by the kernel side,
    found by the peer) and, at the same time, to a listener the kernel side does not know
    yet: found by the peer, the first connection's end would answer for the second. The
    agent checks it against the listener's port and takes the listener's."""
    with urllib.request.urlopen(f"http://127.0.0.1:{traced['port']}/ephemeral", timeout=10) as r:
        unknown = json.load(r)["ephemeral"]
    path = f"/shared-{uid()}"
    with socket.socket() as known, socket.socket() as other:
        for s in (known, other):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(10)
        known.bind(("127.0.0.1", 0))
        known.connect(("127.0.0.1", traced["port"]))
        other.bind(known.getsockname())
        other.connect(("127.0.0.1", unknown))
        other.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{unknown}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := other.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    (down,) = server_spans(receiver, path)
    assert down["attributes"]["network.local.port"] == unknown, down["attributes"]
