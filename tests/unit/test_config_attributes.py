"""Unit tests of `attributes.*` settings in spanprobe.config: rules in a YAML file are
checked when settings are resolved, against the privacy lists of the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanprobe.attributes import compile_rules
from spanprobe.config import DEFAULT_REDACT_HEADERS, resolve
from spanprobe.errors import ConfigError
from spanprobe.privacy import Redactor


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spanprobe.yaml"
    p.write_text(text)
    return p


def config_error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(env={}, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == 2
    return msg


COOKIE_RULE = """\
attributes:
  rules:
    - from: header
      name: X-Customer-Id
      attribute: customer.id
    - from: header
      name: Cookie
      attribute: session.cookie
"""


def test_a_denied_header_rule_in_a_file_fails_resolution(tmp_path):
    f = write(tmp_path, COOKIE_RULE)
    msg = config_error(file=f)
    assert msg == (f"config error: attributes.rules[1]: header Cookie is denied by "
                   f"privacy.redact_headers; add hash: sha256 to export a hash of it (file {f})")


def test_the_same_rule_passes_once_cookie_is_not_redacted(tmp_path):
    headers = [h for h in DEFAULT_REDACT_HEADERS if h != "cookie"]
    text = COOKIE_RULE + "privacy:\n  redact_headers: [" + ", ".join(headers) + "]\n"
    s = resolve(env={}, file=write(tmp_path, text))
    assert s["privacy.redact_headers"] == headers
    assert [r["name"] for r in s["attributes.rules"]] == ["X-Customer-Id", "Cookie"]
    assert s.source["attributes.rules"] == f"file {tmp_path / 'spanprobe.yaml'}"


def test_the_same_rule_passes_with_a_hash(tmp_path):
    text = COOKIE_RULE + "      hash: sha256\n"
    s = resolve(env={}, file=write(tmp_path, text))
    assert s["attributes.rules"][1] == {"from": "header", "name": "Cookie",
                                        "attribute": "session.cookie", "hash": "sha256"}


def test_privacy_from_the_environment_counts_too(tmp_path):
    f = write(tmp_path, COOKIE_RULE)
    s = resolve(env={"SPANPROBE_PRIVACY_REDACT_HEADERS": "authorization,set-cookie"}, file=f)
    assert s.source["privacy.redact_headers"] == "environment SPANPROBE_PRIVACY_REDACT_HEADERS"
    assert len(s["attributes.rules"]) == 2


def test_a_header_added_to_the_redact_list_is_denied(tmp_path):
    text = COOKIE_RULE.replace("Cookie", "X-Other") + "privacy:\n  redact_headers: [x-customer-id]\n"
    msg = config_error(file=write(tmp_path, text))
    assert msg.startswith("config error: attributes.rules[0]: header X-Customer-Id is denied")


QUERY_CODE = """\
attributes:
  rules:
    - from: query
      name: code
      attribute: promo.code
"""


def test_a_query_parameter_in_redact_query_params_needs_a_hash(tmp_path):
    # "code" is secret only because the default privacy list names it
    msg = config_error(file=write(tmp_path, QUERY_CODE))
    assert "attributes.rules[0]: query parameter code looks secret; add hash: sha256" in msg
    s = resolve(env={}, file=write(tmp_path, QUERY_CODE + "privacy:\n  redact_query_params: [token]\n"))
    assert s["attributes.rules"][0]["name"] == "code"


def test_a_secret_word_needs_a_hash_whatever_the_list(tmp_path):
    text = QUERY_CODE.replace("name: code", "name: reset_token") + "privacy:\n  redact_query_params: []\n"
    msg = config_error(file=write(tmp_path, text))
    assert "query parameter reset_token looks secret" in msg


def test_rules_given_as_a_flag_are_checked_and_named_so():
    rules = [{"from": "header", "name": "Authorization", "attribute": "a"}]
    msg = config_error(flags={"attributes.rules": rules})
    assert msg.endswith("(flag for attributes.rules)")
    assert "attributes.rules[0]: header Authorization is denied" in msg


@pytest.mark.parametrize("rule, words", [
    ("{from: cookie, name: a, attribute: b}", "from: 'cookie' is not one of"),
    ("{from: json_body, path: order.id, attribute: order.id}", "must be a JSONPath like"),
    ("{from: header, name: X-A, attribute: a, colour: red}", "unknown key 'colour'"),
    ("{from: path, route: '/a/{b}', hash: sha256, type: int}", "a hashed value is a string"),
    ("{from: header, name: X-A, attribute: a, max_length: 0}", "max_length: 0 must be an integer 1..4096"),
    ("{from: header, name: X-A, attribute: a, port: '80'}", "port: '80' must be int"),
])
def test_bad_rules_in_a_file(tmp_path, rule, words):
    f = write(tmp_path, f"attributes:\n  rules:\n    - {rule}\n")
    msg = config_error(file=f)
    assert msg.startswith("config error: attributes.rules[0]: "), msg
    assert words in msg
    assert msg.endswith(f"(file {f})")


def test_a_rule_that_is_not_a_mapping_is_caught_by_the_schema(tmp_path):
    f = write(tmp_path, "attributes:\n  rules:\n    - header X-A\n")
    msg = config_error(file=f)
    assert msg.startswith("config error: attributes.rules: every item must be dict")


def test_no_rules_by_default_and_the_bounds():
    s = resolve(env={})
    assert s["attributes.rules"] == []
    assert (s["attributes.max_value_length"], s["attributes.max_cardinality"],
            s["attributes.max_body_bytes"]) == (256, 1000, 4096)


def test_a_valid_file_compiles_to_the_rules_the_pipeline_uses(tmp_path):
    text = """\
attributes:
  max_value_length: 64
  max_cardinality: 50
  max_body_bytes: 1024
  rules:
    - from: path
      route: /customers/{customer_id}/orders/{order_id}
    - from: json_body
      path: $.order.items[0]['unit price']
      attribute: order.first_price
      type: float
      body: response
      service: [checkout, cart]
      port: 8000
"""
    s = resolve(env={}, file=write(tmp_path, text))
    assert (s["attributes.max_value_length"], s["attributes.max_cardinality"],
            s["attributes.max_body_bytes"]) == (64, 50, 1024)
    rules = compile_rules(s["attributes.rules"],
                          Redactor(s["privacy.redact_headers"], s["privacy.redact_query_params"]))
    assert rules[0].route.names == (None, "customer_id", None, "order_id")
    assert rules[1].steps == ("order", "items", 0, "unit price")
    assert (rules[1].type, rules[1].body, rules[1].services, rules[1].ports) == (
        "float", "response", {"checkout", "cart"}, {8000})


@pytest.mark.parametrize("key, value", [("max_value_length", 0), ("max_value_length", 4097),
                                        ("max_cardinality", 0), ("max_body_bytes", 63),
                                        ("max_body_bytes", 65537)])
def test_attribute_bounds_are_checked(tmp_path, key, value):
    msg = config_error(file=write(tmp_path, f"attributes:\n  {key}: {value}\n"))
    assert msg.startswith(f"config error: attributes.{key}: {value} is outside ")
