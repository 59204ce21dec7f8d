"""Issue 15, items 1 and 2, on this kernel with the real agent.

(a) The agent frozen (SIGSTOP ~3 s, then SIGCONT) with a small ring buffer under
keep-alive load: the kernel side loses events. No exported span may carry a status that
differs from the one in its path (tests/apps/status_app.py answers GET /status/<code>
with <code>), the loss must be counted (kernel losses, exchanges dropped for gaps) and
warned about, and the connections must be traced again after the freeze.

(b) Keep-alive connections opened while the agent starts (after its launch, before
READY), used only after READY: their requests are traced, or counted if not.
"""

from __future__ import annotations

import http.client
import random
import signal
import subprocess
import sys
import threading
import time

from tests.support.checks import uid
from tests.support.procs import REPO, Agent, _env, free_port, wait_port

STATUSES = (200, 201, 202, 203, 206, 207, 226, 404, 409, 418, 500, 503)
FREEZE_S = 3.0
PAGES = 16                       # 64 KiB of ring buffer: a 3 s freeze under load overflows it


class StatusApp:
    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.apps.status_app", str(self.port)],
                                     cwd=REPO, env=_env(), stdout=open(tmp / "status_app.log", "w"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status


def expected_status(path: str) -> int:
    return int(path.split("/")[2])


def spans_of(receiver, prefix: str) -> list[dict]:
    with receiver.lock:
        return [s for s in receiver.spans if s["kind"] == "SERVER"
                and str(s["attributes"].get("url.path", "")).startswith(prefix)]


def test_frozen_agent_never_exports_a_wrong_status(tmp, receiver):
    app = StatusApp(tmp)
    agent = Agent(["--port", str(app.port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                  tmp, env={"SPANPROBE_RING_BUFFER_PAGES": str(PAGES), "SPANPROBE_STATS_INTERVAL_S": "1"},
                  timeout=180)
    run = uid()
    stop = threading.Event()
    sent: list[str] = []
    errors: list[str] = []

    def load(worker: int):
        rng = random.Random(worker)
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        i = 0
        while not stop.is_set():
            path = f"/status/{rng.choice(STATUSES)}/{run}-{worker}-{i}"
            status = get(conn, path)
            if status != expected_status(path):     # the app itself is right, or the test is void
                errors.append(f"{path} -> {status}")
            sent.append(path)
            i += 1
        conn.close()

    try:
        workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for w in workers:
            w.start()
        time.sleep(2.0)
        agent.proc.send_signal(signal.SIGSTOP)
        time.sleep(FREEZE_S)
        agent.proc.send_signal(signal.SIGCONT)
        resumed = time.time_ns()
        time.sleep(4.0)
        stop.set()
        for w in workers:
            w.join(30)
        assert not errors, errors[:5]
        # traced again after the freeze: the keep-alive connections resynchronised
        receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["start"] > resumed
                          and str(s["attributes"].get("url.path", "")).startswith(f"/status/"), 20, 30)
        receiver.settle(2.0)
    finally:
        stop.set()
        rc = agent.stop()
        app.stop()
    assert rc == 0
    spans = spans_of(receiver, "/status/")
    spans = [s for s in spans if str(s["attributes"]["url.path"]).split("/")[-1].startswith(f"{run}-")]
    assert spans, "no span exported at all"
    wrong = [(s["attributes"]["url.path"], s["attributes"].get("http.response.status_code"))
             for s in spans if s["attributes"].get("http.response.status_code")
             != expected_status(s["attributes"]["url.path"])]
    assert not wrong, f"{len(wrong)} of {len(spans)} spans carry another request's status: {wrong[:5]}"
    final = agent.final_counters()
    assert final["kernel_events_lost"] > 0, "the freeze lost nothing: the test proves nothing"
    assert final["gaps_lost_events"] > 0          # connections resynchronised after the loss
    # exchanges_dropped_gap counts requests in flight at a gap; it may stay 0 when the lost
    # events held whole exchanges (those are in kernel_events_lost, and missing below)
    assert len(spans) < len(sent)                 # what was lost is missing, not invented
    assert "kernel side lost data since the last report" in agent.stderr
    assert "kernel_events_lost=+" in agent.stderr


def wait_bcc_loaded(pid: int, timeout: float = 120.0) -> None:
    """Until the agent has mapped libbcc: it loads it for the compile, after its first scan
    of /proc. A fixed sleep was too long once the compile got fast (READY came first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "libbcc" in f.read():
                    return
        except OSError as exc:
            raise AssertionError(f"agent {pid} gone before it loaded bcc: {exc}") from None
        time.sleep(0.02)
    raise AssertionError(f"agent {pid} did not load bcc within {timeout:.0f} s")


def test_connections_opened_while_the_agent_starts_are_traced(tmp, receiver):
    app = StatusApp(tmp)
    agent = Agent(["--port", str(app.port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                  tmp, env={"SPANPROBE_STATS_INTERVAL_S": "1"}, wait_ready=False)
    conns: list[http.client.HTTPConnection] = []
    run = uid()
    try:
        # past the agent's first /proc scan and before READY: bcc is loaded after that scan,
        # to compile, which takes seconds; opening ten connections takes milliseconds
        wait_bcc_loaded(agent.proc.pid)
        for _ in range(10):
            c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
            c.connect()
            conns.append(c)
        assert " ready strategy=" not in agent.stderr, "READY came before the connections: nothing tested"
        agent.wait_for(r" ready strategy=", 180)
        paths = []
        for n, c in enumerate(conns):
            for i in range(20):
                path = f"/status/{STATUSES[(n + i) % len(STATUSES)]}/{run}-{n}-{i}"
                assert get(c, path) == expected_status(path)
                paths.append(path)
        try:
            receiver.wait_for(lambda s: s["kind"] == "SERVER"
                              and str(s["attributes"].get("url.path", "")).startswith("/status/")
                              and str(s["attributes"]["url.path"]).endswith(tuple(f"/{run}-{n}-19" for n in range(10))),
                              10, 20)
        except AssertionError:
            pass                                      # judged below, with the counters
        receiver.settle(1.5)
    finally:
        for c in conns:
            c.close()
        rc = agent.stop()
        app.stop()
    assert rc == 0
    traced = {s["attributes"]["url.path"]: s for s in spans_of(receiver, "/status/")
              if str(s["attributes"]["url.path"]).split("/")[-1].startswith(f"{run}-")}
    for path, s in traced.items():
        assert s["attributes"]["http.response.status_code"] == expected_status(path), path
    final = agent.final_counters()
    missing = len(paths) - len(traced)
    counted = sum(final.get(k, 0) for k in ("exchanges_dropped_gap", "responses_dropped_gap",
                                            "adoptions_refused", "unknown_connection_data",
                                            "kernel_events_lost"))
    assert missing <= counted, f"{missing} of {len(paths)} requests neither traced nor counted: {final}"
    # each one adopted at READY, or, where the app's thread was already waiting in accept()
    # when the probes attached, opened from that accept()'s exit (the kernel side has it,
    # so adoption leaves it alone)
    assert final["connections_adopted"] + final["accepts_unseen"] >= 10, final
