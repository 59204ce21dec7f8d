"""How this project's own runs of ansible-playbook reach their guests: under Mitogen's
linear strategy when the `mitogen` package is installed (requirements/dev.txt), plain
otherwise or when SPANPROBE_ANSIBLE_MITOGEN=0.

Why: under TCG a guest spends seconds starting a Python interpreter, and plain Ansible
starts one per module call; Mitogen keeps one per guest for the whole play. Measured on a
Debian 13 guest: site.yml's first run, 114 tasks, 515 s with Mitogen; the plain strategy
had done 54 tasks of the second run in 620 s. Used by the image build (packer/build.py,
Packer's ansible provisioner inherits the environment) and the fleet tests
(tests/ansible). The roles and ansible.cfg are the same either way; only the transport
changes, and fleets applying the roles are free to use either.

Mitogen reads host-key checking from Ansible's setting, not from the SSH arguments of an
inventory, so it is turned off here for the throw-away build and test guests.
"""

from __future__ import annotations

import os
from pathlib import Path


def mitogen_env() -> dict[str, str]:
    """The environment that selects Mitogen's strategy, or {} for plain Ansible."""
    if os.environ.get("SPANPROBE_ANSIBLE_MITOGEN", "1") == "0":
        return {}
    try:
        import ansible_mitogen
    except ImportError:
        return {}
    return {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
            "ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_HOST_KEY_CHECKING": "False"}
