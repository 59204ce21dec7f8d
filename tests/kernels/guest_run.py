"""Inside a kernel-matrix guest: `spanprobe check --json`, then one cell per attach
strategy: a receiver (OTLP/HTTP on 127.0.0.1), two demo services and a server waiting in
a blocking accept() while the agent starts, the agent with --attach-mode MODE, real
traffic, SIGTERM, and checks on what arrived and what was left attached. Writes one JSON document (rewritten after every step, so a guest that dies
half-way still leaves what it had).

Run by guest_init.sh with the guest's python3, PYTHONPATH=/repo/agent:/repo:<site dir>.
Also runs on any root machine with bcc, which is how it is debugged:
    python3 tests/kernels/guest_run.py --out /tmp/r.json --modes tracepoint
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODES = ("tracepoint", "kprobe", "fentry")
PY = sys.executable
SLOW = float(os.environ.get("SPANPROBE_GUEST_SLOW", "1"))   # timeouts scale (TCG is slow)
OUR_PROGS = ("sp_", "kfunc__", "kretfunc__", "tracepoint__")


def say(msg: str) -> None:
    print(f"guest_run: {msg}", flush=True)


def tail(text: str, n: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


# ---------------------------------------------------------------- what is attached
def our_programs(ignore: dict | None = None) -> dict[int, str]:
    """BPF programs named like ours (bpftool prog show), by id; `ignore` holds ids that
    were there before the cell (another agent on a shared debugging host)."""
    try:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
        progs = json.loads(out.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return {-1: f"<bpftool failed: {exc}>"}
    return {p["id"]: p.get("name", "") for p in progs
            if p.get("name", "").startswith(OUR_PROGS) and p["id"] not in (ignore or {})}


def owned_programs(pid: int) -> dict[int, str]:
    """Programs held by process `pid`: the prog_id of each BPF program fd it holds
    (/proc/PID/fdinfo), plus bpftool's pid iterator where it has one; empty when neither
    can tell."""
    ids: set[int] = set()
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) != "anon_inode:bpf-prog":
                    continue
                m = re.search(r"^prog_id:\s*(\d+)", (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text(), re.M)
            except OSError:
                continue
            if m:
                ids.add(int(m.group(1)))
    except OSError:
        pass
    try:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
        progs = json.loads(out.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    return {p["id"]: p.get("name", "") for p in progs
            if p["id"] in ids or any(o.get("pid") == pid for o in p.get("pids", []))}


def probe_events() -> dict[str, list[str]]:
    out = {}
    for name in ("kprobe_events", "uprobe_events"):
        for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            p = Path(base) / name
            if p.exists():
                out[name] = [ln for ln in p.read_text().splitlines() if ln.strip()]
                break
    return out


# ---------------------------------------------------------------- spanprobe check
def run_check(load: bool) -> dict:
    """`spanprobe check --json`. Without --load-check it runs with --no-load: every
    available strategy is compiled, loaded and attached by its own cell anyway, and under
    TCG each compile costs ~50 s."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([PY, "-m", "spanprobe", "check", "--json", *([] if load else ["--no-load"])],
                           capture_output=True, text=True, timeout=600 * SLOW)
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "error": "spanprobe check timed out", "stderr": tail(exc.stderr or "")}
    out = {"rc": p.returncode, "seconds": round(time.monotonic() - t0, 1)}
    try:
        out["report"] = json.loads(p.stdout)
    except ValueError:
        out["error"] = "check printed no JSON"
    if p.returncode != 0 or "error" in out:
        out["stderr"] = tail(p.stderr)
    return out


