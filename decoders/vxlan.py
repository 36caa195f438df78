"""VXLAN, RFC 7348, and a heuristic that recognises it on any UDP port.

Header (section 5)::

    |R|R|R|R|I|R|R|R|            Reserved                           |
    |                VXLAN Network Identifier (VNI) |   Reserved    |

The I flag (0x08) MUST be set for a valid VNI; a packet without it is reported as
``bad vxlan flags``. The other bits are reserved: sent as zero, ignored on receipt (and
used by extensions such as Group Based Policy), so the decoder ignores them. The
heuristic is stricter: exactly 0x08, every reserved byte zero, and an inner Ethernet +
IP packet whose length fields agree with the UDP length.
"""

from __future__ import annotations

from struct import Struct

from ._common import Stop, u16

_VXLAN = Struct("!BxxxI").unpack_from
FLAG_I = 0x08


def parse_vxlan(buf: bytes, off: int, layers: list[str]) -> int:
    """Check the 8-byte header at ``off`` and return the VNI; inner Ethernet follows."""
    flags, word = _VXLAN(buf, off)
    if not flags & FLAG_I:
        raise Stop(f"bad vxlan flags 0x{flags:02x}", off)
    layers.append("vxlan")
    return word >> 8


def looks_like_vxlan(buf: bytes, off: int, udp_payload_len: int) -> bool:
    """True when the UDP payload at ``off`` is very likely VXLAN (see the module docstring).

    ``udp_payload_len`` is the UDP payload length the headers declare; the inner IP packet
    must fill exactly that (minus the VXLAN and Ethernet headers).
    """
    if len(buf) < off + 8 + 14 + 20 or buf[off] != FLAG_I:
        return False
    if buf[off + 1:off + 4] != b"\0\0\0" or buf[off + 7]:
        return False
    eth = off + 8
    (etype,) = u16(buf, eth + 12)
    ip = eth + 14
    if etype == 0x8100:
        (etype,) = u16(buf, ip + 2)
        ip += 4
    inner_len = udp_payload_len - (ip - off)
    if etype == 0x0800:
        vihl = buf[ip]
        return vihl >> 4 == 4 and vihl & 15 >= 5 and u16(buf, ip + 2)[0] == inner_len
    if etype == 0x86DD:
        return buf[ip] >> 4 == 6 and len(buf) >= ip + 6 and u16(buf, ip + 4)[0] + 40 == inner_len
    return False
