"""Unit tests of business attribute rules (spanprobe.attributes): validation of
`attributes.rules`, scoping, extraction from each source, typing, hashing and bounds."""

from __future__ import annotations

import hashlib
import json

import pytest

from spanprobe.attributes import RULE_KEYS, Extractor, Rule, compile_rules
from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.errors import ConfigError
from spanprobe.httpparse import Message
from spanprobe.privacy import Redactor

REDACTOR = Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))
OK = {"from": "header", "name": "X-Customer-Id", "attribute": "customer.id"}
SVC = "checkout"


def compile_one(rule: dict, **kw) -> Rule:
    [r] = compile_rules([rule], REDACTOR, **kw)
    return r


def rule_error(rule, where: str = "file /etc/spanprobe.yaml", redactor: Redactor = REDACTOR) -> str:
    """The message for a bad rule given second (after a good one)."""
    with pytest.raises(ConfigError) as info:
        compile_rules([OK, rule], redactor, where)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == 2
    assert msg.startswith("config error: attributes.rules[1]: "), msg
    assert msg.endswith(f" ({where})"), msg
    return msg


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request(headers=None, body: bytes | None = None, incomplete: bool = False) -> Message:
    m = Message(True, 1, 1, method="POST", target="/", headers=dict(headers or {}))
    if body is not None:
        m.body = bytearray(body)
    m.body_incomplete = incomplete
    return m


def response(headers=None, body: bytes | None = None, incomplete: bool = False) -> Message:
    m = Message(False, 2, 1, status=200, headers=dict(headers or {}))
    if body is not None:
        m.body = bytearray(body)
    m.body_incomplete = incomplete
    return m


def run(rules: list[dict], *, req=None, resp=None, path="/", query="", service=SVC,
        ex: Extractor | None = None, **extractor_kw) -> tuple[dict, Extractor]:
    ex = ex or Extractor(compile_rules(rules, REDACTOR), **extractor_kw)
    attrs: dict = {}
    ex.apply(ex.rules, service, req if req is not None else request(), resp, path, query, attrs)
    return attrs, ex


def counts(ex: Extractor, **nonzero) -> dict:
    want = dict.fromkeys(ex.counts, 0)
    want.update(nonzero)
    return want


# ---------------------------------------------------------------- validation errors

def test_a_rule_that_is_not_a_mapping():
    msg = rule_error("customer.id")
    assert "a rule is a mapping like {from: header, name: X-Customer-Id, attribute: customer.id}" in msg
    assert "got 'customer.id'" in msg


def test_unknown_key_lists_the_keys_a_rule_has():
    msg = rule_error(OK | {"atribute": "x"})
    assert msg == ("config error: attributes.rules[1]: unknown key 'atribute'; a rule has "
                   "attribute, body, exe, from, hash, max_length, name, path, port, route, service, "
                   "type (file /etc/spanprobe.yaml)")


def test_unknown_keys_of_mixed_types_are_a_config_error():
    # YAML keys can be numbers: sorting them with strings must not crash
    msg = rule_error(OK | {1: "x", "zz": 2})
    assert "unknown key 1;" in msg


@pytest.mark.parametrize("source", [None, "cookie", "body", "Header", 1])
def test_bad_from(source):
    rule = dict(OK)
    if source is None:
        del rule["from"]
    else:
        rule["from"] = source
    msg = rule_error(rule)
    assert f"from: {source!r} is not one of header, response_header, path, query, json_body" in msg


@pytest.mark.parametrize("typ", ["integer", "str", "number", None, 1])
def test_bad_type(typ):
    msg = rule_error(OK | {"type": typ})
    assert f"type: {typ!r} is not one of string, int, float, bool" in msg


@pytest.mark.parametrize("hashed", ["md5", "SHA256", True, "", 1])
def test_bad_hash(hashed):
    msg = rule_error(OK | {"hash": hashed})
    assert f"hash: {hashed!r}: only sha256 is supported" in msg


@pytest.mark.parametrize("typ", ["int", "float", "bool"])
def test_hash_with_a_non_string_type(typ):
    msg = rule_error(OK | {"hash": "sha256", "type": typ})
    assert "a hashed value is a string: drop type or hash" in msg


@pytest.mark.parametrize("attribute", [None, "", "1abc", "a b", "a/b", "ä", 5, ["a"]])
def test_bad_or_missing_attribute(attribute):
    rule = dict(OK)
    if attribute is None:
        del rule["attribute"]
    else:
        rule["attribute"] = attribute
    msg = rule_error(rule)
    assert f"attribute: {attribute!r} must be an attribute name like customer.id" in msg


@pytest.mark.parametrize("source", ["header", "response_header", "query", "json_body"])
def test_every_source_but_path_needs_an_attribute(source):
    rule = {"from": source, "name": "x", "path": "$.x"}
    assert "attribute: None must be an attribute name" in rule_error(rule)


