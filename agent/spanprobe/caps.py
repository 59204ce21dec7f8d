"""Which privileges the agent needs, checked before anything is loaded.

The agent does not need root: it needs capabilities, and only these (kernel 5.8+):

  CAP_BPF              create maps, load the programs, read BTF
  CAP_PERFMON          attach them to tracepoints, kprobes, fentry and uprobes
  CAP_DAC_READ_SEARCH  read tracefs (/sys/kernel/tracing is mode 0700, owned by root)
  CAP_SYS_PTRACE       read /proc/<pid>/{fd,exe,environ} of other users' processes
                       (the sockets it adopts, the service name it reports)
  CAP_SYS_RESOURCE     only on kernels before 5.11 with a low RLIMIT_MEMLOCK (BPF memory
                       was charged to it then; the systemd unit sets LimitMEMLOCK instead)

CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (and is the only way before 5.8).
Each missing one is named with what it is for and the fix, on one line.
"""

from __future__ import annotations

import os
import re
import resource

CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
        "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}
WHY = {
    "CAP_BPF": "load BPF programs and maps",
    "CAP_PERFMON": "attach the probes",
    "CAP_DAC_READ_SEARCH": "read tracefs",
    "CAP_SYS_PTRACE": "read /proc/<pid>/fd, exe and environ of traced processes",
    "CAP_SYS_RESOURCE": "raise RLIMIT_MEMLOCK for BPF maps on kernels before 5.11",
    "CAP_SYS_ADMIN": "use BPF on kernels before 5.8 (no CAP_BPF/CAP_PERFMON there)",
}


def effective(status_text: str) -> int:
    """The CapEff mask from the text of /proc/self/status."""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.M)
    return int(m.group(1), 16) if m else 0


def has(mask: int, cap: str) -> bool:
    return bool(mask >> CAPS[cap] & 1)


def missing(mask: int, last_cap: int, kernel: tuple[int, int], memlock_unlimited: bool,
            tracefs_readable: bool) -> list[str]:
    """The capabilities that are needed and not in `mask`, most fundamental first."""
    out = []
    admin = has(mask, "CAP_SYS_ADMIN")
    if last_cap < CAPS["CAP_BPF"]:          # before 5.8 there is no CAP_BPF/CAP_PERFMON
        if not admin:
            out.append("CAP_SYS_ADMIN")
    else:
        out += [c for c in ("CAP_BPF", "CAP_PERFMON") if not admin and not has(mask, c)]
    if not tracefs_readable and not has(mask, "CAP_DAC_READ_SEARCH"):
        out.append("CAP_DAC_READ_SEARCH")
    if not has(mask, "CAP_SYS_PTRACE"):
        out.append("CAP_SYS_PTRACE")
    if kernel < (5, 11) and not memlock_unlimited and not has(mask, "CAP_SYS_RESOURCE"):
        out.append("CAP_SYS_RESOURCE")
    return out


def problem(names: list[str]) -> str:
    what = ", ".join(f"{n} ({WHY[n]})" for n in names)
    word = "capability" if len(names) == 1 else "capabilities"
    return (f"missing {word} {what}: run as root, or add {' '.join(names)} to the unit's "
            "AmbientCapabilities= and CapabilityBoundingSet=")


def check(tracefs_dirs: tuple[str, ...] = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")) -> str | None:
    """None when this process has what the agent needs, else the one-line problem."""
    try:
        with open("/proc/self/status") as f:
            mask = effective(f.read())
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read().strip())
    except (OSError, ValueError):
        return None                          # cannot tell: let the operations themselves fail
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    kernel = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    readable = any(os.access(os.path.join(d, "events"), os.R_OK | os.X_OK) for d in tracefs_dirs)
    names = missing(mask, last_cap, kernel, soft == resource.RLIM_INFINITY, readable)
    return problem(names) if names else None


def perf_denied_hint(paranoid: int | None, mask: int) -> str:
    """Why perf_event_open can say EACCES to an agent that holds CAP_PERFMON.

    Debian's kernels carry a patch that gives kernel.perf_event_paranoid a level 3 (their
    default): no perf events at all without CAP_SYS_ADMIN. Measured on Debian 12 and 13:
    CAP_PERFMON is not accepted there, so attaching to a tracepoint fails. Level 2 (the
    upstream default) still denies kernel profiling to unprivileged users."""
    if paranoid is None or paranoid < 3 or has(mask, "CAP_SYS_ADMIN"):
        return ""
    return (f"kernel.perf_event_paranoid is {paranoid}: this kernel then allows perf events only "
            "with CAP_SYS_ADMIN (CAP_PERFMON is not enough); set it to 2 "
            "(sysctl -w kernel.perf_event_paranoid=2, and in /etc/sysctl.d/) or run as root")


def perf_denied_hint_here() -> str:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            paranoid = int(f.read().strip())
        with open("/proc/self/status") as f:
            mask = effective(f.read())
    except (OSError, ValueError):
        return ""
    return perf_denied_hint(paranoid, mask)
