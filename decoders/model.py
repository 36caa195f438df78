"""Result types of the decoder: :class:`Flow`, :class:`Tunnel` and :class:`Decoded`.

``Flow`` and ``Tunnel`` are frozen, slotted dataclasses. Building a frozen dataclass through
its generated ``__init__`` costs one ``object.__setattr__`` call per field (about 1.5 us for
the 17 fields of a Flow, measured on the development machine), which alone would eat half of
the per-packet budget. The decoder therefore builds them through :func:`new_flow` and
:func:`new_tunnel`: a mutable twin class with the identical ``__slots__`` layout fills the
slots with plain attribute stores and then re-labels the instance (``__class__`` assignment,
allowed between classes with the same layout). The result is an ordinary, equal, hashable,
immutable instance (about 0.25 us); ``tests/test_decoders_model.py`` checks that both paths
agree.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``decode(start=...)``: the buffer starts at an Ethernet header (``HT_HDR_ETH``).
START_ETH = 1
#: ``decode(start=...)``: the buffer starts at an IPv4 or IPv6 header (``HT_HDR_IP``).
START_IP = 2

_PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 4: "IPIP", 41: "IPv6", 47: "GRE",
                132: "SCTP", 50: "ESP", 51: "AH"}
_ICMP_NAMES = {(4, 0): "echo-reply", (4, 8): "echo", (4, 3): "unreachable",
               (4, 11): "time-exceeded", (4, 12): "param-problem", (4, 5): "redirect",
               (4, 4): "source-quench",
               (6, 128): "echo", (6, 129): "echo-reply", (6, 1): "unreachable",
               (6, 2): "packet-too-big", (6, 3): "time-exceeded", (6, 4): "param-problem",
               (6, 135): "neighbor-solicit", (6, 136): "neighbor-advert"}
_TCP_FLAGS = "FSRPAUECN"


@dataclass(frozen=True, slots=True)
class Flow:
    """One IP packet's flow fields (the innermost, or the outermost, of a decoded stack).

    Ports are 0 when the protocol has none or the packet is a non-first fragment; the TCP
    fields are 0 unless ``proto == 6``, the ICMP fields 0 unless ICMP/ICMPv6. ``ip_id`` is
    the IPv4 Identification, or the IPv6 Fragment header's identification (0 without one).
    ``frag_offset`` is in bytes. ``payload_len`` is the L4 payload length computed from the
    header length fields (not from the captured bytes, which may be cut at 128).
    """

    l3: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    ip_id: int
    frag_offset: int
    more_frags: bool
    tcp_seq: int
    tcp_ack: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    icmp_seq: int
    payload_len: int

    def key(self) -> tuple[int, str, int, str, int]:
        """Direction-independent 5-tuple ``(proto, addr_a, port_a, addr_b, port_b)``.

        The lower ``(addr, port)`` pair comes first, so both directions of a connection (and
        an ICMP echo with its reply) share one key.
        """
        src, dst = self.src, self.dst
        if dst < src or (dst == src and self.dport < self.sport):
            return (self.proto, dst, self.dport, src, self.sport)
        return (self.proto, src, self.sport, dst, self.dport)

    def identity(self) -> tuple[int, int, int, int, int, int, int, int]:
        """Fields that tell one packet from another inside a flow.

        ``(proto, ip_id, frag_offset, icmp_id, icmp_seq, tcp_seq, tcp_ack, payload_len)``: the
        same packet seen before and after encapsulation, or on two nodes, has the same value.
        """
        return (self.proto, self.ip_id, self.frag_offset, self.icmp_id, self.icmp_seq,
                self.tcp_seq, self.tcp_ack, self.payload_len)

    def summary(self) -> str:
        """One line: addresses, ports and what the L4 header says."""
        if self.sport or self.dport or self.proto in (6, 17):
            if self.l3 == 6:
                ends = f"[{self.src}]:{self.sport} -> [{self.dst}]:{self.dport}"
            else:
                ends = f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"
        else:
            ends = f"{self.src} -> {self.dst}"
        name = _PROTO_NAMES.get(self.proto, f"proto={self.proto}")
        if self.proto == 6:
            flags = "".join(c for i, c in enumerate(_TCP_FLAGS) if self.tcp_flags >> i & 1)
            detail = (f" [{flags or '.'}] seq={self.tcp_seq} ack={self.tcp_ack}"
                      f" len={self.payload_len}")
        elif self.proto in (1, 58):
            kind = _ICMP_NAMES.get((self.l3, self.icmp_type), f"type={self.icmp_type}")
            if self.icmp_type in ((0, 8) if self.proto == 1 else (128, 129)):
                detail = f" {kind} id={self.icmp_id} seq={self.icmp_seq}"
            else:
                detail = f" {kind} code={self.icmp_code}"
        else:
            detail = f" len={self.payload_len}"
        if self.frag_offset or self.more_frags:
            detail += f" frag@{self.frag_offset}{'+' if self.more_frags else ''} id={self.ip_id}"
        return f"{ends} {name}{detail}"


@dataclass(frozen=True, slots=True)
class Tunnel:
    """One encapsulation crossed on the way in, outermost first.

    ``kind``: ``vxlan``, ``geneve``, ``gre``, ``nvgre``, ``flannel-udp``, ``ipip``
    (IPv4 in IPv4), ``ip6in4`` (proto 41), ``ip4in6`` or ``ip6in6``. ``src``/``dst`` are the
    carrier's IP addresses, ``sport``/``dport`` its UDP ports (0 for IP and GRE tunnels).
    ``vni`` is the VXLAN/Geneve VNI or the NVGRE VSID, ``key`` the GRE key, ``seq`` the GRE
    sequence number, ``options`` the Geneve options as ``(class, type, data)``. ``guessed``
    is True when VXLAN was recognised by the heuristic on a port not in the port map.
    """

    kind: str
    vni: int | None
    src: str
    dst: str
    sport: int
    dport: int
    key: int | None = None
    guessed: bool = False
    seq: int | None = None
    options: tuple[tuple[int, int, bytes], ...] = ()

    def summary(self) -> str:
        """One line, e.g. ``VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472``."""
        head = self.kind.upper() + ("?" if self.guessed else "")
        if self.vni is not None:
            head += f" vni={self.vni}"
        if self.key is not None and self.kind != "nvgre":
            head += f" key={self.key}"
        if self.sport or self.dport:
            if ":" in self.src:
                return f"{head} [{self.src}]:{self.sport} -> [{self.dst}]:{self.dport}"
            return f"{head} {self.src}:{self.sport} -> {self.dst}:{self.dport}"
        return f"{head} {self.src} -> {self.dst}"


class _FlowBuilder:
    """Mutable twin of :class:`Flow` (same slots); see the module docstring."""

    __slots__ = Flow.__slots__  # type: ignore[attr-defined]

    def __init__(self, l3: int, src: str, dst: str, proto: int, sport: int, dport: int,
                 ip_id: int, frag_offset: int, more_frags: bool, tcp_seq: int, tcp_ack: int,
                 tcp_flags: int, icmp_type: int, icmp_code: int, icmp_id: int, icmp_seq: int,
                 payload_len: int) -> None:
        self.l3 = l3
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.ip_id = ip_id
        self.frag_offset = frag_offset
        self.more_frags = more_frags
        self.tcp_seq = tcp_seq
        self.tcp_ack = tcp_ack
        self.tcp_flags = tcp_flags
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.icmp_id = icmp_id
        self.icmp_seq = icmp_seq
        self.payload_len = payload_len
        self.__class__ = Flow  # type: ignore[assignment]


class _TunnelBuilder:
    """Mutable twin of :class:`Tunnel` (same slots); see the module docstring."""

    __slots__ = Tunnel.__slots__  # type: ignore[attr-defined]

    def __init__(self, kind: str, vni: int | None, src: str, dst: str, sport: int, dport: int,
                 key: int | None = None, guessed: bool = False, seq: int | None = None,
                 options: tuple[tuple[int, int, bytes], ...] = ()) -> None:
        self.kind = kind
        self.vni = vni
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.key = key
        self.guessed = guessed
        self.seq = seq
        self.options = options
        self.__class__ = Tunnel  # type: ignore[assignment]


#: Fast constructors with the dataclasses' signatures; they return real Flow/Tunnel objects.
new_flow: type[Flow] = _FlowBuilder  # type: ignore[assignment]
new_tunnel: type[Tunnel] = _TunnelBuilder  # type: ignore[assignment]


class Decoded:
    """What :func:`decoders.decode` found in one packet.

    ``layers``: protocol names outermost first (``eth``, ``vlan``, ``ipv4``, ``ipv6``,
    ``ipv6-hopopts``/``-routing``/``-fragment``/``-dstopts``/``-ah``, ``udp``, ``tcp``,
    ``icmp``, ``icmpv6``, ``vxlan``, ``geneve``, ``gre``, ``nvgre``, ``arp``; the packet
    quoted by an ICMP error adds ``quoted-ipv4``/``quoted-udp``...). ``inner``/``outer``: the
    innermost/outermost IP flow (the same object without a tunnel). ``quoted``: the flow
    quoted by an ICMP error (``inner`` stays the ICMP packet). ``vlans``: VLAN IDs, outermost
    first. ``error``/``error_offset``: why and where decoding stopped (``None``/``-1`` when
    the packet decoded completely).
    """

    __slots__ = ("layers", "inner", "outer", "tunnels", "quoted", "vlans", "error",
                 "error_offset")

    def __init__(self, layers: tuple[str, ...], inner: Flow | None, outer: Flow | None,
                 tunnels: tuple[Tunnel, ...], quoted: Flow | None, vlans: tuple[int, ...],
                 error: str | None, error_offset: int) -> None:
        self.layers = layers
        self.inner = inner
        self.outer = outer
        self.tunnels = tunnels
        self.quoted = quoted
        self.vlans = vlans
        self.error = error
        self.error_offset = error_offset

    def summary(self) -> str:
        """One line: each tunnel, then the innermost flow, then the error if any."""
        parts = [t.summary() for t in self.tunnels]
        if self.inner is not None:
            line = self.inner.summary()
            if self.quoted is not None:
                line += f" quoting {self.quoted.summary()}"
            parts.append(line)
        elif self.layers:
            parts.append("/".join(self.layers))
        out = " | ".join(parts) or "empty"
        if self.error is not None:
            out += f" [{self.error} at byte {self.error_offset}]"
        return out

    def __repr__(self) -> str:
        return (f"Decoded(layers={self.layers!r}, inner={self.inner!r}, outer={self.outer!r}, "
                f"tunnels={self.tunnels!r}, quoted={self.quoted!r}, vlans={self.vlans!r}, "
                f"error={self.error!r}, error_offset={self.error_offset})")