@pytest.mark.parametrize("value", [0, 4097, -1, "10", 1.5, True, False, [10]])
def test_bad_max_length(value):
    msg = rule_error(OK | {"max_length": value})
    assert f"max_length: {value!r} must be an integer 1..4096" in msg


@pytest.mark.parametrize("value", [1, 4096])
def test_max_length_bounds_are_inclusive(value):
    assert compile_one(OK | {"max_length": value}).max_length == value


@pytest.mark.parametrize("key, value, shown", [
    ("service", 5, "service: 5 must be str"),
    ("service", ["a", 2], "service: 2 must be str"),
    ("service", True, "service: True must be str"),
    ("service", {"a": 1}, "service: {'a': 1} must be str"),
    ("port", "8000", "port: '8000' must be int"),
    ("port", [8000, "x"], "port: 'x' must be int"),
    ("port", True, "port: True must be int"),
    ("port", 80.0, "port: 80.0 must be int"),
    ("exe", 1, "exe: 1 must be str"),
    ("exe", ["gunicorn", None], "exe: None must be str"),
])
def test_bad_scoping_values(key, value, shown):
    assert shown in rule_error(OK | {key: value})


@pytest.mark.parametrize("source, what", [("header", "header"), ("response_header", "header"),
                                          ("query", "parameter")])
@pytest.mark.parametrize("name", [None, "", 5])
def test_name_is_required(source, what, name):
    rule = {"from": source, "attribute": "a"}
    if name is not None:
        rule["name"] = name
    msg = rule_error(rule)
    assert f"from: {source} needs name: the {what} to read" in msg


@pytest.mark.parametrize("source, name", [
    ("header", "Cookie"), ("header", "authorization"), ("header", "X-API-Key"),
    ("response_header", "Set-Cookie"), ("response_header", "X-Auth-Token"),
])
def test_a_denied_header_needs_a_hash(source, name):
    msg = rule_error({"from": source, "name": name, "attribute": "a"})
    assert (f"header {name} is denied by privacy.redact_headers; add hash: sha256 to export a "
            f"hash of it") in msg
    r = compile_one({"from": source, "name": name, "attribute": "a", "hash": "sha256"})
    assert r.hash is True and r.name == name.lower()


@pytest.mark.parametrize("name", ["token", "access_token", "code", "apiKey", "my_password",
                                  "SessionId", "x-amz-signature", "jwt", "pass%77ord"])
def test_a_secret_looking_query_parameter_needs_a_hash(name):
    msg = rule_error({"from": "query", "name": name, "attribute": "a"})
    assert f"query parameter {name} looks secret; add hash: sha256 to export a hash of it" in msg
    assert compile_one({"from": "query", "name": name, "attribute": "a", "hash": "sha256"}).hash


@pytest.mark.parametrize("path, field", [
    ("$.password", "password"), ("$.user.api_key", "api_key"), ("$.auth.x", "auth"),
    ("$.items[0].secret", "secret"), ("$['session id']", "session id"),
    ("$.a.refreshToken", "refreshToken"),
])
def test_a_secret_looking_json_field_needs_a_hash(path, field):
    rule = {"from": "json_body", "path": path, "attribute": "a"}
    assert f"JSON field {field} looks secret; add hash: sha256" in rule_error(rule)
    assert compile_one(rule | {"hash": "sha256"}).hash


@pytest.mark.parametrize("route, param", [("/s/{session_id}", "session_id"),
                                          ("/u/{id}/k/{apikey}", "apikey"),
                                          ("/t/{token:path}", "token")])
def test_a_secret_looking_path_parameter_needs_a_hash(route, param):
    rule = {"from": "path", "route": route}
    assert f"path parameter {param} looks secret; add hash: sha256" in rule_error(rule)
    assert compile_one(rule | {"hash": "sha256"}).hash


@pytest.mark.parametrize("route", [None, "", "customers/{id}", "/customers", 5, ["/a/{b}"]])
def test_path_needs_a_route_template(route):
    rule = {"from": "path"}
    if route is not None:
        rule["route"] = route
    msg = rule_error(rule)
    assert f"from: path needs route: a template like /customers/{{customer_id}}, got {route!r}" in msg


@pytest.mark.parametrize("route", ["/a/{", "/a/{}", "/a/{user-id}", "/a/{ id }", "/a/x{id}"])
def test_a_route_whose_braces_name_no_parameter_is_an_error(route):
    # such a rule would compile to a literal route that sets nothing
    msg = rule_error({"from": "path", "route": route})
    assert f"route: {route!r} has no parameter; name one like {{customer_id}}" in msg


@pytest.mark.parametrize("path", [None, "", "order.id", "$", "$.", "$..a", "$.a.", "$[x]",
                                  "$[-1]", "$['']", "$.1a", "$[0", "$.a b", "$[\"a\"]", "$.a[*]", 5])
