"""Unit tests of the OTLP exporters' single attempts (spanprobe.otlp_senders): what a real
receiver on loopback answers becomes accepted, "later" (with its delay) or refused."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from spanprobe.otlp_senders import grpc_compression, grpc_exporter, http_exporter, settled_session
from tests.support.procs import free_port

SPANS = [ReadableSpan(name="GET /x", context=SpanContext(0x1, 0x2, False, TraceFlags(1)),
                      resource=Resource({"service.name": "s"}), attributes={}, kind=SpanKind.SERVER,
                      start_time=1, end_time=2)]


def scripted(script: list[tuple[int, dict]]) -> type[BaseHTTPRequestHandler]:
    """A handler answering each POST with the next (status, headers) of `script`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers = script.pop(0)
            self.send_response(status)
            for k, v in {**headers, "Content-Length": "0"}.items():
                self.send_header(k, v)
            self.end_headers()

    return Handler


@pytest.fixture
def http_answers():
    """An HTTP server answering each POST with the next (status, headers) of a script."""
    script: list[tuple[int, dict]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), scripted(script))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    exporter = http_exporter(f"http://127.0.0.1:{server.server_address[1]}/v1/traces", 2.0)
    yield script, exporter
    exporter.shutdown()
    server.shutdown()
    server.server_close()


def test_http_429_with_retry_after_seconds(http_answers):
    script, exporter = http_answers
    script.append((429, {"Retry-After": "7"}))
    a = exporter.attempt(SPANS)
    assert (a.ok, a.retryable, a.throttled, a.retry_after) == (False, True, True, 7.0)
    assert "429" in a.reason


def test_http_503_with_retry_after_as_a_date(http_answers):
    script, exporter = http_answers
    script.append((503, {"Retry-After": formatdate(time.time() + 20, usegmt=True)}))
    a = exporter.attempt(SPANS)
    assert a.retryable and a.throttled and 15 <= a.retry_after <= 21


def test_http_502_is_retried_without_a_delay_of_its_own(http_answers):
    script, exporter = http_answers
    script.append((502, {}))
    a = exporter.attempt(SPANS)
    assert (a.retryable, a.throttled, a.retry_after) == (True, False, None)


@pytest.mark.parametrize("status, headers, words", [
    (400, {}, "HTTP 400"),
    (404, {}, "HTTP 404"),
    (307, {"Location": "http://127.0.0.1:1/elsewhere"}, "give that URL"),
])
def test_http_refusals_are_not_retried(http_answers, status, headers, words):
    script, exporter = http_answers
    script.append((status, headers))
    a = exporter.attempt(SPANS)
    assert a.ok is False and a.retryable is False and words in a.reason


def test_http_accepted(http_answers):
    script, exporter = http_answers
    script.append((200, {}))
    assert exporter.attempt(SPANS).ok
    script.append((200, {}))
    assert exporter.export(SPANS).name == "SUCCESS"


def test_http_nobody_listening_is_retryable():
    exporter = http_exporter(f"http://127.0.0.1:{free_port()}/v1/traces", 1.0)
    try:
        a = exporter.attempt(SPANS)
        assert a.ok is False and a.retryable is True and not a.throttled
    finally:
        exporter.shutdown()


@pytest.fixture
def grpc_answers():
    """A gRPC trace service that aborts each call with the next (code, retry delay)."""
    script: list[tuple[grpc.StatusCode, float | None]] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            code, delay = script.pop(0)
            if code == grpc.StatusCode.OK:
                return trace_service_pb2.ExportTraceServiceResponse()
            if delay is not None:
                info = RetryInfo(retry_delay=Duration(seconds=int(delay), nanos=int(delay % 1 * 1e9)))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(code, "scripted")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    exporter = grpc_exporter(f"http://127.0.0.1:{port}", True, 2.0)
    yield script, exporter
    exporter.shutdown()
    server.stop(0)


def test_grpc_resource_exhausted_with_retry_info(grpc_answers):
    script, exporter = grpc_answers
    script.append((grpc.StatusCode.RESOURCE_EXHAUSTED, 2.5))
    a = exporter.attempt(SPANS)
    assert (a.ok, a.retryable, a.throttled, a.retry_after) == (False, True, True, 2.5)
    assert "RESOURCE_EXHAUSTED" in a.reason


def test_grpc_unavailable_without_retry_info(grpc_answers):
    script, exporter = grpc_answers
    script.append((grpc.StatusCode.UNAVAILABLE, None))
    a = exporter.attempt(SPANS)
    assert (a.retryable, a.throttled, a.retry_after) == (True, True, None)


def test_grpc_invalid_argument_is_refused(grpc_answers):
    script, exporter = grpc_answers
    script.append((grpc.StatusCode.INVALID_ARGUMENT, None))
    a = exporter.attempt(SPANS)
    assert a.ok is False and a.retryable is False


