"""The real Agent wiring (spanprobe.pipeline) driven end to end without root: a FakeSession
for the kernel side, a fake /proc tree, an in-memory exporter. Start, routing, exchange ->
span -> exporter, exit clean-up, capture widening, asyncio-linking requests, isolation,
SIGTERM in the middle of a batch, the final stats line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from spanprobe import events as ev
from spanprobe.config import resolve
from spanprobe.pipeline import Agent, install_signal_handlers
from spanprobe.procfs import SysRoot
from tests.support.fake_session import FakeSession, conn, data, fake_proc, proc, tcp_row

APP = 100            # python3 app.py, listening on 8000, one keep-alive client connected
OTHER = 200          # a process nobody selected
LISTEN, KEPT = (("0.0.0.0", 8000), 1001), (("127.0.0.1", 8000), 1002)
CLIENT = ("127.0.0.1", 40000)
REQ = b"GET /users/7?page=2 HTTP/1.1\r\nHost: app\r\nUser-Agent: t/1\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class MemoryExporter(SpanExporter):
    def __init__(self):
        self.spans = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


@dataclass
class Layout:
    version: str = "3.11"


class FakeCalibrations:
    """pyruntime.Calibrations' interface: Python processes get a layout, others None."""

    def __init__(self, python_pids: set[int]):
        self.python_pids = python_pids
        self.calls: list[int] = []

    def for_process(self, pid, exe):
        self.calls.append(pid)
        return (Layout(), 0x7F0000001000) if pid in self.python_pids else None


@pytest.fixture
def root(tmp_path) -> SysRoot:
    rows = [tcp_row(0, LISTEN[0], ("0.0.0.0", 0), 0x0A, LISTEN[1]),
            tcp_row(1, KEPT[0], CLIENT, 0x01, KEPT[1])]
    fake_proc(tmp_path, APP, ["/usr/bin/python3", "app.py"], "/usr/bin/python3.11",
              {3: LISTEN[1], 4: KEPT[1]}, rows)
    fake_proc(tmp_path, OTHER, ["/usr/bin/worker"], "/usr/bin/worker", {}, rows)
    return SysRoot(tmp_path)


def make_agent(root, flags=None, session=None, python_pids=(), env=None):
    session = session or FakeSession()
    exporter = MemoryExporter()
    settings = resolve({"select.ports": [8000], **(flags or {})}, env={})
    agent = Agent(settings, root, env=env or {}, open_session=session.opener(), exporters=[exporter],
                  calibrations=FakeCalibrations(set(python_pids)))
    return agent, session, exporter


def exchange(ts, pid=APP, fd=5, conn_id=7, req=REQ, resp=RESP, close=True):
    out = [conn(ev.EV_CONN_OPEN, ts, pid, fd, conn_id, ev.ROLE_SERVER, CLIENT, ("127.0.0.1", 8000)),
           data(ts + 10, pid, fd, conn_id, ev.DIR_INGRESS, req),
           data(ts + 20, pid, fd, conn_id, ev.DIR_EGRESS, resp)]
    if close:
        out.append(conn(ev.EV_CONN_CLOSE, ts + 30, pid, fd, conn_id, ev.ROLE_SERVER))
    return out


def step(agent):
    """One turn of the loop: poll, then the batch through every stage."""
    agent.poll(0)
    agent.process_batch()


