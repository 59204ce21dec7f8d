"""What the Ansible tier's tests and fixtures share: the test fleet's variables, image and
wheel builds, playbook runs and their recaps, lynis, and the summary printed at the end."""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ANSIBLE = REPO / "ansible"
RESULTS = Path(os.environ.get("SPANPROBE_RESULTS", REPO / "results")) / "ansible"
import images  # tests/ansible/images.py
from controller import mitogen_env  # ansible/controller.py (pyproject.toml's pythonpath)
from vm import VM  # tests/ansible/vm.py

GUESTS = [g for g in os.environ.get("SPANPROBE_ANSIBLE_GUESTS", " ".join(images.GUESTS)).split()
          if g in images.GUESTS]
# lynis runs (before and after) on Debian 13, the appliance's system, only: a run takes
# 7-14 minutes under TCG, and two in parallel do not fit the test command's hour.
# SPANPROBE_LYNIS_GUESTS="debian13 debian12" measures both.
LYNIS_GUESTS = [g for g in os.environ.get("SPANPROBE_LYNIS_GUESTS", "debian13").split() if g in GUESTS]
BIN = Path(sys.executable).parent
# a fleet VM answers SSH ~60 s after start (measured, two booting at once); one that has not
# after this is booted again (VM.wait_ssh) instead of waited on for the default 15 minutes
BOOT_TIMEOUT_S = 300
# "reused": a value this run took from an earlier one (what, when, key), None if measured now
SUMMARY: dict = {"guests": {}, "times": {}, "reused": {}, "slowest tasks, first run": []}

# What the test fleet is told, on top of the roles' defaults (inventory group vars).
TEST_VARS = {
    # the guests have no route out: everything the roles install is already in the image
    "spanprobe_apt_update_cache": False,
    "hardening_apt_update_cache": False,
    "hardening_lynis_install": True,
    # the demo service on 8080; spans to the journal and to an OTLP/HTTP receiver on the
    # guest's loopback (tests/ansible/guest/otlp_http_receiver.py)
    "spanprobe_select_ports": [8080],
    "spanprobe_console": True,
    "spanprobe_otlp_endpoint": "http://127.0.0.1:4318",
    "spanprobe_otlp_protocol": "http/protobuf",
    "spanprobe_resource_attributes": {"deployment.environment.name": "ansible-test"},
    "spanprobe_routes": ["/users/{id}"],
}
# profile_tasks pads a task's name with dashes to its column; a long name gets none
SLOW_TASK = re.compile(r"^(.+?) -* ?(\d+\.\d+)s$", re.M)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


# ---------------------------------------------------------------- build helpers
def build_images(names: list[str]) -> dict[str, dict]:
    r = subprocess.run(["/usr/bin/python3", str(HERE / "images.py"), "build", *names],
                       stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0, "image build failed (see stderr above)"
    paths = r.stdout.split()
    return {n: json.loads(Path(p).read_text()) for n, p in zip(names, paths)}


def build_wheel(epoch: int, into: Path) -> Path:
    """A wheel of this checkout; a different SOURCE_DATE_EPOCH gives different bytes (the
    stand-in for a code change)."""
    into.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "--no-deps", "--no-build-isolation", "-w", str(into), str(REPO)], env=env, check=True)
    return next(into.glob("spanprobe-*.whl"))


# ---------------------------------------------------------------- playbook runs
@dataclass
class Run:
    name: str
    rc: int
    seconds: float
    log: Path
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    changed_tasks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def slowest(self, n: int = 5) -> list[str]:
        """The run's n slowest tasks as profile_tasks listed them at the end of the log."""
        _, found, recap = self.text.rpartition("TASKS RECAP")
        if not found:           # the run ended before profile_tasks wrote its list
            return []
        return [f"{m.group(2)} s {m.group(1)}" for m in SLOW_TASK.finditer(recap)][:n]


def parse_run(text: str) -> tuple[dict, dict]:
    recap = {m.group(1): dict(zip(("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"),
                                  map(int, m.groups()[1:]))) for m in RECAP.finditer(text)}
    changed: dict[str, list[str]] = {}
    task = None
    for line in text.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line[line.index("[") + 1:line.rindex("]")]
        m = re.match(r"changed: \[([^\]]+)\]", line)
        if m and task:
            changed.setdefault(m.group(1).split(" ")[0], []).append(task)
    return recap, changed


def write_inventory(path: Path, vms: dict[str, VM], host_vars: dict[str, dict]) -> Path:
    import yaml

    hosts = {n: {**vm.inventory_vars(), **host_vars.get(n, {})} for n, vm in vms.items()}
    path.write_text(yaml.safe_dump({"spanprobe": {"hosts": hosts, "vars": TEST_VARS}}, sort_keys=True))
    return path


