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

from .errors import ConfigError

ATTACH_MODES = ("auto", "tracepoint", "kprobe", "fentry")
BUFFER_KINDS = ("auto", "ringbuf", "perf")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")

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


def _endpoint(v: str | None) -> str | None:
    if v is None or re.match(r"^https?://[^/\s]+(/\S*)?$", v):
        return None
    return f"{v!r} is not a URL like http://127.0.0.1:4317"


def _route(vs: list) -> str | None:
    for v in vs:
        if not v.startswith("/"):
            return f"route {v!r} must start with /"
    return None


SCHEMA: tuple[Key, ...] = (
    Key("select.ports", list, [], "trace processes listening on these ports", _ports, int),
    Key("select.pids", list, [], "trace these process ids (and their children)", None, int),
    Key("select.exe", list, [], "trace processes by executable or script name, or full path",
        None, str),
    Key("select.exclude_exe", list, [], "never trace these executables", None, str),
    Key("export.otlp_endpoint", (str, type(None)), None,
        "OTLP receiver URL (else OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)", _endpoint),
    Key("export.otlp_protocol", str, "grpc", "grpc or http/protobuf", _one_of(OTLP_PROTOCOLS)),
    Key("export.console", bool, False, "also print one line per span on stdout"),
    Key("export.queue_size", int, 20000, "spans waiting for export before drops", _between(1, 10**7)),
    Key("export.batch_size", int, 512, "spans per export call", _between(1, 100000)),
    Key("export.max_attempts", int, 3, "attempts per batch when an exporter fails without saying "
        "whether to retry (OTLP answers decide themselves)", _between(1, 20)),
    Key("export.timeout_s", float, 10.0, "seconds one export call may take", _between(0.1, 300)),
    Key("export.max_retry_delay_s", float, 60.0, "longest wait before retrying a batch, "
        "a receiver's Retry-After or RetryInfo included", _between(1, 3600)),
    Key("capture_bytes", int, 2048, "bytes copied per read/write buffer", _between(64, 4096)),
    Key("attach_mode", str, "auto", "auto, tracepoint, kprobe or fentry", _one_of(ATTACH_MODES)),
    Key("buffer", str, "auto", "auto, ringbuf or perf", _one_of(BUFFER_KINDS)),
    Key("ring_buffer_pages", int, 1024, "ring buffer size in 4 KiB pages", _power_of_two),
    Key("poll_interval_ms", int, 50, "how often the event buffer is drained", _between(1, 1000)),
    Key("routes", list, [], "route templates such as /users/{id}", _route, str),
    Key("privacy.redact_headers", list, list(DEFAULT_REDACT_HEADERS),
        "headers whose values never leave the host", None, str),
    Key("privacy.redact_query_params", list, list(DEFAULT_REDACT_QUERY),
        "query parameters whose values are replaced by REDACTED", None, str),
    Key("resource_attributes", dict, {}, "added to every span's resource"),
    Key("attributes.rules", list, [], "business attribute rules (see README: Business attributes)",
        None, dict),
    Key("attributes.max_value_length", int, 256, "longest attribute value kept", _between(1, 4096)),
    Key("attributes.max_cardinality", int, 1000, "distinct values per attribute and service",
        _between(1, 10**6)),
    Key("attributes.max_body_bytes", int, 4096, "bytes of a body kept for json_body rules",
        _between(64, 65536)),
    Key("log_level", str, "info", "debug, info, warning or error",
        _one_of(("debug", "info", "warning", "error"))),
    Key("stats_interval_s", float, 30.0, "how often counters are logged", _between(0.5, 86400)),
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

    @property
    def trace_all(self) -> bool:
        return not (self["select.ports"] or self["select.pids"] or self["select.exe"])


def _coerce(key: Key, value: Any, where: str) -> Any:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"config error: {key.path}: {problem} ({where}); {key.path} is: {key.help}")

    kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
    if isinstance(value, str) and where.startswith(("environment", "flag")):
        value = _from_text(key, value)
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
        return {k.strip(): v.strip() for k, _, v in
                (kv.partition("=") for kv in text.split(",") if "=" in kv)}
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
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}; "
                          "give an existing file with --config") from None
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


def _otel_env(env: dict[str, str]) -> dict[str, str]:
    """The standard OTLP variables, mapped onto our keys (after SPANPROBE_* ones)."""
    out = {}
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        out["export.otlp_endpoint"] = endpoint
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol:
        out["export.otlp_protocol"] = protocol
    return out


def resolve(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None,
            file: Path | None = None) -> Settings:
    """argument > environment > file > default."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    env = dict(os.environ if env is None else env)
    file = file or (Path(env["SPANPROBE_CONFIG"]) if env.get("SPANPROBE_CONFIG") else None)
    from_file = load_file(file) if file else {}
    values, source = {}, {}
    otel = _otel_env(env)
    for key in SCHEMA:
        if key.path in flags:
            raw, where = flags[key.path], f"flag for {key.path}"
        elif key.env in env:
            raw, where = env[key.env], f"environment {key.env}"
        elif key.path in otel:
            raw, where = otel[key.path], "environment OTEL_EXPORTER_OTLP_*"
        elif key.path in from_file:
            raw, where = from_file[key.path], f"file {file}"
        else:
            values[key.path], source[key.path] = key.default, "default"
            continue
        values[key.path] = _coerce(key, raw, where)
        source[key.path] = where
    unknown = sorted(set(flags) - set(KEYS))
    if unknown:
        raise ConfigError(f"config error: unknown setting {unknown[0]!r} given as a flag")
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
