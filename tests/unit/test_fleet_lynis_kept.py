"""Whose a kept lynis index is (fleet_helpers.kept_index): an earlier run's is reused and
says when and under which key; this run's own (the stock image's, audited in the
background by lynis_before.py) is not. And the tier, once it waits for that background
audit, puts its process and children back to normal priority (_hurry): out of SCHED_IDLE,
which the test command starts it under, and to nice 0."""

from __future__ import annotations

import json
import os
import subprocess

import fleet_helpers


def keep(path, run):
    path.write_text(json.dumps({"hardening_index": 66, "measured": "2026-12-04T21:00:00Z", "run": run}))


def test_an_earlier_runs_index_is_reused_with_its_date_and_key(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet_helpers, "RUN", "20261205T000000Z-1")
    path = tmp_path / "debian13-key" / "lynis-before-abc.json"
    path.parent.mkdir()
    keep(path, "20261204T000000Z-9")
    assert fleet_helpers.kept_index(path) == (66, "2026-12-04T21:00:00Z, key debian13-key/lynis-before-abc")


def test_this_runs_own_index_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet_helpers, "RUN", "20261205T000000Z-1")
    keep(tmp_path / "k.json", "20261205T000000Z-1")
    assert fleet_helpers.kept_index(tmp_path / "k.json") == (66, None)


def test_without_a_run_name_every_kept_index_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet_helpers, "RUN", "")
    keep(tmp_path / "k.json", "")
    assert fleet_helpers.kept_index(tmp_path / "k.json")[1] is not None
    assert fleet_helpers.kept_index(tmp_path / "missing.json") is None


def _started(cmd: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """`cmd` (a shell with a child), and the child's pid once it is there."""
    proc = subprocess.Popen(cmd)
    for _ in range(100):
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        if children:
            return proc, children
        subprocess.run(["sleep", "0.05"])
    return proc, []


def _stop(proc: subprocess.Popen, children: list[str]) -> None:
    for child in children:
        os.kill(int(child), 9)
    proc.kill()
    proc.wait()


def test_hurry_takes_the_background_audit_and_its_children_out_of_sched_idle():
    # as scripts/dev.sh starts the audit: `chrt --idle 0`, inherited by its children (QEMU)
    proc, children = _started(["chrt", "--idle", "0", "sh", "-c", "sleep 30 & wait"])
    try:
        assert children and os.sched_getscheduler(int(children[0])) == os.SCHED_IDLE
        fleet_helpers._hurry([str(proc.pid), "not-a-pid"])
        # leaving SCHED_IDLE needs root or an RLIMIT_NICE that allows nice 0: refused, nothing raised
        if os.geteuid() == 0:
            assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
            assert os.sched_getscheduler(int(children[0])) == os.SCHED_OTHER
    finally:
        _stop(proc, children)


def test_hurry_raises_a_niced_audit_and_its_children_to_normal_priority():
    # by hand, the audit may be started niced
    proc, children = _started(["nice", "-n", "10", "sh", "-c", "sleep 30 & wait"])
    try:
        niced = min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)     # this test may run niced itself
        assert children and os.getpriority(os.PRIO_PROCESS, int(children[0])) == niced
        fleet_helpers._hurry([str(proc.pid), "not-a-pid"])
        if os.geteuid() == 0:
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 0
            assert os.getpriority(os.PRIO_PROCESS, int(children[0])) == 0
        else:                   # lowering a nice value needs root (the tier's): refused, nothing raised
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == niced
    finally:
        _stop(proc, children)
