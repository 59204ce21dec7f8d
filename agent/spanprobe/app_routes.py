"""Routes from the application's own source: the route table a traced Python process
declares, read with `ast` from the files it runs, never by importing or running them.

Why: a heuristic can template `/users/42` but not `/teams/platform/members/ada`; the
application's own table can, and it names the route the way the framework (and its
in-process instrumentation) does: Flask `/users/<int:user_id>`, FastAPI `/users/{user_id}`,
Django `users/<int:user_id>`.

What is recognised, in any module reached (the entry module, the modules it imports from
the same project, Django URLconfs through `include`):
  decorators   `@x.route("/p")`, `@x.get|post|put|patch|delete|head|options("/p")` (Flask,
               FastAPI/Starlette routers, Bottle, Sanic, Hug), `@route("/p")`, `@get("/p")`
  calls        `x.add_url_rule("/p")` (Flask), `x.add_route("/p", r)` (Falcon), Pyramid's
               `config.add_route(name, "/p")`, Starlette `Route("/p")` and
               `Mount("/p", routes=[...])` (nested; a Mount of another app or router
               variable is not followed: its routes fall back to the heuristic),
               Django `path("p", ...)` / `re_path(r"^p$", ...)` / `include("mod")`,
               Tornado `(r"/p", Handler)` tuples and `url(r"/p", ...)`, CherryPy Routes
               `d.connect(name, "/p")`
  prefixes     Flask `Blueprint(url_prefix=)` / `register_blueprint(bp, url_prefix=)`,
               FastAPI `APIRouter(prefix=)` / `include_router(r, prefix=)`, Sanic
               `Blueprint(url_prefix=)`, Django `path("p/", include(...))`
  CherryPy     the object tree: a class whose methods are `@cherrypy.expose`d, mounted with
               `cherrypy.tree.mount`, `cherrypy.Application` or `cherrypy.quickstart`

Every byte is the target owner's: files are read through /proc/<pid>/cwd or absolute
paths, at most MAX_FILES files of MAX_FILE_BYTES each, MAX_ROUTES routes; a regex in a
route (Tornado, Django's re_path, Pyramid's `{x:regex}`) is never compiled: each of its
groups becomes one path segment of any text. A file that can't be read or parsed is
counted, and its routes fall back to the heuristic.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .routes import Template

MAX_FILES = 64
MAX_FILE_BYTES = 1 << 20
MAX_ROUTES = 2000
ROUTE_CACHE_LIMIT = 10000      # paths whose route is kept, per process (as routes.RouteMatcher)
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
FRAMEWORKS = ("flask", "fastapi", "starlette", "django", "bottle", "tornado", "pyramid", "sanic",
              "falcon", "cherrypy", "hug")
_SERVERS = ("gunicorn", "uvicorn", "hypercorn", "waitress", "daphne")
_APP_SPEC = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):[A-Za-z_][\w.]*(?:\(\))?")   # module:app


@dataclass
class AppRoutes:
    """A process's routes, most specific first, and what it took to find them."""

    templates: list[Template] = field(default_factory=list)
    framework: str | None = None
    files: int = 0              # source files parsed
    unreadable: int = 0         # files that could not be read or parsed (heuristic for them)
    # path -> route, as RouteMatcher keeps them: up to ROUTE_CACHE_LIMIT paths, then no more
    _routes: dict[str, str | None] = field(default_factory=dict, repr=False, compare=False)

    def route(self, path: str) -> str | None:
        if path in self._routes:
            return self._routes[path]
        parts = path.strip("/").split("/") if path.strip("/") else []
        found = next((t.text for t in self.templates if t.match(parts) is not None), None)
        if len(self._routes) < ROUTE_CACHE_LIMIT:
            self._routes[path] = found
        return found


# ---- a template in a framework's syntax -> path segments ------------------------------

