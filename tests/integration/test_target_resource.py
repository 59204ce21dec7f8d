"""Issue 17, item 1, end to end: services named and described by their own OpenTelemetry
variables, as their own SDK would name them, with the agent's settings under theirs."""

from __future__ import annotations

import requests

from tests.support.procs import Agent, App


def test_services_are_described_by_their_own_otel_variables(tmp, receiver):
    own = App("flask-gunicorn-sync", tmp, service="", env={
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=catalogue,service.namespace=shop,api.token=s3cret"})
    both = App("stdlib-http-server", tmp, service="checkout", env={
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=catalogue-2,team=pay%20ments"})
    try:
        agent = Agent(["--port", str(own.port), "--port", str(both.port),
                       "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp,
                      env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci,service.namespace=agent-ns"})
        assert requests.get(f"{own.url}/users/41", timeout=10).status_code == 200
        assert requests.get(f"{both.url}/users/42", timeout=10).status_code == 200
        # the receiver is the worker's, shared with the tests before: these apps' spans only
        (a,) = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("server.port") == own.port
                                 and s["attributes"].get("url.path") == "/users/41")
        (b,) = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("server.port") == both.port
                                 and s["attributes"].get("url.path") == "/users/42")
        # gunicorn, named by its OTEL_RESOURCE_ATTRIBUTES (it was "gunicorn" before issue 17)
        assert a["resource"]["service.name"] == "catalogue"
        assert a["resource"]["service.namespace"] == "shop"          # the target's value wins
        assert a["resource"]["deployment.environment.name"] == "ci"  # the agent's applies to all
        assert a["resource"]["api.token"] == "REDACTED"              # never leaves the host
        assert a["resource"]["process.executable.name"].startswith("python")
        # OTEL_SERVICE_NAME beats service.name in the attributes; values percent-decoded
        assert b["resource"]["service.name"] == "checkout"
        assert b["resource"]["team"] == "pay ments"
        assert b["resource"]["service.namespace"] == "agent-ns"
        assert agent.stop() == 0
        counters = agent.final_counters()
        assert counters["target_resource_values_redacted"] == 1, counters
        assert counters["target_resource_pairs_skipped"] == 0, counters
    finally:
        own.stop()
        both.stop()
