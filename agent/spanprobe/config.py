"""Settings: one typed schema, resolved argument > environment > file > default.

Every key is declared once in SCHEMA with its type, default and check. A bad file,
variable or flag gives a ConfigError whose message is one line naming the key and the
fix; the command line exits 2 on it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

ATTACH_MODES = ("auto", "tracepoint", "kprobe", "fentry")
BUFFER_KINDS = ("auto", "ringbuf", "perf")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
SAMPLER_NAMES = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
                 "parentbased_always_off", "parentbased_traceidratio")     # sampling.SAMPLERS

DEFAULT_REDACT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                          "x-api-key", "x-auth-token")
DEFAULT_REDACT_QUERY = ("token", "access_token", "refresh_token", "id_token", "password",
                        "passwd", "pwd", "secret", "client_secret", "key", "api_key", "apikey",
                        "signature", "sig", "x-amz-signature", "x-amz-credential", "auth",
                        "credential", "session", "sessionid", "jwt", "code")


@dataclass(frozen=True)
class Key:
    """One setting. `kind` is the Python type a value must have after coercion."""

    path: str
    kind: type | tuple
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None   # returns a problem or None
    item: type | None = None                            # element type of lists
    flag: str | None = None                             # its command-line flag, named in errors

    @property
    def env(self) -> str:
        return "SPANPROBE_" + re.sub(r"[^A-Z0-9]", "_", self.path.upper())


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else f"{v} is not a TCP port (1-65535)"


def _ports(vs: list) -> str | None:
    for v in vs:
        if (problem := _port(v)) is not None:
            return problem
    return None


def _one_of(choices: tuple) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"{v!r} is not one of {', '.join(choices)}"


def _between(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"{v} is outside {lo}..{hi}"


def _power_of_two(v: int) -> str | None:
    return None if v >= 8 and v & (v - 1) == 0 else f"{v} is not a power of two >= 8"


PID_MAX_LIMIT = 4194304          # the kernel's ceiling for /proc/sys/kernel/pid_max (64-bit)


def pid_max() -> int:
    """The largest process id this kernel hands out (/proc/sys/kernel/pid_max)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return PID_MAX_LIMIT


def _pids(vs: list) -> str | None:
    top = pid_max()
    for v in vs:
        if not 1 <= v <= top:
            return f"{v} is not a process id (1..{top}, /proc/sys/kernel/pid_max)"
    return None


def _endpoint(v: str | None) -> str | None:
    if v is None:
        return None
    like = "give a URL like http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (OTLP/HTTP)"
    if not re.fullmatch(r"\S+", v):
        return f"{v!r} is not a URL: it contains a space; {like}"
    try:
        url = urlsplit(v)
        port = url.port
    except ValueError as exc:    # a port that is not a number or not in 0-65535
        return f"{v!r} is not a URL: {exc}; {like}"
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"{v!r} is not a URL with an http:// or https:// scheme and a host; {like}"
    if port == 0:
        return f"{v!r}: port 0 is not a TCP port (1-65535); {like}"
    if url.query or url.fragment:
        return f"{v!r} has a query or fragment, which OTLP does not use; {like}"
    return None


def parse_attribute_pairs(text: str) -> dict[str, str]:
    """key=value pairs separated by commas, each value percent-decoded: the SDK's rules for
    OTEL_RESOURCE_ATTRIBUTES (its detector skips a bad pair with a warning; here a bad pair
    is a ValueError, so the agent never starts with attributes it silently lost). Blank
    items (a trailing comma) are allowed."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item.strip()!r} is not key=value")
        try:
            pairs[key.strip()] = unquote(value.strip(), errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"the value of {key.strip()!r} is not percent-encoded UTF-8") from None
    return pairs


ATTRIBUTE_PAIRS_FIX = "write key1=value1,key2=value2 with values percent-encoded (%2C for a comma)"


def otel_resource_attributes(env: dict[str, str]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES, parsed strictly (resolve() has checked it already)."""
    try:
        return parse_attribute_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    except ValueError as exc:
        raise ConfigError(f"config error: environment OTEL_RESOURCE_ATTRIBUTES: {exc}; "
                          f"{ATTRIBUTE_PAIRS_FIX}") from None