_ANGLE = re.compile(r"<(?:(?P<conv>[A-Za-z_]\w*)(?:\([^)]*\))?:)?(?P<name>[A-Za-z_]\w*)(?::(?P<tail>[^>]*))?>")
_BRACE = re.compile(r"\{(?P<name>[A-Za-z_]\w*)(?::(?P<tail>[^}]*))?\}")
_REGEX_GROUP = re.compile(r"^\((?:\?P<(?P<name>[A-Za-z_]\w*)>)?(?P<body>.*)\)$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.~!$&'*+,;=:@-]*$")


# converters whose text the agent checks, with its own patterns (an app's own regex is
# never compiled: see _segments_regex); the spellings of int in each framework's syntax
_INT = re.compile(r"-?[0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_CONVERTER_NAMES = ("int", "float", "path", "uuid", "string", "str", "slug", "any", "default")
CONVERTERS = {"int": _INT, r"\d+": _INT, "[0-9]+": _INT, r"-?\d+": _INT, "uuid": _UUID}


def _segments_angle(text: str) -> tuple[list, list, bool] | None:
    """Flask/werkzeug, Bottle, Sanic, Django path(): `<name>`, `<conv:name>`, `<name:conv>`."""
    segs, names, greedy = [], [], False
    for seg in [s for s in text.strip("/").split("/") if s]:
        m = _ANGLE.fullmatch(seg)
        if m:
            # werkzeug and Django put the converter first (<int:id>), Bottle and Sanic last
            # (<id:int>, <id:re:...>): a known converter name tells which
            first, _, rest = seg[1:-1].partition(":")
            conv, name = (first, rest.split(":")[0]) if first in _CONVERTER_NAMES else (rest.split(":")[0], first)
            segs.append(CONVERTERS.get(conv))
            names.append(name)
            greedy = conv == "path"
        elif "<" in seg or (seg.startswith(":") and len(seg) > 1):   # bottle's old `:name`, or a mix
            segs.append(None)
            names.append(seg.strip("<>:"))
            greedy = False
        else:
            segs.append(seg)
            names.append(None)
            greedy = False
    return segs, names, greedy


def _segments_brace(text: str) -> tuple[list, list, bool] | None:
    """FastAPI/Starlette, Pyramid, Falcon, Hug, Routes: `{name}`, `{name:conv}`, `*rest`."""
    segs, names, greedy = [], [], False
    for seg in [s for s in text.strip("/").split("/") if s]:
        m = _BRACE.fullmatch(seg)
        if m:
            segs.append(CONVERTERS.get(m.group("tail") or ""))
            names.append(m.group("name"))
            greedy = (m.group("tail") or "") == "path"
        elif seg.startswith("*") and len(seg) > 1:       # Pyramid's remainder
            segs.append(None)
            names.append(seg[1:])
            greedy = True
        elif "{" in seg or (seg.startswith(":") and len(seg) > 1):
            segs.append(None)
            names.append(seg.strip("{}:"))
            greedy = False
        else:
            segs.append(seg)
            names.append(None)
            greedy = False
    return segs, names, greedy


def _split_regex(text: str) -> list[str]:
    """A route regex split on the slashes outside groups and classes (`([^/]+)` is one
    piece), each piece without its anchors; empty pieces and an optional slash dropped."""
    pieces, cur, depth, i = [], "", 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        if c == "/" and depth == 0:
            pieces.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    pieces.append(cur)
    out = []
    for p in pieces:
        p = p.removeprefix("^").removesuffix("$").removesuffix("?")
        if p:
            out.append(p)
    return out


def _segments_regex(text: str) -> tuple[list, list, bool] | None:
    """Tornado, Django re_path: each group a segment of any text; literal segments plain
    text only (else the route is not used: its regex is never compiled)."""
    segs, names, greedy = [], [], False
    for seg in _split_regex(text):
        m = _REGEX_GROUP.fullmatch(seg)
        if m:
            segs.append(CONVERTERS.get(m.group("body")))
            names.append(m.group("name") or "")
            greedy = m.group("body") in (".*", ".+")
            continue
        literal = seg.replace("\\.", ".").replace("\\-", "-")
        if not _PLAIN.fullmatch(literal):
            return None
        segs.append(literal)
        names.append(None)
        greedy = False
    return segs, names, greedy


SYNTAX = {"angle": _segments_angle, "brace": _segments_brace, "regex": _segments_regex}


def template(text: str, syntax: str) -> Template | None:
    """`text` in a framework's `syntax` as a Template: literal segments, and for each
    parameter None in `segments` and its check (or None) in `checks`."""
    found = SYNTAX[syntax](text)
    if found is None:
        return None
    marks, names, greedy = found
    params = [n is not None for n in names]
    segments = tuple(None if p else m for m, p in zip(marks, params))
    checks = tuple(m if p else None for m, p in zip(marks, params))
    return Template(text, segments, tuple(names), greedy and bool(segments) and segments[-1] is None,
                    checks if any(checks) else ())


def join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    return prefix.rstrip("/") + "/" + path.lstrip("/") if path else prefix


# ---- reading one module ----------------------------------------------------------------

def _const(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _kw(call: ast.Call, *names: str) -> str | None:
    for k in call.keywords:
        if k.arg in names:
            return _const(k.value)
    return None


def _arg(call: ast.Call, i: int, *names: str) -> str | None:
    if len(call.args) > i:
        return _const(call.args[i])
    return _kw(call, *names)


def _callee(call: ast.Call) -> tuple[str | None, str]:
    """(object name or None, attribute or function name) of a call."""
    f = call.func
    if isinstance(f, ast.Attribute):
        base = f.value
        while isinstance(base, ast.Attribute):
            base = base.value
        return (base.id if isinstance(base, ast.Name) else None), f.attr
    if isinstance(f, ast.Name):
        return None, f.id
    return None, ""


@dataclass
class Module:
    """What one file declares: its routes (text, syntax, router variable or None), the
    prefixes of its router variables, where routers are included, Django includes, the
    project modules it imports from."""

    routes: list[tuple[str, str, str | None]] = field(default_factory=list)
    prefixes: dict[str, str] = field(default_factory=dict)        # router variable -> its own prefix
    mounts: list[tuple[str, str]] = field(default_factory=list)   # (router variable, prefix)
    includes: list[tuple[str, str]] = field(default_factory=list)  # Django: (prefix, module)
    imports: dict[str, str] = field(default_factory=dict)          # local name -> module
    frameworks: set[str] = field(default_factory=set)
    cherry_roots: list[tuple[str, str]] = field(default_factory=list)   # (class name, mount point)
    cherry_classes: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)
    mounted_calls: set[int] = field(default_factory=set)   # Starlette Route calls a Mount took


def _decorator_route(dec: ast.expr) -> tuple[str, str | None] | None:
    """A route decorator's (path, router variable)."""
    if not isinstance(dec, ast.Call):
        return None
    obj, name = _callee(dec)
    if name == "route" or name in HTTP_METHODS or name == "websocket":
        path = _arg(dec, 0, "rule", "path", "uri", "route")
        if path is not None and (path.startswith("/") or path == ""):
            return path, obj
    return None


def read_module(source: str, name: str = "") -> Module:
    tree = ast.parse(source)
    mod = Module()
    package = name.rsplit(".", 1)[0] if "." in name else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in FRAMEWORKS:
                    mod.frameworks.add(top)
                mod.imports[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[:-node.level] if name else []
                base = ".".join([*parts, base] if base else parts)
            top = base.split(".")[0]
            if top in FRAMEWORKS:
                mod.frameworks.add(top)
            for a in node.names:
                mod.imports[a.asname or a.name] = f"{base}.{a.name}" if base else a.name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                found = _decorator_route(dec)
                if found:
                    mod.routes.append((found[0], "brace" if "{" in found[0] else "angle", found[1]))
        elif isinstance(node, ast.ClassDef):
            exposed = []
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                        (isinstance(d, ast.Attribute) and d.attr == "expose")
                        or (isinstance(d, ast.Call) and _callee(d)[1] == "expose") for d in item.decorator_list):
                    params = [a.arg for a in item.args.args[1:]]
                    exposed.append((item.name, params))
            if exposed:
                mod.cherry_classes[node.name] = exposed
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            _, fn = _callee(node.value)
            prefix = _kw(node.value, "url_prefix", "prefix")
            if fn in ("Blueprint", "APIRouter") and prefix:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        mod.prefixes[t.id] = prefix
        if isinstance(node, ast.Call):
            _call(node, mod)
    mod.mounted_calls.clear()           # ids of this tree's nodes: meaningless once it is gone
    return mod


def _call(call: ast.Call, mod: Module) -> None:
    obj, fn = _callee(call)
    if fn == "add_url_rule":                                       # Flask
        path = _arg(call, 0, "rule")
        if path:
            mod.routes.append((path, "angle", obj))
    elif fn == "add_route":
        first, second = _arg(call, 0, "uri_template", "name"), _arg(call, 1, "pattern")
        if second is not None and second.startswith("/"):          # Pyramid: (name, pattern)
            mod.routes.append((second, "brace", None))
        elif first is not None and first.startswith("/"):          # Falcon: (template, resource)
            mod.routes.append((first, "brace", None))
    elif fn in ("Route", "WebSocketRoute") and id(call) not in mod.mounted_calls:   # Starlette
        path = _arg(call, 0, "path")
        if path and path.startswith("/"):
            mod.routes.append((path, "brace", None))
    elif fn == "Mount" and id(call) not in mod.mounted_calls:
        _starlette_mount(call, "", mod)
    elif fn in ("path", "re_path", "url") and call.args:           # Django (url: Tornado too)
        path = _const(call.args[0])
        target = call.args[1] if len(call.args) > 1 else None
        if path is None:
            return
        if isinstance(target, ast.Call) and _callee(target)[1] == "include" and target.args:
            included = _const(target.args[0])
            if included:
                mod.includes.append((path, included))
        elif fn == "path":
            mod.routes.append((path, "angle", None))
        else:
            mod.routes.append((path, "regex", None))
    elif fn == "connect" and len(call.args) >= 2:                  # CherryPy's RoutesDispatcher
        path = _const(call.args[1])
        if path and path.startswith("/"):
            mod.routes.append((path, "brace", None))
    elif fn in ("register_blueprint", "include_router", "blueprint") and call.args:
        target = call.args[0]
        if isinstance(target, ast.Name):
            mod.mounts.append((target.id, _kw(call, "url_prefix", "prefix") or ""))
    elif fn in ("mount", "Application", "quickstart") and call.args and isinstance(call.args[0], ast.Call):
        root_cls = _callee(call.args[0])[1]                       # CherryPy: tree.mount(Root(), "/x")
        point = _arg(call, 1, "script_name") or ""
        mod.cherry_roots.append((root_cls, point))
    elif fn == "Application" and call.args and isinstance(call.args[0], ast.List):
        _tornado(call.args[0], mod)                                 # Tornado: Application([...])


def _starlette_mount(call: ast.Call, outer: str, mod: Module) -> None:
    """A Mount's routes with its prefix (and its nested Mounts'), taken once: ast.walk
    meets the Mount before the calls inside it, which it then skips."""
    prefix = _arg(call, 0, "path")
    routes = next((k.value for k in call.keywords if k.arg == "routes"),
                  call.args[1] if len(call.args) > 1 else None)
    if prefix is None or not isinstance(routes, (ast.List, ast.Tuple)):
        return
    for item in routes.elts:
        if not isinstance(item, ast.Call):
            continue
        kind = _callee(item)[1]
        if kind in ("Route", "WebSocketRoute"):
            path = _arg(item, 0, "path")
            if path and path.startswith("/"):
                mod.mounted_calls.add(id(item))
                mod.routes.append((join(join(outer, prefix), path), "brace", None))
        elif kind == "Mount":
            mod.mounted_calls.add(id(item))
            _starlette_mount(item, join(outer, prefix), mod)


def _tornado(handlers: ast.List, mod: Module) -> None:
    for item in handlers.elts:
        if isinstance(item, ast.Tuple) and item.elts:
            path = _const(item.elts[0])
            if path and path.startswith(("/", "^/")):
                mod.routes.append((path, "regex", None))


# ---- a process: its entry module, what it reaches, the table --------------------------

def entry_points(cmdline: list[str], env: dict[str, str]) -> list[str]:
    """Modules ("pkg.mod") or script paths a Python process runs its app from."""
    args = cmdline[1:]
    out: list[str] = []
    if not args:
        return out
    prog = os.path.basename(args[0]) if not args[0].startswith("-") else ""
    server = next((i for i, a in enumerate(args) if os.path.basename(a) in _SERVERS
                   or (a == "-m" and i + 1 < len(args) and args[i + 1] in _SERVERS)), None)
    if server is not None:
        for a in args[server + 1:]:
            m = _APP_SPEC.fullmatch(a)
            if m:
                out.append(m.group(1))
    elif "-m" in args:
        i = args.index("-m")
        if i + 1 < len(args):
            out.append(args[i + 1])
    elif prog.endswith(".py"):
        out.append(args[0])
    if env.get("DJANGO_SETTINGS_MODULE"):
        out.append("django-settings:" + env["DJANGO_SETTINGS_MODULE"])
    return out


_PARSED: dict[bytes, "Module"] = {}      # content hash -> what it declares (bounded)
_PARSED_MAX = 512


class Reader:
    """Files of one process: through its working directory for relative names, bounded,
    and only files its owner could read itself (owned by it, or readable by anyone): the
    agent reads as root, and must not carry into span names what a root-only file says."""

    def __init__(self, cwd: Path | None, search: list[Path], uid: int | None = None):
        self.cwd = cwd
        self.search = search
        self.uid = uid
        self.files = 0
        self.unreadable = 0

    def module_file(self, module: str) -> Path | None:
        """The file of a dotted module name; a name that is not dotted identifiers (a
        Django include's string is any text: "/etc/x", "a/../../b") names no file."""
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts):
            return None
        rel = Path(*parts)
        for base in self.search:
            for cand in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
                if cand.is_file():
                    return cand
        return None

    def read(self, path: Path) -> str | None:
        if self.files >= MAX_FILES:
            self.unreadable += 1
            return None
        self.files += 1
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if self.uid is not None and st.st_uid != self.uid and not st.st_mode & 0o004:
                    raise ValueError("not readable by the process's owner")
                data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise ValueError("too large")
            return data.decode("utf-8")
        except (OSError, ValueError):
            self.unreadable += 1
            return None


