"""The event records: Python struct formats (spanprobe.events) against the C header
(bpf/spanprobe_events.h) as the host C compiler lays it out, and decode() round trips."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from spanprobe import events as ev

HEADER_H = Path(__file__).resolve().parents[2] / "bpf" / "spanprobe_events.h"

# (C struct, Python struct, offset of that Python struct in the C struct, field names in
# the order of the format). Every field of every record, so a field added on one side only
# shows up as an offset or size difference.
RECORDS = [
    ("sp_header", ev.HEADER, 0, ["ts_ns", "kind", "tgid", "tid", "fd", "conn_id"]),
    ("sp_data_event", ev.DATA, ev.HEADER.size,
     ["len", "captured", "direction", "flags", "iov_index", "owner_fd", "lost", "tail"]),
    ("sp_write_result_event", ev.WRITE_RESULT, ev.HEADER.size, ["ret", "asked"]),
    ("sp_conn_event", ev.CONN, ev.HEADER.size,
     ["listen_fd", "family", "role", "flags", "peer_port", "local_port", "pad",
      "peer_addr", "local_addr"]),
    ("sp_proc_event", ev.PROC, ev.HEADER.size, ["ppid", "pad", "comm", "filename"]),
]
RECORDS_WITH_HEADER = ["sp_data_event", "sp_write_result_event", "sp_conn_event", "sp_proc_event"]

CONSTANTS = {
    "SP_MAX_CAPTURE": ev.MAX_CAPTURE,
    "SP_TAIL_BYTES": ev.TAIL_BYTES,
    "SP_PATH_BYTES": ev.PATH_BYTES,
    "SP_EV_DATA": ev.EV_DATA,
    "SP_EV_WRITE_RESULT": ev.EV_WRITE_RESULT,
    "SP_EV_CONN_OPEN": ev.EV_CONN_OPEN,
    "SP_EV_CONN_CLOSE": ev.EV_CONN_CLOSE,
    "SP_EV_CONN_PORTS": ev.EV_CONN_PORTS,
    "SP_EV_PROC_EXEC": ev.EV_PROC_EXEC,
    "SP_EV_PROC_FORK": ev.EV_PROC_FORK,
    "SP_EV_PROC_EXIT": ev.EV_PROC_EXIT,
    "SP_EV_CONN_ADDR": ev.EV_CONN_ADDR,
    "SP_DIR_INGRESS": ev.DIR_INGRESS,
    "SP_DIR_EGRESS": ev.DIR_EGRESS,
    "SP_ROLE_UNKNOWN": ev.ROLE_UNKNOWN,
    "SP_ROLE_SERVER": ev.ROLE_SERVER,
    "SP_ROLE_CLIENT": ev.ROLE_CLIENT,
    "SP_DATA_AT_ENTRY": ev.DATA_AT_ENTRY,
    "SP_DATA_VECTOR": ev.DATA_VECTOR,
    "SP_DATA_FAULT": ev.DATA_FAULT,
    "SP_DATA_RESUMED": ev.DATA_RESUMED,
    "SP_CTL_SHED_PERMILLE": ev.CONTROL_SHED_PERMILLE,
    "SP_CTL_BUDGET": ev.CONTROL_BUDGET,
    "SP_CTL_MAX": ev.CONTROL_SLOTS,
    "SP_OPEN_EXIT_ONLY": ev.OPEN_EXIT_ONLY,
    "SP_CNT_MAX": ev.COUNTER_SLOTS,
}
COUNTER_ENUM = {
    "events_lost": "SP_CNT_EVENTS_LOST",
    "read_faults": "SP_CNT_READ_FAULTS",
    "active_map_full": "SP_CNT_ACTIVE_FULL",
    "conn_map_full": "SP_CNT_CONN_FULL",
    "iov_truncated": "SP_CNT_IOV_TRUNCATED",
    "non_http_connections": "SP_CNT_NON_HTTP",
    "accepted_map_full": "SP_CNT_ACCEPTED_FULL",
    "connections_shed": "SP_CNT_CONNS_SHED",
    "requests_shed": "SP_CNT_REQUESTS_SHED",
}


def python_fields(st: struct.Struct, names: list[str], base: int):
    """name -> (offset, size, signed or None for byte arrays), from a '<' format."""
    fmt = st.format
    assert fmt[0] == "<", f"{fmt}: must be little-endian with no implicit padding"
    codes = re.findall(r"(\d*)([a-zA-Z?])", fmt[1:])
    assert len(codes) == len(names), (fmt, names)
    out, off = {}, base
    for (count, code), name in zip(codes, names):
        size = struct.calcsize("<" + count + code)
        signed = None if code == "s" else code.islower()
        out[name] = (off, size, signed)
        off += size
    assert off == base + st.size
    return out


def c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             f'#include "{HEADER_H.name}"', "int main(void) {"]
    for cname, st, _base, names in RECORDS:
        codes = re.findall(r"(\d*)([a-zA-Z?])", st.format[1:])
        for (_n, code), field in zip(codes, names):
            member = f"((struct {cname} *)0)->{field}"
            signed = "-1" if code == "s" else f"(int)(((__typeof__({member}))-1) < 0)"
            lines.append(f'    printf("F {cname}.{field} %zu %zu %d\\n", '
                         f"offsetof(struct {cname}, {field}), sizeof({member}), {signed});")
        lines.append(f'    printf("S {cname} %zu\\n", sizeof(struct {cname}));')
    lines.append('    printf("F sp_data_event.buf %zu %zu -1\\n", offsetof(struct sp_data_event, buf), '
                 "sizeof(((struct sp_data_event *)0)->buf));")
    for rec in RECORDS_WITH_HEADER:
        lines.append(f'    printf("F {rec}.h %zu %zu -1\\n", offsetof(struct {rec}, h), '
                     f"sizeof(((struct {rec} *)0)->h));")
    for name in list(CONSTANTS) + list(COUNTER_ENUM.values()) + ["SP_BUF_SIZE"]:
        lines.append(f'    printf("C {name} %lld\\n", (long long)({name}));')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler on this host")
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "layout.c", d / "layout"
    src.write_text(c_program())
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-I", str(HEADER_H.parent),
                            "-o", str(exe), str(src)], capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10, check=True)
    fields, sizes, consts = {}, {}, {}
    for line in run.stdout.splitlines():
        kind, name, *rest = line.split()
        if kind == "F":
            off, size, signed = map(int, rest)
            fields[name] = (off, size, None if signed < 0 else bool(signed))
        elif kind == "S":
            sizes[name] = int(rest[0])
        else:
            consts[name] = int(rest[0])
    return fields, sizes, consts


@pytest.mark.parametrize("cname,st,base,names", RECORDS, ids=[r[0] for r in RECORDS])
def test_every_field_matches_c(c_layout, cname, st, base, names):
    fields, sizes, _ = c_layout
    for name, want in python_fields(st, names, base).items():
        assert fields[f"{cname}.{name}"] == want, f"{cname}.{name}: C (offset, size, signed)"
    if cname != "sp_data_event":
        # the Python fields tile the whole record: no C field is missing on our side
        assert sizes[cname] == base + st.size


def test_header_embedded_first_in_every_record(c_layout):
    fields, _, _ = c_layout
    for rec in RECORDS_WITH_HEADER:
        assert fields[f"{rec}.h"] == (0, ev.HEADER.size, None)


def test_data_buffer(c_layout):
    fields, sizes, consts = c_layout
    assert fields["sp_data_event.buf"] == (ev.DATA_BUF_OFFSET, consts["SP_BUF_SIZE"], None)
    assert consts["SP_BUF_SIZE"] == 2 * ev.MAX_CAPTURE
    assert sizes["sp_data_event"] == ev.DATA_BUF_OFFSET + consts["SP_BUF_SIZE"]


def test_layout_table_matches_c(c_layout):
    fields, sizes, _ = c_layout
    assert ev.LAYOUT == {
        "sp_header": sizes["sp_header"],
        "sp_data_event.buf": fields["sp_data_event.buf"][0],
        "sp_write_result_event": sizes["sp_write_result_event"],
        "sp_conn_event": sizes["sp_conn_event"],
        "sp_proc_event": sizes["sp_proc_event"],
    }


def test_constants_and_enums_match_c(c_layout):
    _, _, consts = c_layout
    for name, value in CONSTANTS.items():
        assert consts[name] == value, name
    for slot, name in ev.COUNTERS.items():
        assert consts[COUNTER_ENUM[name]] == slot, name
    assert max(ev.COUNTERS) < ev.COUNTER_SLOTS


def test_known_sizes():
    # independent of the compiler: catches a format edited together with LAYOUT
    assert (ev.HEADER.size, ev.DATA.size, ev.WRITE_RESULT.size, ev.CONN.size, ev.PROC.size) == \
        (32, 32, 16, 48, 152)
    assert ev.DATA_BUF_OFFSET == 64


# ---------------------------------------------------------------- decode round trips

def header(kind: int, ts=123456789, tgid=100, tid=101, fd=7, conn_id=0xDEADBEEF01) -> bytes:
    return ev.HEADER.pack(ts, kind, tgid, tid, fd, conn_id)


def data_record(payload: bytes, length: int, tail: bytes = b"\0" * 8, direction=ev.DIR_EGRESS,
                flags=0, iov=0, lost=0, **hk) -> bytes:
    return (header(ev.EV_DATA, **hk)
            + ev.DATA.pack(length, len(payload), direction, flags, iov, -1, lost, tail) + payload)


def test_decode_data_fully_captured():
    raw = data_record(b"GET / HTTP/1.1\r\n\r\n", 18, tail=b"ignored!", fd=-1)
    e = ev.decode(raw)
    assert isinstance(e, ev.DataEvent)
    assert e.h == ev.Header(123456789, ev.EV_DATA, 100, 101, -1, 0xDEADBEEF01)
    assert (e.length, e.data, e.direction, e.flags, e.iov_index) == \
        (18, b"GET / HTTP/1.1\r\n\r\n", ev.DIR_EGRESS, 0, 0)
    assert e.tail == b""                     # everything captured: no tail


def test_decode_data_with_gap_keeps_tail():
    raw = data_record(b"x" * 64, 100000, tail=b"0\r\n\r\n\0\0\0", direction=ev.DIR_INGRESS,
                      flags=ev.DATA_VECTOR | ev.DATA_AT_ENTRY, iov=3)
    e = ev.decode(raw)
    assert (e.length, len(e.data), e.direction, e.flags, e.iov_index) == \
        (100000, 64, ev.DIR_INGRESS, 3, 3)
    assert e.tail == b"0\r\n\r\n\0\0\0"


def test_decode_data_loss_count():
    # unsigned 32 bits in the C header: the full range round-trips
    for lost in (0, 1, 2**32 - 1):
        assert ev.decode(data_record(b"GET ", 4, lost=lost)).lost == lost


def test_decode_data_ignores_bytes_after_captured():
    raw = data_record(b"abc", 3) + b"garbage after the record"
    assert ev.decode(raw).data == b"abc"


def test_decode_data_negative_length():
    e = ev.decode(data_record(b"", -11, flags=ev.DATA_FAULT))
    assert (e.length, e.data, e.flags, e.tail) == (-11, b"", ev.DATA_FAULT, b"")


def test_decode_truncated_data_record():
    raw = data_record(b"abcdef", 6)[:-2]
    with pytest.raises(ev.DecodeError, match="4 of 6"):
        ev.decode(raw)


def test_decode_write_result():
    raw = header(ev.EV_WRITE_RESULT) + ev.WRITE_RESULT.pack(-11, 4096)
    e = ev.decode(raw)
    assert isinstance(e, ev.WriteResult)
    assert (e.ret, e.asked, e.h.kind) == (-11, 4096, ev.EV_WRITE_RESULT)


def conn_record(kind, family, peer: bytes, pport: int, local: bytes, lport: int,
                listen_fd=3, role=ev.ROLE_SERVER, flags=0) -> bytes:
    return header(kind) + ev.CONN.pack(listen_fd, family, role, flags, pport, lport, 0,
                                       peer.ljust(16, b"\0"), local.ljust(16, b"\0"))


def test_decode_conn_ipv4():
    raw = conn_record(ev.EV_CONN_OPEN, ev.AF_INET, socket.inet_aton("10.1.2.3"), 51234,
                      socket.inet_aton("127.0.0.1"), 8000)
    e = ev.decode(raw)
    assert isinstance(e, ev.ConnEvent)
    assert (e.listen_fd, e.family, e.role, e.flags) == (3, ev.AF_INET, ev.ROLE_SERVER, 0)
    assert e.peer == ("10.1.2.3", 51234)
    assert e.local == ("127.0.0.1", 8000)


def test_decode_conn_open_from_an_unseen_accept():
    """What accept()'s exit alone sends: no listener, no family, no ends, the flag."""
    e = ev.decode(conn_record(ev.EV_CONN_OPEN, 0, b"", 0, b"", 0, listen_fd=-1, flags=ev.OPEN_EXIT_ONLY))
    assert (e.listen_fd, e.role, e.flags, e.peer, e.local) == (-1, ev.ROLE_SERVER, ev.OPEN_EXIT_ONLY, None, None)


