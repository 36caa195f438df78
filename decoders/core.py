"""The per-packet decoder: one loop that walks headers outermost first.

Why hand-written ``struct`` code and one flat loop: this runs once per traced event
(hundreds of thousands per second). Generic layer objects (scapy ~5k packets/s, dpkt ~95k)
cost far more than the unpacking itself (a bare ``struct`` loop ~500k). So the protocol
modules return plain tuples, the only objects built per packet are the layer tuple, one
:class:`Flow` per IP header (each L4 branch builds it with literal zeros for the fields it
lacks, so no dozen locals are reset per header; the outermost and innermost are kept), one
:class:`Tunnel` per encapsulation and the :class:`Decoded`. The hottest headers (untagged
Ethernet -> IPv4 falls straight through, IPv4 without options, TCP) are inlined. Time per packet
follows the bytecodes executed (``sys.settrace`` with ``f_trace_opcodes`` counts them,
without the noise of timing on a shared machine: about 340 per plain packet and 620
through IPIP, ``__init__`` of the results included). Malformed input never raises: the protocol
modules raise internally and the loop converts that into ``error``/``error_offset``.
"""

from __future__ import annotations

from struct import error as StructError

from ._common import Stop, u16, v4_get, v4_text
from .ethernet import (
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_TEB,
    ETHERTYPE_NAMES,
    VLAN_TPIDS,
    parse_vlan_tags,
)
from .geneve import parse_geneve
from .gre import parse_gre
from .ip import IPV4_FIELDS as ipv4_fields
from .ip import parse_ipv4, parse_ipv6
from .model import START_ETH, START_IP, Decoded, Flow, Tunnel, new_flow, new_tunnel
from .ports import DEFAULT_PORTS, PortMap
from .transport import TCP_FIELDS as tcp_fields
from .transport import parse_icmp, parse_quoted, parse_udp
from .vxlan import looks_like_vxlan, parse_vxlan

_END, _ETH, _IP, _IPV4, _IPV6 = 0, 1, 2, 3, 4
_BY_ETHERTYPE = {ETH_P_IP: _IPV4, ETH_P_IPV6: _IPV6, ETH_P_TEB: _ETH}
_IP_IN_IP = {(4, 4): "ipip", (4, 41): "ip6in4", (6, 4): "ip4in6", (6, 41): "ip6in6"}
#: Encapsulations followed before giving up (a crafted packet could nest many).
MAX_TUNNELS = 8
_MIN_VXLAN_GUESS = 8 + 14 + 20
#: Markers for what follows an L4 header besides a tunnel of the port map: VXLAN found by
#: the heuristic, and the packet an ICMP error quotes.
_GUESSED_VXLAN = "vxlan (guessed)"
_QUOTE = "quoted packet"


