"""A tiny OTLP/HTTP receiver, run INSIDE a test VM on its loopback: POST /v1/traces
(protobuf) is decoded with opentelemetry-proto (installed with the agent) and each span
appended to a JSON-lines file.

    python otlp_http_receiver.py PORT OUTFILE
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "bool_value", "double_value") else None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        with open(OUT, "a") as f:
            for rs in req.resource_spans:
                res = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(json.dumps({
                            "name": s.name, "kind": KINDS.get(s.kind, s.kind),
                            "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                            "resource": res}) + "\n")
        data = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    OUT = sys.argv[2]
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
