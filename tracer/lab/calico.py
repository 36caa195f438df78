"""Calico's dataplanes as labs: routed (BGP), VXLAN and IPIP.

No bridge: each pod's host-side veth is ``cali<hash>`` (MAC ee:ee:ee:ee:ee:ee, proxy ARP on,
no address) with a /32 route to the pod; the pod's default route points at 169.254.1.1, an
address nobody has, which the host answers through proxy ARP. Each node owns a /26 block of
the 10.244.0.0/16 pool (blackholed locally, as BIRD installs it) and routes the other nodes'
blocks: over the underlay (``calico-routed``, the routes BIRD learns by BGP), over
``vxlan.calico`` (VNI 4096, UDP 4789) or over ``tunl0`` (IPIP).
"""

from __future__ import annotations

from typing import Literal

from tracer.lab.build import UNDERLAY, Draft, routed_pod, switch, vxlan_mesh
from tracer.lab.spec import Address, FaultTargets, Namespace, Route, Sysctl, Topology, Tunnel

Mode = Literal["routed", "vxlan", "ipip"]
BLOCKS = {1: "10.244.1.0/26", 2: "10.244.1.64/26"}
PODS = {1: [("a1", "10.244.1.2"), ("a2", "10.244.1.3")], 2: [("b1", "10.244.1.66")]}
TUNNEL_IP = {1: "10.244.1.0", 2: "10.244.1.64"}  # Felix takes the block's first address
MTU = {"routed": None, "vxlan": 1450, "ipip": 1480}
VXLAN_VNI = 4096
VXLAN_PORT = 4789

_PICTURE = r"""
   a1 10.244.1.2/32     a2 10.244.1.3/32          b1 10.244.1.66/32
   eth0: default via 169.254.1.1 onlink     eth0: default via 169.254.1.1 onlink
 n1 +---+-------------------+---------+   n2 +--------+-----------------------+
    | cali3f...  (ee:ee:ee:ee:ee:ee,  |      | cali... proxy_arp=1            |
    |   proxy_arp=1, no address)      |      |                                |
    | 10.244.1.2/32 dev cali...       |      | 10.244.1.66/32 dev cali...     |
    | blackhole 10.244.1.0/26 (own)   |      | blackhole 10.244.1.64/26       |
{middle}
    | eth0 192.168.77.1/24            |      | eth0 192.168.77.2/24           |
    +---------------+-----------------+      +-----------+--------------------+
                    |                                    |
 net ===============+===== ul0 bridge 192.168.77.254/24 =+======================
"""

ROUTED_PICTURE = _PICTURE.format(
    middle="""\
    | 10.244.1.64/26 via 192.168.77.2 |      | 10.244.1.0/26 via 192.168.77.1 |
    |   dev eth0 (learned by BGP)     |      |   dev eth0                     |"""
)
VXLAN_PICTURE = (
    _PICTURE.format(
        middle="""\
    | vxlan.calico 10.244.1.0/32      |      | vxlan.calico 10.244.1.64/32    |
    |  VNI 4096, UDP 4789, mtu 1450   |      |  VNI 4096, UDP 4789            |
    | 10.244.1.64/26 via 10.244.1.64  |      | 10.244.1.0/26 via 10.244.1.0   |
    |   dev vxlan.calico onlink       |      |   dev vxlan.calico onlink      |"""
    )
    + r"""
 n2: rp_filter loose on vxlan.calico: net reaches the pods through n1 (its route
     10.244.1.0/24 via 192.168.77.1) but b1 answers net directly from n2
"""
)
IPIP_PICTURE = _PICTURE.format(
    middle="""\
    | tunl0 10.244.1.0/32 (IPIP)      |      | tunl0 10.244.1.64/32           |
    | 10.244.1.64/26 via 192.168.77.2 |      | 10.244.1.0/26 via 192.168.77.1 |
    |   dev tunl0 onlink              |      |   dev tunl0 onlink             |"""
)


def calico(mode: Mode) -> Topology:
    d = Draft()
    mtu = MTU[mode]
    for n, pods in PODS.items():
        node = f"n{n}"
        d.namespaces.append(Namespace(node, "node", addr=f"{UNDERLAY}.{n}"))
        d.node_sysctls(node, bridge_nf=False)
        d.sysctls.append(Sysctl(node, "net.ipv4.conf.all.rp_filter", "0"))
        for pod, ip in pods:
            routed_pod(d, pod, node, ip, mtu)
        d.routes.append(Route(node, BLOCKS[n], type="blackhole"))
        # Proxy ARP answers for 169.254.1.1 only if the node routes that address out of
        # another interface; a real node's default route does that, these nodes have none.
        d.routes.append(Route(node, "169.254.1.1/32", ifname="eth0", scope="link"))
    switch(d, list(PODS))
    others = {1: 2, 2: 1}
    faults = FaultTargets(pair=("a1", "b1"))
    if mode == "routed":
        for n, m in others.items():
            d.routes.append(Route(f"n{n}", BLOCKS[m], gateway=f"{UNDERLAY}.{m}", ifname="eth0"))
    elif mode == "vxlan":
        vxlan_mesh(
            d,
            list(PODS),
            "vxlan.calico",
            VXLAN_VNI,
            VXLAN_PORT,
            0xCA,
            tunnel_ip=lambda n: TUNNEL_IP[n],
            subnet=lambda n: BLOCKS[n],
            mtu=1450,
        )
        # The path that needs loose rp_filter: net -> n1 -> VXLAN -> n2 -> b1, reply direct.
        d.routes.append(Route("net", "10.244.1.0/24", gateway=f"{UNDERLAY}.1"))
        d.sysctls.append(Sysctl("n2", "net/ipv4/conf/vxlan.calico/rp_filter", "2"))
        faults = FaultTargets(pair=("a1", "b1"), loose_rpf=("n2", "vxlan.calico"), rpf_client="net")
    else:
        for n, m in others.items():
            node = f"n{n}"
            # tunl0 is the ipip module's fallback device, present in every namespace once
            # the module is loaded; the applier reuses it.
            d.tunnels.append(Tunnel(node, "tunl0", "ipip", mtu=1480))
            d.addresses.append(Address(node, "tunl0", f"{TUNNEL_IP[n]}/32"))
            d.routes.append(
                Route(node, BLOCKS[m], gateway=f"{UNDERLAY}.{m}", ifname="tunl0", onlink=True)
            )
    picture = {"routed": ROUTED_PICTURE, "vxlan": VXLAN_PICTURE, "ipip": IPIP_PICTURE}[mode]
    summary = {
        "routed": "Calico BGP-routed: cali veths, /32 routes, proxy ARP, /26 blocks",
        "vxlan": "Calico VXLAN: vxlan.calico (VNI 4096, UDP 4789) between /26 blocks",
        "ipip": "Calico IPIP: tunl0 between /26 blocks",
    }[mode]
    return d.freeze(f"calico-{mode}", summary, picture, faults=faults)


def calico_routed() -> Topology:
    return calico("routed")


def calico_vxlan() -> Topology:
    return calico("vxlan")


def calico_ipip() -> Topology:
    return calico("ipip")