def _attribute_map(v: dict) -> str | None:
    scalars = (str, bool, int, float)
    for key, value in v.items():
        if not isinstance(key, str) or not key.strip():
            return f"attribute name {key!r} must be a non-empty string"
        if isinstance(value, list):
            if not all(isinstance(x, scalars) for x in value):
                return f"attribute {key!r}: a list value may hold only strings, numbers or booleans"
        elif not isinstance(value, scalars):
            return f"attribute {key!r}: {type(value).__name__} is not a string, number, boolean or list"
    return None


def _route(vs: list) -> str | None:
    for v in vs:
        if not v.startswith("/"):
            return f"route {v!r} must start with /"
    return None


SCHEMA: tuple[Key, ...] = (
    Key("select.ports", list, [], "trace processes listening on these ports", _ports, int, "--port"),
    Key("select.pids", list, [], "trace these process ids (and their children)", _pids, int, "--pid"),
    Key("select.exe", list, [], "trace processes by executable or script name, or full path",
        None, str, "--exe"),
    Key("select.exclude_exe", list, [], "never trace these executables", None, str),
    Key("export.otlp_endpoint", (str, type(None)), None,
        "OTLP receiver URL (else OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)", _endpoint,
        flag="--otlp-endpoint"),
    Key("export.otlp_protocol", str, "grpc", "grpc or http/protobuf", _one_of(OTLP_PROTOCOLS),
        flag="--otlp-protocol"),
    Key("export.console", bool, False, "also print one line per span on stdout", flag="--console"),
    Key("export.queue_size", int, 20000, "spans waiting for export before drops", _between(1, 10**7)),
    Key("export.batch_size", int, 512, "spans per export call", _between(1, 100000)),
    Key("export.max_attempts", int, 3, "attempts per batch when an exporter fails without saying "
        "whether to retry (OTLP answers decide themselves)", _between(1, 20)),
    Key("export.timeout_s", float, 10.0, "seconds one export call may take", _between(0.1, 300)),
    Key("export.max_retry_delay_s", float, 60.0, "longest wait before retrying a batch, "
        "a receiver's Retry-After or RetryInfo included", _between(1, 3600)),
    Key("capture_bytes", int, 2048, "bytes copied per read/write buffer", _between(64, 4096),
        flag="--capture-bytes"),
    Key("attach_mode", str, "auto", "auto, tracepoint, kprobe or fentry", _one_of(ATTACH_MODES),
        flag="--attach-mode"),
    Key("buffer", str, "auto", "auto, ringbuf or perf", _one_of(BUFFER_KINDS), flag="--buffer"),
    Key("ring_buffer_pages", int, 1024, "ring buffer size in 4 KiB pages", _power_of_two),
    Key("poll_interval_ms", int, 50, "how often the event buffer is drained", _between(1, 1000)),
    Key("routes", list, [], "route templates such as /users/{id}", _route, str),
    Key("privacy.redact_headers", list, list(DEFAULT_REDACT_HEADERS),
        "headers whose values never leave the host", None, str),
    Key("privacy.redact_query_params", list, list(DEFAULT_REDACT_QUERY),
        "query parameters whose values are replaced by REDACTED", None, str),
    Key("resource_attributes", dict, {}, "added to every span's resource (as text: "
        "key1=value1,key2=value2, values percent-encoded)", _attribute_map),
    Key("attributes.rules", list, [], "business attribute rules (see README: Business attributes)",
        None, dict),
    Key("attributes.max_value_length", int, 256, "longest attribute value kept", _between(1, 4096)),
    Key("attributes.max_cardinality", int, 1000, "distinct values per attribute and service",
        _between(1, 10**6)),
    Key("attributes.max_body_bytes", int, 4096, "bytes of a body kept for json_body rules",
        _between(64, 65536)),
    Key("log_level", str, "info", "debug, info, warning or error",
        _one_of(("debug", "info", "warning", "error")), flag="--log-level"),
    Key("stats_interval_s", float, 30.0, "how often counters are logged", _between(0.5, 86400)),
    Key("sampling.sampler", str, "parentbased_always_on", "head sampler, as OTEL_TRACES_SAMPLER names "
        "it: always_on, always_off, traceidratio or parentbased_<one of them>", _one_of(SAMPLER_NAMES)),
    Key("sampling.ratio", float, 1.0, "share of traces the traceidratio samplers keep (0..1; "
        "OTEL_TRACES_SAMPLER_ARG)", _between(0.0, 1.0)),
    Key("budget.max_cpu_percent", (float, type(None)), None, "CPU the agent and its kernel programs "
        "may use together, in percent of one CPU; above it whole connections are shed, counted, "
        "until the load falls (unset: no budget)", _between(1, 10000), flag="--max-cpu-percent"),
    Key("request_timeout_s", float, 30.0, "a request with no response after this long is exported "
        "with what is known, as an error (error.type=timeout)", _between(0.1, 86400)),
)
KEYS = {k.path: k for k in SCHEMA}
SECTIONS = {k.path.split(".")[0] for k in SCHEMA if "." in k.path}


