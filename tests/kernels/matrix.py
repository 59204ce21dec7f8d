#!/usr/bin/python3
"""The kernel matrix: boot each pinned Debian kernel under QEMU (two at a time, SPANPROBE_KERNEL_GUESTS_AT_ONCE), run
tests/kernels/guest_run.py inside (check + one cell per attach strategy), add a row for
the host kernel, and write results/kernel-matrix.{md,json}.

    matrix.py                         every kernel, every strategy
    matrix.py --kernel 6.1 --mode kprobe      one cell (kernel: name, release or prefix)

Guests have no network at all (-nic none): the OTLP receiver runs inside the guest.
The repository is shared read-only (9p tag "repo"), results come back on a writable 9p
share (tag "results"); the serial console is kept as console.log for failures.
Standard library only; run as root with Debian's /usr/bin/python3 (or the dev venv).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if not __package__ and str(REPO) not in sys.path:     # run as a script: tests.support from this clone
    sys.path.insert(0, str(REPO))
from tests.support.tcg import monitor, soft_lockup_stall, vcpu_states, vcpus  # noqa: E402
MODES = ("tracepoint", "kprobe", "fentry")
CACHE = Path(os.environ.get("SPANPROBE_CACHE", "/var/cache/spanprobe")) / "kernels"
BOOT_TIMEOUT = float(os.environ.get("SPANPROBE_BOOT_TIMEOUT", "1200"))
MEMORY = os.environ.get("SPANPROBE_GUEST_MEMORY", "3072")
GUESTS_AT_ONCE = int(os.environ.get("SPANPROBE_KERNEL_GUESTS_AT_ONCE", "2"))


def newest_first(kernel: dict) -> tuple[int, ...]:
    """Sort key putting the highest kernel release first ("7.2.13+deb14-amd64" > "6.12.117+deb13")."""
    return tuple(-int(n) for n in re.findall(r"\d+", kernel["release"].split("-")[0])[:3])


def say(msg: str) -> None:
    print(f"matrix: {msg}", file=sys.stderr, flush=True)


def build() -> tuple[dict, float]:
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/python3", str(HERE / "build.py"), "build"], stdout=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"matrix: build failed (rc {p.returncode})")
    return json.loads(Path(p.stdout.strip().splitlines()[-1]).read_text()), time.monotonic() - t0


def qemu_cmd(kernel: dict, disk: str, accel: str, results: Path, append: str, console: Path,
             monitor_sock: Path, tcg_thread: str = "multi") -> list[str]:
    cpu = ["-cpu", "host"] if accel == "kvm" else ["-cpu", "max"]
    accel_opt = "kvm" if accel == "kvm" else f"tcg,thread={tcg_thread}"
    # ttyS0 the console, ttyS1 the guest's heartbeat (guest_init.sh); the human monitor on a
    # socket, for the vCPUs' registers when the heartbeat stops (frozen_vcpus)
    return ["qemu-system-x86_64", "-accel", accel_opt, *cpu, "-smp", vcpus(accel), "-m", MEMORY,
            "-nodefaults", "-no-user-config", "-display", "none",
            "-monitor", f"unix:{monitor_sock},server=on,wait=off",
            "-serial", f"file:{console}", "-serial", f"file:{results / HEARTBEAT}", "-no-reboot", "-nic", "none",
            "-kernel", kernel["vmlinuz"], "-initrd", kernel["initrd"],
            "-append", f"console=ttyS0 root=/dev/vda rw init=/usr/local/sbin/spanprobe-init panic=-1 {append}",
            # -snapshot semantics for this disk only: the cached image is never written
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on",
            "-virtfs", f"local,path={REPO},mount_tag=repo,security_model=none,readonly=on",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
            "-device", "virtio-rng-pci"]


# An int3 trap the kernel did not expect ("Oops: int3"), then the bytes around RIP: for a
# trap, RIP is just past the int3, so the byte before the one in <> is where it was.
_INT3_OOPS = re.compile(r"Oops: int3\b.*?\n(?:.*\n)*?.*?RIP: 0010:(\S+)\n(?:.*\n)*?.*?Code: ([0-9a-f ]*?)([0-9a-f]{2}) <([0-9a-f]{2})>")


def tcg_stale_int3(console_text: str) -> str | None:
    """The kernel trapped on an int3 that is not in its memory: the byte before RIP in the
    Oops's own code dump is not 0xcc. Seen here with 6.12 under multi-threaded TCG, a minute
    after the agents attached: `Oops: int3` in __schedule, the bytes there the finished
    patch (a jmp, `e9`). Code patching writes an int3 first and removes it last; a vCPU that
    executes the removed int3 runs a stale translation of the text: the emulator's fault,
    the same family as soft_lockup_stall. An int3 still in memory (`cc`) is a real one, and stays a
    failure. Returns what was seen, or None."""
    m = _INT3_OOPS.search(console_text)
    if m is None or m.group(3) == "cc":
        return None
    return (f"int3 trap at {m.group(1)} with no int3 in memory (the byte there is {m.group(3)}): "
            "a stale TCG translation of patched kernel text")


HEARTBEAT = "heartbeat.log"
# The guest writes a line to ttyS1 every 2 s from its first shell on; silence this long
# makes the vCPUs' registers looked at. A guest compiling BPF on its vCPUs under TCG still
# beats within a few seconds (CFS runs the loop); a frozen one does not beat at all.
HEARTBEAT_SILENCE_S = 12.0
REGISTER_SAMPLES, REGISTER_GAP_S = 3, 1.0
def vcpu_rips(registers: str) -> dict[str, str]:
    """{vCPU number: RIP} from `info registers -a` (halted or not: the heartbeat tells an
    idle guest from a frozen one here)."""
    return {cpu: ip for cpu, (ip, _) in vcpu_states(registers).items()}


def frozen_vcpus(samples: list[dict[str, str]]) -> str | None:
    """The vCPUs frozen by the emulator, from register samples taken while the guest's
    heartbeat was silent: every vCPU at the same RIP in every sample. A guest that loops in
    its kernel (which the agent could cause: a failure, never a retry) moves between samples;
    a guest merely slow keeps beating. Returns what was seen, or None."""
    if len(samples) < REGISTER_SAMPLES or not samples[0]:
        return None
    if any(s.keys() != samples[0].keys() for s in samples):
        return None
    still = {cpu: rip for cpu, rip in samples[0].items() if all(s[cpu] == rip for s in samples)}
    if still.keys() != samples[0].keys():
        return None
    where = ", ".join(f"CPU#{cpu} at RIP {rip}" for cpu, rip in sorted(still.items()))
    return (f"vCPUs frozen by TCG (no heartbeat for {HEARTBEAT_SILENCE_S:.0f} s; {where}, unchanged over "
            f"{len(samples)} register samples {REGISTER_GAP_S:.0f} s apart)")


def heartbeat_stall(monitor_sock: Path) -> str | None:
    """Sample the vCPUs' registers through the monitor and judge them (frozen_vcpus)."""
    samples = []
    for i in range(REGISTER_SAMPLES):
        if i:
            time.sleep(REGISTER_GAP_S)
        try:
            samples.append(vcpu_rips(monitor(monitor_sock, "info registers -a")))
        except OSError:
            return None
    return frozen_vcpus(samples)


