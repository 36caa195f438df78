"""tracer/filter.py against the reference: libpcap's own compiler and BPF interpreter (pure tier).

Each expression is compiled by libpcap (``pcap_compile_nopcap``, DLT_EN10MB) and run on Ethernet
frames built with scapy (``pcap_offline_filter``); hoptrace's verdict is
``compile_filter(expr).matches(flow_fields(...))`` on the flow key the kernel would build, decoded
here from the same bytes as probes/hoptrace.bpf.c does. The two must agree, except where hoptrace
differs from libpcap by design (see ``by_design``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from tracer.filter import CompiledFilter, compile_filter, flow_fields

# Every construct hoptrace accepts, in forms libpcap accepts too.
EXPRESSIONS = [
    "ip",
    "ip6",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmp6",
    "igmp or pim or vrrp or ah or esp",
    "ip proto 47",
    "ip proto \\udp",
    "ip6 proto 17",
    "proto 132",
    "host 10.0.0.1",
    "src host 10.0.0.1",
    "dst host 192.168.1.200",
    "src and dst host 10.0.0.1",
    "src or dst host 10.0.0.2",
    "host 10.0.0.1 or 1.2.3.4 or 5.6.7.8",
    "host 2001:db8::1",
    "src host 2001:db8::2 or dst host fe80::1",
    "ip6 host ::1 or 2001:db8:0:1::5",
    "net 10.0.0.0/8",
    "dst net 192.168.1.128/25",
    "net 192.168",
    "src net 10.0.0.0 mask 255.0.255.0",
    "ip net 172.16.0.0/12",
    "net 2001:db8::/32",
    "dst net 2001:db8:0:1::/64",
    "port 80",
    "src port 53 or 5353",
    "dst port 443",
    "port 80 or 443 or 8080",
    "tcp port 80",
    "udp dst port 53",
    "sctp port 8472",
    "portrange 1000-2000",
    "tcp src portrange 0-1023",
    "not port 80",
    "! tcp && ! udp",
    "not (host 10.0.0.1 or 2001:db8::1)",
    "host 10.0.0.1 and not port 22",
    "udp or tcp and port 53",
    "tcp and (port 80 or 443) or icmp",
    "not ip6 and not icmp || dst port 65535",
    "host 10.0.0.1 and (10.0.0.2 or 1.2.3.4)",
    "(tcp or udp) and not src net 10.0.0.0/9 and dst port 1024",
    "not (src net 2001:db8::/48 and dst portrange 80-443)",
    "port domain or port http",
]

# --- libpcap through ctypes ----------------------------------------------------------------


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PktHdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


@dataclass
class Libpcap:
    lib: ctypes.CDLL
    progs: dict[str, _BpfProgram]

    def matches(self, expr: str, frame: bytes) -> bool:
        hdr = _PktHdr(0, 0, len(frame), len(frame))
        return bool(self.lib.pcap_offline_filter(ctypes.byref(self.progs[expr]), hdr, frame))


def load_libpcap(name: str) -> Libpcap:
    """libpcap with every expression of EXPRESSIONS compiled (optimised, as tcpdump does)."""
    lib = ctypes.CDLL(name)
    lib.pcap_compile_nopcap.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_BpfProgram),
                                        ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]  # fmt: skip
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr),
                                        ctypes.c_char_p]  # fmt: skip
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    progs = {}
    for expr in EXPRESSIONS:
        prog = _BpfProgram()
        rc = lib.pcap_compile_nopcap(65535, 1, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF)
        assert rc == 0, f"libpcap rejects {expr!r}"
        progs[expr] = prog
    return Libpcap(lib, progs)


@pytest.fixture(scope="module")
def libpcap() -> Iterator[Libpcap]:
    name = ctypes.util.find_library("pcap")
    if name is None:
        pytest.skip("needs libpcap (install libpcap0.8)")
    pcap = load_libpcap(name)
    yield pcap
    for prog in pcap.progs.values():
        pcap.lib.pcap_freecode(ctypes.byref(prog))


# --- the flow key, decoded from the frame as the kernel parser does ------------------------


@dataclass(frozen=True)
class Decoded:
    fields: dict[str, int]
    arp: bool = False
    v6_ext: bool = False  # IPv6 with any extension header
    v6_ext_beyond_frag: bool = False  # ... other than one fragment header right after IPv6


def decode(frame: bytes) -> Decoded:
    """hoptrace's flow key for an Ethernet frame (probes/hoptrace.bpf.c, parse())."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800:
        ihl, proto = (ip[0] & 0xF) * 4, ip[9]
        first = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF == 0
        src, dst = (str(ipaddress.IPv4Address(ip[o : o + 4])) for o in (12, 16))
        return Decoded(_fields(4, proto, src, dst, ip[ihl:], first))
    if ethertype == 0x86DD:
        proto, off, first, headers = ip[6], 40, True, []
        for _ in range(4):
            if proto in (0, 43, 60):
                headers.append(proto)
                proto, off = ip[off], off + (ip[off + 1] + 1) * 8
            elif proto == 44:
                headers.append(proto)
                first = struct.unpack_from("!H", ip, off + 2)[0] & 0xFFF8 == 0
                proto, off = ip[off], off + 8
        src, dst = (str(ipaddress.IPv6Address(ip[o : o + 16])) for o in (8, 24))
        return Decoded(_fields(6, proto, src, dst, ip[off:], first), False, bool(headers),
                       headers not in ([], [44]))  # fmt: skip
    return Decoded(flow_fields(0, 0, None, None, 0, 0, False), arp=ethertype == 0x0806)


