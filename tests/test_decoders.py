"""decoders: packets crafted with scapy, decoded, checked layer by layer and field by field."""

from __future__ import annotations

import pytest
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from decoders import DEFAULT_PORTS, START_IP, Decoded, Flow, PortMap, Tunnel, decode

POD_A, POD_B = "10.244.1.2", "10.244.2.2"
NODE_A, NODE_B = "192.168.77.1", "192.168.77.2"
V6_A, V6_B = "fd00::1", "fd00::2"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def flow(l3: int = 4, src: str = POD_A, dst: str = POD_B, proto: int = 6, **kw: object) -> Flow:
    """A Flow with every unspecified field at its 'absent' value (0/False)."""
    fields: dict[str, object] = dict(sport=0, dport=0, ip_id=0, frag_offset=0, more_frags=False,
                                     tcp_seq=0, tcp_ack=0, tcp_flags=0, icmp_type=0,
                                     icmp_code=0, icmp_id=0, icmp_seq=0, payload_len=0)
    fields.update(kw)
    return Flow(l3, src, dst, proto, **fields)  # type: ignore[arg-type]


def dec(pkt: Packet | bytes, **kw: object) -> Decoded:
    d = decode(bytes(pkt), **kw)  # type: ignore[arg-type]
    return d


def pod_echo(ident: int = 7133, seq: int = 1, ip_id: int = 4242) -> Packet:
    return IP(src=POD_A, dst=POD_B, id=ip_id) / ICMP(id=ident, seq=seq) / Raw(b"x" * 56)


def pod_tcp() -> Packet:
    return (IP(src=POD_A, dst=POD_B, id=99) /
            TCP(sport=40000, dport=8080, seq=1000, ack=2000, flags="PA") / Raw(b"y" * 10))


ECHO = flow(proto=1, ip_id=4242, icmp_type=8, icmp_id=7133, icmp_seq=1, payload_len=56)
TCP_FLOW = flow(sport=40000, dport=8080, ip_id=99, tcp_seq=1000, tcp_ack=2000,
                tcp_flags=0x18, payload_len=10)


def vxlan(inner: Packet, dport: int = 8472, vni: int = 1) -> Packet:
    return (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B, id=77) / UDP(sport=38664, dport=dport) /
            VXLAN(vni=vni, flags=0x08, NextProtocol=0) / Ether(**MAC) / inner)


# --- plain packets -----------------------------------------------------------------------

def test_plain_tcp_with_ip_options() -> None:
    pkt = Ether(**MAC) / IP(src=POD_A, dst=POD_B, id=99, options=b"\x94\x04\x00\x00") / \
        TCP(sport=40000, dport=8080, seq=1000, ack=2000, flags="PA",
            options=[("MSS", 1460)]) / Raw(b"y" * 10)
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "tcp")
    assert d.inner == TCP_FLOW
    assert d.outer is d.inner
    assert d.tunnels == () and d.error is None and d.error_offset == -1


def test_plain_udp_and_input_types() -> None:
    pkt = Ether(**MAC) / IP(src=POD_A, dst=POD_B, id=5) / UDP(sport=5353, dport=53) / Raw(b"q" * 30)
    want = flow(proto=17, sport=5353, dport=53, ip_id=5, payload_len=30)
    for buf in (bytes(pkt), bytearray(bytes(pkt)), memoryview(bytes(pkt))):
        d = decode(buf)
        assert d.layers == ("eth", "ipv4", "udp")
        assert d.inner == want


def test_start_ip_v4_and_v6() -> None:
    d = decode(bytes(pod_tcp()), start=START_IP)
    assert d.layers == ("ipv4", "tcp") and d.inner == TCP_FLOW
    d = decode(bytes(IPv6(src=V6_A, dst=V6_B) / UDP(sport=1, dport=2) / Raw(b"abc")),
               start=START_IP)
    assert d.layers == ("ipv6", "udp")
    assert d.inner == flow(6, V6_A, V6_B, 17, sport=1, dport=2, payload_len=3)


