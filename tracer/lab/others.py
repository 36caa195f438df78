"""Labs for Weave Net, macvlan/ipvlan pods, and Geneve and GRE overlays.

``weave-vxlan``: Weave's fast datapath is an L2 overlay: every pod of the cluster sits in one
10.32.0.0/12 network, on a ``weave`` bridge per node whose VXLAN port (``vxlan-6784``, UDP
6784) reaches the other nodes. (Weave drives the VXLAN vport through Open vSwitch's kernel
datapath; this kernel has no OVS, so a Linux VXLAN device is the bridge port, with the same
wire format.)

``macvlan`` / ``ipvlan``: pods as children of the node's ``eth0``, straight on the underlay
network: no bridge, no routing, no netfilter on the node.

``geneve`` / ``gre``: two nodes whose pod subnets are routed over a Geneve (UDP 6081, as
Antrea and OVN-Kubernetes use) or GRE tunnel instead of VXLAN.
"""

from __future__ import annotations

from typing import Literal

from tracer.lab.build import UNDERLAY, Draft, lab_mac, pod_mac, pod_on_bridge, restore, switch
from tracer.lab.flannel import flannel_rules
from tracer.lab.spec import (
    Address,
    Bridge,
    FaultTargets,
    Fdb,
    Macvlan,
    Namespace,
    Neighbour,
    Port,
    Route,
    Topology,
    Tunnel,
    Vxlan,
)

WEAVE_PORT = 6784
GENEVE_VNI = 1
GRE_KEY = 42  # a keyed GRE tunnel (RFC 2890): the key is on the wire in both directions
WEAVE_MTU = 1376  # Weave's default for the fast datapath
WEAVE_PODS = {1: [("a1", "10.32.0.2"), ("a2", "10.32.0.3")], 2: [("b1", "10.44.0.1")]}
WEAVE_BRIDGE_IP = {1: "10.32.0.1", 2: "10.44.0.0"}

WEAVE_PICTURE = r"""
   a1 10.32.0.2/12   a2 10.32.0.3/12              b1 10.44.0.1/12
    eth0 |             eth0 |                      eth0 |
 n1 +----+-----------------+--------+       n2 +--------+-------------------+
    | vethwepl-a1   vethwepl-a2     |          | vethwepl-b1                |
    |  +-------------------------+  |          |  +----------------------+  |
    |  | weave 10.32.0.1/12 bridge|  |          |  | weave 10.44.0.0/12   |  |
    |  +-----------+-------------+  |          |  +----------+-----------+  |
    |  vxlan-6784 (bridge port)     |          |  vxlan-6784 (bridge port)  |
    |   VNI 1, UDP 6784, learning   |          |   VNI 1, UDP 6784          |
    | eth0 192.168.77.1/24          |          | eth0 192.168.77.2/24       |
    +--------------+----------------+          +-------------+--------------+
                   |                                         |
 net ==============+======== ul0 bridge 192.168.77.254/24 ===+=================
 One L2 network across nodes: n1's vxlan-6784 fdb sends b1's MAC and broadcasts
 (00:00:00:00:00:00) to 192.168.77.2; a1 -> b1 is bridged, never routed.
"""

MACVLAN_PICTURE = r"""
   a1 192.168.77.11/24   a2 192.168.77.12/24        b1 192.168.77.21/24
   eth0 (macvlan bridge) eth0 (macvlan bridge)      eth0 (macvlan bridge)
 n1 +-----+------------------+-------+       n2 +--------+------------------+
    |     +---- children of -+       |          |        +- child of        |
    | eth0 192.168.77.1/24 (parent)  |          | eth0 192.168.77.2 (parent)|
    +---------------+----------------+          +-------------+-------------+
                    |                                         |
 net ===============+======== ul0 bridge 192.168.77.254/24 ===+=================
 a1 <-> a2: switched inside the macvlan driver; a1 <-> b1: out of n1's eth0 onto
 the network; n1 <-> a1: impossible (a parent never hears its macvlan children)
"""

TUNNEL_PICTURE = r"""
   a1 10.244.1.2      a2 10.244.1.3            b1 10.244.2.2
 n1 +----+---------------+--------+      n2 +------+---------------------+
    | cni0 10.244.1.1/24 bridge   |         | cni0 10.244.2.1/24 bridge  |
    | {dev1:<27} |         | {dev2:<26} |
    | {how1:<27} |         | {how2:<26} |
    | eth0 192.168.77.1/24        |         | eth0 192.168.77.2/24       |
    +-------------+---------------+         +-------------+--------------+
                  |                                       |
 net =============+========== ul0 bridge 192.168.77.254/24 +==================
"""


def weave_vxlan() -> Topology:
    d = Draft()
    for n, pods in WEAVE_PODS.items():
        node = f"n{n}"
        d.namespaces.append(Namespace(node, "node", addr=f"{UNDERLAY}.{n}"))
        d.bridges.append(Bridge(node, "weave", mac=lab_mac(0x3E, 0, n), mtu=WEAVE_MTU))
        d.addresses.append(Address(node, "weave", f"{WEAVE_BRIDGE_IP[n]}/12"))
        d.node_sysctls(node)
        for pod, ip in pods:
            pod_on_bridge(
                d, pod, node, ip, 12, WEAVE_BRIDGE_IP[n], "weave", WEAVE_MTU, f"vethwepl-{pod}"
            )
        d.vxlans.append(
            Vxlan(
                node,
                "vxlan-6784",
                vni=1,
                port=WEAVE_PORT,
                local=f"{UNDERLAY}.{n}",
                underlay="eth0",
                learning=True,
                mac=lab_mac(0x3F, 0, n),
                mtu=WEAVE_MTU,
            )
        )
        d.ports.append(Port(node, "vxlan-6784", "weave"))
    switch(d, list(WEAVE_PODS))
    for n in WEAVE_PODS:
        for m, pods in WEAVE_PODS.items():
            if m == n:
                continue
            remote = f"{UNDERLAY}.{m}"
            d.fdb.append(Fdb(f"n{n}", "vxlan-6784", "00:00:00:00:00:00", remote))
            d.fdb += [Fdb(f"n{n}", "vxlan-6784", pod_mac(ip), remote) for _, ip in pods]
    return d.freeze(
        "weave-vxlan",
        "Weave fast datapath: one L2 network, VXLAN on UDP 6784",
        WEAVE_PICTURE,
        faults=FaultTargets(pair=("a1", "b1")),
    )


