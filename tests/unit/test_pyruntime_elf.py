"""The ELF reader: the symbols it finds agree with binutils' nm on real interpreters, and
hostile files (corrupted real ones, made-up headers) end in ElfError (saying why), never
in another exception."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanprobe import elf
from spanprobe.elf import EHDR, ElfError, ElfFile

from tests.support.pyruntime_oracle import running_interpreter

WANTED = {"_PyRuntime", "Py_Version", "PyContext_Type", "PyContext_CopyCurrent", "PyContext_Enter"}


def nm_symbols(path: str) -> dict[str, int]:
    """Defined symbols of WANTED by nm (dynamic table, then the full one when present)."""
    out = {}
    for flags in (["-D"], []):
        res = subprocess.run(["nm", *flags, "--defined-only", path], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            f = line.split()
            if len(f) == 3 and f[2] in WANTED:
                out[f[2]] = int(f[0], 16)
    return out


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm not installed")
def test_symbols_agree_with_nm():
    path, size = running_interpreter()
    fd = os.open(path, os.O_RDONLY)
    try:
        found = ElfFile(fd, size).symbols(WANTED)
    finally:
        os.close(fd)
    expected = nm_symbols(path)
    assert expected.keys() == WANTED
    assert {k: v.value for k, v in found.items()} == expected


@functools.lru_cache(maxsize=1)
def small_elf() -> bytes:
    """A small real shared object with a .dynsym: the fuzzers' seed."""
    for path in ("/lib/x86_64-linux-gnu/libdl.so.2", "/usr/lib/x86_64-linux-gnu/libdl.so.2",
                 "/bin/true", "/usr/bin/true"):
        if os.path.exists(path) and os.path.getsize(path) < 200_000:
            with open(path, "rb") as f:
                return f.read()
    pytest.skip("no small ELF file to fuzz from")


def parse(data: bytes) -> None:
    """Everything the reader offers, over `data`; only ElfError may come out."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        try:
            e = ElfFile(f.fileno(), len(data))
            syms = e.symbols({"_PyRuntime", "Py_Version", "free", "malloc"})
            for s in syms.values():
                if e.maps(s.value, 8):
                    try:
                        assert len(e.read_at(s.value, 8)) == 8
                    except ElfError:
                        pass      # mapped but not initialised (bss)
        except ElfError:
            pass


def test_the_seed_parses():
    data = small_elf()
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        assert ElfFile(f.fileno(), len(data)).segments


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=8)), max_size=12),
       st.data())
def test_corrupted_headers_are_refused_or_read_within_bounds(patches, data):
    """Overwrites in the first page (ELF and program headers) and in the section headers."""
    blob = bytearray(small_elf())
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    for at, chunk in patches:
        where = data.draw(st.sampled_from([at, shoff + at]))
        blob[where:where + len(chunk)] = chunk[:max(0, len(blob) - where)]
    parse(bytes(blob[:len(small_elf())]))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=2048))
def test_made_up_files_are_refused_or_read_within_bounds(body):
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    parse(ident + body)


def header(**fields) -> bytes:
    base = dict(etype=elf.ET_DYN, machine=elf.EM_X86_64, phoff=64, shoff=0, ehsize=EHDR.size,
                phentsize=elf.PHDR.size, phnum=1, shentsize=elf.SHDR.size, shnum=0)
    base.update(fields)
    return EHDR.pack(b"\x7fELF\x02\x01\x01" + b"\0" * 9, base["etype"], base["machine"], 1, 0,
                     base["phoff"], base["shoff"], 0, base["ehsize"], base["phentsize"], base["phnum"],
                     base["shentsize"], base["shnum"], 0)


def load(offset=0, vaddr=0, filesz=0x200, memsz=0x200) -> bytes:
    return elf.PHDR.pack(elf.PT_LOAD, 5, offset, vaddr, vaddr, filesz, memsz, 0x1000)


@pytest.mark.parametrize("data, why", [
    (header(machine=183) + load(), "machine"),
    (header(etype=1) + load(), "ELF type"),
    (header(phnum=0), "program header"),
    (header(phnum=60000) + load(), "program header"),
    (header(phoff=1 << 40) + load(), "outside the file"),
    (header() + load(filesz=1 << 40, memsz=1 << 40), "outside the file"),
    (header() + load(filesz=0x300, memsz=0x200), "outside"),
    (header() + load(offset=0x10, vaddr=0x20, filesz=0x100), "page-congruent"),
    (header(shoff=64 + 56, shnum=65535) + load(), "outside the file"),
    (header(shoff=64 + 56, shnum=1, shentsize=10) + load(), "section header"),
])
def test_hostile_headers_say_why(data, why):
    data = data.ljust(0x200, b"\0")
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        with pytest.raises(ElfError, match=why):
            ElfFile(f.fileno(), len(data)).symbols({"x"})


def test_bytes_beyond_the_file_backed_part_of_a_segment_are_refused():
    data = (header() + load(filesz=0x100, memsz=0x1000)).ljust(0x200, b"\0")
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        e = ElfFile(f.fileno(), len(data))
        assert e.maps(0x800, 8)
        assert len(e.read_at(0xF8, 8)) == 8
        with pytest.raises(ElfError, match="no initialised bytes"):
            e.read_at(0xFC, 8)
