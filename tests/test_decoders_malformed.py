"""decoders: malformed and truncated input never raises; the error says where and why."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from decoders import START_ETH, START_IP, Decoded, decode
from decoders.core import MAX_TUNNELS

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
NODES = {"src": "192.168.77.1", "dst": "192.168.77.2"}
PODS = {"src": "10.244.1.2", "dst": "10.244.2.2"}


def vx(flags: int = 0x08) -> bytes:
    return bytes(Ether(**MAC) / IP(**NODES) / UDP(sport=1, dport=8472) /
                 VXLAN(vni=1, flags=flags, NextProtocol=0) / Ether(**MAC) / IP(**PODS) /
                 TCP(sport=1, dport=2) / Raw(b"d" * 20))


VALID = [
    vx(),
    bytes(Ether(**MAC) / Dot1Q(vlan=3) / IP(**NODES, proto=4) / IP(**PODS) / ICMP()),
    bytes(Ether(**MAC) / IPv6() / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=6081) /
          GENEVE(vni=3, proto=0x6558, optionlen=1, options=b"\x00\x01\x02\x00") /
          Ether(**MAC) / IP(**PODS) / UDP()),
    bytes(Ether(**MAC) / IP(**NODES) / GRE(key_present=1, key=5, proto=0x6558) /
          Ether(**MAC) / IP(**PODS) / TCP()),
    bytes(Ether(**MAC) / IP(**NODES) / ICMP(type=3, code=1) / IP(**PODS) / UDP()),
]


def check_shape(d: Decoded, n: int) -> None:
    """Invariants every result keeps, whatever the input."""
    assert isinstance(d.layers, tuple) and all(isinstance(x, str) for x in d.layers)
    if d.error is None:
        assert d.error_offset == -1
    else:
        assert isinstance(d.error, str) and d.error
        assert 0 <= d.error_offset <= n
    if d.inner is None:
        assert d.outer is None and d.tunnels == ()
    else:
        assert d.outer is not None
        assert d.inner.l3 in (4, 6)
        d.inner.key(), d.inner.identity()
    assert isinstance(d.summary(), str)


@pytest.mark.parametrize(("buf", "start", "error", "offset", "layers"), [
    (b"", START_ETH, "truncated eth header", 0, ()),
    (b"", START_IP, "truncated ip header", 0, ()),
    (b"\x75" + bytes(30), START_IP, "bad ip version 7", 0, ()),
    # dpkt accepts an IPv4 header with version 6, scapy accepts IHL < 5: both are errors here
    (bytes(Ether(**MAC) / IP(version=6, **PODS) / UDP()), START_ETH, "bad ipv4 version 6", 14,
     ("eth",)),
    (bytes(Ether(**MAC) / IP(ihl=4, **PODS) / UDP()), START_ETH, "bad ipv4 header length 16",
     14, ("eth",)),
    (bytes(Ether(**MAC) / IP(len=12, **PODS) / UDP()), START_ETH, "bad ipv4 total length 12",
     14, ("eth",)),
    (bytes(Ether(**MAC) / IP(ihl=15, **PODS))[:40], START_ETH, "truncated ipv4 options", 14,
     ("eth",)),
    (bytes(Ether(**MAC) / IP(**PODS) / TCP(dataofs=4)), START_ETH, "bad tcp header length 16",
     34, ("eth", "ipv4")),
    (bytes(Ether(**MAC) / IP(**PODS) / TCP())[:40], START_ETH, "truncated tcp header", 34,
     ("eth", "ipv4")),
    (bytes(Ether(**MAC) / Dot1Q(vlan=1))[:16], START_ETH, "truncated vlan header", 14,
     ("eth",)),
    (vx(flags=0), START_ETH, "bad vxlan flags 0x00", 42, ("eth", "ipv4", "udp")),
    (vx()[:60], START_ETH, "truncated eth header", 50, ("eth", "ipv4", "udp", "vxlan")),
    (bytes(Ether(**MAC) / IP(**NODES) / UDP(sport=1, dport=6081) / GENEVE(version=1)),
     START_ETH, "bad geneve version 1", 42, ("eth", "ipv4", "udp")),
    (bytes(Ether(**MAC) / IP(**NODES) / UDP(sport=1, dport=6081) /
           GENEVE(optionlen=1, options=b"\x00\x01\x02\x05")), START_ETH,
     "bad geneve option length", 50, ("eth", "ipv4", "udp")),
    (bytes(Ether(**MAC) / IP(**NODES) / GRE(version=1)), START_ETH, "unsupported gre version 1",
     34, ("eth", "ipv4")),
    (bytes(Ether(**MAC) / IP(**NODES) / GRE(routing_present=1)), START_ETH,
     "bad gre flags 0x4000", 34, ("eth", "ipv4")),
    (bytes(Ether(**MAC) / IP(**NODES) / GRE(key_present=1))[:38], START_ETH,
     "truncated gre header", 34, ("eth", "ipv4")),
    (bytes(Ether(**MAC) / IP(**NODES) / ICMP(type=3) / IP(**PODS))[:50], START_ETH,
     "truncated quoted-ipv4 header", 42, ("eth", "ipv4", "icmp")),
    (bytes(Ether(**MAC) / IPv6() / IPv6ExtHdrHopByHop() / UDP())[:60], START_ETH,
     "truncated ipv6-hopopts header", 54, ("eth", "ipv6")),
])
def test_malformed_is_reported(buf: bytes, start: int, error: str, offset: int,
                               layers: tuple[str, ...]) -> None:
    d = decode(buf, start=start)
    assert (d.error, d.error_offset, d.layers) == (error, offset, layers)
    check_shape(d, len(buf))


def test_bad_vxlan_keeps_the_carrier_flow() -> None:
    d = decode(vx(flags=0))
    assert d.inner is d.outer and d.inner is not None
    assert (d.inner.src, d.inner.dport) == (NODES["src"], 8472)
    assert d.tunnels == ()


def test_truncated_l4_keeps_the_ip_flow() -> None:
    d = decode(vx()[:14 + 20 + 8 + 8 + 14 + 20 + 6])
    assert d.error == "truncated tcp header"
    assert d.inner is not None and d.inner.src == PODS["src"] and d.inner.sport == 0
    assert d.outer is not None and d.outer.dport == 8472


def test_nesting_is_bounded() -> None:
    pkt = IP(**PODS) / UDP()
    for _ in range(MAX_TUNNELS + 2):
        pkt = IP(**NODES) / pkt
    d = decode(bytes(pkt), start=START_IP)
    assert d.error == "too many nested tunnels"
    assert len(d.tunnels) == MAX_TUNNELS


@pytest.mark.parametrize("buf", VALID)
def test_every_truncation(buf: bytes) -> None:
    full = decode(buf)
    assert full.error is None
    for n in range(len(buf)):
        d = decode(buf[:n])
        check_shape(d, n)
        assert full.layers[:len(d.layers)] == d.layers
        if d.error is None:  # only a cut in the payload goes unnoticed
            assert d.layers == full.layers


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([START_ETH, START_IP]), st.booleans())
def test_arbitrary_bytes_never_raise(buf: bytes, start: int, guess: bool) -> None:
    check_shape(decode(buf, start=start, guess=guess), len(buf))


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)),
                                         max_size=6), st.integers(0, 200))
def test_mutated_packets_never_raise(buf: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(buf)
    for pos, value in flips:
        if pos < len(mutated):
            mutated[pos] = value
    d = decode(mutated[:cut] if cut < len(buf) else mutated)
    check_shape(d, min(cut, len(buf)))