def _fields(l3: int, proto: int, src: str, dst: str, l4: bytes, first: bool) -> dict[str, int]:
    valid = first and proto in (6, 17, 132)
    sport, dport = struct.unpack_from("!HH", l4) if valid else (0, 0)
    return flow_fields(l3, proto, src, dst, sport, dport, valid)


def by_design(f: CompiledFilter, d: Decoded) -> str | None:
    """Why libpcap and hoptrace may disagree on this packet, or None when they must agree."""
    used = {p.field for t in f.terms for p in t}
    if d.arp and any("ADDR" in name for name in used):
        # libpcap's 'host'/'net' also match ARP/RARP sender and target addresses; hoptrace's
        # flow key is IP only
        return "arp"
    if d.v6_ext and used & {"HT_F_PORTS", "HT_F_SPORT", "HT_F_DPORT"}:
        # libpcap reads IPv6 ports only when the fixed header's next header is TCP/UDP/SCTP;
        # the kernel parser walks extension headers (and a first fragment has ports)
        return "ip6 ports after extension headers"
    if d.v6_ext_beyond_frag and "HT_F_PROTO" in used:
        # libpcap's 'ip6 proto'/'tcp' look at the first next header (or one fragment header);
        # hoptrace's PROTO is the upper-layer protocol after all extension headers
        return "ip6 proto after extension headers"
    return None


# --- packets -------------------------------------------------------------------------------

V4 = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "10.200.0.9", "192.168.1.1", "192.168.1.200",
      "1.2.3.4", "5.6.7.8", "172.16.5.4", "172.32.0.1"]  # fmt: skip
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::5", "2001:db8:1::7", "2001:db9::1",
      "fe80::1", "::1", "::ffff:10.0.0.1"]  # fmt: skip
MAC = ("02:00:00:00:00:01", "02:00:00:00:00:02")
PORTS = [0, 22, 53, 80, 443, 1000, 1023, 1024, 2000, 5353, 8080, 8472, 65535]
PROTOS = ["tcp", "udp", "sctp", "icmp", 2, 47, 50, 51, 103, 112, 200]
FRAGS = ["none", "first", "later"]
V6_EXT = [(), (), ("hbh",), ("dst",), ("hbh", "rt")]


@dataclass(frozen=True)
class Spec:
    l3: str  # "4", "6", "arp", "other"
    proto: str | int
    src: str
    dst: str
    sport: int
    dport: int
    frag: str
    ext: tuple[str, ...] = ()
    options: bool = False


def build(s: Spec) -> bytes:
    if s.l3 == "arp":
        return bytes(Ether(src=MAC[0], dst=MAC[1]) / ARP(hwsrc=MAC[0], psrc=s.src, pdst=s.dst))
    if s.l3 == "other":
        return bytes(Ether(src=MAC[0], dst=MAC[1], type=0x88B5) / Raw(b"\x00" * 46))
    v6 = s.l3 == "6"
    l4: Packet
    if s.proto == "tcp":
        l4, number = TCP(sport=s.sport, dport=s.dport), 6
    elif s.proto == "udp":
        l4, number = UDP(sport=s.sport, dport=s.dport), 17
    elif s.proto == "sctp":
        l4, number = SCTP(sport=s.sport, dport=s.dport), 132
    elif s.proto == "icmp":
        l4, number = (ICMPv6EchoRequest(), 58) if v6 else (ICMP(), 1)
    else:
        l4, number = Raw(bytes(range(16))), int(s.proto)
    if s.frag == "later":
        l4 = Raw(bytes(range(24)))  # a non-first fragment carries no L4 header, just data
    frame = Ether(src=MAC[0], dst=MAC[1])
    if not v6:
        opts = [IPOption_NOP()] * 4 if s.options else []
        flags, offset = {"none": (0, 0), "first": ("MF", 0), "later": (0, 64)}[s.frag]
        return bytes(frame / IP(src=s.src, dst=s.dst, proto=number, flags=flags, frag=offset,
                                options=opts) / l4)  # fmt: skip
    pkt: Packet = IPv6(src=s.src, dst=s.dst)
    for ext in s.ext:
        pkt = pkt / {"hbh": IPv6ExtHdrHopByHop, "dst": IPv6ExtHdrDestOpt,
                     "rt": IPv6ExtHdrRouting}[ext]()  # fmt: skip
    if s.frag != "none":
        pkt = pkt / IPv6ExtHdrFragment(nh=number, m=int(s.frag == "first"),
                                       offset=64 if s.frag == "later" else 0)  # fmt: skip
    elif isinstance(l4, Raw):
        pkt.lastlayer().nh = number
    return bytes(frame / pkt / l4)


