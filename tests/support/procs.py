"""Real processes for the integration tier: the apps behind their usual servers, and
the agent itself, started as a user would start them."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


PORTS_FROM = 10_000             # test servers' ports: from here to the kernel's ephemeral range
_last_port: int | None = None


@functools.cache
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family)
        except OSError:                 # no IPv6 on this kernel: IPv4 alone decides
            continue
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port for a test server to listen on, that no other test of this run hands out.

    Not one the kernel picks (its ephemeral range): every client connection on the machine
    takes its local port from there, and may take this one between the check and the
    server's bind. Below that range, each pytest-xdist worker draws from a block of its
    own, in turn, so neither two workers nor two servers of one test get the same port; the
    first turn starts at random, so two test processes side by side rarely meet either. A
    machine whose ephemeral range leaves no room below it gets a port the kernel picks."""
    global _last_port
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (_ephemeral_low() - PORTS_FROM) // workers
    if size < 100:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    first = PORTS_FROM + worker * size
    start = random.randrange(size) if _last_port is None else _last_port - first + 1
    for i in range(size):
        port = first + (start + i) % size
        if _bindable(port):
            _last_port = port
            return port
    raise RuntimeError(f"no free port in {first}-{first + size - 1}")


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "agent"), str(REPO)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def _gunicorn(module: str, worker: str) -> list[str]:
    args = ["-m", "gunicorn", "-w", "1", "-k", worker]
    if worker == "gthread":
        args += ["--threads", "4"]
    return args + ["-b", "127.0.0.1:{port}", f"tests.apps.{module}:app"]


# kind -> argv after the interpreter; "{port}" is filled in
SERVERS = {
    "fastapi-uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
                        "--no-access-log", "tests.apps.fastapi_app:app"],
    "stdlib-http-server": ["-m", "tests.apps.stdlib_app", "{port}"],
    "tornado-server": ["-m", "tests.apps.tornado_app", "{port}"],
    "sanic-server": ["-m", "tests.apps.sanic_app", "{port}"],
    "cherrypy-server": ["-m", "tests.apps.cherrypy_app", "{port}"],
}
for _name in ("flask", "django", "bottle", "pyramid", "falcon", "hug"):
    for _worker in ("sync", "gthread"):
        SERVERS[f"{_name}-gunicorn-{_worker}"] = _gunicorn(f"{_name}_app", _worker)

# The route of /users/<n> in each test app, as its framework writes it (the agent reads the
# app's own route table: issue 17); apps without a framework get the heuristic's template.
USERS_ROUTES = {"flask": "/users/<int:user_id>", "fastapi": "/users/{user_id}", "django": "users/<int:user_id>",
                "bottle": "/users/<user_id:int>", "pyramid": r"/users/{id:\d+}", "falcon": "/users/{user_id:int}",
                "hug": "/users/{user_id}", "tornado": r"/users/(\d+)", "sanic": "/users/<user_id:int>",
                "cherrypy": "/users/{user_id}"}


def users_route(kind: str) -> str:
    return USERS_ROUTES.get(kind.split("-", 1)[0], "/users/{id}")


# A route no heuristic can template (words in its parameters): (path, the app's template).
# CherryPy's default dispatcher maps path segments to positional arguments, so its route
# has no literal segment between them.
WORDS_PATH = "/teams/platform/members/ada"
WORD_ROUTES = {"flask": (WORDS_PATH, "/teams/<team>/members/<member>"),
               "fastapi": (WORDS_PATH, "/teams/{team}/members/{member}"),
               "django": (WORDS_PATH, "teams/<slug:team>/members/<str:member>"),
               "bottle": (WORDS_PATH, "/teams/<team>/members/<member>"),
               "pyramid": (WORDS_PATH, "/teams/{team}/members/{member}"),
               "falcon": (WORDS_PATH, "/teams/{team}/members/{member}"),
               "hug": (WORDS_PATH, "/teams/{team}/members/{member}"),
               "tornado": (WORDS_PATH, "/teams/([^/]+)/members/([^/]+)"),
               "sanic": (WORDS_PATH, "/teams/<team>/members/<member>"),
               "cherrypy": ("/members/platform/ada", "/members/{team}/{member}")}