def run_playbook(name: str, inventory: Path, *args: str, playbook: str = "site.yml") -> Run:
    log = RESULTS / f"{name}.log"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_HOME=str(RESULTS / ".ansible"),
               ANSIBLE_LOCAL_TEMP=str(RESULTS / ".ansible" / "tmp"),
               # each task's time in the log, the slowest listed at its end: where a run's minutes go
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}", **mitogen_env())
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / playbook),
                             *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ANSIBLE).returncode
    run = Run(name, rc, round(time.monotonic() - t0, 1), log)
    run.recap, run.changed_tasks = parse_run(run.text)
    SUMMARY["times"][f"{name} (s)"] = run.seconds
    return run


# ---------------------------------------------------------------- in the guests
# Lynis tests skipped in both runs, before and after: the slowest under TCG (each spawns
# hundreds of processes, 1-4 minutes apiece here) and none about what the roles change:
# CA certificate expiry dates, Debian tool binaries present, packages left to purge, IPv6
# address configuration, php.ini. (Skipping DEB-0001 saves no time: lynis 3.0.8's Debian
# plugin scans every binary, two processes each, outside the test's gate. Its log, a `date`
# forked per line, is left out: LYNIS_NO_LOG below.)
# The run after the roles stays last: started in the background alongside the checks and the
# change run it saved 40 s of 14 min (measured): it slows the change run's Debian 13 tasks,
# and the whole play waits for them; the two cores are busy either way. Only a run of lynis
# leaves a core idle, so the stock image's run, when no earlier run kept it, goes beside it
# (lynis_before); beside site.yml it cost more than it saved (measured: every play ~1.8x).
LYNIS_SKIP = ["CRYP-7902", "DEB-0001", "PKGS-7345", "NETW-2600", "PHP-2211"]
# The guests lynis audits keep two vCPUs under TCG, unlike the other test guests
# (tests.support.tcg.vcpus): lynis forks thousands of short processes, and with one vCPU its
# run after the roles took 915 s alone in a cold run of 2026-12-05 against ~620 s with two.
# The stock image's audit in the background (lynis_before.py) keeps two as well: it runs
# under SCHED_IDLE, so a vCPU spinning on a lock its preempted sibling holds burns only CPU
# nobody else wanted. At nice 10 instead (cold runs of 2026-12-05), the background guest's
# vCPU threads, preempted late by the kernel's wakeup rules, slowed the tiers beside it: the
# image tier 1,105 s against 844 with nothing beside it, the kernel tier 487 against 356.
LYNIS_SMP = "2"


# The audit runs detached in the guest, a transient systemd unit polled over short SSH
# calls, instead of inside one SSH session held for its 5-30 minutes under TCG: CI's run of
# 2026-12-05 lost that session 246 s into the audit (ssh exited 255, saying nothing, with
# the guest not frozen) and failed a tier whose audit was running fine.
LYNIS_UNIT = "spanprobe-lynis"
LYNIS_RC = "/run/spanprobe-lynis.rc"
# lynis logs ~5,000 lines a run and forks `date` for each (its LogText); under TCG that is
# more than half of the audit (fresh boots of the stock Debian 13 guest, two vCPUs,
# 2026-12-06: 917 s as packaged, 406 s without the log; both index 66, and the two report
# files the same but for their time and memory lines). Neither the index nor the report
# file reads the log (only the screen summary, which --cronjob leaves out), so the audit
# runs Debian's lynis files copied to LYNIS_COPY, LogText and LogTextBreak redefined empty
# at the end of its functions file, from that directory (--usecwd: includes, database and
# profiles from there; plugins still from /etc/lynis/plugins). /var/log/lynis.log keeps
# only lynis's first line; lynis-report.dat is written as ever.
LYNIS_COPY = "/run/spanprobe-lynis"
LYNIS_NO_LOG = "LogText() { :; }\nLogTextBreak() { :; }\n"
LYNIS_POLL_S = 15
LYNIS_TIMEOUT_S = 1800


