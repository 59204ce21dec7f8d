"""Issue 17, item 4, end to end: the agent's OTEL_TRACES_SAMPLER[_ARG] decide which requests
become spans: a ratio over a few hundred new traces, parent-based for incoming parents."""

from __future__ import annotations

import os
import time

import requests

from tests.support.checks import uid
from tests.support.procs import Agent, App

RATIO, ROOTS, WITH_PARENT = 0.3, 300, 20


def test_a_parent_based_ratio_sampler_over_real_requests(tmp, receiver):
    app = App("stdlib-http-server", tmp, service="sampled")
    try:
        agent = Agent(["--port", str(app.port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                      tmp, env={"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                "OTEL_TRACES_SAMPLER_ARG": str(RATIO)})
        base = uid()
        with requests.Session() as s:
            for i in range(ROOTS):
                assert s.get(f"{app.url}/users/{base + i}", timeout=10).status_code == 200
            for flags in ("01", "00"):
                for i in range(WITH_PARENT):
                    tp = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"
                    r = s.get(f"{app.url}/users/{base + ROOTS + i}?p={flags}", headers={"traceparent": tp},
                              timeout=10)
                    assert r.status_code == 200
        time.sleep(2)
        assert agent.stop() == 0
        mine = [sp for sp in receiver.spans if sp["resource"]["service.name"] == "sampled"]
        roots = [sp for sp in mine if "url.query" not in sp["attributes"]]
        children = {q: [sp for sp in mine if sp["attributes"].get("url.query") == f"p={q}"] for q in ("01", "00")}
        # 300 new traces at 0.3: 90 expected, sd 7.9; the bounds are beyond 4 sd
        assert 55 <= len(roots) <= 125, len(roots)
        assert len(children["01"]) == WITH_PARENT and children["00"] == []
        c = agent.final_counters()
        assert c["spans_unsampled"] == ROOTS - len(roots) + WITH_PARENT, c
        assert c["spans_exported"] == len(mine)
    finally:
        app.stop()