def test_bad_jsonpath(path):
    rule = {"from": "json_body", "attribute": "a"}
    if path is not None:
        rule["path"] = path
    msg = rule_error(rule)
    assert f"path: {path!r} must be a JSONPath like $.order.id or $.items[0].sku" in msg


@pytest.mark.parametrize("body", ["both", "Request", None, 1])
def test_bad_body(body):
    msg = rule_error({"from": "json_body", "path": "$.a", "attribute": "a", "body": body})
    assert f"body: {body!r} is request or response" in msg


def test_the_first_bad_rule_is_the_one_named():
    with pytest.raises(ConfigError) as info:
        compile_rules([OK, OK, {"from": "nope"}, {"from": "also bad"}], REDACTOR)
    assert str(info.value).startswith("config error: attributes.rules[2]: from: 'nope'")
    assert str(info.value).endswith("(config)")


# ---------------------------------------------------------------- valid rules

def test_a_header_rule_compiles():
    r = compile_one(OK)
    assert r == Rule(index=0, source="header", attribute="customer.id", name="x-customer-id")
    assert r.label == "attributes.rules[0]"
    assert r.type == "string" and r.hash is False and r.max_length is None
    assert r.services == r.ports == r.exes == frozenset()


def test_a_query_rule_keeps_the_name_case():
    r = compile_one({"from": "query", "name": "Region", "attribute": "region", "type": "string"})
    assert (r.source, r.name, r.attribute) == ("query", "Region", "region")


def test_a_path_rule_compiles_its_route():
    r = compile_one({"from": "path", "route": "/customers/{customer_id}/orders/{order_id:int}",
                     "type": "int"})
    assert r.attribute is None
    assert r.route.text == "/customers/{customer_id}/orders/{order_id:int}"
    assert r.route.names == (None, "customer_id", None, "order_id")
    assert r.type == "int"


@pytest.mark.parametrize("path, steps", [
    ("$.a", ("a",)),
    ("$.a.b[0]['c d']", ("a", "b", 0, "c d")),
    ("$.order.id", ("order", "id")),
    ("$.items[0].sku", ("items", 0, "sku")),
    ("$['odd name']", ("odd name",)),
    ("$['x.y'][12].z-w", ("x.y", 12, "z-w")),
    ("$[3][0]", (3, 0)),
    ("$._under_score.A9", ("_under_score", "A9")),
    ("$['a[0]']", ("a[0]",)),
])
def test_jsonpath_steps(path, steps):
    r = compile_one({"from": "json_body", "path": path, "attribute": "x"})
    assert r.steps == steps
    assert r.body == "request"


def test_json_rule_on_the_response_body():
    r = compile_one({"from": "json_body", "path": "$.id", "attribute": "x", "body": "response"})
    assert r.body == "response"


def test_scoping_values_one_or_a_list():
    r = compile_one(OK | {"service": "checkout", "port": 8000, "exe": "gunicorn"})
    assert (r.services, r.ports, r.exes) == ({"checkout"}, {8000}, {"gunicorn"})
    r = compile_one(OK | {"service": ["a", "b"], "port": [80, 8080], "exe": ["x", "y"]})
    assert (r.services, r.ports, r.exes) == ({"a", "b"}, {80, 8080}, {"x", "y"})


def test_every_rule_key_is_accepted():
    rule = {"from": "json_body", "name": "n", "attribute": "a", "route": "/r/{x}", "path": "$.a",
            "type": "string", "hash": "sha256", "body": "response", "service": "s", "port": 1,
            "exe": "e", "max_length": 10}
    assert set(rule) == RULE_KEYS
    r = compile_one(rule)
    assert (r.source, r.steps, r.body, r.hash, r.max_length) == ("json_body", ("a",), "response", True, 10)


def test_indexes_follow_the_list():
    rules = compile_rules([OK, {"from": "query", "name": "q", "attribute": "q"}], REDACTOR)
    assert [r.index for r in rules] == [0, 1]
    assert compile_rules([], REDACTOR) == []


def test_privacy_lists_are_the_ones_given():
    open_redactor = Redactor([], [])
    [r] = compile_rules([{"from": "header", "name": "Cookie", "attribute": "c"}], open_redactor)
    assert r.name == "cookie"
    strict = Redactor(["x-customer-id"], ["region"])
    with pytest.raises(ConfigError, match=r"rules\[0\]: header X-Customer-Id is denied"):
        compile_rules([OK], strict)
    with pytest.raises(ConfigError, match=r"rules\[0\]: query parameter region looks secret"):
        compile_rules([{"from": "query", "name": "region", "attribute": "r"}], strict)
    assert compile_rules([{"from": "query", "name": "region", "attribute": "r"}], REDACTOR)


# ---------------------------------------------------------------- scoping, helpers

