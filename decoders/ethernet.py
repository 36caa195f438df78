"""Ethernet II (IEEE 802.3 clause 3.2.6) and VLAN tags: 802.1Q, 802.1ad QinQ (and 0x9100).

Each tag adds a ``vlan`` layer; QinQ is two of them, outermost first. The VLAN ID (low
12 bits of the TCI) is collected for ``Decoded.vlans``.
"""

from __future__ import annotations

from ._common import Stop, u16, u16x2

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_TEB = 0x6558  # Transparent Ethernet Bridging: Ethernet inside GRE/Geneve
#: Tag protocol identifiers: 802.1Q C-tag, 802.1ad S-tag, and the pre-standard QinQ value.
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
#: EtherTypes we do not decode further but name in ``layers``.
ETHERTYPE_NAMES = {ETH_P_ARP: "arp", 0x8035: "rarp", 0x88CC: "lldp", 0x8847: "mpls",
                   0x8848: "mpls", 0x8863: "pppoe", 0x8864: "pppoe", 0x888E: "eapol",
                   0x88E5: "macsec", 0x88F7: "ptp"}
_MAX_TAGS = 8


def parse_ethernet(buf: bytes, off: int, layers: list[str]) -> tuple[int, int, tuple[int, ...]]:
    """Decode the MAC header at ``off``: ``(ethertype, payload offset, vlan ids)``.

    Raises ``struct.error`` when the 14-byte header is cut, :class:`Stop` for a cut tag.
    (The decoder's loop inlines the untagged case and calls :func:`parse_vlan_tags`.)
    """
    (etype,) = u16(buf, off + 12)
    layers.append("eth")
    off += 14
    if etype not in VLAN_TPIDS:
        return etype, off, ()
    return parse_vlan_tags(buf, off, etype, layers)


def parse_vlan_tags(buf: bytes, off: int, etype: int, layers: list[str]
                    ) -> tuple[int, int, tuple[int, ...]]:
    """Walk the VLAN tags at ``off`` (``etype`` is the first TPID): like parse_ethernet."""
    vids: list[int] = []
    while etype in VLAN_TPIDS:
        if len(buf) < off + 4:
            raise Stop("truncated vlan header", off)
        if len(vids) == _MAX_TAGS:
            raise Stop("too many vlan tags", off)
        tci, etype = u16x2(buf, off)
        vids.append(tci & 0xFFF)
        layers.append("vlan")
        off += 4
    return etype, off, tuple(vids)
