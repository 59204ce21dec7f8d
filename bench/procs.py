"""Every process the benchmark starts, and how it is measured and stopped.

All children are registered with one `Procs` so that an error, Ctrl-C or SIGTERM anywhere
still stops the agent, the apps, the receiver and the load generators (each in its own
session, so a gunicorn master and its worker go together). CPU is read from /proc (ticks,
including waited-for children) while a process runs and from wait4's rusage when it exits,
so the agent's CPU includes the final flush and export it does on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.procs import REPO, SERVERS, Agent, wait_port

CLK_TCK = os.sysconf("SC_CLK_TCK")

# bench app name -> the test tier's server kind (tests/support/procs.py SERVERS)
APP_KINDS = {"flask": "flask-gunicorn-sync", "fastapi": "fastapi-uvicorn"}
APP_LABELS = {"flask": "Flask / gunicorn (1 sync worker)", "fastapi": "FastAPI / uvicorn (1 worker)"}


class BenchError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its waited-for children, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3): utime..cstime are fields 14..17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def session_cpu_seconds(sid: int) -> float:
    """CPU time of every live process of session `sid`, each its own only: an app is one
    session (a gunicorn master and its worker, or uvicorn), and its worker is not waited
    for while it serves, so the master's children's times would miss it. BPF programs that
    run in the app's syscalls count here too. Each thread's time on the CPU in nanoseconds
    (/proc/PID/task/TID/schedstat), not utime + stime in ticks of 10 ms: a window of a few
    seconds at a third of a core is a few hundred ticks, too coarse for a change of 1%.
    A thread that ends between two readings takes its time with it (utime + stime would
    keep it): the apps measured serve from threads that live as long as they do."""
    ns = found = read = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            # fields[0] is state (field 3): session is field 6
            if int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[3]) != sid:
                continue
            tasks = os.listdir(f"/proc/{name}/task")
        except OSError:
            continue        # gone meanwhile
        found += 1
        for tid in tasks:
            try:
                ns += int(Path(f"/proc/{name}/task/{tid}/schedstat").read_text().split()[0])
                read += 1
            except (OSError, ValueError, IndexError):
                continue
    if found and not read:
        raise BenchError("no /proc/PID/task/TID/schedstat to read the app's CPU time from: "
                         "this kernel is built without CONFIG_SCHED_INFO")
    return ns / 1e9


def bpf_run_time(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs `pid` holds, from their fds'
    fdinfo: the kernel's own account of the time its programs ran, kept only while
    kernel.bpf_stats_enabled is 1 (bpf_stats)."""
    ns = runs = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key == "run_time_ns":
                ns += int(value)
            elif key == "run_cnt":
                runs += int(value)
    return ns, runs


class bpf_stats:
    """kernel.bpf_stats_enabled=1 for the block, then as it was: the kernel times every BPF
    program run (two clock reads per run) only while it is set."""
    PATH = Path("/proc/sys/kernel/bpf_stats_enabled")

    def __enter__(self):
        self.before = self.PATH.read_text().strip()
        self.PATH.write_text("1\n")
        return self

    def __exit__(self, *exc):
        self.PATH.write_text(self.before + "\n")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def tcp_sockets() -> dict[str, int]:
    """TCP sockets of this network namespace, and how many are in TIME_WAIT: the agent
    reads this table to recognise its own connections, so its size is part of a run's
    conditions (every gunicorn sync request leaves one TIME_WAIT socket for 60 s)."""
    total = time_wait = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        total += len(lines)
        time_wait += sum(1 for line in lines if line.split()[3] == "06")
    return {"total": total, "time_wait": time_wait}


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