def test_for_service_scopes_by_service_port_and_exe():
    rules = compile_rules([
        OK,
        OK | {"service": "checkout"},
        OK | {"port": [8000, 8001]},
        OK | {"exe": ["gunicorn", "uvicorn"]},
        OK | {"service": "checkout", "port": 8000, "exe": "gunicorn"},
    ], REDACTOR)
    ex = Extractor(rules)

    def idx(service, port, names):
        return [r.index for r in ex.for_service(service, port, names)]

    assert idx("checkout", 8000, {"gunicorn"}) == [0, 1, 2, 3, 4]
    assert idx("cart", 8000, {"gunicorn"}) == [0, 2, 3]
    assert idx("checkout", 9000, {"gunicorn"}) == [0, 1, 3]
    assert idx("checkout", None, {"gunicorn"}) == [0, 1, 3]     # a client connection: no port
    assert idx("checkout", 8001, {"python3", "uvicorn"}) == [0, 1, 2, 3]
    assert idx("checkout", 8000, set()) == [0, 1, 2]
    assert idx("other", 1, {"x"}) == [0]


def test_body_bytes_tells_which_bodies_rules_need():
    def need(*rules):
        return Extractor([]).body_bytes(compile_rules(list(rules), REDACTOR))

    req_rule = {"from": "json_body", "path": "$.a", "attribute": "a"}
    resp_rule = req_rule | {"body": "response"}
    assert need() == (False, False)
    assert need(OK, {"from": "path", "route": "/a/{b}"}) == (False, False)
    assert need(req_rule) == (True, False)
    assert need(OK, resp_rule) == (False, True)
    assert need(resp_rule, req_rule) == (True, True)


def test_route_for_takes_the_first_matching_path_rule():
    rules = compile_rules([
        OK,
        {"from": "path", "route": "/customers/{customer_id}/orders/{order_id}"},
        {"from": "path", "route": "/customers/{cid}"},
        {"from": "path", "route": "/files/{rest:path}"},
        {"from": "path", "route": "/{anything}"},
    ], REDACTOR)
    ex = Extractor(rules)
    assert ex.route_for(rules, "/customers/7/orders/9") == "/customers/{customer_id}/orders/{order_id}"
    assert ex.route_for(rules, "/customers/7/orders/9/") == "/customers/{customer_id}/orders/{order_id}"
    assert ex.route_for(rules, "/customers/7") == "/customers/{cid}"
    assert ex.route_for(rules, "/files/a/b/c.txt") == "/files/{rest:path}"
    assert ex.route_for(rules, "/health") == "/{anything}"
    assert ex.route_for(rules, "/customers/7/orders") is None
    assert ex.route_for(rules, "/") is None
    assert ex.route_for(rules[:1], "/customers/7") is None       # no path rules


# ---------------------------------------------------------------- each source

def test_header_rule():
    attrs, ex = run([OK], req=request({"x-customer-id": "c-42", "other": "x"}))
    assert attrs == {"customer.id": "c-42"}
    assert ex.counts == counts(ex, attributes_set=1)


def test_missing_header_sets_nothing_and_counts_nothing():
    attrs, ex = run([OK], req=request({"x-other": "1"}))
    assert attrs == {}
    assert ex.counts == counts(ex)


def test_header_rule_does_not_read_the_response():
    attrs, _ = run([OK], req=request(), resp=response({"x-customer-id": "from-response"}))
    assert attrs == {}


def test_response_header_rule():
    rule = {"from": "response_header", "name": "X-Order-Status", "attribute": "order.status"}
    attrs, ex = run([rule], req=request({"x-order-status": "from-request"}),
                    resp=response({"x-order-status": "shipped"}))
    assert attrs == {"order.status": "shipped"}
    attrs, ex = run([rule], req=request({"x-order-status": "from-request"}), resp=None)
    assert attrs == {} and ex.counts == counts(ex)


@pytest.mark.parametrize("query, value", [
    ("region=eu-west", "eu-west"),
    ("a=1&region=eu-west&b=2", "eu-west"),
    ("region=first&region=second", "first"),
    ("region=a%20b+c%2Fd", "a b c/d"),
    ("region=", ""),
    ("region", ""),
    ("reg%69on=x", "x"),
    ("region=%E6%97%A5", "日"),
])
def test_query_rule(query, value):
    attrs, ex = run([{"from": "query", "name": "region", "attribute": "region"}], query=query)
    assert attrs == {"region": value}
    assert ex.counts == counts(ex, attributes_set=1)


@pytest.mark.parametrize("query", ["", "Region=x", "regions=x", "x=region", "a=1&b=2"])
def test_query_rule_without_the_parameter(query):
    attrs, ex = run([{"from": "query", "name": "region", "attribute": "region"}], query=query)
    assert attrs == {} and ex.counts == counts(ex)


def test_path_rule_sets_each_parameter():
    rule = {"from": "path", "route": "/customers/{customer_id}/orders/{order_id}"}
    attrs, ex = run([rule], path="/customers/c9/orders/77")
    assert attrs == {"customer_id": "c9", "order_id": "77"}
    assert ex.counts == counts(ex, attributes_set=2)
    attrs, _ = run([rule], path="/customers/c9/orders/77/")
    assert attrs == {"customer_id": "c9", "order_id": "77"}


