"""One gate for the slow VM tiers (ansible, image): they run only when asked for by their
environment variable; asked for, a missing prerequisite skips them loudly, or fails the
run under CI (a tier CI was told to run must not pass by skipping)."""

from __future__ import annotations

import os
import shutil

import pytest


def gate(items, enabled: bool, not_enabled: str, tools: tuple[str, ...], extra: str | None = None) -> None:
    """Mark `items` skipped (or stop the run under CI) when the tier can't run here."""
    if not items:
        return
    why = None
    if not enabled:
        why = not_enabled
    elif os.geteuid() != 0:
        why = "needs root (mmdebstrap, loop devices, QEMU)"
    else:
        why = next((f"{t} is missing: scripts/dev.sh installs it" for t in tools if shutil.which(t) is None), extra)
    if why is None:
        return
    if enabled and os.environ.get("CI") == "true":
        raise pytest.UsageError(f"this tier cannot run in CI: {why}")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=f"LOUD SKIP: {why}" if enabled else why))


def bpf_missing() -> str | None:
    """Why the real agent cannot run on this kernel here (None: it can): the tiers that
    run it (integration, frameworks, bench-smoke) skip loudly, or fail under CI."""
    if os.geteuid() != 0:
        return "needs root (BPF)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not importable: run scripts/dev.sh setup"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers: run scripts/dev.sh setup"
    return None
