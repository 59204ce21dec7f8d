"""Unit tests of settings resolution (spanprobe.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanprobe import config
from spanprobe.config import KEYS, SCHEMA, resolve
from spanprobe.errors import ConfigError, SpanprobeError


def write(tmp_path: Path, text: str, name: str = "spanprobe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def config_error(**kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(**kw)
    err = info.value
    assert "\n" not in str(err), str(err)
    assert err.exit_code == 2
    return err


# ---------------------------------------------------------------- defaults, precedence

def test_defaults_with_nothing_given():
    s = resolve({}, {}, None)
    for key in SCHEMA:
        assert s[key.path] == key.default, key.path
        assert s.source[key.path] == "default"
    assert s.file is None
    assert s["capture_bytes"] == 2048
    assert s["export.otlp_protocol"] == "grpc"
    assert s["export.otlp_endpoint"] is None


def test_env_names():
    assert KEYS["export.otlp_endpoint"].env == "SPANPROBE_EXPORT_OTLP_ENDPOINT"
    assert KEYS["capture_bytes"].env == "SPANPROBE_CAPTURE_BYTES"
    assert KEYS["privacy.redact_query_params"].env == "SPANPROBE_PRIVACY_REDACT_QUERY_PARAMS"


def test_file_values(tmp_path):
    f = write(tmp_path, """
select:
  ports: [8000, 8443]
  exe: gunicorn
export:
  otlp_endpoint: http://collector:4318
  otlp_protocol: http/protobuf
  console: true
  timeout_s: 5
capture_bytes: 512
routes:
  - /users/{id}
  - /static/{p:path}
resource_attributes:
  deployment.environment: staging
