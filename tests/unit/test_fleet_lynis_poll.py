"""How fleet_helpers.lynis_index waits for the audit it starts detached in the guest: a lost
SSH poll is counted in the tier's summary and the wait goes on; a guest booted again
after a freeze has the audit started again; a QEMU that ended fails at once, saying so."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

import fleet_helpers


class FakeVM:
    """Answers lynis_index's SSH commands from a script of poll results."""

    def __init__(self, polls):
        self.name, self.slow, self.boots_again, self._rebooting = "guest", 1.0, 0, False
        self.console = "console.log"
        self.polls = list(polls)
        self.started = 0
        self.proc = SimpleNamespace(poll=lambda: None)

    def ssh(self, command, check=True, timeout=600, input=None):
        if "systemd-run" in command:
            self.started += 1
            return SimpleNamespace(returncode=0, stdout="", stderr="")
        if command.startswith("cat /run/"):
            step = self.polls.pop(0)
            if callable(step):
                return step(self)
            return SimpleNamespace(returncode=step[0], stdout=step[1], stderr=step[2])
        if "lynis-report.dat" in command:
            return SimpleNamespace(returncode=0, stdout="hardening_index=83\n", stderr="")
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    def _freeze_said(self):
        return ""

    def console_tail(self):
        return ""


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(fleet_helpers, "LYNIS_POLL_S", 0)
    monkeypatch.setitem(fleet_helpers.SUMMARY, "times", {})


def test_a_lost_poll_is_counted_and_the_audit_still_read():
    def timed_out(vm):
        raise subprocess.TimeoutExpired("ssh", 60)
    vm = FakeVM([(0, "", ""), (255, "", ""), timed_out, (0, "0\n", "")])
    assert fleet_helpers.lynis_index(vm) == 83
    lost = fleet_helpers.SUMMARY["times"]["guest: SSH polls of lynis lost"]
    assert len(lost) == 2 and "exit 255: nothing said" in lost[0] and "no answer" in lost[1]
    assert vm.started == 1


def test_a_guest_booted_again_has_its_audit_started_again():
    def rebooted(vm):
        vm.boots_again += 1
        return SimpleNamespace(returncode=255, stdout="", stderr="Connection closed")
    vm = FakeVM([rebooted, (0, "", ""), (0, "1\n", "")])
    assert fleet_helpers.lynis_index(vm) == 83
    assert vm.started == 2


def test_a_qemu_that_ended_fails_at_once():
    def died(vm):
        vm.proc = SimpleNamespace(poll=lambda: 1)
        return SimpleNamespace(returncode=255, stdout="", stderr="")
    vm = FakeVM([died, (0, "0\n", "")])
    with pytest.raises(RuntimeError, match="QEMU ended during lynis"):
        fleet_helpers.lynis_index(vm)
