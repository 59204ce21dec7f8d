"""The ring buffer reader (spanprobe.ringbuf) over buffers laid out as the kernel's:
records written as bpf_ringbuf_output writes them, the data area seen twice in a row as
the kernel's double mapping shows it. The real mapping is read by every integration test
and kernel-matrix guest (the ready line says reader=mapped)."""

from __future__ import annotations

import struct

import pytest

from spanprobe.ringbuf import BUSY, DISCARD, HEADER_SIZE, RingReader, supported


class Ring:
    """A kernel's side of a ring buffer of `size` bytes: reserve, write, commit."""

    def __init__(self, size: int = 64):
        self.size = size
        self.cons = bytearray(8)
        self.prod = bytearray(8)
        self.data = bytearray(2 * size)
        self.reader = RingReader(memoryview(self.cons).cast("Q"), memoryview(self.prod).cast("Q"),
                                 memoryview(self.data), size)

    @property
    def consumer(self) -> int:
        return struct.unpack("=Q", self.cons)[0]

    @property
    def producer(self) -> int:
        return struct.unpack("=Q", self.prod)[0]

    def _put(self, pos: int, raw: bytes) -> None:
        for i, b in enumerate(raw):          # the second mapping shows the same bytes
            off = (pos + i) % self.size
            self.data[off] = self.data[off + self.size] = b

    def reserve(self, payload: bytes) -> int:
        need = (len(payload) + HEADER_SIZE + 7) & ~7
        pos = self.producer
        assert pos + need - self.consumer <= self.size, "full"
        self._put(pos, struct.pack("=II", len(payload) | BUSY, 0) + payload)
        self.prod[:] = struct.pack("=Q", pos + need)
        return pos

    def commit(self, pos: int, discard: bool = False) -> None:
        word = struct.unpack("=I", bytes(self.data[pos % self.size:pos % self.size + 4]))[0] & ~BUSY
        self._put(pos, struct.pack("=I", word | (DISCARD if discard else 0)))

    def output(self, payload: bytes) -> None:
        self.commit(self.reserve(payload))


def test_records_come_out_in_order_and_release_their_space():
    ring = Ring()
    for p in (b"a", b"bcdefghij", b""):
        ring.output(p)
    got: list[bytes] = []
    assert ring.reader.read(got) == 3
    assert got == [b"a", b"bcdefghij", b""]
    assert ring.consumer == ring.producer == 16 + 24 + 8
    assert ring.reader.read(got) == 0 and len(got) == 3


def test_a_record_that_wraps_reads_whole():
    ring = Ring(64)
    ring.output(b"x" * 40)          # 48 bytes: the next record starts at 48 and wraps
    got: list[bytes] = []
    ring.reader.read(got)
    payload = bytes(range(30))
    ring.output(payload)
    ring.reader.read(got)
    assert got[1] == payload and ring.consumer == 48 + 40


def test_reading_stops_at_a_record_still_being_written():
    ring = Ring(128)
    ring.output(b"one")
    pending = ring.reserve(b"two")
    ring.output(b"three")           # committed after an uncommitted one: waits its turn
    got: list[bytes] = []
    assert ring.reader.read(got) == 1 and got == [b"one"]
    ring.commit(pending)
    assert ring.reader.read(got) == 2 and got == [b"one", b"two", b"three"]


def test_a_discarded_record_is_skipped():
    ring = Ring()
    ring.commit(ring.reserve(b"gone"), discard=True)
    ring.output(b"kept")
    got: list[bytes] = []
    assert ring.reader.read(got) == 1 and got == [b"kept"]
    assert ring.consumer == ring.producer


@pytest.mark.parametrize("length", [64, 1 << 29, 57, 40])
def test_a_header_out_of_bounds_is_counted_and_nothing_is_read_from_it(length):
    """A length past the data area (64, 1 << 29, 57: the area is 64 bytes, 56 of them a
    record's at most), or past what the producer reserved (40 where 16 were): never a
    record."""
    ring = Ring(64)
    ring.output(b"ok")
    pos = ring.producer
    ring._put(pos, struct.pack("=II", length, 0))
    ring.prod[:] = struct.pack("=Q", pos + 16)
    got: list[bytes] = []
    assert ring.reader.read(got) == 1 and got == [b"ok"]
    assert ring.reader.unreadable == 1 and ring.consumer == ring.producer


def test_the_reader_refuses_a_layout_that_is_not_the_kernels():
    with pytest.raises(ValueError):
        RingReader(memoryview(bytearray(8)).cast("Q"), memoryview(bytearray(8)).cast("Q"),
                   memoryview(bytearray(96)), 48)
    with pytest.raises(ValueError):
        RingReader(memoryview(bytearray(8)).cast("Q"), memoryview(bytearray(8)).cast("Q"),
                   memoryview(bytearray(64)), 64)


def test_it_is_used_on_x86_64_only(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert "aarch64" in supported()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert supported() is None
