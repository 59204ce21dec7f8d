"""What never leaves the host: credentials in headers, secret-looking query values and
command-line arguments."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote

REDACTED: Final = "REDACTED"
SECRET_CACHE_LIMIT = 4096      # parameter names whose verdict is kept
_SECRET_WORDS: Final = re.compile(r"(pass(word|wd)?|pwd|secret|token|key|auth|credential|signature|session|jwt|cookie)",
                           re.IGNORECASE)
_URL_USERINFO: Final = re.compile(r"([a-z][a-z0-9+.-]*://[^/:@\s]+):[^/@\s]+@", re.IGNORECASE)


class Redactor:
    def __init__(self, headers: list[str], query_params: list[str]):
        self.headers = frozenset(h.lower() for h in headers)
        self.params = frozenset(p.lower() for p in query_params)
        self._secret: dict[str, bool] = {}     # parameter name -> secret? (few names, many requests)

    def header_allowed(self, name: str) -> bool:
        return name.lower() not in self.headers

    def secret_param(self, name: str) -> bool:
        secret = self._secret.get(name)
        if secret is None:
            low = unquote(name).lower()
            secret = low in self.params or bool(_SECRET_WORDS.search(low))
            if len(self._secret) >= SECRET_CACHE_LIMIT:
                self._secret.clear()        # names from hostile input: start again
            self._secret[name] = secret
        return secret

    def query(self, query: str) -> str:
        """The query string with secret-looking values replaced."""
        if not query:
            return query
        out = []
        changed = False
        for pair in query.split("&"):
            name, sep, value = pair.partition("=")
            if sep and value and self.secret_param(name):
                out.append(f"{name}{sep}{REDACTED}")
                changed = True
            else:
                out.append(pair)
        return "&".join(out) if changed else query

    def target(self, target: str) -> tuple[str, str]:
        """(path, redacted query) of a request target."""
        path, _, query = target.partition("?")
        # (each test spelled out: the compiled build has primitives for these forms, and this
        # runs for every request)
        if path.startswith("http://") or path.startswith("https://"):
            rest = path.split("://", 1)[1]
            path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        if "#" in path:
            path = path.partition("#")[0]
        if "#" in query:
            query = query.partition("#")[0]
        return path or "/", self.query(query)

    def command_line(self, argv: list[str]) -> str:
        """Arguments joined, secret values (--password=x, --token x, TOKEN=x) replaced."""
        out = []
        hide_next = False
        for arg in argv:
            if hide_next:
                out.append(REDACTED)
                hide_next = False
                continue
            if arg.startswith("-") and "=" not in arg and _SECRET_WORDS.search(arg):
                out.append(arg)
                hide_next = True
                continue
            # credentials in a URL, wherever it is (--db=postgres://u:p@h, DB_URL=...)
            arg = _URL_USERINFO.sub(r"\1:" + quote(REDACTED) + "@", arg)
            name, sep, value = arg.partition("=")
            if sep and _SECRET_WORDS.search(name):
                out.append(f"{name}={REDACTED}")
            else:
                out.append(arg)
        return " ".join(out)
