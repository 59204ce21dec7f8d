"""The CPU budget (spanprobe.budget): the share of connections kept follows what they
cost, the agent's loop measures and sets it through the kernel session, and a connection
back from being shed is a counted gap, not a half exchange."""

from __future__ import annotations

import logging

import pytest

from spanprobe import events as ev
from spanprobe.budget import CpuBudget, Reading, next_share
from spanprobe.config import resolve
from spanprobe.errors import ConfigError
from tests.support.fake_session import FakeSession, data
from tests.unit.test_pipeline_agent import APP, REQ, RESP, exchange, make_agent, root, step  # noqa: F401


def test_over_budget_the_kept_share_falls_in_proportion():
    assert next_share(1.0, 40.0, 10.0) == pytest.approx(0.25)
    assert next_share(0.5, 20.0, 10.0) == pytest.approx(0.25)


def test_well_under_budget_it_grows_back_at_most_doubling_and_from_nothing_too():
    assert next_share(0.25, 1.0, 10.0) == pytest.approx(0.5)         # x10 asked, x2 allowed
    assert next_share(0.0, 0.0, 10.0) == pytest.approx(0.05)         # from nothing: a step
    assert next_share(0.9, 1.0, 10.0) == 1.0                         # never above all
    assert next_share(1.0, 5.0, 10.0) == 1.0


def test_near_the_budget_the_share_holds():
    assert next_share(0.5, 9.5, 10.0) == 0.5


def test_a_step_measures_the_agent_and_its_programs_over_the_window():
    b = CpuBudget(10.0)
    b.step(Reading(100.0, 1.0, 0))                                   # the first reading: a start
    assert b.permille == 0
    # 0.3 s of the agent and 0.1 s of programs in 2 s: 20% of a CPU, twice the budget
    b.step(Reading(102.0, 1.3, 100_000_000))
    assert b.permille == 500 and b.used_percent == pytest.approx(20.0)
    b.step(Reading(103.0, 1.395, 100_000_000))                       # 9.5%: near it, share held
    assert b.counters() == {"budget_cpu_percent_used": 9.5, "budget_shed_permille": 500}
    b.step(Reading(104.0, 1.4, 100_000_000))                         # 0.5%: all traced again
    assert b.permille == 0


def test_without_the_programs_run_time_the_agent_alone_is_measured():
    b = CpuBudget(10.0)
    b.step(Reading(0.0, 0.0, None))
    b.step(Reading(1.0, 0.4, None))
    assert b.permille == 750 and b.used_percent == pytest.approx(40.0)


def test_shedding_and_its_end_are_said_once_each(caplog):
    caplog.set_level(logging.INFO, "spanprobe")
    b = CpuBudget(10.0)
    b.step(Reading(0.0, 0.0, 0))
    b.step(Reading(1.0, 0.5, 0))
    b.step(Reading(2.0, 0.9, 0))
    assert caplog.text.count("shedding") == 1
    for t in range(3, 40):
        b.step(Reading(float(t), 0.9, 0))
    assert b.permille == 0
    assert caplog.text.count("every connection traced again") == 1


def test_a_budget_below_what_shedding_everything_leaves_is_said(caplog):
    b = CpuBudget(1.0)
    for t in range(12):
        b.step(Reading(float(t), 0.05 * t, 0))                       # 5% whatever is shed
    assert b.permille == 1000
    assert "below what the hooks and the agent cost idle" in caplog.text


def test_the_agent_sets_the_share_through_its_session_and_reports_it(root, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, "spanprobe")
    session = FakeSession()
    agent, session, _ = make_agent(root, {"budget.max_cpu_percent": 5.0}, session)
    agent.start()
    assert "max_cpu_percent 5.0% of one CPU, for the agent and its kernel programs" in caplog.text
    agent.budget.last = Reading(agent.budget.last.at - 1.0, agent.budget.last.agent_s - 0.2, 0)
    agent._budget_step()                                             # 20%+ of a CPU in a second
    assert session.shed and session.shed[-1] >= 750
    assert agent.counters()["budget_shed_permille"] == session.shed[-1]
    agent.shutdown()


def test_no_budget_no_share_and_no_counters(root):  # noqa: F811
    agent, session, _ = make_agent(root)
    agent.start()
    assert agent.budget is None and session.shed == []
    assert "budget_shed_permille" not in agent.counters()
    agent.shutdown()


def test_where_the_kernel_will_not_account_programs_the_agent_says_so(root, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, "spanprobe")
    session = FakeSession()
    session.program_time_refused = "BPF_ENABLE_STATS refused: Invalid argument"
    agent, _, _ = make_agent(root, {"budget.max_cpu_percent": 5.0}, session)
    agent.start()
    assert "for the agent alone: its kernel programs' run time is not known (BPF_ENABLE_STATS refused" in caplog.text
    agent.shutdown()


def test_a_connection_back_from_shedding_is_a_counted_gap_and_its_next_request_a_span(root):  # noqa: F811
    agent, session, exporter = make_agent(root)
    agent.start()
    session.inject(*exchange(1_000, close=False))
    # shed for a while (nothing sent), then back at a request boundary: the record says so
    session.inject(data(5_000, APP, 5, 7, ev.DIR_INGRESS, REQ, flags=ev.DATA_RESUMED),
                   data(5_010, APP, 5, 7, ev.DIR_EGRESS, RESP))
    step(agent)
    agent.shutdown()
    assert len(exporter.spans) == 2
    c = agent.counters()
    assert c["gaps_shed"] == 1 and c["exchanges_dropped_gap"] == 0


@pytest.mark.parametrize("value", ["0", "abc", "20000"])
def test_a_bad_budget_is_a_one_line_error_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        resolve({"budget.max_cpu_percent": value}, env={})
    msg = str(e.value)
    assert "budget.max_cpu_percent" in msg and "\n" not in msg


def test_the_budget_comes_from_the_environment_too():
    s = resolve({}, env={"SPANPROBE_BUDGET_MAX_CPU_PERCENT": "12.5"})
    assert s["budget.max_cpu_percent"] == 12.5


def test_a_share_the_kernel_side_did_not_take_is_written_again(root):  # noqa: F811
    session = FakeSession()
    agent, session, _ = make_agent(root, {"budget.max_cpu_percent": 5.0}, session)
    agent.start()
    assert session.shed == [0]                        # at start: a budget is set, nothing shed
    calls = []

    def refuse_once(permille):
        calls.append(permille)
        if len(calls) == 1:
            raise OSError("mmap write failed")
        session.shed.append(permille)
    session.set_shed = refuse_once
    agent.budget.last = Reading(agent.budget.last.at - 1.0, agent.budget.last.agent_s - 0.2, 0)
    with pytest.raises(OSError):
        agent._budget_step()
    # a second near the budget (4.8%): the share holds, and is written now all the same
    agent.budget.last = Reading(agent.budget.last.at - 1.0, agent.budget.last.agent_s - 0.048, 0)
    agent._budget_step()
    assert len(calls) == 2 and session.shed[-1] == calls[0] >= 750
    agent.shutdown()
