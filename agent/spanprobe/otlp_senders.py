"""The OTLP exporters: the SDK's transports (TLS, headers, compression from the standard
variables) with spanprobe's encoder (otlp_wire), one attempt per call.

The SDK's exporters retry inside export() within one timeout and give up when the
receiver's Retry-After is longer than what is left of it; the agent's export queue owns
the retries instead (it keeps the batch while it has room), so each attempt here reports
what the receiver said: accepted, "later" (with its delay, if it gave one), or refused.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .otlp_wire import SpanEncoder

log = logging.getLogger("spanprobe.export")

# answers that ask the sender to slow down (OTLP/HTTP and OTLP/gRPC specifications)
THROTTLING_HTTP_STATUSES = frozenset({429, 503})
THROTTLING_GRPC_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})
# what grpc-core says when the peer answered the HTTP/2 preface in HTTP/1
HTTP1_PEER = re.compile(r"Failed parsing HTTP/2|SETTINGS frame|http1\.x", re.IGNORECASE)


@dataclass(frozen=True)
class Attempt:
    """One export attempt's outcome. `retryable` None: the exporter could not tell (a
    plain SpanExporter's FAILURE). `retry_after`: the receiver's own delay, seconds."""

    ok: bool
    retryable: bool | None = None
    throttled: bool = False
    retry_after: float | None = None
    reason: str = ""


ACCEPTED = Attempt(ok=True)


def http_exporter(url: str, timeout: float) -> SpanExporter:
    """OTLP/HTTP: one POST per attempt through the SDK's client (its transport, headers,
    compression); the SDK's own exporter, warned, where its private hooks are missing."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    try:   # the SDK's Retry-After parser and retryable statuses (private, like the hooks below)
        from opentelemetry.exporter.otlp.common.http import _extract_retry_after, _is_retryable
    except ImportError:
        return _sdk_http_exporter(OTLPSpanExporter, url, timeout)

    class Exporter(OTLPSpanExporter):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._spanprobe_encoder = SpanEncoder()

        def attempt(self, spans: Sequence[ReadableSpan]) -> Attempt:
            if self._shutdown:
                return Attempt(False, False, reason="exporter shut down")
            try:
                data = self._spanprobe_encoder.encode(spans)
            except Exception as exc:
                return Attempt(False, False, reason=f"encoding failed: {exc}")
            client = self._client
            result = client._submit(client._compress(data), client._timeout)
            status = result.status_code
            if status is None:
                return Attempt(False, client._transport.is_connection_error(result.error),
                               reason=f"{type(result.error).__name__}: {result.error}")
            what = f"HTTP {status} {result.reason or ''}".strip()
            if 200 <= status < 300:
                return ACCEPTED
            if 300 <= status < 400:   # the SDK counts these as delivered; nothing was
                return Attempt(False, False, reason=f"{what} to {result.headers().get('location', '?')}: "
                                                    "give that URL as the endpoint")
            if _is_retryable(status):
                return Attempt(False, True, status in THROTTLING_HTTP_STATUSES,
                               _extract_retry_after(result), what)
            return Attempt(False, False, reason=what)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS if self.attempt(spans).ok else SpanExportResult.FAILURE

    exporter = Exporter(endpoint=url, timeout=timeout, session=settled_session())
    # _client._submit, _compress, _timeout and _transport are private to the SDK versions in
    # requirements/constraints.txt (tests/unit/test_otlp_wire.py sends through them)
    client = getattr(exporter, "_client", None)
    if not (all(callable(getattr(client, name, None)) for name in ("_submit", "_compress"))
            and hasattr(client, "_timeout") and hasattr(client, "_transport")):
        return _sdk_http_exporter(OTLPSpanExporter, url, timeout)
    return exporter


# a credential provider's own session (an entry point the SDK loads): left to the SDK
CREDENTIAL_PROVIDER_VARIABLES = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                                 "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER")
SETTLED_LIMIT = 64      # request shapes remembered (one exporter sends one)


def settled_session():
    """The session the SDK's OTLP/HTTP transport posts through: requests' own, with two
    differences, both about what `requests` takes from the environment at each request.

    * Read once per request shape, not per POST: `merge_environment_settings` scans every
      environment variable twice per request for proxies (~30% of a POST's CPU with ~75
      variables set), and the agent's environment does not change while it runs.
    * The CA file the SDK set from OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE is used for the
      receiver even where REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is set: requests lets those
      replace a session's own `verify`, so the receiver's private CA was ignored.
    None where a credential provider variable names a session of its own (the SDK loads it)."""
    if any(os.environ.get(name) for name in CREDENTIAL_PROVIDER_VARIABLES):
        return None
    import requests

    class SettledSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.settled: dict[tuple, dict] = {}

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            try:
                key = (url, None if proxies is None else tuple(sorted(proxies.items())), stream,
                       verify, cert, tuple(sorted(self.proxies.items())), self.stream, self.verify,
                       self.cert, self.trust_env)
                settings = self.settled.get(key)
            except TypeError:           # something unhashable: not remembered
                key, settings = None, None
            if settings is None:
                if isinstance(self.verify, str) and verify in (None, True):
                    verify = self.verify        # the receiver's CA over the environment's bundle
                settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
                if key is not None and len(self.settled) < SETTLED_LIMIT:
                    self.settled[key] = settings
            # a copy: what requests is given may be changed by it
            out = dict(settings)
            if settings["proxies"] is not None:
                out["proxies"] = type(settings["proxies"])(settings["proxies"])
            return out

    return SettledSession()


