"""writeguard: a map write runs at SCHED_FIFO 1 and the thread gets its own policy back
(SCHED_IDLE included: the benchmark's spanprobe-idle agent); a refusal is warned about
once (at INFO: a skipped run is what gets a warning, losses.py) and every later write is
counted as unguarded, not attempted again."""

from __future__ import annotations

import logging
import os

import pytest

from spanprobe.writeguard import WriteGuard


class Scheduler:
    def __init__(self, policy=os.SCHED_OTHER, refuse=False):
        self.policy, self.refuse, self.calls = policy, refuse, []

    def get(self, pid):
        return self.policy

    def param(self, pid):
        return os.sched_param(0)

    def set(self, pid, policy, param):
        self.calls.append((policy, param.sched_priority))
        if self.refuse and policy == os.SCHED_FIFO:
            raise PermissionError(1, "Operation not permitted")
        self.policy = policy

    def guard(self):
        return WriteGuard(self.get, self.param, self.set)


@pytest.mark.parametrize("own", [os.SCHED_OTHER, os.SCHED_IDLE, os.SCHED_BATCH])
def test_a_write_runs_at_fifo_and_the_thread_gets_its_policy_back(own):
    s = Scheduler(own)
    g = s.guard()
    with g():
        assert s.policy == os.SCHED_FIFO
    assert s.policy == own and s.calls == [(os.SCHED_FIFO, 1), (own, 0)]
    assert g.unguarded == 0


def test_the_policy_comes_back_when_the_write_fails():
    s = Scheduler()
    with pytest.raises(KeyError), s.guard()():
        raise KeyError("gone")
    assert s.policy == os.SCHED_OTHER


def test_an_agent_started_real_time_is_left_as_it_is():
    s = Scheduler(os.SCHED_RR)
    with s.guard()():
        pass
    assert s.calls == []


def test_a_refusal_is_said_once_and_later_writes_counted(caplog):
    s = Scheduler(refuse=True)
    g = s.guard()
    with caplog.at_level(logging.INFO, "spanprobe.loader"):
        for _ in range(3):
            with g():
                pass
    assert g.unguarded == 3 and "Operation not permitted" in g.refused
    assert len(caplog.records) == 1 and "CAP_SYS_NICE" in caplog.records[0].getMessage()
    assert s.calls == [(os.SCHED_FIFO, 1)]      # tried once, not again


def test_the_real_scheduler_round_trip():
    """This process's own thread: raised and restored where permitted (root), refused and
    counted where not; either way the thread ends with the policy it had."""
    before = os.sched_getscheduler(0)
    g = WriteGuard()
    with g():
        inside = os.sched_getscheduler(0)
    assert os.sched_getscheduler(0) == before
    assert inside == os.SCHED_FIFO or (g.refused and g.unguarded == 1)