ADDRESS = {
    "4": st.one_of(st.sampled_from(V4), st.ip_addresses(v=4).map(str)),
    "6": st.one_of(st.sampled_from(V6), st.ip_addresses(v=6).map(str)),
    "arp": st.sampled_from(V4),
    "other": st.just("0.0.0.0"),
}


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    l3 = draw(st.sampled_from(["4", "4", "4", "6", "6", "6", "arp", "other"]))
    port = st.one_of(st.sampled_from(PORTS), st.integers(0, 65535))
    return Spec(
        l3, draw(st.sampled_from(PROTOS)), draw(ADDRESS[l3]), draw(ADDRESS[l3]),
        draw(port), draw(port), draw(st.sampled_from(FRAGS)),
        draw(st.sampled_from(V6_EXT)) if l3 == "6" else (), draw(st.booleans()),
    )  # fmt: skip


def grid() -> list[Spec]:
    """A fixed sample: every protocol x fragment kind x family, addresses and ports from pools."""
    rng = random.Random(4789)
    out = []
    for l3 in ("4", "6"):
        pool = V4 if l3 == "4" else V6
        for proto in PROTOS:
            for frag in FRAGS:
                for ext in V6_EXT[1:] if l3 == "6" and frag == "none" else [()]:
                    for i in range(2 if ext or (l3 == "6" and frag != "none") else len(PORTS)):
                        out.append(Spec(l3, proto, rng.choice(pool), rng.choice(pool),
                                        rng.choice(PORTS), PORTS[i], frag, ext,
                                        rng.random() < 0.3))  # fmt: skip
    out += [Spec("arp", 0, a, b, 0, 0, "none") for a, b in zip(V4, V4[::-1], strict=True)]
    return out + [Spec("other", 0, "0.0.0.0", "0.0.0.0", 0, 0, "none")]


COMPILED = {expr: compile_filter(expr) for expr in EXPRESSIONS}


def check(libpcap: Libpcap, frame: bytes) -> tuple[int, int]:
    """Compare every expression on one frame; returns (agreed, excluded)."""
    d = decode(frame)
    agreed = excluded = 0
    for expr, f in COMPILED.items():
        if by_design(f, d):
            excluded += 1
            continue
        ours, theirs = f.matches(d.fields), libpcap.matches(expr, frame)
        assert ours == theirs, f"{expr!r}: hoptrace {ours}, libpcap {theirs}\n{frame.hex()}"
        agreed += 1
    return agreed, excluded


def test_every_expression_compiles() -> None:
    assert all(f.terms for f in COMPILED.values())


def test_grid_agrees_with_libpcap(libpcap: Libpcap) -> None:
    frames = [build(s) for s in grid()]
    totals = [check(libpcap, frame) for frame in frames]
    assert sum(a for a, _ in totals) > 0.8 * len(frames) * len(EXPRESSIONS)
    # not vacuous: each expression both matches and misses something here
    for expr in EXPRESSIONS:
        verdicts = {libpcap.matches(expr, frame) for frame in frames}
        assert verdicts == {True, False}, expr


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_packets_agree_with_libpcap(libpcap: Libpcap, spec: Spec) -> None:
    check(libpcap, build(spec))


def test_exclusions_are_real_differences(libpcap: Libpcap) -> None:
    """The by-design differences exist (so the exclusions are not hiding bugs elsewhere)."""
    first_frag = build(Spec("6", "tcp", V6[0], V6[1], 1234, 80, "first"))
    assert compile_filter("port 80").matches(decode(first_frag).fields)
    assert not libpcap.matches("port 80", first_frag)
    hop_by_hop = build(Spec("6", "udp", V6[0], V6[1], 53, 53, "none", ("hbh",)))
    assert compile_filter("ip6 proto 17").matches(decode(hop_by_hop).fields)
    assert not libpcap.matches("ip6 proto 17", hop_by_hop)