def test_arp_has_no_flow() -> None:
    d = dec(Ether(**MAC) / ARP())
    assert d.layers == ("eth", "arp") and d.inner is None and d.outer is None
    assert d.error is None


# --- VLANs ---------------------------------------------------------------------------------

def test_qinq() -> None:
    pkt = Ether(**MAC) / Dot1AD(vlan=10) / Dot1Q(vlan=20) / pod_tcp()
    d = dec(pkt)
    assert d.layers == ("eth", "vlan", "vlan", "ipv4", "tcp")
    assert d.vlans == (10, 20)
    assert d.inner == TCP_FLOW


# --- tunnels -----------------------------------------------------------------------------

def test_vxlan_flannel_8472_echo_and_summary() -> None:
    d = dec(vxlan(pod_echo()))
    assert d.layers == ("eth", "ipv4", "udp", "vxlan", "eth", "ipv4", "icmp")
    assert d.inner == ECHO
    assert d.outer == flow(4, NODE_A, NODE_B, 17, sport=38664, dport=8472, ip_id=77,
                           payload_len=8 + 14 + 84)
    assert d.tunnels == (Tunnel("vxlan", 1, NODE_A, NODE_B, 38664, 8472),)
    assert d.summary() == ("VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472 | "
                           "10.244.1.2 -> 10.244.2.2 ICMP echo id=7133 seq=1")


@pytest.mark.parametrize("port", [4789, 8472, 6784])
def test_vxlan_default_ports(port: int) -> None:
    d = dec(vxlan(pod_tcp(), dport=port, vni=0xABCDE))
    assert d.layers == ("eth", "ipv4", "udp", "vxlan", "eth", "ipv4", "tcp")
    assert d.inner == TCP_FLOW
    assert d.tunnels[0].vni == 0xABCDE and not d.tunnels[0].guessed


def test_vxlan_in_ipip_in_vlan() -> None:
    pkt = (Ether(**MAC) / Dot1Q(vlan=100) / IP(src="172.16.0.1", dst="172.16.0.2", id=1) /
           IP(src=NODE_A, dst=NODE_B, id=77) / UDP(sport=38664, dport=4789) / VXLAN(vni=7) /
           Ether(**MAC) / pod_tcp())
    d = dec(pkt)
    assert d.layers == ("eth", "vlan", "ipv4", "ipv4", "udp", "vxlan", "eth", "ipv4", "tcp")
    assert d.vlans == (100,)
    assert [t.kind for t in d.tunnels] == ["ipip", "vxlan"]
    assert d.tunnels[0] == Tunnel("ipip", None, "172.16.0.1", "172.16.0.2", 0, 0)
    assert d.tunnels[1] == Tunnel("vxlan", 7, NODE_A, NODE_B, 38664, 4789)
    assert d.outer == flow(4, "172.16.0.1", "172.16.0.2", 4, ip_id=1, payload_len=20 + 8 + 8 +
                           14 + 20 + 20 + 10)
    assert d.inner == TCP_FLOW


def test_geneve_with_options_and_inner_ethernet() -> None:
    opts = [GeneveOptions(classid=0x0102, type=0x80, data=b"\x00\x00\x00\x2a"),
            GeneveOptions(classid=0xFFFF, type=1, data=b"abcdefgh")]
    pkt = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) / UDP(sport=1234, dport=6081) /
           GENEVE(vni=5001, proto=0x6558, options=opts) / Ether(**MAC) / pod_tcp())
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "udp", "geneve", "eth", "ipv4", "tcp")
    assert d.inner == TCP_FLOW
    (t,) = d.tunnels
    assert (t.kind, t.vni, t.sport, t.dport) == ("geneve", 5001, 1234, 6081)
    assert t.options == ((0x0102, 0x80, b"\x00\x00\x00\x2a"), (0xFFFF, 1, b"abcdefgh"))