# ---------------------------------------------------------------- one cell
class Cell:
    def __init__(self, mode: str, workdir: Path):
        self.mode = mode
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.res: dict = {"mode": mode, "checks": {}}
        self.owned: set[int] = set()
        self.agent = None
        self.alone = True      # False while other cells' agents run beside this one
        self.round_misses = 0  # program runs the kernel skipped, warned of in the last round
        self.kept: list[dict] = []  # spans of the unseen accept from a first round (exercise)

    def check(self, name: str, ok: bool, detail=None) -> bool:
        self.res["checks"][name] = {"ok": bool(ok), **({"detail": detail} if detail is not None else {})}
        return ok

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        f = open(self.dir / f"{self.mode}-{name}.log", "w")
        p = subprocess.Popen([PY, *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{self.mode}-{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    # Three phases, so that the cells of one guest can start together: Python imports and
    # the bcc compile (~50 s each under TCG) overlap (on one vCPU under TCG, two with KVM:
    # tests.support.tcg.vcpus), while the traffic, the stop and the checks run one cell at
    # a time.
    def start(self) -> None:
        from tests.support.receiver import Receiver

        self.t0 = time.monotonic()
        self.agent = None
        self.before = our_programs()
        self.res["programs_before"] = len(self.before)   # another agent's, on a shared host
        self.rcv = Receiver()
        try:
            endpoint = self.rcv.start_http()
            self.down, self.front, self.blocking = free_port(), free_port(), free_port()
            self.spawn("downstream", ["-m", "spanprobe.demo_app", "serve", "--port", str(self.down)])
            self.spawn("front", ["-m", "spanprobe.demo_app", "serve", "--port", str(self.front),
                                 "--downstream", f"http://127.0.0.1:{self.down}"])
            # in accept() before the agent attaches (tests/integration/test_unseen_accept.py)
            self.spawn("blocking", ["-m", "tests.apps.blocking_accept_app", str(self.blocking)])
            if not (wait_port(self.down, 120 * SLOW) and wait_port(self.front, 120 * SLOW)
                    and wait_port(self.blocking, 120 * SLOW)):
                self.res["status"] = "fail"
                self.res["reason"] = "demo services did not start"
                return
            self.agent = self.spawn("agent", ["-m", "spanprobe", "run", "--port", str(self.front),
                                              "--port", str(self.down), "--port", str(self.blocking),
                                              "--attach-mode", self.mode,
                                              "--otlp-protocol", "http/protobuf", "--otlp-endpoint", endpoint,
                                              "--log-level", "debug"])   # bcc/verifier output on failure
        except Exception as exc:   # noqa: BLE001
            self.harness_error(exc)

    def await_ready(self, deadline: float) -> None:
        if self.agent is None:
            return
        ready = self.wait_ready(self.agent, deadline - time.monotonic())
        self.res["ready_s"] = round(time.monotonic() - self.t0, 1)
        if not ready:
            self.res["status"] = "fail"
            self.res["reason"] = ("agent exited before ready" if self.agent.poll() is not None
                                  else "agent not ready in time")
            self.stop(self.agent)
            self.res["stderr_tail"] = tail(self.log("agent"))
            return
        self.res["strategy"] = ready.get("strategy")
        self.res["transport"] = ready.get("transport")
        self.res["compile_s"] = ready.get("compile")
        self.res["hooks"] = ready.get("hooks", "").split(",")
        # the guests are x86-64: a ring buffer is read in place there (ringbuf.py)
        self.res["reader"] = ready.get("reader")
        if ready.get("transport") == "ringbuf":
            self.check("ring_buffer_mapped", ready.get("reader") == "mapped", ready.get("reader"))
        mine = owned_programs(self.agent.pid)
        self.owned = set(mine)
        self.res["while_attached"] = {"programs": len(mine) if mine else None, **probe_events()}

    def exercise(self) -> dict:
        try:
            if "status" not in self.res:
                t = time.monotonic()
                self.res["quiet_wait_s"] = self.quiet_kernel()
                mark = len(self.log("agent"))
                sent = self.traffic(self.front)
                self.res["requests"] = sent["count"]
                self.res["unseen_accept"] = self.keep_alive(self.blocking)
                got = self.collect(self.rcv, sent)
                since = None
                skipped = self.misses_since(mark)
                if len(got) < self.expected_spans() and skipped:
                    # The kernel skipped runs of the agent's programs (counted, and said in the
                    # agent's warnings): on sid's 7.2 a bpf(2) call preempted on a CPU, such as
                    # the guest's other agents make, skips the programs run there meanwhile. The events
                    # those runs carried are lost with their spans, as the agent reports. One
                    # more round shows that everything else holds; both are in the result.
                    self.res["first_round"] = {"spans": len(got), "kernel_prog_misses": skipped,
                                               "collect_note": self.res.pop("collect_note", None)}
                    # the unseen accept's spans stay (its case cannot be made again: the
                    # app is back in an accept() the kernel side sees enter)
                    self.kept = [s for s in self.rcv.spans if self.of_blocking(s)]
                    self.rcv.clear()
                    since = time.time_ns() - 1_000_000_000   # round 1's spans ended a minute before
                    mark = len(self.log("agent"))
                    sent = self.traffic(self.front)
                    self.res["requests"] += sent["count"]
                    self.collect(self.rcv, sent)
                self.res["stop_s"] = self.stop(self.agent)
                self.round_misses = self.misses_since(mark)
                final = self.final_counters()
                self.res["counters"] = final
                time.sleep(0.5)
                spans = self.rcv.settle(1.0)
                if since is not None:
                    spans = [s for s in spans if s["start"] >= since]
                self.verify(spans, sent, self.front, self.down, final)
                self.res["exercise_s"] = round(time.monotonic() - t, 1)
        except Exception as exc:   # a harness error is a failed cell with its reason, not a lost guest
            self.harness_error(exc)
        finally:
            for p in self.procs:
                self.stop(p)
            self.rcv.stop()
            self.res["seconds"] = round(time.monotonic() - self.t0, 1)
        return self.res

    def misses_since(self, mark: int) -> int:
        """Program runs the kernel skipped, as the agent warned of them after log offset `mark`."""
        return sum(int(n) for n in re.findall(r"kernel_prog_misses=\+(\d+)", self.log("agent")[mark:]))

    def quiet_kernel(self, quiet: float = 12.0, limit: float = 60.0) -> float:
        """Wait (at most `limit` s) until the agent has warned of no skipped program runs for
        `quiet` s (it warns at most every 10 s): they come in bursts while other agents of
        the guest load and attach, and each may cost a span of the traffic. The wait is in
        the result."""
        t0 = last = time.monotonic()
        seen = self.log("agent").count("kernel_prog_misses=+")
        while time.monotonic() - last < quiet and time.monotonic() - t0 < limit:
            time.sleep(1.0)
            now = self.log("agent").count("kernel_prog_misses=+")
            if now != seen:
                seen, last = now, time.monotonic()
        return round(time.monotonic() - t0, 1)

    def harness_error(self, exc: BaseException) -> None:
        import traceback
        self.res["status"] = "fail"
        self.res["reason"] = f"harness error: {exc}"
        self.res["traceback"] = tail(traceback.format_exc(), 20)

    def leftover(self) -> dict:
        """What this agent left attached: its own programs (bpftool names their owner pid)
        and tracefs probe events named after it (bcc_<pid>); where bpftool cannot name
        owners, every program like ours that was not there before."""
        pid = self.agent.pid if self.agent else -1
        now = our_programs(self.before)
        if not self.owned and not self.alone:
            # other agents are still running and nothing says which programs are whose:
            # main() looks once more when every agent has stopped
            progs = []
        else:
            progs = sorted(now[i] for i in now if i in self.owned) if self.owned else sorted(now.values())
        events = {k: [e for e in v if f"bcc_{pid}" in e or (self.alone and not self.owned)]
                  for k, v in probe_events().items()}
        return {"programs": progs, **events}

    def wait_ready(self, agent, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r" ready (strategy=.*)", self.log("agent"))
            if m:
                return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
            if agent.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    def stop(self, p: subprocess.Popen) -> float | None:
        if p.poll() is not None:
            return None
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30 * SLOW)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        return round(time.monotonic() - t, 2)

    def traffic(self, front: int) -> dict:
        """Real requests over loopback: one with an incoming traceparent, /checkout calls
        the downstream service, a POST, a 404; each on its own connection."""
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        plan = [("GET", "/users/42", {"traceparent": f"00-{trace_id}-{parent_id}-01"}, None),
                ("GET", "/checkout", {}, None),
                ("POST", "/orders", {"Content-Type": "application/json"}, b'{"item": 1}'),
                ("GET", "/missing", {}, None),
                ("GET", "/checkout", {}, None),
                ("GET", "/users/7", {}, None)]
        statuses = []
        for method, path, headers, body in plan:
            c = http.client.HTTPConnection("127.0.0.1", front, timeout=30 * SLOW)
            try:
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                r.read()
                statuses.append((method, path, r.status))
            finally:
                c.close()
        return {"count": len(plan), "statuses": statuses, "trace_id": trace_id, "parent_id": parent_id}

    def keep_alive(self, port: int) -> dict:
        """Two requests on one connection to the server that was in accept() when the agent
        attached: the kernel side never saw that accept() enter."""
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30 * SLOW)
        try:
            c.connect()
            client_port = c.sock.getsockname()[1]
            statuses = []
            for i in range(2):
                c.request("GET", f"/unseen/{i}")
                r = c.getresponse()
                r.read()
                statuses.append(r.status)
            if self.mode == "tracepoint":    # open until its spans are in: the agent reads
                try:                          # its ends from /proc when it takes the open
                    self.rcv.wait_for(lambda s: s["attributes"].get("server.port") == port, count=2,
                                      timeout=60 * SLOW)
                except AssertionError:
                    pass                      # judged in verify()
        finally:
            c.close()
        return {"client_port": client_port, "statuses": statuses}

    def expected_spans(self) -> int:
        """6 front SERVER spans + 2 CLIENT + 2 downstream SERVER (+ 2 of the server that was
        in accept(), with tracepoints: see keep_alive)."""
        return 10 + 2 * (self.mode == "tracepoint")

    def of_blocking(self, s: dict) -> bool:
        return s["kind"] == "SERVER" and s["attributes"].get("server.port") == self.blocking

    def collect(self, rcv, sent) -> list[dict]:
        try:
            return rcv.wait_for(lambda s: True, count=self.expected_spans(), timeout=60 * SLOW)
        except AssertionError as exc:
            self.res["collect_note"] = str(exc)[:500]
            return list(rcv.spans)

    def final_counters(self) -> dict:
        m = re.findall(r" final (\{.*\})", self.log("agent"))
        try:
            return json.loads(m[-1]) if m else {}
        except ValueError:
            return {}

    def verify(self, spans: list[dict], sent: dict, front: int, down: int, final: dict) -> None:
        self.res["spans"] = len(spans)
        err = self.log("agent")
        self.check("statuses", [s for _, _, s in sent["statuses"]] == [200, 200, 201, 404, 200, 200],
                   sent["statuses"])
        self.check("events_received", final.get("events_received", 0) > 0,
                   {k: final.get(k) for k in ("events_received", "kernel_events_lost", "perf_events_lost",
                                              "decode_errors", "kernel_read_faults", "kernel_prog_misses",
                                              *sorted(k for k in final if k.startswith("kernel_prog_misses_")))})
        # kernel_prog_misses stays in the detail above, not here: a skipped run is often of no
        # consequence (another process's fork), and the spans checks below catch one that was
        lost = (final.get("kernel_events_lost", 0) or 0) + (final.get("perf_events_lost", 0) or 0)
        self.check("no_events_lost", lost == 0, lost)
        self.check("spans_exported", final.get("spans_exported", 0) >= 10 and len(spans) >= 10,
                   {"exported": final.get("spans_exported"), "received": len(spans)})
        fronts = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("server.port") == front]
        downs = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("server.port") == down]
        clients = [s for s in spans if s["kind"] == "CLIENT"]
        self.res["span_counts"] = {"front_server": len(fronts), "downstream_server": len(downs),
                                   "client": len(clients)}
        want = {("GET", 200, "/users/{id}"), ("GET", 200, "/checkout"), ("POST", 201, "/orders"),
                ("GET", 404, "/missing")}
        got = {(s["attributes"].get("http.request.method"), s["attributes"].get("http.response.status_code"),
                s["attributes"].get("http.route")) for s in fronts}
        self.check("attributes", want <= got and len(fronts) == 6,
                   {"missing": sorted(map(str, want - got)), "front_server_spans": len(fronts)})
        tp = [s for s in fronts if s["trace_id"] == sent["trace_id"]]
        self.check("traceparent_honoured", len(tp) == 1 and tp[0]["parent_span_id"] == sent["parent_id"],
                   [(s["name"], s["parent_span_id"]) for s in tp])
        links = []
        for srv in [s for s in fronts if s["attributes"].get("http.route") == "/checkout"]:
            kids = [c for c in clients if c["parent_span_id"] == srv["span_id"] and c["trace_id"] == srv["trace_id"]]
            grand = [d for k in kids for d in downs
                     if d["parent_span_id"] == k["span_id"] and d["trace_id"] == srv["trace_id"]]
            links.append((len(kids), len(grand)))
        self.check("client_child_of_server", len(links) == 2 and all(k == 1 for k, _ in links), links)
        # A connection whose accept() entered before the agent attached: traced from the
        # syscall's exit tracepoint, both ends read from /proc. A kretprobe or an fexit
        # program fires only for calls that entered after it was attached: not traced there.
        ua = self.res.get("unseen_accept") or {}
        unseen = self.kept + [s for s in spans if self.of_blocking(s)]
        seen = {"spans": len(unseen), "accepts_unseen": final.get("accepts_unseen"),
                "client_ports": sorted({s["attributes"].get("client.port") for s in unseen}, key=str),
                "statuses": ua.get("statuses")}
        if self.mode == "tracepoint":
            ok = (len(unseen) == 2 and seen["client_ports"] == [ua.get("client_port")]
                  and final.get("accepts_unseen") == 1)
        else:
            ok = not unseen
        self.check("unseen_accept", ok and ua.get("statuses") == [200, 200], seen)
        self.check("downstream_child_of_client", len(links) == 2 and all(g == 1 for _, g in links), links)
        bad = [(s["name"], s["start"], s["end"]) for s in spans
               if not (s["end"] > s["start"] and s["end"] - s["start"] < 5_000_000_000)]
        self.check("timing", not bad and bool(spans), bad[:5])
        now = time.time_ns()
        far = [s["name"] for s in spans if abs(s["start"] - now) > 600 * 1_000_000_000]
        self.check("wall_clock", not far, far[:5])
        verifier = [ln for ln in err.splitlines()
                    if re.search(r"verifier|invalid (mem|indirect|access)|permission denied|error:", ln, re.I)]
        self.check("no_verifier_failure", not verifier, verifier[:5] or None)
        self.check("stopped_in_time", self.res.get("stop_s") is not None and "stopped: every probe detached" in err,
                   self.res.get("stop_s"))
        left = self.leftover()
        self.res["leftover"] = left
        self.check("nothing_left_attached", not any(left.values()), left)
        failed = [k for k, v in self.res["checks"].items() if not v["ok"]]
        # Spans lost with program runs the kernel skipped (counted by the agent during this
        # round) are the kernel's loss, reported as the agent must; it holds only if every
        # failed check is one such a loss explains, and no span arrived wrong: no more front
        # spans than requests, no server with two calls or a call with two downstream spans.
        explains = {"spans_exported", "attributes", "traceparent_honoured", "client_child_of_server",
                    "downstream_child_of_client"}
        misses = self.round_misses
        if (failed and set(failed) <= explains and misses > 0 and len(fronts) <= 6
                and all(k <= 1 and g <= 1 for k, g in links) and len(tp) <= 1
                and all(s["parent_span_id"] == sent["parent_id"] for s in tp)):
            self.res["loss_explained"] = {"checks": failed, "kernel_prog_misses": misses, "spans": len(spans)}
            failed = []
        self.res["status"] = "fail" if failed else "pass"
        if failed:
            self.res["reason"] = "failed checks: " + ", ".join(failed)
            self.res["stderr_tail"] = tail(err)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--load-check", action="store_true", help="let check compile and load too")
    a = ap.parse_args(argv)
    sys.path[:0] = [str(REPO / "agent"), str(REPO)]
    work = a.out.parent
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result: dict = {"kernel": os.uname().release, "python": sys.version.split()[0], "cells": {},
                    "times": {}}

    def save():
        result["times"]["total_s"] = round(time.monotonic() - t0, 1)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(a.out)

    try:
        from bcc.version import __version__ as bcc_version
        result["bcc"] = bcc_version
    except Exception as exc:   # noqa: BLE001
        result["bcc"] = f"not importable: {exc}"
    say(f"kernel {result['kernel']}, bcc {result['bcc']}: spanprobe check --json")
    check = run_check(a.load_check)
    result["check"] = check
    result["times"]["check_s"] = check.get("seconds")
    save()
    strategies = (check.get("report") or {}).get("strategies", {})
    say(f"check rc={check.get('rc')} in {check.get('seconds')} s: {strategies}")
    cells = {}
    for mode in [m for m in a.modes.split(",") if m]:
        state = strategies.get(mode)
        if state is None:
            result["cells"][mode] = {"status": "fail", "reason": "spanprobe check gave no verdict: "
                                     + (check.get("error") or tail(check.get("stderr", ""), 5))}
        elif not state.startswith("available"):
            result["cells"][mode] = {"status": "unsupported", "reason": state.removeprefix("unavailable: ")}
        else:
            cells[mode] = Cell(mode, work)
    t = time.monotonic()
    before_all = our_programs()
    # kprobe and tracepoint programs share the kernel's per-CPU guard for perf-event
    # programs: while one run holds it, every other such run on that CPU is skipped
    # (kernel_prog_misses). On sid's 7.2 the tracepoint cell lost spans that way with the
    # kprobe agent attached (three cold CI runs of 2026-12-06, a second round included), so
    # the kprobe agent starts only once the tracepoint cell is done and its agent gone:
    # neither cell's traffic runs beside the other's programs. fentry programs each have a
    # guard of their own: that agent starts with the first.
    deferred = ["kprobe"] if "kprobe" in cells and "tracepoint" in cells else []
    first = [m for m in cells if m not in deferred]
    say(f"starting {', '.join(first)} together" + (f"; {', '.join(deferred)} after tracepoint" if deferred else ""))
    for mode in first:
        cells[mode].start()
    deadline = time.monotonic() + 900 * SLOW
    for mode in first:
        cell = cells[mode]
        cell.await_ready(deadline)
        say(f"cell {mode}: ready after {cell.res.get('ready_s')} s (compile {cell.res.get('compile_s')})")
    result["times"]["start_s"] = round(time.monotonic() - t, 1)
    order = first + deferred
    for i, mode in enumerate(order):
        cell = cells[mode]
        if mode in deferred:
            say(f"starting {mode} (the tracepoint agent has stopped)")
            cell.start()
            cell.await_ready(time.monotonic() + 900 * SLOW)
            say(f"cell {mode}: ready after {cell.res.get('ready_s')} s (compile {cell.res.get('compile_s')})")
        cell.alone = i == len(order) - 1
        result["cells"][mode] = cell.exercise()
        save()
    # a last look once every agent is gone: nothing of ours may be left at all
    left = {"programs": sorted(our_programs(before_all).values()), **probe_events()}
    result["leftover_at_end"] = left
    for mode, cell in cells.items():
        if any(left.values()) and cell.res.get("status") == "pass":
            cell.res["status"] = "fail"
            cell.res["reason"] = f"left attached after every agent stopped: {left}"
    for mode in result["cells"]:
        c = result["cells"][mode]
        result["times"][f"{mode}_s"] = c.get("seconds")
        say(f"cell {mode}: {c['status']} {c.get('reason', '')}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
