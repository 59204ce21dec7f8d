"""Business attributes: declarative rules that turn parts of a request or response into
span attributes (customer.id from a header, order.id from a JSON body, ...).

Beyla/OBI offer opt-in headers and whole bodies; here each rule names one value, bounded
in length and cardinality, typed, and scoped to the services it is meant for. Privacy
holds: a rule cannot read a denied header or a secret-looking field unless it asks for a
hash of it (`hash: sha256`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .errors import ConfigError
from .jsonprefix import UNSET, extract
from .privacy import Redactor
from .routes import Template, compile_template

SOURCES = ("header", "response_header", "path", "query", "json_body")
TYPES = ("string", "int", "float", "bool")
RULE_KEYS = {"from", "name", "attribute", "route", "path", "type", "hash", "body",
             "service", "port", "exe", "max_length"}
# attributes the agent sets from the HTTP exchange; a rule must not overwrite them
RESERVED_PREFIXES = ("http.", "url.", "server.", "client.", "network.", "user_agent.", "spanprobe.")
RESERVED_NAMES = frozenset({"error.type"})
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_JSONPATH = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\]|\['[^']+'\])+$")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']+)'\]")
# what an int or float attribute accepts as text (not Python's "1_000", "nan", "inf", "٣")
_INT_TEXT = re.compile(r"[-+]?[0-9]+", re.ASCII)
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_INT64 = (-2**63, 2**63 - 1)       # OTLP int attributes; a bigger one fails the export
_SURROGATE = re.compile("[\ud800-\udfff]")   # JSON "\ud800": not UTF-8, fails the export


@dataclass(frozen=True)
class Rule:
    index: int
    source: str
    attribute: str | None             # None for path rules (each {name} is one)
    name: str | None = None           # header or query parameter
    route: Template | None = None     # path rules
    steps: tuple = ()                 # json_body: keys and indexes
    body: str = "request"             # json_body: request or response
    type: str = "string"
    hash: bool = False
    services: frozenset = frozenset()
    ports: frozenset = frozenset()
    exes: frozenset = frozenset()
    max_length: int | None = None

    @property
    def label(self) -> str:
        return f"attributes.rules[{self.index}]"

    def applies(self, service: str, port: int | None, names: set[str]) -> bool:
        if self.services and service not in self.services:
            return False
        if self.ports and port not in self.ports:
            return False
        if self.exes and not (self.exes & names):
            return False
        return True


def _err(index: int, problem: str, where: str) -> ConfigError:
    return ConfigError(f"config error: attributes.rules[{index}]: {problem} ({where})")


def _as_set(value, kind, index, key, where) -> frozenset:
    if value is None:
        return frozenset()
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise _err(index, f"{key}: {item!r} must be {kind.__name__}", where)
    return frozenset(items)


def compile_rules(raw: list, redactor: Redactor, where: str = "config") -> list[Rule]:
    """Validate and compile `attributes.rules`; the first problem is a one-line error."""
    rules = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise _err(i, f"a rule is a mapping like {{from: header, name: X-Customer-Id, "
                          f"attribute: customer.id}}, got {r!r}", where)
        unknown = sorted(set(r) - RULE_KEYS, key=str)
        if unknown:
            raise _err(i, f"unknown key {unknown[0]!r}; a rule has {', '.join(sorted(RULE_KEYS))}", where)
        source = r.get("from")
        if source not in SOURCES:
            raise _err(i, f"from: {source!r} is not one of {', '.join(SOURCES)}", where)
        typ = r.get("type", "string")
        if typ not in TYPES:
            raise _err(i, f"type: {typ!r} is not one of {', '.join(TYPES)}", where)
        hashed = r.get("hash")
        if hashed not in (None, "sha256"):
            raise _err(i, f"hash: {hashed!r}: only sha256 is supported", where)
        if hashed and typ != "string":
            raise _err(i, "a hashed value is a string: drop type or hash", where)
        attribute = r.get("attribute")
        if source != "path":
            if not isinstance(attribute, str) or not _ATTR.match(attribute):
                raise _err(i, f"attribute: {attribute!r} must be an attribute name like customer.id", where)
            if attribute.startswith(RESERVED_PREFIXES) or attribute in RESERVED_NAMES:
                raise _err(i, f"attribute: {attribute} is set by spanprobe itself (HTTP semantic "
                              "conventions); pick a name of your own like app.{attribute}", where)
        max_length = r.get("max_length")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                       or not 1 <= max_length <= 4096):
            raise _err(i, f"max_length: {max_length!r} must be an integer 1..4096", where)
        common = dict(index=i, source=source, type=typ, hash=bool(hashed), max_length=max_length,
                      services=_as_set(r.get("service"), str, i, "service", where),
                      ports=_as_set(r.get("port"), int, i, "port", where),
                      exes=_as_set(r.get("exe"), str, i, "exe", where))
        if source in ("header", "response_header", "query"):
            name = r.get("name")
            if not isinstance(name, str) or not name:
                raise _err(i, f"from: {source} needs name: the {'parameter' if source == 'query' else 'header'} to read", where)
            if not hashed:
                if source != "query" and not redactor.header_allowed(name):
                    raise _err(i, f"header {name} is denied by privacy.redact_headers; "
                                  "add hash: sha256 to export a hash of it", where)
                if source == "query" and redactor.secret_param(name):
                    raise _err(i, f"query parameter {name} looks secret; add hash: sha256 to "
                                  "export a hash of it", where)
            rules.append(Rule(attribute=attribute, name=name.lower() if source != "query" else name, **common))
        elif source == "path":
            route = r.get("route")
            if not isinstance(route, str) or not route.startswith("/") or "{" not in route:
                raise _err(i, f"from: path needs route: a template like /customers/{{customer_id}}, got {route!r}", where)
            tpl = compile_template(route)
            if not any(tpl.names):
                raise _err(i, f"route: {route!r} has no parameter; name one like {{customer_id}}", where)
            for pname in tpl.names:
                if pname is not None and not hashed and redactor.secret_param(pname):
                    raise _err(i, f"path parameter {pname} looks secret; add hash: sha256", where)
            rules.append(Rule(attribute=None, route=tpl, **common))
        else:
            path = r.get("path")
            if not isinstance(path, str) or not _JSONPATH.match(path):
                raise _err(i, f"path: {path!r} must be a JSONPath like $.order.id or $.items[0].sku", where)
            steps = tuple(m.group(1) or m.group(3) or int(m.group(2)) for m in _STEP.finditer(path[1:]))
            if not hashed:
                secret = [s for s in steps if isinstance(s, str) and redactor.secret_param(s)]
                if secret:
                    raise _err(i, f"JSON field {secret[0]} looks secret; add hash: sha256", where)
            body = r.get("body", "request")
            if body not in ("request", "response"):
                raise _err(i, f"body: {body!r} is request or response", where)
            rules.append(Rule(attribute=attribute, steps=steps, body=body, **common))
    return rules


@dataclass
class Extractor:
    rules: list[Rule]
    max_value_length: int = 256
    max_cardinality: int = 1000
    counts: dict = field(default_factory=lambda: {
        "attributes_set": 0, "attributes_truncated": 0, "attributes_type_dropped": 0,
        "attributes_cardinality_dropped": 0, "attributes_beyond_capture": 0})
    seen: dict = field(default_factory=dict)    # (service, attribute) -> set of values

    def for_service(self, service: str, port: int | None, names: set[str]) -> list[Rule]:
        return [r for r in self.rules if r.applies(service, port, names)]

    def body_bytes(self, rules: list[Rule]) -> tuple[bool, bool]:
        """(request body needed, response body needed)"""
        return (any(r.source == "json_body" and r.body == "request" for r in rules),
                any(r.source == "json_body" and r.body == "response" for r in rules))

    def route_for(self, rules: list[Rule], path: str) -> str | None:
        parts = path.strip("/").split("/") if path.strip("/") else []
        for r in rules:
            if r.source == "path" and r.route.match(parts) is not None:
                return r.route.text
        return None

    def apply(self, rules: list[Rule], service: str, req, resp, path: str, query: str,
              attrs: dict) -> None:
        for r in rules:
            if r.source == "header":
                self._set(r, service, req.headers.get(r.name, UNSET), attrs)
            elif r.source == "response_header":
                self._set(r, service, resp.headers.get(r.name, UNSET) if resp else UNSET, attrs)
            elif r.source == "query":
                value = UNSET
                for k, v in parse_qsl(query, keep_blank_values=True):
                    if k == r.name:
                        value = v
                        break
                self._set(r, service, value, attrs)
            elif r.source == "path":
                parts = path.strip("/").split("/") if path.strip("/") else []
                params = r.route.match(parts)
                if params:
                    for pname, value in params.items():
                        self._set(r, service, value, attrs, attribute=pname)
            else:
                msg = req if r.body == "request" else resp
                if msg is None or msg.body is None:
                    continue
                value = extract(bytes(msg.body), r.steps)
                if value is UNSET and msg.body_incomplete:
                    self.counts["attributes_beyond_capture"] += 1
                    continue
                self._set(r, service, value, attrs)

    def _set(self, r: Rule, service: str, value, attrs: dict, attribute: str | None = None) -> None:
        if value is UNSET or value is None:
            return
        name = attribute or r.attribute
        # a hash is of the value as text (true, 42, 1.5 as JSON writes them)
        value = self._typed("string" if r.hash else r.type, value)
        if value is UNSET:
            self.counts["attributes_type_dropped"] += 1
            return
        if r.hash:
            value = hashlib.sha256(value.encode()).hexdigest()
        if isinstance(value, str):
            limit = r.max_length or self.max_value_length
            if len(value) > limit:
                value = value[:limit]
                self.counts["attributes_truncated"] += 1
        seen = self.seen.setdefault((service, name), set())
        if value not in seen:
            if len(seen) >= self.max_cardinality:
                self.counts["attributes_cardinality_dropped"] += 1
                return
            seen.add(value)
        attrs[name] = value
        self.counts["attributes_set"] += 1

    @staticmethod
    def _typed(typ: str, value):
        if isinstance(value, (dict, list)):
            return UNSET
        try:
            if typ == "string":
                text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
                return UNSET if _SURROGATE.search(text) else text
            if typ == "int":
                if isinstance(value, bool):
                    return UNSET
                if isinstance(value, float):
                    out = int(value) if value.is_integer() else UNSET
                elif isinstance(value, int):
                    out = value
                else:
                    text = str(value).strip()
                    out = int(text) if _INT_TEXT.fullmatch(text) else UNSET
                return out if out is UNSET or _INT64[0] <= out <= _INT64[1] else UNSET
            if typ == "float":
                if isinstance(value, bool):
                    return UNSET
                if isinstance(value, (int, float)):
                    out = float(value)
                else:
                    text = str(value).strip()
                    out = float(text) if _FLOAT_TEXT.fullmatch(text) else UNSET
                return out if out is UNSET or math.isfinite(out) else UNSET
            if typ == "bool":
                if isinstance(value, bool):
                    return value
                low = str(value).strip().lower()
                if low in ("true", "1", "yes"):
                    return True
                if low in ("false", "0", "no"):
                    return False
                return UNSET
        except (ValueError, OverflowError):
            return UNSET
        return UNSET
