"""Same-host links need both ends' four addresses and ports: servers bound to a wildcard
(0.0.0.0, ::) or to loopback, reached over IPv4, IPv6 and IPv4-mapped IPv6, still link."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.support.checks import server_spans, uid
from tests.support.procs import REPO, Agent, free_port

# (address the server binds, address curl connects to)
CASES = [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::1", "::1"),
         ("::", "::1"), ("::", "127.0.0.1")]


def _wait_listening(host: str, port: int, proc: subprocess.Popen) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {host}:{port} exited with {proc.returncode}")
        with socket.socket(family) as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("link-addresses")
    procs, ports = [], {}
    try:
        for bind in sorted({b for b, _ in CASES}):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", bind, "-d", str(tmp), str(port)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
            ports[bind] = port
            _wait_listening("::1" if bind in ("::", "::1") else "127.0.0.1", port, procs[-1])
        args = [a for p in ports.values() for a in ("--port", str(p))]
        agent = Agent([*args, "--exe", "curl", "--otlp-endpoint",
                       f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        yield ports
        assert agent.stop() == 0, agent.stderr[-2000:]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


@pytest.mark.parametrize("bind,connect", CASES)
def test_curl_call_links_to_the_server_span(servers, receiver, bind, connect):
    port = servers[bind]
    path = f"/missing-{uid()}"
    host = f"[{connect}]" if ":" in connect else connect
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{host}:{port}{path}"], capture_output=True, text=True)
    assert out.stdout == "404", out.stderr
    (down,) = server_spans(receiver, path)
    (cli,) = receiver.wait_for(lambda s: s["kind"] == "CLIENT"
                               and s["attributes"].get("url.full", "").endswith(path))
    assert down["attributes"]["network.peer.address"] == connect.removeprefix("::ffff:")
    assert (down["trace_id"], down["parent_span_id"]) == (cli["trace_id"], cli["span_id"])