def _sdk_http_exporter(sdk_class, url: str, timeout: float) -> SpanExporter:
    from importlib.metadata import version

    log.warning("opentelemetry-exporter-otlp-proto-http %s has no _client._submit: spans are "
                "encoded and retried by the SDK (slower, and a Retry-After longer than the timeout "
                "fails the batch); requirements/constraints.txt pins a version that has it",
                version("opentelemetry-exporter-otlp-proto-http"))
    return sdk_class(endpoint=url, timeout=timeout)


def grpc_retry_delay(error) -> float | None:
    """The delay a gRPC receiver asked for in its google.rpc.RetryInfo trailer, if any."""
    from google.rpc.error_details_pb2 import RetryInfo

    try:
        raw = dict(error.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
    except Exception:
        return None
    if raw is None:
        return None
    info = RetryInfo()
    try:
        info.ParseFromString(raw)
    except Exception:
        return None
    return max(info.retry_delay.seconds + info.retry_delay.nanos / 1e9, 0.0)


def grpc_compression(env):
    """OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION for gRPC. The SDK's gRPC exporter knows only
    "gzip" and raises on "none", which the specification allows (config.py has rejected
    anything else)."""
    from grpc import Compression

    value = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
             or "none").strip().lower()
    return Compression.Gzip if value == "gzip" else Compression.NoCompression


def grpc_exporter(endpoint: str, insecure: bool, timeout: float) -> SpanExporter:
    """OTLP/gRPC: one Export call per attempt on the SDK's channel (its credentials,
    headers, compression, retryable codes); the request is parsed back from our bytes
    (protobuf's C parser, a small part of what the SDK's Python encoder costs)."""
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class Exporter(OTLPSpanExporter):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._spanprobe_encoder = SpanEncoder()
            self._spanprobe_url = endpoint
            self._http1_warned = False

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(self._spanprobe_encoder.encode(data))

        def attempt(self, spans: Sequence[ReadableSpan]) -> Attempt:
            if self._shutdown or self._client is None:
                return Attempt(False, False, reason="exporter shut down")
            try:
                request = self._translate_data(spans)
            except Exception as exc:
                return Attempt(False, False, reason=f"encoding failed: {exc}")
            try:
                self._client.Export(request=request, metadata=self._headers, timeout=self._timeout)
            except grpc.RpcError as error:
                return self._failed(error)
            return ACCEPTED

        def _failed(self, error) -> Attempt:
            code, details = error.code(), error.details() or ""
            if not self._http1_warned and HTTP1_PEER.search(details):
                self._http1_warned = True
                log.warning("the OTLP receiver at %s answers HTTP/1, not gRPC: if it is an OTLP/HTTP "
                            "endpoint, use --otlp-protocol http/protobuf (or OTEL_EXPORTER_OTLP_PROTOCOL="
                            "http/protobuf) with its port, usually 4318 (gRPC said: %s)",
                            self._spanprobe_url, details)
            return Attempt(False, code in self._retryable_error_codes, code.name in THROTTLING_GRPC_CODES,
                           grpc_retry_delay(error), f"gRPC {code.name}: {details}")

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS if self.attempt(spans).ok else SpanExportResult.FAILURE

    exporter = Exporter(endpoint=endpoint, insecure=insecure, timeout=timeout,
                        compression=grpc_compression(os.environ))
    # _client, _headers, _timeout and _retryable_error_codes are private to the SDK versions in
    # requirements/constraints.txt; another version keeps the SDK's own export (and retries)
    if not all(hasattr(exporter, name) for name in ("_client", "_headers", "_timeout",
                                                     "_retryable_error_codes", "_shutdown")):
        from importlib.metadata import version
        log.warning("opentelemetry-exporter-otlp-proto-grpc %s lacks the attributes spanprobe sends "
                    "through: spans are encoded and retried by the SDK (slower, and a RetryInfo delay "
                    "longer than the timeout fails the batch); requirements/constraints.txt pins a "
                    "version that has them", version("opentelemetry-exporter-otlp-proto-grpc"))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=timeout)
    return exporter
