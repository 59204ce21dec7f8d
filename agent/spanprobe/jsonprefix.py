"""Values from a JSON document of which only a prefix may have been captured.

The kernel copies a bounded prefix of each message, so a body can end mid-document.
Fields that lie wholly inside the prefix are still exact; a field cut by the end, or
beyond it, is absent (UNSET) and never a guess.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring

UNSET = object()
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = re.compile(r"[ \t\n\r]*")


class _Cut(Exception):
    """The prefix ends inside this value."""

    def __init__(self, partial=UNSET):
        self.partial = partial


def _value(s: str, i: int):
    i = _WS.match(s, i).end()
    if i >= len(s):
        raise _Cut()
    c = s[i]
    if c == "{":
        return _object(s, i + 1)
    if c == "[":
        return _array(s, i + 1)
    if c == '"':
        try:
            return scanstring(s, i + 1)
        except json.JSONDecodeError:
            raise _Cut() from None
    for word, val in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return val, i + len(word)
        if word.startswith(s[i:]):
            raise _Cut()
    m = _NUMBER.match(s, i)
    if m:
        end = m.end()
        if end >= len(s):
            raise _Cut()      # 12 could be the start of 1234
        text = m.group()
        return (float(text) if any(ch in text for ch in ".eE") else int(text)), end
    raise ValueError(f"not JSON at {i}")


def _object(s: str, i: int):
    out: dict = {}
    i = _WS.match(s, i).end()
    if i < len(s) and s[i] == "}":
        return out, i + 1
    while True:
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(out)
        if s[i] != '"':
            raise ValueError("object key expected")
        try:
            key, i = scanstring(s, i + 1)
        except json.JSONDecodeError:
            raise _Cut(out) from None
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(out)
        if s[i] != ":":
            raise ValueError("':' expected")
        try:
            val, i = _value(s, i + 1)
        except _Cut as cut:
            if cut.partial is not UNSET:
                out[key] = cut.partial
            raise _Cut(out) from None
        out[key] = val
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(out)
        if s[i] == "}":
            return out, i + 1
        if s[i] != ",":
            raise ValueError("',' or '}' expected")
        i += 1


def _array(s: str, i: int):
    out: list = []
    i = _WS.match(s, i).end()
    if i < len(s) and s[i] == "]":
        return out, i + 1
    while True:
        try:
            val, i = _value(s, i)
        except _Cut as cut:
            if cut.partial is not UNSET:
                out.append(cut.partial)
            raise _Cut(out) from None
        out.append(val)
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(out)
        if s[i] == "]":
            return out, i + 1
        if s[i] != ",":
            raise ValueError("',' or ']' expected")
        i += 1


def parse_prefix(data: bytes):
    """(document or the part of it seen, complete?) ; ValueError if it is not JSON."""
    text = data.decode("utf-8", errors="ignore")
    try:
        return json.loads(text), True
    except json.JSONDecodeError:
        pass
    try:
        value, _ = _value(text, 0)
        return value, True
    except _Cut as cut:
        return cut.partial, False


def extract(data: bytes, steps: tuple):
    """The value at `steps` (keys and indexes), or UNSET if absent or cut off."""
    try:
        doc, _complete = parse_prefix(data)
    except ValueError:
        return UNSET
    node = doc
    for step in steps:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return UNSET
        elif not isinstance(node, dict) or step not in node:
            return UNSET
        node = node[step]
    return node if node is not UNSET else UNSET
