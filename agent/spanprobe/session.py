"""The kernel side as the agent sees it: one interface, and the typed requests to it.

Everything privileged (bcc, maps, probes, the event buffer) sits behind `KernelSession`;
loader.BpfSession implements it, tests/support/fake_session.FakeSession implements it
with dicts. The stages never touch it: what they need from the kernel they record as
requests (below), which the agent applies after each batch of events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Union

from .probes import Plan

LostCallback = Callable[[int], None]


class KernelSession(Protocol):
    plan: Plan                       # strategy, transport, probes (and those skipped)
    attached: list[str]              # hooks attached, for the ready line
    compile_s: float

    def select_pid(self, pid: int, excluded: bool = False, capture: int = 0) -> None: ...
    def select_comm(self, comm: str) -> None: ...
    def select_port(self, port: int) -> None: ...
    def note_listen_port(self, port: int) -> None:
        """A traced process listens on `port`: the kernel side keeps the local end of the
        connections accepted there (and, past what it was told, of none)."""
    def set_python(self, pid: int, layout, runtime: int) -> bool: ...
    def unset_python(self, pid: int) -> None: ...
    def adopt_connection(self, pid: int, fd: int, conn_id: int, role: int) -> bool:
        """False when the kernel side has that (pid, fd) already; raises when it can't."""
    def conn_is(self, pid: int, fd: int, conn_id: int) -> bool:
        """Is `fd` of `pid` still the connection `conn_id` for the kernel side (not closed,
        and not since reused by another)?"""
    def counters(self) -> dict[str, int]: ...
    def set_shed(self, permille: int) -> None:
        """Thousandths of connections to leave out from their next request (budget.py);
        the first call also tells the kernel side a budget is set."""
    def count_program_time(self) -> str | None:
        """Have the kernel account the programs' run time; None, or why it will not."""
    def programs_cpu_ns(self) -> int | None:
        """The programs' run time so far, when accounted."""
    def now_ns(self) -> int:
        """Now, on the clock of the events' timestamps (the kernel's bpf_ktime_get_ns)."""
    buffer_reader: str
    """Who reads the event buffer: "mapped" (ringbuf.py), or "bcc (why)"."""
    def open_buffer(self, on_lost: LostCallback, pages: int) -> None: ...
    def poll(self, timeout_ms: int) -> list[bytes]:
        """The records that came within `timeout_ms`, in order, each its own bytes."""
    def close(self) -> None: ...


class SessionOpener(Protocol):
    """Check privileges and the kernel, load the best plan: (session, strategies passed
    over with the reason). loader.open_session is the real one."""

    def __call__(self, settings, root, self_pid: int,
                 trace_all: bool) -> tuple[KernelSession, list[tuple[str, str]]]: ...


# ---- requests: what the stages ask of the kernel side, applied after each batch ----

@dataclass(frozen=True, slots=True)
class SelectRequest:
    """Trace this process (or, tracing everything, leave it out: excluded)."""
    pid: int
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    """Copy this many bytes per read/write of this process (its json_body rules need them)."""
    pid: int
    capture: int


@dataclass(frozen=True, slots=True)
class PythonCheckRequest:
    """A process serves HTTP: find out (once) whether it is a Python whose asyncio tasks
    can be linked; linking itself waits for its first outbound connection."""
    pid: int


@dataclass(frozen=True, slots=True)
class PythonLinkRequest:
    """A checked process opened a client connection: asyncio linking on, if it can be."""
    pid: int


@dataclass(frozen=True, slots=True)
class ProcessGone:
    """The process exited: whatever the kernel side holds for it goes."""
    pid: int


@dataclass(frozen=True, slots=True)
class ListenPortRequest:
    """A traced process accepted a connection on a port the kernel side was not told of
    (read from /proc for this one): tell it, so the next ones have their local end."""
    port: int


Request = Union[SelectRequest, CaptureRequest, PythonCheckRequest, PythonLinkRequest, ProcessGone,
                ListenPortRequest]