def test_decode_conn_ipv6():
    peer = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    local = socket.inet_pton(socket.AF_INET6, "::1")
    e = ev.decode(conn_record(ev.EV_CONN_CLOSE, ev.AF_INET6, peer, 443, local, 40000,
                              listen_fd=-1, role=ev.ROLE_CLIENT))
    assert (e.h.kind, e.listen_fd, e.role) == (ev.EV_CONN_CLOSE, -1, ev.ROLE_CLIENT)
    assert e.peer == ("2001:db8::1", 443)
    assert e.local == ("::1", 40000)


def test_decode_conn_v4_mapped_is_ipv4():
    mapped = b"\0" * 10 + b"\xff\xff" + socket.inet_aton("192.168.0.9")
    e = ev.decode(conn_record(ev.EV_CONN_PORTS, ev.AF_INET6, mapped, 80, mapped, 33000))
    assert e.peer == ("192.168.0.9", 80)
    assert e.local == ("192.168.0.9", 33000)


def test_decode_conn_unknown_addresses():
    e = ev.decode(conn_record(ev.EV_CONN_OPEN, ev.AF_INET, socket.inet_aton("1.2.3.4"), 80, b"", 0))
    assert e.peer == ("1.2.3.4", 80) and e.local is None
    e = ev.decode(conn_record(ev.EV_CONN_OPEN, ev.AF_INET6, b"", 0, b"", 0))
    assert e.peer is None and e.local is None
    e = ev.decode(conn_record(ev.EV_CONN_OPEN, ev.AF_UNIX, b"abcd", 1, b"", 0))
    assert e.family == ev.AF_UNIX and e.peer is None and e.local is None