@dataclass
class Settings:
    """Resolved settings; `source` tells where each value came from (for `check`)."""

    values: dict[str, Any]
    source: dict[str, str] = field(default_factory=dict)
    file: Path | None = None

    def __getitem__(self, path: str) -> Any:
        return self.values[path]


def _not_utf8(value: Any) -> bool:
    """Undecodable bytes of a variable or argument reach Python as lone surrogates."""
    texts = value if isinstance(value, list) else [value]
    return any(isinstance(t, str) and re.search("[\ud800-\udfff]", t) for t in texts)


def _coerce(key: Key, value: Any, where: str) -> Any:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"config error: {key.path}: {problem} ({where}); {key.path} is: {key.help}")

    kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
    if _not_utf8(value):
        raise bad(f"{value!r} is not valid UTF-8 text")
    if isinstance(value, str) and where.startswith(("environment", "flag")):
        try:
            value = _from_text(key, value)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if list in kinds and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        want = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise bad(f"expected {want}, got {type(value).__name__} {value!r}")
    if isinstance(value, list) and key.item is not None:
        for item in value:
            if not isinstance(item, key.item) or isinstance(item, bool):
                raise bad(f"every item must be {key.item.__name__}, got {item!r}")
    if key.check and value is not None and (problem := key.check(value)):
        raise bad(problem)
    return value


def _from_text(key: Key, text: str) -> Any:
    """A variable's or flag's text as the key's type; ValueError names what is wrong."""
    kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
    if bool in kinds:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return text
    if list in kinds:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if key.item is int:
            return [int(t) if re.fullmatch(r"-?\d+", t) else t for t in items]
        return items
    if dict in kinds:
        try:
            return parse_attribute_pairs(text)
        except ValueError as exc:
            raise ValueError(f"{exc}; {ATTRIBUTE_PAIRS_FIX}") from None
    if int in kinds and re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    if float in kinds:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _flatten(data: dict, where: str, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, value in data.items():
        path = f"{prefix}{name}"
        if not isinstance(name, str):
            raise ConfigError(f"config error: key {name!r} must be a string ({where})")
        if path in KEYS:
            out[path] = value
        elif path in SECTIONS and isinstance(value, dict):
            out.update(_flatten(value, where, path + "."))
        elif path in SECTIONS:
            raise ConfigError(f"config error: {path}: expected a mapping of settings, got "
                              f"{type(value).__name__} ({where})")
        else:
            choices = sorted(KEYS) + sorted(SECTIONS)
            close = difflib.get_close_matches(path, choices, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see `spanprobe config-keys`"
            raise ConfigError(f"config error: unknown key '{path}' ({where}); {hint}")
    return out


def load_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}; "
                          "give an existing file with --config") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"config error: {path} line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; "
                          "save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config error: {path}{line}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {path}: the top level must be a mapping of settings")
    return _flatten(data, f"file {path}")