def boot(kernel: dict, disk: str, accel: str, results: Path, append: str, timeout: float,
         marker: str | None = None, tcg_thread: str = "multi") -> tuple[int | None, float, Path, str | None]:
    """Run one guest to its poweroff (QEMU exits 0), the timeout, or a TCG stall (then it is
    stopped at once rather than at the timeout). Returns (rc, seconds, console, stall).

    A stall is seen two ways: in seconds, by the guest's heartbeat going silent while every
    vCPU stays at one address (frozen_vcpus); and as a fallback, by the kernel's own
    soft-lockup reports naming one address three times (soft_lockup_stall, ~90 s). A guest that
    panicked on a stale int3 (tcg_stale_int3) is reported the same way."""
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    console = results / "console.log"
    # a short path: a unix socket's name must fit 108 bytes, wherever the results are
    sock_dir = Path(tempfile.mkdtemp(prefix="spanprobe-qemu-"))
    monitor_sock = sock_dir / "monitor"
    cmd = qemu_cmd(kernel, disk, accel, results, append, console, monitor_sock, tcg_thread)
    (results / "qemu-cmd.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(results / "qemu.log", "w"),
                            stderr=subprocess.STDOUT)
    rc, stall, looked = None, None, t0
    beats, last_beat = 0, t0
    while time.monotonic() - t0 < timeout:
        rc = proc.poll()
        if rc is not None:
            break
        if marker and console.exists() and marker in console.read_text(errors="replace"):
            time.sleep(1)
            rc = proc.poll()
            break
        now = time.monotonic()
        size = (results / HEARTBEAT).stat().st_size if (results / HEARTBEAT).exists() else 0
        if size != beats:
            beats, last_beat = size, now
        elif accel == "tcg" and beats and now - last_beat > HEARTBEAT_SILENCE_S:
            stall = heartbeat_stall(monitor_sock) if proc.poll() is None else None
            if stall:
                break
            last_beat = time.monotonic()      # looked: not frozen; look again after another silence
        if accel == "tcg" and time.monotonic() - looked > 10 and console.exists():
            looked = time.monotonic()
            stall = soft_lockup_stall(console.read_text(errors="replace"))
            if stall:
                break
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(sock_dir, ignore_errors=True)
    if stall is None and accel == "tcg" and console.exists():
        stall = tcg_stale_int3(console.read_text(errors="replace"))      # the guest panicked on it
    return rc, time.monotonic() - t0, console, stall


