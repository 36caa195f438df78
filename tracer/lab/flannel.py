"""Flannel's three backends (vxlan, host-gw, udp) as labs, and the original two-node lab.

Every node gets what the CNI bridge plugin and flanneld leave behind: a ``cni0`` bridge with
the node's /24 from 10.244.0.0/16, pods on veths into it, forwarding and br_netfilter on, and
flanneld's iptables rules. The backends differ only in how a packet reaches another node's
/24: a VXLAN device with static entries (``vxlan``), a plain route via the node's underlay
address (``host-gw``), or a TUN device and a user-space forwarder (``udp``).
"""

from __future__ import annotations

from typing import Literal

from tracer.lab.build import (
    CLUSTER_CIDR,
    UNDERLAY,
    Draft,
    lab_mac,
    pod_on_bridge,
    restore,
    switch,
    vxlan_mesh,
)
from tracer.lab.spec import (
    Address,
    Bridge,
    Daemon,
    FaultTargets,
    Namespace,
    Route,
    Topology,
    Tun,
    Veth,
)

Backend = Literal["vxlan", "host-gw", "udp"]
VXLAN_VNI = 1
VXLAN_PORT = 8472  # Linux/Flannel's port; IANA's is 4789
VXLAN_MTU = 1450  # 1500 underlay - 50 bytes of VXLAN encapsulation, as flanneld sets
UDP_PORT = 8285
UDP_MTU = 1472  # 1500 - 20 (IP) - 8 (UDP): the TUN payload is a bare IP packet
MTU = {"vxlan": VXLAN_MTU, "host-gw": None, "udp": UDP_MTU}
THREE_NODES = {1: ["a1", "a2"], 2: ["b1"], 3: ["c1"]}


def flannel_rules(pod_cidr: str) -> str:
    """The iptables rules flanneld writes on a node (iptables-restore --noflush input)."""
    c = CLUSTER_CIDR
    return "\n".join(
        [
            "*nat",
            ":FLANNEL-POSTRTG - [0:0]",
            "-A POSTROUTING -m comment --comment flanneld-masq -j FLANNEL-POSTRTG",
            f"-A FLANNEL-POSTRTG -s {pod_cidr} -d {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {c} -d {pod_cidr} -j RETURN",
            f"-A FLANNEL-POSTRTG ! -s {c} -d {pod_cidr} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {c} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully",
            f"-A FLANNEL-POSTRTG ! -s {c} -d {c} -j MASQUERADE --random-fully",
            "COMMIT",
            "*filter",
            ":FLANNEL-FWD - [0:0]",
            "-A FORWARD -m comment --comment flanneld-forward -j FLANNEL-FWD",
            f"-A FLANNEL-FWD -s {c} -j ACCEPT",
            f"-A FLANNEL-FWD -d {c} -j ACCEPT",
            "COMMIT",
            "",
        ]
    )


def flannel_draft(backend: Backend, nodes: dict[int, list[str]], use_switch: bool = True) -> Draft:
    """Nodes and pods of a Flannel cluster with ``backend``. Without ``use_switch`` (two
    nodes only) the underlay is one veth ``u1``--``u2`` between the nodes."""
    d = Draft()
    mtu = MTU[backend]

    def under(n: int) -> str:
        return "eth0" if use_switch else f"u{n}"

    if not use_switch:
        d.veths.append(
            Veth("n1", "u1", "n2", "u2", mac=lab_mac(0x77, 0, 1), peer_mac=lab_mac(0x77, 0, 2))
        )
    for n, pods in nodes.items():
        node = f"n{n}"
        d.namespaces.append(Namespace(node, "node", addr=f"{UNDERLAY}.{n}"))
        d.bridges.append(Bridge(node, "cni0", mac=lab_mac(0xC0, 0, n), mtu=mtu))
        if not use_switch:
            d.addresses.append(Address(node, under(n), f"{UNDERLAY}.{n}/24"))
        d.addresses.append(Address(node, "cni0", f"10.244.{n}.1/24"))
        d.node_sysctls(node)
        d.commands.append(restore(node, flannel_rules(f"10.244.{n}.0/24")))
        for i, pod in enumerate(pods, start=2):
            pod_on_bridge(d, pod, node, f"10.244.{n}.{i}", 24, f"10.244.{n}.1", "cni0", mtu)
    if use_switch:
        switch(d, list(nodes))
    if backend == "vxlan":
        vxlan_mesh(
            d,
            list(nodes),
            "flannel.1",
            VXLAN_VNI,
            VXLAN_PORT,
            0xF1,
            tunnel_ip=lambda n: f"10.244.{n}.0",
            subnet=lambda n: f"10.244.{n}.0/24",
            mtu=VXLAN_MTU,
            underlay=under,
        )
    elif backend == "host-gw":
        for n in nodes:
            for m in nodes:
                if m != n:
                    d.routes.append(Route(f"n{n}", f"10.244.{m}.0/24", gateway=f"{UNDERLAY}.{m}"))
    else:
        for n in nodes:
            node = f"n{n}"
            d.tuns.append(Tun(node, "flannel0", mtu=UDP_MTU))
            # flanneld puts the node's .0 on flannel0 with the cluster's /16: the connected
            # route sends every other node's pods into the TUN device.
            d.addresses.append(Address(node, "flannel0", f"10.244.{n}.0/16"))
            peers = [f"--peer=10.244.{m}.0/24={UNDERLAY}.{m}" for m in nodes if m != n]
            d.daemons.append(
                Daemon(node, "udpfwd", ("--tun", "flannel0", "--port", str(UDP_PORT), *peers))
            )
    return d


