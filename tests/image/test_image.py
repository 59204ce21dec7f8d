"""The appliance image: outputs, hygiene on the disk itself, first boot with UEFI and with
BIOS (NoCloud seed, SSH with the seeded key, the agent READY, spans at a receiver on the
host). Reproducibility is test_reproducible.py; `vagrant up`, test_vagrant.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

import pytest

from image_helpers import RESULTS, SUMMARY, TARGET, make_seed

from tests.support.receiver import Receiver
from tests.support.tcg import FreezeWatch, monitor

import compare  # noqa: E402  (packer/compare.py)
from vm import VM  # noqa: E402  (tests/ansible/vm.py)

pytestmark = pytest.mark.timeout(5400)
RECEIVER = "10.0.2.100:4318"        # inside QEMU's user-mode network only: guestfwd to 127.0.0.1


# ---------------------------------------------------------------- outputs
def test_outputs_and_checksums(image, record_property):
    if image["reused"]:     # the checks below run now, on an image an earlier run built
        record_property("reused_input", f"image {image['reused']}")
    d = image["dir"]
    for f in (image["raw"], image["qcow2"], image["box"], d / "packages.json", d / "build.json"):
        assert f.is_file() and f.stat().st_size > 0, f
    r = subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = {line.split("  ", 1)[1] for line in (d / "SHA256SUMS").read_text().splitlines()}
    assert {image["raw"].name, image["qcow2"].name, image["box"].name, "packages.json", "build.json"} <= listed
    pk = json.loads((d / "packages.json").read_text())
    assert pk["debian"]["python3-bpfcc"] and any(n.startswith("linux-headers-") for n in pk["debian"])
    assert pk["python"]["spanprobe"] and pk["python"]["opentelemetry-sdk"]
    meta = image["meta"]
    assert meta["target"] == TARGET and meta["git_commit"] and meta["packer"].startswith("Packer v")
    box = subprocess.run(["tar", "-tzf", str(image["box"])], capture_output=True, text=True, check=True).stdout
    assert {"box.img", "metadata.json", "Vagrantfile"} <= {n.lstrip("./") for n in box.split()}


# ---------------------------------------------------------------- hygiene, on the disk
@pytest.fixture(scope="module")
def root_tree(image):
    """The root file system of the raw image, mounted read-only."""
    part = next(p for p in compare.partitions(image["raw"]) if p["name"] == "root")
    with compare.mounted(image["raw"], part) as mnt:
        yield mnt


def test_no_host_keys_machine_id_uninitialized(root_tree):
    assert not list((root_tree / "etc/ssh").glob("ssh_host_*")), "SSH host keys are shipped"
    assert (root_tree / "etc/machine-id").read_text() == "uninitialized\n"
    assert not (root_tree / "var/lib/systemd/random-seed").exists()
    assert not (root_tree / "etc/hostname").exists()


def test_no_state_of_the_build_clock(root_tree):
    """What a timer does depends on when it fires, so none ran in the build (bootstrap.sh
    stops them) and none is left counting from the build's clock; they stay enabled."""
    assert not list((root_tree / "var/lib/systemd/timers").glob("stamp-*"))
    assert not list((root_tree / "var/lib/apt").glob("listchanges*")), "apt-listchanges.timer ran in the build"
    wants = root_tree / "etc/systemd/system/timers.target.wants"
    assert {"apt-listchanges.timer", "apt-daily-upgrade.timer"} <= {p.name for p in wants.iterdir()}


def test_no_build_user_password_sudo_or_keys(root_tree):
    for f in ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"):
        assert not re.search(r"^packer:", (root_tree / f).read_text(), re.M), f
    assert not (root_tree / "home/packer").exists()
    for line in (root_tree / "etc/shadow").read_text().splitlines():
        name, pw = line.split(":")[:2]
        assert pw in ("*", "!", "!*", "") or pw.startswith("!"), f"{name} has a password"
    assert sorted(p.name for p in (root_tree / "etc/sudoers.d").iterdir()) in ([], ["README"])
    keys = [p for top in ("root", "home") for p in (root_tree / top).rglob("authorized_keys*")]
    assert not keys, keys


