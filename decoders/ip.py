"""IPv4 (RFC 791, options per RFC 791 section 3.1) and IPv6 (RFC 8200, extension headers).

Both parsers return the same shape:
``(proto, src, dst, ip_id, frag_offset, more_frags, l4_offset, l4_len)`` where ``l4_len``
is the L4 length the headers declare (the captured buffer may be shorter). Fragments:
only the first fragment (offset 0) carries the L4 header; for the others the caller must
not look for ports. Unlike dpkt and scapy, a wrong version or an IHL below 5 is an error.
"""

from __future__ import annotations

from struct import Struct

from ._common import Stop, u16, u32, v4_get, v4_text, v6_get, v6_text

#: ``(version/IHL, total length, id, flags/fragment, proto, src, dst)`` of an IPv4 header.
IPV4_FIELDS = _V4 = Struct("!BxHHHxBxx4s4s").unpack_from
_V6 = Struct("!IHBx16s16s").unpack_from

#: IPv6 extension headers we walk (RFC 8200 section 4, AH per RFC 4302).
IPV6_EXT_NAMES = {0: "ipv6-hopopts", 43: "ipv6-routing", 44: "ipv6-fragment",
                  60: "ipv6-dstopts", 51: "ipv6-ah", 135: "ipv6-mobility"}


def parse_ipv4(buf: bytes, off: int, layers: list[str], name: str = "ipv4"
               ) -> tuple[int, str, str, int, int, bool, int, int]:
    """Decode the IPv4 header at ``off`` (see the module docstring for the result)."""
    vihl, tot, ident, ff, proto, s, d = _V4(buf, off)
    if vihl >> 4 != 4:
        raise Stop(f"bad {name} version {vihl >> 4}", off)
    hl = (vihl & 15) << 2
    if hl < 20:
        raise Stop(f"bad {name} header length {hl}", off)
    if len(buf) < off + hl:
        raise Stop(f"truncated {name} options", off)
    if tot < hl:
        if tot:
            raise Stop(f"bad {name} total length {tot}", off)
        tot = len(buf) - off  # 0: GSO/BIG TCP packet inside the kernel, length unknown
    layers.append(name)
    return (proto, v4_get(s) or v4_text(s), v4_get(d) or v4_text(d), ident,
            (ff & 0x1FFF) << 3, ff & 0x2000 != 0, off + hl, tot - hl)


def parse_ipv6(buf: bytes, off: int, layers: list[str], name: str = "ipv6"
               ) -> tuple[int, str, str, int, int, bool, int, int]:
    """Decode the IPv6 header and its extension headers at ``off``.

    ``ip_id``/``frag_offset``/``more_frags`` come from a Fragment header (0 without one).
    ESP (50) and No Next Header (59) end the walk: ``proto`` is 50 or 59.
    """
    vtf, plen, nh, s, d = _V6(buf, off)
    if vtf >> 28 != 6:
        raise Stop(f"bad {name} version {vtf >> 28}", off)
    if plen == 0:
        plen = len(buf) - off - 40  # jumbogram / GSO inside the kernel: length unknown
    layers.append(name)
    p = off + 40
    ident = frag = 0
    more = False
    while nh in IPV6_EXT_NAMES:
        ext = IPV6_EXT_NAMES[nh]
        if len(buf) < p + 8:
            raise Stop(f"truncated {ext} header", p)
        nxt = buf[p]
        if nh == 44:
            (fo,) = u16(buf, p + 2)
            (ident,) = u32(buf, p + 4)
            frag = fo & 0xFFF8
            more = fo & 1 != 0
            hl = 8
        elif nh == 51:
            hl = (buf[p + 1] + 2) << 2
        else:
            hl = (buf[p + 1] + 1) << 3
        if len(buf) < p + hl:
            raise Stop(f"truncated {ext} header", p)
        layers.append(ext if name == "ipv6" else f"{name}-{ext[5:]}")
        p += hl
        nh = nxt
        if frag:
            break  # a non-first fragment: what follows is payload, not headers
    ext_len = p - off - 40
    if ext_len > plen:
        raise Stop(f"bad {name} payload length {plen}", off)
    return (nh, v6_get(s) or v6_text(s), v6_get(d) or v6_text(d), ident, frag, more,
            p, plen - ext_len)
