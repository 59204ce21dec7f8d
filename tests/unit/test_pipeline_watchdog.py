"""systemd's watchdog (spanprobe.notify.Watchdog): pings at half WATCHDOG_USEC, only for
this PID, and from the agent's loop (a real datagram socket stands in for systemd)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from spanprobe.notify import Watchdog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def sent_by(env, clock):
    sent = []
    return Watchdog(env, 4242, clock, lambda msg, e: sent.append(msg) or True), sent


def test_pings_at_half_the_interval():
    clock = Clock()
    dog, sent = sent_by({"WATCHDOG_USEC": "30000000"}, clock)
    assert dog.every == 15.0
    dog.tick()
    assert sent == ["WATCHDOG=1"]           # at once: the first loop turn
    for dt in (1.0, 10.0, 3.9):             # 14.9 s after the first: not yet
        clock.now += dt
        dog.tick()
    assert len(sent) == 1
    clock.now += 0.1
    dog.tick()
    dog.tick()
    assert len(sent) == 2
    clock.now += 60                         # a stuck loop that comes back pings once, not four times
    dog.tick()
    assert len(sent) == 3


@pytest.mark.parametrize("env", [
    {},                                                   # not under a watchdog
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},   # meant for another process
    {"WATCHDOG_USEC": "lots"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
])
def test_no_pings_unless_asked_for_this_process(env):
    clock = Clock()
    dog, sent = sent_by(env, clock)
    for _ in range(3):
        clock.now += 100
        dog.tick()
    assert dog.every is None and sent == []


def test_pid_named_is_this_one():
    dog, sent = sent_by({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, Clock())
    dog.tick()
    assert dog.every == 1.0 and sent == ["WATCHDOG=1"]


def test_the_agent_loop_pings_the_notify_socket(tmp_path):
    from tests.unit.test_pipeline_agent import make_agent
    from tests.support.fake_session import fake_proc
    from spanprobe.procfs import SysRoot

    fake_proc(tmp_path, 100, ["/usr/bin/python3", "app.py"], "/usr/bin/python3")
    path = f"/tmp/sp-wd-{uuid.uuid4().hex[:12]}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    try:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
        agent, session, _ = make_agent(SysRoot(tmp_path), env=env)
        agent.start()
        assert s.recv(4096).startswith(b"READY=1")
        agent.stop_after = 0.55
        agent.run()
        pings = []
        s.setblocking(False)
        while True:
            try:
                pings.append(s.recv(4096))
            except BlockingIOError:
                break
        assert set(pings) == {b"WATCHDOG=1"}
        assert 3 <= len(pings) <= 7          # every 0.1 s for 0.55 s, on a loaded machine
    finally:
        s.close()
        os.unlink(path)