def final_counters(caplog) -> dict:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final {")]
    assert len(lines) == 1
    return json.loads(lines[0][len("final "):])


def test_start_selects_adopts_and_reports_ready(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, _ = make_agent(root)
    agent.start()
    assert session.ports == {8000}
    assert set(session.traced) == {APP}                  # selected by its listening port
    ((key, (conn_id, role)),) = session.adopted.items()
    assert key == (APP, 4) and role == ev.ROLE_SERVER
    assert agent.assembler.conns[(APP, 4)].conn_id == conn_id
    assert session.opened_with == {"self_pid": os.getpid(), "trace_all": False}
    text = caplog.text
    assert "ready strategy=tracepoint transport=ringbuf" in text and "adopted=1" in text
    assert "strategy fentry passed over" in text
    agent.shutdown()
    assert session.closed


def test_an_exchange_becomes_a_span_at_the_exporter(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root)
    agent.start()
    session.inject(*exchange(1_000))
    step(agent)
    agent.shutdown()
    (span,) = exporter.spans
    assert span.name == "GET /users/{id}"
    assert span.attributes["url.path"] == "/users/7"
    assert span.attributes["http.response.status_code"] == 200
    assert span.resource.attributes["process.pid"] == APP
    c = final_counters(caplog)
    assert c["events_received"] == 4 and c["spans_built"] == 1


def test_the_adopted_connection_is_traced(root):
    agent, session, exporter = make_agent(root)
    agent.start()
    (conn_id, _), = session.adopted.values()
    session.inject(data(10, APP, 4, conn_id, ev.DIR_INGRESS, REQ),
                   data(20, APP, 4, conn_id, ev.DIR_EGRESS, RESP))
    step(agent)
    agent.shutdown()
    assert [s.attributes["client.port"] for s in exporter.spans] == [CLIENT[1]]


def test_exit_forgets_every_per_process_structure(root):
    rules = [{"from": "json_body", "path": "$.order.id", "attribute": "order.id", "body": "request"}]
    agent, session, exporter = make_agent(root, {"attributes.rules": rules}, FakeSession(uprobes=True),
                                          python_pids={APP})
    agent.start()
    session.inject(*exchange(1_000, close=False),
                   conn(ev.EV_CONN_OPEN, 1_100, APP, 9, 8, ev.ROLE_CLIENT, ("127.0.0.1", 5432),
                        ("127.0.0.1", 41000)))
    step(agent)
    assert APP in session.python and APP in agent.scopes.wide_capture and APP in agent.registry.procs
    assert agent.builder.resources and agent.scopes.rules
    session.inject(proc(ev.EV_PROC_EXIT, 2_000, APP))
    step(agent)
    agent.shutdown()
    assert [s.resource.attributes["process.pid"] for s in exporter.spans] == [APP]
    assert not [k for k in agent.assembler.conns if k[0] == APP]
    assert APP not in agent.registry.procs and APP not in agent.builder.resources
    assert not [k for k in agent.scopes.rules if k[0] == APP] and APP not in agent.scopes.wide_capture
    assert not [k for k in agent.router.sockets.listen_cache if k[0] == APP]
    assert APP not in agent.router.python_checked and APP not in agent.router.python_called_out
    assert APP not in agent.python_pending and APP not in session.python
    assert APP not in agent.assembler.serving


def test_a_json_body_rule_widens_the_kernel_capture_once_per_process(root):
    rules = [{"from": "json_body", "path": "$.order.id", "attribute": "order.id", "body": "request"}]
    agent, session, _ = make_agent(root, {"attributes.rules": rules, "capture_bytes": 256})
    widened = []
    select = session.select_pid
    session.select_pid = lambda pid, excluded=False, capture=0: (
        widened.append(pid) if capture else None, select(pid, excluded, capture))
    agent.start()                          # its adopted connection is wired: widened already
    bound = agent.settings["attributes.max_body_bytes"]
    assert session.traced[APP]["capture"] == min(ev.MAX_CAPTURE, bound + 1024)
    session.inject(*exchange(1_000), *exchange(2_000, fd=6, conn_id=8))
    step(agent)
    assert widened == [APP]                # asked once, not per connection
    agent.shutdown()


def test_asyncio_linking_is_requested_at_the_first_outbound_connection(root):
    agent, session, _ = make_agent(root, session=FakeSession(uprobes=True), python_pids={APP})
    agent.start()
    assert agent.calibrations.calls == [APP] and session.python == {}     # serves, never called out
    session.inject(*exchange(1_000), *exchange(2_000, fd=6, conn_id=8))
    step(agent)
    assert session.python == {} and agent.calibrations.calls == [APP]     # once per process
    session.inject(conn(ev.EV_CONN_OPEN, 3_000, APP, 9, 9, ev.ROLE_CLIENT, ("127.0.0.1", 5432),
                        ("127.0.0.1", 41000)))
    step(agent)
    assert set(session.python) == {APP}
    agent.shutdown()


def test_linking_needs_uprobes_in_the_plan(root):
    agent, session, _ = make_agent(root, python_pids={APP})
    agent.start()
    assert agent.calibrations.calls == []
    agent.shutdown()


def test_exec_of_a_matching_program_is_selected_then_and_others_are_not(root, tmp_path):
    agent, session, _ = make_agent(root, {"select.ports": [], "select.exe": ["worker"]})
    agent.start()
    assert set(session.traced) == {OTHER} and session.comms == {"worker"}
    fake_proc(tmp_path, 300, ["/usr/bin/worker", "--queue", "x"], "/usr/bin/worker")
    fake_proc(tmp_path, 301, ["/usr/bin/ls"], "/usr/bin/ls")
    session.inject(proc(ev.EV_PROC_EXEC, 10, 300, comm="worker", filename="/usr/bin/worker"),
                   proc(ev.EV_PROC_EXEC, 11, 301, comm="ls", filename="/usr/bin/ls"),
                   proc(ev.EV_PROC_FORK, 12, 302, ppid=300))
    step(agent)
    assert set(session.traced) == {OTHER, 300}
    assert agent.registry.parents[302] == 300
    agent.shutdown()


def test_a_handler_that_raises_is_counted_its_connection_dropped_and_the_loop_goes_on(root, caplog):
    caplog.set_level(logging.DEBUG, "spanprobe")
    clock = [1000.0]
    agent, session, exporter = make_agent(root)
    agent.faults.clock = lambda: clock[0]
    agent.start()
    real = agent.router.handlers[ev.EV_DATA]

    def poisoned(e):
        if e.h.fd == 5:
            raise ValueError("hostile bytes")
        real(e)
    agent.router.handlers[ev.EV_DATA] = poisoned
    session.inject(*exchange(1_000, close=False), *exchange(1_500, fd=6, conn_id=8))
    step(agent)
    assert (APP, 5) not in agent.assembler.conns            # that connection only
    assert agent.faults.counts["assemble"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "assemble stage" in r.getMessage()]
    assert len(warnings) == 1 and "ValueError" in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    session.inject(*exchange(2_000, close=False))           # more of the same kind, later
    clock[0] += 61
    step(agent)
    summary = [r.getMessage() for r in caplog.records if "more ValueError failures" in r.getMessage()]
    assert summary == ["assemble stage: 2 more ValueError failures in the last 61 s"]
    agent.shutdown()
    assert [s.attributes["client.port"] for s in exporter.spans] == [CLIENT[1]]   # fd 6's exchange
    assert final_counters(caplog)["event_errors_assemble"] == 4


def test_a_truncated_record_and_a_failing_span_build_are_counted(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root)
    agent.start()
    calls = []

    class FailsFirst:
        """The agent's builder, whose first build fails (a compiled class's methods cannot
        be replaced on its instance: the builder is wrapped instead)."""

        def __init__(self, real):
            self.real = real

        def build(self, x):
            calls.append(x)
            if len(calls) == 1:
                raise KeyError("odd exchange")
            return self.real.build(x)

        def __getattr__(self, name):
            return getattr(self.real, name)
    agent.builder = FailsFirst(agent.builder)
    truncated = data(500, APP, 5, 7, ev.DIR_INGRESS, REQ)[:ev.HEADER.size + 4]
    session.inject(truncated, *exchange(1_000), *exchange(2_000, fd=6, conn_id=8))
    step(agent)
    agent.shutdown()
    c = final_counters(caplog)
    assert c["event_errors_decode"] + c["decode_errors"] == 1
    assert c["span_build_errors"] == c["event_errors_build"] == 1
    assert c["spans_built"] == len(exporter.spans) == 1


def test_sigterm_in_the_middle_of_a_batch_stops_at_once_and_counts_the_rest(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, _ = make_agent(root)
    agent.start()
    handled = []
    real = agent.router.handlers[ev.EV_CONN_CLOSE]

    def close(e):                       # each record a close of an unknown connection: cheap
        handled.append(e)
        if len(handled) == 1000:
            os.kill(os.getpid(), signal.SIGTERM)
        real(e)
    agent.router.handlers[ev.EV_CONN_CLOSE] = close
    total = 50_000
    session.inject(*[conn(ev.EV_CONN_CLOSE, i, APP, 50, i, ev.ROLE_SERVER) for i in range(total)])
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install_signal_handlers(agent)
    try:
        t0 = time.monotonic()
        assert agent.run() == 0
        elapsed = time.monotonic() - t0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert elapsed < 5
    c = final_counters(caplog)
    assert 1000 <= len(handled) < total
    assert c["events_abandoned_at_stop"] == total - len(handled)
    assert c["events_received"] == total
    assert "stopped: every probe detached" in caplog.text


def test_the_final_stats_line_is_one_flat_json_object(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, _ = make_agent(root, {"stats_interval_s": 1})
    agent.start()
    session.kernel_counters["events_lost"] = 3
    agent.stop_after = 0.01
    assert agent.run() == 0
    c = final_counters(caplog)
    assert all(isinstance(v, int) for v in c.values())
    for stage in ("decode", "assemble", "process", "build", "apply"):
        assert c[f"event_errors_{stage}"] == 0
    assert c["kernel_events_lost"] == 3 and c["events_abandoned_at_stop"] == 0
    assert re.search(r"^final \{", [r.getMessage() for r in caplog.records][-2])


def test_a_request_the_session_refuses_is_counted_not_fatal(root, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root, {"select.ports": [], "select.exe": ["worker"]})
    agent.start()

    def full(pid, excluded=False, capture=0):
        raise OSError("map full")
    session.select_pid = full
    fake_proc(root.path(), 300, ["/usr/bin/worker"], "/usr/bin/worker")
    session.inject(proc(ev.EV_PROC_EXEC, 10, 300, comm="worker", filename="/usr/bin/worker"),
                   *exchange(1_000, pid=OTHER))
    step(agent)
    agent.shutdown()
    assert final_counters(caplog)["event_errors_apply"] == 1
    assert len(exporter.spans) == 1


def test_trace_all_excludes_by_executable_and_perf_records_are_put_in_time_order(root, tmp_path, caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root, {"select.ports": [], "select.exclude_exe": ["worker"]},
                                          FakeSession(transport="perf"))
    agent.start()
    assert session.traced == {OTHER: {"excluded": True, "capture": 0}}
    fake_proc(tmp_path, 300, ["/usr/bin/worker"], "/usr/bin/worker")
    real = agent.router.handlers[ev.EV_PROC_FORK]
    agent.router.handlers[ev.EV_PROC_FORK] = lambda e: (_ for _ in ()).throw(RuntimeError("odd fork"))
    opened = conn(ev.EV_CONN_OPEN, 1_000, APP, 5, 7, ev.ROLE_SERVER, CLIENT, None, listen_fd=3)
    later = [data(1_010, APP, 5, 7, ev.DIR_INGRESS, REQ), data(1_020, APP, 5, 7, ev.DIR_EGRESS, RESP)]
    session.inject(*reversed(later), opened,              # per-CPU buffers: out of order
                   proc(ev.EV_PROC_EXEC, 900, 300, comm="worker", filename="/usr/bin/worker"),
                   proc(ev.EV_PROC_FORK, 950, 301, ppid=300))
    step(agent)
    agent.router.handlers[ev.EV_PROC_FORK] = real
    agent.shutdown()
    assert session.traced[300] == {"excluded": True, "capture": 0}
    (span,) = exporter.spans
    assert span.attributes["server.port"] == 8000        # the listening socket's, from /proc
    c = final_counters(caplog)
    assert c["event_errors_process"] == 1 and c["event_errors_assemble"] == 0


def test_the_loop_exports_a_request_past_its_timeout_and_stop_exports_the_rest(root, caplog):
    # issue 17, item 3: the run loop looks for requests past request_timeout_s on the
    # kernel's clock; at stop, what still waits is exported as agent_stopped
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root, {"request_timeout_s": 1})
    agent.start()
    stuck = exchange(1_000, conn_id=7, close=False)[:2]                # a request, no response
    later = exchange(5_000_000_000, fd=6, conn_id=8, close=False)[:2]
    session.inject(*stuck, *later)
    session.now = 1_000 + 2_000_000_000                                # 2 s after the first
    agent.stop_after = 1.3                                             # one look, then stop
    assert agent.run() == 0
    by_error = {s.attributes["error.type"]: s for s in exporter.spans}
    assert set(by_error) == {"timeout", "agent_stopped"}
    assert by_error["timeout"].end_time - by_error["timeout"].start_time == 2_000_000_000 - 10
    c = final_counters(caplog)
    assert c["exchanges_timed_out"] == 1 and c["exchanges_in_flight_at_stop"] == 1
    assert c["spans_exported"] == 2


@pytest.mark.parametrize("sampler, flags, exported", [
    ("parentbased_always_on", "00", 0), ("parentbased_always_on", "01", 1), ("always_on", "00", 1),
    ("always_off", "01", 0)])
def test_head_sampling_drops_unsampled_exchanges_before_a_span_is_built(root, caplog, sampler, flags, exported):
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, exporter = make_agent(root, {"sampling.sampler": sampler})
    agent.start()
    tp = f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
    session.inject(*exchange(1_000, req=REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {tp}\r\n\r\n".encode())))
    step(agent)
    agent.shutdown()
    assert len(exporter.spans) == exported
    if exported:
        assert exporter.spans[0].context.trace_flags.sampled
    c = final_counters(caplog)
    assert (c["spans_unsampled"], c["spans_built"]) == (1 - exported, exported)


def test_debug_logs_each_record_header_in_order_and_never_its_bytes(root, caplog):
    """`--log-level debug` names every record the kernel side reported, so that a span that
    never came can be traced to the record that was missing; the captured bytes stay out."""
    agent, session, _ = make_agent(root)
    agent.start()
    secret = REQ.replace(b"User-Agent: t/1", b"Authorization: Bearer s3cr3t-t0ken")
    caplog.set_level(logging.INFO, "spanprobe")
    session.inject(*exchange(1_000, req=secret, close=False))
    step(agent)
    assert not [r for r in caplog.records if r.name == "spanprobe.records"]
    caplog.set_level(logging.DEBUG, "spanprobe")
    session.inject(*exchange(2_000, fd=6, conn_id=8, req=secret))
    step(agent)
    lines = [r.getMessage() for r in caplog.records if r.name == "spanprobe.records"]
    assert [re.search(r"kind=(\d+) ts=(\d+)", x).groups() for x in lines] == [
        (str(ev.EV_CONN_OPEN), "2000"), (str(ev.EV_DATA), "2010"), (str(ev.EV_DATA), "2020"),
        (str(ev.EV_CONN_CLOSE), "2030")]
    assert f"pid={APP} " in lines[1] and "fd=6 conn=8" in lines[1]
    assert f"dir={ev.DIR_INGRESS} len={len(secret)}" in lines[1]
    assert "role=1" in lines[0] and "peer=('127.0.0.1', 40000)" in lines[0]
    assert "s3cr3t" not in caplog.text and "GET /users" not in "".join(lines)
    agent.shutdown()


# ---- the ports whose accepted connections get their local end from the kernel side ----

def test_start_tells_the_kernel_side_the_selected_ports_and_where_the_selected_listen(root):
    """Selected by pid, APP's listener (8000, from /proc) is one; a selected port nobody
    listens on yet (9000) too; OTHER's sockets are none of the agent's business."""
    agent, session, _ = make_agent(root, {"select.ports": [9000], "select.pids": [APP]})
    agent.start()
    assert session.listen_ports == {8000, 9000}
    agent.shutdown()


def test_tracing_everything_tells_no_port(root):
    """The kernel side keeps every port's local ends then (SP_TRACE_ALL)."""
    agent, session, _ = make_agent(root, {"select.ports": []})
    agent.start()
    assert session.listen_ports == set()
    agent.shutdown()


def test_a_listener_the_kernel_side_did_not_know_is_told_at_its_first_connection(root, tmp_path):
    """APP listens on 8001 after the agent started, unseen (bound to port 0, say): its first
    connection comes with no local end, the listener's address is read from /proc and its
    port told, once."""
    agent, session, exporter = make_agent(root)
    agent.start()
    (tmp_path / "proc" / str(APP) / "net" / "tcp").open("a").write(
        tcp_row(2, ("0.0.0.0", 8001), ("0.0.0.0", 0), 0x0A, 1003))
    os.symlink("socket:[1003]", tmp_path / "proc" / str(APP) / "fd" / "6")
    for i, fd in enumerate((7, 8)):
        session.inject(conn(ev.EV_CONN_OPEN, 100 + i * 100, APP, fd, 10 + i, ev.ROLE_SERVER, CLIENT, None, listen_fd=6),
                       data(110 + i * 100, APP, fd, 10 + i, ev.DIR_INGRESS, REQ),
                       data(120 + i * 100, APP, fd, 10 + i, ev.DIR_EGRESS, RESP))
        step(agent)
    assert session.listen_ports == {8000, 8001}
    assert [r for r in agent.router.take_requests()] == []       # applied, and told once
    agent.shutdown()
    assert [s.attributes["network.local.port"] for s in exporter.spans] == [8001, 8001]


def test_a_port_map_that_cannot_be_written_costs_the_local_ends_not_the_start(root, caplog):
    """mmap of `listen_ports` refused: the agent starts all the same, says what it costs,
    and counts it; each later port it would tell is counted too, never fatal."""
    class Refusing(FakeSession):
        def note_listen_port(self, port):
            raise PermissionError(1, "Operation not permitted")
    caplog.set_level(logging.WARNING, "spanprobe")
    agent, session, _ = make_agent(root, session=Refusing())
    agent.start()
    assert "the kernel side was not told the traced ports" in caplog.text
    assert agent.faults.counts["apply"] == 1
    agent.shutdown()