def decode(buf: bytes | bytearray | memoryview, start: int = START_ETH,
           ports: PortMap = DEFAULT_PORTS, guess: bool = True) -> Decoded:
    """Decode one packet's headers into its layer stack, tunnels and flows.

    ``buf`` starts at the MAC header (``start=START_ETH``) or at the IPv4/IPv6 header
    (``START_IP``). ``ports`` binds UDP destination ports to tunnel kinds. With ``guess``,
    UDP payloads on other ports that look like VXLAN are decoded as VXLAN and the tunnel is
    marked ``guessed=True``. Never raises for malformed or truncated input: whatever was
    decoded is returned and ``error``/``error_offset`` say where and why it stopped.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if start == START_ETH:
        kind = _ETH
    elif start == START_IP:
        kind = _IP
    else:
        raise ValueError(f"start must be START_ETH ({START_ETH}) or START_IP ({START_IP})")
    port_kind = ports._by_port.get
    layers: list[str] = []
    add = layers.append
    tunnels: tuple[Tunnel, ...] = ()
    vlans: tuple[int, ...] = ()
    outer: Flow | None = None  # the outermost IP layer's flow
    flow: Flow | None = None  # the innermost IP layer's flow decoded so far
    quoted: Flow | None = None
    ip_pending = False  # an IP header decoded, its L4 part not yet (its fields are locals)
    error: str | None = None
    error_offset = -1
    off = 0
    cur = "eth"
    try:
        while kind:
            if kind == _ETH:
                cur = "eth"
                (etype,) = u16(buf, off + 12)  # parse_ethernet, inlined: it runs per packet
                add("eth")
                off += 14
                if etype == 0x0800:  # IPv4 untagged, by far the most common: straight on
                    kind = _IPV4
                else:
                    if etype in VLAN_TPIDS:
                        etype, off, tags = parse_vlan_tags(buf, off, etype, layers)
                        vlans += tags
                    kind = _BY_ETHERTYPE.get(etype, _END)
                    if kind == _ETH:  # 0x6558 straight in Ethernet is not a thing
                        kind = _END
                    if not kind:
                        if etype in ETHERTYPE_NAMES:
                            add(ETHERTYPE_NAMES[etype])
                        break
            elif kind == _IP:
                cur = "ip"
                version = buf[off] >> 4
                if version == 4:
                    kind = _IPV4
                elif version == 6:
                    kind = _IPV6
                else:
                    raise Stop(f"bad ip version {version}", off)
            if kind == _IPV4:
                # parse_ipv4 inlined (the hottest header); the checks stay in parse_ipv4,
                # which this falls back to for anything unusual (options, odd lengths)
                cur = "ipv4"
                l3 = 4
                vihl, tot, ip_id, ff, proto, s, d = ipv4_fields(buf, off)
                if vihl == 0x45 and tot >= 20:
                    add("ipv4")
                    src = v4_get(s) or v4_text(s)
                    dst = v4_get(d) or v4_text(d)
                    frag = (ff & 0x1FFF) << 3
                    more = ff & 0x2000 != 0
                    off += 20
                    plen = tot - 20
                else:
                    proto, src, dst, ip_id, frag, more, off, plen = parse_ipv4(buf, off, layers)
            else:
                cur = "ipv6"
                l3 = 6
                proto, src, dst, ip_id, frag, more, off, plen = parse_ipv6(buf, off, layers)
            # The L4 header. Each branch builds this IP layer's Flow with the fields it has
            # (the others are literal zeros: no per-packet reset of a dozen locals).
            ip_pending = True
            kind = _END
            tun = None
            if frag:  # not the first fragment: no L4 header here
                flow = new_flow(l3, src, dst, proto, 0, 0, ip_id, frag, more, 0, 0, 0, 0, 0, 0,
                                0, plen)
            elif proto == 6:
                cur = "tcp"  # parse_tcp, inlined
                sport, dport, seq, ack, doff, flags = tcp_fields(buf, off)
                hl = (doff >> 4) << 2
                if hl < 20 or hl > plen:
                    raise Stop(f"bad tcp header length {hl}", off)
                add("tcp")
                flow = new_flow(l3, src, dst, 6, sport, dport, ip_id, 0, more, seq, ack,
                                (doff & 1) << 8 | flags, 0, 0, 0, 0, plen - hl)
            elif proto == 17:
                cur = "udp"
                sport, dport = parse_udp(buf, off)
                add("udp")
                off += 8
                plen -= 8
                flow = new_flow(l3, src, dst, 17, sport, dport, ip_id, 0, more, 0, 0, 0, 0, 0, 0,
                                0, plen)
                tun = port_kind(dport)
                if (tun is None and guess and plen >= _MIN_VXLAN_GUESS
                        and looks_like_vxlan(buf, off, plen)):
                    tun = _GUESSED_VXLAN
            elif proto == 1 or proto == 58:
                cur = "icmp" if proto == 1 else "icmpv6"
                typ, code, ident, iseq, is_error = parse_icmp(buf, off, proto == 58)
                add(cur)
                off += 8
                flow = new_flow(l3, src, dst, proto, 0, 0, ip_id, 0, more, 0, 0, 0, typ, code,
                                ident, iseq, plen - 8)
                if is_error:
                    tun = _QUOTE
            else:
                flow = new_flow(l3, src, dst, proto, 0, 0, ip_id, 0, more, 0, 0, 0, 0, 0, 0, 0,
                                plen)
                if proto == 47:
                    tun = "gre"
                elif proto == 4 or proto == 41:
                    tun = _IP_IN_IP[l3, proto]
            ip_pending = False
            if outer is None:
                outer = flow
            if tun is None:
                break
            if tun is _QUOTE:
                cur = "quoted packet"
                quoted, stop = parse_quoted(buf, off, layers)
                if stop is not None:
                    raise stop
                break
            if len(tunnels) == MAX_TUNNELS:
                raise Stop("too many nested tunnels", off)
            cur = tun
            if tun == "vxlan" or tun is _GUESSED_VXLAN:
                cur = "vxlan"
                vni = parse_vxlan(buf, off, layers)
                tunnels += (new_tunnel("vxlan", vni, src, dst, sport, dport, None,
                                       tun is _GUESSED_VXLAN),)
                off += 8
                kind = _ETH
            elif proto == 4 or proto == 41:  # ipip, ip6in4, ip4in6, ip6in6
                tunnels += (new_tunnel(tun, None, src, dst, 0, 0),)
                kind = _IPV4 if proto == 4 else _IPV6
            elif tun == "geneve":
                ptype, vni, options, off = parse_geneve(buf, off, layers)
                tunnels += (new_tunnel("geneve", vni, src, dst, sport, dport,
                                       options=options),)
                kind = _BY_ETHERTYPE.get(ptype, _END)
            elif tun == "flannel-udp":
                tunnels += (new_tunnel("flannel-udp", None, src, dst, sport, dport),)
                kind = _IP
            else:  # gre
                gkind, ptype, key, gseq, off = parse_gre(buf, off, layers)
                vsid = key >> 8 if gkind == "nvgre" and key is not None else None
                tunnels += (new_tunnel(gkind, vsid, src, dst, 0, 0, key, seq=gseq),)
                kind = _BY_ETHERTYPE.get(ptype, _END)
    except (StructError, IndexError):
        error = f"truncated {cur} header"
        error_offset = off
    except Stop as stop:
        error, error_offset = stop.args
    if ip_pending:  # the IP header decoded but its L4 header did not (locals still intact)
        flow = new_flow(l3, src, dst, proto, 0, 0, ip_id, frag, more, 0, 0, 0, 0, 0, 0, 0, plen)
        if outer is None:
            outer = flow
    return Decoded(tuple(layers), flow, outer, tunnels, quoted, vlans, error,
                   error_offset)
