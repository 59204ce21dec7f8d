"""Per-span CPU cost of the agent's user-space path, side by side with the SDK's tracer API.

    python bench/span_cost.py [--spans 20000] [--both]

Feeds synthetic kernel records (the same bytes the ring buffer delivers) through
decode -> assemble -> build, then encodes the spans as OTLP protobuf (the agent's encoder,
and the SDK's on the same spans), and compares with creating the same spans through the
OpenTelemetry SDK's tracer API. Two shapes of traffic: requests on one keep-alive
connection (uvicorn), and a connection per request (gunicorn's sync worker: five
records a span), whose total includes the same encoding. CPU time
(time.process_time), medians of 5 rounds, one process: ratios are what matter.
`--both` runs it twice, with the agent's hot modules compiled by mypyc and from their
sources (SPANPROBE_COMPILED=0, spanprobe/native.py), and prints the two side by side.

`--recorded` (root) takes the records from a real kernel instead: the benchmark's two apps
under wrk, traced by the agent itself, then replayed through it from the records the ring
buffer gives it to OTLP bytes (bench/recorded.py).

`--instructions` counts instead of timing: each path runs under valgrind's callgrind at two
sizes, and the difference of the instructions executed, divided by the difference of the
spans, is the path's instructions per span (start-up and imports cancel out). It repeats to
within a fraction of a percent where CPU time on a shared virtual machine moves by a third
between runs, so it is what tells a step of a few percent from the noise. Instructions are
not time (a cache miss costs more than an add), so the CPU figures above stay the measure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from spanprobe import events as ev  # noqa: E402
from spanprobe import native  # noqa: E402
from spanprobe.clock import MonotonicToWall  # noqa: E402
from spanprobe.discovery import ProcessRegistry  # noqa: E402
from spanprobe.memory import settle_heap  # noqa: E402
from spanprobe.privacy import Redactor  # noqa: E402
from spanprobe.procfs import SysRoot  # noqa: E402
from spanprobe.routes import RouteMatcher  # noqa: E402
from spanprobe.sampling import SAMPLED, HeadSampler  # noqa: E402
from spanprobe.spans import SpanBuilder  # noqa: E402
from spanprobe.streams import Assembler  # noqa: E402

REQ = (b"GET /users/%d?page=2 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench/1.0\r\n"
       b"Accept: */*\r\nConnection: keep-alive\r\n\r\n")
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"id\": 42, \"name\": \"bench\"}"


RESP_HEAD, RESP_BODY = RESP.split(b"\r\n\r\n", 1)
RESP_HEAD += b"\r\n\r\n"
LOOPBACK = b"\x7f\0\0\x01" + b"\0" * 12


def header(kind, ts, fd=5, conn_id=1, tgid=4242, tid=4242):
    return ev.HEADER.pack(ts, kind, tgid, tid, fd, conn_id)


def data(ts, direction, payload, conn_id=1):
    flags = ev.DATA_AT_ENTRY if direction == ev.DIR_EGRESS else 0
    return (header(ev.EV_DATA, ts, conn_id=conn_id)
            + ev.DATA.pack(len(payload), len(payload), direction, flags, 0, -1, 0, b"\0" * 8) + payload)


def conn(kind, ts, conn_id, peer_port=50000):
    """An open record with both ends, or a close record as the kernel side sends it: role
    and listen_fd -1 only (bpf/spanprobe.bpf.c, OP_CLOSE), no family and no address."""
    if kind == ev.EV_CONN_CLOSE:
        return header(kind, ts, conn_id=conn_id) + ev.CONN.pack(-1, 0, ev.ROLE_SERVER, 0, 0, 0, 0,
                                                                 b"\0" * 16, b"\0" * 16)
    return header(kind, ts, conn_id=conn_id) + ev.CONN.pack(
        3, ev.AF_INET, ev.ROLE_SERVER, 0, peer_port, 8000, 0, LOOPBACK, LOOPBACK)


def records(n: int, per_request: bool = False) -> list[bytes]:
    """The records the kernel side sends for n requests of `GET /users/<i>`.

    Keep-alive (uvicorn): one connection, then a request and a response record each.
    `per_request` (gunicorn's sync worker, as its records read in the agent's debug log):
    a connection per request, so open, request, response head, response body (two
    writes) and close: five records a span."""
    if not per_request:
        out = [conn(ev.EV_CONN_OPEN, 1, 1)]
        ts = 10
        for i in range(n):
            out.append(data(ts, ev.DIR_INGRESS, REQ % i))
            out.append(data(ts + 50_000, ev.DIR_EGRESS, RESP))
            ts += 100_000
        return out
    out = []
    ts = 10
    for i in range(n):
        cid, port = ts, 32768 + i % 28000
        out += [conn(ev.EV_CONN_OPEN, ts, cid, port), data(ts + 10_000, ev.DIR_INGRESS, REQ % i, cid),
                data(ts + 50_000, ev.DIR_EGRESS, RESP_HEAD, cid),
                data(ts + 51_000, ev.DIR_EGRESS, RESP_BODY, cid), conn(ev.EV_CONN_CLOSE, ts + 60_000, cid, port)]
        ts += 100_000
    return out


def agent_path(raw: list[bytes], sampler: str = "parentbased_always_on"):
    """The agent's path with its head sampler; an unsampled exchange is not built (as in
    pipeline.Agent._build)."""
    spans = []
    registry = ProcessRegistry(SysRoot("/"), Redactor([], []))
    builder = SpanBuilder(registry, RouteMatcher([]), Redactor(["authorization"], ["token"]),
                          MonotonicToWall(), "bench-host", {})

    def emit(x):
        if x.trace_flags & SAMPLED:
            spans.append(builder.build(x))
    asm = Assembler(emit, sample=HeadSampler(sampler))
    t0 = time.process_time()
    for r in raw:
        e = ev.decode(r)
        if e.h.kind == ev.EV_DATA:
            asm.data(e)
        elif e.h.kind == ev.EV_CONN_OPEN:
            asm.open(e)
        else:
            asm.close(e)
    asm.drain()
    t1 = time.process_time()
    return spans, t1 - t0


def encode_wire(spans):
    """The agent's encoder (spanprobe.otlp_wire), batches of 512 as the export queue sends."""
    from spanprobe.otlp_wire import SpanEncoder
    enc = SpanEncoder()
    t0 = time.process_time()
    for i in range(0, len(spans), 512):
        enc.encode(spans[i:i + 512])
    return time.process_time() - t0


