"""`spanprobe demo`: two services and a client, traced, spans on the console."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

from .config import resolve
from .pipeline import Agent, install_signal_handlers

log = logging.getLogger("spanprobe.demo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"demo service on port {port} did not start")


def run_demo(duration: float = 15.0, attach_mode: str = "auto") -> int:
    front, back = _free_port(), _free_port()
    py = sys.executable
    env_front = {"OTEL_SERVICE_NAME": "demo-frontend"}
    env_back = {"OTEL_SERVICE_NAME": "demo-inventory"}
    import os
    procs = [
        subprocess.Popen([py, "-m", "spanprobe.demo_app", "serve", "--port", str(back)],
                         env={**os.environ, **env_back}),
        subprocess.Popen([py, "-m", "spanprobe.demo_app", "serve", "--port", str(front),
                          "--downstream", f"http://127.0.0.1:{back}"],
                         env={**os.environ, **env_front}),
    ]
    try:
        _wait_listening(front)
        _wait_listening(back)
        settings = resolve({"select.ports": [front, back], "export.console": True,
                            "attach_mode": attach_mode, "stats_interval_s": 5.0})
        agent = Agent(settings, stop_after=duration or None)
        install_signal_handlers(agent)
        agent.start()
        print(f"demo: frontend on 127.0.0.1:{front} calls inventory on 127.0.0.1:{back}; "
              f"spans follow ({'Ctrl-C to stop' if not duration else f'{duration:.0f} s'})", flush=True)
        procs.append(subprocess.Popen([py, "-m", "spanprobe.demo_app", "load", "--url",
                                       f"http://127.0.0.1:{front}", "--rate", "2"]))
        rc = agent.run()
        spans = agent.counters().get("spans_exported", 0) if agent.exporter else 0
        print(f"demo: {spans} spans exported", flush=True)
        return rc if spans else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
