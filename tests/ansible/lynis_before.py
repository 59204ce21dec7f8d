#!/usr/bin/env python3
"""The stock fleet image's lynis index ("before" any role ran), audited now unless an earlier
run kept it for the same key (fleet_helpers.lynis_before, whose lock makes it one audit).

The test command starts this in the background once the Debian 13 fleet image is built,
under SCHED_IDLE (`chrt --idle 0`): a lynis run keeps about one core busy for ~10 minutes
under TCG, the tiers leave some CPU idle, and a SCHED_IDLE thread gets nothing else (a
waking task of any other policy preempts it at once). The Ansible tier's test then finds
the index this run measured (said so, not counted as reused), or waits for it, raising it
to normal priority (fleet_helpers._hurry), beside lynis "after", which leaves a core idle.
Usage: lynis_before.py [guest...] (default: the tier's LYNIS_GUESTS)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "agent"), str(REPO / "packer" / "base"), str(REPO / "ansible"), str(HERE)]

import fleet_helpers  # noqa: E402


def main(argv: list[str]) -> int:
    # stopped by the test command (its tiers ended without waiting for this): the VM too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = argv or fleet_helpers.LYNIS_GUESTS
    manifests = fleet_helpers.build_images(names)
    rc = 0
    for name in names:
        t = time.monotonic()
        # with only the CPU the tiers leave idle, a boot and an audit take longer than the
        # tier allows them (300 s, 30 min): seen, an audit at nice 10 beside the kernel and
        # image tiers got ~40% of a core and was cut off at 30 minutes, close to its end;
        # under SCHED_IDLE it may get less until the tier waits for it
        idx, reused = fleet_helpers.lynis_before(name, manifests[name], slow=10.0)
        how = f"reused ({reused})" if reused else "measured now"
        print(f"lynis before {name}: {idx}, {how}, {time.monotonic() - t:.0f} s", flush=True)
        if idx is None:
            rc = 1
        if fleet_helpers.SUMMARY["times"]:
            print(json.dumps(fleet_helpers.SUMMARY["times"], default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