@pytest.mark.parametrize("path", ["/customers/c9", "/customers/c9/orders", "/customers/c9/orders/77/x",
                                  "/", "/shops/c9/orders/77"])
def test_path_rule_that_does_not_match(path):
    attrs, ex = run([{"from": "path", "route": "/customers/{customer_id}/orders/{order_id}"}], path=path)
    assert attrs == {} and ex.counts == counts(ex)


def test_path_rule_greedy_parameter():
    attrs, _ = run([{"from": "path", "route": "/files/{rest:path}"}], path="/files/a/b/c.txt")
    assert attrs == {"rest": "a/b/c.txt"}


def test_path_rule_types_every_parameter():
    rule = {"from": "path", "route": "/customers/{customer_id}/orders/{order_id}", "type": "int"}
    attrs, ex = run([rule], path="/customers/c9/orders/77")
    assert attrs == {"order_id": 77}
    assert ex.counts == counts(ex, attributes_set=1, attributes_type_dropped=1)


def test_json_body_rule_request():
    rule = {"from": "json_body", "path": "$.order.id", "attribute": "order.id", "type": "int"}
    body = b'{"order": {"id": 123, "lines": [{"sku": "A"}]}}'
    attrs, ex = run([rule], req=request(body=body))
    assert attrs == {"order.id": 123}
    assert type(attrs["order.id"]) is int
    assert ex.counts == counts(ex, attributes_set=1)


def test_json_body_rule_response_reads_only_the_response():
    rule = {"from": "json_body", "path": "$.id", "attribute": "id", "body": "response"}
    attrs, _ = run([rule], req=request(body=b'{"id": "req"}'), resp=response(body=b'{"id": "resp"}'))
    assert attrs == {"id": "resp"}
    attrs, ex = run([rule], req=request(body=b'{"id": "req"}'), resp=None)
    assert attrs == {} and ex.counts == counts(ex)
    req_rule = rule | {"body": "request"}
    attrs, _ = run([req_rule], req=request(body=b'{"id": "req"}'), resp=response(body=b'{"id": "resp"}'))
    assert attrs == {"id": "req"}


def test_json_body_rule_array_index_and_odd_keys():
    rules = [{"from": "json_body", "path": "$.items[1].sku", "attribute": "sku"},
             {"from": "json_body", "path": "$['odd name'][0]", "attribute": "odd"}]
    attrs, _ = run(rules, req=request(body=b'{"items": [{"sku": "a"}, {"sku": "b"}], "odd name": [5]}'))
    assert attrs == {"sku": "b", "odd": "5"}


def test_json_body_without_a_kept_body_is_skipped():
    rule = {"from": "json_body", "path": "$.a", "attribute": "a"}
    attrs, ex = run([rule], req=request(body=None, incomplete=True))
    assert attrs == {} and ex.counts == counts(ex)


def test_json_null_and_missing_fields_set_nothing():
    rule = {"from": "json_body", "path": "$.a", "attribute": "a"}
    for body in (b'{"a": null}', b'{"b": 1}', b"[1]", b"not json", b""):
        attrs, ex = run([rule], req=request(body=body))
        assert attrs == {} and ex.counts == counts(ex), body


def test_a_field_beyond_the_capture_is_counted():
    rule = {"from": "json_body", "path": "$.order.id", "attribute": "order.id"}
    cut = b'{"padding": "pppp", "order": {"i'
    attrs, ex = run([rule], req=request(body=cut, incomplete=True))
    assert attrs == {}
    assert ex.counts == counts(ex, attributes_beyond_capture=1)
    # the same prefix when the body really ended there: broken JSON, not beyond capture
    attrs, ex = run([rule], req=request(body=cut, incomplete=False))
    assert attrs == {} and ex.counts == counts(ex)


def test_a_field_before_the_cut_of_an_incomplete_body_is_set():
    rule = {"from": "json_body", "path": "$.order.id", "attribute": "order.id"}
    attrs, ex = run([rule], req=request(body=b'{"order": {"id": "o-1"}, "padding": "pp', incomplete=True))
    assert attrs == {"order.id": "o-1"}
    assert ex.counts == counts(ex, attributes_set=1)


def test_a_number_cut_by_the_end_of_an_incomplete_body_is_beyond_capture():
    rule = {"from": "json_body", "path": "$.n", "attribute": "n", "type": "int"}
    attrs, ex = run([rule], req=request(body=b'{"n": 12', incomplete=True))   # maybe 1234
    assert attrs == {}
    assert ex.counts == counts(ex, attributes_beyond_capture=1)


