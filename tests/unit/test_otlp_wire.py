"""The direct OTLP encoder (spanprobe.otlp_wire) against the SDK's own encoder.

Both must give the same bytes for the same spans: the SDK's encoder is the reference a
collector already accepts, so any difference here is a bug in ours.
"""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from spanprobe import otlp_wire
from spanprobe.otlp_wire import SpanEncoder, any_value, varint

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
SCOPE = InstrumentationScope("spanprobe", "9.9.9")
RES_A = Resource({"service.name": "shop", "process.pid": 41, "host.name": "h"})
RES_B = Resource({"service.name": "cart", "process.pid": 42, "host.name": "h"},
                 schema_url="https://opentelemetry.io/schemas/1.26.0")


def span(i: int, resource=RES_A, scope=SCOPE, parent=None, kind=SpanKind.SERVER,
         status=Status(StatusCode.UNSET), attributes=None, trace_state=None, **kw) -> ReadableSpan:
    ctx = SpanContext((0xABC << 100) + i, 0x1000 + i, False, SAMPLED, trace_state=trace_state)
    attrs = {"http.request.method": "GET", "http.response.status_code": 200,
             "url.path": f"/items/{i}", "network.protocol.version": "1.1"}
    if attributes is not None:
        attrs = attributes
    return ReadableSpan(name=f"GET /items/{{id}}", context=ctx, parent=parent, resource=resource,
                        attributes=attrs, kind=kind, status=status,
                        start_time=1_700_000_000_000_000_000 + i,
                        end_time=1_700_000_000_000_500_000 + i, instrumentation_scope=scope, **kw)


def same_bytes(spans) -> bytes:
    ours = SpanEncoder().encode(spans)
    theirs = encode_spans(spans).SerializePartialToString()
    assert ours == theirs, (ExportTraceServiceRequest.FromString(ours),
                            ExportTraceServiceRequest.FromString(theirs))
    return ours


def test_plain_server_spans_match_the_sdk():
    data = same_bytes([span(i) for i in range(5)])
    req = ExportTraceServiceRequest.FromString(data)
    assert len(req.resource_spans) == 1 and len(req.resource_spans[0].scope_spans[0].spans) == 5


def test_parents_local_and_remote_set_the_flags_like_the_sdk():
    local = SpanContext(0xABC << 100, 0x77, False, SAMPLED)
    remote = SpanContext(0xABC << 100, 0x78, True, SAMPLED)
    data = same_bytes([span(1, parent=local), span(2, parent=remote), span(3)])
    spans = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans
    assert [s.flags for s in spans] == [0x100, 0x300, 0x100]


def test_kinds_statuses_and_trace_state():
    same_bytes([
        span(1, kind=SpanKind.CLIENT, status=Status(StatusCode.ERROR, "connection_closed")),
        span(2, kind=SpanKind.INTERNAL, status=Status(StatusCode.ERROR)),
        span(3, status=Status(StatusCode.OK)),
        span(4, trace_state=TraceState([("vendor", "v1"), ("other", "x")])),
    ])


@pytest.mark.parametrize("value", [
    "", "é ✓ text", 0, 1, 127, 128, 300, 2**40, -1, -2**63, 2**63 - 1, True, False, 1.5, -0.0,
    float("inf"), b"\x00\xff", ["a", "b"], (1, 2, 3), [True, False], [1.25], [],
])
def test_every_attribute_value_type_matches_the_sdk(value):
    same_bytes([span(1, attributes={"k": value, "other": "x"})])


def test_many_resources_and_scopes_group_like_the_sdk():
    other_scope = InstrumentationScope("other", "", schema_url="https://example.invalid/s")
    same_bytes([span(1), span(2, resource=RES_B), span(3, scope=other_scope), span(4),
                span(5, resource=RES_B, scope=None), span(6, resource=RES_B)])


def test_empty_attributes_and_dropped_counts():
    same_bytes([span(1, attributes={})])


def test_spans_with_events_fall_back_to_the_sdk_for_the_whole_batch():
    with_event = span(2, events=(Event("exception", {"a": 1}, timestamp=5),))
    assert SpanEncoder().encode([span(1), with_event]) == \
        encode_spans([span(1), with_event]).SerializePartialToString()


def test_the_value_cache_is_bounded_and_stays_correct_when_cleared(monkeypatch):
    monkeypatch.setattr(otlp_wire, "_KV_CACHE_LIMIT", 3)
    enc = SpanEncoder()
    spans = [span(i) for i in range(10)]           # a distinct url.path each
    for _ in range(2):                             # second pass: cache hits and clears
        assert enc.encode(spans) == encode_spans(spans).SerializePartialToString()
    assert enc._kv_size <= 3


def test_a_key_with_many_values_stops_filling_the_cache(monkeypatch):
    """Past _KV_VALUES_PER_KEY values of one key (a path), that key's values are encoded
    per span and the cache keeps the pairs that repeat; the bytes stay the SDK's."""
    monkeypatch.setattr(otlp_wire, "_KV_VALUES_PER_KEY", 2)
    enc = SpanEncoder()
    spans = [span(i) for i in range(10)]           # a distinct url.path each, the rest alike
    for _ in range(2):
        assert enc.encode(spans) == encode_spans(spans).SerializePartialToString()
    by_key = enc._kv[b"\x4a"]
    assert len(by_key["url.path"]) == 2
    assert all(len(values) == 1 for key, values in by_key.items() if key != "url.path")
    assert enc._kv_size == sum(len(values) for keys in enc._kv.values() for values in keys.values())


