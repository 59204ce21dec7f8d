"""A real OTLP receiver for the tests: gRPC and HTTP/protobuf on loopback.

Spans are decoded with opentelemetry-proto and kept as plain dicts, so assertions read
like the OTLP data model: name, kind, ids as hex, attributes, resource attributes.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class Receiver:
    def __init__(self):
        self.spans: list[dict] = []
        self.requests = 0
        self.lock = threading.Condition()
        self.grpc_server = None
        self.http_server = None
        self.grpc_port = self.http_port = None

    # ---- ingest ----
    def ingest(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        got = []
        for rs in req.resource_spans:
            res = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append({
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex() if s.parent_span_id else None,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status": {0: "UNSET", 1: "OK", 2: "ERROR"}[s.status.code],
                        "attributes": _attrs(s.attributes),
                        "resource": res,
                        "scope": ss.scope.name,
                    })
        with self.lock:
            self.requests += 1
            self.spans.extend(got)
            self.lock.notify_all()

    # ---- servers ----
    def start_grpc(self) -> str:
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.ingest(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.grpc_server = server
        return f"http://127.0.0.1:{self.grpc_port}"

    def start_http(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver.ingest(req)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.http_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self.http_server.server_address[1]
        threading.Thread(target=self.http_server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.grpc_server:
            self.grpc_server.stop(0)
        if self.http_server:
            self.http_server.shutdown()
            self.http_server.server_close()

    # ---- queries ----
    def clear(self) -> None:
        with self.lock:
            self.spans.clear()

    def wait_for(self, predicate, count: int = 1, timeout: float = 15.0) -> list[dict]:
        """Spans matching `predicate`, once at least `count` of them arrived."""
        end = time.monotonic() + timeout
        with self.lock:
            while True:
                hits = [s for s in self.spans if predicate(s)]
                if len(hits) >= count:
                    return hits
                left = end - time.monotonic()
                if left <= 0:
                    names = sorted({(s["kind"], s["name"], s["resource"].get("service.name")) for s in self.spans})
                    raise AssertionError(f"{len(hits)} of {count} expected spans after {timeout}s; "
                                         f"received {len(self.spans)}: {names[:30]}")
                self.lock.wait(left)

    def settle(self, quiet: float = 1.0) -> list[dict]:
        """All spans once none arrived for `quiet` seconds."""
        last = -1
        while True:
            with self.lock:
                n = len(self.spans)
            if n == last:
                return list(self.spans)
            last = n
            time.sleep(quiet)
