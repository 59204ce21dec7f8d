"""Business attributes from headers, path, query and JSON bodies, with no code change,
received over OTLP; bounds, cardinality, types and privacy enforced."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

from tests.support.checks import server_spans, uid
from tests.support.procs import REPO, Agent, App, _env

RULES = [
    {"from": "header", "name": "X-Customer-Id", "attribute": "customer.id"},
    {"from": "header", "name": "X-Customer-Note", "attribute": "customer.note", "max_length": 16},
    {"from": "response_header", "name": "X-Order-Status", "attribute": "order.status"},
    {"from": "path", "route": "/customers/{customer_id}/orders/{order_id}"},
    {"from": "query", "name": "region", "attribute": "region"},
    {"from": "query", "name": "shard", "attribute": "shard", "type": "int"},
    {"from": "json_body", "path": "$.order.id", "attribute": "order.id", "type": "int"},
    {"from": "json_body", "path": "$.order.tier", "attribute": "order.tier", "service": "biz-fastapi"},
    {"from": "header", "name": "Authorization", "attribute": "auth.sha256", "hash": "sha256"},
]
MAX_CARDINALITY = 6
MAX_BODY = 1024


@pytest.fixture(scope="module")
def biz(tmp_path_factory, receiver):
    tmp = tmp_path_factory.mktemp("biz")
    apps = {"flask": App("flask-gunicorn-gthread", tmp, service="biz-flask"),
            "fastapi": App("fastapi-uvicorn", tmp, service="biz-fastapi")}
    cfg = tmp / "spanprobe.yaml"
    cfg.write_text(yaml.safe_dump({
        "select": {"ports": [a.port for a in apps.values()]},
        "export": {"otlp_endpoint": f"http://127.0.0.1:{receiver.grpc_port}"},
        "attributes": {"max_cardinality": MAX_CARDINALITY, "max_body_bytes": MAX_BODY, "rules": RULES},
        "stats_interval_s": 1,
    }))
    try:
        agent = Agent(["--config", str(cfg)], tmp)
        yield apps, agent
        assert agent.stop() == 0
    finally:
        for a in apps.values():
            a.stop()


def span_for(receiver, app_name, path, method="GET"):
    (s,) = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["resource"]["service.name"] == f"biz-{app_name}"
                             and s["attributes"].get("url.path") == path
                             and s["attributes"]["http.request.method"] == method)
    return s


@pytest.mark.parametrize("name", ["flask", "fastapi"])
def test_header_path_query_attributes(biz, receiver, name):
    apps, _ = biz
    cid, oid = f"c-{uid()}", uid()
    r = requests.get(f"{apps[name].url}/customers/{cid}/orders/{oid}?region=eu-west&shard=3", timeout=10,
                     headers={"X-Customer-Id": "cust-1", "X-Customer-Note": "x" * 40,
                              "Authorization": "Bearer t0k3n"})
    assert r.status_code == 200
    s = span_for(receiver, name, f"/customers/{cid}/orders/{oid}")
    a = s["attributes"]
    assert s["name"] == "GET /customers/{customer_id}/orders/{order_id}"
    assert a["http.route"] == "/customers/{customer_id}/orders/{order_id}"
    assert a["customer_id"] == cid and a["order_id"] == str(oid)
    assert a["customer.id"] == "cust-1"
    assert a["customer.note"] == "x" * 16                     # bounded
    assert a["region"] == "eu-west"
    assert a["shard"] == 3                                    # typed
    assert a["auth.sha256"] == hashlib.sha256(b"Bearer t0k3n").hexdigest()
    assert "t0k3n" not in json.dumps(s)


@pytest.mark.parametrize("name", ["flask", "fastapi"])
def test_json_body_and_response_header(biz, receiver, name):
    apps, _ = biz
    order = uid()
    r = requests.post(f"{apps[name].url}/orders?trace={order}", json={"order": {"id": order, "tier": "gold"}},
                      timeout=10)
    assert r.status_code == 201
    (s,) = receiver.wait_for(lambda s: s["resource"]["service.name"] == f"biz-{name}"
                             and s["attributes"].get("url.query") == f"trace={order}")
    a = s["attributes"]
    assert a["order.id"] == order
    assert a["order.status"] == "accepted"
    if name == "fastapi":
        assert a["order.tier"] == "gold"
    else:
        assert "order.tier" not in a                           # rule scoped to biz-fastapi


def raw_post(port: int, path: str, body: bytes, split_at: int | None = None) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if split_at is None:
            sock.sendall(head + body)
        else:
            sock.sendall(head + body[:split_at])
            time.sleep(0.1)                     # the app reads the body in two parts
            sock.sendall(body[split_at:])
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("name", ["flask", "fastapi"])
def test_body_split_across_two_writes(biz, receiver, name):
    apps, _ = biz
    order = uid()
    body = json.dumps({"note": "n" * 200, "order": {"id": order}}).encode()
    out = raw_post(apps[name].port, f"/orders?trace={order}", body, split_at=len(body) - 30)
    assert b" 201 " in out.split(b"\r\n", 1)[0]
    (s,) = receiver.wait_for(lambda s: s["resource"]["service.name"] == f"biz-{name}"
                             and s["attributes"].get("url.query") == f"trace={order}")
    assert s["attributes"]["order.id"] == order


def test_field_beyond_the_bound_is_absent_and_counted(biz, receiver):
    apps, agent = biz
    order = uid()
    body = json.dumps({"padding": "p" * (MAX_BODY + 500), "order": {"id": order}}).encode()
    out = raw_post(apps["flask"].port, f"/orders?trace={order}", body)
    assert b" 201 " in out.split(b"\r\n", 1)[0]
    (s,) = receiver.wait_for(lambda s: s["resource"]["service.name"] == "biz-flask"
                             and s["attributes"].get("url.query") == f"trace={order}")
    assert "order.id" not in s["attributes"]
    assert agent.wait_for(r'"attributes_beyond_capture": [1-9]', 40)


def test_wrong_type_is_dropped_and_counted(biz, receiver):
    apps, agent = biz
    tag = uid()
    requests.post(f"{apps['flask'].url}/orders?trace={tag}", json={"order": {"id": "not-a-number"}}, timeout=10)
    (s,) = receiver.wait_for(lambda s: s["resource"]["service.name"] == "biz-flask"
                             and s["attributes"].get("url.query") == f"trace={tag}")
    assert "order.id" not in s["attributes"]
    assert agent.wait_for(r'"attributes_type_dropped": [1-9]', 40)


def test_cardinality_is_capped(biz, receiver):
    apps, agent = biz
    base = uid()
    for i in range(MAX_CARDINALITY + 4):
        requests.get(f"{apps['fastapi'].url}/users/{base + i}?region=r{base + i}", timeout=10)
    spans = receiver.wait_for(lambda s: s["resource"]["service.name"] == "biz-fastapi"
                              and s["attributes"].get("url.path", "").startswith("/users/")
                              and base <= int(s["attributes"]["url.path"].rsplit("/", 1)[1]) < base + MAX_CARDINALITY + 4,
                              MAX_CARDINALITY + 4)
    regions = {s["attributes"]["region"] for s in spans if "region" in s["attributes"]}
    assert len(regions) <= MAX_CARDINALITY
    assert sum("region" not in s["attributes"] for s in spans) >= 4
    assert agent.wait_for(r'"attributes_cardinality_dropped": [1-9]', 40)


@pytest.mark.parametrize("rule, words", [
    ({"from": "cookie", "name": "a", "attribute": "b"}, ["attributes.rules[0]", "from"]),
    ({"from": "header", "name": "Authorization", "attribute": "auth"}, ["attributes.rules[0]", "hash: sha256"]),
    ({"from": "json_body", "path": "order.id", "attribute": "order.id"}, ["attributes.rules[0]", "JSONPath"]),
    ({"from": "query", "name": "token", "attribute": "t"}, ["attributes.rules[0]", "hash: sha256"]),
    ({"from": "header", "name": "X-A", "attribute": "a", "type": "decimal"}, ["attributes.rules[0]", "type"]),
])
def test_bad_rule_is_one_line_config_error(tmp, rule, words):
    cfg = tmp / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"attributes": {"rules": [rule]}}))
    r = subprocess.run([sys.executable, "-m", "spanprobe", "run", "--config", str(cfg)], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