def test_decode_conn_zero_address_with_port_is_kept():
    e = ev.decode(conn_record(ev.EV_CONN_PORTS, ev.AF_INET, b"", 0, b"", 8080))
    assert e.local == ("0.0.0.0", 8080)


@pytest.mark.parametrize("kind", [ev.EV_PROC_EXEC, ev.EV_PROC_FORK, ev.EV_PROC_EXIT])
def test_decode_proc(kind):
    raw = header(kind, tgid=200) + ev.PROC.pack(1, 0, b"gunicorn\0junk\0\0\0", b"/usr/bin/gunicorn\0x")
    e = ev.decode(raw)
    assert isinstance(e, ev.ProcEvent)
    assert (e.h.kind, e.h.tgid, e.ppid, e.comm, e.filename) == (kind, 200, 1, "gunicorn", "/usr/bin/gunicorn")


def test_decode_proc_full_width_comm():
    e = ev.decode(header(ev.EV_PROC_EXEC) + ev.PROC.pack(9, 0, b"abcdefghijklmnop", b""))
    assert e.comm == "abcdefghijklmnop"


def test_decode_short_record():
    with pytest.raises(ev.DecodeError, match="shorter than a header"):
        ev.decode(b"\0" * (ev.HEADER.size - 1))


def test_decode_unknown_kind():
    with pytest.raises(ev.DecodeError, match="unknown event kind 99"):
        ev.decode(header(99) + b"\0" * 64)