def test_response_body_beyond_capture():
    rule = {"from": "json_body", "path": "$.status", "attribute": "status", "body": "response"}
    attrs, ex = run([rule], resp=response(body=b'{"x": 1, "sta', incomplete=True))
    assert attrs == {} and ex.counts == counts(ex, attributes_beyond_capture=1)
    attrs, ex = run([rule], resp=response(body=b'{"x": 1, "status": "paid", "y', incomplete=True))
    assert attrs == {"status": "paid"} and ex.counts == counts(ex, attributes_set=1)


def test_several_rules_together():
    rules = [
        OK,
        {"from": "query", "name": "region", "attribute": "region"},
        {"from": "path", "route": "/orders/{order_id}", "type": "int"},
        {"from": "json_body", "path": "$.total", "attribute": "order.total", "type": "float"},
        {"from": "response_header", "name": "X-Status", "attribute": "order.status"},
        {"from": "header", "name": "Authorization", "attribute": "auth.sha256", "hash": "sha256"},
    ]
    attrs, ex = run(rules, req=request({"x-customer-id": "c1", "authorization": "Bearer t"},
                                       body=b'{"total": 9.5}'),
                    resp=response({"x-status": "ok"}), path="/orders/5", query="region=eu")
    assert attrs == {"customer.id": "c1", "region": "eu", "order_id": 5, "order.total": 9.5,
                     "order.status": "ok", "auth.sha256": sha("Bearer t")}
    assert ex.counts == counts(ex, attributes_set=6)


# ---------------------------------------------------------------- type coercion

DROP = object()

COERCION = [
    # (type, JSON text of the value, expected)
    ("string", '"abc"', "abc"),
    ("string", '""', ""),
    ("string", "42", "42"),
    ("string", "-3.5", "-3.5"),
    ("string", "true", "true"),
    ("string", "false", "false"),
    ("string", '{"a": 1}', DROP),
    ("string", "[1]", DROP),
    ("string", "[]", DROP),
    ("string", '"\\ud800"', DROP),          # a lone surrogate cannot be exported as UTF-8
    ("string", '"\\ud83d\\ude00"', "😀"),
    ("int", "42", 42),
    ("int", "-7", -7),
    ("int", '"42"', 42),
    ("int", '" 42 "', 42),
    ("int", '"+7"', 7),
    ("int", '"-0"', 0),
    ("int", "3.0", 3),
    ("int", "3e2", 300),
    ("int", "3.5", DROP),
    ("int", '"3.0"', DROP),
    ("int", '"abc"', DROP),
    ("int", '""', DROP),
    ("int", "true", DROP),
    ("int", "false", DROP),
    ("int", '"1_000"', DROP),               # Python's int() accepts it, a header should not
    ("int", '"\u0663"', DROP),              # ARABIC-INDIC DIGIT THREE
    ("int", '"0x10"', DROP),
    ("int", "9223372036854775807", 2**63 - 1),
    ("int", "-9223372036854775808", -2**63),
    ("int", "9223372036854775808", DROP),   # beyond int64: the OTLP export would fail
    ("int", '"-9223372036854775809"', DROP),
    ("int", "1e300", DROP),
    ("int", '{"a": 1}', DROP),
    ("int", "[1]", DROP),
    ("float", "1.5", 1.5),
    ("float", "2", 2.0),
    ("float", '"2.5"', 2.5),
    ("float", '" -0.5 "', -0.5),
    ("float", '"1e3"', 1000.0),
    ("float", '".5"', 0.5),
    ("float", '"5."', 5.0),
    ("float", "true", DROP),
    ("float", '"nan"', DROP),
    ("float", '"inf"', DROP),
    ("float", '"-Infinity"', DROP),
    ("float", '"1_0.5"', DROP),
    ("float", '"abc"', DROP),
    ("float", '""', DROP),
    ("float", "1e400", DROP),               # inf
    ("float", "1" + "0" * 400, DROP),       # too big for a float
    ("float", "[1.0]", DROP),
    ("float", "{}", DROP),
    ("bool", "true", True),
    ("bool", "false", False),
    ("bool", '"true"', True),
    ("bool", '"TRUE"', True),
    ("bool", '" yes "', True),
    ("bool", '"1"', True),
    ("bool", "1", True),
    ("bool", '"false"', False),
    ("bool", '"No"', False),
    ("bool", '"0"', False),
    ("bool", "0", False),
    ("bool", "2", DROP),
    ("bool", "1.0", DROP),
    ("bool", '"maybe"', DROP),
    ("bool", '""', DROP),
    ("bool", "[]", DROP),
    ("bool", '{"a": true}', DROP),
]


@pytest.mark.parametrize("typ, text, want", COERCION)
def test_type_coercion_of_json_values(typ, text, want):
    rule = {"from": "json_body", "path": "$.v", "attribute": "v", "type": typ}
    attrs, ex = run([rule], req=request(body=('{"v": ' + text + "}").encode()))
    if want is DROP:
        assert attrs == {}
        assert ex.counts == counts(ex, attributes_type_dropped=1)
    else:
        assert attrs == {"v": want}
        assert type(attrs["v"]) is type(want)
        assert ex.counts == counts(ex, attributes_set=1)