TWO_NODE_VXLAN_PICTURE = r"""
 node n1 (pods a1, a2)                      node n2 (pod b1)
+-----------------------------------+      +-----------------------------------+
| a1 10.244.1.2    a2 10.244.1.3    |      | b1 10.244.2.2                     |
|    eth0 |            eth0 |       |      |    eth0 |                         |
| veth-a1 |         veth-a2 |       |      | veth-b1 |                         |
|  +------+-----------------+--+    |      |  +------+--------------------+    |
|  | cni0 10.244.1.1/24 bridge |    |      |  | cni0 10.244.2.1/24 bridge |    |
|  +---------------------------+    |      |  +---------------------------+    |
|  flannel.1 10.244.1.0/32 VXLAN    |      |  flannel.1 10.244.2.0/32 VXLAN    |
|    VNI 1, UDP 8472, nolearning    |      |    VNI 1, UDP 8472, nolearning    |
|  u1 192.168.77.1/24 --------------+-veth-+ u2 192.168.77.2/24                |
+-----------------------------------+      +-----------------------------------+
 n1: route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink,
     neigh 10.244.2.0 lladdr M2, fdb M2 dst 192.168.77.2
     (M2 = n2's flannel.1 MAC 02:68:74:f1:00:02); n2 mirrors it.
"""

_THREE_NODES = r"""
   a1 10.244.1.2  a2 10.244.1.3       b1 10.244.2.2          c1 10.244.3.2
    eth0 |         eth0 |              eth0 |                 eth0 |
 n1 +----+--------------+-----+  n2 +-------+---------+  n3 +-------+---------+
    | veth-a1       veth-a2   |     | veth-b1         |     | veth-c1         |
    | cni0 10.244.1.1/24      |     | cni0 10.244.2.1 |     | cni0 10.244.3.1 |
{middle}
    | eth0 192.168.77.1/24    |     | eth0 .77.2      |     | eth0 .77.3      |
    +-----------+-------------+     +--------+--------+     +--------+--------+
                |                            |                       |
 net ===========+======== ul0 bridge 192.168.77.254/24 (the switch) ==+========
"""

FLANNEL_VXLAN_PICTURE = (
    _THREE_NODES.format(
        middle="""\
    | flannel.1 10.244.1.0/32 |     | flannel.1 .2.0  |     | flannel.1 .3.0  |
    |  VXLAN VNI 1, UDP 8472  |     |  VNI 1, 8472    |     |  VNI 1, 8472    |"""
    )
    + r"""
 n1: route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink, neigh 10.244.2.0
     lladdr M2, fdb M2 dst 192.168.77.2 (M2 = n2's flannel.1 MAC); same for n3.
"""
)

FLANNEL_HOST_GW_PICTURE = (
    _THREE_NODES.format(
        middle="""\
    | (no tunnel device)      |     |                 |     |                 |"""
    )
    + r"""
 n1: route 10.244.2.0/24 via 192.168.77.2, route 10.244.3.0/24 via 192.168.77.3
     (every node must share one L2 network: the next hop is the other node)
"""
)

FLANNEL_UDP_PICTURE = (
    _THREE_NODES.format(
        middle="""\
    | flannel0 10.244.1.0/16  |     | flannel0 .2.0   |     | flannel0 .3.0   |
    |  TUN <-> udpfwd :8285   |     |  TUN, udpfwd    |     |  TUN, udpfwd    |"""
    )
    + r"""
 n1: 10.244.0.0/16 dev flannel0 (connected); udpfwd reads each packet from the
     TUN and sends it whole in UDP to the node with its /24 (192.168.77.M:8285)
"""
)


def two_node_vxlan() -> Topology:
    """Two Kubernetes-like nodes with Flannel's VXLAN backend and three pods, joined by one
    veth (the first lab; flannel-vxlan is its three-node form on a switch)."""
    d = flannel_draft("vxlan", {1: ["a1", "a2"], 2: ["b1"]}, use_switch=False)
    return d.freeze(
        "two-node-vxlan",
        "Flannel VXLAN: nodes n1 (pods a1 a2), n2 (pod b1)",
        TWO_NODE_VXLAN_PICTURE,
        faults=FaultTargets(pair=("a1", "b1")),
    )


def flannel_vxlan() -> Topology:
    """Flannel's default backend on three nodes: flannel.1 VXLAN (VNI 1, UDP 8472)."""
    return flannel_draft("vxlan", THREE_NODES).freeze(
        "flannel-vxlan",
        "Flannel VXLAN, 3 nodes: n1 (a1 a2), n2 (b1), n3 (c1)",
        FLANNEL_VXLAN_PICTURE,
        faults=FaultTargets(pair=("a1", "b1")),
    )


def flannel_host_gw() -> Topology:
    """Flannel's host-gw backend: plain routes to each other node's /24, no encapsulation."""
    return flannel_draft("host-gw", THREE_NODES).freeze(
        "flannel-host-gw",
        "Flannel host-gw, 3 nodes: routes via the underlay",
        FLANNEL_HOST_GW_PICTURE,
        faults=FaultTargets(pair=("a1", "b1")),
    )


def flannel_udp() -> Topology:
    """Flannel's old udp backend: flannel0 TUN devices and a user-space forwarder on 8285."""
    return flannel_draft("udp", THREE_NODES).freeze(
        "flannel-udp",
        "Flannel udp, 3 nodes: TUN flannel0 + forwarder on UDP 8285",
        FLANNEL_UDP_PICTURE,
        faults=FaultTargets(pair=("a1", "b1")),
    )
