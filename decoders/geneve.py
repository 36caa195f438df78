"""Geneve, RFC 8926.

Header (section 3.4)::

    |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
    |        Virtual Network Identifier (VNI)       |    Reserved   |
    |                    Variable-Length Options                    |

Version must be 0. ``Opt Len`` counts 4-byte words of options; each option (section
3.5) is ``class(16) type(8) R R R length(5)`` followed by ``length`` 4-byte words. The
payload is Ethernet (Protocol Type 0x6558) or, as RFC 8926 allows, IPv4/IPv6 directly.
"""

from __future__ import annotations

from struct import Struct

from ._common import Stop

_GENEVE = Struct("!BxHI").unpack_from
_OPTION = Struct("!HBB").unpack_from


def parse_geneve(buf: bytes, off: int, layers: list[str]
                 ) -> tuple[int, int, tuple[tuple[int, int, bytes], ...], int]:
    """``(protocol type, vni, options, payload offset)`` of the header at ``off``."""
    ver_optlen, ptype, word = _GENEVE(buf, off)
    if ver_optlen >> 6:
        raise Stop(f"bad geneve version {ver_optlen >> 6}", off)
    end = off + 8 + ((ver_optlen & 0x3F) << 2)
    if len(buf) < end:
        raise Stop("truncated geneve options", off)
    options: list[tuple[int, int, bytes]] = []
    p = off + 8
    while p < end:
        cls, typ, length = _OPTION(buf, p)
        nxt = p + 4 + ((length & 0x1F) << 2)
        if nxt > end:
            raise Stop("bad geneve option length", p)
        options.append((cls, typ, buf[p + 4:nxt]))
        p = nxt
    layers.append("geneve")
    return ptype, word >> 8, tuple(options), end
