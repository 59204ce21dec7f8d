"""Issue 15, item 3: every exec on the host is reported by the kernel, exits only for traced
processes. What the agent keeps per process must be bounded by what it traces, not by what
runs on the host, and /proc is read only when the answer decides something."""

from __future__ import annotations

from spanprobe import events as ev
from tests.support.fake_session import proc
from tests.unit.test_pipeline_agent import APP, make_agent, root, step  # noqa: F401 (fixture)

STORM = range(5000, 7000)     # /bin/true run 2,000 times elsewhere on the host


def _storm(session, reads):
    session.inject(*(proc(ev.EV_PROC_EXEC, 10 + i, pid, comm="true", filename="/bin/true")
                     for i, pid in enumerate(STORM)))


def _count_proc_reads(agent) -> list[int]:
    reads: list[int] = []
    real = agent.registry.read

    def counting(pid):
        reads.append(pid)
        return real(pid)
    agent.registry.read = counting
    return reads


def test_an_exec_storm_elsewhere_leaves_nothing_behind_when_selecting_by_port(root):
    agent, session, _ = make_agent(root)            # --port 8000
    agent.start()
    before = agent.registry.size()
    reads = _count_proc_reads(agent)
    _storm(session, reads)
    step(agent)
    assert agent.registry.size() == before
    assert reads == []                               # nothing to decide: /proc not read
    assert not set(STORM) & set(session.traced)
    agent.shutdown()


def test_an_exec_storm_with_exe_selection_reads_proc_but_keeps_only_matches(root, tmp_path):
    agent, session, _ = make_agent(root, {"select.ports": [], "select.exe": ["worker"]})
    agent.start()
    before = agent.registry.size()
    reads = _count_proc_reads(agent)
    _storm(session, reads)
    step(agent)
    assert len(reads) == len(STORM)                  # a path or script name needs /proc
    assert agent.registry.size() == before           # none of them matched: none kept
    agent.shutdown()


def test_trace_all_keeps_entries_only_until_the_reported_exit(root):
    agent, session, _ = make_agent(root, {"select.ports": []})
    agent.start()
    before = agent.registry.size()
    reads = _count_proc_reads(agent)
    _storm(session, reads)
    step(agent)
    assert reads == []                               # identity read later, if a connection needs it
    session.inject(*(proc(ev.EV_PROC_EXIT, 9000 + i, pid) for i, pid in enumerate(STORM)))
    step(agent)
    assert agent.registry.size() == before
    agent.shutdown()


def test_a_traced_process_that_execs_is_read_again_and_kept(root):
    agent, session, _ = make_agent(root)            # APP was selected at start (port 8000)
    agent.start()
    session.inject(proc(ev.EV_PROC_EXEC, 10, APP, comm="python3", filename="/usr/bin/python3.11"))
    step(agent)
    assert APP in agent.registry.procs
    agent.shutdown()


def test_the_stats_show_how_many_process_entries_are_held(root, caplog):
    import json
    import logging
    caplog.set_level(logging.INFO, "spanprobe")
    agent, session, _ = make_agent(root)
    agent.start()
    session.inject(*(proc(ev.EV_PROC_EXEC, 10 + i, pid, comm="true", filename="/bin/true")
                     for i, pid in enumerate(STORM)))
    step(agent)
    agent.shutdown()
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final {")]
    assert json.loads(final[0][len("final "):])["processes_known"] == agent.registry.size() < 10
