"""Values from a JSON document of which only a prefix may have been captured.

The kernel copies a bounded prefix of each message, so a body can end mid-document.
Fields that lie wholly inside the prefix are still exact; a field cut by the end, or
beyond it, is absent (UNSET) and never a guess.

The body is hostile, so the work is bounded: documents nested deeper than MAX_DEPTH are
refused before any parsing (json's C decoder and the prefix reader below both recurse
per level; a body of 60,000 '[' would otherwise end in RecursionError), only the first
MAX_DOCUMENT_BYTES are read, and every step of the prefix reader is linear in the bytes
it reads. Numbers keep Python's own bound on the digits of an int (ValueError beyond).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from json.decoder import scanstring

UNSET = object()
MAX_DEPTH = 64                   # nesting of objects and arrays
MAX_DOCUMENT_BYTES = 64 * 1024   # the largest body attributes.max_body_bytes can keep
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
# a number the prefix ends in: "-", "12", "1.", "1.5e", "1e+" may all continue
_NUMBER_CUT = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.(?:\d+(?:[eE][-+]?\d*)?)?|[eE][-+]?\d*)?)?\Z")
# a string the prefix ends in, maybe inside an escape; any other bad string is not JSON
_STRING_CUT = re.compile(r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*'
                         r'(?:\\(?:u[0-9a-fA-F]{0,3})?)?\Z')
_WS = re.compile(r"[ \t\n\r]*")
# for the depth check: strings (maybe cut by the end) and everything but brackets
_ANY_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


class _PartialDict(dict):
    """An object the prefix ends in: its complete members only."""


class _PartialList(list):
    """An array the prefix ends in: its complete elements only."""


class _Cut(Exception):
    """The prefix ends inside this value."""

    def __init__(self, partial=UNSET):
        self.partial = partial


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _string(s: str, i: int, obj: dict | None = None):
    """The string starting at s[i] == '"'; a cut of the object `obj` (whose key it is) or
    of the string if the prefix ends inside it."""
    try:
        return scanstring(s, i + 1)
    except json.JSONDecodeError:
        if _STRING_CUT.match(s, i):
            raise _Cut(UNSET if obj is None else _PartialDict(obj)) from None
        raise ValueError(f"bad string at {i}") from None


def _nesting(text: str) -> int:
    """An upper bound of the deepest nesting of brackets outside strings (exact for JSON
    text with more than MAX_DEPTH opening brackets)."""
    opening = text.count("[") + text.count("{")
    if opening <= MAX_DEPTH:
        return opening          # cheap, and enough to know the bound holds
    brackets = _NOT_BRACKETS.sub("", _ANY_STRING.sub("", text))
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def _value(s: str, i: int, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    i = _WS.match(s, i).end()
    if i >= len(s):
        raise _Cut()
    c = s[i]
    if c == "{":
        return _object(s, i + 1, depth + 1)
    if c == "[":
        return _array(s, i + 1, depth + 1)
    if c == '"':
        return _string(s, i)
    for word, val in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return val, i + len(word)
        # the text left is shorter than the word (slicing all that is left at every value
        # would be quadratic)
        if len(s) - i < len(word) and word.startswith(s[i:]):
            raise _Cut()
    if _NUMBER_CUT.match(s, i):
        raise _Cut()          # 12 could be the start of 1234, 1. of 1.5
    m = _NUMBER.match(s, i)
    if m:
        end = m.end()
        text = m.group()
        return (float(text) if any(ch in text for ch in ".eE") else int(text)), end
    raise ValueError(f"not JSON at {i}")


def _object(s: str, i: int, depth: int):
    out: dict = {}
    i = _WS.match(s, i).end()
    if i < len(s) and s[i] == "}":
        return out, i + 1
    while True:
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(_PartialDict(out))
        if s[i] != '"':
            raise ValueError("object key expected")
        key, i = _string(s, i, out)
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(_PartialDict(out))
        if s[i] != ":":
            raise ValueError("':' expected")
        try:
            val, i = _value(s, i + 1, depth)
        except _Cut as cut:
            if cut.partial is not UNSET:
                out[key] = cut.partial
            raise _Cut(_PartialDict(out)) from None
        out[key] = val
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(_PartialDict(out))
        if s[i] == "}":
            return out, i + 1
        if s[i] != ",":
            raise ValueError("',' or '}' expected")
        i += 1


def _array(s: str, i: int, depth: int):
    out: list = []
    i = _WS.match(s, i).end()
    if i < len(s) and s[i] == "]":
        return out, i + 1
    while True:
        try:
            val, i = _value(s, i, depth)
        except _Cut as cut:
            if cut.partial is not UNSET:
                out.append(cut.partial)
            raise _Cut(_PartialList(out)) from None
        out.append(val)
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise _Cut(_PartialList(out))
        if s[i] == "]":
            return out, i + 1
        if s[i] != ",":
            raise ValueError("',' or ']' expected")
        i += 1


def _decode(data: bytes) -> tuple[str, bool]:
    """(text, ends inside a multi-byte character?) ; ValueError if it is not UTF-8."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError as exc:
        # only a character cut by the end of the prefix is allowed: dropping or
        # replacing other bytes would change the values read
        if exc.reason != "unexpected end of data" or exc.end != len(data):
            raise ValueError(f"not UTF-8 at byte {exc.start}") from None
        return data[:exc.start].decode("utf-8"), True


def parse_prefix(data: bytes):
    """(document or the part of it seen, complete?) ; ValueError if it is not JSON.

    Objects and arrays the prefix ends in hold their complete members only (and are
    marked so: `extract` never returns one). Input beyond MAX_DOCUMENT_BYTES is not read:
    the document is then a prefix."""
    cut = len(data) > MAX_DOCUMENT_BYTES
    text, cut_char = _decode(bytes(data[:MAX_DOCUMENT_BYTES]))
    if _nesting(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if not cut and not cut_char:
        try:
            return json.loads(text, parse_constant=_no_constant), True
        except json.JSONDecodeError:
            pass
    try:
        _value(text, 0)
    except _Cut as cut:
        return cut.partial, False
    # json.loads refused it, yet a whole value was read: something follows the value
    raise ValueError("data after the JSON value")


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
    if isinstance(node, (_PartialDict, _PartialList)):
        return UNSET        # an object or array cut by the end of the prefix
    return node
