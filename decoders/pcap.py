"""Minimal classic pcap reader and writer (libpcap format, no pcapng).

Enough for annotating captures and for the benchmarks: reads the whole file and yields
``(timestamp, frame)`` with ``frame`` a ``bytes`` slice (what decode wants anyway);
:func:`start_for` maps the link type to the ``start`` argument of :func:`decoders.decode`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from .model import START_ETH, START_IP

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_LINKTYPE_START = {LINKTYPE_ETHERNET: START_ETH, LINKTYPE_RAW: START_IP, 12: START_IP,
                   228: START_IP, 229: START_IP}
_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
          b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}


class PcapFile:
    """A classic pcap file loaded in memory: ``linktype``, ``snaplen`` and its records."""

    def __init__(self, path: str | Path) -> None:
        self.data = Path(path).read_bytes()
        if len(self.data) < 24 or self.data[:4] not in _MAGIC:
            raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
        self._endian, self._tick = _MAGIC[self.data[:4]]
        self.snaplen, self.linktype = struct.unpack_from(self._endian + "II", self.data, 16)

    @property
    def start(self) -> int:
        """``START_ETH`` or ``START_IP`` for this link type (ValueError if unsupported)."""
        return start_for(self.linktype)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        data = self.data
        rec = struct.Struct(self._endian + "IIII").unpack_from
        tick = self._tick
        off = 24
        end = len(data) - 16
        while off <= end:
            sec, frac, caplen, _ = rec(data, off)
            off += 16
            yield sec + frac * tick, data[off:off + caplen]
            off += caplen


    def frames(self) -> Iterator[bytes]:
        """The frames alone (a little faster than iterating ``(timestamp, frame)``)."""
        data = self.data
        rec = struct.Struct(self._endian + "8xI4x").unpack_from
        off = 24
        end = len(data) - 16
        while off <= end:
            (caplen,) = rec(data, off)
            off += 16
            yield data[off:off + caplen]
            off += caplen


def start_for(linktype: int) -> int:
    """The ``decode(start=...)`` value for a pcap link type."""
    try:
        return _LINKTYPE_START[linktype]
    except KeyError:
        raise ValueError(f"unsupported pcap link type {linktype}") from None


def write_pcap(path: str | Path, frames: Iterable[bytes], linktype: int = LINKTYPE_ETHERNET,
               snaplen: int = 65535, t0: float = 1_700_000_000.0) -> int:
    """Write ``frames`` (1 us apart) to a classic pcap file; returns how many."""
    hdr = struct.Struct("<IIII").pack
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
        base = int(t0)
        for n, frame in enumerate(frames, 1):
            f.write(hdr(base + n // 1_000_000, n % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return n
