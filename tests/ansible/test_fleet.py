"""site.yml on a Debian 13 and a Debian 12 VM: applied, idempotent, and what it promises
checked over SSH with testinfra (fixtures and VM handling: conftest.py)."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time

import pytest

from fleet_helpers import (HERE, LYNIS_GUESTS, RESULTS, SUMMARY, agent_pid, build_wheel, inputs_digest, lynis_after,
                           lynis_before, parallel, run_playbook, write_inventory)

pytestmark = pytest.mark.timeout(5400)

CAPS = ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
CAP_BITS = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_PERFMON": 38, "CAP_BPF": 39}
VENV = "/opt/spanprobe/venv"
LYNIS_TARGET = 80


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


# ---------------------------------------------------------------- the playbook
def test_site_applies_on_every_guest(fleet):
    run = fleet.runs["first"]
    assert run.rc == 0, f"site.yml failed (log {run.log}):\n{_tail(run.text)}"
    for name in fleet.vms:
        r = run.recap[name]
        assert r["failed"] == 0 and r["unreachable"] == 0, r
        assert r["changed"] > 0


def test_second_run_changes_nothing_and_restarts_nothing(fleet):
    run = fleet.runs["second"]
    assert run.rc == 0, f"second run failed (log {run.log}):\n{_tail(run.text)}"
    for name in fleet.vms:
        assert run.recap[name]["changed"] == 0, \
            f"{name}: not idempotent, changed: {run.changed_tasks.get(name)} (log {run.log})"
    assert fleet.pids["after_first"] == fleet.pids["after_second"]
    assert all(fleet.pids["after_second"].values())


# ---------------------------------------------------------------- the agent
def test_agent_is_active_and_reported_ready(guest):
    name, vm, host = guest
    svc = host.service("spanprobe")
    assert svc.is_running and svc.is_enabled
    assert host.check_output("systemctl show -p Type --value spanprobe") == "notify"
    status = host.check_output("systemctl show -p StatusText --value spanprobe")
    assert status.startswith("tracing with "), status
    journal = host.check_output("journalctl -u spanprobe -b --no-pager -o cat")
    m = re.search(r"ready strategy=(\S+) transport=(\S+)", journal)
    assert m, _tail(journal)
    SUMMARY["guests"].setdefault(name, {})["strategy"] = f"{m.group(1)}+{m.group(2)}"
    assert "WARNING" not in host.check_output("journalctl -u spanprobe -b --no-pager -o cat -p warning || true")


def test_agent_runs_unprivileged_with_only_its_capabilities(guest):
    name, vm, host = guest
    pid = host.check_output("systemctl show -p MainPID --value spanprobe")
    status = host.check_output(f"cat /proc/{pid}/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = int(fields["Uid"].split()[1])
    assert host.user("spanprobe").uid == uid != 0
    assert host.user("spanprobe").shell == "/usr/sbin/nologin"
    want = sum(1 << CAP_BITS[c] for c in CAPS)
    assert int(fields["CapEff"], 16) == want, f"CapEff {fields['CapEff'].strip()}"
    assert int(fields["CapBnd"], 16) == want, f"CapBnd {fields['CapBnd'].strip()}"
    assert fields["NoNewPrivs"].strip() == "1"


def test_request_to_demo_service_gives_spans_in_journal_and_over_otlp(guest):
    name, vm, host = guest
    vm.put(HERE / "guest" / "otlp_http_receiver.py", "/tmp/otlp_http_receiver.py")
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.run("systemctl stop otlp-receiver demo-shop 2>/dev/null; rm -f /run/otlp-spans.jsonl")
    # the receiver on the guest's loopback, then the demo service as another user (the
    # agent reads its /proc/<pid>/environ for the service name: CAP_SYS_PTRACE at work)
    host.check_output(f"systemd-run --unit=otlp-receiver --collect {VENV}/bin/python "
                      "/tmp/otlp_http_receiver.py 4318 /run/otlp-spans.jsonl")
    host.check_output(f"systemd-run --unit=demo-shop --collect -p User=nobody "
                      f"--setenv=OTEL_SERVICE_NAME=demo-shop {VENV}/bin/python -m spanprobe.demo_app "
                      "serve --port 8080")
    client = ("import time, urllib.request\n"
              "for _ in range(120):\n"
              "    try:\n"
              "        urllib.request.urlopen('http://127.0.0.1:8080/users/1', timeout=5).read(); break\n"
              "    except OSError: time.sleep(0.5)\n"
              "for i in range(2, 7):\n"
              "    urllib.request.urlopen(f'http://127.0.0.1:8080/users/{i}', timeout=5).read()\n")
    vm.ssh(f"python3 -c {shlex.quote(client)}", timeout=180)
    journal = spans = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        journal = host.run(f"journalctl -u spanprobe --since '{since}' --no-pager -o cat").stdout
        spans = host.run("cat /run/otlp-spans.jsonl 2>/dev/null").stdout
        if journal.count("GET /users/{id}") >= 5 and spans.count('"GET /users/{id}"') >= 5:
            break
        time.sleep(2)
    host.run("systemctl stop otlp-receiver demo-shop")
    lines = [ln for ln in journal.splitlines() if ln.startswith("span SERVER") and "GET /users/{id}" in ln]
    assert len(lines) >= 5, f"console spans in the journal:\n{_tail(journal)}"
    assert all(" demo-shop: " in ln and "-> 200" in ln for ln in lines), lines
    got = [json.loads(ln) for ln in spans.splitlines() if ln.strip()]
    server = [s for s in got if s["name"] == "GET /users/{id}" and s["kind"] == "SERVER"]
    assert len(server) >= 5, f"OTLP spans received: {[s['name'] for s in got]}"
    s = server[-1]
    assert s["resource"]["service.name"] == "demo-shop"
    assert s["resource"]["deployment.environment.name"] == "ansible-test"
    assert s["attributes"]["http.response.status_code"] == 200
    assert s["attributes"]["server.port"] == 8080


@pytest.mark.parametrize("cap", CAPS)
def test_without_any_one_capability_the_agent_fails_clearly(guest, cap):
    name, vm, host = guest
    keep = " ".join(c for c in CAPS if c != cap)
    r = vm.ssh("sudo systemd-run --quiet --wait --pipe --collect -p User=spanprobe -p Group=spanprobe "
               f"-p NoNewPrivileges=yes -p 'CapabilityBoundingSet={keep}' -p 'AmbientCapabilities={keep}' "
               f"{VENV}/bin/spanprobe run --config /etc/spanprobe/config.yaml --duration 1", check=False,
               timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 5, f"rc {r.returncode}: {err}"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"spanprobe: missing capability {cap} ("), err
    assert "AmbientCapabilities=" in err


def test_unit_sandbox_exposure(guest):
    name, vm, host = guest
    out = host.check_output("systemd-analyze security --no-pager spanprobe.service")
    m = re.search(r"Overall exposure level for spanprobe\.service: ([\d.]+)", out)
    assert m, out
    SUMMARY["guests"].setdefault(name, {})["exposure"] = float(m.group(1))
    (RESULTS / name).mkdir(parents=True, exist_ok=True)
    (RESULTS / name / "systemd-analyze-security.txt").write_text(out + "\n")
    assert float(m.group(1)) <= 3.0, out


# ---------------------------------------------------------------- the host
def test_sshd_keys_only_no_root_modern_crypto(guest):
    name, vm, host = guest
    cfg = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
    assert cfg["permitrootlogin"] == "no"
    assert cfg["passwordauthentication"] == "no"
    assert cfg["kbdinteractiveauthentication"] == "no"
    assert cfg["x11forwarding"] == "no" and cfg["allowtcpforwarding"] == "no"
    assert cfg["clientaliveinterval"] == "300" and cfg["clientalivecountmax"] == "2"
    assert cfg["maxauthtries"] == "3"
    assert not set(cfg["ciphers"].split(",")) - {"chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com",
                                                 "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr",
                                                 "aes128-ctr"}
    assert all(mac.endswith("-etm@openssh.com") for mac in cfg["macs"].split(","))
    assert "sha1" not in cfg["kexalgorithms"]
    # and the user Ansible logs in as still gets in, with its key
    assert vm.ssh("true", check=False).returncode == 0


def test_sysctls(guest):
    name, vm, host = guest
    want = {"kernel.kptr_restrict": 2, "kernel.dmesg_restrict": 1, "kernel.yama.ptrace_scope": 2,
            "kernel.unprivileged_bpf_disabled": 1, "net.core.bpf_jit_harden": 2,
            "net.ipv4.conf.all.accept_redirects": 0, "net.ipv4.conf.all.rp_filter": 1,
            "net.ipv4.tcp_syncookies": 1, "fs.suid_dumpable": 0, "kernel.randomize_va_space": 2,
            "fs.protected_regular": 2, "kernel.perf_event_paranoid": 2}
    got = {k: host.sysctl(k) for k in want}
    assert got == want


def test_nftables_default_deny_inbound_except_ssh(guest):
    name, vm, host = guest
    assert host.service("nftables").is_enabled
    rules = host.check_output("nft list table inet hardening")
    assert re.search(r"chain input \{\s*type filter hook input priority filter; policy drop;", rules), rules
    assert "tcp dport 22 ct state new accept" in rules
    assert 'iif "lo" accept' in rules
    assert re.search(r"chain forward \{\s*type filter hook forward priority filter; policy drop;", rules)


def test_auditd_running_with_rules(guest):
    name, vm, host = guest
    assert host.service("auditd").is_running
    rules = host.check_output("auditctl -l")
    # auditctl -l lists syscall rules with "-F key=K", file watches with "-k K"
    for key in ("identity", "time-change", "logins", "MAC-policy", "modules", "spanprobe", "scope"):
        assert re.search(rf"(-F key=|-k ){re.escape(key)}$", rules, re.M), key


def test_file_modes_and_users(guest):
    name, vm, host = guest
    for path, mode, group in (("/etc/shadow", 0o640, "shadow"), ("/etc/passwd", 0o644, "root"),
                              ("/etc/crontab", 0o600, "root"), ("/etc/ssh/sshd_config", 0o600, "root"),
                              ("/etc/spanprobe/config.yaml", 0o640, "spanprobe"),
                              ("/etc/spanprobe", 0o750, "spanprobe"),
                              ("/etc/systemd/system/spanprobe.service", 0o644, "root")):
        f = host.file(path)
        assert (f.mode, f.user, f.group) == (mode, "root", group), path
    assert host.file(f"/home/{vm.m['user']}").mode in (0o700, 0o750)     # Debian 13 makes homes 0700
    assert host.file("/etc/cron.allow").content_string.strip() == "root"
    defs = host.file("/etc/login.defs").content_string
    assert re.search(r"^UMASK\s+027$", defs, re.M) and re.search(r"^PASS_MAX_DAYS\s+365$", defs, re.M)
    assert "minlen = 14" in host.file("/etc/security/pwquality.conf.d/90-hardening.conf").content_string


def test_apparmor_enforcing_and_core_dumps_off(guest):
    name, vm, host = guest
    assert host.run("aa-enabled --quiet").rc == 0
    status = json.loads(host.check_output("aa-status --json"))
    modes = set(status["profiles"].values())
    assert status["profiles"] and modes <= {"enforce", "kill", "unconfined"}, modes
    assert host.check_output("systemctl show -p DefaultLimitCORE --value") == "0"
    assert "hard    core    0" in host.file("/etc/security/limits.d/90-hardening-coredumps.conf").content_string


def test_unused_modules_blocked_not_vfat(guest):
    name, vm, host = guest
    for mod in ("cramfs", "usb-storage", "dccp"):
        assert "install /bin/false" in host.run(f"modprobe -n -v {mod}").stdout, mod
    assert "/bin/false" not in host.run("modprobe -n -v vfat").stdout


def test_unattended_security_upgrades(guest):
    name, vm, host = guest
    conf = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in conf
    origins = [ln for ln in conf.splitlines() if ln.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert origins and all("Debian-Security" in ln for ln in origins), origins


# ---------------------------------------------------------------- handlers and arguments
def test_config_or_code_change_restarts_the_agent(fleet):
    names = list(fleet.vms)
    cfg_host, code_host = names[0], names[-1]
    wheel = build_wheel(1700000000, RESULTS / "wheel-code-change")   # same version, other bytes
    host_vars = {n: {"spanprobe_wheelhouse": fleet_wheelhouse(fleet, n)}
                 for n in names}
    host_vars[cfg_host]["spanprobe_log_level"] = "debug"
    host_vars[code_host]["spanprobe_wheel"] = str(wheel)
    inv = write_inventory(RESULTS / "inventory-change.yml", fleet.vms, host_vars)
    before = {n: agent_pid(vm) for n, vm in fleet.vms.items()}
    # only the agent's role: what changes is its config and code (and it is a third of the time)
    run = run_playbook("site-3-change", inv, "--tags", "spanprobe")
    assert run.rc == 0, _tail(run.text)
    after = {n: agent_pid(vm) for n, vm in fleet.vms.items()}
    # the log names a role's tasks "role : task"
    changed = {n: [t.split(" : ", 1)[-1] for t in ts] for n, ts in run.changed_tasks.items()}
    for n in names:
        assert after[n] and after[n] != before[n], f"{n}: agent not restarted ({before[n]} -> {after[n]})"
        assert "Restart spanprobe" in changed[n]
    assert "Write /etc/spanprobe/config.yaml (checked by the agent first)" in changed[cfg_host]
    assert "Install the agent itself (also when only its code changed, same version)" in \
        changed[code_host]
    if cfg_host != code_host:
        assert "Install the agent itself (also when only its code changed, same version)" not in \
            changed[cfg_host]
        assert "Write /etc/spanprobe/config.yaml (checked by the agent first)" not in changed[code_host]
    for vm in fleet.vms.values():
        assert vm.ssh("systemctl is-active spanprobe").stdout.strip() == "active"


def fleet_wheelhouse(fleet, name):
    import yaml

    return yaml.safe_load(fleet.inventory.read_text())["spanprobe"]["hosts"][name]["spanprobe_wheelhouse"]


@pytest.mark.parametrize("bad, variable", [
    ('{"spanprobe_capture_bytes": "lots"}', "spanprobe_capture_bytes"),
    ('{"hardening_nftables_allowed_tcp_ports": [80, 70000]}', "hardening_nftables_allowed_tcp_ports"),
])
def test_bad_variable_stops_the_run_before_any_change(fleet, bad, variable):
    run = run_playbook(f"site-bad-{variable}", fleet.inventory, "-e", bad)
    assert run.rc != 0
    assert variable in run.text
    for name in fleet.vms:
        assert run.recap[name]["changed"] == 0, run.changed_tasks
    assert "TASK [hardening : Remove legacy network services" not in run.text


# ---------------------------------------------------------------- lynis, last
def test_lynis_hardening_index(fleet, record_property):
    if not LYNIS_GUESTS:
        pytest.skip("no guest of SPANPROBE_LYNIS_GUESTS is booted")
    inputs = inputs_digest()

    def audit(job):
        what, n = job
        t = time.monotonic()
        try:
            if what == "before":     # the stock image: kept, or a throw-away boot of it audited now
                return lynis_before(n, fleet.manifests[n])
            return lynis_after(fleet.vms[n], fleet.manifests[n], inputs)
        finally:
            SUMMARY["times"][f"lynis {what} {n} (s)"] = round(time.monotonic() - t, 1)

    # the guests lynis does not audit are done with, and an idle TCG guest still costs a
    # share of a core (its timer ticks, emulated): stopped beside the audits
    def stop_idle():
        for vm in [vm for n, vm in fleet.vms.items() if n not in LYNIS_GUESTS]:
            try:
                vm.stop()
            except Exception as exc:   # noqa: BLE001 - the fixture's teardown stops it again
                print(f"{vm.name}: stop before lynis: {exc}")

    stopper = threading.Thread(target=stop_idle)
    stopper.start()
    try:
        # side by side: each run keeps about one of the two cores busy
        found = parallel(audit, [(w, n) for n in LYNIS_GUESTS for w in ("before", "after")])
    finally:
        stopper.join()
    for (what, n), (idx, reused) in found.items():
        SUMMARY["guests"][n][f"lynis_{what}"] = f"{idx} (reused: {reused})" if reused else idx
        SUMMARY["reused"][f"lynis {what} {n}"] = f"{idx}, measured {reused}" if reused else None
        if reused and what == "before":     # shown, not asserted: the property says where it came from
            record_property("reused_input", f"lynis before {n}: {reused}")
        if not reused and what == "after":
            fleet.vms[n].ssh("sudo cp /var/log/lynis-report.dat /tmp/lynis-report.dat && "
                             "sudo chmod 644 /tmp/lynis-report.dat", check=False)
    after = {n: found[("after", n)] for n in LYNIS_GUESTS}
    if all(reused for _, reused in after.values()):
        # nothing was audited now: the verdict below is an earlier run's, counted as reused
        record_property("reused", "; ".join(f"{n}: {r}" for n, (_, r) in after.items()))
    print(json.dumps({n: (SUMMARY["guests"][n].get("lynis_before"), idx) for n, (idx, _) in after.items()}))
    for n, (idx, _) in after.items():
        assert idx is not None and idx >= LYNIS_TARGET, f"{n}: lynis hardening index {idx} < {LYNIS_TARGET}"
