"""Packet corpora for the decoder benchmark and the tshark cross-check.

Each corpus is a pool of distinct packets crafted with scapy (a few hundred flows, varying
IP IDs, sequence numbers and payload sizes), sampled with a fixed seed up to the wanted
packet count and written as a classic pcap. Crafting 200,000 packets one by one with scapy
would take minutes; sampling a pool keeps the flows realistic and the generation fast.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from decoders.pcap import write_pcap

CORPORA = ("plain", "vxlan4789", "vxlan8472", "ipip", "geneve", "mix")
#: tshark decode-as arguments each corpus needs (tshark knows 4789 and 6081 only); the
#: benchmark keeps a copy so that its workers need not import scapy.
TSHARK_DECODE_AS = {"vxlan8472": ["udp.port==8472,vxlan"],
                    "mix": ["udp.port==8472,vxlan", "udp.port==8285,ip"]}
POOL = 2000
_MAC = {"src": "02:42:0a:f4:01:02", "dst": "02:42:0a:f4:02:02"}


def _pod(r: random.Random, v6: bool = False) -> str:
    if v6:
        return f"fd00:10:244:{r.randrange(1, 5):x}::{r.randrange(2, 10):x}"
    return f"10.244.{r.randrange(1, 5)}.{r.randrange(2, 10)}"


def _inner(r: random.Random, v6: bool = False) -> Packet:
    """A pod-to-pod packet: TCP, UDP or ICMP echo with varying identity fields."""
    ip: Packet = (IPv6(src=_pod(r, True), dst=_pod(r, True)) if v6 else
                  IP(src=_pod(r), dst=_pod(r), id=r.randrange(65536)))
    pick = r.random()
    data = Raw(b"x" * r.randrange(0, 200))
    if pick < 0.6:
        return ip / TCP(sport=r.choice([80, 443, 8080]) if r.random() < 0.5 else
                        r.randrange(32768, 32800), dport=r.choice([80, 443, 8080]),
                        seq=r.randrange(1 << 32), ack=r.randrange(1 << 32), flags="PA") / data
    if pick < 0.85:
        return ip / UDP(sport=r.randrange(32768, 32800), dport=5000) / data
    if v6:
        return ip / ICMPv6EchoRequest(id=r.randrange(3), seq=r.randrange(1000)) / data
    return ip / ICMP(id=r.randrange(3), seq=r.randrange(1000)) / data


def _node(r: random.Random) -> dict[str, str]:
    a, b = r.sample(range(1, 5), 2)
    return {"src": f"192.168.77.{a}", "dst": f"192.168.77.{b}"}


def _vxlan(r: random.Random, port: int, inner: Packet) -> Packet:
    return (IP(**_node(r), id=r.randrange(65536)) / UDP(sport=r.randrange(32768, 61000),
                                                       dport=port) /
            VXLAN(vni=r.choice([1, 2, 100]), flags=0x08, NextProtocol=0) / Ether(**_MAC) / inner)


def _mix(r: random.Random) -> bytes:
    """One packet of the nasty mix (about 10 % of them malformed or truncated)."""
    kind = r.randrange(16)
    if kind == 0:
        return bytes(Ether(**_MAC) / Dot1Q(vlan=r.randrange(1, 4095)) / _inner(r))
    if kind == 1:
        return bytes(Ether(**_MAC) / Dot1AD(vlan=10) / Dot1Q(vlan=20) / _inner(r))
    if kind == 2:
        return bytes(Ether(**_MAC) / IPv6(src=_pod(r, True), dst=_pod(r, True)) /
                     IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() /
                     TCP(sport=r.randrange(32768, 32800), dport=443) / Raw(b"t" * 10))
    if kind == 3:
        return bytes(Ether(**_MAC) / _inner(r, v6=True))
    if kind == 4:
        return bytes(Ether(**_MAC) / IP(src="10.244.9.1", dst=_pod(r)) / ICMP(type=3, code=3) /
                     IP(src=_pod(r), dst="10.244.9.1") / UDP(sport=r.randrange(32768, 32800),
                                                            dport=5000))
    if kind == 5:
        return bytes(Ether(**_MAC) / IPv6(src="fd00::9", dst=_pod(r, True)) /
                     ICMPv6DestUnreach(code=4) / IPv6(src=_pod(r, True), dst="fd00::9") /
                     UDP(sport=r.randrange(32768, 32800), dport=5000))
    if kind == 6:
        return bytes(Ether(**_MAC) / Dot1Q(vlan=7) / IP(src="172.16.0.1", dst="172.16.0.2") /
                     _vxlan(r, 8472, _inner(r)))
    if kind == 7:
        return bytes(Ether(**_MAC) / IP(**_node(r)) / UDP(sport=6081, dport=6081) /
                     GENEVE(vni=r.randrange(1 << 24), proto=0x0800) / _inner(r))
    if kind == 8:
        return bytes(Ether(**_MAC) / IP(**_node(r)) /
                     GRE(key_present=1, key=r.randrange(1 << 32), seqnum_present=1,
                         sequence_number=r.randrange(1000), proto=0x0800) / _inner(r))
    if kind == 9:
        return bytes(Ether(**_MAC) / IP(**_node(r)) /
                     GRE(key_present=1, key=(5001 << 8) | 3, proto=0x6558) / Ether(**_MAC) /
                     _inner(r))
    if kind == 10:
        return bytes(Ether(**_MAC) / IP(**_node(r)) / UDP(sport=8285, dport=8285) / _inner(r))
    if kind == 11:
        ident = r.randrange(65536)
        src, dst = _pod(r), _pod(r)
        if r.random() < 0.5:
            return bytes(Ether(**_MAC) / IP(src=src, dst=dst, id=ident, flags="MF") /
                         UDP(sport=40000, dport=5000, len=2008) / Raw(b"f" * 1472))
        return bytes(Ether(**_MAC) / IP(src=src, dst=dst, id=ident, frag=185, proto=17) /
                     Raw(b"g" * 528))
    if kind == 12:
        return bytes(Ether(**_MAC) / _vxlan(r, 4789, _inner(r)))
    # malformed: wrong version, IHL < 5, cut short, bad VXLAN flags
    if kind == 13:
        return bytes(Ether(**_MAC) / IP(src=_pod(r), dst=_pod(r), version=r.choice([5, 6, 7])) /
                     UDP())
    if kind == 14:
        full = bytes(Ether(**_MAC) / _vxlan(r, 4789, _inner(r)))
        return full[:r.randrange(10, 90)]
    return bytes(Ether(**_MAC) / IP(src=_pod(r), dst=_pod(r), ihl=r.randrange(0, 5)) / TCP())


_BUILDERS: dict[str, Callable[[random.Random], bytes]] = {
    "plain": lambda r: bytes(Ether(**_MAC) / _inner(r)),
    "vxlan4789": lambda r: bytes(Ether(**_MAC) / _vxlan(r, 4789, _inner(r))),
    "vxlan8472": lambda r: bytes(Ether(**_MAC) / _vxlan(r, 8472, _inner(r))),
    "ipip": lambda r: bytes(Ether(**_MAC) / IP(**_node(r), proto=4) / _inner(r)),
    "geneve": lambda r: bytes(
        Ether(**_MAC) / IP(**_node(r)) / UDP(sport=r.randrange(32768, 61000), dport=6081) /
        GENEVE(vni=r.choice([7, 8]), proto=0x6558,
               options=[GeneveOptions(classid=0x0102, type=0x80, data=b"\x00\x00\x00\x2a")]) /
        Ether(**_MAC) / _inner(r)),
    "mix": _mix,
}


def pool(name: str, size: int = POOL, seed: int = 1) -> list[bytes]:
    """``size`` distinct packets of corpus ``name``."""
    r = random.Random(f"{name}-{seed}")
    return [_BUILDERS[name](r) for _ in range(size)]


def write_corpus(name: str, path: str | Path, packets: int, seed: int = 1,
                 pool_size: int = POOL) -> int:
    """Write ``packets`` packets sampled from ``pool(name)`` to ``path``."""
    frames = pool(name, min(pool_size, packets), seed)
    r = random.Random(seed)
    return write_pcap(path, (frames[r.randrange(len(frames))] for _ in range(packets)))
