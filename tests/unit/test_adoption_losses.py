"""Issue 15: connections opened while the agent starts are adopted at READY (adoption.py),
and kernel losses are warned about, rate-limited, with what they cost (losses.py)."""

from __future__ import annotations

import logging

import pytest

from spanprobe import events as ev
from spanprobe.adoption import adopt_established
from spanprobe.discovery import Selection
from spanprobe.losses import LossReport
from spanprobe.procfs import SysRoot
from spanprobe.streams import Assembler
from tests.support.fake_session import FakeSession, fake_proc, tcp_row

APP, LATE, OTHER = 100, 150, 200
LISTEN = (("0.0.0.0", 8000), 1001)
EARLY = (("127.0.0.1", 8000), ("127.0.0.1", 40000), 1002)     # accepted before launch
DURING = (("127.0.0.1", 8000), ("127.0.0.1", 40001), 1003)    # accepted while starting
OUT = (("127.0.0.1", 40002), ("127.0.0.1", 9000), 1004)       # a client connection


@pytest.fixture
def root(tmp_path) -> SysRoot:
    rows = [tcp_row(0, LISTEN[0], ("0.0.0.0", 0), 0x0A, LISTEN[1])]
    rows += [tcp_row(i + 1, local, peer, 0x01, inode) for i, (local, peer, inode) in enumerate((EARLY, DURING, OUT))]
    fake_proc(tmp_path, APP, ["/usr/bin/python3", "app.py"], "/usr/bin/python3.11",
              {3: LISTEN[1], 4: EARLY[2], 5: DURING[2], 6: OUT[2]}, rows)
    fake_proc(tmp_path, OTHER, ["/usr/bin/worker"], "/usr/bin/worker", {}, rows)
    return SysRoot(tmp_path)


def test_every_established_connection_the_kernel_lacks_is_adopted(root):
    session, asm = FakeSession(), Assembler(lambda x: None)
    session.adopted[(APP, 5)] = (999, ev.ROLE_SERVER)      # seen opening by the kernel side
    got = adopt_established(root, Selection(ports={8000}), 1, session, asm, {APP})
    assert got.selected == [APP]
    assert (got.adopted, got.known, got.refused) == (2, 1, 0)
    assert session.adopted[(APP, 5)] == (999, ev.ROLE_SERVER)   # the kernel's entry stays
    assert session.adopted[(APP, 4)][1] == ev.ROLE_SERVER
    assert session.adopted[(APP, 6)][1] == ev.ROLE_CLIENT
    assert set(asm.conns) == {(APP, 4), (APP, 6)}
    assert asm.conns[(APP, 4)].conn_id == session.adopted[(APP, 4)][0]
    assert asm.conns[(APP, 6)].local == OUT[0] and asm.conns[(APP, 6)].peer == OUT[1]
    assert asm.counts["connections_adopted"] == 2 and asm.counts["gaps_missed_start"] == 2


def test_a_process_started_meanwhile_is_selected_too(root, tmp_path):
    fake_proc(tmp_path, LATE, ["/usr/bin/python3", "app.py"], "/usr/bin/python3.11", {}, [])
    session = FakeSession()
    got = adopt_established(root, Selection(exe={"app.py"}), 1, session, Assembler(lambda x: None), {APP})
    assert sorted(got.selected) == [APP, LATE]
    assert set(session.traced) == {LATE}                  # APP was selected by the caller


def test_what_the_kernel_map_refuses_is_counted(root, caplog):
    class FullMap(FakeSession):
        def adopt_connection(self, pid, fd, conn_id, role):
            raise OSError(28, "conns map: No space left on device")

    asm = Assembler(lambda x: None)
    with caplog.at_level(logging.WARNING, "spanprobe"):
        got = adopt_established(root, Selection(ports={8000}), 1, FullMap(), asm, {APP})
    assert (got.adopted, got.refused) == (0, 3)
    assert asm.counts["adoptions_refused"] == 3 and not asm.conns
    assert "3 established connections could not be adopted" in caplog.text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_losses_warned_once_per_interval_with_their_cost(caplog):
    clock = Clock()
    report = LossReport(check_every=1.0, warn_every=10.0, clock=clock)
    counters = {"kernel_events_lost": 0, "perf_events_lost": 0, "exchanges_dropped_gap": 0}
    reads = []

    def read():
        reads.append(clock.now)
        return dict(counters)

    with caplog.at_level(logging.WARNING, "spanprobe"):
        assert report.poll(read) is False                 # nothing lost
        clock.now += 0.5
        counters.update(kernel_events_lost=830, exchanges_dropped_gap=12)
        assert report.poll(read) is False and len(reads) == 1   # not read again yet
        clock.now += 0.6
        assert report.poll(read) is True
        counters["kernel_events_lost"] = 900
        for _ in range(20):                               # within the interval: quiet
            clock.now += 0.4
            assert report.poll(read) is False
        clock.now += 2.0
        assert report.poll(read) is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "kernel_events_lost=+830" in warnings[0] and "exchanges_dropped_gap=+12" in warnings[0]
    assert "kernel_events_lost=+70" in warnings[1] and "exchanges_dropped_gap=+0" in warnings[1]
    assert "perf_events_lost" not in warnings[0]          # only what changed is listed as lost


def test_perf_buffer_losses_are_warned_too(caplog):
    report = LossReport(clock=Clock())
    with caplog.at_level(logging.WARNING, "spanprobe"):
        assert report.poll(lambda: {"perf_events_lost": 3}) is True
    assert "perf_events_lost=+3" in caplog.text
