"""Issue 17, item 1: a target's own OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, parsed by
the SDK's rules (checked against the SDK itself), bounded, counted, and laid over what the
agent derives and over the agent's own settings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from opentelemetry.sdk import resources as sdk_resources

from spanprobe import target_resource as tr
from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.discovery import ProcessRegistry
from spanprobe.privacy import REDACTED, Redactor
from spanprobe.procfs import SysRoot
from spanprobe.routes import RouteMatcher
from spanprobe.spans import SpanBuilder
from spanprobe.clock import MonotonicToWall

RA, SN = "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"


def sdk_says(env: dict[str, str]) -> dict[str, str]:
    """The SDK's own answer, run in a subprocess-free way: its detector on os.environ."""
    saved = {k: os.environ.get(k) for k in (RA, SN)}
    try:
        for k in (RA, SN):
            os.environ.pop(k, None)
        os.environ.update(env)
        return dict(sdk_resources.OTELResourceDetector().detect().attributes)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("env", [
    {RA: "service.name=catalogue,service.namespace=shop"},
    {RA: " service.name = cat alogue , team=a=b "},                 # stripped; "=" in a value
    {RA: "note=caf%C3%A9%2C%20ok,bad%zz=x%zz"},                      # percent-decoding, bad escapes kept
    {RA: "a=1,,b=2,nopair,c="},                                      # empty item and pair without "=" skipped
    {RA: "service.name=catalogue", SN: "checkout"},                 # OTEL_SERVICE_NAME wins
    {SN: "checkout"},
    {RA: "x=%FF%FE"},                                                # invalid UTF-8 -> U+FFFD
])
def test_the_same_attributes_as_the_sdk_itself(env):
    assert tr.read(env).attributes == sdk_says(env)


def test_malformed_pairs_are_counted_not_logged(caplog):
    caplog.set_level(logging.WARNING)
    got = tr.read({RA: "a=1,nopair,,b=2"})
    assert got.attributes == {"a": "1", "b": "2"}
    assert got.skipped == 2
    assert not [r for r in caplog.records if r.name == sdk_resources.__name__]


def test_the_sdk_module_is_left_reading_the_agents_environment():
    tr.read({RA: "a=1"})
    assert sdk_resources.environ is os.environ


def test_no_variables_no_attributes():
    assert tr.read({}) == tr.TargetResource({})
    assert tr.read({RA: "", SN: ""}).attributes == {}


def test_an_oversized_value_is_ignored_whole_and_counted_but_the_service_name_kept():
    got = tr.read({RA: "a=" + "x" * tr.MAX_VALUE_BYTES, SN: "checkout"})
    assert got.attributes == {"service.name": "checkout"} and got.dropped == 1


def test_attributes_beyond_the_bound_are_dropped_and_counted_keeping_the_service_name():
    pairs = ",".join(f"k{i}=v" for i in range(tr.MAX_ATTRIBUTES + 5))
    got = tr.read({RA: pairs, SN: "checkout"})
    assert len(got.attributes) == tr.MAX_ATTRIBUTES + 1
    assert got.attributes["service.name"] == "checkout" and got.dropped == 5
    assert list(got.attributes)[:3] == ["k0", "k1", "k2"]


def test_long_keys_and_values_are_cut_and_counted():
    got = tr.read({RA: f"{'k' * 300}={'v' * 300}"})
    ((key, value),) = got.attributes.items()
    assert len(key) == len(value) == tr.MAX_ATTRIBUTE_CHARS and got.cut == 1


# ---- laid over the derived resource and the agent's settings (SpanBuilder.resource)

PID = 4101


@pytest.fixture
def root(tmp_path: Path) -> SysRoot:
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("0f3c2d1e-aaaa-bbbb-cccc-123456789abc\n")
    return SysRoot(tmp_path)


def proc(root: SysRoot, env: dict[str, str], pid: int = PID) -> int:
    p = Path(root.path("proc", str(pid)))
    p.mkdir(parents=True)
    argv = ["/usr/bin/python3", "/venv/bin/gunicorn", "app:app"]
    (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (p / "comm").write_text("gunicorn\n")
    (p / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    (p / "stat").write_text(f"{pid} (gunicorn) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0\n")
    os.symlink("/usr/bin/python3.11", p / "exe")
    return pid


def builder(root: SysRoot, extra: dict) -> SpanBuilder:
    redactor = Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))
    return SpanBuilder(ProcessRegistry(root, redactor), RouteMatcher([]), redactor, MonotonicToWall(),
                       "host-a", extra)


def test_the_issue_example_is_named_by_its_own_variables(root):
    pid = proc(root, {RA: "service.name=catalogue,service.namespace=shop", "PATH": "/usr/bin"})
    a = builder(root, {}).resource(pid).attributes
    assert a["service.name"] == "catalogue" and a["service.namespace"] == "shop"
    assert a["process.executable.name"] == "python3.11"


def test_without_variables_the_program_names_it_and_the_agent_settings_apply(root):
    pid = proc(root, {"PATH": "/usr/bin"})
    a = builder(root, {"deployment.environment": "prod"}).resource(pid).attributes
    assert a["service.name"] == "gunicorn" and a["deployment.environment"] == "prod"


def test_the_targets_own_values_win_over_the_agents_on_a_clash(root):
    pid = proc(root, {RA: "deployment.environment=staging,team=web"})
    b = builder(root, {"deployment.environment": "prod", "service.name": "named-by-agent", "region": "eu"})
    a = b.resource(pid).attributes
    assert a["deployment.environment"] == "staging" and a["team"] == "web" and a["region"] == "eu"
    # the agent's service.name names targets that set none themselves; this one set none
    assert a["service.name"] == "named-by-agent"
    both = proc(root, {RA: "service.name=catalogue", SN: "checkout"}, pid=PID + 1)
    assert b.resource(both).attributes["service.name"] == "checkout"


def test_secret_looking_values_are_redacted_and_counted_once_per_process(root):
    pid = proc(root, {RA: "api.token=abc123,service.namespace=shop,db.password=hunter2"})
    b = builder(root, {})
    a = b.resource(pid).attributes
    assert a["api.token"] == REDACTED and a["db.password"] == REDACTED and a["service.namespace"] == "shop"
    b.resource(pid)
    assert b.counts["target_resource_values_redacted"] == 2


def test_what_a_target_loses_is_counted_in_the_builders_stats(root):
    pid = proc(root, {RA: "a=1,nopair," + ",".join(f"k{i}=v" for i in range(tr.MAX_ATTRIBUTES))})
    b = builder(root, {})
    b.resource(pid)
    assert b.counts["target_resource_pairs_skipped"] == 1
    assert b.counts["target_resource_attributes_dropped"] == 1
