"""Flannel's old ``udp`` backend in miniature: IP packets between a TUN device and UDP.

Run by the lab (:mod:`tracer.lab.procs`) inside a node's namespace, with the standard library
only (``python -I``, so it starts in a few tens of milliseconds)::

    udpfwd.py --netns htlab-n1 --pidfile F --lifetime S --tun flannel0 --port 8285 \\
              --peer 10.244.2.0/24=192.168.77.2 [--peer ...]

A packet read from the TUN device goes, whole, as the payload of one UDP datagram to the
node that owns its destination's subnet (``--peer``); a datagram from a known peer is
written back to the TUN device. Unknown destinations and unknown senders are dropped, so
it only ever talks to the lab's own nodes. It exits when its namespace is deleted, on
SIGTERM, or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import selectors
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracer.lab import daemon_common
else:  # run as a file with python -I: the sibling module, not the tracer package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import daemon_common

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000



def main() -> int:
    p = daemon_common.parser(__doc__)
    p.add_argument("--tun", required=True)
    p.add_argument("--port", type=int, default=8285)
    p.add_argument("--peer", action="append", default=[], help="CIDR=NODE_IP")
    args = p.parse_args()
    peers = []
    for spec in args.peer:
        cidr, _, ip = spec.partition("=")
        peers.append((ipaddress.IPv4Network(cidr), ip))
    peers.sort(key=lambda x: -x[0].prefixlen)
    known = {ip for _, ip in peers}

    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(tun, selectors.EVENT_READ, "tun")
    sel.register(sock, selectors.EVENT_READ, "udp")
    daemon_common.ready(args.pidfile)  # the lab's `up` waits for this

    end = time.monotonic() + args.lifetime
    next_check = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_check:
            if daemon_common.netns_gone(args.netns):
                return 0
            next_check = now + 1.0
        for key, _ in sel.select(timeout=1.0):
            try:
                if key.data == "tun":
                    pkt = os.read(tun, 65535)
                    if len(pkt) < 20 or pkt[0] >> 4 != 4:
                        continue
                    dst = ipaddress.IPv4Address(pkt[16:20])
                    peer = next((ip for net, ip in peers if dst in net), None)
                    if peer:
                        sock.sendto(pkt, (peer, args.port))
                else:
                    data, (src, _) = sock.recvfrom(65535)
                    if src in known:
                        os.write(tun, data)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:  # the device went away with its namespace
                print(f"udpfwd: {exc}", file=sys.stderr)
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