def test_span_names_are_cached_within_a_bound_and_stay_the_sdks():
    enc = SpanEncoder()
    names = [f"GET /n/{i}" for i in range(otlp_wire._NAME_CACHE_LIMIT + 5)]
    for batch in (names[:3], names, names[:3]):           # hits, a clear, hits again
        spans = [span(i) for i in range(len(batch))]
        for s, name in zip(spans, batch):
            s._name = name
        assert enc.encode(spans) == encode_spans(spans).SerializePartialToString()
    assert len(enc._names) <= otlp_wire._NAME_CACHE_LIMIT


def test_a_spans_shared_attributes_are_written_once_and_as_the_sdk_writes_them_all():
    """Spans whose attributes begin with a shared base (Span.attr_base) give the bytes the
    SDK's encoder gives for their whole attributes; the base is encoded once while kept."""
    from spanprobe.spans import from_readable

    base = {"network.transport": "tcp", "client.address": "10.0.0.9", "client.port": 51000}
    ours = []
    for i in range(5):
        s = from_readable(span(i, attributes={**base, "url.path": f"/items/{i}", "http.route": "/items/{id}"}))
        s.attr_base = base if i else None           # the first without one, as the builder does
        ours.append(s)
    enc = SpanEncoder()
    readable = [span(i, attributes={**base, "url.path": f"/items/{i}", "http.route": "/items/{id}"})
                for i in range(5)]
    assert enc.encode(ours) == encode_spans(readable).SerializePartialToString()
    assert [entry[0] for entry in enc._bases.values()] == [base]    # encoded once, kept


def test_the_resource_cache_does_not_mistake_a_new_object_for_a_freed_one():
    enc = SpanEncoder()
    first = enc.encode([span(1, resource=Resource({"service.name": "one"}))])
    second = enc.encode([span(1, resource=Resource({"service.name": "two"}))])
    assert b"one" in first and b"two" in second and b"one" not in second


def test_varint_and_unsupported_values():
    assert varint(0) == b"\x00" and varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    with pytest.raises(TypeError, match="object"):
        any_value(object())


@pytest.mark.parametrize("value", [1 << 63, -(1 << 63) - 1, 10 ** 30, -(10 ** 30)])
def test_an_int_past_int64_is_written_as_its_digits_never_as_a_corrupt_varint(value):
    """No varint holds it; written as one, the receiver could not read the whole batch
    (the SDK's encoder raises instead, losing it). The edges of int64 stay ints."""
    from spanprobe.spans import from_readable

    spans = [from_readable(span(1, attributes={"n": value, "lo": -(1 << 63), "hi": (1 << 63) - 1}))]
    req = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    attrs = {kv.key: kv.value for kv in req.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert attrs["n"].string_value == str(value)
    assert attrs["lo"].int_value == -(1 << 63) and attrs["hi"].int_value == (1 << 63) - 1


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_agents_exporters_deliver_these_bytes_over_otlp(receiver, protocol):
    """make_exporters' exporters (the SDK's transport, our encoder) to a real receiver."""
    from spanprobe.export import make_exporters

    endpoint = f"http://127.0.0.1:{receiver.grpc_port if protocol == 'grpc' else receiver.http_port}"
    settings = {"export.otlp_endpoint": endpoint, "export.otlp_protocol": protocol,
                "export.timeout_s": 5.0, "export.console": False}
    (exporter,) = make_exporters(settings)
    tag = 0xF00D + (protocol == "grpc")
    parent = SpanContext(tag << 64, 0x99, True, SAMPLED)
    spans = [span(i, parent=parent) for i in range(3)]
    spans = [ReadableSpan(name=s.name, context=SpanContext(tag << 64, 0x1000 + i, False, SAMPLED),
                          parent=s.parent, resource=RES_B, attributes=s.attributes, kind=s.kind,
                          status=s.status, start_time=s.start_time, end_time=s.end_time,
                          instrumentation_scope=SCOPE) for i, s in enumerate(spans)]
    try:
        assert exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()
    got = receiver.wait_for(lambda s: s["trace_id"] == f"{tag << 64:032x}", count=3, timeout=5)
    assert sorted(s["span_id"] for s in got) == [f"{0x1000 + i:016x}" for i in range(3)]
    assert {s["parent_span_id"] for s in got} == {f"{0x99:016x}"}
    assert got[0]["resource"] == dict(RES_B.attributes)
    assert got[0]["attributes"]["url.path"].startswith("/items/") and got[0]["scope"] == "spanprobe"


def test_an_sdk_without_the_private_hook_keeps_the_sdks_own_exporter(monkeypatch, caplog):
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    from spanprobe.export import make_exporters

    real_init = trace_exporter.OTLPSpanExporter.__init__

    def init_without_client(self, *a, **kw):
        real_init(self, *a, **kw)
        del self._client

    monkeypatch.setattr(trace_exporter.OTLPSpanExporter, "__init__", init_without_client)
    (exporter,) = make_exporters({"export.otlp_endpoint": "http://127.0.0.1:9", "export.console": False,
                                  "export.otlp_protocol": "http/protobuf", "export.timeout_s": 1.0})
    assert type(exporter) is trace_exporter.OTLPSpanExporter
    assert "has no _client._submit" in caplog.text


def test_a_span_attribute_equal_to_a_resource_attribute_is_written_with_the_spans_tag():
    """The value cache once held each (key, value) pair encoded with the tag of the message
    it was first written in: a span attribute equal to a resource attribute of an earlier
    span ("host.name": "h") came out as the resource's field 1 inside the span."""
    same_bytes([span(1), span(2, attributes={"host.name": "h", "process.pid": 41})])
