"""Configuration that used to get through, given to the real command line: each is one
line naming the exact key, variable or flag and the fix, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.procs import REPO, _env


def spanprobe_run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "spanprobe", "run", "--console", "--duration", "1", *args],
                          cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=120)


def assert_one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("spanprobe: config error"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_a_config_file_that_is_not_utf8(tmp):
    cfg = tmp / "latin1.yaml"
    cfg.write_bytes("select:\n  exe: [caf\xe9]\n".encode("latin-1"))
    assert_one_line_exit_2(spanprobe_run("--config", str(cfg)), str(cfg), "line 2", "not UTF-8",
                           "save the file as UTF-8")


@pytest.mark.parametrize("pid", ["-1", "0", "4294967296"])
def test_pids_outside_the_kernels_range(pid):
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    assert_one_line_exit_2(spanprobe_run("--pid", pid), "select.pids", f"{pid} is not a process id",
                           f"1..{top}", "(flag --pid)")


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_endpoint_port_out_of_range(var):
    assert_one_line_exit_2(spanprobe_run(env={var: "http://h:99999"}), "export.otlp_endpoint",
                           "http://h:99999", f"(environment {var})", "http://127.0.0.1:4318")


def test_an_endpoint_flag_with_a_bad_scheme():
    assert_one_line_exit_2(spanprobe_run("--otlp-endpoint", "tcp://127.0.0.1:4317"),
                           "(flag --otlp-endpoint)", "http:// or https://")


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
def test_a_bad_protocol_names_the_variable_that_was_set(var):
    r = spanprobe_run(env={var: "http/json"})
    assert_one_line_exit_2(r, "export.otlp_protocol", f"(environment {var})")
    assert "OTLP_*" not in r.stderr


def test_a_resource_attribute_without_a_value_in_otel_resource_attributes():
    assert_one_line_exit_2(spanprobe_run(env={"OTEL_RESOURCE_ATTRIBUTES": "team=obs,production"}),
                           "OTEL_RESOURCE_ATTRIBUTES", "'production' is not key=value",
                           "key1=value1,key2=value2")


def test_a_resource_attribute_without_a_value_in_resource_attributes(tmp):
    assert_one_line_exit_2(spanprobe_run(env={"SPANPROBE_RESOURCE_ATTRIBUTES": "team"}),
                           "resource_attributes", "'team' is not key=value",
                           "(environment SPANPROBE_RESOURCE_ATTRIBUTES)")
    cfg = tmp / "attrs.yaml"
    cfg.write_text("resource_attributes:\n  team: {name: obs}\n")
    assert_one_line_exit_2(spanprobe_run("--config", str(cfg)), "resource_attributes", f"(file {cfg})")


def test_an_sdk_variable_that_would_crash_the_exporter():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}
    assert_one_line_exit_2(spanprobe_run(env=env), "OTEL_EXPORTER_OTLP_COMPRESSION", "'zstd'")


def test_the_same_inputs_when_valid_start_the_agent():
    """The checks reject the bad values only: the good neighbours of each case run."""
    with open("/proc/sys/kernel/pid_max") as f:
        top = f.read().strip()
    r = spanprobe_run("--pid", "1", "--pid", top, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:65535",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_RESOURCE_ATTRIBUTES": "team=obs%2Cweb,",
        "SPANPROBE_RESOURCE_ATTRIBUTES": "tier=a=b"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ready strategy=" in r.stderr
