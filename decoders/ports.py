"""UDP port bindings for tunnel protocols, kept as data.

| port | kind        | who uses it                                                   |
|------|-------------|---------------------------------------------------------------|
| 4789 | vxlan       | IANA assignment for VXLAN (RFC 7348 section 5)                |
| 8472 | vxlan       | Linux kernel default before IANA (``ip link ... dstport 0``), |
|      |             | Flannel's ``vxlan`` backend, Cilium                            |
| 6784 | vxlan       | Weave Net's fast datapath                                     |
| 6081 | geneve      | IANA assignment for Geneve (RFC 8926 section 3.3)             |
| 8285 | flannel-udp | Flannel's ``udp`` backend: a bare IP packet in UDP            |

tshark only knows 4789 and 6081 by default; decode other ports with
``-d udp.port==8472,vxlan``. :meth:`PortMap.parse_decode_as` accepts the same syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

#: Tunnel kinds a UDP port can be bound to.
UDP_KINDS = ("vxlan", "geneve", "flannel-udp")
# Wireshark dissector names accepted by parse_decode_as, mapped to our kinds.
_ALIASES = {"vxlan": "vxlan", "geneve": "geneve", "flannel-udp": "flannel-udp",
            "flannel": "flannel-udp", "ip": "flannel-udp"}
_DECODE_AS = re.compile(r"^\s*udp\.port\s*==\s*(\d+)(?:\s*-\s*(\d+))?\s*,\s*([\w-]+)\s*$")


class PortMap(Mapping[int, str]):
    """Immutable mapping of UDP destination port -> tunnel kind (see the module table)."""

    __slots__ = ("_by_port",)

    def __init__(self, bindings: Mapping[int, str] | None = None) -> None:
        by_port: dict[int, str] = {}
        for port, kind in (bindings or {}).items():
            if not 0 < port < 65536:
                raise ValueError(f"UDP port {port} is out of range 1-65535")
            if kind not in UDP_KINDS:
                raise ValueError(f"unknown tunnel kind {kind!r}; expected one of "
                                 f"{', '.join(UDP_KINDS)}")
            by_port[port] = kind
        self._by_port = by_port

    def __getitem__(self, port: int) -> str:
        return self._by_port[port]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_port)

    def __len__(self) -> int:
        return len(self._by_port)

    def __repr__(self) -> str:
        return f"PortMap({self._by_port!r})"

    def with_ports(self, bindings: Mapping[int, str]) -> PortMap:
        """A copy with ``bindings`` added (replacing existing ports)."""
        return PortMap({**self._by_port, **bindings})

    def without_ports(self, *ports: int) -> PortMap:
        """A copy without ``ports``."""
        return PortMap({p: k for p, k in self._by_port.items() if p not in ports})

    @classmethod
    def parse_decode_as(cls, spec: str, base: PortMap | None = None) -> PortMap:
        """Parse Wireshark decode-as syntax, e.g. ``"udp.port==9527,vxlan"``.

        Returns ``base`` (default :data:`DEFAULT_PORTS`) plus the binding. A port range
        ``udp.port==9527-9529,vxlan`` binds every port in it. Raises ValueError with the
        accepted syntax for anything else.
        """
        m = _DECODE_AS.match(spec)
        if m is None:
            raise ValueError(f"cannot parse decode-as {spec!r}: expected "
                             f"'udp.port==PORT,PROTOCOL' (or PORT-PORT), e.g. "
                             f"'udp.port==8472,vxlan'")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        name = m.group(3).lower()
        if name not in _ALIASES:
            raise ValueError(f"cannot decode UDP as {name!r}: expected one of "
                             f"{', '.join(sorted(_ALIASES))}")
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"bad UDP port range in decode-as {spec!r}: ports are 1-65535, "
                             "low <= high")
        kind = _ALIASES[name]
        return (base if base is not None else DEFAULT_PORTS).with_ports(
            dict.fromkeys(range(lo, hi + 1), kind))


#: The bindings decode() uses unless told otherwise.
DEFAULT_PORTS = PortMap({4789: "vxlan", 8472: "vxlan", 6784: "vxlan", 6081: "geneve",
                         8285: "flannel-udp"})
