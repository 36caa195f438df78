"""tshark as the reference decoder: the innermost flow key of every packet in a pcap.

tshark prints the occurrences of ``ip.src``, ``udp.dstport``... of every layer; the
innermost flow is found by walking ``frame.protocols``: the last ``ip``/``ipv6`` before the
first ``icmp``/``icmpv6`` (the IP layers after it are the packet an ICMP error quotes;
hoptrace reports the ICMP packet itself as the innermost flow), and the ``udp``/``tcp``
right after that IP layer. IP reassembly is turned off so that every fragment stands alone.
A packet tshark flags with an error-severity expert item (bogus IP version or header
length, malformed packet) counts as "not decoded" and gets ``None`` -- unless a dissector
above the innermost L4 header follows (``dns``, heuristic ``tapa``...), where the error
belongs to the application payload, which hoptrace does not look at (a cut tunnel
header after the L4 header still counts as an error).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

TSHARK = shutil.which("tshark")
_FIELDS = ("frame.protocols", "ip.src", "ip.dst", "ip.proto", "ipv6.src", "ipv6.dst",
           "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport", "_ws.expert.severity")
_SEVERITY_ERROR = 0x800000
_TUNNEL_TOKENS = {"vxlan", "geneve", "gre", "eth", "ethertype"}
_L4_PROTO = {"udp": 17, "tcp": 6, "icmp": 1, "icmpv6": 58}
Key = tuple[int, str, int, str, int]


def tshark_command(pcap: str | Path, decode_as: Sequence[str] = ()) -> list[str]:
    """The tshark command line that prints the fields this module parses."""
    cmd = [TSHARK or "tshark", "-n", "-r", str(pcap), "-o", "ip.defragment:FALSE",
           "-o", "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=\t",
           "-E", "aggregator=,", "-E", "occurrence=a"]
    for spec in decode_as:
        cmd += ["-d", spec]
    for field in _FIELDS:
        cmd += ["-e", field]
    return cmd


def flow_key(proto: int, src: str, sport: int, dst: str, dport: int) -> Key:
    """Same ordering as :meth:`decoders.Flow.key`."""
    a, b = (src, sport), (dst, dport)
    if b < a:
        a, b = b, a
    return (proto, a[0], a[1], b[0], b[1])


def parse_line(line: str) -> Key | None:
    """The innermost flow key of one tshark output line, or None (see the module docstring)."""
    cols = line.rstrip("\n").split("\t")
    cols += [""] * (len(_FIELDS) - len(cols))
    protocols, ip_src, ip_dst, ip_proto, v6_src, v6_dst, usp, udp, tsp, tdp, sev = cols
    n4 = n6 = nu = nt = 0
    last: tuple[int, int] | None = None
    l4: tuple[str, int] | None = None
    tokens = protocols.split(":")
    l4_at = len(tokens)
    for at, tok in enumerate(tokens):
        if tok in _L4_PROTO and l4 is None:
            l4_at = at
        if tok == "ip":
            last, l4, n4, l4_at = (4, n4), None, n4 + 1, len(tokens)
        elif tok == "ipv6":
            last, l4, n6, l4_at = (6, n6), None, n6 + 1, len(tokens)
        elif tok == "udp":
            l4, nu = (("udp", nu) if l4 is None else l4), nu + 1
        elif tok == "tcp":
            l4, nt = (("tcp", nt) if l4 is None else l4), nt + 1
        elif tok in ("icmp", "icmpv6"):
            l4 = (tok, 0)
            break
    if last is None:
        return None
    app_layer_follows = l4_at < len(tokens) - 1 and not _TUNNEL_TOKENS & set(tokens[l4_at:])
    if not app_layer_follows and any(int(s) >= _SEVERITY_ERROR for s in sev.split(",") if s):
        return None
    try:
        family, i = last
        if family == 4:
            src, dst = ip_src.split(",")[i], ip_dst.split(",")[i]
            proto = int(ip_proto.split(",")[i])
        else:
            src, dst = v6_src.split(",")[i], v6_dst.split(",")[i]
            proto = _L4_PROTO[l4[0]] if l4 is not None else -1
        sport = dport = 0
        if l4 is not None and l4[0] in ("udp", "tcp"):
            ports = (usp, udp) if l4[0] == "udp" else (tsp, tdp)
            sport, dport = (int(p.split(",")[l4[1]]) for p in ports)
    except (IndexError, ValueError):
        return None
    return flow_key(proto, src, sport, dst, dport)


def tshark_keys(pcap: str | Path, decode_as: Sequence[str] = ()) -> list[Key | None]:
    """Run tshark on ``pcap`` and return the innermost flow key of every packet."""
    out = subprocess.run(tshark_command(pcap, decode_as), check=True, capture_output=True,
                         text=True).stdout
    return [parse_line(line) for line in out.splitlines()]
