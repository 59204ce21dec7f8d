"""No code of a traced process runs with the agent's privileges (issue 14, item 4).

An unprivileged user (`nobody`) serves HTTP from copies of python3 in a directory of
their own, then replaces one copy, while it runs, by a script that leaves a marker file
when run. The real agent traces both servers; each makes an outbound call (when asyncio
linking is turned on). An agent that learnt the interpreter's layout by running the file
at the process's path would run the script as root; this one reads the mapped file and
the process's memory only: the marker never appears, the agent starts no process at all,
and the untouched copy is still linked."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.support.procs import REPO, Agent, App, _env, free_port, wait_port


class UserServer:
    """tests/apps/stdlib_app served by `interpreter` as the user `nobody`."""

    def __init__(self, interpreter: Path, tmp: Path, service: str, downstream: str):
        self.port = free_port()
        self.log = tmp / f"app-{service}.log"
        env = _env({"OTEL_SERVICE_NAME": service, "DOWNSTREAM_URL": downstream})
        self.proc = subprocess.Popen([str(interpreter), "-m", "tests.apps.stdlib_app", str(self.port)],
                                     cwd=REPO, env=env, user="nobody", group=pwd.getpwnam("nobody").pw_gid,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class ChildWatcher:
    """Every process the agent starts while watched (its threads' children, polled)."""

    def __init__(self, pid: int, every: float = 0.01):
        self.pid, self.every = pid, every
        self.seen: dict[int, str] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tasks = Path(f"/proc/{self.pid}/task")
        while not self.done.is_set():
            try:
                for task in tasks.iterdir():
                    for child in (task / "children").read_text().split():
                        if int(child) not in self.seen:
                            try:
                                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                            except OSError:
                                cmd = b"?"
                            self.seen[int(child)] = cmd.decode(errors="replace")
            except OSError:
                pass                          # a thread ended while listed, or the agent
            time.sleep(self.every)

    def stop(self) -> dict[int, str]:
        self.done.set()
        self.thread.join()
        return self.seen


def user_copy(home: Path, name: str) -> Path:
    """A copy of the interpreter running these tests, in a directory `nobody` owns."""
    nobody = pwd.getpwnam("nobody")
    where = home / name
    where.mkdir()
    copy = where / "python3"
    shutil.copyfile(os.path.realpath(sys.executable), copy)
    copy.chmod(0o755)
    for p in (where, copy):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    return copy


def swap_as_nobody(copy: Path, marker: Path) -> None:
    """What the attacker does: put a script at the copy's path (rename over it)."""
    script = f"#!/bin/sh\necho \"ran as $(id -u): $0 $*\" > {marker}\n"
    subprocess.run(["/bin/sh", "-c", f'cat > "$1.new" && chmod 755 "$1.new" && mv "$1.new" "$1"',
                    "swap", str(copy)], input=script, text=True, check=True, user="nobody",
                   group=pwd.getpwnam("nobody").pw_gid)


def test_a_swapped_user_interpreter_is_never_run_by_the_agent(tmp, receiver):
    home = Path(tempfile.mkdtemp(prefix="spanprobe-user-", dir="/tmp"))
    home.chmod(0o755)
    os.chown(home, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    marker = home / "ran-by-the-agent"
    apps = []
    try:
        down = App("stdlib-http-server", tmp, service="down-noexec")
        apps.append(down)
        victim = UserServer(user_copy(home, "swapped"), tmp, "noexec-swapped", down.url)
        apps.append(victim)
        kept = UserServer(user_copy(home, "kept"), tmp, "noexec-kept", down.url)
        apps.append(kept)
        swap_as_nobody(home / "swapped" / "python3", marker)
        assert (home / "swapped" / "python3").read_bytes().startswith(b"#!/bin/sh")

        agent = Agent(["--port", str(victim.port), "--port", str(kept.port), "--port", str(down.port),
                       "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"], tmp)
        watcher = ChildWatcher(agent.proc.pid)
        with requests.Session() as s:
            for server in (victim, kept):
                for i in range(3):
                    assert s.get(f"{server.url}/call?n={i}", timeout=10).status_code == 200
        # both were traced, the untouched copy linked, the swapped one refused with the reason
        for service in ("noexec-swapped", "noexec-kept"):
            receiver.wait_for(lambda sp: sp["kind"] == "CLIENT" and sp["resource"]["service.name"] == service)
        agent.wait_for(rf"asyncio linking on for pid {kept.proc.pid} \(Python 3", timeout=20)
        agent.wait_for(rf"no asyncio linking for pid {victim.proc.pid} .*deleted or replaced", timeout=20)
        assert agent.stop() == 0
        assert watcher.stop() == {}
        assert not marker.exists(), marker.read_text()
    finally:
        for app in apps:
            app.stop()
        shutil.rmtree(home, ignore_errors=True)