def lynis_index(vm: VM) -> int | None:
    profile = "".join(f"skip-test={t}\n" for t in LYNIS_SKIP)
    vm.ssh("sudo tee /etc/lynis/custom.prf >/dev/null", input=profile)
    # made again with each start (a boot again after a freeze empties /run), an audit still
    # running from an earlier start stopped first
    start = (f"sudo systemctl stop {LYNIS_UNIT} 2>/dev/null; sudo systemctl reset-failed {LYNIS_UNIT} 2>/dev/null; "
             f"sudo rm -rf {LYNIS_COPY} && sudo cp -a /usr/share/lynis {LYNIS_COPY} && "
             f"sudo cp -a /etc/lynis/default.prf /etc/lynis/custom.prf {LYNIS_COPY}/ && "
             f"printf '{LYNIS_NO_LOG}' | sudo tee -a {LYNIS_COPY}/include/functions >/dev/null && "
             f"sudo rm -f /var/log/lynis-report.dat {LYNIS_RC} && sudo systemd-run --quiet --collect "
             f"--unit={LYNIS_UNIT} --working-directory={LYNIS_COPY} sh -c "
             f"'lynis audit system --cronjob --usecwd >/dev/null 2>&1; echo $? >{LYNIS_RC}'")
    vm.ssh(start)
    # after the start: a boot again that its SSH call waited for is not a reason to start again
    boots, t0 = vm.boots_again, time.monotonic()
    while True:
        time.sleep(LYNIS_POLL_S)
        try:
            r = vm.ssh(f"cat {LYNIS_RC} 2>/dev/null || true", check=False, timeout=60)
            done, lost = r.returncode == 0 and r.stdout.strip() != "", r.returncode != 0
            why = f"exit {r.returncode}: {r.stderr.strip()[-200:] or 'nothing said'}"
        except subprocess.TimeoutExpired:
            done, lost, why = False, True, "no answer in 60 s"
        if done:
            break
        if lost:    # counted and said in the tier's summary, never passed over
            drops = SUMMARY["times"].setdefault(f"{vm.name}: SSH polls of lynis lost", [])
            drops.append(f"{time.monotonic() - t0:.0f} s in: {why}")
            if vm.proc.poll() is not None and not vm._rebooting:
                raise RuntimeError(f"{vm.name}{vm._freeze_said()}: QEMU ended during lynis; "
                                   f"see {vm.console}\n{vm.console_tail()}")
        if vm.boots_again != boots:     # frozen, booted again from its disk: the audit died with it
            boots, t0 = vm.boots_again, time.monotonic()
            vm.ssh(start)
        if time.monotonic() - t0 > LYNIS_TIMEOUT_S * vm.slow:
            raise RuntimeError(f"{vm.name}: lynis had not ended after {time.monotonic() - t0:.0f} s: "
                               + vm.ssh(f"systemctl status {LYNIS_UNIT} --no-pager", check=False).stdout[-1500:])
    text = vm.ssh("sudo cat /var/log/lynis-report.dat", check=False).stdout
    m = re.search(r"^hardening_index=(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def _lynis_how() -> bytes:
    """How lynis is run: the skip list, the log's replacement and lynis_index's code, which
    holds the command."""
    return (" ".join(LYNIS_SKIP).encode() + b"\0" + LYNIS_NO_LOG.encode() + b"\0"
            + inspect.getsource(lynis_index).encode())


# the test command's run (scripts/dev.sh sets it): an index kept by this same run (the
# stock image's, audited in the background while the host tiers ran) is this run's
# measurement, not a reused one
RUN = os.environ.get("SPANPROBE_RUN", "")


def kept_index(path: Path) -> tuple[int | None, str | None] | None:
    """The index kept at `path` (whose name is the key of everything that decides it):
    (index, "date, key" an earlier run measured it, or None when this run did), or None."""
    try:
        saved = json.loads(path.read_text())
        if RUN and saved.get("run") == RUN:
            return saved["hardening_index"], None
        return saved["hardening_index"], f"{saved.get('measured', '?')}, key {path.parent.name}/{path.stem}"
    except (OSError, ValueError, KeyError):
        return None


def _measured_once(vm: VM, path: Path) -> tuple[int | None, str | None]:
    """The index kept at `path`, or measured now and kept there: (index, "date, key" it was
    reused from, or None)."""
    kept = kept_index(path)
    if kept is not None:
        return kept
    idx = lynis_index(vm)
    if idx is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hardening_index": idx, "skipped": LYNIS_SKIP, "run": RUN,
                                   "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        tmp.replace(path)
    return idx, None


def lynis_before(name: str, manifest: dict, slow: float = 1.0,
                 smp: str = LYNIS_SMP) -> tuple[int | None, str | None]:
    """The index of the stock image, before any role ran: (index, where it was reused from,
    None when this run measured it).

    It depends only on the image (its key names every input, lynis's package included) and
    on how lynis is run, so it is measured once per image and kept next to it. When no
    earlier run kept it, a throw-away boot of the stock image is audited. The test command
    starts that in the background as soon as its image is built (lynis_before.py,
    at low priority, in the CPU the VM tiers leave idle); the tier's test waits for it,
    raising its CPU priority, or audits it itself beside lynis "after" when nothing started it.
    One lock per key: one audit, whoever asks first."""
    key = hashlib.sha256(_lynis_how()).hexdigest()[:12]
    path = Path(manifest["ssh_key"]).parent / f"lynis-before-{key}.json"
    with open(path.with_suffix(".lock"), "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:     # audited in the background: now awaited, so hurried
                lock.seek(0)
                _hurry(lock.read().split())
                time.sleep(5)
        try:
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")    # whose QEMU (a child, booted again maybe) _hurry finds
            lock.flush()
            return _audit_stock(name, manifest, path, slow, smp)
        finally:
            lock.truncate(0)                # released: no pid left for a later waiter to hurry


def _audit_stock(name: str, manifest: dict, path: Path, slow: float, smp: str) -> tuple[int | None, str | None]:
    kept = kept_index(path)
    if kept is not None:
        if kept[1] is None:     # this run's own, audited in the background
            SUMMARY["times"][f"lynis before {name}: audited"] = "by this run, in the background (lynis_before.py)"
        return kept
    vm = VM(dict(manifest, name=f"{name}-stock"), RESULTS / f"{name}-stock", smp=smp)
    vm.slow = slow
    try:
        vm.start()
        vm.wait_ssh(timeout=BOOT_TIMEOUT_S * slow)
        if vm.restarts:         # said in the tier's summary
            SUMMARY["times"][f"{name}-stock first boot stopped"] = vm.restarts
        return _measured_once(vm, path)
    finally:
        vm.stop()
        if vm.starved:      # at low priority in the background: samples starved, not frozen
            SUMMARY["times"][f"{name}-stock starved samples (not frozen)"] = vm.starved


def _hurry(pids: list[str]) -> None:
    """The background audit (its process and its children: QEMU, ssh) back to normal
    priority, every thread (a policy and a nice value are per thread on Linux): the tier now
    waits for it. scripts/dev.sh starts it under SCHED_IDLE; by hand it may be niced."""
    todo = [p for p in pids if p.isdigit()]
    while todo:
        pid = todo.pop()
        for task in (Path("/proc") / pid / "task").glob("*"):
            try:
                todo += (task / "children").read_text().split()
                if os.sched_getscheduler(int(task.name)) == os.SCHED_IDLE:
                    os.sched_setscheduler(int(task.name), os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, int(task.name), 0)
            except OSError:
                pass        # gone meanwhile, or not ours to raise


# what decides the converged guest lynis audits last, besides its image: the roles and
# playbooks, the agent the wheel is built from (its Python and its kernel side, which the
# wheel carries), and this tier's code (its variables, its runs before lynis: the change
# run, the bad-variable runs)
AFTER_INPUTS = ("ansible", "agent", "bpf", "pyproject.toml", "requirements", "tests/ansible")


def inputs_digest(paths=AFTER_INPUTS) -> str:
    """The content of every file git knows or would add under `paths` (a local edit counts,
    ignored files such as __pycache__ do not)."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *paths],
                           cwd=REPO, stdout=subprocess.PIPE, check=True).stdout.split(b"\0")
    h = hashlib.sha256()
    for name in sorted(n for n in names if n):
        path = REPO / name.decode()
        if path.is_file():
            h.update(name + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def lynis_after(vm: VM, manifest: dict, inputs: str) -> tuple[int | None, str | None]:
    """The index after the roles and the tier's runs: reused only when the image, how lynis
    is run and every input of the guest's convergence (`inputs`, inputs_digest) are the
    same as when it was measured; the guests have no route out, so nothing else reaches them."""
    key = hashlib.sha256(_lynis_how() + b"\0" + inputs.encode()).hexdigest()[:12]
    return _measured_once(vm, Path(manifest["ssh_key"]).parent / f"lynis-after-{key}.json")


def agent_pid(vm: VM) -> int:
    return int(vm.ssh("systemctl show -p MainPID --value spanprobe.service").stdout.strip() or 0)


def parallel(fn, items):
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items) or 1) as ex:
        return dict(zip(items, ex.map(fn, items)))


@dataclass
class Fleet:
    vms: dict[str, VM]
    manifests: dict[str, dict]
    inventory: Path
    runs: dict[str, Run] = field(default_factory=dict)
    pids: dict[str, dict[str, int]] = field(default_factory=dict)
    wheels: dict[str, Path] = field(default_factory=dict)


