"""The Ansible tier: a Debian 13 and a Debian 12 VM under QEMU, site.yml run over SSH
twice (the second must change nothing), then testinfra checks over SSH.

Runs only with SPANPROBE_ANSIBLE=1 (scripts/dev.sh sets it for the tier): it boots VMs
and takes minutes. SPANPROBE_ANSIBLE_GUESTS=debian13 limits it to one guest.
Results (logs, inventory, console logs, summary.json): $SPANPROBE_RESULTS/ansible/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
import wheelhouse  # ansible/wheelhouse.py (pyproject.toml's pythonpath)
from fleet_helpers import (BIN, BOOT_TIMEOUT_S, GUESTS, LYNIS_GUESTS, LYNIS_SMP, RESULTS, SUMMARY, VM, Fleet,  # noqa: E402
                           agent_pid, build_images, parallel, run_playbook, write_inventory)
from tests.support.gate import gate  # noqa: E402

ENABLED = os.environ.get("SPANPROBE_ANSIBLE") == "1"


def pytest_collection_modifyitems(config, items):
    gate([i for i in items if HERE in Path(str(i.fspath)).parents and "fleet" in i.fixturenames], ENABLED,
         "boots QEMU VMs for minutes: run it with scripts/dev.sh test-ansible (sets SPANPROBE_ANSIBLE=1)",
         ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "mke2fs", "ssh", "ssh-keygen"),
         None if (BIN / "ansible-playbook").exists() else f"ansible-playbook is not in {BIN}: scripts/dev.sh setup installs it")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not SUMMARY["guests"]:
        return
    tr = terminalreporter
    tr.section("ansible tier")
    for name, g in SUMMARY["guests"].items():
        tr.write_line(f"{name:<9} {g.get('suite', ''):<9} kernel {g.get('kernel', '?'):<18} "
                      f"boot {g.get('boot_s', '?')} s | lynis hardening index before "
                      f"{g.get('lynis_before', '?')} after {g.get('lynis_after', '?')} | "
                      f"systemd-analyze exposure {g.get('exposure', '?')} | "
                      f"strategy {g.get('strategy', '?')}")
    for name, v in SUMMARY["times"].items():
        tr.write_line(f"  {name:<28} {v}")
    for line in SUMMARY["slowest tasks, first run"]:
        tr.write_line(f"  slowest task of the first run: {line}")
    for name, v in SUMMARY["reused"].items():
        tr.write_line(f"  {name:<28} {'reused: ' + v if v else 'measured in this run'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(SUMMARY, indent=2) + "\n")


@pytest.fixture(scope="session")
def fleet():
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    manifests = build_images(GUESTS)
    SUMMARY["times"]["images (s)"] = round(time.monotonic() - t0, 1)
    t = time.monotonic()
    houses = {n: wheelhouse.build(m["python"]) for n, m in manifests.items()}
    SUMMARY["times"]["wheelhouses (s)"] = round(time.monotonic() - t, 1)
    vms = {n: VM(m, RESULTS / n, smp=LYNIS_SMP if n in LYNIS_GUESTS else None) for n, m in manifests.items()}
    try:
        t = time.monotonic()
        for vm in vms.values():
            vm.start()
        boots = parallel(lambda n: round(vms[n].wait_ssh(timeout=BOOT_TIMEOUT_S), 1), list(vms))
        SUMMARY["times"]["boot (s)"] = round(time.monotonic() - t, 1)
        for n, m in manifests.items():
            SUMMARY["guests"][n] = {"suite": m["suite"], "kernel": m["kernel"], "boot_s": boots[n]}
            if vms[n].restarts:     # its first boot froze under TCG or stayed silent: said, with its console kept
                SUMMARY["times"][f"{n} first boot stopped"] = vms[n].restarts

        inventory = write_inventory(RESULTS / "inventory.yml", vms,
                                    {n: {"spanprobe_wheelhouse": str(houses[n])} for n in vms})
        fleet = Fleet(vms, manifests, inventory)
        fleet.runs["first"] = run_playbook("site-1-apply", inventory)
        SUMMARY["slowest tasks, first run"] = fleet.runs["first"].slowest()
        fleet.pids["after_first"] = {n: agent_pid(vm) for n, vm in vms.items()}
        fleet.runs["second"] = run_playbook("site-2-idempotence", inventory)
        fleet.pids["after_second"] = {n: agent_pid(vm) for n, vm in vms.items()}
        yield fleet
    finally:
        for n, vm in vms.items():
            later = [r for r in vm.restarts if r["from"] == "its own disk"]
            if later:               # stopped after it had answered (frozen or silent): said
                SUMMARY["times"][f"{n} stopped after boot, booted again from its disk"] = later
            if vm.starved:          # samples its watch let off as starved by a busy host, not frozen
                SUMMARY["times"][f"{n} starved samples (not frozen)"] = vm.starved
        parallel(lambda n: vms[n].stop(), list(vms))
        SUMMARY["times"]["tier total (s)"] = round(time.monotonic() - t0, 1)


@pytest.fixture(params=GUESTS)
def guest(request, fleet):
    """(name, VM, testinfra host) for each guest."""
    import testinfra

    vm = fleet.vms[request.param]
    return request.param, vm, testinfra.get_host(f"ssh://{vm.name}", ssh_config=str(vm.ssh_config), sudo=True)
