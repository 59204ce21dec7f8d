"""Unit tests of business attributes on spans (spanprobe.spans with spanprobe.attributes):
path rules name the route, query rules read the query before redaction."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from spanprobe import events as ev
from spanprobe.attributes import Extractor, compile_rules
from spanprobe.clock import MonotonicToWall
from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.discovery import ProcessRegistry
from spanprobe.httpparse import Message
from spanprobe.privacy import Redactor
from spanprobe.procfs import SysRoot
from spanprobe.routes import RouteMatcher
from spanprobe.spans import SpanBuilder
from spanprobe.streams import Connection, Exchange

PID = 4001
REDACTOR = Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))


@pytest.fixture
def root(tmp_path: Path) -> SysRoot:
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("0f3c2d1e-aaaa-bbbb-cccc-123456789abc\n")
    p = tmp_path / "proc" / str(PID)
    p.mkdir(parents=True)
    (p / "cmdline").write_bytes(b"/srv/bin/checkout-server\0")
    (p / "comm").write_text("checkout-serve\n")
    (p / "environ").write_bytes(b"OTEL_SERVICE_NAME=checkout\0")
    (p / "stat").write_text(f"{PID} (checkout-serve) S 1 {PID} {PID} 0 -1 4194560 100 0 0 0 5 1 0 0 "
                            "20 0 1 0 5000 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 "
                            "17 0 0 0 0 0 0\n")
    os.symlink("/srv/bin/checkout-server", p / "exe")
    return SysRoot(tmp_path)


def builder(root: SysRoot, rules: list[dict], routes=("/customers/{id}/orders/{n}",),
            **extractor_kw) -> tuple[SpanBuilder, Extractor]:
    ex = Extractor(compile_rules(rules, REDACTOR), **extractor_kw)
    registry = ProcessRegistry(root, REDACTOR)
    clock = MonotonicToWall()
    clock.offset = 0

    def rules_for(conn):
        info = registry.get(conn.tgid)
        port = conn.local[1] if conn.local and conn.role == ev.ROLE_SERVER else None
        return ex.for_service(info.service_name if info else f"pid-{conn.tgid}", port,
                              info.names() if info else set())

    b = SpanBuilder(registry, RouteMatcher(list(routes)), REDACTOR, clock, "host-a", {}, ex, rules_for)
    return b, ex


def exchange(target: str, headers=None, role=ev.ROLE_SERVER, req_body: bytes | None = None,
             resp_body: bytes | None = None, resp_headers=None) -> Exchange:
    req = Message(True, 1_000, 1, end_ts=1_100, method="POST", target=target,
                  headers={"host": "shop:8000"} | dict(headers or {}), complete=True)
    if req_body is not None:
        req.body = bytearray(req_body)
    resp = Message(False, 2_000, 1, end_ts=3_000, status=200, headers=dict(resp_headers or {}),
                   complete=True)
    if resp_body is not None:
        resp.body = bytearray(resp_body)
    conn = Connection(PID, 5, 1, role, 0, ("10.0.0.9", 51000), ("10.0.0.5", 8000))
    return Exchange(conn, req, 0xABC, 0xDEF, None, False, response=resp)


PATH_RULE = {"from": "path", "route": "/customers/{customer_id}/orders/{order_id}", "type": "string"}


def test_path_rule_route_overrides_http_route_and_the_span_name(root):
    b, ex = builder(root, [PATH_RULE])
    span = b.build(exchange("/customers/c9/orders/77?x=1"))
    assert span.name == "POST /customers/{customer_id}/orders/{order_id}"
    a = span.attributes
    assert a["http.route"] == "/customers/{customer_id}/orders/{order_id}"
    assert a["url.path"] == "/customers/c9/orders/77"
    assert a["customer_id"] == "c9" and a["order_id"] == "77"
    assert ex.counts["attributes_set"] == 2
    assert ex.seen == {("checkout", "customer_id"): {"c9"}, ("checkout", "order_id"): {"77"}}


def test_without_a_matching_path_rule_the_configured_route_stays(root):
    b, _ = builder(root, [PATH_RULE], routes=("/carts/{id}",))
    span = b.build(exchange("/carts/5"))
    assert span.name == "POST /carts/{id}"
    assert span.attributes["http.route"] == "/carts/{id}"
    assert "customer_id" not in span.attributes


def test_without_rules_the_route_is_the_configured_one(root):
    b, _ = builder(root, [])
    span = b.build(exchange("/customers/c9/orders/77"))
    assert span.name == "POST /customers/{id}/orders/{n}"
    assert "customer_id" not in span.attributes


def test_a_path_rule_for_another_service_does_not_apply(root):
    b, ex = builder(root, [PATH_RULE | {"service": "billing"}])
    span = b.build(exchange("/customers/c9/orders/77"))
    assert span.attributes["http.route"] == "/customers/{id}/orders/{n}"
    assert "customer_id" not in span.attributes
    assert ex.counts["attributes_set"] == 0


def test_client_span_url_template_from_a_path_rule(root):
    b, _ = builder(root, [PATH_RULE])
    span = b.build(exchange("/customers/c9/orders/77", role=ev.ROLE_CLIENT))
    assert span.name == "POST /customers/{customer_id}/orders/{order_id}"
    assert span.attributes["url.template"] == "/customers/{customer_id}/orders/{order_id}"
    assert span.attributes["customer_id"] == "c9"


def test_query_rule_reads_the_raw_query_while_url_query_stays_redacted(root):
    rules = [{"from": "query", "name": "token", "attribute": "token.sha256", "hash": "sha256"},
             {"from": "query", "name": "region", "attribute": "region"}]
    b, _ = builder(root, rules)
    span = b.build(exchange("/search?region=eu%2Dwest&token=s3cr3t#frag"))
    a = span.attributes
    assert a["url.query"] == "region=eu%2Dwest&token=REDACTED"
    assert a["region"] == "eu-west"
    assert a["token.sha256"] == hashlib.sha256(b"s3cr3t").hexdigest()
    assert "s3cr3t" not in repr(dict(a))


def test_query_rule_on_a_client_span_and_url_full_stays_redacted(root):
    rules = [{"from": "query", "name": "session", "attribute": "s", "hash": "sha256"}]
    b, _ = builder(root, rules)
    span = b.build(exchange("/x?session=abc", role=ev.ROLE_CLIENT))
    assert span.attributes["url.full"] == "http://shop:51000/x?session=REDACTED"
    assert span.attributes["s"] == hashlib.sha256(b"abc").hexdigest()


def test_query_fragment_is_not_part_of_the_value(root):
    b, _ = builder(root, [{"from": "query", "name": "q", "attribute": "q"}])
    span = b.build(exchange("/s?q=shoes#top"))
    assert span.attributes["q"] == "shoes"


def test_header_json_and_response_rules_on_a_span(root):
    rules = [{"from": "header", "name": "X-Customer-Id", "attribute": "customer.id"},
             {"from": "json_body", "path": "$.order.id", "attribute": "order.id", "type": "int"},
             {"from": "json_body", "path": "$.status", "attribute": "order.status", "body": "response"},
             {"from": "response_header", "name": "X-Region", "attribute": "region"}]
    b, ex = builder(root, rules)
    span = b.build(exchange("/orders", {"x-customer-id": "c-1"}, req_body=b'{"order": {"id": 31}}',
                            resp_body=b'{"status": "paid"}', resp_headers={"x-region": "eu"}))
    a = span.attributes
    assert (a["customer.id"], a["order.id"], a["order.status"], a["region"]) == ("c-1", 31, "paid", "eu")
    assert ex.counts["attributes_set"] == 4


def test_standard_attributes_are_unchanged_by_rules(root):
    b0, _ = builder(root, [])
    b1, _ = builder(root, [{"from": "query", "name": "region", "attribute": "region"}])
    x = exchange("/search?region=eu")
    plain = dict(b0.build(x).attributes)
    with_rule = dict(b1.build(x).attributes)
    assert with_rule.pop("region") == "eu"
    assert with_rule == plain


def test_a_span_that_rules_wrote_to_has_no_shared_base(root):
    """Rules may not name an attribute spanprobe sets (config refuses it), and where rules
    ran the span is written as one dict anyway: no key of a connection's shared base can
    be written twice."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from spanprobe.otlp_wire import SpanEncoder

    b, _ = builder(root, [{"from": "header", "name": "X-Real-Host", "attribute": "app.edge"}])
    x = exchange("/a", headers={"x-real-host": "edge.example"})
    conn = x.conn
    spans = [b.build(x)]
    for target in ("/b", "/c"):
        nxt = exchange(target, headers={"x-real-host": "edge.example"})
        nxt.conn = conn
        spans.append(b.build(nxt))
    assert all(s.attr_base is None for s in spans)
    assert all(s.attributes["app.edge"] == "edge.example" for s in spans)
    assert SpanEncoder().encode(spans) == encode_spans(spans).SerializePartialToString()
