"""Streaming capture reader (classic pcap and pcapng) and a classic pcap writer.

:class:`Capture` reads a file in fixed-size chunks and yields one tuple per packet, so memory
stays flat whatever the file size (``benchmarks/annotate_bench.py`` measures it)::

    (ts_ns, linktype, data, offset, wirelen, iface, comments)

- ``ts_ns``: capture time in integer nanoseconds since the epoch (exact for microsecond and
  nanosecond files; ``None`` for a pcapng Simple Packet Block, which has no timestamp);
- ``data``: the captured bytes (``bytes``), ``wirelen`` the original length on the wire;
- ``offset``: where :func:`decoders.decode` starts in ``data`` (0, or 16/20 past a Linux
  cooked header), see :func:`decode_record`;
- ``iface``: index into :attr:`Capture.interfaces` (unique across pcapng sections);
- ``comments``: the packet's existing pcapng ``opt_comment`` strings (usually ``()``).

:meth:`Capture.frames` is the fast path for callers that need only the bytes (the decoder
benchmark, :meth:`PcapFile.frames`): no tuple per packet, and classic pcap is cut into
frames a chunk at a time and handed out through ``itertools.chain``, so there is no
generator step per packet either.

Formats: classic pcap in both byte orders with microsecond or nanosecond timestamps
(https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html); pcapng
(draft-ietf-opsawg-pcapng) with several sections and interfaces, per-interface link type,
``if_tsresol`` and ``if_tsoffset``, Enhanced, Simple and obsolete Packet Blocks (other block
types are skipped). Link types (https://www.tcpdump.org/linktypes.html): Ethernet (1),
Linux cooked SLL (113) and SLL2 (276), raw IP (101, and 12/14 as DLT_RAW is written on some
platforms, 228/229 raw IPv4/IPv6).

Errors: a file that is neither format, or a link type not in that list, raises
:class:`CaptureError` (a ``ValueError``). A packet cut short at the end of the file (or a
corrupt record) ends the iteration and sets :attr:`Capture.truncated` to a message naming the
packet number and the file offset; every packet before it has been yielded.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

from .core import decode
from .ethernet import ETH_P_IP, ETH_P_IPV6, ETHERTYPE_NAMES
from .model import START_ETH, START_IP, Decoded
from .ports import DEFAULT_PORTS, PortMap

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
#: link type -> (decode start, bytes before the header decode starts at)
LINKTYPES = {LINKTYPE_ETHERNET: (START_ETH, 0), LINKTYPE_RAW: (START_IP, 0), 12: (START_IP, 0),
             14: (START_IP, 0), 228: (START_IP, 0), 229: (START_IP, 0),
             LINKTYPE_LINUX_SLL: (START_IP, 16), LINKTYPE_LINUX_SLL2: (START_IP, 20)}
_SLL_PROTO = {LINKTYPE_LINUX_SLL: 14, LINKTYPE_LINUX_SLL2: 0}  # offset of the ethertype
_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
          b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D
CHUNK = 1 << 20
#: A record longer than this is corrupt (libpcap's own limit is 256 KiB per packet; pcapng
#: blocks may carry long options, but not 64 MiB of them).
MAX_RECORD = 64 << 20

Record = tuple[int | None, int, bytes, int, int, int, tuple[str, ...]]


class CaptureError(ValueError):
    """The file is not a capture this reader understands (message says why)."""


@dataclass(frozen=True, slots=True)
class Interface:
    """One capture interface: pcap has one, pcapng one per Interface Description Block."""

    linktype: int
    snaplen: int
    name: str | None = None
    #: timestamp unit -> ns: ``ts_ns = ticks * num // den + tsoffset_ns``
    num: int = 1000
    den: int = 1
    tsoffset_ns: int = 0

    @property
    def start(self) -> int:
        return LINKTYPES[self.linktype][0]

    @property
    def offset(self) -> int:
        return LINKTYPES[self.linktype][1]


def start_for(linktype: int) -> int:
    """The ``decode(start=...)`` value for a link type (``CaptureError`` if unsupported)."""
    return _linktype(linktype, "")[0]


def _linktype(linktype: int, where: str) -> tuple[int, int]:
    try:
        return LINKTYPES[linktype]
    except KeyError:
        known = ", ".join(str(t) for t in sorted(LINKTYPES))
        raise CaptureError(f"{where}unsupported link type {linktype} (this reader knows "
                           f"{known}: Ethernet, Linux cooked SLL/SLL2, raw IP)") from None


def decode_record(linktype: int, data: bytes, offset: int, ports: PortMap = DEFAULT_PORTS,
                  guess: bool = True) -> Decoded:
    """Decode one captured packet whatever its link type (error offsets count from
    ``offset``). A Linux cooked packet that is not IP is named by its protocol, not decoded."""
    if offset == 0:
        return decode(data, LINKTYPES[linktype][0], ports, guess)
    proto_at = _SLL_PROTO[linktype]
    if len(data) < offset:
        return Decoded(("sll",), None, None, (), None, (), "truncated sll header", 0)
    proto = data[proto_at] << 8 | data[proto_at + 1]
    if proto == ETH_P_IP or proto == ETH_P_IPV6:
        return decode(data[offset:], START_IP, ports, guess)
    name = ETHERTYPE_NAMES.get(proto, f"ethertype-0x{proto:04x}")
    return Decoded(("sll", name), None, None, (), None, (), None, -1)


class Capture:
    """A capture file read as a stream. Iterate once; use as a context manager or close()."""

    def __init__(self, path: str | Path, chunk: int = CHUNK) -> None:
        self.path = Path(path)
        self.chunk = chunk
        try:
            # "-" is standard input: tcpdump -w - | hoptrace annotate - ...
            self._f: BinaryIO = (sys.stdin.buffer if str(path) == "-" else
                                 self.path.open("rb"))
        except OSError as exc:
            raise CaptureError(f"{path}: cannot read: {exc.strerror}") from exc
        head = self._f.read(4)
        self.interfaces: list[Interface] = []
        #: set when the file ended inside a packet or a corrupt record was met
        self.truncated: str | None = None
        #: packets yielded so far, and the file offset reached
        self.packets = 0
        self.offset = 0
        self._close_at_end = False
        if head in _MAGIC:
            self.format = "pcap"
            rest = self._f.read(20)
            if len(rest) < 20:
                self.close()
                raise CaptureError(f"{path}: truncated pcap file header ({4 + len(rest)} of "
                                   "24 bytes)")
            endian, per_tick = _MAGIC[head]
            snaplen, lt = struct.unpack(endian + "12xII", rest)
            lt &= 0xFFFF  # the upper bits may carry FCS information
            self._check(lt, "")
            self.interfaces.append(Interface(lt, snaplen, None, per_tick, 1))
            self._endian = endian
            self._buf = b""
            self.offset = 24
        elif len(head) == 4 and struct.unpack("<I", head)[0] == _SHB:
            self.format = "pcapng"
            self._buf = head
        else:
            self.close()
            raise CaptureError(f"{path}: not a classic pcap or pcapng file (starts with "
                               f"{head.hex() or 'nothing'})")

    def _check(self, linktype: int, where: str) -> None:
        try:
            _linktype(linktype, where)
        except CaptureError as exc:
            self.close()
            raise CaptureError(f"{self.path}: {exc}") from None

    @property
    def linktype(self) -> int:
        """The first interface's link type (the only one in classic pcap)."""
        return self.interfaces[0].linktype

    @property
    def start(self) -> int:
        return self.interfaces[0].start

    def size(self) -> int:
        """The file's size in bytes (for progress)."""
        try:
            return self.path.stat().st_size if str(self.path) != "-" else 0
        except OSError:
            return 0

    def close(self) -> None:
        if self._f is not sys.stdin.buffer:
            self._f.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def frames(self, close: bool = False) -> Iterator[bytes]:
        """Only the packets' bytes, from where decoding starts (past a Linux cooked header).

        The fast path for a caller that needs neither times nor interfaces: no per-packet
        tuple. Classic pcap is cut into frames a chunk at a time (a list per chunk, so memory
        stays flat) and handed out by ``itertools.chain`` (no generator step per packet);
        :attr:`packets` and :attr:`offset` run up to one chunk ahead of the caller. Truncation
        is reported in :attr:`truncated` as when iterating records. With ``close``, the file
        closes when the frames run out (or the iterator is dropped).
        """
        self._close_at_end = close
        if self.format == "pcap":
            return chain.from_iterable(self._pcap_frames())
        return self._pcapng(frames=True)  # type: ignore[return-value]

    def _cut(self, what: str, pos: int) -> None:
        self.truncated = (f"{self.path}: packet {self.packets + 1} at byte {pos}: {what}; "
                          f"the {self.packets} packets before it were read")

    def _done(self, packets: int, offset: int) -> None:
        self.packets, self.offset = packets, offset
        if self._close_at_end:
            self.close()

    def _refill(self, buf: bytes, pos: int, base: int, inside: str) -> tuple[bytes, int] | None:
        """Drop what is consumed of ``buf`` (up to ``pos``) and append the next chunk.

        Returns the new buffer and the file offset of its first byte, or ``None`` at the end
        of the file, where bytes left over are a record cut short (``inside`` names it).
        :attr:`packets` must be current: the message counts the packets before the cut.
        """
        more = self._f.read(self.chunk)
        if not more:
            if pos < len(buf):
                self._cut(f"file ends inside {inside} ({len(buf) - pos} bytes of it)",
                          base + pos)
            return None
        return buf[pos:] + more, base + pos

    def _pcap_corrupt(self, buf: bytes, pos: int, base: int) -> bool:
        """Whether the record header at ``pos`` (if whole) claims an absurd length (reported)."""
        if len(buf) - pos < 16:
            return False
        caplen = struct.unpack_from(self._endian + "8xI", buf, pos)[0]
        if caplen <= MAX_RECORD:
            return False
        self._cut(f"corrupt record (captured length {caplen})", base + pos)
        return True

    def _pcap(self) -> Iterator[Record]:
        rec = struct.Struct(self._endian + "IIII").unpack_from
        iface = self.interfaces[0]
        lt, off, per_tick = iface.linktype, iface.offset, iface.num
        buf, pos, base = b"", 0, self.offset  # base: file offset of buf[0]
        n = 0
        empty = ()
        try:
            while True:
                end = len(buf)
                while pos + 16 <= end:
                    sec, frac, caplen, wirelen = rec(buf, pos)
                    nxt = pos + 16 + caplen
                    if nxt > end:
                        break
                    n += 1
                    yield (sec * 1_000_000_000 + frac * per_tick, lt, buf[pos + 16:nxt], off,
                           wirelen, 0, empty)
                    pos = nxt
                self.packets, self.offset = n, base + pos
                if self._pcap_corrupt(buf, pos, base):
                    return
                refilled = self._refill(buf, pos, base, "the packet")
                if refilled is None:
                    return
                (buf, base), pos = refilled, 0
        finally:
            self._done(n, base + pos)

    def _pcap_frames(self) -> Iterator[list[bytes]]:
        """Classic pcap frames, one list per chunk (see :meth:`frames`)."""
        caplen_at = struct.Struct(self._endian + "8xI").unpack_from
        skip = 16 + self.interfaces[0].offset  # record header, then a cooked header if any
        buf, pos, base = b"", 0, self.offset
        try:
            while True:
                end = len(buf)
                batch: list[bytes] = []
                add = batch.append
                while pos + 16 <= end:
                    nxt = pos + 16 + caplen_at(buf, pos)[0]
                    if nxt > end:
                        break
                    add(buf[pos + skip:nxt])
                    pos = nxt
                self.packets += len(batch)
                self.offset = base + pos
                if batch:
                    yield batch
                if self._pcap_corrupt(buf, pos, base):
                    return
                refilled = self._refill(buf, pos, base, "the packet")
                if refilled is None:
                    return
                (buf, base), pos = refilled, 0
        finally:
            self._done(self.packets, base + pos)

    def _pcapng(self, frames: bool = False) -> Iterator[Record]:
        """pcapng records; with ``frames``, only the frames (see :meth:`frames`)."""
        buf, pos, base = self._buf, 0, 0
        n = 0
        hdr2 = struct.Struct("<II").unpack_from
        epb = struct.Struct("<IIIII").unpack_from
        u32 = struct.Struct("<I").unpack_from
        section: list[Interface] = []  # this section's interfaces
        first = len(self.interfaces)  # global index of the section's interface 0
        empty: tuple[str, ...] = ()
        e = "<"
        try:
            while True:
                end = len(buf)
                while pos + 12 <= end:
                    btype, blen = hdr2(buf, pos)
                    if btype == _SHB:
                        bom = buf[pos + 8:pos + 12]
                        e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                        if struct.unpack(e + "I", bom)[0] != _BOM:
                            raise CaptureError(f"{self.path}: bad pcapng byte-order magic "
                                               f"{bom.hex()} at byte {base + pos}")
                        hdr2 = struct.Struct(e + "II").unpack_from
                        epb = struct.Struct(e + "IIIII").unpack_from
                        u32 = struct.Struct(e + "I").unpack_from
                        btype, blen = hdr2(buf, pos)
                        section = []
                        first = len(self.interfaces)
                    if blen < 12 or blen % 4 or blen > MAX_RECORD:
                        self._cut(f"corrupt pcapng block (type {btype:#x}, length {blen})",
                                  base + pos)
                        return
                    nxt = pos + blen
                    if nxt > end:
                        break
                    if btype == 6:  # Enhanced Packet Block
                        ifid, hi, lo, caplen, wirelen = epb(buf, pos + 8)
                        if ifid >= len(section) or 28 + caplen + 4 > blen:
                            self._cut(f"corrupt enhanced packet block (interface {ifid}, "
                                      f"captured length {caplen})", base + pos)
                            return
                        i = section[ifid]
                        dend = pos + 28 + caplen
                        n += 1
                        if frames:
                            yield buf[pos + 28 + i.offset:dend]  # type: ignore[misc]
                        else:
                            ostart = dend + (-caplen & 3)
                            yield ((hi << 32 | lo) * i.num // i.den + i.tsoffset_ns, i.linktype,
                                   buf[pos + 28:dend], i.offset, wirelen, first + ifid,
                                   _comments(buf, ostart, nxt - 4, e) if ostart < nxt - 4
                                   else empty)
                    elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                        if not section:
                            self._cut("simple packet block before any interface", base + pos)
                            return
                        i = section[0]
                        (wirelen,) = u32(buf, pos + 8)
                        caplen = min(wirelen, blen - 16, i.snaplen or wirelen)
                        n += 1
                        if frames:
                            yield buf[pos + 12 + i.offset:pos + 12 + caplen]  # type: ignore[misc]
                        else:
                            yield (None, i.linktype, buf[pos + 12:pos + 12 + caplen], i.offset,
                                   wirelen, first, empty)
                    elif btype == 2:  # obsolete Packet Block
                        ifid, _, hi, lo, caplen, wirelen = struct.unpack_from(
                            e + "HHIIII", buf, pos + 8)
                        if ifid >= len(section) or 28 + caplen + 4 > blen:
                            self._cut("corrupt packet block", base + pos)
                            return
                        i = section[ifid]
                        n += 1
                        if frames:
                            yield buf[pos + 28 + i.offset:pos + 28 + caplen]  # type: ignore[misc]
                        else:
                            yield ((hi << 32 | lo) * i.num // i.den + i.tsoffset_ns, i.linktype,
                                   buf[pos + 28:pos + 28 + caplen], i.offset, wirelen,
                                   first + ifid, empty)
                    elif btype == 1:  # Interface Description Block
                        iface = self._idb(buf, pos, blen, e, base + pos)
                        section.append(iface)
                        self.interfaces.append(iface)
                    pos = nxt
                self.packets, self.offset = n, base + pos
                refilled = self._refill(buf, pos, base, "a pcapng block")
                if refilled is None:
                    return
                (buf, base), pos = refilled, 0
        finally:
            self._done(n, base + pos)

    def _idb(self, buf: bytes, pos: int, blen: int, e: str, at: int) -> Interface:
        lt, snaplen = struct.unpack_from(e + "H2xI", buf, pos + 8)
        self._check(lt, f"interface {len(self.interfaces)} (pcapng block at byte {at}): ")
        name = None
        num, den, tsoffset = 1000, 1, 0  # default resolution: microseconds
        for code, value in _options(buf, pos + 16, pos + blen - 4, e):
            if code == 2:
                name = value.decode(errors="replace")
            elif code == 9 and value:
                r = value[0]
                if r & 0x80:  # 2^-n seconds
                    num, den = 1_000_000_000, 1 << (r & 0x7F)
                elif r <= 9:
                    num, den = 10 ** (9 - r), 1
                else:
                    num, den = 1, 10 ** (r - 9)
            elif code == 14 and len(value) == 8:
                tsoffset = struct.unpack(e + "q", value)[0] * 1_000_000_000
        return Interface(lt, snaplen, name, num, den, tsoffset)


