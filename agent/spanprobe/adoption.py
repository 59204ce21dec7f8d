"""Adopt, at READY, the connections the kernel side never saw open.

From launch to READY takes seconds (a /proc scan, compiles, attaching). A connection
accepted or connected in that window, before its process was selected in the kernel,
has no entry in the kernel's `conns` map, and the kernel side sends nothing of a
connection it does not know: a keep-alive connection opened then would go untraced for
its whole life. So once the probes are attached and the processes selected, /proc is
read again and every established TCP connection of a selected process is added to the
map unless the kernel side has it already (it saw it open: its own entry and open event
stay authoritative). An adopted connection is joined mid-stream and traced from its next
request head (streams.Assembler.adopt); what can't be adopted is counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .discovery import Selection, scan
from .procfs import SysRoot
from .session import KernelSession
from .streams import Assembler

log = logging.getLogger("spanprobe")


@dataclass
class Adoption:
    selected: list[int]       # processes selected now
    adopted: int = 0          # added to the kernel map: traced from their next request head
    known: int = 0            # the kernel side saw them open itself
    refused: int = 0          # the kernel map refused them (full, or the process is gone)


def adopt_established(root: SysRoot, selection: Selection, self_pid: int, session: KernelSession,
                      assembler: Assembler, already_selected: set[int]) -> Adoption:
    """Select the processes that match now and adopt the connections they hold.

    Call it after the probes are attached and `already_selected` is selected in the
    kernel: a connection opened after that is seen by the kernel side itself, one opened
    before is in /proc now."""
    selected, existing = scan(root, selection, self_pid)
    result = Adoption(selected)
    if not selection.trace_all:
        for pid in selected:
            if pid not in already_selected:       # started while the agent started
                session.select_pid(pid)
    now = time.monotonic_ns()
    for i, c in enumerate(existing):
        conn_id = now + i
        try:
            fresh = session.adopt_connection(c.pid, c.fd, conn_id, c.role)
        except OSError as exc:
            result.refused += 1
            log.debug("connection pid %d fd %d not adopted: %s", c.pid, c.fd, exc)
            continue
        if not fresh:
            result.known += 1
            continue
        assembler.adopt(c.pid, c.fd, conn_id, c.role, c.local, c.peer, now)
        result.adopted += 1
    assembler.counts["adoptions_refused"] += result.refused
    if result.refused:
        log.warning("%d established connections could not be adopted (kernel map refused them): "
                    "they are not traced", result.refused)
    return result
