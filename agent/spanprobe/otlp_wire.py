"""OTLP trace requests encoded straight to protobuf wire bytes.

Why: profiled under load (py-spy, bench/README.md), the SDK's `encode_spans` took two
thirds of the agent's CPU. It builds a Python protobuf object per span, per attribute and
per value, then serialises them. Here each span is written as bytes in one pass, the
resource and scope of a process are encoded once and reused, and the key/value pairs an
HTTP span repeats (method, protocol, route…) come from a bounded cache.

The output is byte-for-byte what the SDK's encoder gives for the same spans (fields in
number order, proto3 defaults left out, oneof values always written):
tests/unit/test_otlp_wire.py compares the two. Spans with events or links (spanprobe
makes none) go through the SDK's encoder, whole batch, so nothing is encoded wrongly.
It reads the agent's own span type (spans.Span) as a compiled struct.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .spans import Span, from_readable

_FIXED64: Final = struct.Struct("<Q").pack
_DOUBLE: Final = struct.Struct("<d").pack

# wire tags: (field << 3) | wire type
_T_RESOURCE_SPANS: Final = b"\x0a"          # ExportTraceServiceRequest.resource_spans = 1
_T_RS_RESOURCE: Final = b"\x0a"             # ResourceSpans.resource = 1
_T_RS_SCOPE_SPANS: Final = b"\x12"          # ResourceSpans.scope_spans = 2
_T_SCHEMA_URL: Final = b"\x1a"              # ResourceSpans/ScopeSpans.schema_url = 3
_T_SS_SCOPE: Final = b"\x0a"                # ScopeSpans.scope = 1
_T_SS_SPAN: Final = b"\x12"                 # ScopeSpans.spans = 2
_T_ATTR: Final = b"\x0a"                    # Resource.attributes = 1
_FLAGS_HAS_IS_REMOTE: Final = 0x100         # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_IS_REMOTE: Final = 0x200             # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_KV_CACHE_LIMIT = 8192               # (key, str or int value) pairs kept encoded; cleared when full
_KV_VALUES_PER_KEY = 512             # values of one key kept; past it, that key is encoded per span
_RESOURCE_CACHE_LIMIT: Final = 4096         # one entry per traced process

_SMALL_VARINTS: Final = [bytes([n]) for n in range(128)]
_INT64_LIMIT: Final = 1 << 63
_KEY_CACHE_LIMIT: Final = 4096      # attribute keys kept encoded (a few dozen in practice)
_NAME_CACHE_LIMIT: Final = 4096     # span names kept encoded ("GET /users/{id}" repeats)
_BASE_CACHE_LIMIT: Final = 4096     # connections' shared span attributes kept encoded
# the last two fields of most spans, made once: status unset, and the flags field (16,
# fixed32) with or without the remote bit
_STATUS_UNSET: Final = b"\x7a\x00"
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)


def varint(n: int) -> bytes:
    if n < 128:
        if n >= 0:
            return _SMALL_VARINTS[n]
        n += 1 << 64                  # int64: two's complement, ten bytes
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _string(tag: bytes, value: str) -> bytes:
    raw = value.encode()
    return tag + varint(len(raw)) + raw


def any_value(value) -> bytes:
    """An AnyValue message (without its own tag and length)."""
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, int):
        if -_INT64_LIMIT <= value < _INT64_LIMIT:
            return b"\x18" + varint(value)
        # past int64 no varint can hold it (the SDK's encoder raises and loses the batch):
        # its digits, as a string value
        return _string(b"\x0a", str(value))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", key_value(str(k), v))
                                        for k, v in value.items()))
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be encoded")


def key_value(key: str, value) -> bytes:
    """A KeyValue message (without its own tag and length)."""
    return _string(b"\x0a", key) + _field(b"\x12", any_value(value))


class SpanEncoder:
    """Encodes batches of spans (spans.Span) into one ExportTraceServiceRequest.

    Keeps its caches between batches: use one encoder per exporter thread."""

    def __init__(self):
        self._resources: dict[int, tuple[object, bytes]] = {}
        self._scopes: dict[int, tuple[object, bytes]] = {}
        self._kv: dict[bytes, dict[str, dict[str | int, bytes]]] = {}   # tag -> key -> value -> field
        self._kv_size = 0
        self._keys: dict[str, bytes] = {}      # key -> its KeyValue's key field and value tag
        self._names: dict[str, bytes] = {}
        self._bases: dict[int, tuple[dict[str, Any], bytes]] = {}

    # ---- attributes ----
    def attributes(self, tag: bytes, attrs: dict[str, Any], skip: int = 0) -> bytes:
        """Every attribute as a repeated KeyValue field with the given tag. A dict (the
        compiled loop iterates it directly); other mappings are copied into one first.

        A str or int value's field is cached by key, then by value: no pair is made and
        hashed per attribute, and a key's name is the same object span after span, so it
        is found by identity. At most _KV_VALUES_PER_KEY values a key are kept: a key
        whose values rarely repeat (a path, a port) stops filling the cache and leaves it
        to the pairs that do repeat; all of it is cleared at _KV_CACHE_LIMIT."""
        if not attrs:
            return b""
        out = []
        by_key = self._kv.get(tag)
        if by_key is None:
            by_key = self._kv[tag] = {}
        for key, value in attrs.items():
            if skip:                # the first `skip` items: written already (_base)
                skip -= 1
                continue
            cls = type(value)
            # str and int only: a bool or float equal to a cached int (True == 1 == 1.0)
            # would share its entry
            if cls is str or cls is int:
                values = by_key.get(key)
                if values is None:
                    values = by_key[key] = {}
                enc = values.get(value)
                if enc is None:
                    enc = self._pair(tag, key, value, cls is int)
                    if len(values) < _KV_VALUES_PER_KEY:
                        if self._kv_size >= _KV_CACHE_LIMIT:
                            self._kv.clear()      # many keys and values: start again
                            self._kv_size = 0
                            by_key = self._kv[tag] = {}
                            values = by_key[key] = {}
                        values[value] = enc
                        self._kv_size += 1
                out.append(enc)
            else:
                out.append(_field(tag, key_value(key, value)))
        return b"".join(out)

    def _pair(self, tag: bytes, key: str, value: Any, is_int: bool) -> bytes:
        """The field of one str or int attribute (`is_int`: which) not in the cache,
        its key's part made once: a value that changes per connection (a client port)
        misses the cache span after span, its key does not."""
        head = self._keys.get(key)
        if head is None:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            head = self._keys[key] = _string(b"\x0a", key) + b"\x12"
        if is_int:
            n: int = value
            if not 0 <= n < 1 << 32:        # negative (ten bytes) or large: the general path
                return _field(tag, key_value(key, value))
            av = b"\x18" + varint(n)
        else:
            text: str = value
            av = _string(b"\x0a", text)
        kv = head + varint(len(av)) + av
        return tag + varint(len(kv)) + kv

    # ---- resource and scope, once per object ----
    def _resource(self, resource) -> bytes:
        hit = self._resources.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1]
        enc = _field(_T_RS_RESOURCE, self.attributes(_T_ATTR, dict(resource.attributes or {})))
        if len(self._resources) >= _RESOURCE_CACHE_LIMIT:
            self._resources.clear()
        self._resources[id(resource)] = (resource, enc)   # holds it: its id is not reused
        return enc

    def _base(self, base: dict[str, Any]) -> bytes:
        """The fields of a span's shared attributes (Span.attr_base), once per dict."""
        hit = self._bases.get(id(base))
        if hit is not None and hit[0] is base:
            return hit[1]
        enc = self.attributes(b"\x4a", base)
        if len(self._bases) >= _BASE_CACHE_LIMIT:
            self._bases.clear()
        self._bases[id(base)] = (base, enc)     # holds it: its id is not reused meanwhile
        return enc

    def _scope(self, scope) -> bytes:
        hit = self._scopes.get(id(scope))
        if hit is not None and hit[0] is scope:
            return hit[1]
        if scope is None:
            body = b""
        else:
            body = ((_string(b"\x0a", scope.name) if scope.name else b"")
                    + (_string(b"\x12", scope.version) if scope.version else b"")
                    + self.attributes(b"\x1a", dict(scope.attributes or {})))
        enc = _field(_T_SS_SCOPE, body)
        if len(self._scopes) >= _RESOURCE_CACHE_LIMIT:
            self._scopes.clear()
        self._scopes[id(scope)] = (scope, enc)
        return enc

    # ---- one span ----
    def span(self, s: Span) -> bytes:
        parts = [b"\x0a\x10", s.trace_id.to_bytes(16, "big"),
                 b"\x12\x08", s.span_id.to_bytes(8, "big")]
        if s.trace_state:
            parts.append(_string(b"\x1a", s.trace_state))
        remote = False
        if s.parent_span_id:
            parts += (b"\x22\x08", s.parent_span_id.to_bytes(8, "big"))
            remote = bool(s.parent_remote)
        name = s.name
        if name:
            enc = self._names.get(name)
            if enc is None:
                enc = _string(b"\x2a", name)
                if len(self._names) >= _NAME_CACHE_LIMIT:
                    self._names.clear()
                self._names[name] = enc
            parts.append(enc)
        parts += (b"\x30", _SMALL_VARINTS[s.kind_code])
        if s.start_time:
            parts += (b"\x39", _FIXED64(s.start_time))
        if s.end_time:
            parts += (b"\x41", _FIXED64(s.end_time))
        base = s.attr_base
        if base is None:
            parts.append(self.attributes(b"\x4a", s.attributes))
        else:       # the connection's attributes first, as they are in s.attributes
            parts += (self._base(base), self.attributes(b"\x4a", s.attributes, len(base)))
        if s.dropped_attributes:
            parts += (b"\x50", varint(s.dropped_attributes))
        code = s.status_code
        desc = s.status_description
        if code or desc:
            parts.append(_field(b"\x7a", (_string(b"\x12", desc) if desc else b"")
                                + (b"\x18" + _SMALL_VARINTS[code] if code else b"")))
        else:
            parts.append(_STATUS_UNSET)
        parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)    # field 16, fixed32
        return b"".join(parts)

    # ---- a batch ----
    def encode(self, spans: Sequence[Any]) -> bytes:
        """One ExportTraceServiceRequest, serialised. The agent's Spans are read as they
        are; other spans (SDK ReadableSpans) are read once into Spans, or, when one has
        events or links (which spanprobe never makes), the whole batch goes through the
        SDK's encoder, so nothing is encoded wrongly."""
        own: list[Span] = []
        for s in spans:
            if not isinstance(s, Span):
                if s.events or s.links or s.dropped_events or s.dropped_links:
                    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
                    return encode_spans(spans).SerializePartialToString()
                s = from_readable(s)
            own.append(s)
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        span = self.span
        for s in own:
            res = s.resource
            scopes = groups.get(id(res))
            if scopes is None:
                scopes = groups[id(res)] = (res, {})
            scope = s.instrumentation_scope or None
            entry = scopes[1].get(id(scope))
            if entry is None:
                entry = scopes[1][id(scope)] = (scope, [])
            enc = span(s)
            entry[1].extend((_T_SS_SPAN, varint(len(enc)), enc))
        out = []
        for res, by_scope in groups.values():
            body = [self._resource(res)]
            for scope, parts in by_scope.values():
                scope_body = self._scope(scope) + b"".join(parts)
                if scope is not None and scope.schema_url:
                    scope_body += _string(_T_SCHEMA_URL, scope.schema_url)
                body.append(_field(_T_RS_SCOPE_SPANS, scope_body))
            if res.schema_url:
                body.append(_string(_T_SCHEMA_URL, res.schema_url))
            out.append(_field(_T_RESOURCE_SPANS, b"".join(body)))
        return b"".join(out)