def _children(kind: Literal["macvlan", "ipvlan"]) -> Topology:
    d = Draft()
    pods = {1: [("a1", "192.168.77.11"), ("a2", "192.168.77.12")], 2: [("b1", "192.168.77.21")]}
    mode = "bridge" if kind == "macvlan" else "l2"
    for n, members in pods.items():
        node = f"n{n}"
        d.namespaces.append(Namespace(node, "node", addr=f"{UNDERLAY}.{n}"))
        for pod, ip in members:
            d.namespaces.append(Namespace(pod, "pod", addr=ip, node=node))
            mac = pod_mac(ip) if kind == "macvlan" else None  # ipvlan shares the parent's
            d.macvlans.append(Macvlan(pod, "eth0", node, "eth0", mode, kind, mac=mac))
            d.addresses.append(Address(pod, "eth0", f"{ip}/24"))
    switch(d, list(pods))
    summary = (
        "macvlan pods: children of each node's eth0 on the underlay"
        if kind == "macvlan"
        else "ipvlan L2 pods: children of each node's eth0 (shared MAC)"
    )
    picture = (
        MACVLAN_PICTURE
        if kind == "macvlan"
        else MACVLAN_PICTURE.replace("macvlan bridge", "ipvlan l2     ").replace(
            "macvlan driver", "ipvlan driver "
        )
    )
    return d.freeze(
        kind, summary, picture, faults=FaultTargets(pair=("a1", "b1"), drop_in_pod=True)
    )


def macvlan() -> Topology:
    return _children("macvlan")


def ipvlan() -> Topology:
    return _children("ipvlan")


def _tunnelled(kind: Literal["geneve", "gre"]) -> Topology:
    """Flannel-shaped nodes (cni0, pods) whose /24s are routed over a ``kind`` tunnel."""
    d = Draft()
    pods = {1: ["a1", "a2"], 2: ["b1"]}
    for n, members in pods.items():
        node = f"n{n}"
        m = 3 - n
        d.namespaces.append(Namespace(node, "node", addr=f"{UNDERLAY}.{n}"))
        d.bridges.append(Bridge(node, "cni0", mac=lab_mac(0xC0, 0, n), mtu=1400))
        d.addresses.append(Address(node, "cni0", f"10.244.{n}.1/24"))
        d.node_sysctls(node)
        d.commands.append(restore(node, flannel_rules(f"10.244.{n}.0/24")))
        for i, pod in enumerate(members, start=2):
            pod_on_bridge(d, pod, node, f"10.244.{n}.{i}", 24, f"10.244.{n}.1", "cni0", 1400)
        if kind == "geneve":
            d.tunnels.append(
                Tunnel(
                    node,
                    "genev_sys_6081",
                    "geneve",
                    remote=f"{UNDERLAY}.{m}",
                    vni=GENEVE_VNI,
                    port=6081,
                    mac=lab_mac(0x6E, 0, n),
                    mtu=1400,
                )
            )
            d.addresses.append(Address(node, "genev_sys_6081", f"10.244.{n}.0/32"))
            d.routes.append(
                Route(
                    node,
                    f"10.244.{m}.0/24",
                    gateway=f"10.244.{m}.0",
                    ifname="genev_sys_6081",
                    onlink=True,
                )
            )
            d.neighbours.append(
                Neighbour(node, "genev_sys_6081", f"10.244.{m}.0", lab_mac(0x6E, 0, m))
            )
        else:
            d.tunnels.append(
                Tunnel(
                    node,
                    "gre1",
                    "gre",
                    local=f"{UNDERLAY}.{n}",
                    remote=f"{UNDERLAY}.{m}",
                    underlay="eth0",
                    mtu=1400,
                    key=GRE_KEY,
                )
            )
            d.addresses.append(Address(node, "gre1", f"10.244.{n}.0/32"))
            d.routes.append(Route(node, f"10.244.{m}.0/24", ifname="gre1", scope="link"))
    switch(d, list(pods))
    if kind == "geneve":
        picture = TUNNEL_PICTURE.format(
            dev1="genev_sys_6081 10.244.1.0/32",
            dev2="genev_sys_6081 10.244.2.0",
            how1="Geneve VNI 1 UDP 6081 -> .2",
            how2="Geneve VNI 1 UDP 6081 -> .1",
        )
        summary = "Geneve overlay (Antrea/OVN style), UDP 6081, 2 nodes"
    else:
        picture = TUNNEL_PICTURE.format(
            dev1="gre1 10.244.1.0/32",
            dev2="gre1 10.244.2.0/32",
            how1=f"GRE key {GRE_KEY} -> 192.168.77.2",
            how2=f"GRE key {GRE_KEY} -> 192.168.77.1",
        )
        summary = f"pod subnets routed over a GRE tunnel (key {GRE_KEY}), 2 nodes"
    return d.freeze(kind, summary, picture, faults=FaultTargets(pair=("a1", "b1")))


def geneve() -> Topology:
    return _tunnelled("geneve")


def gre() -> Topology:
    return _tunnelled("gre")
