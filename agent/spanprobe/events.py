"""Decode the kernel's event records (layouts: bpf/spanprobe_events.h).

Decoding uses struct.Struct on the raw bytes: measured here, ctypes structures cost
about twice as much per event. tests/unit/test_event_layout.py compiles the C header
and checks these formats against it field by field.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

EV_DATA: Final = 1
EV_WRITE_RESULT: Final = 2
EV_CONN_OPEN: Final = 3
EV_CONN_CLOSE: Final = 4
EV_CONN_PORTS: Final = 5
EV_PROC_EXEC: Final = 6
EV_PROC_FORK: Final = 7
EV_PROC_EXIT: Final = 8
EV_CONN_ADDR: Final = 9

DIR_INGRESS: Final = 0
DIR_EGRESS: Final = 1

ROLE_UNKNOWN: Final = 0
ROLE_SERVER: Final = 1
ROLE_CLIENT: Final = 2

DATA_AT_ENTRY: Final = 1
DATA_VECTOR: Final = 2
DATA_FAULT: Final = 4
DATA_RESUMED: Final = 8     # the connection was shed before this record (budget.py)

OPEN_EXIT_ONLY: Final = 1   # accept() seen returning only: the agent reads both ends

# Kernel counters (enum sp_counter), by slot.
COUNTERS = {
    0: "events_lost",
    1: "read_faults",
    2: "active_map_full",
    3: "conn_map_full",
    4: "iov_truncated",
    5: "non_http_connections",
    6: "accepted_map_full",
    7: "connections_shed",
    8: "requests_shed",
}
COUNTER_SLOTS: Final = 9
# Settings written through mmap(2) (enum sp_control), by slot.
CONTROL_SHED_PERMILLE: Final = 0
CONTROL_BUDGET: Final = 1
CONTROL_SLOTS: Final = 2
MAX_CAPTURE: Final = 4096
TAIL_BYTES: Final = 8

AF_UNIX: Final = 1
AF_INET: Final = 2
AF_INET6: Final = 10

HEADER: Final = struct.Struct("<QIIIiQ")          # struct sp_header
DATA: Final = struct.Struct("<qIBBHiI8s")         # struct sp_data_event after the header
WRITE_RESULT: Final = struct.Struct("<qq")        # struct sp_write_result_event
CONN: Final = struct.Struct("<iHBBHHI16s16s")     # struct sp_conn_event
PATH_BYTES: Final = 128
PROC: Final = struct.Struct("<II16s128s")         # struct sp_proc_event
HEADER_SIZE: Final = HEADER.size
DATA_BUF_OFFSET: Final = HEADER_SIZE + DATA.size
# Bound once: the compiled module calls a bound method directly, where `HEADER.unpack_from(...)`
# looks the method up on every call (a few hundred instructions of ~5,000 a record).
_unpack_header: Final = HEADER.unpack_from
_unpack_data: Final = DATA.unpack_from

# Sizes and offsets the layout test compares against the C compiler's.
LAYOUT = {
    "sp_header": HEADER.size,
    "sp_data_event.buf": DATA_BUF_OFFSET,
    "sp_write_result_event": HEADER.size + WRITE_RESULT.size,
    "sp_conn_event": HEADER.size + CONN.size,
    "sp_proc_event": HEADER.size + PROC.size,
}


# The hot classes below write their own __init__ (init=False): the one dataclasses
# generates is Python source made at import, which runs interpreted even in the compiled
# build (native.py), at about 0.4-0.9 µs a call against ~0.1 for a compiled one.
# tests/unit/test_native.py holds every dataclass of a compiled module to this.


@dataclass(slots=True, init=False)
class Header:
    ts_ns: int
    kind: int
    tgid: int
    tid: int
    fd: int
    conn_id: int

    def __init__(self, ts_ns: int, kind: int, tgid: int, tid: int, fd: int, conn_id: int) -> None:
        self.ts_ns = ts_ns
        self.kind = kind
        self.tgid = tgid
        self.tid = tid
        self.fd = fd
        self.conn_id = conn_id


@dataclass(slots=True, init=False)
class DataEvent:
    h: Header
    length: int          # bytes transferred (ingress) / asked (egress)
    data: bytes          # the captured prefix
    direction: int
    flags: int
    iov_index: int
    tail: bytes          # last bytes when not all were captured, else b""
    owner_fd: int = -1   # asyncio: server connection whose task made the call
    lost: int = 0        # the connection's data the kernel failed to send so far: a
                         # change since its previous event is a gap in the stream

    def __init__(self, h: Header, length: int, data: bytes, direction: int, flags: int,
                 iov_index: int, tail: bytes, owner_fd: int = -1, lost: int = 0) -> None:
        self.h = h
        self.length = length
        self.data = data
        self.direction = direction
        self.flags = flags
        self.iov_index = iov_index
        self.tail = tail
        self.owner_fd = owner_fd
        self.lost = lost


@dataclass(slots=True, init=False)
class WriteResult:
    h: Header
    ret: int
    asked: int

    def __init__(self, h: Header, ret: int, asked: int) -> None:
        self.h = h
        self.ret = ret
        self.asked = asked


@dataclass(slots=True, init=False)
class ConnEvent:
    h: Header
    listen_fd: int
    family: int
    role: int
    flags: int
    peer: tuple[str, int] | None
    local: tuple[str, int] | None

    def __init__(self, h: Header, listen_fd: int, family: int, role: int, flags: int,
                 peer: tuple[str, int] | None, local: tuple[str, int] | None) -> None:
        self.h = h
        self.listen_fd = listen_fd
        self.family = family
        self.role = role
        self.flags = flags
        self.peer = peer
        self.local = local


@dataclass(slots=True, init=False)
class ProcEvent:
    h: Header
    ppid: int
    comm: str
    filename: str

    def __init__(self, h: Header, ppid: int, comm: str, filename: str) -> None:
        self.h = h
        self.ppid = ppid
        self.comm = comm
        self.filename = filename


class DecodeError(ValueError):
    pass


# An address's text by its 16 raw bytes, per family: a connection-per-request server's
# peers and local ends repeat, and inet_ntop (sprintf underneath) was ~0.3 µs an address,
# a quarter of decoding an open record. Cleared when full.
ADDR_CACHE_LIMIT: Final = 4096
_V4_TEXT: Final[dict[bytes, str]] = {}
_V6_TEXT: Final[dict[bytes, str]] = {}
_V4_MAPPED: Final = b"\0" * 10 + b"\xff\xff"


def _remember(cache: dict[bytes, str], raw: bytes, text: str) -> str:
    if len(cache) >= ADDR_CACHE_LIMIT:
        cache.clear()
    cache[raw] = text
    return text


def _addr(family: int, raw: bytes, port: int) -> tuple[str, int] | None:
    """(address, port), or None for an end the kernel did not fill (all zero)."""
    if family == AF_INET:
        text = _V4_TEXT.get(raw)
        if text is None:
            text = _remember(_V4_TEXT, raw, socket.inet_ntop(socket.AF_INET, raw[:4]))
        if port == 0 and text == "0.0.0.0":
            return None
        return text, port
    if family == AF_INET6:
        text = _V6_TEXT.get(raw)
        if text is None:
            if raw[:12] == _V4_MAPPED:
                text = socket.inet_ntop(socket.AF_INET, raw[12:16])
            else:
                text = socket.inet_ntop(socket.AF_INET6, raw)
            text = _remember(_V6_TEXT, raw, text)
        if port == 0 and text == "::":
            return None
        return text, port
    return None


def decode(raw: bytes):
    """One record -> DataEvent | WriteResult | ConnEvent | ProcEvent."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than a header")
    # declared: compared and sliced with as machine integers, not as objects
    kind: int
    length: int
    captured: int
    ts_ns, kind, tgid, tid, fd, conn_id = _unpack_header(raw)
    h = Header(ts_ns, kind, tgid, tid, fd, conn_id)
    off = HEADER_SIZE
    if kind == EV_DATA:
        length, captured, direction, flags, iov_index, owner_fd, lost, tail = _unpack_data(raw, off)
        data = raw[DATA_BUF_OFFSET:DATA_BUF_OFFSET + captured]
        if len(data) != captured:
            raise DecodeError(f"data record truncated: {len(data)} of {captured} bytes")
        return DataEvent(h, length, data, direction, flags, iov_index,
                         tail if length > captured else b"", owner_fd, lost)
    if kind == EV_WRITE_RESULT:
        ret, asked = WRITE_RESULT.unpack_from(raw, off)
        return WriteResult(h, ret, asked)
    if kind in (EV_CONN_OPEN, EV_CONN_CLOSE, EV_CONN_PORTS, EV_CONN_ADDR):
        listen_fd, family, role, flags, pport, lport, _pad, paddr, laddr = CONN.unpack_from(raw, off)
        return ConnEvent(h, listen_fd, family, role, flags, _addr(family, paddr, pport),
                         _addr(family, laddr, lport))
    if kind in (EV_PROC_EXEC, EV_PROC_FORK, EV_PROC_EXIT):
        ppid, _pad, comm, filename = PROC.unpack_from(raw, off)
        return ProcEvent(h, ppid, comm.split(b"\0", 1)[0].decode(errors="replace"),
                         filename.split(b"\0", 1)[0].decode(errors="replace"))
    raise DecodeError(f"unknown event kind {kind}")
