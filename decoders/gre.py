"""GRE, RFC 2784 with the Key and Sequence Number extensions of RFC 2890, and NVGRE (RFC 7637).

Header::

    |C| |K|S| Reserved0       | Ver |         Protocol Type         |
    |      Checksum (optional)      |       Reserved1 (optional)    |
    |                         Key (optional)                        |
    |                 Sequence Number (optional)                    |

A receiver MUST discard packets with bits 1-5 set other than K and S (RFC 2784 section
2.3, RFC 2890 section 2); version 1 is PPTP's enhanced GRE, not decoded. The payload is
IPv4 (0x0800), IPv6 (0x86DD) or Ethernet (0x6558, "transparent Ethernet bridging").

NVGRE is GRE with K set, C and S clear and protocol 0x6558, the key holding a 24-bit
Virtual Subnet ID and an 8-bit FlowID. Linux ``gretap ... key N`` produces the same bits,
so such packets are reported as ``nvgre`` with ``vni = key >> 8`` *and* the full ``key``.
"""

from __future__ import annotations

from struct import error

from ._common import Stop, u16x2, u32

FLAG_C = 0x8000
FLAG_K = 0x2000
FLAG_S = 0x1000
_MUST_BE_ZERO = 0x4C00  # R, strict source route, top recursion bit (RFC 1701 leftovers)


def parse_gre(buf: bytes, off: int, layers: list[str]
              ) -> tuple[str, int, int | None, int | None, int]:
    """``(kind, protocol type, key, seq, payload offset)``; kind is ``gre`` or ``nvgre``."""
    flags, ptype = u16x2(buf, off)
    if flags & 7:
        raise Stop(f"unsupported gre version {flags & 7}", off)
    if flags & _MUST_BE_ZERO:
        raise Stop(f"bad gre flags 0x{flags:04x}", off)
    p = off + 4 + (4 if flags & FLAG_C else 0)
    key = seq = None
    try:
        if flags & FLAG_K:
            (key,) = u32(buf, p)
            p += 4
        if flags & FLAG_S:
            (seq,) = u32(buf, p)
            p += 4
    except error:
        raise Stop("truncated gre header", off) from None
    if len(buf) < p:
        raise Stop("truncated gre header", off)
    kind = ("nvgre" if ptype == 0x6558 and flags & (FLAG_C | FLAG_K | FLAG_S) == FLAG_K
            else "gre")
    layers.append(kind)
    return kind, ptype, key, seq, p
