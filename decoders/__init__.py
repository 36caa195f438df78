"""hoptrace's per-packet header decoder.

``decode(buf)`` turns the first bytes of a packet (from the MAC header, or from the
network header with ``start=START_IP``) into its layer stack, the tunnels it crossed and
its innermost and outermost IP flows. See docs/decoders.md.

    >>> d = decode(frame)
    >>> d.layers
    ('eth', 'ipv4', 'udp', 'vxlan', 'eth', 'ipv4', 'icmp')
    >>> d.summary()
    'VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472 | 10.244.1.2 -> 10.244.2.2 ICMP ...'
"""

from .core import decode
from .model import START_ETH, START_IP, Decoded, Flow, Tunnel
from .ports import DEFAULT_PORTS, PortMap

__all__ = ["decode", "Decoded", "Flow", "Tunnel", "PortMap", "DEFAULT_PORTS", "START_ETH",
           "START_IP"]