# the standard OpenTelemetry variables behind our keys, the signal-specific one first
OTEL_VARIABLES = {
    "export.otlp_endpoint": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "export.otlp_protocol": ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    "sampling.sampler": ("OTEL_TRACES_SAMPLER",),
}
# read for sampling.ratio only when the sampler is a ratio one: for other samplers the
# specification leaves its meaning to them, so a value meant for another sampler is no error
SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
# variables the SDK's exporters read themselves: checked here, or a bad one is a traceback
SDK_COMPRESSION = ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
SDK_TIMEOUT = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def _otel_env(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Key -> (value, the variable it came from), for the OTEL_* variables that are set."""
    out = {}
    for path, names in OTEL_VARIABLES.items():
        for name in names:
            if env.get(name):
                out[path] = (env[name], name)
                break
    return out


def _check_sdk_variables(env: dict[str, str], protocol: str) -> None:
    compressions = ("none", "gzip") if protocol == "grpc" else ("none", "gzip", "deflate")
    for name in SDK_COMPRESSION:
        if name in env and env[name].strip().lower() not in compressions:
            raise ConfigError(f"config error: environment {name}: {env[name]!r} is not one of "
                              f"{', '.join(compressions)} (for {protocol}); set one of them or unset it")
    for name in SDK_TIMEOUT:
        if name in env:
            try:
                ok = float(env[name]) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"config error: environment {name}: {env[name]!r} is not a positive "
                                  "number; unset it (export.timeout_s sets spanprobe's timeout)")


def resolve(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None,
            file: Path | None = None) -> Settings:
    """argument > environment > file > default."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    env = dict(os.environ if env is None else env)
    if _not_utf8(env.get("SPANPROBE_CONFIG")):
        raise ConfigError("config error: environment SPANPROBE_CONFIG: the path is not valid UTF-8; "
                          "rename the file")
    file = file or (Path(env["SPANPROBE_CONFIG"]) if env.get("SPANPROBE_CONFIG") else None)
    from_file = load_file(file) if file else {}
    values, source = {}, {}
    otel = _otel_env(env)
    for key in SCHEMA:
        if key.path in flags:
            raw, where = flags[key.path], f"flag {key.flag}" if key.flag else f"flag for {key.path}"
        elif key.env in env:
            raw, where = env[key.env], f"environment {key.env}"
        elif key.path in otel:
            raw, name = otel[key.path]
            where = f"environment {name}"
        elif key.path in from_file:
            raw, where = from_file[key.path], f"file {file}"
        else:
            values[key.path], source[key.path] = key.default, "default"
            continue
        values[key.path] = _coerce(key, raw, where)
        source[key.path] = where
    if (values["sampling.sampler"].endswith("traceidratio") and source["sampling.ratio"] == "default"
            and env.get(SAMPLER_ARG)):
        values["sampling.ratio"] = _coerce(KEYS["sampling.ratio"], env[SAMPLER_ARG], f"environment {SAMPLER_ARG}")
        source["sampling.ratio"] = f"environment {SAMPLER_ARG}"
    unknown = sorted(set(flags) - set(KEYS))
    if unknown:
        raise ConfigError(f"config error: unknown setting {unknown[0]!r} given as a flag")
    otel_resource_attributes(env)
    if values["export.otlp_endpoint"]:
        _check_sdk_variables(env, values["export.otlp_protocol"])
    if values["attributes.rules"]:
        # rules are checked against the privacy lists they must not get around
        from .attributes import compile_rules
        from .privacy import Redactor
        compile_rules(values["attributes.rules"],
                      Redactor(values["privacy.redact_headers"], values["privacy.redact_query_params"]),
                      source["attributes.rules"])
    return Settings(values, source, file)


def describe_keys() -> str:
    width = max(len(k.path) for k in SCHEMA)
    return "\n".join(f"{k.path:<{width}}  {k.env:<34} default {k.default!r}: {k.help}" for k in SCHEMA)