@pytest.mark.parametrize("family, raw, port, want", [
    (ev.AF_INET, b"\0" * 16, 0, None),                          # the kernel filled nothing
    (ev.AF_INET, b"\0" * 16, 8000, ("0.0.0.0", 8000)),
    (ev.AF_INET, bytes([127, 0, 0, 1]) + b"\0" * 12, 40000, ("127.0.0.1", 40000)),
    (ev.AF_INET6, b"\0" * 16, 0, None),
    (ev.AF_INET6, b"\0" * 16, 443, ("::", 443)),
    (ev.AF_INET6, b"\0" * 10 + b"\xff\xff" + b"\0" * 4, 0, ("0.0.0.0", 0)),   # mapped, not empty
    (ev.AF_INET6, b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), 8000, ("127.0.0.1", 8000)),
    (ev.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::1"), 8000, ("fd00::1", 8000)),
    (ev.AF_UNIX, b"\0" * 16, 0, None),
])
def test_addresses_the_same_from_the_cache(family, raw, port, want):
    assert ev._addr(family, raw, port) == want
    assert ev._addr(family, raw, port) == want       # the second time from the cache


def test_address_cache_is_bounded():
    for i in range(ev.ADDR_CACHE_LIMIT + 10):
        assert ev._addr(ev.AF_INET, i.to_bytes(4, "big") + b"\0" * 12, 1) == (socket.inet_ntoa(i.to_bytes(4, "big")), 1)
    assert len(ev._V4_TEXT) <= ev.ADDR_CACHE_LIMIT
