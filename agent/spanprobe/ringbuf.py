"""The BPF ring buffer read in place, by the agent's compiled loop.

bcc's consumer (libbpf's ring_buffer__poll) hands each record to Python through a ctypes
callback, and the callback copies it with another ctypes call: measured at about 8% of
the agent's CPU, a span's worth of records costing ~1.4 µs each. Here the records are
copied straight out of the shared mapping into a list.

The layout is the kernel's (kernel/bpf/ringbuf.c, as libbpf reads it): at offset 0 a
page holding the consumer position, which the reader writes; at one page the producer
position, which the kernel writes; then the data area, `size` bytes (a power of two),
mapped twice in a row so that a record which wraps reads as one. A record is an 8-byte
header (a u32 length whose top bits say BUSY, still being written, and DISCARD, to be
skipped; a u32 page offset) and the record, together rounded up to 8 bytes. Positions
only grow; a position's offset in the data area is position & (size - 1).

Ordering: the kernel writes a record, then clears BUSY with a release store; the reader
loads the header, then the record. x86-64 keeps loads in order, and a Python read of
the mapping is a plain load, so this reader is used there only (`supported`); elsewhere
the agent keeps bcc's consumer, whose barriers are libbpf's.
"""

from __future__ import annotations

import mmap
import platform
import select
from typing import Final

HEADER_SIZE: Final = 8
BUSY: Final = 1 << 31
DISCARD: Final = 1 << 30


def supported() -> str | None:
    """None when this reader can be used here; else why not."""
    machine = platform.machine()
    if machine != "x86_64":
        return f"{machine}: plain loads from the mapping are not ordered there (bcc's consumer is)"
    return None


class RingReader:
    """Records between the consumer and the producer position, each copied out as bytes.

    `consumer` and `producer` are one-slot views of native u64 ('Q'); `data` is the data
    area twice (2 * size bytes, the second copy the kernel's second mapping of the
    first). Any buffers laid out so will do: tests give bytearrays."""

    def __init__(self, consumer: memoryview, producer: memoryview, data: memoryview, size: int):
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        if len(data) < 2 * size:
            raise ValueError(f"ring buffer data area of {len(data)} bytes, {2 * size} needed")
        self.consumer = consumer
        self.producer = producer
        self.data = data
        self.words = data.cast("I")        # native u32: the record headers
        self.size = size
        self.unreadable = 0                # records given up on: a header out of bounds

    def read(self, sink: list[bytes]) -> int:
        """Append every committed record to `sink`, in order, and release its space to the
        kernel as it goes; the number appended. Stops at the first record still being
        written."""
        cons = self.consumer[0]
        prod = self.producer[0]
        mask = self.size - 1
        limit = self.size - HEADER_SIZE
        data = self.data
        words = self.words
        got = 0
        while cons < prod:
            off = cons & mask
            word = words[off >> 2]
            if word & BUSY:
                break
            length = word & ~(BUSY | DISCARD)
            if length > limit or cons + HEADER_SIZE + length > prod:
                # not a record the kernel could have committed: give up on everything up
                # to the producer rather than read garbage as events
                self.unreadable += 1
                self.consumer[0] = prod
                return got
            if not word & DISCARD:
                start = off + HEADER_SIZE
                sink.append(bytes(data[start:start + length]))
                got += 1
            cons += (length + HEADER_SIZE + 7) & ~7
            self.consumer[0] = cons        # one aligned 8-byte store, as libbpf's
        return got

    def release(self) -> None:
        """Drop the views (a mapping cannot close while they exist)."""
        self.words.release()
        self.data.release()
        self.consumer.release()
        self.producer.release()


class MappedRing:
    """A ring buffer map's pages mapped into the agent, its reader and a wait for data."""

    def __init__(self, fd: int, size: int):
        page = mmap.PAGESIZE
        self._consumer_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            # the producer page and the data area twice, read-only (the kernel refuses more)
            self._producer_map = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                           offset=page)
        except BaseException:
            self._consumer_map.close()
            raise
        try:
            with memoryview(self._consumer_map) as consumer_page, \
                    memoryview(self._producer_map) as producer_pages:
                self.reader = RingReader(consumer_page[:8].cast("Q"), producer_pages[:8].cast("Q"),
                                         producer_pages[page:], size)
            try:
                self._poll = select.epoll()
                self._poll.register(fd, select.EPOLLIN)
            except BaseException:
                self.reader.release()
                raise
        except BaseException:
            self._producer_map.close()
            self._consumer_map.close()
            raise

    def poll(self, timeout_ms: int, sink: list[bytes]) -> int:
        """Wait up to `timeout_ms` for the kernel's wake-up (a CPU wakes the reader once it
        has written SP_WAKEUP_BYTES, bpf/spanprobe.bpf.c), then read whatever is there."""
        if timeout_ms > 0 and self.reader.consumer[0] >= self.reader.producer[0]:
            self._poll.poll(timeout_ms / 1000)
        return self.reader.read(sink)

    def close(self) -> None:
        self._poll.close()
        self.reader.release()
        self._producer_map.close()
        self._consumer_map.close()