def _parse(reader: Reader, path: Path, name: str) -> Module | None:
    """A file's declarations, parsed once per content (every worker of a server, every
    restart with the same code, share the parse)."""
    text = reader.read(path)
    if text is None:
        return None
    key = hashlib.sha256(name.encode() + b"\0" + text.encode()).digest()
    hit = _PARSED.get(key)
    if hit is not None:
        return hit
    try:
        mod = read_module(text, name)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        reader.unreadable += 1
        return None
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[key] = mod
    return mod


def find(reader: Reader, entries: list[str]) -> AppRoutes:
    """The route table reached from `entries` (entry_points)."""
    modules: dict[str, Module] = {}
    queue: list[str] = []
    django_urlconfs: list[tuple[str, str]] = []

    def load(name: str, path: Path | None = None) -> Module | None:
        if name in modules:
            return modules[name]
        path = path or reader.module_file(name)
        if path is None:
            return None
        mod = _parse(reader, path, name)
        if mod is not None:
            modules[name] = mod
            queue.append(name)
        return mod

    for entry in entries:
        if entry.startswith("django-settings:"):
            settings = load(entry.split(":", 1)[1])
            if settings is not None:
                conf = _django_root_urlconf(reader, entry.split(":", 1)[1])
                if conf:
                    django_urlconfs.append(("", conf))
        elif entry.endswith(".py"):
            path = Path(entry) if os.path.isabs(entry) else (reader.cwd / entry if reader.cwd else None)
            if path is not None:
                load(Path(entry).stem, path)
        else:
            load(entry)
    # the project's own modules the entry imports from (routers, blueprints), bounded
    while queue:
        mod = modules[queue.pop(0)]
        for target in list(mod.imports.values()):
            for cand in (target, target.rsplit(".", 1)[0] if "." in target else ""):
                if cand and cand.split(".")[0] not in FRAMEWORKS and cand not in modules:
                    if reader.module_file(cand) is not None:
                        load(cand)
                        break
    out = AppRoutes(files=reader.files, unreadable=reader.unreadable)
    found: list[tuple[str, str]] = []
    frameworks = set().union(*(m.frameworks for m in modules.values())) if modules else set()
    out.framework = next((f for f in FRAMEWORKS if f in frameworks), None)
    for name, mod in modules.items():
        found += _module_routes(mod, modules)
    for prefix, conf in django_urlconfs:
        found += _django(reader, modules, prefix, conf, 0)
    seen = set()
    for text, syntax in found[:MAX_ROUTES]:
        if (text, syntax) in seen:
            continue
        seen.add((text, syntax))
        t = template(text, syntax)
        if t is not None:
            out.templates.append(t)
    # literal segments beat parameters (static /users/me before /users/<id>), then order
    out.templates.sort(key=lambda t: (-sum(s is not None for s in t.segments), t.greedy))
    out.files, out.unreadable = reader.files, reader.unreadable
    return out


