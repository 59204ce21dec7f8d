"""The capability check that replaced `euid == 0` (agent/spanprobe/caps.py)."""

import io
import os
import re
import resource

import pytest

from spanprobe import caps

ALL = sum(1 << n for n in caps.CAPS.values())
NEEDED = ("CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE")


def mask(*names):
    return sum(1 << caps.CAPS[n] for n in names)


def test_effective_mask_from_proc_status():
    text = "Name:\tspanprobe\nCapInh:\t0000000000000000\nCapEff:\t000000c000080004\n"
    m = caps.effective(text)
    assert caps.has(m, "CAP_BPF") and caps.has(m, "CAP_PERFMON") and caps.has(m, "CAP_SYS_PTRACE")
    assert caps.has(m, "CAP_DAC_READ_SEARCH") and not caps.has(m, "CAP_SYS_ADMIN")


def test_root_and_the_four_are_enough_on_a_modern_kernel():
    assert caps.missing(ALL, 40, (6, 12), False, True) == []
    assert caps.missing(mask(*NEEDED), 40, (6, 12), False, False) == []


def test_each_missing_capability_is_named():
    for drop in NEEDED:
        left = mask(*(n for n in NEEDED if n != drop))
        assert caps.missing(left, 40, (6, 1), False, False) == [drop]


def test_tracefs_readable_needs_no_dac_capability():
    assert caps.missing(mask("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"), 40, (6, 1), False, True) == []


def test_sys_admin_stands_in_for_bpf_and_perfmon_and_is_needed_before_5_8():
    assert caps.missing(mask("CAP_SYS_ADMIN", "CAP_SYS_PTRACE"), 40, (6, 1), False, True) == []
    assert caps.missing(mask("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"), 37, (5, 4), True, True) \
        == ["CAP_SYS_ADMIN"]


def test_memlock_before_5_11():
    four = mask(*NEEDED)
    assert caps.missing(four, 40, (5, 10), False, True) == ["CAP_SYS_RESOURCE"]
    assert caps.missing(four, 40, (5, 10), True, True) == []


def test_message_is_one_line_naming_the_capability_and_the_fix():
    msg = caps.problem(["CAP_PERFMON"])
    assert "\n" not in msg
    assert msg.startswith("missing capability CAP_PERFMON (attach the probes)")
    assert "AmbientCapabilities=" in msg and "CapabilityBoundingSet=" in msg


TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def cap_sets(status_text: str) -> dict[str, int]:
    """The Cap* masks of a /proc/<pid>/status text, parsed apart from caps.effective."""
    sets = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            sets[key] = int(value.strip(), 16)
    return sets


def host_inputs(tracefs_dirs=TRACEFS) -> tuple[int, tuple[int, int], bool, bool]:
    """What caps.check() reads besides CapEff, read here on its own."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    kernel = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    memlock_unlimited = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == resource.RLIM_INFINITY
    tracefs = any(os.access(os.path.join(d, "events"), os.R_OK | os.X_OK) for d in tracefs_dirs)
    return last_cap, kernel, memlock_unlimited, tracefs


def test_this_process():
    # the verdict on this process follows from its own /proc/self/status
    with open("/proc/self/status") as f:
        text = f.read()
    sets = cap_sets(text)
    eff = sets["CapEff"]
    assert caps.effective(text) == eff
    held = {name for name, bit in caps.CAPS.items() if eff >> bit & 1}
    last_cap, kernel, memlock_unlimited, tracefs = host_inputs()
    expected = caps.missing(eff, last_cap, kernel, memlock_unlimited, tracefs)
    assert not set(expected) & held                 # only what CapEff lacks is ever named
    problem = caps.check()
    assert problem == (caps.problem(expected) if expected else None)
    if held >= set(NEEDED) and kernel >= (5, 11):   # e.g. root with every capability
        assert problem is None


def test_this_process_without_sys_ptrace(monkeypatch):
    # the same status with CAP_SYS_PTRACE taken out of CapEff: check() must name it
    with open("/proc/self/status") as f:
        text = f.read()
    eff = cap_sets(text)["CapEff"] & ~(1 << caps.CAPS["CAP_SYS_PTRACE"])
    text = re.sub(r"^CapEff:.*$", f"CapEff:\t{eff:016x}", text, flags=re.M)
    real_open = open

    def status_open(path, *args, **kw):
        return io.StringIO(text) if path == "/proc/self/status" else real_open(path, *args, **kw)

    monkeypatch.setattr(caps, "open", status_open, raising=False)
    expected = caps.missing(eff, *host_inputs())
    assert "CAP_SYS_PTRACE" in expected
    assert caps.check() == caps.problem(expected)


PERFMON_ONLY = 1 << caps.CAPS["CAP_PERFMON"] | 1 << caps.CAPS["CAP_BPF"]


@pytest.mark.parametrize("paranoid,mask,hinted", [
    (3, PERFMON_ONLY, True),                                   # Debian's default level
    (4, PERFMON_ONLY, True),
    (2, PERFMON_ONLY, False),                                  # CAP_PERFMON suffices
    (3, PERFMON_ONLY | 1 << caps.CAPS["CAP_SYS_ADMIN"], False),
    (None, PERFMON_ONLY, False),                               # unknown: no guess
])
def test_perf_denied_hint(paranoid, mask, hinted):
    hint = caps.perf_denied_hint(paranoid, mask)
    assert bool(hint) is hinted
    if hinted:
        assert f"perf_event_paranoid is {paranoid}" in hint and "set it to 2" in hint