@pytest.mark.parametrize("typ, header, want", [
    ("string", "Abc Def", "Abc Def"),
    ("int", "123", 123),
    ("int", "12a", DROP),
    ("float", "0.25", 0.25),
    ("float", "NaN", DROP),
    ("bool", "Yes", True),
    ("bool", "on", DROP),
])
def test_type_coercion_of_header_text(typ, header, want):
    attrs, ex = run([OK | {"type": typ}], req=request({"x-customer-id": header}))
    if want is DROP:
        assert attrs == {} and ex.counts == counts(ex, attributes_type_dropped=1)
    else:
        assert attrs == {"customer.id": want} and type(attrs["customer.id"]) is type(want)


# ---------------------------------------------------------------- hashing

def test_hash_of_a_denied_header_is_the_sha256_hex_of_the_raw_value():
    rule = {"from": "header", "name": "Authorization", "attribute": "auth.sha256", "hash": "sha256"}
    attrs, ex = run([rule], req=request({"authorization": "Bearer abc.def"}))
    assert attrs == {"auth.sha256": sha("Bearer abc.def")}
    assert len(attrs["auth.sha256"]) == 64 and set(attrs["auth.sha256"]) <= set("0123456789abcdef")
    assert ex.counts == counts(ex, attributes_set=1)


def test_hash_of_a_known_value():
    rule = {"from": "query", "name": "token", "attribute": "t", "hash": "sha256"}
    attrs, _ = run([rule], query="token=abc")
    assert attrs == {"t": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_hash_of_a_query_value_reads_the_decoded_parameter():
    rule = {"from": "query", "name": "token", "attribute": "t", "hash": "sha256"}
    attrs, _ = run([rule], query="a=1&token=s%20e+cret")
    assert attrs == {"t": sha("s e cret")}


def test_hash_of_path_parameters():
    rule = {"from": "path", "route": "/s/{session_id}/u/{user}", "hash": "sha256"}
    attrs, _ = run([rule], path="/s/xyz/u/bob")
    assert attrs == {"session_id": sha("xyz"), "user": sha("bob")}


@pytest.mark.parametrize("text, hashed", [
    ('"secret"', "secret"),
    ("42", "42"),
    ("1.5", "1.5"),
    ("true", "true"),           # as JSON writes it, not Python's True
    ("false", "false"),
    ('"日本"', "日本"),
])
def test_hash_of_json_values(text, hashed):
    rule = {"from": "json_body", "path": "$.password", "attribute": "pw", "hash": "sha256"}
    attrs, ex = run([rule], req=request(body=('{"password": ' + text + "}").encode()))
    assert attrs == {"pw": sha(hashed)}
    assert ex.counts == counts(ex, attributes_set=1)


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]", '"\\udc00"'])
def test_hash_of_a_json_object_or_array_is_dropped(text):
    rule = {"from": "json_body", "path": "$.password", "attribute": "pw", "hash": "sha256"}
    attrs, ex = run([rule], req=request(body=('{"password": ' + text + "}").encode()))
    assert attrs == {}
    assert ex.counts == counts(ex, attributes_type_dropped=1)


def test_hash_then_max_length():
    rule = {"from": "header", "name": "Cookie", "attribute": "c", "hash": "sha256", "max_length": 16}
    attrs, ex = run([rule], req=request({"cookie": "sid=1"}))
    assert attrs == {"c": sha("sid=1")[:16]}
    assert ex.counts == counts(ex, attributes_set=1, attributes_truncated=1)


# ---------------------------------------------------------------- length bounds

def test_max_length_per_rule():
    attrs, ex = run([OK | {"max_length": 4}], req=request({"x-customer-id": "abcdefghij"}))
    assert attrs == {"customer.id": "abcd"}
    assert ex.counts == counts(ex, attributes_set=1, attributes_truncated=1)


def test_max_value_length_for_every_rule():
    attrs, ex = run([OK], req=request({"x-customer-id": "abcdefghij"}), max_value_length=5)
    assert attrs == {"customer.id": "abcde"}
    assert ex.counts == counts(ex, attributes_set=1, attributes_truncated=1)


def test_rule_max_length_wins_over_max_value_length():
    attrs, ex = run([OK | {"max_length": 8}], req=request({"x-customer-id": "abcdefghij"}),
                    max_value_length=4)
    assert attrs == {"customer.id": "abcdefgh"}
    assert ex.counts["attributes_truncated"] == 1


def test_a_value_at_the_limit_is_not_truncated():
    attrs, ex = run([OK | {"max_length": 4}], req=request({"x-customer-id": "abcd"}))
    assert attrs == {"customer.id": "abcd"}
    assert ex.counts == counts(ex, attributes_set=1)


