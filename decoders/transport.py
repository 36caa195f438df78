"""TCP (RFC 9293), UDP (RFC 768), ICMP (RFC 792) and ICMPv6 (RFC 4443).

ICMP errors quote the packet that caused them (RFC 792: the IP header and at least 8
bytes; RFC 1812/4443: as much as fits). :func:`parse_quoted` decodes that quote leniently
into a :class:`~decoders.model.Flow`: the quoted lengths describe the original packet, not
the bytes present, so only missing *headers* stop it.
"""

from __future__ import annotations

from struct import Struct, error

from ._common import Stop, u16x2
from .ip import parse_ipv4, parse_ipv6
from .model import Flow, new_flow

#: ``(sport, dport, seq, ack, data offset, flags)``: the whole 20-byte header must be there.
TCP_FIELDS = _TCP = Struct("!HHIIBB6x").unpack_from
_TCP8 = Struct("!HHI").unpack_from
_ICMP = Struct("!BBxxHH").unpack_from
#: ``(sport, dport)`` of the 8-byte UDP header at an offset (a bare unpack: it is hot).
parse_udp = Struct("!HH4x").unpack_from

#: ICMP types whose body quotes the offending packet, per IP version.
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMPV6_ERRORS = frozenset({1, 2, 3, 4})
#: ICMP types with identifier/sequence fields (echo, timestamp, information, address mask).
ICMP_QUERIES = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
ICMPV6_QUERIES = frozenset({128, 129})
_QUOTED_L4 = {6: "quoted-tcp", 17: "quoted-udp", 132: "quoted-sctp", 1: "quoted-icmp",
              58: "quoted-icmpv6"}



def parse_tcp(buf: bytes, off: int, l4_len: int) -> tuple[int, int, int, int, int, int]:
    """``(sport, dport, seq, ack, flags, payload_len)``; flags has NS as bit 8."""
    sport, dport, seq, ack, doff, flags = _TCP(buf, off)
    hl = (doff >> 4) << 2
    if hl < 20 or hl > l4_len:
        raise Stop(f"bad tcp header length {hl}", off)
    return sport, dport, seq, ack, (doff & 1) << 8 | flags, l4_len - hl


def parse_icmp(buf: bytes, off: int, v6: bool) -> tuple[int, int, int, int, bool]:
    """``(type, code, id, seq, is_error)``; id/seq are 0 unless the type is a query."""
    typ, code, ident, seq = _ICMP(buf, off)
    if typ in (ICMPV6_QUERIES if v6 else ICMP_QUERIES):
        return typ, code, ident, seq, False
    return typ, code, 0, 0, typ in (ICMPV6_ERRORS if v6 else ICMP_ERRORS)


def parse_quoted(buf: bytes, off: int, layers: list[str]) -> tuple[Flow, Stop | None]:
    """Decode the packet quoted by an ICMP error at ``off`` (layers ``quoted-ipv4``...).

    Returns the quoted flow and, when its L4 header is cut, the :class:`Stop` to report
    (the addresses are still worth having). A cut IP header raises :class:`Stop`.
    """
    if len(buf) <= off:
        raise Stop("truncated quoted ip header", off)
    version = buf[off] >> 4
    try:
        if version == 4:
            proto, src, dst, ip_id, frag, more, p, plen = parse_ipv4(buf, off, layers,
                                                                     "quoted-ipv4")
            l3 = 4
        elif version == 6:
            proto, src, dst, ip_id, frag, more, p, plen = parse_ipv6(buf, off, layers,
                                                                     "quoted-ipv6")
            l3 = 6
        else:
            raise Stop(f"bad quoted ip version {version}", off)
    except error:
        raise Stop(f"truncated quoted-ipv{version} header", off) from None
    sport = dport = seq = ack = flags = typ = code = ident = qseq = 0
    stop = None
    name = _QUOTED_L4.get(proto) if frag == 0 else None
    if name is not None and len(buf) < p + 8:
        stop = Stop(f"truncated {name} header", p)
    elif name is not None:
        if proto == 6:
            if len(buf) >= p + 20:
                sport, dport, seq, ack, flags, plen = parse_tcp(buf, p, plen)
            else:
                sport, dport, seq = _TCP8(buf, p)
                plen -= 20
        elif proto == 1 or proto == 58:
            typ, code, ident, qseq, _ = parse_icmp(buf, p, proto == 58)
            plen -= 8
        else:
            sport, dport = u16x2(buf, p)
            plen -= 8
        layers.append(name)
    return new_flow(l3, src, dst, proto, sport, dport, ip_id, frag, more, seq, ack, flags,
                    typ, code, ident, qseq, max(plen, 0)), stop
