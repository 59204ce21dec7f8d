"""A small strict reader of the ELF files a traced process maps: the symbols we look up
and the initialised bytes at their addresses, nothing else.

The files belong to whoever runs the process, so every header is hostile: each count,
offset and size is bounded before it is used, and anything outside what a 64-bit
little-endian x86_64 executable or shared library can hold is refused with `ElfError`
(the caller then does without). Section headers are used only to find the symbol tables
and their string tables, each checked to lie inside the file; addresses are turned into
file offsets through the program headers (PT_LOAD), which is how the loader maps them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

MAX_FILE = 1 << 30          # bytes: bigger than any interpreter or libpython
MAX_PHNUM = 128
MAX_SHNUM = 1 << 16
MAX_TABLE = 64 << 20        # bytes of one symbol table or string table
MAX_READ = 1 << 20          # bytes of one read at an address

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")

PT_LOAD = 1
SHT_SYMTAB, SHT_STRTAB, SHT_DYNSYM = 2, 3, 11
SHN_UNDEF = 0
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PAGE = 4096


class ElfError(ValueError):
    """The file is not an ELF file this reader accepts."""


@dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int


@dataclass(frozen=True)
class Symbol:
    value: int
    size: int


class ElfFile:
    """One opened file, read with pread at bounded offsets (never mapped, never whole)."""

    def __init__(self, fd: int, size: int):
        if not 0 < size <= MAX_FILE:
            raise ElfError(f"file size {size} out of bounds")
        self.fd, self.size = fd, size
        ident, etype, machine, _, _, phoff, shoff, _, ehsize, phentsize, phnum, shentsize, shnum, _ = \
            EHDR.unpack(self._read(0, EHDR.size))
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        if machine != EM_X86_64:
            raise ElfError(f"machine {machine} is not x86_64")
        if etype not in (ET_EXEC, ET_DYN):
            raise ElfError(f"ELF type {etype} is neither an executable nor a shared object")
        if ehsize != EHDR.size or phentsize != PHDR.size or not 0 < phnum <= MAX_PHNUM:
            raise ElfError("bad program header table")
        self.segments = self._load_segments(phoff, phnum)
        self.shoff, self.shnum, self.shentsize = shoff, shnum, shentsize

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(f"read of {length} bytes at {offset} outside the file")
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise ElfError("file shorter than it said")
        return data

    def _load_segments(self, phoff: int, phnum: int) -> list[Segment]:
        raw = self._read(phoff, phnum * PHDR.size)
        segs = []
        for ptype, _, offset, vaddr, _, filesz, memsz, _ in PHDR.iter_unpack(raw):
            if ptype != PT_LOAD:
                continue
            if filesz > memsz or offset + filesz > self.size or vaddr + memsz >= 1 << 47:
                raise ElfError("PT_LOAD segment outside the file or the address space")
            if (vaddr - offset) % PAGE:
                raise ElfError("PT_LOAD segment not page-congruent")
            segs.append(Segment(vaddr, memsz, offset, filesz))
        if not segs or segs[0].offset >= PAGE:
            raise ElfError("no PT_LOAD segment mapping the start of the file")
        if any(b.vaddr < a.vaddr + a.memsz for a, b in zip(segs, segs[1:])):
            raise ElfError("PT_LOAD segments overlap or are out of order")
        return segs

    @property
    def link_base(self) -> int:
        """The address the first mapping (file offset 0) is linked at: a process's load
        base minus this, plus a symbol's value, is the symbol's address in that process."""
        return self.segments[0].vaddr - self.segments[0].offset

    def maps(self, vaddr: int, length: int) -> bool:
        """Does a PT_LOAD segment cover [vaddr, vaddr + length)?"""
        return any(s.vaddr <= vaddr and vaddr + length <= s.vaddr + s.memsz for s in self.segments)

    def read_at(self, vaddr: int, length: int) -> bytes:
        """Initialised bytes at a linked address; refused for bytes the file doesn't hold."""
        if not 0 < length <= MAX_READ:
            raise ElfError(f"read of {length} bytes refused")
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + length <= seg.vaddr + seg.filesz:
                return self._read(seg.offset + vaddr - seg.vaddr, length)
        raise ElfError(f"no initialised bytes at {vaddr:#x}+{length}")

    def _sections(self) -> list[tuple[int, int, int, int, int]]:
        """(type, offset, size, link, entsize) of every section header, bounded."""
        if self.shoff == 0 or self.shnum == 0:
            return []
        if self.shentsize != SHDR.size or self.shnum > MAX_SHNUM:
            raise ElfError("bad section header table")
        raw = self._read(self.shoff, self.shnum * SHDR.size)
        return [(t, off, size, link, ent) for _, t, _, _, off, size, link, _, _, ent in SHDR.iter_unpack(raw)]

    def symbols(self, names: set[str]) -> dict[str, Symbol]:
        """Defined symbols of `names` found in .symtab and .dynsym (.symtab wins when both
        name one); a name defined twice with different values is refused as ambiguous."""
        wanted = {n.encode() for n in names}
        sections = self._sections()
        found: dict[str, Symbol] = {}
        for kind in (SHT_DYNSYM, SHT_SYMTAB):
            table: dict[str, Symbol] = {}
            for stype, off, size, link, ent in sections:
                if stype != kind:
                    continue
                if ent != SYM.size or size % SYM.size or size > MAX_TABLE or not 0 <= link < len(sections):
                    raise ElfError("bad symbol table header")
                str_type, str_off, str_size, _, _ = sections[link]
                if str_type != SHT_STRTAB or str_size > MAX_TABLE:
                    raise ElfError("symbol table not linked to a string table")
                self._scan(self._read(off, size), self._read(str_off, str_size), wanted, table)
            found.update(table)
        return found

    def _scan(self, syms: bytes, strtab: bytes, wanted: set[bytes], into: dict[str, Symbol]) -> None:
        starts = {}
        for name in wanted:
            pos = strtab.find(name + b"\0")
            while pos != -1:
                starts[pos] = name.decode()
                pos = strtab.find(name + b"\0", pos + 1)
        for st_name, _, _, shndx, value, size in SYM.iter_unpack(syms):
            name = starts.get(st_name)
            if name is None or shndx == SHN_UNDEF:
                continue
            sym = Symbol(value, size)
            if into.setdefault(name, sym) != sym:
                raise ElfError(f"symbol {name} defined twice")