def test_grpc_accepted(grpc_answers):
    script, exporter = grpc_answers
    script.append((grpc.StatusCode.OK, None))
    assert exporter.attempt(SPANS).ok


def test_grpc_to_an_http1_receiver_warns_once_with_the_fix(caplog):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    exporter = grpc_exporter(url, True, 2.0)
    try:
        with caplog.at_level(logging.WARNING, logger="spanprobe.export"):
            attempts = [exporter.attempt(SPANS) for _ in range(3)]
        assert all(a.ok is False and a.retryable for a in attempts)
        hints = [r.getMessage() for r in caplog.records if "--otlp-protocol http/protobuf" in r.getMessage()]
        assert len(hints) == 1
        assert url in hints[0] and "OTEL_EXPORTER_OTLP_PROTOCOL" in hints[0]
    finally:
        exporter.shutdown()
        server.shutdown()
        server.server_close()


def test_grpc_to_a_real_grpc_receiver_gives_no_protocol_hint(grpc_answers, caplog):
    script, exporter = grpc_answers
    script.append((grpc.StatusCode.UNAVAILABLE, None))
    with caplog.at_level(logging.WARNING, logger="spanprobe.export"):
        exporter.attempt(SPANS)
    assert "--otlp-protocol" not in caplog.text


@pytest.mark.parametrize("env, want", [
    ({}, grpc.Compression.NoCompression),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}, grpc.Compression.NoCompression),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": " GZIP "}, grpc.Compression.Gzip),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"},
     grpc.Compression.NoCompression),
])
def test_grpc_compression_accepts_none_which_the_sdk_rejects(env, want):
    assert grpc_compression(env) == want


# ---- the session the OTLP/HTTP transport posts through ----

def _merged(session, url, verify=None):
    return session.merge_environment_settings(url, {}, None, verify, None)


@pytest.mark.parametrize("env", [
    {},
    {"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "127.0.0.1"},
    {"http_proxy": "http://proxy.invalid:3128"},
    {"REQUESTS_CA_BUNDLE": "/nonexistent/bundle.pem"},
    {"CURL_CA_BUNDLE": "/nonexistent/curl.pem", "all_proxy": "socks5://proxy.invalid:1080"},
])
@pytest.mark.parametrize("url", ["http://127.0.0.1:4318/v1/traces", "https://receiver.invalid/v1/traces"])
def test_settled_session_merges_as_requests_does(monkeypatch, env, url):
    """Where the session's own verify is True (no OTEL certificate), its settings are
    requests' own, the first time and when remembered."""
    import requests

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settled = settled_session()
    want = _merged(requests.Session(), url)
    assert _merged(settled, url) == want
    assert _merged(settled, url) == want
    assert _merged(settled, url, verify=False) == _merged(requests.Session(), url, verify=False)


def test_settled_session_reads_the_environment_once_per_request_shape(monkeypatch):
    import requests.sessions

    calls = []
    real = requests.sessions.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies",
                        lambda url, no_proxy=None: calls.append(url) or real(url, no_proxy=no_proxy))
    session = settled_session()
    for _ in range(5):
        out = _merged(session, "http://127.0.0.1:4318/v1/traces")
        out["proxies"]["http"] = "changed by a caller"     # a copy each time
    assert calls == ["http://127.0.0.1:4318/v1/traces"]
    assert "http" not in _merged(session, "http://127.0.0.1:4318/v1/traces")["proxies"]


def test_a_credential_provider_keeps_its_own_session(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "someone")
    assert settled_session() is None


def _private_ca(tmp_path):
    """A CA of its own and a certificate it signed for 127.0.0.1: (CA file, cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spanprobe test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    import ipaddress
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    files[0].write_bytes(ca.public_bytes(pem))
    files[1].write_bytes(leaf.public_bytes(pem))
    files[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


def test_the_otel_certificate_verifies_the_receiver_over_requests_ca_bundle(tmp_path, monkeypatch):
    """OTLP/HTTP over TLS to a receiver whose CA only OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE
    names, with REQUESTS_CA_BUNDLE set to the system's bundle (as on many hosts): accepted.
    Without the CA the same POST fails verification, so the certificate is what decided."""
    import ssl

    ca, cert, key = _private_ca(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), scripted([(200, {})]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/v1/traces"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    try:
        without = http_exporter(url, 5.0).attempt(SPANS)
        assert not without.ok and "SSL" in without.reason
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(ca))
        exporter = http_exporter(url, 5.0)
        assert exporter.attempt(SPANS).ok
        exporter.shutdown()
    finally:
        server.shutdown()
        server.server_close()