def test_geneve_with_inner_ip() -> None:
    pkt = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) / UDP(sport=1234, dport=6081) /
           GENEVE(vni=9, proto=0x0800) / pod_echo())
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "udp", "geneve", "ipv4", "icmp")
    assert d.inner == ECHO and d.tunnels[0].vni == 9 and d.tunnels[0].options == ()


def test_gre_with_key_and_seq() -> None:
    pkt = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) /
           GRE(key_present=1, key=0x11223344, seqnum_present=1, sequence_number=77, proto=0x0800) /
           pod_tcp())
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "gre", "ipv4", "tcp")
    assert d.tunnels == (Tunnel("gre", None, NODE_A, NODE_B, 0, 0, key=0x11223344, seq=77),)
    assert d.inner == TCP_FLOW


def test_gre_with_checksum_ipv6_inside() -> None:
    pkt = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) / GRE(chksum_present=1, proto=0x86DD) /
           IPv6(src=V6_A, dst=V6_B) / UDP(sport=7, dport=9) / Raw(b"z"))
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "gre", "ipv6", "udp")
    assert d.inner == flow(6, V6_A, V6_B, 17, sport=7, dport=9, payload_len=1)


def test_ethernet_over_gre_and_nvgre() -> None:
    teb = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) / GRE(proto=0x6558) / Ether(**MAC) /
           pod_tcp())
    d = dec(teb)
    assert d.layers == ("eth", "ipv4", "gre", "eth", "ipv4", "tcp")
    assert d.tunnels[0].kind == "gre" and d.inner == TCP_FLOW
    nvgre = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) /
             GRE(key_present=1, key=(0x123456 << 8) | 0x9A, proto=0x6558) / Ether(**MAC) /
             pod_tcp())
    d = dec(nvgre)
    assert d.layers == ("eth", "ipv4", "nvgre", "eth", "ipv4", "tcp")
    assert d.tunnels == (Tunnel("nvgre", 0x123456, NODE_A, NODE_B, 0, 0,
                                key=(0x123456 << 8) | 0x9A),)
    assert d.inner == TCP_FLOW


def test_flannel_udp_backend() -> None:
    pkt = (Ether(**MAC) / IP(src=NODE_A, dst=NODE_B) / UDP(sport=8285, dport=8285) / pod_echo())
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "udp", "ipv4", "icmp")
    assert d.tunnels == (Tunnel("flannel-udp", None, NODE_A, NODE_B, 8285, 8285),)
    assert d.inner == ECHO


@pytest.mark.parametrize(("carrier", "inner", "kind"), [
    (IP(src=NODE_A, dst=NODE_B, proto=41), IPv6(src=V6_A, dst=V6_B), "ip6in4"),
    (IPv6(src="fd01::1", dst="fd01::2", nh=4), IP(src=POD_A, dst=POD_B), "ip4in6"),
    (IPv6(src="fd01::1", dst="fd01::2", nh=41), IPv6(src=V6_A, dst=V6_B), "ip6in6"),
])
def test_ip_in_ip_variants(carrier: Packet, inner: Packet, kind: str) -> None:
    d = dec(Ether(**MAC) / carrier / inner / UDP(sport=1, dport=2) / Raw(b"1234"))
    assert d.tunnels[0].kind == kind
    assert d.inner is not None and d.outer is not None
    assert (d.inner.src, d.inner.dport, d.inner.payload_len) == (inner.src, 2, 4)
    assert d.outer.proto == (4 if kind == "ip4in6" else 41)


def test_same_packet_matches_inside_and_outside_the_tunnel() -> None:
    bare = dec(Ether(**MAC) / pod_echo())
    wrapped = dec(vxlan(pod_echo()))
    assert bare.inner is not None and wrapped.inner is not None
    assert bare.inner == wrapped.inner
    assert bare.inner.identity() == wrapped.inner.identity()
    reply = dec(Ether(**MAC) / IP(src=POD_B, dst=POD_A, id=1) / ICMP(type=0, id=7133, seq=1))
    assert reply.inner is not None and reply.inner.key() == bare.inner.key()
    assert reply.inner.identity() != bare.inner.identity()