""")
    s = resolve({}, {}, f)
    assert s["select.ports"] == [8000, 8443]
    assert s["select.exe"] == ["gunicorn"]               # a scalar becomes a list
    assert s["export.otlp_endpoint"] == "http://collector:4318"
    assert s["export.otlp_protocol"] == "http/protobuf"
    assert s["export.console"] is True
    assert s["export.timeout_s"] == 5.0 and isinstance(s["export.timeout_s"], float)
    assert s["capture_bytes"] == 512
    assert s["routes"] == ["/users/{id}", "/static/{p:path}"]
    assert s["resource_attributes"] == {"deployment.environment": "staging"}
    assert s["log_level"] == "info"
    assert s.source["capture_bytes"] == f"file {f}"
    assert s.source["log_level"] == "default"
    assert s.file == f


def test_dotted_keys_at_top_level_of_file(tmp_path):
    f = write(tmp_path, "export.console: true\nselect.pids: 77\n")
    s = resolve({}, {}, f)
    assert s["export.console"] is True
    assert s["select.pids"] == [77]


def test_empty_file_gives_defaults(tmp_path):
    s = resolve({}, {}, write(tmp_path, "# nothing\n"))
    assert s["capture_bytes"] == 2048


def test_precedence_flag_env_file_default(tmp_path):
    f = write(tmp_path, "capture_bytes: 256\npoll_interval_ms: 20\nlog_level: warning\n")
    env = {"SPANPROBE_CAPTURE_BYTES": "1024", "SPANPROBE_POLL_INTERVAL_MS": "30"}
    s = resolve({"capture_bytes": 4096}, env, f)
    assert s["capture_bytes"] == 4096                 # flag beats env and file
    assert s["poll_interval_ms"] == 30                # env beats file
    assert s["log_level"] == "warning"                # file beats default
    assert s["buffer"] == "auto"                      # default
    assert s.source["capture_bytes"] == "flag --capture-bytes"
    assert s.source["poll_interval_ms"] == "environment SPANPROBE_POLL_INTERVAL_MS"
    assert s.source["log_level"] == f"file {f}"
    assert s.source["buffer"] == "default"


def test_none_and_empty_list_flags_do_not_override(tmp_path):
    f = write(tmp_path, "capture_bytes: 256\nselect:\n  ports: [9000]\n")
    s = resolve({"capture_bytes": None, "select.ports": []}, {}, f)
    assert s["capture_bytes"] == 256
    assert s["select.ports"] == [9000]


def test_false_flag_overrides(tmp_path):
    f = write(tmp_path, "export:\n  console: true\n")
    assert resolve({"export.console": False}, {}, f)["export.console"] is False


def test_otel_endpoint_and_protocol_variables(tmp_path):
    f = write(tmp_path, "export:\n  otlp_endpoint: http://file:4317\n  otlp_protocol: grpc\n")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    s = resolve({}, env, f)
    assert s["export.otlp_endpoint"] == "http://generic:4318"
    assert s["export.otlp_protocol"] == "http/protobuf"
    assert s.source["export.otlp_endpoint"] == "environment OTEL_EXPORTER_OTLP_ENDPOINT"
    assert s.source["export.otlp_protocol"] == "environment OTEL_EXPORTER_OTLP_PROTOCOL"


def test_otel_traces_variables_beat_generic_ones():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    s = resolve({}, env, None)
    assert s["export.otlp_endpoint"] == "http://traces:4318/v1/traces"
    assert s["export.otlp_protocol"] == "http/protobuf"


def test_spanprobe_variables_beat_otel_ones_and_flags_beat_both():
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel:4317",
           "SPANPROBE_EXPORT_OTLP_ENDPOINT": "http://ours:4317",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "SPANPROBE_EXPORT_OTLP_PROTOCOL": "grpc"}
    s = resolve({}, env, None)
    assert s["export.otlp_endpoint"] == "http://ours:4317"
    assert s["export.otlp_protocol"] == "grpc"
    s = resolve({"export.otlp_endpoint": "http://flag:4317"}, env, None)
    assert s["export.otlp_endpoint"] == "http://flag:4317"


def test_bad_otel_protocol_is_reported():
    err = config_error(flags={}, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, file=None)
    assert "export.otlp_protocol" in str(err)
    assert "OTEL_EXPORTER_OTLP" in str(err)


def test_config_file_from_environment(tmp_path):
    f = write(tmp_path, "log_level: debug\n")
    s = resolve({}, {"SPANPROBE_CONFIG": str(f)}, None)
    assert s["log_level"] == "debug"
    assert s.file == f


def test_uses_os_environ_when_env_is_none(monkeypatch):
    monkeypatch.setenv("SPANPROBE_LOG_LEVEL", "error")
    assert resolve({}, None, None)["log_level"] == "error"


# ---------------------------------------------------------------- text coercion

def test_environment_text_coercion():
    env = {
        "SPANPROBE_SELECT_PORTS": "8000, 9000,",
        "SPANPROBE_SELECT_PIDS": "12",
        "SPANPROBE_SELECT_EXE": "gunicorn,uvicorn",
        "SPANPROBE_EXPORT_CONSOLE": "yes",
        "SPANPROBE_EXPORT_TIMEOUT_S": "2.5",
        "SPANPROBE_STATS_INTERVAL_S": "60",
        "SPANPROBE_RING_BUFFER_PAGES": "256",
        "SPANPROBE_RESOURCE_ATTRIBUTES": "env=prod, team = web,note=a%2Cb=c,",
        "SPANPROBE_ROUTES": "/users/{id},/items/{id}",
    }
    s = resolve({}, env, None)
    assert s["select.ports"] == [8000, 9000]
    assert s["select.pids"] == [12]
    assert s["select.exe"] == ["gunicorn", "uvicorn"]
    assert s["export.console"] is True
    assert s["export.timeout_s"] == 2.5
    assert s["stats_interval_s"] == 60.0 and isinstance(s["stats_interval_s"], float)
    assert s["ring_buffer_pages"] == 256
    assert s["resource_attributes"] == {"env": "prod", "team": "web", "note": "a,b=c"}
    assert s["routes"] == ["/users/{id}", "/items/{id}"]


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("ON", True), ("Yes", True),
                                        ("0", False), ("false", False), ("off", False), ("no", False)])
def test_environment_booleans(text, value):
    assert resolve({}, {"SPANPROBE_EXPORT_CONSOLE": text}, None)["export.console"] is value


def test_flag_text_is_coerced_like_environment():
    s = resolve({"capture_bytes": "128", "select.ports": "80,443"}, {}, None)
    assert s["capture_bytes"] == 128
    assert s["select.ports"] == [80, 443]


# ---------------------------------------------------------------- errors

def test_unknown_key_in_file_with_hint(tmp_path):
    f = write(tmp_path, "captur_bytes: 100\n")
    err = config_error(flags={}, env={}, file=f)
    assert str(err) == f"config error: unknown key 'captur_bytes' (file {f}); did you mean 'capture_bytes'?"


def test_unknown_nested_key_with_hint(tmp_path):
    f = write(tmp_path, "export:\n  otlp_endpont: http://x:4317\n")
    err = config_error(flags={}, env={}, file=f)
    assert "unknown key 'export.otlp_endpont'" in str(err)
    assert "did you mean 'export.otlp_endpoint'?" in str(err)


def test_unknown_key_without_close_match(tmp_path):
    f = write(tmp_path, "zzzzzz: 1\n")
    err = config_error(flags={}, env={}, file=f)
    assert "unknown key 'zzzzzz'" in str(err)
    assert "spanprobe config-keys" in str(err)


def test_unknown_flag():
    err = config_error(flags={"capture_byte": 1}, env={}, file=None)
    assert "capture_byte" in str(err)


def test_section_must_be_a_mapping(tmp_path):
    f = write(tmp_path, "export: 5\n")
    err = config_error(flags={}, env={}, file=f)
    assert str(err).startswith("config error: export: expected a mapping of settings, got int")


def test_top_level_must_be_a_mapping(tmp_path):
    f = write(tmp_path, "- a\n- b\n")
    err = config_error(flags={}, env={}, file=f)
    assert "top level must be a mapping" in str(err)


def test_bad_yaml(tmp_path):
    f = write(tmp_path, "export:\n  console: true\n   bad: [1, 2\n")
    err = config_error(flags={}, env={}, file=f)
    assert str(err).startswith(f"config error: {f} line ")
    assert str(err).endswith("fix the YAML syntax")


def test_bad_yaml_unclosed_flow(tmp_path):
    f = write(tmp_path, "select: {ports: [80\n")
    err = config_error(flags={}, env={}, file=f)
    assert str(f) in str(err) and "YAML" in str(err)


def test_missing_file(tmp_path):
    err = config_error(flags={}, env={}, file=tmp_path / "nope.yaml")
    assert "cannot read" in str(err) and "nope.yaml" in str(err)
    assert "No such file" in str(err)


@pytest.mark.parametrize("yaml_text,key,fragment", [
    ("capture_bytes: abc\n", "capture_bytes", "expected int, got str 'abc'"),
    ("capture_bytes: true\n", "capture_bytes", "expected int, got bool True"),
    ("capture_bytes: 1.5\n", "capture_bytes", "expected int, got float 1.5"),
    ("capture_bytes: 8192\n", "capture_bytes", "8192 is outside 64..4096"),
    ("export:\n  console: maybe\n", "export.console", "expected bool, got str 'maybe'"),
    ("export:\n  timeout_s: fast\n", "export.timeout_s", "expected float"),
    ("select:\n  ports: [80, 70000]\n", "select.ports", "70000 is not a TCP port (1-65535)"),
    ("select:\n  ports: [0]\n", "select.ports", "0 is not a TCP port"),
    ("select:\n  ports: [http]\n", "select.ports", "every item must be int, got 'http'"),
    ("select:\n  pids: [true]\n", "select.pids", "every item must be int, got True"),
    ("attach_mode: ebpf\n", "attach_mode", "'ebpf' is not one of auto, tracepoint, kprobe, fentry"),
    ("buffer: mmap\n", "buffer", "'mmap' is not one of auto, ringbuf, perf"),
    ("export:\n  otlp_protocol: http/json\n", "export.otlp_protocol", "'http/json' is not one of grpc"),
    ("export:\n  otlp_endpoint: localhost:4317\n", "export.otlp_endpoint", "is not a URL"),
    ("ring_buffer_pages: 100\n", "ring_buffer_pages", "100 is not a power of two >= 8"),
    ("ring_buffer_pages: 4\n", "ring_buffer_pages", "4 is not a power of two >= 8"),
    ("routes:\n  - users/{id}\n", "routes", "route 'users/{id}' must start with /"),
    ("resource_attributes: [a, b]\n", "resource_attributes", "expected dict, got list"),
    ("log_level: verbose\n", "log_level", "'verbose' is not one of debug"),
])
def test_bad_values_in_file(tmp_path, yaml_text, key, fragment):
    f = write(tmp_path, yaml_text)
    err = config_error(flags={}, env={}, file=f)
    msg = str(err)
    assert msg.startswith(f"config error: {key}: "), msg
    assert fragment in msg
    assert f"(file {f})" in msg
    assert f"{key} is: {KEYS[key].help}" in msg


@pytest.mark.parametrize("var,text,key,fragment", [
    ("SPANPROBE_CAPTURE_BYTES", "lots", "capture_bytes", "expected int, got str 'lots'"),
    ("SPANPROBE_SELECT_PORTS", "80,99999", "select.ports", "99999 is not a TCP port"),
    ("SPANPROBE_SELECT_PORTS", "80,web", "select.ports", "every item must be int, got 'web'"),
    ("SPANPROBE_EXPORT_CONSOLE", "perhaps", "export.console", "expected bool, got str 'perhaps'"),
    ("SPANPROBE_EXPORT_TIMEOUT_S", "soon", "export.timeout_s", "expected float, got str 'soon'"),
    ("SPANPROBE_BUFFER", "ring", "buffer", "'ring' is not one of"),
    ("SPANPROBE_EXPORT_OTLP_ENDPOINT", "http://a b", "export.otlp_endpoint", "is not a URL"),
])
def test_bad_values_in_environment(var, text, key, fragment):
    err = config_error(flags={}, env={var: text}, file=None)
    msg = str(err)
    assert msg.startswith(f"config error: {key}: ")
    assert fragment in msg
    assert f"(environment {var})" in msg


def test_value_with_newline_stays_on_one_line(tmp_path):
    f = write(tmp_path, 'log_level: "a\\nb"\n')
    err = config_error(flags={}, env={}, file=f)
    assert "log_level" in str(err)


def test_bad_flag_value():
    err = config_error(flags={"select.ports": [80, 65536]}, env={}, file=None)
    assert str(err).startswith("config error: select.ports: 65536 is not a TCP port")
    assert "(flag --port)" in str(err)


def test_config_error_is_spanprobe_error():
    assert issubclass(ConfigError, SpanprobeError)
    assert ConfigError.exit_code == 2


def test_boundary_values_accepted():
    s = resolve({"capture_bytes": 64, "select.ports": [1, 65535], "ring_buffer_pages": 8,
                 "export.timeout_s": 300}, {}, None)
    assert s["capture_bytes"] == 64
    assert s["select.ports"] == [1, 65535]
    assert s["ring_buffer_pages"] == 8
    assert s["export.timeout_s"] == 300.0


def test_null_endpoint_in_file_is_allowed(tmp_path):
    f = write(tmp_path, "export:\n  otlp_endpoint: null\n")
    assert resolve({}, {}, f)["export.otlp_endpoint"] is None


def test_describe_keys_lists_every_key():
    lines = config.describe_keys().splitlines()
    assert len(lines) == len(SCHEMA)
    for key, line in zip(SCHEMA, lines):
        assert line.startswith(key.path)
        assert key.env in line


# ---------------------------------------------------------------- inputs that used to get through

def test_a_config_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("select:\n  exe: caf\xe9\n".encode("latin-1"))
    msg = str(config_error(flags={}, env={}, file=f))
    assert msg == f"config error: {f} line 2: byte 0xe9 is not UTF-8; save the file as UTF-8"


def test_a_config_file_that_is_a_directory(tmp_path):
    msg = str(config_error(flags={}, env={}, file=tmp_path))
    assert f"cannot read {tmp_path}" in msg


@pytest.mark.parametrize("pid", [-1, 0, 4294967296, config.PID_MAX_LIMIT + 1])
def test_pids_outside_the_kernels_range(pid):
    msg = str(config_error(flags={"select.pids": [pid]}, env={}, file=None))
    assert msg.startswith(f"config error: select.pids: {pid} is not a process id (1..{config.pid_max()}")
    assert "(flag --pid)" in msg


def test_pids_at_the_edges_of_the_range():
    assert resolve({"select.pids": [1, config.pid_max()]}, {}, None)["select.pids"] == [1, config.pid_max()]
    msg = str(config_error(flags={}, env={"SPANPROBE_SELECT_PIDS": "12,-3"}, file=None))
    assert "-3 is not a process id" in msg and "(environment SPANPROBE_SELECT_PIDS)" in msg


def test_pid_max_is_the_kernels():
    with open("/proc/sys/kernel/pid_max") as f:
        assert config.pid_max() == int(f.read())


@pytest.mark.parametrize("url, words", [
    ("http://h:99999", "Port out of range"),
    ("http://h:0", "port 0 is not a TCP port"),
    ("http://h:port", "Port could not be cast"),
    ("grpc://h:4317", "http:// or https:// scheme"),
    ("http://:4317", "a host"),
    ("http://h:4318/v1/traces?x=1", "query or fragment"),
    ("http://h :4318", "contains a space"),
])
def test_endpoint_urls_are_checked_with_their_ports(url, words):
    for env in ({"OTEL_EXPORTER_OTLP_ENDPOINT": url}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url},
                {"SPANPROBE_EXPORT_OTLP_ENDPOINT": url}):
        (var,) = env
        msg = str(config_error(flags={}, env=env, file=None))
        assert msg.startswith("config error: export.otlp_endpoint: ") and words in msg, msg
        assert f"(environment {var})" in msg
        assert "http://127.0.0.1:4318" in msg                         # the fix: what a URL looks like
    msg = str(config_error(flags={"export.otlp_endpoint": url}, env={}, file=None))
    assert "(flag --otlp-endpoint)" in msg


@pytest.mark.parametrize("url", ["http://127.0.0.1:4317", "https://collector.example:443/v1/traces",
                                 "http://[::1]:4318", "http://collector"])
def test_good_endpoints(url):
    assert resolve({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": url}, None)["export.otlp_endpoint"] == url


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
def test_a_bad_protocol_names_the_exact_variable(var):
    msg = str(config_error(flags={}, env={var: "http/json"}, file=None))
    assert f"(environment {var})" in msg and "OTLP_*" not in msg


def test_the_traces_variable_is_named_when_both_are_set():
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}
    assert "(environment OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)" in str(config_error(flags={}, env=env, file=None))


@pytest.mark.parametrize("text, words", [
    ("team", "'team' is not key=value"),
    ("a=1,team", "'team' is not key=value"),
    ("=x", "'=x' is not key=value"),
    ("a=%FF", "not percent-encoded UTF-8"),
])
def test_resource_attributes_without_a_pair(text, words):
    msg = str(config_error(flags={}, env={"OTEL_RESOURCE_ATTRIBUTES": text}, file=None))
    assert msg.startswith("config error: environment OTEL_RESOURCE_ATTRIBUTES: ") and words in msg
    assert "key1=value1,key2=value2" in msg
    msg = str(config_error(flags={}, env={"SPANPROBE_RESOURCE_ATTRIBUTES": text}, file=None))
    assert msg.startswith("config error: resource_attributes: ") and words in msg
    assert "(environment SPANPROBE_RESOURCE_ATTRIBUTES)" in msg


def test_otel_resource_attributes_follow_the_sdks_rules():
    text = " deployment.environment.name = ci ,team=obs%2Cweb,eq=a=b,empty=,"
    want = {"deployment.environment.name": "ci", "team": "obs,web", "eq": "a=b", "empty": ""}
    assert config.otel_resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": text}) == want
    assert config.otel_resource_attributes({}) == {}
    resolve({}, {"OTEL_RESOURCE_ATTRIBUTES": text}, None)      # accepted by resolve too


def test_otel_resource_attributes_agree_with_the_sdk(monkeypatch):
    from opentelemetry.sdk.resources import OTELResourceDetector

    text = "a=1,b=x%20y,c= spaced ,d=%E2%9C%93"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", text)
    assert config.otel_resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": text}) == \
        dict(OTELResourceDetector().detect().attributes)


@pytest.mark.parametrize("yaml_text, words", [
    ("resource_attributes:\n  team: {nested: 1}\n", "'team': dict is not a string"),
    ("resource_attributes:\n  team: [a, {b: 1}]\n", "a list value may hold only"),
    ("resource_attributes:\n  '': x\n", "attribute name '' must be a non-empty string"),
    ("resource_attributes:\n  1: x\n", "attribute name 1 must be"),
])
def test_resource_attributes_in_a_file(tmp_path, yaml_text, words):
    f = write(tmp_path, yaml_text)
    msg = str(config_error(flags={}, env={}, file=f))
    assert msg.startswith("config error: resource_attributes: ") and words in msg


def test_undecodable_bytes_in_a_variable_or_argument():
    text = b"gunicorn\xff".decode("utf-8", "surrogateescape")
    msg = str(config_error(flags={}, env={"SPANPROBE_SELECT_EXE": text}, file=None))
    assert "is not valid UTF-8 text" in msg and "(environment SPANPROBE_SELECT_EXE)" in msg
    msg = str(config_error(flags={"select.exe": [text]}, env={}, file=None))
    assert "is not valid UTF-8 text" in msg and "(flag --exe)" in msg


@pytest.mark.parametrize("var, text, protocol", [
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "grpc"),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "deflate", "grpc"),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "brotli", "http/protobuf"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten", "grpc"),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-1", "http/protobuf"),
])
def test_sdk_variables_that_would_crash_the_exporter(var, text, protocol):
    env = {var: text, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
           "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    msg = str(config_error(flags={}, env=env, file=None))
    assert msg.startswith(f"config error: environment {var}: {text!r}")
    # without an endpoint no exporter reads them
    resolve({}, {var: text}, None)


def test_every_flag_named_in_the_schema_is_a_real_flag():
    from spanprobe.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {s for a in run._actions for s in a.option_strings}
    named = {k.flag for k in SCHEMA if k.flag}
    assert named and named <= flags