class Procs:
    """Starts children and guarantees they are stopped (context manager)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[subprocess.Popen] = []
        self.agents: list[BenchAgent] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, name: str, cmd: list[str], cpu: int | None = None,
              env: dict[str, str] | None = None, pipes: bool = False) -> subprocess.Popen:
        """Start `cmd` (output to NAME.log; with `pipes`, stdin and stdout are pipes)."""
        log = open(self.workdir / f"{name}.log", "w")
        p = subprocess.Popen(pinned(cmd, cpu), cwd=REPO, env=env,
                             stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                             stdout=subprocess.PIPE if pipes else log,
                             stderr=log if pipes else subprocess.STDOUT, start_new_session=True)
        p.bench_name = name
        p.bench_log = self.workdir / f"{name}.log"
        self.children.append(p)
        return p

    def run(self, name: str, cmd: list[str], timeout: float, cpu: int | None = None) -> str:
        """Run to completion and return stdout; killed (and an error) after `timeout`."""
        p = subprocess.Popen(pinned(cmd, cpu), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.children.append(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise BenchError(f"{name} did not finish within {timeout:.0f}s") from None
        finally:
            if p in self.children:      # stop() took it out already after a timeout
                self.children.remove(p)
        if p.returncode != 0:
            raise BenchError(f"{name} exited {p.returncode}: {(err or out).strip()[-300:]}")
        return out

    def stop(self, p: subprocess.Popen, timeout: float = 15.0) -> int:
        """SIGTERM to the child's session, SIGKILL after `timeout`."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:   # the leader is gone; make sure nothing of its session stays behind
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.children:
            self.children.remove(p)
        return p.returncode

    def start_hooks(self, port: int, timeout: float = 120.0) -> subprocess.Popen:
        """bench/hooks.py's empty programs on the hooks the agent would take for `port`,
        once they are attached (its `ready` line, whose strategy is kept as `p.strategy`)."""
        p = self.start("hooks", [sys.executable, "-m", "bench.hooks", "--port", str(port)])
        deadline = time.monotonic() + timeout
        while "ready hooks=" not in p.bench_log.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                tail = p.bench_log.read_text().strip().splitlines()[-1:] or ["no output"]
                self.stop(p)
                raise BenchError(f"bench.hooks did not attach within {timeout:.0f} s: {tail[0]} "
                                 f"(log {p.bench_log})")
            time.sleep(0.1)
        p.strategy = re.search(r"ready hooks=\d+ strategy=(\S+)", p.bench_log.read_text()).group(1)
        return p

    def start_agent(self, args: list[str], env: dict[str, str] | None = None,
                    prefix: list[str] | None = None) -> "BenchAgent":
        agent = BenchAgent(args, self.workdir, env=env, prefix=prefix)
        self.agents.append(agent)      # registered before the wait: an interrupt still stops it
        agent.wait_ready()
        return agent

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        self.agents.clear()
        for p in reversed(list(self.children)):
            self.stop(p, timeout=10.0)


class BenchAgent(Agent):
    """The test tier's agent process (`python -m spanprobe run`), stopped with wait4 so the
    CPU it spent flushing and exporting on SIGTERM is counted too."""

    def __init__(self, args, tmp, env=None, prefix=None):
        self.rusage_cpu: float | None = None
        self.strategy: str | None = None      # the attach strategy its ready line names
        self.hot_modules: str | None = None   # compiled or source (spanprobe.native), the same
        self.killed = False
        super().__init__(args, tmp, env=env, wait_ready=False, prefix=prefix)

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            ready = self.wait_for(r" ready strategy=(\S+) .*hot_modules=(\S+)", timeout)
            self.strategy, self.hot_modules = ready.group(1), ready.group(2)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise BenchError(f"the agent did not start: {str(exc).splitlines()[0]} "
                             f"(log {self.err})") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        p = self.proc
        if p.returncode is not None:
            return p.returncode
        t0 = time.monotonic()
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.killed = p.returncode == -signal.SIGKILL
        self.stop_seconds = time.monotonic() - t0
        self.rusage_cpu = ru.ru_utime + ru.ru_stime
        return p.returncode

    def final(self) -> dict | None:
        """The `final` counters line, or None when the agent never wrote it (killed)."""
        try:
            return self.final_counters()
        except AssertionError:
            return None


def app_command(app: str, port: int, python: str, otel: bool) -> list[str]:
    """The test tier's command line for this app, run by the bench venv's interpreter;
    with `otel`, under `opentelemetry-instrument` (zero-code auto-instrumentation)."""
    cmd = [python] + [a.format(port=port) for a in SERVERS[APP_KINDS[app]]]
    if otel:
        cmd = [str(Path(python).parent / "opentelemetry-instrument")] + cmd
    return cmd


def app_env(app: str, otel_endpoint: str | None, service: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(REPO)
    env["OTEL_SERVICE_NAME"] = service or f"bench-{app}"
    if otel_endpoint:
        env.update({
            "OTEL_TRACES_EXPORTER": "otlp_proto_http",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otel_endpoint.rstrip("/") + "/v1/traces",
            # BatchSpanProcessor with the SDK's defaults (5 s delay, 2048 queue, 512 batch)
        })
    return env


def start_app(procs: Procs, app: str, port: int, python: str, cpu: int | None,
              otel_endpoint: str | None, tag: str, service: str | None = None) -> subprocess.Popen:
    """The app on `port`; `service` is its OTEL_SERVICE_NAME (default bench-APP), which the
    agent reads from its environment like the SDK would."""
    p = procs.start(f"app-{tag}", app_command(app, port, python, otel_endpoint is not None),
                    cpu=cpu, env=app_env(app, otel_endpoint, service))
    try:
        wait_port(port, p, timeout=60.0)
    except (RuntimeError, TimeoutError) as exc:
        tail = p.bench_log.read_text()[-400:] if p.bench_log.exists() else ""
        procs.stop(p)
        raise BenchError(f"{APP_LABELS[app]} did not start ({exc}): {tail.strip()}") from None
    return p