# --- heuristics and port maps -------------------------------------------------------------------

def test_vxlan_heuristic_on_unknown_port_is_marked() -> None:
    pkt = vxlan(pod_tcp(), dport=9527)
    d = dec(pkt)
    assert d.layers[-3:] == ("eth", "ipv4", "tcp") and d.inner == TCP_FLOW
    assert d.tunnels[0].guessed and d.tunnels[0].kind == "vxlan"
    assert d.summary().startswith("VXLAN? vni=1")
    off = dec(pkt, guess=False)
    assert off.layers == ("eth", "ipv4", "udp") and off.tunnels == ()
    assert off.inner is not None and off.inner.dport == 9527


def test_heuristic_does_not_fire_on_ordinary_udp() -> None:
    payload = b"\x08\x00\x00\x00" + bytes(100)  # VXLAN-like flags but no inner IP packet
    d = dec(Ether(**MAC) / IP(src=POD_A, dst=POD_B) / UDP(sport=1, dport=9999) / Raw(payload))
    assert d.tunnels == () and d.layers == ("eth", "ipv4", "udp")


def test_decode_as_port_map() -> None:
    ports = PortMap.parse_decode_as("udp.port==9527,vxlan")
    assert ports[9527] == "vxlan" and ports[8472] == "vxlan" and ports[6081] == "geneve"
    d = dec(vxlan(pod_tcp(), dport=9527), ports=ports)
    assert not d.tunnels[0].guessed and d.inner == TCP_FLOW
    d = dec(vxlan(pod_tcp(), dport=8472), ports=DEFAULT_PORTS.without_ports(8472),
            guess=False)
    assert d.tunnels == ()


@pytest.mark.parametrize("bad", ["udp.port=9527,vxlan", "tcp.port==1,vxlan",
                                 "udp.port==9527,http", "udp.port==0,vxlan",
                                 "udp.port==70000,vxlan", "udp.port==10-5,vxlan", ""])
def test_decode_as_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(ValueError, match="decode"):
        PortMap.parse_decode_as(bad)


def test_decode_as_range_and_aliases() -> None:
    ports = PortMap.parse_decode_as(" udp.port == 9000-9002 , geneve ", base=PortMap())
    assert dict(ports) == {9000: "geneve", 9001: "geneve", 9002: "geneve"}
    assert PortMap.parse_decode_as("udp.port==8285,ip")[8285] == "flannel-udp"


# --- IPv6 extension headers and fragments ----------------------------------------------------

def test_ipv6_extension_headers() -> None:
    pkt = (Ether(**MAC) / IPv6(src=V6_A, dst=V6_B) / IPv6ExtHdrHopByHop() /
           IPv6ExtHdrRouting(addresses=["fd00::9"]) / IPv6ExtHdrDestOpt() /
           TCP(sport=1, dport=443, seq=5, ack=6, flags="A") / Raw(b"p" * 7))
    d = dec(pkt)
    assert d.layers == ("eth", "ipv6", "ipv6-hopopts", "ipv6-routing", "ipv6-dstopts", "tcp")
    assert d.inner == flow(6, V6_A, V6_B, 6, sport=1, dport=443, tcp_seq=5, tcp_ack=6,
                           tcp_flags=0x10, payload_len=7)


def test_ipv6_fragments() -> None:
    first = (Ether(**MAC) / IPv6(src=V6_A, dst=V6_B) /
             IPv6ExtHdrFragment(id=0xDEAD, offset=0, m=1) / UDP(sport=5, dport=6, len=1008) /
             Raw(b"a" * 24))
    d = dec(first)
    assert d.layers == ("eth", "ipv6", "ipv6-fragment", "udp")
    assert d.inner == flow(6, V6_A, V6_B, 17, sport=5, dport=6, ip_id=0xDEAD, more_frags=True,
                           payload_len=24)
    later = (Ether(**MAC) / IPv6(src=V6_A, dst=V6_B) /
             IPv6ExtHdrFragment(id=0xDEAD, offset=4, m=0, nh=17) / Raw(b"b" * 40))
    d = dec(later)
    assert d.layers == ("eth", "ipv6", "ipv6-fragment")
    assert d.inner == flow(6, V6_A, V6_B, 17, ip_id=0xDEAD, frag_offset=32, payload_len=40)