def probe_accel(manifest: dict) -> tuple[str, str]:
    """KVM only if a short probe boot proves it works here (cached per host kernel + QEMU)."""
    forced = os.environ.get("SPANPROBE_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced, "forced by SPANPROBE_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no /dev/kvm"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256((os.uname().release + qemu + manifest["kernels"][0]["release"]).encode()).hexdigest()[:12]
    cached = CACHE / f"kvm-probe-{key}.json"
    # one probe at a time (the background prebuild, the stall test and matrix.py may all ask
    # at once on a cold machine): they share the probe's directory, and the later ones find
    # the first one's answer
    with open(CACHE / "kvm-probe.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists():
            d = json.loads(cached.read_text())
            return d["accel"], d["why"] + " (cached probe)"
        rc, secs, console, _ = boot(manifest["kernels"][0], manifest["disk"], "kvm", CACHE / "kvm-probe",
                                    "spanprobe.probe=1", 30, marker="SPANPROBE-PROBE-OK")
        ok = "SPANPROBE-PROBE-OK" in console.read_text(errors="replace") if console.exists() else False
        log = (CACHE / "kvm-probe" / "qemu.log").read_text(errors="replace").strip().splitlines()
        why = (f"KVM probe boot reached the guest in {secs:.0f} s" if ok else
               f"KVM probe boot failed (rc {rc}, {secs:.0f} s: {(log[-1] if log else 'no guest output')[:160]})")
        d = {"accel": "kvm" if ok else "tcg", "why": why}
        cached.write_text(json.dumps(d) + "\n")
        return d["accel"], why


def select(kernels: list[dict], want: str | None) -> list[dict]:
    if not want:
        return kernels
    hits = [k for k in kernels if want in (k["name"], k["release"], k["suite"])
            or k["release"].startswith(want + ".") or k["release"].startswith(want + "-")
            or k["release"] == want or k["name"].endswith("-" + want)]
    if not hits:
        raise SystemExit(f"matrix: no kernel matches {want!r}; have "
                         + ", ".join(f"{k['name']} ({k['release']})" for k in kernels))
    return hits


def inputs_key(manifest: dict, accel: str, modes: list[str]) -> str:
    """Everything a guest's result depends on: the image (pinned kernels, user space,
    Python packages), the accelerator, QEMU, and the code that runs inside (the agent,
    its kernel side, the guest harness, the receiver, and this runner, which decides the cells)."""
    h = hashlib.sha256()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    h.update(json.dumps([manifest["key"], accel, qemu, MEMORY, modes]).encode())
    files = sorted([*(REPO / "agent").rglob("*.py"), *(REPO / "bpf").rglob("*"), Path(__file__).resolve(),
                    HERE / "guest_init.sh", HERE / "guest_run.py", REPO / "tests/support/receiver.py",
                    REPO / "tests/support/tcg.py"])
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cached_guest(kernel: dict, key: str, outdir: Path) -> dict | None:
    """A row from an earlier run with exactly the same inputs (SPANPROBE_KERNEL_MATRIX_FRESH=1
    or --fresh boots anyway). Only rows without a failed cell are kept."""
    if os.environ.get("SPANPROBE_KERNEL_MATRIX_FRESH") == "1":
        return None
    saved = CACHE / "results" / f"{kernel['name']}-{key}"
    if not (saved / "row.json").exists():
        return None
    row = json.loads((saved / "row.json").read_text())
    if outdir.exists():
        shutil.rmtree(outdir)
    shutil.copytree(saved / "logs", outdir)
    row["reused"] = {"key": key, "measured": row.pop("measured", None)}
    row["logs"] = str(outdir)
    return row


def keep_guest(row: dict, key: str, outdir: Path) -> None:
    if any(c["status"] not in ("pass", "unsupported") for c in row["cells"].values()):
        return
    saved = CACHE / "results" / f"{row['name']}-{key}"
    if saved.exists():
        shutil.rmtree(saved)
    saved.mkdir(parents=True)
    shutil.copytree(outdir, saved / "logs")
    (saved / "row.json").write_text(json.dumps({**row, "measured": time.strftime("%FT%TZ", time.gmtime())},
                                               indent=2) + "\n")


def run_guest(kernel: dict, manifest: dict, accel: str, modes: list[str], outdir: Path) -> dict:
    say(f"boot {kernel['name']} ({kernel['release']}, {accel}) modes={','.join(modes)}")
    append = f"spanprobe.modes={','.join(modes)}"
    rc, secs, console, stall = boot(kernel, manifest["disk"], accel, outdir, append, BOOT_TIMEOUT)
    retried = None
    if stall:
        # The emulator's fault, not the guest's (see soft_lockup_stall): booted once more with every
        # vCPU on one host thread, where a code patch is seen by all vCPUs before any runs on.
        # Slower, so only as the retry; the first boot's console is kept and the row says so.
        kept = outdir.parent / f"{outdir.name}-stalled"
        if kept.exists():
            shutil.rmtree(kept)
        shutil.copytree(outdir, kept)
        say(f"{kernel['name']}: {stall} after {secs:.0f} s; booting again with tcg,thread=single "
            f"(first boot's logs: {kept})")
        retried = {"why": stall, "first_boot_s": round(secs, 1), "first_logs": str(kept),
                   "again_with": "tcg,thread=single"}
        rc, secs, console, stall = boot(kernel, manifest["disk"], accel, outdir, append, BOOT_TIMEOUT,
                                        tcg_thread="single")
    text = console.read_text(errors="replace") if console.exists() else ""
    row = {"name": kernel["name"], "suite": kernel["suite"], "release": kernel["release"],
           "accel": accel, "boot_s": round(secs, 1), "qemu_rc": rc, "logs": str(outdir)}
    if retried:
        row["retried"] = retried
    try:
        res = json.loads((outdir / "result.json").read_text())
    except (OSError, ValueError):
        res = {}
    row.update({k: res[k] for k in ("kernel", "bcc", "python", "check", "times") if k in res})
    cells = res.get("cells", {})
    why = (stall or ("guest timed out" if rc is None else "guest ended")) + " before this cell finished"
    if "SPANPROBE-GUEST-ERROR" in text:
        why = text.split("SPANPROBE-GUEST-ERROR", 1)[1].splitlines()[0].strip()
    for m in modes:
        if m not in cells:
            cells[m] = {"status": "fail", "reason": why,
                        "console_tail": "\n".join(text.strip().splitlines()[-30:])}
    row["cells"] = cells
    return row


def host_row() -> dict:
    """The machine's own kernel, from `spanprobe check --json`: what loads here is loaded
    and attached by check; traffic on it is the host integration tier's job."""
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'agent'}:{REPO}")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "spanprobe", "check", "--json"], capture_output=True,
                       text=True, env=env)
    row = {"name": "host", "suite": "-", "release": os.uname().release, "accel": "-",
           "boot_s": round(time.monotonic() - t0, 1)}
    try:
        rep = json.loads(p.stdout)
    except ValueError:
        rep = {"error": p.stderr.strip()[-300:]}
    row["bcc"] = rep.get("bcc")
    row["kernel"] = rep.get("kernel")
    chosen = rep.get("chosen") or {}
    passed = dict(chosen.get("passed_over", []))
    cells = {}
    for m in MODES:
        state = (rep.get("strategies") or {}).get(m, "unknown: " + str(rep.get("error")))
        if m == chosen.get("strategy") and chosen.get("loaded"):
            cells[m] = {"status": "pass", "note": "loaded and attached by spanprobe check; real traffic "
                        "is the host integration tier (tests/integration)", "hooks": len(chosen.get("hooks", []))}
        elif m in passed:
            cells[m] = {"status": "unsupported", "reason": passed[m].split(": ", 1)[-1]}
        elif not state.startswith("available"):
            cells[m] = {"status": "unsupported", "reason": state.removeprefix("unavailable: ")}
        else:
            cells[m] = {"status": "unsupported", "reason": "available but not loaded by check "
                        f"(auto chose {chosen.get('strategy')}); not exercised on the host"}
    row["cells"] = cells
    return row


