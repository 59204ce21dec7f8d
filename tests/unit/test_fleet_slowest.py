"""The ansible tier's summary of a play's slowest tasks (fleet_helpers.Run.slowest), from
the list Ansible's profile_tasks callback writes at the end of a run."""

from __future__ import annotations

from fleet_helpers import Run

RECAP = """PLAY RECAP *********************************************************************
debian12                   : ok=80   changed=50   unreachable=0    failed=0    skipped=9    rescued=0    ignored=0

TASKS RECAP ********************************************************************
Thursday 04 December 2026  13:36:49 +0000 (0:00:02.812)       0:03:49.112 *****
===============================================================================
spanprobe_agent : Restart spanprobe ------------------------------------- 36.12s
spanprobe_agent : Install the agent's Python dependencies from the wheelhouse into its venv 30.02s
hardening : Put AppArmor profiles in enforce mode ----------------------- 23.40s
"""


def run(tmp_path, text: str) -> Run:
    log = tmp_path / "play.log"
    log.write_text(text)
    return Run("first", 0, 1.0, log)


def test_the_slowest_tasks_in_order_long_names_too(tmp_path):
    assert run(tmp_path, RECAP).slowest(5) == [
        "36.12 s spanprobe_agent : Restart spanprobe",
        "30.02 s spanprobe_agent : Install the agent's Python dependencies from the wheelhouse into its venv",
        "23.40 s hardening : Put AppArmor profiles in enforce mode"]
    assert len(run(tmp_path, RECAP).slowest(2)) == 2


def test_a_run_that_ended_before_its_list_has_none(tmp_path):
    assert run(tmp_path, "TASK [x] ----- 3.00s\nfatal: [debian12]: UNREACHABLE!\n").slowest() == []
