"""Unit tests of low-cardinality routes (spanprobe.routes)."""

from __future__ import annotations

import pytest

from spanprobe.routes import RouteMatcher, compile_template, heuristic


@pytest.mark.parametrize("path,route", [
    # numbers
    ("/users/42", "/users/{id}"),
    ("/users/42/orders/7", "/users/{id}/orders/{id}"),
    ("/items/-3", "/items/{id}"),
    ("/prices/19.99", "/prices/{id}"),
    ("/v1/users/0", "/v1/users/{id}"),
    # UUIDs, with and without dashes, any case
    ("/orders/550e8400-e29b-41d4-a716-446655440000", "/orders/{uuid}"),
    ("/orders/550E8400-E29B-41D4-A716-446655440000/items", "/orders/{uuid}/items"),
    ("/orders/550e8400e29b41d4a716446655440000", "/orders/{uuid}"),
    # hex with at least one digit, 8+ chars
    ("/commits/deadbeef12", "/commits/{hex}"),
    ("/objects/0x1f2e3d4c", "/objects/{hex}"),
    ("/blobs/a1b2c3d4", "/blobs/{hex}"),
    ("/words/deadbeef", "/words/deadbeef"),         # no digit: a word
    ("/short/abc123", "/short/abc123"),             # under 8 chars
    # dates
    ("/reports/2024-01-15", "/reports/{date}"),
    ("/reports/2024-01-15T10:00:00Z/csv", "/reports/{date}/csv"),
    # long opaque tokens
    ("/t/eyJhbGciOiJIUzI1NiJ9", "/t/{token}"),
    ("/share/AbCdEfGhIjKlMnOpQr", "/share/{token}"),
    ("/reset/Zm9vYmFyYmF6cXV4cXV1eA", "/reset/{token}"),
    # plain words kept, even long ones
    ("/api/v2/users", "/api/v2/users"),
    ("/health", "/health"),
    ("/some-very-long-resource-name", "/some-very-long-resource-name"),
    ("/account_settings_overview", "/account_settings_overview"),
    # slashes preserved
    ("/", "/"),
    ("", "/"),
    ("/users/42/", "/users/{id}/"),
    ("//double//7", "//double//{id}"),
])
def test_heuristic(path, route):
    assert heuristic(path) == route


def test_compile_template():
    t = compile_template("/users/{id}/posts/{post_id:int}")
    assert t.segments == ("users", None, "posts", None)
    assert t.names == (None, "id", None, "post_id")
    assert t.greedy is False
    g = compile_template("/static/{p:path}")
    assert g.segments == ("static", None) and g.names == (None, "p") and g.greedy is True
    # a path parameter not at the end is not greedy
    assert compile_template("/files/{p:path}/meta").greedy is False
    assert compile_template("/").segments == ()


def test_template_match_params():
    t = compile_template("/users/{id}/posts/{post}")
    assert t.match(["users", "7", "posts", "hello"]) == {"id": "7", "post": "hello"}
    assert t.match(["users", "7", "posts"]) is None
    assert t.match(["users", "7", "posts", "x", "y"]) is None
    assert t.match(["people", "7", "posts", "x"]) is None
    assert t.match(["users", "", "posts", "x"]) is None      # empty segment is no value


def test_matcher_simple_template():
    m = RouteMatcher(["/users/{id}"])
    assert m.route("/users/42") == ("/users/{id}", True)
    assert m.route("/users/alice") == ("/users/{id}", True)
    assert m.route("/users/42/") == ("/users/{id}", True)
    # not matching: the heuristic, flagged as not configured
    assert m.route("/users/42/orders") == ("/users/{id}/orders", False)
    assert m.route("/users") == ("/users", False)
    assert m.route("/accounts/9") == ("/accounts/{id}", False)


def test_matcher_greedy_path():
    m = RouteMatcher(["/static/{p:path}"])
    assert m.route("/static/css/site.css") == ("/static/{p:path}", True)
    assert m.route("/static/a") == ("/static/{p:path}", True)
    assert m.route("/static/a/b/c/d/e") == ("/static/{p:path}", True)
    assert m.route("/static") == ("/static", False)
    assert m.route("/static/") == ("/static/", False)
    t = compile_template("/static/{p:path}")
    assert t.match(["static", "css", "site.css"]) == {"p": "css/site.css"}


@pytest.mark.parametrize("order", [
    ["/users/{id}", "/users/me", "/{section}/{name}"],
    ["/{section}/{name}", "/users/me", "/users/{id}"],
    ["/users/me", "/{section}/{name}", "/users/{id}"],
])
def test_literal_beats_param_whatever_the_order(order):
    m = RouteMatcher(order)
    assert m.route("/users/me") == ("/users/me", True)
    assert m.route("/users/77") == ("/users/{id}", True)
    assert m.route("/teams/red") == ("/{section}/{name}", True)


def test_non_greedy_beats_greedy_with_same_literals():
    for order in (["/files/{p:path}", "/files/{name}"], ["/files/{name}", "/files/{p:path}"]):
        m = RouteMatcher(order)
        assert m.route("/files/readme") == ("/files/{name}", True)
        assert m.route("/files/docs/readme") == ("/files/{p:path}", True)


def test_root_template():
    m = RouteMatcher(["/"])
    assert m.route("/") == ("/", True)
    assert m.route("/x") == ("/x", False)


def test_route_cache_returns_same_answer():
    m = RouteMatcher(["/users/{id}"])
    first = m.route("/users/1")
    assert m.route("/users/1") == first == ("/users/{id}", True)
    assert m._cache["/users/1"] == first


def test_the_literal_segment_cache_changes_no_route_and_stays_bounded():
    """heuristic() remembers the segments it kept as they are (routes._LITERALS); a path
    gives the same route whether its segments were seen before or not, and segments sent
    to fill the cache empty it rather than grow it."""
    import random

    from spanprobe import routes
    rng = random.Random(5)
    pieces = ["users", "42", "api", "v1", "0x1f2e3d4c", "2024-01-02", "abc", "deadbeef99",
              "550e8400-e29b-41d4-a716-446655440000", "a1b2c3d4e5f6g7h8i9", "x" * 80, ""]
    paths = ["/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(0, 5))) for _ in range(2000)]
    routes._LITERALS.clear()
    fresh = []
    for p in paths:
        routes._LITERALS.clear()
        fresh.append(heuristic(p))
    routes._LITERALS.clear()
    assert [heuristic(p) for p in paths] == fresh          # with the cache warm
    assert "x" * 80 not in routes._LITERALS                  # long segments are not kept
    for i in range(routes._LITERALS_LIMIT + 10):
        assert heuristic(f"/seg{chr(97 + i % 26)}{'z' * (i % 40)}q{i}x") != ""
        assert len(routes._LITERALS) <= routes._LITERALS_LIMIT