def test_max_length_counts_characters_not_bytes():
    attrs, _ = run([OK | {"max_length": 2}],
                   req=request(body=None, headers={"x-customer-id": "日本語"}))
    assert attrs == {"customer.id": "日本"}


def test_numbers_are_not_truncated():
    rule = {"from": "json_body", "path": "$.n", "attribute": "n", "type": "int", "max_length": 2}
    attrs, ex = run([rule], req=request(body=b'{"n": 123456}'))
    assert attrs == {"n": 123456}
    assert ex.counts == counts(ex, attributes_set=1)


def test_default_max_value_length_is_256():
    attrs, ex = run([OK], req=request({"x-customer-id": "x" * 300}))
    assert attrs == {"customer.id": "x" * 256}
    assert ex.counts["attributes_truncated"] == 1


# ---------------------------------------------------------------- cardinality

def test_cardinality_is_capped_per_service_and_attribute():
    ex = Extractor(compile_rules([OK, {"from": "query", "name": "q", "attribute": "q"}], REDACTOR),
                   max_cardinality=2)

    def one(value, service=SVC, q=None):
        attrs: dict = {}
        ex.apply(ex.rules, service, request({"x-customer-id": value}), None, "/",
                 f"q={q}" if q else "", attrs)
        return attrs

    assert one("a") == {"customer.id": "a"}
    assert one("b") == {"customer.id": "b"}
    assert one("c") == {}                                   # a third distinct value
    assert ex.counts == counts(ex, attributes_set=2, attributes_cardinality_dropped=1)
    assert one("a") == {"customer.id": "a"}                 # already seen: still allowed
    assert one("b") == {"customer.id": "b"}
    assert one("d") == {}
    assert ex.counts == counts(ex, attributes_set=4, attributes_cardinality_dropped=2)
    assert one("c", service="cart") == {"customer.id": "c"}     # another service
    assert one("z", q="q1") == {"q": "q1"}                      # another attribute
    assert ex.seen == {(SVC, "customer.id"): {"a", "b"}, ("cart", "customer.id"): {"c"},
                       (SVC, "q"): {"q1"}}


def test_cardinality_counts_truncated_values():
    ex = Extractor(compile_rules([OK | {"max_length": 3}], REDACTOR), max_cardinality=1)
    for value in ("abcX", "abcY", "abcZ"):
        attrs: dict = {}
        ex.apply(ex.rules, SVC, request({"x-customer-id": value}), None, "/", "", attrs)
        assert attrs == {"customer.id": "abc"}
    assert ex.counts == counts(ex, attributes_set=3, attributes_truncated=3)


def test_cardinality_of_path_parameters():
    rule = {"from": "path", "route": "/users/{user_id}"}
    ex = Extractor(compile_rules([rule], REDACTOR), max_cardinality=3)
    got = []
    for i in range(6):
        attrs: dict = {}
        ex.apply(ex.rules, SVC, request(), None, f"/users/{i}", "", attrs)
        got.append(attrs.get("user_id"))
    assert got == ["0", "1", "2", None, None, None]
    assert ex.counts == counts(ex, attributes_set=3, attributes_cardinality_dropped=3)


def test_default_bounds():
    ex = Extractor([])
    assert (ex.max_value_length, ex.max_cardinality) == (256, 1000)
    assert ex.counts == {"attributes_set": 0, "attributes_truncated": 0, "attributes_type_dropped": 0,
                         "attributes_cardinality_dropped": 0, "attributes_beyond_capture": 0}


def test_counts_are_per_extractor():
    a, b = Extractor([]), Extractor([])
    a.counts["attributes_set"] += 1
    assert b.counts["attributes_set"] == 0
    assert a.seen is not b.seen


def test_json_values_are_exactly_what_the_document_says():
    body = json.dumps({"s": "a\"b\\c\u00e9", "f": 0.1, "i": -5}).encode()
    rules = [{"from": "json_body", "path": "$.s", "attribute": "s"},
             {"from": "json_body", "path": "$.f", "attribute": "f", "type": "float"},
             {"from": "json_body", "path": "$.i", "attribute": "i", "type": "int"}]
    attrs, _ = run(rules, req=request(body=body))
    assert attrs == {"s": 'a"b\\cé', "f": 0.1, "i": -5}


@pytest.mark.parametrize("name", ["url.path", "http.route", "server.port", "error.type", "spanprobe.x"])
def test_rule_cannot_overwrite_what_the_agent_sets(name):
    from spanprobe.attributes import compile_rules
    from spanprobe.errors import ConfigError
    from spanprobe.privacy import Redactor

    with pytest.raises(ConfigError) as exc:
        compile_rules([{"from": "header", "name": "X-A", "attribute": name}], Redactor([], []))
    assert "attributes.rules[0]" in str(exc.value) and "set by spanprobe itself" in str(exc.value)
    assert "\n" not in str(exc.value)