def _options(buf: bytes, pos: int, end: int, e: str) -> Iterator[tuple[int, bytes]]:
    """pcapng options (code, value) in ``buf[pos:end]``, up to opt_endofopt."""
    hdr = struct.Struct(e + "HH").unpack_from
    while pos + 4 <= end:
        code, length = hdr(buf, pos)
        if code == 0:
            return
        yield code, buf[pos + 4:pos + 4 + length]
        pos += 4 + length + (-length & 3)


def _comments(buf: bytes, pos: int, end: int, e: str) -> tuple[str, ...]:
    return tuple(v.decode(errors="replace") for c, v in _options(buf, pos, end, e) if c == 1)


class PcapFile:
    """A capture file, classic pcap or pcapng (the benchmarks' and tests' older interface).

    Iterating yields ``(timestamp in seconds, frame)``; it streams through :class:`Capture`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with Capture(path) as cap:
            first = cap.interfaces[0] if cap.interfaces else None
        self.linktype = first.linktype if first else LINKTYPE_ETHERNET
        self.snaplen = first.snaplen if first else 0

    @property
    def start(self) -> int:
        """``START_ETH`` or ``START_IP`` for this link type."""
        return start_for(self.linktype)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        with Capture(self.path) as cap:
            for ts, _, data, off, _, _, _ in cap:
                yield (ts or 0) / 1e9, data[off:] if off else data

    def frames(self) -> Iterator[bytes]:
        """The frames alone (:meth:`Capture.frames`); the file closes when they run out."""
        return Capture(self.path).frames(close=True)


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
