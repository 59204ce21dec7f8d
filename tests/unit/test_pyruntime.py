"""pyruntime without a kernel: a fake /proc whose one process maps the interpreter running
these tests (its real file, symbols and version) and whose memory is a sparse file laid
out as that interpreter's structures would be. What the live check must refuse is made
by breaking one structure at a time."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from spanprobe import cpython_layouts as cl
from spanprobe.elf import ElfFile
from spanprobe.procfs import SysRoot
from spanprobe.pyruntime import Calibrations, parse_maps, read_interpreter
from tests.support.pyruntime_oracle import running_interpreter

PID, TID = 4242, 4243
HEAP = 0x2000_0000          # where the fake interpreter and thread states live


class FakeProcess:
    """/proc/<PID> for one process mapping `binary` at `base`, memory laid out per `offsets`."""

    def __init__(self, tmp: Path, binary: str, base: int):
        self.root, self.binary, self.base = tmp, binary, base
        fd = os.open(binary, os.O_RDONLY)
        try:
            elf = ElfFile(fd, os.fstat(fd).st_size)
            self.interp = read_interpreter(elf)
            self.size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.proc = tmp / "proc" / str(PID)
        (self.proc / "task" / str(PID)).mkdir(parents=True)
        (self.proc / "task" / str(TID)).mkdir()
        (self.proc / "map_files").mkdir()
        self.map(binary)
        self.mem = self.proc / "mem"
        self.mem.write_bytes(b"")

    def map(self, target: str, path: str | None = None) -> None:
        """The maps row for the binary (as `path`), map_files leading to `target`."""
        st = os.stat(self.binary)
        end = self.base + (self.size + 0xFFF) // 0x1000 * 0x1000
        (self.proc / "maps").write_text(
            f"{self.base:012x}-{end:012x} r-xp 00000000 {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} "
            f"{st.st_ino}    {path or self.binary}\n"
            f"7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0    [stack]\n")
        link = self.proc / "map_files" / f"{self.base:x}-{end:x}"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)

    def poke(self, addr: int, value: int) -> None:
        with open(self.mem, "r+b") as f:
            f.seek(addr)
            f.write(value.to_bytes(8, "little"))

    @property
    def runtime(self) -> int:
        return self.base + self.interp.runtime_rel

    def lay_out(self, tids=(PID, TID), context=True) -> dict[str, int]:
        """An interpreter with one thread state per tid, each in a context (or none)."""
        off = self.interp.offsets
        if self.interp.has_cookie:
            with open(self.mem, "r+b") as f:
                f.seek(self.runtime)
                f.write(cl.DEBUG_COOKIE)
        main, ctx = HEAP, HEAP + 0x10000
        self.poke(self.runtime + off.runtime_interpreters_head, main)
        states = [HEAP + 0x20000 + i * 0x1000 for i in range(len(tids))]
        self.poke(main + off.interp_threads_head, states[0])
        for i, (ts, tid) in enumerate(zip(states, tids)):
            self.poke(ts + off.thread_interp, main)
            self.poke(ts + off.thread_native_thread_id, tid)
            self.poke(ts + off.thread_context, ctx if context else 0)
            self.poke(ts + off.thread_next, states[i + 1] if i + 1 < len(states) else 0)
        self.poke(ctx + cl.OB_TYPE, self.base + self.interp.context_type_rel)
        return {"main": main, "ctx": ctx, "first": states[0], "last": states[-1]}


@pytest.fixture(scope="module")
def interpreter():
    return running_interpreter()


@pytest.fixture
def fake(tmp_path, interpreter):
    return FakeProcess(tmp_path, interpreter[0], 0x400000 if interpreter[0].startswith("/usr/bin") else 0x1000_0000)


def test_layout_from_the_mapped_file_and_checked_memory(fake, caplog):
    fake.lay_out()
    found = Calibrations(SysRoot(fake.root)).for_process(PID, "whatever-it-is-called")
    assert found is not None
    layout, runtime = found
    off = fake.interp.offsets
    assert runtime == fake.runtime
    assert layout.binary == fake.binary
    assert layout.version.split(".")[:2] == [str(v) for v in os.sys.version_info[:2]]
    assert (layout.off_interp, layout.off_head, layout.off_next, layout.off_tid, layout.off_ctx) == \
        (off.runtime_interpreters_head, off.interp_threads_head, off.thread_next,
         off.thread_native_thread_id, off.thread_context)


def test_threads_without_a_context_are_fine(fake):
    fake.lay_out(context=False)
    assert Calibrations(SysRoot(fake.root)).for_process(PID, None) is not None


def broken(fake, how: str) -> None:
    at = fake.lay_out()
    off = fake.interp.offsets
    if how == "no interpreter":
        fake.poke(fake.runtime + off.runtime_interpreters_head, 0)
    elif how == "misaligned interpreter":
        fake.poke(fake.runtime + off.runtime_interpreters_head, at["main"] + 4)
    elif how == "foreign thread ids":
        fake.poke(at["first"] + off.thread_native_thread_id, 1)
        fake.poke(at["last"] + off.thread_native_thread_id, 2)
    elif how == "thread of another interpreter":
        fake.poke(at["last"] + off.thread_interp, at["main"] + 0x100)
    elif how == "context of another type":
        fake.poke(at["ctx"] + cl.OB_TYPE, fake.base + fake.interp.context_type_rel + 8)
    elif how == "thread list loops":
        fake.poke(at["last"] + off.thread_next, at["first"])
    elif how == "unreadable thread state":
        fake.poke(at["first"] + off.thread_next, 0x7fff_0000_0000)


@pytest.mark.parametrize("how, reason", [
    ("no interpreter", "no interpreter"),
    ("misaligned interpreter", "not a pointer"),
    ("foreign thread ids", "no thread state carries a thread id"),
    ("thread of another interpreter", "does not point back"),
    ("context of another type", "not a PyContext"),
    ("thread list loops", "loops"),
    ("unreadable thread state", "short read|unreadable"),
])
def test_a_live_process_that_disagrees_gets_no_linking(fake, caplog, how, reason):
    broken(fake, how)
    cal = Calibrations(SysRoot(fake.root))
    with caplog.at_level(logging.WARNING, logger="spanprobe.pyruntime"):
        assert cal.for_process(PID, None) is None
        assert cal.for_process(PID, None) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings          # once per binary, not per look
    assert re.search(reason, warnings[0]), warnings[0]


def test_a_replaced_mapped_file_is_refused(fake, caplog):
    fake.lay_out()
    fake.map(fake.binary, path=fake.binary + " (deleted)")
    with caplog.at_level(logging.WARNING, logger="spanprobe.pyruntime"):
        assert Calibrations(SysRoot(fake.root)).for_process(PID, None) is None
    assert "deleted or replaced" in caplog.text


def test_a_file_other_than_the_mapped_one_is_never_read(fake, tmp_path, caplog):
    """map_files leading to another file than the maps row names (inode differs): refused,
    and the path is not opened instead."""
    fake.lay_out()
    other = tmp_path / "other-python"
    shutil.copyfile(fake.binary, other)
    fake.map(str(other))
    cal = Calibrations(SysRoot(fake.root))
    with caplog.at_level(logging.WARNING, logger="spanprobe.pyruntime"):
        assert cal.for_process(PID, None) is None
    assert "not the mapped one" in caplog.text
    assert cal.by_file == {}


def test_without_map_files_the_path_in_the_process_root_is_checked(fake, tmp_path):
    """No CAP_SYS_ADMIN: map_files cannot be opened; /proc/<pid>/root + path is, its
    device and inode checked; a different file there is refused."""
    fake.lay_out()
    shutil.rmtree(fake.proc / "map_files")
    (fake.proc / "map_files").mkdir()
    (fake.proc / "root").symlink_to("/")
    assert Calibrations(SysRoot(fake.root)).for_process(PID, None) is not None
    (fake.proc / "root").unlink()
    fake_root = tmp_path / "elsewhere"
    (fake_root / fake.binary.lstrip("/")).parent.mkdir(parents=True)
    shutil.copyfile(fake.binary, fake_root / fake.binary.lstrip("/"))
    (fake.proc / "root").symlink_to(fake_root)
    assert Calibrations(SysRoot(fake.root)).for_process(PID, None) is None


def test_one_read_per_file_whatever_the_number_of_processes(fake):
    fake.lay_out()
    cal = Calibrations(SysRoot(fake.root))
    assert cal.for_process(PID, None) is not None
    assert cal.for_process(PID, None) is not None
    assert len(cal.by_file) == 1
    (key,) = cal.by_file
    st = os.stat(fake.binary)
    assert key == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def test_a_process_mapping_no_interpreter_is_not_python(tmp_path):
    proc = tmp_path / "proc" / str(PID)
    proc.mkdir(parents=True)
    st = os.stat("/bin/sh")
    (proc / "maps").write_text(f"00400000-00500000 r-xp 00000000 {os.major(st.st_dev):02x}:"
                               f"{os.minor(st.st_dev):02x} {st.st_ino}    /bin/sh\n")
    assert Calibrations(SysRoot(tmp_path)).for_process(PID, "/bin/sh") is None


def test_parse_maps_skips_anonymous_and_malformed_rows():
    rows = parse_maps("00400000-00401000 r-xp 00000000 fd:01 1234    /usr/bin/python3 (deleted)\n"
                      "00401000-00402000 rw-p 00000000 00:00 0 \n"
                      "zz-00402000 r-xp 00000000 fd:01 99 /x\n"
                      "7f00-7f10 r--p 00001000 08:02 77 /opt/my python/libpython3.12.so\n")
    assert [(r.start, r.dev, r.inode, r.path) for r in rows] == [
        (0x400000, (0xfd, 1), 1234, "/usr/bin/python3 (deleted)"),
        (0x7f00, (8, 2), 77, "/opt/my python/libpython3.12.so")]
