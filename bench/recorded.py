"""The agent's user-space cost per span on records a real kernel sent for real apps.

    sudo python bench/span_cost.py --recorded [--seconds 8] [--rounds 3]

span_cost's other rows feed records it makes itself, of one request shape. Here the
records are what the kernel side really sent: each app of the benchmark (FastAPI under
uvicorn, keep-alive; Flask under gunicorn's sync worker, a connection per request) runs
from the benchmark's venv, the agent itself traces it under wrk (pipeline.Agent with its
real BPF session, whose `poll` is recorded), and every record the loop took is kept in
memory, nothing on disk (they are captured traffic). Then the same records go through the
agent again, a fresh pipeline.Agent each round on a kernel session that only hands them
over (tests/support/fake_session.py): from the records the ring buffer gives it to OTLP
bytes, that is router, assembler, span builder, export queue and OTLP encoding. Not in it:
reading the ring buffer, the HTTP send (the benchmark's runs and ladder include both), the
loop's once-a-second collection and expiry. The app is still running, so /proc says what it
said during the recording. CPU time of the process (every thread), median of the rounds,
per span; spans/s on one core is its inverse: issue 18's "user-space capacity".

The recording must be whole: none of the agent's loss counters moved, and its spans equal
what wrk completed (or sent, for requests in flight when it stopped); the replay must build
as many spans as the live agent did. Root only (bcc).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))
sys.path.insert(1, str(REPO))

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402

from bench.load import wrk_command, wrk_result  # noqa: E402
from bench.overhead import lost_events  # noqa: E402
from bench.procs import APP_KINDS, BenchError, Procs, start_app  # noqa: E402
from spanprobe.config import resolve  # noqa: E402
from spanprobe.memory import settle_heap  # noqa: E402
from spanprobe.otlp_wire import SpanEncoder  # noqa: E402
from spanprobe.pipeline import Agent, _open_bpf_session  # noqa: E402
from spanprobe.procfs import SysRoot  # noqa: E402
from tests.support.fake_session import FakeSession  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

BATCH = 500          # records a replayed poll delivers (the live loop takes ~that many a poll)


class Encoded(SpanExporter):
    """Encodes what it is given as the OTLP exporters do, and counts the spans."""

    def __init__(self):
        self.encoder, self.spans = SpanEncoder(), 0

    def export(self, spans):
        self.encoder.encode(spans)
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class Recording:
    """A kernel session whose every poll's records are kept (the rest is the session's)."""

    def __init__(self, session):
        self.session, self.records = session, []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def poll(self, timeout_ms: int) -> list[bytes]:
        got = self.session.poll(timeout_ms)
        self.records.extend(got)
        return got


def record(port: int, seconds: float) -> tuple[list[bytes], int]:
    """(records, spans) of the live agent tracing the app on `port` under wrk."""
    holder: dict = {}

    def opener(settings, root, self_pid, trace_all):
        session, passed_over = _open_bpf_session(settings, root, self_pid, trace_all)
        holder["rec"] = Recording(session)
        return holder["rec"], passed_over

    exporter = Encoded()
    agent = Agent(resolve({"select.ports": [port]}, env={}), SysRoot("/"), env={},
                  open_session=opener, exporters=[exporter])
    agent.start()
    try:
        wrk = subprocess.Popen(wrk_command(port, seconds, 16), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        while wrk.poll() is None:
            agent.poll(50)
            agent.process_batch()
        load = wrk_result(wrk.stdout.read())
        end = time.monotonic() + 1.0           # what the kernel sent last, then stop
        while time.monotonic() < end:
            agent.poll(50)
            agent.process_batch()
    finally:
        agent.shutdown()
    lost = lost_events(agent.counters())
    if lost or not load["completed"] <= exporter.spans <= load["sent"]:
        raise SystemExit(f"span_cost --recorded: the recording is not whole ({exporter.spans} spans for "
                         f"{load['completed']}..{load['sent']} requests, lost {lost})")
    return holder["rec"].records, exporter.spans


def replay(records: list[bytes], port: int) -> tuple[float, int]:
    """(CPU seconds, spans) of a fresh agent taking `records` as its kernel session's."""
    session, exporter = FakeSession(), Encoded()
    agent = Agent(resolve({"select.ports": [port]}, env={}), SysRoot("/"), env={},
                  open_session=session.opener(), exporters=[exporter])
    agent.start()
    settle_heap()
    t0 = time.process_time()
    for i in range(0, len(records), BATCH):
        session.inject(*records[i:i + BATCH])
        agent.poll(0)
        agent.process_batch()
    agent.shutdown()
    return time.process_time() - t0, exporter.spans


def run(python: str, seconds: float, rounds: int) -> dict[str, dict]:
    """{app: records, spans, records a span, µs a span (median), spans/s on one core}."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="span-cost-recorded-") as logs, Procs(Path(logs)) as procs:
        for app in APP_KINDS:
            port = free_port()
            proc = start_app(procs, app, port, python, None, None, f"{app}-recorded")
            try:
                records, spans = record(port, seconds)
                times = []
                for _ in range(rounds):
                    cpu, replayed = replay(records, port)
                    if replayed != spans:
                        raise SystemExit(f"span_cost --recorded: {app}'s replay built {replayed} spans, "
                                         f"the live agent {spans}")
                    times.append(cpu / spans * 1e6)
            finally:
                procs.stop(proc)
            us = statistics.median(times)
            out[app] = {"port": port, "records": len(records), "spans": spans,
                        "records_per_span": len(records) / spans, "us_per_span": us,
                        "us_per_span_rounds": times, "spans_per_s": 1e6 / us}
    return out


def main(seconds: float, rounds: int, python: str | None, as_json: bool = False) -> None:
    python = python or os.environ.get("SPANPROBE_BENCH_PYTHON")
    if os.geteuid() != 0:
        raise SystemExit("span_cost --recorded: needs root (the agent's BPF session records the kernel's "
                         "records): run it with sudo")
    if not python:
        raise SystemExit("span_cost --recorded: give --app-python (the benchmark venv's python; "
                         "bash scripts/dev.sh bench sets it up) or set SPANPROBE_BENCH_PYTHON")
    # the harness stops a step that overran with SIGTERM: leave through the `finally`s, which
    # stop the app this started in a session of its own
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        got = run(python, seconds, rounds)
    except BenchError as exc:
        raise SystemExit(f"span_cost --recorded: {exc}") from None
    if as_json:
        print(json.dumps({"seconds": seconds, "rounds": rounds, "apps": got}))
        return
    print(f"recorded records through the agent, router to OTLP bytes (no ring read, no HTTP send), "
          f"median of {rounds} replays")
    print(f"{'app':<10}{'records':>10}{'spans':>9}{'rec/span':>10}{'µs/span':>9}{'spans/s':>10}")
    for app, r in got.items():
        print(f"{app:<10}{r['records']:>10,}{r['spans']:>9,}{r['records_per_span']:>10.2f}"
              f"{r['us_per_span']:>9.1f}{r['spans_per_s']:>10,.0f}")
