"""Unit tests of redaction (spanprobe.privacy)."""

from __future__ import annotations

import pytest

from spanprobe.config import DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_QUERY
from spanprobe.privacy import REDACTED, Redactor


@pytest.fixture
def red() -> Redactor:
    return Redactor(list(DEFAULT_REDACT_HEADERS), list(DEFAULT_REDACT_QUERY))


def test_redacted_marker():
    assert REDACTED == "REDACTED"


@pytest.mark.parametrize("name", ["Authorization", "authorization", "COOKIE", "Set-Cookie",
                                  "X-Api-Key", "proxy-authorization"])
def test_secret_headers_not_allowed(red, name):
    assert red.header_allowed(name) is False


@pytest.mark.parametrize("name", ["Content-Type", "user-agent", "Host", "traceparent"])
def test_ordinary_headers_allowed(red, name):
    assert red.header_allowed(name) is True


def test_configured_headers_only():
    r = Redactor(["X-Internal"], [])
    assert r.header_allowed("x-internal") is False
    assert r.header_allowed("Authorization") is True     # only what is configured


@pytest.mark.parametrize("query,expected", [
    ("", ""),
    ("a=1&b=2", "a=1&b=2"),
    ("q=shoes&token=abc123", "q=shoes&token=REDACTED"),
    ("access_token=x&page=2", "access_token=REDACTED&page=2"),
    ("code=oauthcode&state=s", "code=REDACTED&state=s"),           # configured, no secret word
    ("X-Amz-Signature=abcd&X-Amz-Date=1", "X-Amz-Signature=REDACTED&X-Amz-Date=1"),
    ("myPassword=hunter2", "myPassword=REDACTED"),                  # secret word inside
    ("user%5Fsecret=v", "user%5Fsecret=REDACTED"),                   # percent-encoded name
    ("token=", "token="),                                           # nothing to hide
    ("token", "token"),
    ("a=1&&b=2", "a=1&&b=2"),
    ("session=a=b=c", "session=REDACTED"),
    ("sig=1&sig=2", "sig=REDACTED&sig=REDACTED"),
])
def test_query(red, query, expected):
    assert red.query(query) == expected


def test_query_configured_param_without_secret_word():
    r = Redactor([], ["tenant"])
    assert r.query("tenant=acme&page=1") == "tenant=REDACTED&page=1"
    assert r.query("TENANT=acme") == "TENANT=REDACTED"


@pytest.mark.parametrize("target,expected", [
    ("/search?q=x&token=abc", ("/search", "q=x&token=REDACTED")),
    ("/plain", ("/plain", "")),
    ("/", ("/", "")),
    ("", ("/", "")),
    ("?a=1", ("/", "a=1")),
    ("/p?x=1#frag", ("/p", "x=1")),
    ("/p#frag", ("/p", "")),
    ("http://example.com:8080/a/b?password=pw&c=d", ("/a/b", "password=REDACTED&c=d")),
    ("https://example.com", ("/", "")),
    ("http://example.com?key=k", ("/", "key=REDACTED")),
    ("*", ("*", "")),
])
def test_target(red, target, expected):
    assert red.target(target) == expected


@pytest.mark.parametrize("argv,expected", [
    (["gunicorn", "-w", "4", "app:app"], "gunicorn -w 4 app:app"),
    (["app", "--password=hunter2", "--port=8000"], "app --password=REDACTED --port=8000"),
    (["app", "--token", "abc", "--verbose"], "app --token REDACTED --verbose"),
    (["app", "--api-key", "k1", "-x"], "app --api-key REDACTED -x"),
    (["env", "TOKEN=xyz", "PATH=/bin"], "env TOKEN=REDACTED PATH=/bin"),
    (["env", "DB_PASSWORD=p", "AWS_SECRET_ACCESS_KEY=s"],
     "env DB_PASSWORD=REDACTED AWS_SECRET_ACCESS_KEY=REDACTED"),
    (["psql", "postgres://admin:hunter2@db:5432/app"], "psql postgres://admin:REDACTED@db:5432/app"),
    (["curl", "https://user:p4ss@example.com/x"], "curl https://user:REDACTED@example.com/x"),
    (["curl", "https://example.com/x"], "curl https://example.com/x"),
    (["curl", "https://user@example.com/x"], "curl https://user@example.com/x"),
    # URL credentials inside an option or a variable
    (["app", "--db=postgres://admin:hunter2@db/app"], "app --db=postgres://admin:REDACTED@db/app"),
    (["env", "DATABASE_URL=mysql://u:s3cr3t@h/db"], "env DATABASE_URL=mysql://u:REDACTED@h/db"),
    (["app", "--secret"], "app --secret"),                              # nothing follows
    ([], ""),
])
def test_command_line(red, argv, expected):
    assert red.command_line(argv) == expected


def test_command_line_never_leaks_the_secret(red):
    secrets = ["hunter2", "s3cr3t", "abc999"]
    argv = ["app", "--password", "hunter2", "--url=https://bob:s3cr3t@h/", "API_TOKEN=abc999"]
    out = red.command_line(argv)
    for s in secrets:
        assert s not in out
    assert out == "app --password REDACTED --url=https://bob:REDACTED@h/ API_TOKEN=REDACTED"


def test_secret_verdicts_are_kept_per_name_up_to_a_bound(monkeypatch):
    """Verdicts are kept per parameter name (the same answers after); past
    SECRET_CACHE_LIMIT names the kept ones are dropped, so hostile names can't grow it."""
    from spanprobe import privacy
    monkeypatch.setattr(privacy, "SECRET_CACHE_LIMIT", 4)
    r = Redactor([], ["sig"])
    for _ in range(2):
        assert r.secret_param("api_token") and r.secret_param("SIG") and r.secret_param("pass%77ord")
        assert not r.secret_param("page")
    for i in range(50):
        assert not r.secret_param(f"p{i}")
        assert len(r._secret) <= 4
    assert r.query("page=2&api_token=x") == f"page=2&api_token={REDACTED}"