def encode_sdk(spans):
    """The SDK's encoder, which the agent used before otlp_wire: the same bytes."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    t0 = time.process_time()
    for i in range(0, len(spans), 512):
        encode_spans(spans[i:i + 512]).SerializePartialToString()
    return time.process_time() - t0


def sdk_path(n: int):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    class Null(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Null(), max_queue_size=max(n + 10, 512)))   # >= its batch
    tracer = provider.get_tracer("bench")
    t0 = time.process_time()
    for i in range(n):
        with tracer.start_as_current_span("GET /users/{id}", kind=SpanKind.SERVER, attributes={
            "http.request.method": "GET", "url.path": f"/users/{i}", "url.query": "page=2",
            "url.scheme": "http", "http.route": "/users/{id}", "server.address": "127.0.0.1",
            "server.port": 8000, "client.address": "127.0.0.1", "client.port": 50000,
            "network.peer.address": "127.0.0.1", "network.peer.port": 50000,
            "network.protocol.version": "1.1", "user_agent.original": "bench/1.0"}) as span:
            span.set_attribute("http.response.status_code", 200)
    t1 = time.process_time()
    provider.shutdown()
    return t1 - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--spans", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--both", action="store_true", help="compiled and source, side by side")
    p.add_argument("--instructions", action="store_true",
                   help="instructions per span under valgrind (deterministic), compiled and source")
    p.add_argument("--recorded", action="store_true",
                   help="on records the kernel sent for the benchmark's apps (root; bench/recorded.py)")
    p.add_argument("--seconds", type=float, default=8.0, help="--recorded: seconds of wrk per app")
    p.add_argument("--app-python", help="--recorded: the benchmark venv's python, which runs the apps "
                   "(default: $SPANPROBE_BENCH_PYTHON)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)   # --both's children
    p.add_argument("--path", choices=sorted(COUNTED), help=argparse.SUPPRESS)   # --instructions' children
    a = p.parse_args()
    if a.path:
        return COUNTED[a.path](a.spans)
    if a.instructions:
        return instructions()
    if a.recorded:
        import recorded         # bench/recorded.py, beside this file
        return recorded.main(a.seconds, a.rounds, a.app_python, a.json)
    if a.both:
        return both(a)
    settle_heap()        # as the agent does once ready
    raw = records(a.spans)
    raw_per_request = records(a.spans, per_request=True)
    rows = {"agent: decode + assemble + build": [], "agent: OTLP encode (otlp_wire)": [],
            "agent: total per span": [], "agent: an unsampled request": [],
            "agent, a connection per request": [],
            "SDK's OTLP encoder, same spans": [], "SDK tracer API (no export)": []}
    for _ in range(a.rounds):
        # each path alone in the heap: spans kept alive from another pass would make the
        # collector's passes (and so this one) costlier than in the agent, which keeps
        # only what its export queue holds
        per_request, t_per_request = agent_path(raw_per_request)
        assert len(per_request) == a.spans, len(per_request)
        del per_request
        none, t_unsampled = agent_path(raw, "always_off")
        assert none == []
        rows["agent: an unsampled request"].append(t_unsampled / a.spans * 1e6)
        spans, t_build = agent_path(raw)
        assert len(spans) == a.spans, len(spans)
        t_enc = encode_wire(spans)
        t_sdk_enc = encode_sdk(spans)
        t_sdk = sdk_path(a.spans)
        rows["agent: decode + assemble + build"].append(t_build / a.spans * 1e6)
        rows["agent: OTLP encode (otlp_wire)"].append(t_enc / a.spans * 1e6)
        rows["SDK's OTLP encoder, same spans"].append(t_sdk_enc / a.spans * 1e6)
        rows["agent: total per span"].append((t_build + t_enc) / a.spans * 1e6)
        rows["agent, a connection per request"].append((t_per_request + t_enc) / a.spans * 1e6)
        rows["SDK tracer API (no export)"].append(t_sdk / a.spans * 1e6)
    medians = {name: statistics.median(vals) for name, vals in rows.items()}
    if a.json:
        print(json.dumps({"hot_modules": native.state(), "rows": medians}))
        return
    print(f"hot modules: {native.state()}")
    print(f"CPU µs per span, median of {a.rounds} rounds of {a.spans} spans (same process, same run)")
    print(f"{'path':<36}{'µs/span':>10}")
    for name, vals in rows.items():
        print(f"{name:<36}{statistics.median(vals):>10.1f}")
    agent = statistics.median(rows["agent: total per span"])
    sdk = statistics.median(rows["SDK tracer API (no export)"])
    print(f"agent total / SDK API = {agent / sdk:.2f}; agent spans/s per core (user space) ~ {1e6 / agent:,.0f}")


def both(a) -> None:
    """This script twice, alternating compiled and source runs, each in a process of its own
    (a process imports one build); per row the median of the runs and the ratio."""
    runs: dict[str, list[dict]] = {"compiled": [], "source": []}
    for _ in range(2):
        for mode in runs:
            env = dict(os.environ, SPANPROBE_COMPILED="1" if mode == "compiled" else "0")
            out = subprocess.run([sys.executable, __file__, "--json", "--spans", str(a.spans),
                                  "--rounds", str(a.rounds)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            if mode == "compiled" and not got["hot_modules"].startswith("compiled"):
                raise SystemExit(f"span_cost --both: no compiled build ({got['hot_modules']}): "
                                 "run python scripts/compile_agent.py")
            runs[mode].append(got["rows"])
    print(f"CPU µs per span, medians of 2 processes each x {a.rounds} rounds of {a.spans} spans, "
          "compiled and source processes alternated")
    print(f"{'path':<36}{'compiled':>10}{'source':>10}{'ratio':>8}")
    for name in runs["compiled"][0]:
        c = statistics.median(r[name] for r in runs["compiled"])
        s = statistics.median(r[name] for r in runs["source"])
        print(f"{name:<36}{c:>10.1f}{s:>10.1f}{c / s:>8.2f}")


# --instructions: what one child process runs, once, at a given number of spans
def _count_build(n: int) -> None:
    settle_heap()
    spans, _ = agent_path(records(n))
    assert len(spans) == n


def _count_total(n: int) -> None:
    settle_heap()
    spans, _ = agent_path(records(n))
    encode_wire(spans)


def _count_per_request(n: int) -> None:
    settle_heap()
    spans, _ = agent_path(records(n, per_request=True))
    encode_wire(spans)


def _count_sdk(n: int) -> None:
    sdk_path(n)


def _count_wiring(n: int, per_request: bool) -> None:
    """The agent's own wiring (pipeline.Agent: router, assembler, builder, export queue,
    otlp_wire) on a fake kernel session (tests/support/fake_session.py) and a fake /proc,
    fed the same records in batches of 500 as the loop takes them from the ring buffer."""
    import tempfile

    from recorded import Encoded        # bench/recorded.py, beside this file
    from spanprobe.config import resolve
    from spanprobe.pipeline import Agent
    from tests.support.fake_session import FakeSession, fake_proc, tcp_row

    listening = (("0.0.0.0", 8000), 1001)
    with tempfile.TemporaryDirectory(prefix="span-cost-proc-") as tmp:
        fake_proc(Path(tmp), 4242, ["/usr/bin/python3", "app.py"], "/usr/bin/python3.11", {3: listening[1]},
                  [tcp_row(0, listening[0], ("0.0.0.0", 0), 0x0A, listening[1])])
        session, exporter = FakeSession(), Encoded()
        agent = Agent(resolve({"select.ports": [8000]}, env={}), SysRoot(tmp), env={},
                      open_session=session.opener(), exporters=[exporter])
        agent.start()
        settle_heap()
        raw = records(n, per_request=per_request)
        for i in range(0, len(raw), 500):
            session.inject(*raw[i:i + 500])
            agent.poll(0)
            agent.process_batch()
        agent.shutdown()
    assert exporter.spans == n, (exporter.spans, n)


COUNTED = {"build": _count_build, "total": _count_total, "per-request": _count_per_request, "sdk": _count_sdk,
           "wiring": lambda n: _count_wiring(n, False), "wiring-per-request": lambda n: _count_wiring(n, True)}
COUNTED_ROWS = (("agent: decode + assemble + build", "build"), ("agent: total per span", "total"),
                ("agent, a connection per request", "per-request"),
                ("agent's wiring (pipeline.Agent)", "wiring"),
                ("agent's wiring, conn. per request", "wiring-per-request"),
                ("SDK tracer API (no export)", "sdk"))
SIZES = (1000, 4000)


def _instructions(path: str, compiled: bool) -> float:
    counts = []
    for n in SIZES:
        env = dict(os.environ, SPANPROBE_COMPILED="1" if compiled else "0")
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                               sys.executable, __file__, "--path", path, "--spans", str(n)],
                              env=env, capture_output=True, text=True)
        got = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or got is None:
            raise SystemExit(f"span_cost --instructions: the {path} run failed under valgrind: "
                             f"{done.stderr.strip().splitlines()[-1:]}")
        counts.append(int(got.group(1)))
    return (counts[1] - counts[0]) / (SIZES[1] - SIZES[0])


def instructions() -> None:
    """Instructions per span of each path, compiled and from source (module docstring)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("span_cost --instructions: valgrind is not installed: apt-get install valgrind")
    build = native.state()
    if not build.startswith("compiled"):
        raise SystemExit(f"span_cost --instructions: no compiled build ({build}): "
                         "run python scripts/compile_agent.py")
    print(f"instructions per span (callgrind, {SIZES[1]} spans minus {SIZES[0]}), one process each")
    print(f"{'path':<36}{'compiled':>10}{'source':>10}")
    for name, path in COUNTED_ROWS:
        c, s = _instructions(path, True), _instructions(path, False)
        print(f"{name:<36}{c:>10,.0f}{s:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
