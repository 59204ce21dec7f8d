"""Low-cardinality routes: configured templates first, else a heuristic.

Beyla's users complain of route explosions; so an identifier-looking segment never
reaches a span name: numbers, UUIDs, hex strings and long opaque tokens become
placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX: Final = re.compile(r"^(?:0x)?[0-9a-fA-F]{8,}$")
_NUM: Final = re.compile(r"^[+-]?\d+(?:\.\d+)?$")
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[Tt ].*)?$")
_WORD: Final = re.compile(r"^[a-z][a-z_-]*$")
_PARAM: Final = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}$")


def _opaque(segment: str) -> bool:
    """Long segments mixing letters and digits (tokens, hashes, base64 ids)."""
    if len(segment) < 16:
        return False
    digits = sum(c.isdigit() for c in segment)
    return digits >= 2 or not _WORD.match(segment)


# segments seen that the heuristic keeps as they are ("users", "api"): they repeat on
# every request and take four patterns each to clear. Short ones only, cleared when full.
_LITERALS: set[str] = set()
_isascii: Final = str.isascii     # bound once (the compiled module has no primitive for it)
_LITERALS_LIMIT: Final = 4096
_LITERAL_KEPT_MAX: Final = 64


def heuristic(path: str) -> str:
    parts = path.split("/")
    out: list[str] = []
    literals = _LITERALS
    for seg in parts:
        if not seg or seg in literals:
            out.append(seg)
        elif (seg.isdigit() and _isascii(seg)) or _NUM.match(seg):     # digits: _NUM's, no pattern run
            out.append("{id}")
        elif _UUID.match(seg):
            out.append("{uuid}")
        elif _DATE.match(seg):
            out.append("{date}")
        elif _HEX.match(seg) and any(c.isdigit() for c in seg):
            out.append("{hex}")
        elif _opaque(seg):
            out.append("{token}")
        else:
            out.append(seg)
            if len(seg) <= _LITERAL_KEPT_MAX:
                if len(literals) >= _LITERALS_LIMIT:
                    literals.clear()
                literals.add(seg)
    return "/".join(out) or "/"


@dataclass(frozen=True)
class Template:
    text: str
    segments: tuple[str | None, ...]    # None = parameter
    names: tuple[str | None, ...]
    greedy: bool                         # last parameter matches the rest ({path:path})
    # per segment, a check of the parameter's text (an int converter: digits), or None;
    # only the agent's own fixed patterns (app_routes.CONVERTERS), never an app's regex
    checks: tuple = ()

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if self.greedy:
            if len(parts) < len(self.segments):
                return None
        elif len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for i, (want, name) in enumerate(zip(self.segments, self.names)):
            if want is None:
                value = "/".join(parts[i:]) if self.greedy and i == len(self.segments) - 1 else parts[i]
                if not value:
                    return None
                if self.checks and self.checks[i] is not None and not self.checks[i].fullmatch(value):
                    return None
                assert name is not None      # a parameter's segment has its name
                params[name] = value
            elif want != parts[i]:
                return None
        return params


def compile_template(text: str) -> Template:
    segs: list[str | None] = []
    names: list[str | None] = []
    greedy = False
    for seg in text.strip("/").split("/") if text.strip("/") else []:
        m = _PARAM.match(seg)
        if m:
            segs.append(None)
            names.append(m.group(1))
            greedy = ":path" in seg
        else:
            segs.append(seg)
            names.append(None)
            greedy = False
    return Template(text, tuple(segs), tuple(names), greedy)


class RouteMatcher:
    """Configured templates in order of specificity; the heuristic for the rest."""

    def __init__(self, templates: list[str] | tuple[str, ...] = ()):
        compiled = [compile_template(t) for t in templates]
        # literal segments beat parameters: more literals first
        compiled.sort(key=lambda t: (-sum(s is not None for s in t.segments), t.greedy))
        self.templates = compiled
        self._cache: dict[str, tuple[str, bool]] = {}

    def route(self, path: str) -> tuple[str, bool]:
        """(route, configured) for a path (no query string)."""
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        parts = path.strip("/").split("/") if path.strip("/") else []
        result = None
        for t in self.templates:
            if t.match(parts) is not None:
                result = (t.text, True)
                break
        if result is None:
            result = (heuristic(path), False)
        if len(self._cache) < 10000:
            self._cache[path] = result
        return result
