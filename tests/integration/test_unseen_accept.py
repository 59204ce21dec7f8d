"""A server thread blocked in accept() while the agent starts: the connection that call
returns has an accept() whose entry the kernel side never saw, and /proc held no such
connection when the agent adopted those open before it was ready. The kernel side opens it
from accept()'s exit alone and the agent reads its two ends from /proc: every request on it
is a span with its addresses, and the case is counted (`accepts_unseen`). Without that, a
keep-alive connection accepted there would go untraced for its whole life. (The ends of a
connection closed before the agent takes its open record can't be read: the connection is
traced without them and counted, as a unit test shows.)"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

from tests.support.checks import server_spans, uid
from tests.support.procs import REPO, Agent, free_port, wait_port

ACCEPT_SYSCALLS = {"43", "288"}         # accept, accept4 on x86-64


def in_accept(pid: int) -> bool:
    """Is the process's main thread waiting in accept()? (/proc/PID/syscall: its number)"""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ACCEPT_SYSCALLS
    except (OSError, IndexError):
        return False


def wait_in_accept(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not in_accept(pid):
        assert time.monotonic() < end, f"process {pid} not in accept() after {timeout}s"
        time.sleep(0.05)


def test_a_connection_from_an_accept_entered_before_the_agent_is_traced(tmp_path, receiver):
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "tests.apps.blocking_accept_app", str(port)],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    agent = None
    try:
        wait_port(port, app, timeout=30)        # a connection of its own, served and closed
        wait_in_accept(app.pid)
        agent = Agent(["--port", str(port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp_path)
        # the premise: the thread entered accept() before the agent attached, and is still in it
        assert in_accept(app.pid), "the app left accept() before the connection: nothing tested"
        run = uid()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        paths = [f"/unseen-{run}-{i}" for i in range(3)]
        for path in paths:                      # one keep-alive connection
            conn.request("GET", path)
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, path.encode())
        # open until the spans are in: the agent reads the ends from /proc when it takes the
        # open record, up to a batch later; a connection closed by then has none (counted)
        spans = [server_spans(receiver, path)[0] for path in paths]
        conn.close()
        assert agent.stop() == 0, agent.stderr[-2000:]
        final = agent.final_counters()
        assert final["accepts_unseen"] == 1 and final["accepts_unseen_without_ends"] == 0, final
        for span in spans:
            a = span["attributes"]
            assert (a.get("client.address"), a.get("client.port")) == ("127.0.0.1", client_port), a
            assert (a.get("network.local.address"), a.get("network.local.port")) == ("127.0.0.1", port), a
            assert a["http.response.status_code"] == 200
    finally:
        if agent is not None:
            agent.stop()
        app.terminate()
        app.wait(10)