def cell_text(c: dict | None) -> str:
    if c is None:
        return "-"
    s = c["status"]
    if s == "pass":
        extra = f"{c['spans']} spans" if "spans" in c else "check"
        if c.get("compile_s"):
            extra += f", compile {c['compile_s']}"
        loss = c.get("loss_explained")
        if loss:
            extra += (f"; {10 - min(loss['spans'], 10)} lost with {loss['kernel_prog_misses']} program runs "
                      f"the kernel skipped, counted")
        first = c.get("first_round")
        if first:
            extra += (f"; a 2nd round: the 1st lost spans ({first['spans']} of 10) to "
                      f"{first['kernel_prog_misses']} program runs the kernel skipped")
        return f"pass ({extra})"
    return f"{s}: {str(c.get('reason', ''))[:90]}"


def render(rows: list[dict], times: dict) -> str:
    out = ["# Kernel matrix", "",
           "| kernel | suite | bcc | " + " | ".join(MODES) + " | guest s |",
           "|---|---|---|" + "---|" * len(MODES) + "---|"]
    for r in rows:
        mark = f" (reused: {r['reused']['measured']}, key {r['reused']['key']})" if r.get("reused") else ""
        mark += " (booted twice: TCG stall)" if r.get("retried") else ""
        out.append(f"| {r['release']}{mark} | {r['suite']} | {r.get('bcc') or '-'} | "
                   + " | ".join(cell_text(r["cells"].get(m)) for m in MODES)
                   + f" | {r.get('boot_s', '-')} |")
    details = []
    for r in rows:
        for m in MODES:
            c = r["cells"].get(m)
            if c and c["status"] == "fail":
                details += [f"### {r['release']} / {m}: {c.get('reason')}", ""]
                bad = {k: v for k, v in c.get("checks", {}).items() if not v["ok"]}
                if bad:
                    details += ["```", json.dumps(bad, indent=1)[:3000], "```"]
                t = c.get("stderr_tail") or c.get("console_tail")
                if t:
                    details += ["```", t[-3000:], "```", ""]
    if details:
        out += ["", "## Failures", ""] + details
    stalls = [f"- {r['release']}: first boot stopped after {r['retried']['first_boot_s']} s, {r['retried']['why']}; "
              f"booted again with {r['retried']['again_with']} (first boot's logs: {r['retried']['first_logs']})"
              for r in rows if r.get("retried")]
    if stalls:
        out += ["", "## Guests booted twice (an emulator stall, not a result)", ""] + stalls
    out += ["", "## Where the time went", ""]
    out += [f"- {k}: {v} s" for k, v in times.items()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="matrix.py")
    ap.add_argument("--kernel", help="one kernel: name (sid-7.2), release, suite or version prefix (6.1)")
    ap.add_argument("--mode", help="one strategy (or several, comma-separated)")
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--fresh", action="store_true", help="boot every guest, even when a passing "
                    "result with the same inputs is cached")
    ap.add_argument("--probe", action="store_true", help="only build the guests' disk and find the "
                    "accelerator (cached): the test command's background prebuild")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("matrix: run as root (QEMU guests, bcc on the host)")
    if a.probe:
        manifest, _ = build()
        say("accelerator %s: %s" % probe_accel(manifest))
        return 0
    t0 = time.monotonic()
    times: dict = {}
    manifest, secs = build()
    times["build (cached)" if secs < 30 else "build"] = round(secs, 1)
    times.update({f"  {k}": v for k, v in manifest.get("build_times", {}).items()} if secs >= 30 else {})
    accel, why = probe_accel(manifest)
    say(f"accelerator {accel}: {why}")
    times["accelerator probe"] = f"{accel} ({why})"
    modes = a.mode.split(",") if a.mode else list(MODES)
    if not set(modes) <= set(MODES):
        raise SystemExit(f"matrix: --mode must be among {', '.join(MODES)}")
    outroot = a.results / "kernel-matrix"
    key = inputs_key(manifest, accel, modes)
    chosen = select(manifest["kernels"], a.kernel)
    rows_by: dict[str, dict] = {}
    for k in chosen:
        row = None if a.fresh else cached_guest(k, key, outroot / k["name"])
        if row is not None:
            say(f"{k['name']}: inputs unchanged since a passing run, result reused (--fresh boots anyway)")
            rows_by[k["name"]] = row

    def fresh(k: dict) -> dict:
        row = run_guest(k, manifest, accel, modes, outroot / k["name"])
        keep_guest(row, key, outroot / k["name"])
        return row

    # GUESTS_AT_ONCE guests at a time: one guest keeps about one of the two cores busy
    # (bcc's compile is single-threaded), so two overlap their idle and their compiles.
    # The longest first (the newest kernel: bcc parses more headers, measured 356 s for 7.2
    # against 144 s for 5.10), so the shortest fill in at the end instead of one long guest
    # running alone: with the file's order the pairs ended ~50 s apart.
    todo = sorted((k for k in chosen if k["name"] not in rows_by), key=newest_first)
    if len(todo) > 1:
        say(f"{len(todo)} guests to boot, {GUESTS_AT_ONCE} at a time")
    with concurrent.futures.ThreadPoolExecutor(max_workers=GUESTS_AT_ONCE) as pool:
        for k, row in zip(todo, pool.map(fresh, todo)):
            rows_by[k["name"]] = row
    rows = [rows_by[k["name"]] for k in chosen]
    for k, row in zip(chosen, rows):
        gt = row.get("times", {})
        cells = row["cells"]
        times[f"guest {k['name']}" + (" (reused result)" if row.get("reused") else "")] = (
            f"{row['boot_s']} (check {gt.get('check_s')}, first agents started {gt.get('start_s')}, then "
            + ", ".join(f"{m} {cells[m].get('exercise_s', '-')}" for m in modes)
            + "; compile " + ", ".join(f"{m} {cells[m].get('compile_s', '-')}" for m in modes) + ")")
        say(f"{k['name']}: " + "; ".join(f"{m} {cell_text(row['cells'].get(m))}" for m in modes))
    if not a.kernel:
        t = time.monotonic()
        rows.append(host_row())
        times["host check"] = round(time.monotonic() - t, 1)
    times["total"] = round(time.monotonic() - t0, 1)
    doc = {"generated": time.strftime("%F %T"), "accel": accel, "accel_why": why,
           "build_key": manifest["key"], "guests_at_once": GUESTS_AT_ONCE, "rows": rows, "times": times}
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "kernel-matrix.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = render(rows, times)
    (a.results / "kernel-matrix.md").write_text(md)
    print(md)
    bad = [(r["release"], m) for r in rows for m, c in r["cells"].items()
           if c["status"] not in ("pass", "unsupported")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