def test_ipv4_fragments_only_first_has_ports() -> None:
    first = Ether(**MAC) / IP(src=POD_A, dst=POD_B, id=321, flags="MF") / \
        UDP(sport=5, dport=6, len=2008) / Raw(b"a" * 1472)
    d = dec(first)
    assert d.layers == ("eth", "ipv4", "udp")
    assert d.inner == flow(proto=17, sport=5, dport=6, ip_id=321, more_frags=True,
                           payload_len=1472)
    later = Ether(**MAC) / IP(src=POD_A, dst=POD_B, id=321, frag=185, proto=17) / Raw(b"b" * 528)
    d = dec(later)
    assert d.layers == ("eth", "ipv4")
    assert d.inner == flow(proto=17, ip_id=321, frag_offset=1480, payload_len=528)
    assert d.error is None


# --- ICMP errors ------------------------------------------------------------------------------

def test_icmp_error_quotes_the_packet() -> None:
    pkt = (Ether(**MAC) / IP(src=NODE_B, dst=POD_A, id=9) / ICMP(type=3, code=3) /
           IP(src=POD_A, dst=NODE_B, id=555) / UDP(sport=40000, dport=53, len=108))
    d = dec(pkt)
    assert d.layers == ("eth", "ipv4", "icmp", "quoted-ipv4", "quoted-udp")
    assert d.inner == flow(4, NODE_B, POD_A, 1, ip_id=9, icmp_type=3, icmp_code=3,
                           payload_len=28)
    assert d.quoted == flow(4, POD_A, NODE_B, 17, sport=40000, dport=53, ip_id=555,
                            payload_len=0)
    assert "unreachable code=3 quoting 10.244.1.2:40000 -> 192.168.77.2:53" in d.summary()


def test_icmp_time_exceeded_quoting_tcp_inside_vxlan() -> None:
    inner = (IP(src=POD_B, dst=POD_A, id=3) / ICMP(type=11, code=0) /
             IP(src=POD_A, dst="8.8.8.8", id=4, ttl=1) / TCP(sport=33000, dport=443, seq=77))
    d = dec(vxlan(inner))
    assert d.layers[-4:] == ("ipv4", "icmp", "quoted-ipv4", "quoted-tcp")
    assert d.inner is not None and d.inner.proto == 1 and d.inner.icmp_type == 11
    assert d.quoted is not None
    assert (d.quoted.src, d.quoted.dst, d.quoted.sport, d.quoted.dport, d.quoted.tcp_seq) == \
        (POD_A, "8.8.8.8", 33000, 443, 77)


def test_icmpv6_echo_and_error() -> None:
    d = dec(Ether(**MAC) / IPv6(src=V6_A, dst=V6_B) / ICMPv6EchoRequest(id=3, seq=4, data=b"hi"))
    assert d.layers == ("eth", "ipv6", "icmpv6")
    assert d.inner == flow(6, V6_A, V6_B, 58, icmp_type=128, icmp_id=3, icmp_seq=4,
                           payload_len=2)
    err = (Ether(**MAC) / IPv6(src=V6_B, dst=V6_A) / ICMPv6DestUnreach(code=4) /
           IPv6(src=V6_A, dst=V6_B) / UDP(sport=9, dport=10) / Raw(b"abcd"))
    d = dec(err)
    assert d.layers == ("eth", "ipv6", "icmpv6", "quoted-ipv6", "quoted-udp")
    assert d.inner is not None and (d.inner.icmp_type, d.inner.icmp_code) == (1, 4)
    assert d.quoted == flow(6, V6_A, V6_B, 17, sport=9, dport=10, payload_len=4)
