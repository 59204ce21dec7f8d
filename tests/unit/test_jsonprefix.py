"""Unit tests of values read from a captured prefix of a JSON body (spanprobe.jsonprefix).

The central property: cut a document at any byte, and a field is returned iff it lies
wholly in the prefix, with exactly the value the whole document gives it. A number that
ends where the prefix ends is absent ("12" may be the start of "1234"); an object or an
array is returned only once its closing bracket was captured.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest

from spanprobe.jsonprefix import UNSET, extract, parse_prefix


# ---------------------------------------------------------------- a document with a map

@dataclass(frozen=True)
class Raw:
    """A leaf written as `text` (escapes, exponents...) whose value is `value`."""

    text: str
    value: object


@dataclass
class Span:
    start: int
    end: int            # byte offset just after the value
    value: object
    number: bool        # a number is complete only once a byte after it is seen


class Layout:
    """Serialises a tree to JSON bytes with varied whitespace, recording the byte span
    and value of every node by its path of keys and indexes."""

    _WS = ("", " ", "", "\n ", "", "\t", "", "\r\n", "")

    def __init__(self, tree):
        self.out = bytearray()
        self.spans: dict[tuple, Span] = {}
        self._ws = itertools.cycle(self._WS)
        self._emit(next(self._ws))
        self._node(tree, ())
        self._emit(" \n")       # trailing whitespace is allowed after the document
        self.doc = bytes(self.out)

    def _emit(self, text: str) -> None:
        self.out += text.encode("utf-8")

    def _node(self, node, path: tuple):
        start = len(self.out)
        if isinstance(node, Raw):
            self._emit(node.text)
            value = node.value
        elif isinstance(node, dict):
            self._emit("{")
            value = {}
            for n, (k, v) in enumerate(node.items()):
                if n:
                    self._emit(next(self._ws) + ",")
                self._emit(next(self._ws) + json.dumps(k, ensure_ascii=False) + next(self._ws) + ":"
                           + next(self._ws))
                value[k] = self._node(v, path + (k,))
            self._emit(next(self._ws) + "}")
        elif isinstance(node, list):
            self._emit("[")
            value = []
            for n, v in enumerate(node):
                if n:
                    self._emit(next(self._ws) + ",")
                self._emit(next(self._ws))
                value.append(self._node(v, path + (n,)))
            self._emit(next(self._ws) + "]")
        else:
            self._emit(json.dumps(node, ensure_ascii=False))
            value = node
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        self.spans[path] = Span(start, len(self.out), value, number)
        return value


SAMPLE = {
    "order": {
        "id": 1234,
        "sku": "A-1",
        "price": Raw("12.50", 12.5),
        "qty": -3,
        "exp": Raw("-0.25E-2", -0.0025),
        "z": 0,
        "p": Raw("2e+2", 200.0),
    },
    "c": {
        "name": Raw(r'"Zo\u00eb \"Z\""', 'Zoë "Z"'),
        "esc": Raw(r'"t\tn\n\/ \\ \r\b\f"', 't\tn\n/ \\ \r\b\f'),
        "emo": Raw(r'"\ud83d\ude00!"', "😀!"),
        "utf8": "ë😀日",
        "": "k",
    },
    "flags": [True, False, None, 7, -1.25],
    "items": [{"n": 10}, {"sku": "y", "tags": ["a"]}],
    "eo": {},
    "ea": [],
    "nil": None,
    "nest": [[1, [2]], {"d": {"e": [True]}}],
    "big": 12345678901234567890,
    "last": 42,
}

LAYOUT = Layout(SAMPLE)


def test_the_sample_document_is_valid_json_with_the_recorded_values():
    assert json.loads(LAYOUT.doc) == LAYOUT.spans[()].value
    for path, span in LAYOUT.spans.items():
        node = json.loads(LAYOUT.doc)
        for step in path:
            node = node[step]
        assert node == span.value, path
        # the recorded span holds exactly the value's text
        text = LAYOUT.doc[span.start:span.end].decode()
        assert json.loads(text) == span.value, (path, text)
    assert b"\r\n" in LAYOUT.doc and b"\t" in LAYOUT.doc and b"\n " in LAYOUT.doc
    assert len(LAYOUT.spans) >= 40


def _expected(span: Span, cut: int):
    whole = cut > span.end if span.number else cut >= span.end
    return span.value if whole else UNSET


def _same(got, want) -> bool:
    if want is UNSET:
        return got is UNSET
    if got is UNSET:
        return False
    # 1 == 1.0 == True in Python: the type must be the document's as well
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True) and type(got) is type(want)


def test_every_field_at_every_cut_is_present_iff_wholly_in_the_prefix():
    doc = LAYOUT.doc
    failures = []
    for cut in range(len(doc) + 1):
        prefix = doc[:cut]
        for path, span in LAYOUT.spans.items():
            want = _expected(span, cut)
            got = extract(prefix, path)
            if not _same(got, want):
                failures.append((cut, path, prefix[-12:], got, want))
    assert failures == [], failures[:5]


def test_parse_prefix_never_raises_on_a_prefix_and_is_complete_only_at_the_end():
    doc = LAYOUT.doc
    top = LAYOUT.spans[()]
    for cut in range(len(doc) + 1):
        value, complete = parse_prefix(doc[:cut])
        assert complete is (cut >= top.end), cut
        if complete:
            assert value == top.value
        elif cut <= top.start:
            assert value is UNSET       # only whitespace so far
        else:
            assert isinstance(value, dict)
            # what is there is a subset of the document, key by key
            assert set(value) <= set(SAMPLE), cut


def test_missing_paths_are_unset_at_every_cut():
    doc = LAYOUT.doc
    for cut in range(0, len(doc) + 1, 7):
        prefix = doc[:cut]
        assert extract(prefix, ("nope",)) is UNSET
        assert extract(prefix, ("order", "nope")) is UNSET
        assert extract(prefix, ("items", 2)) is UNSET
        assert extract(prefix, ("items", 0, "sku", "x")) is UNSET     # into a string
        assert extract(prefix, ("flags", "0")) is UNSET               # key on a list
        assert extract(prefix, ("order", 0)) is UNSET                 # index on an object
        assert extract(prefix, ("last", 0)) is UNSET                  # into a number


# ---------------------------------------------------------------- complete documents

def test_extract_from_complete_documents():
    doc = b'{"order": {"id": 7, "lines": [{"sku": "a"}, {"sku": "b"}]}, "ok": true, "n": null}'
    assert extract(doc, ("order", "id")) == 7
    assert extract(doc, ("order", "lines", 1, "sku")) == "b"
    assert extract(doc, ("order", "lines", 0)) == {"sku": "a"}
    assert extract(doc, ("order",)) == {"id": 7, "lines": [{"sku": "a"}, {"sku": "b"}]}
    assert extract(doc, ("ok",)) is True
    assert extract(doc, ("n",)) is None          # null is a value, not absent
    assert extract(doc, ()) == json.loads(doc)
    assert extract(doc, ("order", "lines", 2)) is UNSET
    assert extract(bytearray(doc), ("order", "id")) == 7


def test_parse_prefix_of_complete_documents():
    assert parse_prefix(b'{"a": [1, 2.5, "x"]}') == ({"a": [1, 2.5, "x"]}, True)
    assert parse_prefix(b"  \r\n\t[]  \n") == ([], True)
    assert parse_prefix(b'"just a string"') == ("just a string", True)
    assert parse_prefix(b"true") == (True, True)
    assert parse_prefix(b"null") == (None, True)


def test_int_and_float_keep_their_json_types():
    doc = b'{"i": 3, "f": 3.0, "e": 3e0, "big": 123456789012345678901234567890}'
    assert type(extract(doc, ("i",))) is int
    assert type(extract(doc, ("f",))) is float and extract(doc, ("f",)) == 3.0
    assert type(extract(doc, ("e",))) is float
    assert extract(doc, ("big",)) == 123456789012345678901234567890
    cut = doc[:-1]      # the same through the prefix parser
    assert type(extract(cut, ("i",))) is int
    assert type(extract(cut, ("f",))) is float
    assert extract(cut, ("big",)) is UNSET      # ends where the prefix ends


def test_duplicate_keys_last_one_wins_like_json_loads():
    assert extract(b'{"a": 1, "a": 2}', ("a",)) == 2
    assert extract(b'{"a": 1, "a": 2, "b": 0', ("a",)) == 2


# ---------------------------------------------------------------- numbers at the cut

@pytest.mark.parametrize("tail", ["-", "1", "12", "-0", "0", "1.", "1.5", "1.5e", "1.5E+", "1e-",
                                  "1e5", "-12.25e10"])
def test_a_number_the_prefix_ends_in_is_absent_and_earlier_fields_stay(tail):
    data = ('{"id": "x", "n": ' + tail).encode()
    assert extract(data, ("n",)) is UNSET
    assert extract(data, ("id",)) == "x"
    value, complete = parse_prefix(data)
    assert (value, complete) == ({"id": "x"}, False)


@pytest.mark.parametrize("after", [",", " ", "}", "\n", "\t", "\r"])
def test_a_number_followed_by_any_delimiter_is_complete(after):
    assert extract(('{"n": 1234' + after).encode(), ("n",)) == 1234
    assert extract(('{"n": -1.5e3' + after).encode(), ("n",)) == -1500.0


def test_a_number_in_an_array_at_the_cut():
    assert extract(b'{"a": [12, 34', ("a", 0)) == 12
    assert extract(b'{"a": [12, 34', ("a", 1)) is UNSET
    assert extract(b'{"a": [12, 34]', ("a", 1)) == 34
    assert extract(b'{"a": [12, 34]', ("a",)) == [12, 34]


def test_a_top_level_number_prefix():
    assert parse_prefix(b"12") == (12, True)        # as a whole document it is complete
    assert parse_prefix(b"12 ") == (12, True)
    assert parse_prefix(b"1.") == (UNSET, False)
    assert parse_prefix(b"-") == (UNSET, False)


# ---------------------------------------------------------------- literals, strings

@pytest.mark.parametrize("word, value", [("true", True), ("false", False), ("null", None)])
def test_literals_cut_mid_word_are_absent(word, value):
    for n in range(1, len(word)):
        data = ('{"k": 1, "w": ' + word[:n]).encode()
        assert extract(data, ("w",)) is UNSET, word[:n]
        assert extract(data, ("k",)) == 1, word[:n]
        assert parse_prefix(data) == ({"k": 1}, False)
    whole = ('{"k": 1, "w": ' + word).encode()
    assert extract(whole, ("w",)) is value       # a literal cannot go on: it is complete
    assert parse_prefix(whole) == ({"k": 1, "w": value}, False)


def test_strings_cut_anywhere_are_absent_until_the_closing_quote():
    text = r'"a\"b\\c\u00e9\ud83d\ude00\n"'
    want = 'a"b\\cé😀\n'
    for cut in range(len(text)):
        data = ('{"k": 0, "s": ' + text[:cut]).encode()
        assert extract(data, ("s",)) is UNSET, text[:cut]
        assert extract(data, ("k",)) == 0, text[:cut]
    assert extract(('{"s": ' + text).encode(), ("s",)) == want


def test_keys_cut_anywhere_leave_the_earlier_members():
    for cut in range(len('"longkey"')):
        data = ('{"a": 1, ' + '"longkey"'[:cut]).encode()
        assert parse_prefix(data) == ({"a": 1}, False)
    assert parse_prefix(b'{"a": 1, "longkey"') == ({"a": 1}, False)
    assert parse_prefix(b'{"a": 1, "longkey" :') == ({"a": 1}, False)
    assert parse_prefix(b'{"a": 1, "longkey" : ') == ({"a": 1}, False)


def test_multibyte_characters_cut_by_the_prefix():
    doc = '{"a": "é", "b": "😀", "c": "日本", "d": 1}'.encode()
    for cut in range(len(doc) + 1):
        prefix = doc[:cut]
        # no prefix raises and the fields before the cut are exact
        for key, value in (("a", "é"), ("b", "😀"), ("c", "日本")):
            end = doc.index(json.dumps(value, ensure_ascii=False).encode()) + \
                len(json.dumps(value, ensure_ascii=False).encode())
            assert extract(prefix, (key,)) == (value if cut >= end else UNSET), (cut, key)


# ---------------------------------------------------------------- containers

def test_objects_and_arrays_are_returned_only_when_closed():
    data = b'{"o": {"a": 1, "b": [1, 2], "c": {"d": true}}, "z": 0}'
    closed_o = data.index(b"}, ") + 1
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        got = extract(prefix, ("o",))
        if cut >= closed_o:
            assert got == {"a": 1, "b": [1, 2], "c": {"d": True}}
        else:
            assert got is UNSET, prefix
    # inner members are there as soon as they are whole
    assert extract(b'{"o": {"a": 1, "b": [1, 2]', ("o", "b")) == [1, 2]
    assert extract(b'{"o": {"a": 1, "b": [1, 2', ("o", "b")) is UNSET
    assert extract(b'{"o": {"a": 1, "b": [1, 2', ("o", "b", 0)) == 1
    assert extract(b'{"o": {"a": 1, "b": [1, 2', ("o", "a")) == 1


def test_parse_prefix_gives_the_members_seen():
    assert parse_prefix(b'{"a": {"b": 1, "c": [1, {"d": "x') == ({"a": {"b": 1, "c": [1, {}]}}, False)
    assert parse_prefix(b'{"a": {"b": 1, "c": [1, {"d": "x"') == ({"a": {"b": 1, "c": [1, {"d": "x"}]}}, False)
    assert parse_prefix(b'[[1, 2], [3') == ([[1, 2], []], False)
    assert parse_prefix(b"[") == ([], False)
    assert parse_prefix(b"{") == ({}, False)
    assert parse_prefix(b"") == (UNSET, False)
    assert parse_prefix(b" \r\n\t ") == (UNSET, False)


def test_arrays_of_objects_by_index():
    data = b'{"items": [{"sku": "a", "n": 1}, {"sku": "b", "n": 22}, {"sku": "c"'
    assert extract(data, ("items", 0, "sku")) == "a"
    assert extract(data, ("items", 1, "n")) == 22
    assert extract(data, ("items", 1)) == {"sku": "b", "n": 22}
    assert extract(data, ("items", 2, "sku")) == "c"          # wholly in the prefix
    assert extract(data, ("items", 2)) is UNSET               # not closed
    assert extract(data, ("items",)) is UNSET
    assert extract(data, ("items", 3)) is UNSET


# ---------------------------------------------------------------- not JSON

INVALID = [
    b'{"a": 1,}',
    b'{"a" 1}',
    b'{"a": 1 "b": 2}',
    b"{a: 1}",
    b"{'a': 1}",
    b'{"a": 01}',
    b'{"a": +1}',
    b'{"a": .5}',
    b'{"a": 1.}',
    b'{"a": 1e}',
    b'{"a": -}',
    b'{"a": tru}',
    b'{"a": nulll}',
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": "\\q"}',
    b'{"a": "\\u12G4"}',
    b'{"a": "x\ny"}',                # a raw control character inside a string
    b'{"a": 1}}',
    b'{"a": 1} x',
    b'{"a": 1} {"a": 2}',
    b"[1 2]",
    b"[1,]",
    b"[,1]",
    b"<html>",
    b"a=1&b=2",
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_json_is_unset_and_parse_prefix_raises(data):
    assert extract(data, ("a",)) is UNSET
    assert extract(data, ()) is UNSET
    with pytest.raises(ValueError):
        parse_prefix(data)


@pytest.mark.parametrize("data", [
    b'{"a": 1, "b": x',
    b'{"a": 1, "b": "\\q',
    b'{"a": 1, "b": "x\ny',
    b'{"a": 1, "b": 1.x',
    b'{"a": 1, "b": [1 2',
    b'{"a": 1, "b": tx',
    b'{"a": 1, 5',
])
def test_a_prefix_that_is_already_invalid_gives_nothing(data):
    assert extract(data, ("a",)) is UNSET
    with pytest.raises(ValueError):
        parse_prefix(data)


def test_escapes_cut_at_the_end_are_a_cut_not_an_error():
    for tail in ["\\", "\\u", "\\u0", "\\u00", "\\u00e", "\\ud83d", "\\ud83d\\", "\\ud83d\\ude0"]:
        data = ('{"a": 1, "b": "x' + tail).encode()
        assert extract(data, ("a",)) == 1, tail
        assert extract(data, ("b",)) is UNSET, tail


# ---------------------------------------------------------------- bytes that are not UTF-8

@pytest.mark.parametrize("data", [
    b'{"a": "x\xffy"}',
    b'{"a": "caf\xe9", "b": 1}',            # latin-1, not UTF-8
    b'{"b": 1, "a": "\xc3("}',              # a bad continuation byte
    b'{"b": 1, "a": "\xed\xa0\x80"}',       # an encoded surrogate
    b'{"b": 1, "a": "\xc0\xaf"}',           # an overlong encoding
    b'{"b": 1, "a": "x\xff',                # a bad byte at the very end
    b'\xff{"b": 1}',
])
def test_bytes_that_are_not_utf8_make_the_document_unreadable(data):
    # dropping or replacing the bytes would export a value the application never saw
    assert extract(data, ("a",)) is UNSET
    assert extract(data, ("b",)) is UNSET
    with pytest.raises(ValueError):
        parse_prefix(data)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_character_cut_by_the_end_of_the_prefix_is_only_a_cut(char):
    enc = char.encode()
    for n in range(1, len(enc)):
        data = b'{"a": 1, "b": "x' + enc[:n]
        assert extract(data, ("a",)) == 1
        assert extract(data, ("b",)) is UNSET
        assert parse_prefix(data) == ({"a": 1}, False)
        # after a whole value it is not whitespace: the document is not JSON
        with pytest.raises(ValueError):
            parse_prefix(b'{"a": 1}' + enc[:n])


def test_utf8_byte_order_mark_is_not_json():
    assert extract(b'\xef\xbb\xbf{"a": 1}', ("a",)) is UNSET
