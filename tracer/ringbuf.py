"""A BPF ring buffer read in bulk from its mapped pages, without a callback per record.

libbpf's ``ring_buffer__consume`` calls a function per record; through ctypes that is a Python
call and a bytes object each, ~0.8 us per event (docs/benchmarks.md), a third of what the
recording path costs. The ring's memory layout is the kernel's ABI (kernel/bpf/ringbuf.c, read
the same way by libbpf's ringbuf.c), so hoptrace reads it directly:

- page 0: the consumer position (u64), written by the reader;
- page 1: the producer position (u64), written by the kernel;
- then the data area, mapped twice in a row, so a run of records that wraps is contiguous;
- each record: an 8-byte header (``u32 len`` with BUSY bit 31 while the producer still writes it
  and DISCARD bit 30; ``u32`` page offset) and the payload, padded to 8 bytes.

Every hoptrace record is one ``struct ht_event``, so records sit at a fixed stride and a batch is
one memcpy of the run of records, seen through a strided numpy view. A record of another size
(none is written today) stops the bulk path: it is stepped over one by one. x86-64 and arm64
loads/stores of an aligned u64 are atomic; the release/acquire order the kernel pairs with holds
on x86 (TSO) and is given on arm64 by the data dependency of the copy on the positions read
before it.
"""

from __future__ import annotations

import mmap
import select
import time

import numpy as np

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8


class RingReader:
    """Records of ``dtype`` from the BPF ring buffer map ``map_fd`` of ``size`` bytes."""

    BATCH = 8192  # records; below ~2,000 the per-batch cost of the caller dominates
    GATHER_S = 0.02  # longest wait for a batch to fill while records are already there

    def __init__(self, map_fd: int, size: int, dtype: np.dtype) -> None:
        page = mmap.PAGESIZE
        self.dtype = dtype
        self._mask = size - 1
        self._stride = HDR + (dtype.itemsize + 7) // 8 * 8
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._cons = np.frombuffer(self._cons_map, np.uint64, 1)
        self._prod = np.frombuffer(self._data_map, np.uint64, 1)
        self._data = np.frombuffer(self._data_map, np.uint8, 2 * size, page)
        self._rec = np.dtype({"names": ["len", "ev"], "formats": ["<u4", dtype],
                              "offsets": [0, HDR], "itemsize": self._stride})
        self._poll = select.epoll()
        self._poll.register(map_fd, select.EPOLLIN)
        # batch size wait() gathers towards: an eighth of the ring, at most 8192 records
        self._batch = max(1, min(self.BATCH, size // self._stride // 8))
        self._last_take = time.monotonic()

    def close(self) -> None:
        self._poll.close()
        # the numpy views must go before their maps can close
        del self._cons, self._prod, self._data
        self._cons_map.close()
        self._data_map.close()

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel wakes readers (the probes do when the ring is 1/4 full) or
        ``timeout_ms`` passes. When records are there but fewer than a batch, wait (at most
        ``GATHER_S``) for as long as the rate since the last take says a batch needs: a
        caller that took every record as it came would take batches of a few hundred at
        300,000 events/s, and pay its per-batch cost (~1 ms for the recording path) ten times
        as often (docs/benchmarks.md)."""
        avail = (int(self._prod[0]) - int(self._cons[0])) // self._stride
        if avail <= 0:
            try:
                self._poll.poll(timeout_ms / 1000)
            except InterruptedError:
                pass
        elif avail < self._batch:
            rate = avail / max(time.monotonic() - self._last_take, 1e-4)
            time.sleep(min((self._batch - avail) / rate, self.GATHER_S, timeout_ms / 1000))

    def take(self) -> np.ndarray:
        """The records committed when called, in order, copied out; the space goes back to the
        kernel. One memcpy of the run of records: the result is a strided view (stride
        ``HDR + itemsize``) over that copy: 5 ns per record, against 56 for a copy of the
        ``ev`` field (numpy copies a structured field member by member)."""
        out = []
        self._last_take = time.monotonic()
        cons = int(self._cons[0])
        prod = int(self._prod[0])  # one look: what comes later is the next call's
        while True:
            n = (prod - cons) // self._stride
            if n <= 0:
                break
            off = cons & self._mask
            raw = self._data[off: off + n * self._stride]
            lens = raw.view(self._rec)["len"]
            busy = np.flatnonzero(lens & BUSY)
            if len(busy):
                n = int(busy[0])  # the producer is still writing this one: stop before it
                lens = lens[:n]
            odd = np.flatnonzero((lens & ~np.uint32(BUSY | DISCARD)) != self.dtype.itemsize)
            if len(odd):
                n = int(odd[0])
                lens = lens[:n]
            buf = raw[: n * self._stride].copy()
            recs = np.ndarray((n,), self.dtype, buf, HDR, (self._stride,))
            keep = (lens & DISCARD) == 0
            out.append(recs if keep.all() else recs[keep])
            cons += n * self._stride
            self._cons[0] = cons
            if len(busy):
                break
            if len(odd):  # a record of another size: step over it by its own length
                ln = int(self._data[(cons & self._mask): (cons & self._mask) + 4].view("<u4")[0])
                if ln & BUSY:
                    break
                cons += HDR + ((ln & ~(BUSY | DISCARD)) + 7) // 8 * 8
                self._cons[0] = cons
                prod = max(prod, int(self._prod[0]))
        if not out:
            return np.empty(0, self.dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)