def test_no_build_script_left(root_tree):
    assert not (root_tree / "usr/local/sbin/spanprobe-image-cleanup").exists()
    assert not (root_tree / "tmp/packages.tsv").exists()


def test_no_logs_history_or_cloud_init_state(root_tree):
    logs = [p for p in (root_tree / "var/log").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert not logs, logs
    hist = [p for top in ("root", "home") for p in (root_tree / top).rglob(".*history")]
    assert not hist, hist
    assert not (root_tree / "var/lib/cloud/instance").exists()
    assert not (root_tree / "etc/cloud/cloud-init.disabled").exists()


def test_kernel_headers_and_agent_stay(root_tree):
    releases = [p.name for p in (root_tree / "usr/lib/modules").iterdir()]
    assert releases and all((root_tree / "usr/lib/modules" / r / "build").exists() for r in releases), releases
    assert (root_tree / "opt/spanprobe/venv/bin/spanprobe").exists()
    assert (root_tree / "etc/systemd/system/multi-user.target.wants/spanprobe.service").is_symlink()


# ---------------------------------------------------------------- first boot
AGENT_CONFIG = f"""# written by the NoCloud seed of tests/image
select:
  ports: [8080]
export:
  otlp_endpoint: http://{RECEIVER}
  otlp_protocol: http/protobuf
  console: true
resource_attributes: {{deployment.environment.name: image-test}}
"""


@pytest.fixture(scope="module")
def appliances(image, vagrant_up, tmp_path_factory):
    """The raw image booted twice at once, with UEFI and with BIOS, each from a throw-away
    overlay, seeded, with its own receiver on the host: the two first boots (and the
    `vagrant up` that `vagrant_up` starts in the background) overlap instead of queueing.
    {firmware: (VM, receiver)}; each is stopped by `booted` after its checks."""
    vms = {}
    for fw in ("uefi", "bios"):
        iso, key = make_seed(tmp_path_factory.mktemp(f"seed-{fw}"), AGENT_CONFIG)
        receiver = Receiver()
        receiver.start_http()
        manifest = {"name": f"appliance-{fw}", "disk": str(image["raw"]), "disk_format": "raw",
                    "ssh_key": str(key), "user": "admin"}
        vm = VM(manifest, RESULTS / fw, firmware=fw, drives=(iso,), guestfwd={RECEIVER: receiver.http_port})
        vm.start()
        vms[fw] = (vm, receiver)
    try:
        yield vms
    finally:
        for vm, receiver in vms.values():
            vm.stop()
            receiver.stop()


@pytest.fixture(scope="module", params=["uefi", "bios"])
def booted(request, appliances):
    """One of the two appliances, once it answers SSH: (firmware, VM, testinfra host, receiver)."""
    import testinfra

    fw = request.param
    vm, receiver = appliances[fw]
    try:
        SUMMARY[f"{fw}: boot to SSH (s)"] = round(vm.wait_ssh(timeout=900), 1)
        if vm.restarted:        # the first boot froze under TCG: said, with its console kept
            SUMMARY[f"{fw}: first boot stopped"] = (f"{vm.restarted['why']}; booted again with "
                                                   f"{vm.restarted['again_with']} ({vm.restarted['first_console']}, "
                                                   f"which ended: {vm.restarted['last_console'][-600:]!r})")
        host = testinfra.get_host(f"ssh://{vm.name}", ssh_config=str(vm.ssh_config), sudo=True)
        yield fw, vm, host, receiver
    finally:
        vm.stop()
        SUMMARY[f"{fw}: boot and checks (s)"] = round(time.monotonic() - vm.t0, 1)
        if vm.starved:      # samples its watch let off as starved by a busy host, not frozen
            SUMMARY[f"{fw}: starved samples (not frozen)"] = vm.starved


def test_boots_with_its_firmware(booted):
    fw, vm, host, _ = booted
    assert host.file("/sys/firmware/efi").exists == (fw == "uefi")
    assert host.check_output("hostname") == "spanprobe-test"


def test_first_boot_made_identity(booted):
    fw, vm, host, _ = booted
    mid = host.file("/etc/machine-id").content_string.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", mid), mid
    assert host.file("/etc/ssh/ssh_host_ed25519_key").exists
    assert host.service("ssh-host-keys").is_enabled


def test_agent_ready_at_first_boot(booted):
    fw, vm, host, _ = booted
    deadline = time.monotonic() + 600        # bcc compiles for a minute or two under TCG
    status = ""
    while time.monotonic() < deadline:
        status = host.check_output("systemctl show -p StatusText --value spanprobe")
        if status.startswith("tracing with "):
            break
        time.sleep(5)
    assert status.startswith("tracing with "), host.run("journalctl -u spanprobe -b --no-pager -o cat").stdout[-3000:]
    assert host.service("spanprobe").is_running


def test_request_gives_spans_at_a_receiver_on_the_host(booted):
    fw, vm, host, receiver = booted
    py = "/opt/spanprobe/venv/bin/python"
    host.run("systemctl stop demo-shop 2>/dev/null")
    host.check_output(f"systemd-run --unit=demo-shop --collect -p User=nobody --setenv=OTEL_SERVICE_NAME=demo-shop "
                      f"{py} -m spanprobe.demo_app serve --port 8080")
    client = ("import time, urllib.request\n"
              "for _ in range(120):\n"
              "    try:\n"
              "        urllib.request.urlopen('http://127.0.0.1:8080/users/1', timeout=5).read(); break\n"
              "    except OSError: time.sleep(0.5)\n"
              "for i in range(2, 6):\n"
              "    urllib.request.urlopen(f'http://127.0.0.1:8080/users/{i}', timeout=5).read()\n")
    vm.ssh(f"python3 -c {shlex.quote(client)}", timeout=180)
    spans = receiver.wait_for(lambda s: s["kind"] == "SERVER" and s["attributes"].get("server.port") == 8080,
                              count=5, timeout=120)
    s = spans[-1]
    assert s["resource"]["service.name"] == "demo-shop"
    assert s["resource"]["deployment.environment.name"] == "image-test"
    assert s["attributes"]["http.response.status_code"] == 200
    host.run("systemctl stop demo-shop")


def test_first_boot_hygiene(booted):
    """What the build left, seen from the running appliance: only this boot in the journal,
    cloud-init's state from this seed (not the build's), no build user, and the seeded
    user's key the only one that logs in."""
    fw, vm, host, _ = booted
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip().replace("-", "")
    assert host.check_output("journalctl -F _BOOT_ID").split() == [boot_id]
    assert host.file("/var/lib/cloud/data/instance-id").content_string.strip() == "spanprobe-image-test"
    assert host.check_output("ls /var/lib/cloud/instances").split() == ["spanprobe-image-test"]
    assert not host.user("packer").exists and not host.file("/home/packer").exists
    assert set(host.check_output("ls /etc/sudoers.d").split()) <= {"README", "90-cloud-init-users"}
    keys = sorted(host.check_output("find / -xdev -name 'authorized_keys*' -type f").split())
    assert keys in (["/home/admin/.ssh/authorized_keys"],
                    ["/home/admin/.ssh/authorized_keys", "/root/.ssh/authorized_keys"]), keys
    # cloud-init's disable_root: root's file holds the user's key only behind a command that
    # refuses the login (and sshd says PermitRootLogin no anyway)
    for line in host.file("/root/.ssh/authorized_keys").content_string.splitlines() if len(keys) > 1 else ():
        assert not line.strip() or (line.startswith("no-port-forwarding,") and "exit 142" in line), line


# ---------------------------------------------------------------- the roles' checks, booted
# The appliance is made by the same roles as a fleet host, so the Ansible tier's checks of
# what they promise run here as they are, at each firmware's first boot (after the tests
# above, which wait for the agent to be READY).
from test_fleet import (  # noqa: E402,F401  (collected as tests of this module too)
    test_agent_is_active_and_reported_ready, test_agent_runs_unprivileged_with_only_its_capabilities,
    test_apparmor_enforcing_and_core_dumps_off, test_auditd_running_with_rules, test_file_modes_and_users,
    test_nftables_default_deny_inbound_except_ssh, test_sshd_keys_only_no_root_modern_crypto, test_sysctls,
    test_unattended_security_upgrades, test_unit_sandbox_exposure, test_unused_modules_blocked_not_vfat)


@pytest.fixture(scope="module")
def guest(booted):
    """The booted appliance as the Ansible tier's checks take a host: (name, VM, testinfra host)."""
    fw, vm, host, _ = booted
    return f"appliance-{fw}", vm, host



# ---------------------------------------------------------------- last, with UEFI
# Once, with the firmware whose reboot keeps the most (OVMF's variables beside the disk):
# the watch and the boot again are the harness's, the same for either firmware, and each
# check costs ~2 minutes of the tier's critical path (the BIOS appliance waits meanwhile).
# (pytest reuses the UEFI appliance of `booted`'s own params for it, and runs it after that
# appliance's other checks: "uefi" is `booted`'s first param, index 0 like this one's)
@pytest.mark.parametrize("booted", ["uefi"], indirect=True)
def test_a_frozen_appliance_is_stopped_and_booted_again_in_seconds(booted):
    """Runs after every other check of its firmware: the appliance's vCPUs, busy, are stopped
    through QEMU's monitor, which is how a TCG freeze looks from outside. The VM's watch
    (tests/ansible/vm.py) must see it and stop the VM within its window, not leave it to a
    15-minute SSH timeout, then boot it again from its own disk on one host thread; and it
    must not have judged the appliance frozen during the checks above, while it booted,
    compiled and traced."""
    fw, vm, host, _ = booted
    assert vm.frozen is None and vm.proc.poll() is None and vm.boots_again < vm.MAX_BOOTS_AGAIN
    boots_before = len(vm.restarts)     # a first boot that froze, booted again before the checks
    vm.ssh("sudo touch /var/tmp/spanprobe-before-freeze && sync", timeout=60)
    vm.ssh("for i in 1 2; do nohup sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & done", timeout=60)
    time.sleep(5)
    first = vm.proc
    monitor(vm.monitor_sock, "stop")
    t = time.monotonic()
    window = FreezeWatch().still_s
    first.wait(timeout=window + 3 * vm.WATCH_GAP_S + 10)
    SUMMARY[f"{fw}: stopped vCPUs seen frozen in (s)"] = round(time.monotonic() - t, 1)
    # the next command waits for the new boot to answer
    assert vm.ssh("test -e /var/tmp/spanprobe-before-freeze && echo kept", timeout=60).stdout.strip() == "kept"
    SUMMARY[f"{fw}: booted again from its disk, SSH answering in (s)"] = round(time.monotonic() - t, 1)
    stopped = vm.restarts[boots_before:]
    assert stopped and "not halted" in stopped[0]["why"], stopped
    if len(stopped) > 1:    # the boot again itself did not answer in time: said, with its console
        SUMMARY[f"{fw}: after the freeze, booted again more than once"] = stopped[1:]
    assert all(r["from"] == "its own disk" for r in stopped), stopped
    assert vm.proc is not first and vm.proc.poll() is None
    assert "tcg,thread=single" in (vm.dir / "qemu.cmd").read_text()