def _module_routes(mod: Module, modules: dict[str, Module]) -> list[tuple[str, str]]:
    """Routes of a module with their routers' prefixes, where they are mounted in any module."""
    out = []
    for text, syntax, router in mod.routes:
        prefix = mod.prefixes.get(router, "") if router else ""
        mounted = ""
        if router:
            for other in modules.values():
                for var, point in other.mounts:
                    local = other.imports.get(var, var).rsplit(".", 1)[-1]
                    if local == router and (other is mod or var in other.imports):
                        mounted = point
        out.append((join(join(mounted, prefix), text) if (mounted or prefix) else text, syntax))
    for cls, point in mod.cherry_roots:
        for owner in modules.values():
            for method, params in owner.cherry_classes.get(cls, []):
                base = join(point or "/", "" if method == "index" else method)
                text = base + "".join(f"/{{{p}}}" for p in params)
                out.append((text if text.startswith("/") else "/" + text, "brace"))
    return out


def _django_root_urlconf(reader: Reader, settings_module: str) -> str | None:
    path = reader.module_file(settings_module)
    text = reader.read(path) if path else None
    if not text:
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        reader.unreadable += 1
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ROOT_URLCONF"
                                                for t in node.targets):
            return _const(node.value)
    return None


def _django(reader: Reader, modules: dict[str, Module], prefix: str, conf: str, depth: int) -> list:
    if depth > 8:
        return []
    mod = modules.get(conf)
    if mod is None:
        path = reader.module_file(conf)
        mod = _parse(reader, path, conf) if path else None
        if mod is None:
            return []
        modules[conf] = mod
    out = [(join(prefix, text) if prefix else text, syntax) for text, syntax, _ in mod.routes
           if syntax in ("angle", "regex")]
    for sub_prefix, sub in mod.includes:
        out += _django(reader, modules, join(prefix, sub_prefix) if prefix else sub_prefix, sub, depth + 1)
    return out


def for_process(root, pid: int, exe_name: str, cmdline: list[str], env: dict[str, str]) -> AppRoutes | None:
    """The route table of a Python process, read through its own view of the file system
    (/proc/<pid>/cwd and /proc/<pid>/root), or None when it runs no recognisable app."""
    if not exe_name.startswith("python"):
        return None
    entries = entry_points(cmdline, env)
    if not entries:
        return None
    proc = root.path("proc", str(pid))
    try:
        uid = os.stat(proc).st_uid
    except OSError:
        return None
    cwd = proc / "cwd"
    search = [cwd]
    scripts = [e for e in entries if e.endswith(".py")]
    if scripts:
        script = Path(scripts[0])
        search.insert(0, proc / "root" / str(script.parent).lstrip("/") if script.is_absolute()
                      else cwd / script.parent)
    for p in env.get("PYTHONPATH", "").split(":"):
        if p:
            search.append(proc / "root" / p.lstrip("/") if p.startswith("/") else cwd / p)
    return find(Reader(cwd, search[:16], uid), entries)
