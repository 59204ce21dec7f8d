"""Exchanges -> OpenTelemetry spans (HTTP semantic conventions, stable names).

Spans are built directly, as `Span`s, and handed to the exporters in batches: going
through the SDK's tracer API costs 35-45 µs a span here, most of it in machinery
(context, processors, locks) that an agent replaying finished work does not need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from . import __version__, app_routes
from . import events as ev
from .clock import MonotonicToWall
from .discovery import ProcessRegistry
from .httpparse import METHODS
from .privacy import REDACTED, Redactor
from .routes import RouteMatcher
from .app_routes import AppRoutes
from .streams import Connection, Exchange

log = logging.getLogger("spanprobe.spans")

SCOPE: Final = InstrumentationScope("spanprobe", __version__)
# OTLP's numbers: SpanKind is the SDK's value + 1; StatusCode is the SDK's value
KIND_SERVER: Final = SpanKind.SERVER.value + 1
KIND_CLIENT: Final = SpanKind.CLIENT.value + 1
_SDK_KINDS = {k.value + 1: k for k in SpanKind}
STATUS_ERROR: Final = StatusCode.ERROR.value
_SAMPLED: Final = int(TraceFlags.SAMPLED)      # the W3C sampled flag


class Span:
    """A finished span as the agent hands it to its exporters.

    Plain fields, which the encoder (otlp_wire) reads as a compiled struct. The SDK's
    ReadableSpan cost 3-4 µs a span here: its __init__, two SpanContexts and a Status
    are Python, and the encoder read each field through a Python property. Every other
    reader (the SDK's own exporters, where spanprobe falls back to them, the console
    line, tests) reads the ReadableSpan interface below, made on demand. The agent's
    spans have no events or links and drop nothing (attributes.py bounds attributes)."""

    def __init__(self, name: str, trace_id: int, span_id: int, parent_span_id: int,
                 parent_remote: bool, trace_flags: int, kind_code: int, resource: Any,
                 attributes: dict[str, Any], start_time: int, end_time: int,
                 status_code: int = 0, status_description: str | None = None,
                 trace_state: str = "", dropped_attributes: int = 0,
                 instrumentation_scope: Any = SCOPE, attr_base: dict[str, Any] | None = None) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id      # 0: a root span
        self.parent_remote = parent_remote
        self.trace_flags = trace_flags
        self.trace_state = trace_state            # W3C tracestate header form; "": none
        self.kind_code = kind_code                # OTLP's SpanKind number
        self.resource = resource
        self.attributes = attributes
        self.start_time = start_time
        self.end_time = end_time
        self.status_code = status_code            # OTLP's (and the SDK's) StatusCode number
        self.status_description = status_description
        self.dropped_attributes = dropped_attributes
        self.instrumentation_scope = instrumentation_scope
        # None, or a dict shared by the spans of one connection whose items are the first
        # ones of `attributes`, as they are there (SpanBuilder copies it, then adds): the
        # encoder writes its fields once and reuses them. Never changed once made.
        self.attr_base = attr_base

    # ---- the SDK ReadableSpan's reading interface ----
    def _trace_state(self) -> TraceState | None:
        return TraceState.from_header([self.trace_state]) if self.trace_state else None

    @property
    def context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, False, TraceFlags(self.trace_flags),
                           self._trace_state())

    def get_span_context(self) -> SpanContext:
        return self.context

    @property
    def parent(self) -> SpanContext | None:
        if not self.parent_span_id:
            return None
        return SpanContext(self.trace_id, self.parent_span_id, self.parent_remote,
                           TraceFlags(self.trace_flags), self._trace_state())

    @property
    def kind(self) -> SpanKind:
        return _SDK_KINDS[self.kind_code]

    @property
    def status(self) -> Status:
        return Status(StatusCode(self.status_code), self.status_description)

    @property
    def events(self) -> tuple:
        return ()

    @property
    def links(self) -> tuple:
        return ()

    @property
    def dropped_events(self) -> int:
        return 0

    @property
    def dropped_links(self) -> int:
        return 0


def from_readable(s: Any) -> Span:
    """An SDK ReadableSpan (or any span read the same way) without events or links, as a
    Span: what the encoder takes from callers other than the agent."""
    ctx = s.context
    parent = s.parent
    state = ctx.trace_state
    status = s.status
    return Span(s.name, ctx.trace_id, ctx.span_id, parent.span_id if parent is not None else 0,
                bool(parent is not None and parent.is_remote), int(ctx.trace_flags),
                s.kind.value + 1, s.resource, dict(s.attributes or {}), s.start_time or 0,
                s.end_time or 0, status.status_code.value if status is not None else 0,
                status.description if status is not None else None,
                state.to_header() if state else "", s.dropped_attributes or 0,
                s.instrumentation_scope)

SDK_ATTRIBUTES = {
    "telemetry.sdk.name": "spanprobe",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.version": __version__,
}


def split_host(value: str | None) -> tuple[str | None, int | None]:
    """(host, port) of a Host header, which the client wrote: a port is 1-65535 in ASCII
    digits or none (a superscript digit is isdigit() but not int()'s, and a number past
    int64 would have made the span's encoding, and its whole batch, unreadable)."""
    if not value:
        return None, None
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.partition(":")
    number = int(port) if 0 < len(port) <= 5 and port.isascii() and port.isdigit() else 0
    return host or None, number if 0 < number <= 65535 else None


_WILDCARDS: Final = ("0.0.0.0", "::", "")


def local_end(local: tuple[str, int] | None) -> tuple[str | None, int | None]:
    """The socket's own address and port, without a wildcard address (a listener bound to
    0.0.0.0 or :: says nothing about which address the client reached) or a zero port."""
    if not local:
        return None, None
    address, port = local
    return (None if address in _WILDCARDS else address), (port or None)


def _network_ends(attrs: dict[str, Any], conn: Connection) -> tuple[str | None, int | None]:
    """network.peer.* and network.local.* of the connection into `attrs`; its local end."""
    if conn.peer:
        attrs["network.peer.address"], attrs["network.peer.port"] = conn.peer
    local_address, local_port = local_end(conn.local)
    if local_address:
        attrs["network.local.address"] = local_address
    if local_port:
        attrs["network.local.port"] = local_port
    return local_address, local_port


class SpanBuilder:
    def __init__(self, registry: ProcessRegistry, routes: RouteMatcher, redactor: Redactor,
                 clock: MonotonicToWall, host_name: str, extra_resource: dict[str, object],
                 extractor=None, rules_for=None):
        self.registry = registry
        self.routes = routes
        self.redactor = redactor
        self.clock = clock
        self.host_name = host_name
        self.extra_resource = extra_resource
        self.resources: dict[int, Resource] = {}
        self.app_routes: dict[int, AppRoutes | None] = {}     # pid -> its own route table
        self.extractor = extractor                 # business attributes (attributes.py)
        self.rules_for: Callable[[Any], Sequence[Any]] = rules_for or (lambda conn: [])
        # what targets' own resource variables lost (target_resource), once per process
        self.counts = dict.fromkeys(("target_resource_pairs_skipped", "target_resource_attributes_dropped",
                                     "target_resource_attributes_cut", "target_resource_values_redacted",
                                     # route tables read from processes' own source (app_routes)
                                     "app_route_tables", "app_route_files_unreadable"), 0)

    def forget(self, pid: int) -> None:
        self.resources.pop(pid, None)
        self.app_routes.pop(pid, None)

    def app_route(self, pid: int, path: str) -> str | None:
        """The route of `path` in the process's own route table (read once per process,
        from its source: app_routes), or None."""
        if pid not in self.app_routes:
            table = None
            info = self.registry.get(pid)
            if info is not None:
                try:
                    table = app_routes.for_process(self.registry.root, pid, info.exe_name, info.cmdline, info.env)
                except Exception as exc:     # the target's files: never the agent's failure
                    log.debug("pid %d: no route table: %s", pid, exc)
                    self.counts["app_route_files_unreadable"] += 1
            if table is not None:
                self.counts["app_route_files_unreadable"] += table.unreadable
                if table.templates:
                    self.counts["app_route_tables"] += 1
                else:
                    table = None
            if len(self.app_routes) > 10000:
                self.app_routes.clear()
            self.app_routes[pid] = table
        table = self.app_routes[pid]
        return table.route(path) if table is not None else None

    def resource(self, pid: int) -> Resource:
        """Derived (SDK, host, process) < the agent's own settings (extra_resource, for every
        target) < the target's own variables, which win on a clash as they would in its
        own SDK. Built once per process."""
        res = self.resources.get(pid)
        if res is None:
            attrs: dict[str, Any] = dict(SDK_ATTRIBUTES)
            attrs["host.name"] = self.host_name
            info = self.registry.get(pid)
            if info is not None:
                attrs.update(self.registry.resource_attributes(info))
            else:
                attrs.update({"service.name": f"pid-{pid}", "process.pid": pid})
            attrs.update(self.extra_resource)
            if info is not None:
                attrs.update(self._own(info.own))
            res = self.resources[pid] = Resource(attrs)
        return res

    def _own(self, own) -> dict[str, str]:
        self.counts["target_resource_pairs_skipped"] += own.skipped
        self.counts["target_resource_attributes_dropped"] += own.dropped
        self.counts["target_resource_attributes_cut"] += own.cut
        out = {}
        for key, value in own.attributes.items():
            if key != "service.name" and value and self.redactor.secret_param(key):
                value = REDACTED
                self.counts["target_resource_values_redacted"] += 1
            out[key] = value
        return out

    def build(self, x: Exchange) -> Span:
        req, resp, conn = x.request, x.response, x.conn
        server = conn.role == ev.ROLE_SERVER
        method = req.method or "GET"
        path, query = self.redactor.target(req.target or "/")
        rules = self.rules_for(conn) if self.extractor is not None else ()
        route = self.extractor.route_for(rules, path) if rules else None
        if route is None:
            # configured routes, then the app's own table (server side), then the heuristic
            route, configured = self.routes.route(path)
            if not configured and server:
                route = self.app_route(conn.tgid, path) or route
        host_header = req.headers.get("host")
        base: dict[str, Any] | None = None
        if server:
            # What the connection and its Host header decide: from a connection's second
            # request on, made once and shared (and encoded once: otlp_wire keeps a base's
            # bytes by identity). A connection's first request makes its own, so that a
            # connection per request pays nothing for it.
            key = (conn.peer, conn.local, host_header, req.version)
            cached = conn.span_base
            if cached is not None and cached[0] == key:
                base = cached[1]
                if base is None:
                    base = self._server_base(conn, host_header, req.version)
                    conn.span_base = (key, base)
                attrs: dict[str, Any] = base.copy()
            else:
                conn.span_base = (key, None)
                attrs = self._server_base(conn, host_header, req.version)
        else:
            attrs = {"network.protocol.version": req.version, "network.transport": "tcp"}
        if method in METHODS:
            attrs["http.request.method"] = method
        else:
            attrs["http.request.method"] = "_OTHER"
            attrs["http.request.method_original"] = method
        status = resp.status if resp is not None else None
        if status is not None:
            attrs["http.response.status_code"] = status
        ua = req.headers.get("user-agent")
        if ua:
            attrs["user_agent.original"] = ua
        if req.body_size or req.declared_length:
            attrs["http.request.body.size"] = req.declared_length or req.body_size
        if resp is not None and (resp.body_size or resp.declared_length is not None):
            attrs["http.response.body.size"] = resp.body_size
        if server:
            attrs["url.path"] = path
            if query:
                attrs["url.query"] = query
            attrs["http.route"] = route
            kind = KIND_SERVER
            error = status is None or status >= 500
        else:
            _network_ends(attrs, conn)
            host, host_port = split_host(host_header)
            peer_host = conn.peer[0] if conn.peer else None
            address = host or peer_host or "unknown"
            port = conn.peer[1] if conn.peer else host_port
            attrs["server.address"] = address
            if port:
                attrs["server.port"] = port
            host_part = f"[{address}]" if ":" in address else address   # IPv6 literal
            netloc = host_part if not port or port == 80 else f"{host_part}:{port}"
            attrs["url.full"] = f"http://{netloc}{path}" + (f"?{query}" if query else "")
            attrs["url.template"] = route
            kind = KIND_CLIENT
            error = status is None or status >= 400
        status_code = 0
        description = None
        if x.aborted:
            attrs["error.type"] = x.error_type or "connection_closed"
            status_code, description = STATUS_ERROR, x.aborted
        elif error:
            attrs["error.type"] = str(status)
            status_code = STATUS_ERROR
        if req.truncated:
            attrs["spanprobe.capture.truncated"] = True
        if rules:
            raw_query = (req.target or "").partition("?")[2].split("#", 1)[0]
            self.extractor.apply(rules, self.resource(conn.tgid).attributes.get("service.name", ""),
                                 req, resp, path, raw_query, attrs)
            base = None     # written as one dict where rules wrote to it (config keeps
                            # them off spanprobe's own names, the base's among them)
        start = req.start_ts
        end = resp.end_ts if resp is not None and resp.end_ts else (x.ended_ts or req.end_ts or start)
        # the trace flags come with the trace: an incoming traceparent's (sampled or not,
        # W3C trace-context), else the agent's own choice for a trace it starts (sampled)
        wall = self.clock.wall
        return Span(f"{method} {route}", x.trace_id, x.span_id, x.parent_span_id or 0,
                    x.parent_remote, x.trace_flags, kind, self.resource(conn.tgid), attrs,
                    wall(start), wall(max(end, start)), status_code, description, attr_base=base)

    def _server_base(self, conn: Connection, host_header: str | None, version: str | None) -> dict[str, Any]:
        """A server span's attributes that its connection and the request's Host header
        decide: the same for every request of a keep-alive connection. The semantic
        conventions' server.address is the Host header's (the logical address the client
        asked for); without one, the socket's own end."""
        base: dict[str, Any] = {"network.protocol.version": version, "network.transport": "tcp"}
        local_address, local_port = _network_ends(base, conn)
        base["url.scheme"] = "http"
        if conn.peer:
            base["client.address"], base["client.port"] = conn.peer
        host, host_port = split_host(host_header)
        base["server.address"] = host or local_address or self.host_name
        port = host_port or local_port
        if port:
            base["server.port"] = port
        return base


def build_spans(build: Callable[[Exchange], Span], exchanges: list[Exchange],
                record_fault: Callable[[str, Exception], None]) -> tuple[list[Span], int]:
    """(spans of the sampled exchanges, how many were not sampled). Each exchange is built
    in its own isolation boundary: one that fails is recorded and the rest go on. Here,
    in the compiled module, rather than in the loop: per exchange, a direct call."""
    spans: list[Span] = []
    unsampled = 0
    for x in exchanges:
        if not x.trace_flags & _SAMPLED:
            unsampled += 1
            continue
        try:
            spans.append(build(x))
        except Exception as exc:    # one odd exchange must not stop the agent
            record_fault("build", exc)
    return spans, unsampled