# Apps whose dependencies clash with the main environment's run in their own venv
# (Hug pins Falcon 2): the bootstrap exports its interpreter.
INTERPRETERS = {"hug": "SPANPROBE_HUG_PYTHON"}


def interpreter(kind: str) -> str:
    var = INTERPRETERS.get(kind.split("-", 1)[0])
    if var is None:
        return sys.executable
    path = os.environ.get(var)
    if not path or not os.path.exists(path):
        raise RuntimeError(f"{kind} needs its own venv: set {var} (scripts/dev.sh setup does)")
    return path


class App:
    def __init__(self, kind: str, tmp: Path, service: str | None = None,
                 downstream: str | None = None, port: int | None = None, env: dict[str, str] | None = None):
        """`service` is the app's OTEL_SERVICE_NAME ("" sets none); `env` adds variables."""
        self.kind = kind
        self.port = port or free_port()
        self.service = kind if service is None else service
        self.timing_file = tmp / f"timing-{kind}-{self.port}.txt"
        self.log = tmp / f"app-{kind}-{self.port}.log"
        env = dict(env or {}, APP_TIMING_FILE=str(self.timing_file))
        if self.service:
            env["OTEL_SERVICE_NAME"] = self.service
        if downstream:
            env["DOWNSTREAM_URL"] = downstream
        cmd = [interpreter(kind)] + [a.format(port=self.port) for a in SERVERS[kind]]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(env), stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def timings(self) -> dict[str, tuple[int, int]]:
        out = {}
        if self.timing_file.exists():
            for line in self.timing_file.read_text().splitlines():
                rid, start, end = line.split()
                out[rid] = (int(start), int(end))
        return out

    def pids(self) -> set[int]:
        """The server and its workers."""
        out = {self.proc.pid}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    stat = Path(f"/proc/{p}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    out.add(int(p))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Agent:
    """`python -m spanprobe run ...` as a child process."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None,
                 wait_ready: bool = True, timeout: float = 90.0, prefix: list[str] | None = None):
        self.out = tmp / f"agent-{time.monotonic_ns()}.out"
        self.err = Path(str(self.out)[:-4] + ".err")
        # prefix: a command the agent runs under (the bench's `chrt --idle 0`)
        self.cmd = [*(prefix or []), sys.executable, "-m", "spanprobe", "run", *args]
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=_env(env), stdout=open(self.out, "w"),
                                     stderr=open(self.err, "w"))
        self.stop_seconds: float | None = None
        if wait_ready:
            self.wait_for(r" ready strategy=", timeout)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.stderr)
            if m:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode} before /{pattern}/:\n{self.stderr[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"agent did not log /{pattern}/ in {timeout}s:\n{self.stderr[-3000:]}")

    @property
    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    @property
    def stdout(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.stop_seconds = time.monotonic() - t0
        return self.proc.returncode

    def final_counters(self) -> dict:
        m = re.findall(r" final (\{.*\})", self.stderr)
        if not m:
            raise AssertionError(f"no final counters in agent log:\n{self.stderr[-2000:]}")
        return json.loads(m[-1])

    def stats(self) -> dict:
        m = re.findall(r" (?:stats|final) (\{.*\})", self.stderr)
        return json.loads(m[-1]) if m else {}


def bpf_ids(pid: int, kind: str) -> list[int]:
    """The ids of the BPF objects (`kind`: "map" or "prog") behind a process's fds, one per
    fd, from fdinfo: other agents or tests on the machine may hold objects of the same
    names, so only these ids are the process's own."""
    ids = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        m = re.search(rf"^{kind}_id:\s*(\d+)", text, re.M)
        if m:
            ids.append(int(m.group(1)))
    return ids
