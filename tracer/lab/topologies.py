"""The labs hoptrace can build, as data.

Each builder returns a :class:`~tracer.lab.spec.Topology`; :data:`LABS` maps lab names to
them. To add a lab (flannel-host-gw, calico-routed, kube-proxy ...) write one more
builder and register it: the applier needs no change.

MAC addresses are fixed so captures are reproducible: pods' ``eth0`` use the CNI bridge
plugin's scheme (``0a:58`` followed by the IPv4 address), everything else ``02:68:74``
(locally administered, "ht") followed by a small code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from tracer.lab.spec import (
    Address,
    Bridge,
    Command,
    Fdb,
    Namespace,
    Neighbour,
    Port,
    Route,
    Sysctl,
    Topology,
    Veth,
    Vxlan,
)

CLUSTER_CIDR = "10.244.0.0/16"
UNDERLAY = "192.168.77"
VXLAN_VNI = 1
VXLAN_PORT = 8472  # Linux/Flannel's port; IANA's is 4789
VXLAN_MTU = 1450  # 1500 underlay - 50 bytes of VXLAN encapsulation, as flanneld sets


def pod_mac(ip: str) -> str:
    """The CNI bridge plugin's MAC for a pod address: ``0a:58:`` + the IPv4 octets."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def lab_mac(kind: int, a: int, b: int) -> str:
    """A locally administered MAC ``02:68:74:KK:AA:BB`` for lab-owned devices."""
    return f"02:68:74:{kind:02x}:{a:02x}:{b:02x}"


def _pod_on_bridge(
    pod: str, node: str, ip: str, plen: int, gateway: str, bridge: str, mtu: int | None
) -> tuple[Veth, Port, Address, Route]:
    """A pod netns with eth0, its host side ``veth-<pod>`` on ``bridge``, a default route."""
    octets = ipaddress.IPv4Address(ip).packed
    veth = Veth(
        ns=pod,
        ifname="eth0",
        peer_ns=node,
        peer_ifname=f"veth-{pod}",
        mac=pod_mac(ip),
        peer_mac=lab_mac(0xAA, octets[2], octets[3]),
        mtu=mtu,
    )
    return (
        veth,
        Port(node, f"veth-{pod}", bridge),
        Address(pod, "eth0", f"{ip}/{plen}"),
        Route(pod, "default", gateway=gateway),
    )


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


def _flannel_rules(pod_cidr: str) -> str:
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


def two_node_vxlan() -> Topology:
    """Two Kubernetes-like nodes with Flannel's VXLAN backend and three pods."""
    nodes = {1: ["a1", "a2"], 2: ["b1"]}
    namespaces: list[Namespace] = []
    veths = [Veth("n1", "u1", "n2", "u2", mac=lab_mac(0x77, 0, 1), peer_mac=lab_mac(0x77, 0, 2))]
    bridges: list[Bridge] = []
    vxlans: list[Vxlan] = []
    ports: list[Port] = []
    addresses: list[Address] = []
    routes: list[Route] = []
    neighbours: list[Neighbour] = []
    fdb: list[Fdb] = []
    sysctls: list[Sysctl] = []
    commands: list[Command] = []
    for n, pods in nodes.items():
        node, other = f"n{n}", 3 - n
        underlay_ip = f"{UNDERLAY}.{n}"
        namespaces.append(Namespace(node, "node", addr=underlay_ip))
        bridges.append(Bridge(node, "cni0", mac=lab_mac(0xC0, 0, n), mtu=VXLAN_MTU))
        vxlans.append(
            Vxlan(
                node,
                "flannel.1",
                vni=VXLAN_VNI,
                port=VXLAN_PORT,
                local=underlay_ip,
                underlay=f"u{n}",
                learning=False,
                mac=lab_mac(0xF1, 0, n),
                mtu=VXLAN_MTU,
            )
        )
        addresses += [
            Address(node, f"u{n}", f"{underlay_ip}/24"),
            Address(node, "cni0", f"10.244.{n}.1/24"),
            Address(node, "flannel.1", f"10.244.{n}.0/32"),
        ]
        # What flanneld writes for the other node's subnet lease.
        other_mac = lab_mac(0xF1, 0, other)
        routes.append(
            Route(
                node,
                f"10.244.{other}.0/24",
                gateway=f"10.244.{other}.0",
                ifname="flannel.1",
                onlink=True,
            )
        )
        neighbours.append(Neighbour(node, "flannel.1", f"10.244.{other}.0", other_mac))
        fdb.append(Fdb(node, "flannel.1", other_mac, f"{UNDERLAY}.{other}"))
        sysctls += [
            Sysctl(node, "net.ipv4.ip_forward", "1"),
            Sysctl(node, "net.bridge.bridge-nf-call-iptables", "1"),
        ]
        commands.append(
            Command(
                node, ("iptables-restore", "--noflush"), stdin=_flannel_rules(f"10.244.{n}.0/24")
            )
        )
        for i, pod in enumerate(pods, start=2):
            ip = f"10.244.{n}.{i}"
            namespaces.append(Namespace(pod, "pod", addr=ip, node=node))
            veth, port, addr, route = _pod_on_bridge(
                pod, node, ip, 24, f"10.244.{n}.1", "cni0", VXLAN_MTU
            )
            veths.append(veth)
            ports.append(port)
            addresses.append(addr)
            routes.append(route)
    return Topology(
        name="two-node-vxlan",
        summary="Flannel VXLAN: nodes n1 (pods a1 a2), n2 (pod b1)",
        namespaces=tuple(namespaces),
        veths=tuple(veths),
        bridges=tuple(bridges),
        vxlans=tuple(vxlans),
        ports=tuple(ports),
        addresses=tuple(addresses),
        routes=tuple(routes),
        neighbours=tuple(neighbours),
        fdb=tuple(fdb),
        sysctls=tuple(sysctls),
        commands=tuple(commands),
        picture=TWO_NODE_VXLAN_PICTURE,
    )


BRIDGE_PICTURE = r"""
 node host (containers c1, c2)                      ext ("the internet")
+--------------------------------------------+      +------------------------+
| c1 172.17.0.2      c2 172.17.0.3           |      |                        |
|    eth0 |            eth0 |                |      | no route to 172.17/16: |
| veth-c1 |         veth-c2 |                |      | sees only 198.51.100.1 |
|  +------+-----------------+-----+          |      |                        |
|  | docker0 172.17.0.1/16 bridge |          |      |                        |
|  +------------------------------+          |      |                        |
|  nat POSTROUTING -s 172.17.0.0/16          |      |                        |
|      ! -o docker0 -j MASQUERADE            |      |                        |
|  up0 198.51.100.1/24 ----------------------+-veth-+ eth0 198.51.100.2/24   |
+--------------------------------------------+      +------------------------+
 host: ip_forward=1, default via 198.51.100.2 dev up0
"""


def _docker_rules() -> str:
    """Docker's NAT and forwarding rules for the default bridge, reduced to their effect."""
    return "\n".join(
        [
            "*nat",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "COMMIT",
            "*filter",
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "COMMIT",
            "",
        ]
    )


def bridge() -> Topology:
    """A Docker-style host: containers on docker0, MASQUERADE towards an 'external' netns."""
    namespaces = [
        Namespace("host", "node", addr="198.51.100.1"),
        Namespace("ext", "node", addr="198.51.100.2"),
    ]
    veths = [
        Veth("host", "up0", "ext", "eth0", mac=lab_mac(0x51, 0, 1), peer_mac=lab_mac(0x51, 0, 2))
    ]
    ports: list[Port] = []
    addresses = [
        Address("host", "docker0", "172.17.0.1/16"),
        Address("host", "up0", "198.51.100.1/24"),
        Address("ext", "eth0", "198.51.100.2/24"),
    ]
    routes = [Route("host", "default", gateway="198.51.100.2")]
    for i, ctr in enumerate(("c1", "c2"), start=2):
        ip = f"172.17.0.{i}"
        namespaces.append(Namespace(ctr, "pod", addr=ip, node="host"))
        veth, port, addr, route = _pod_on_bridge(ctr, "host", ip, 16, "172.17.0.1", "docker0", None)
        veths.append(veth)
        ports.append(port)
        addresses.append(addr)
        routes.append(route)
    return Topology(
        name="bridge",
        summary="Docker bridge: c1 c2 on docker0, NAT out to ext",
        namespaces=tuple(namespaces),
        veths=tuple(veths),
        bridges=(Bridge("host", "docker0", mac=lab_mac(0xD0, 0, 1)),),
        ports=tuple(ports),
        addresses=tuple(addresses),
        routes=tuple(routes),
        sysctls=(Sysctl("host", "net.ipv4.ip_forward", "1"),),
        commands=(Command("host", ("iptables-restore", "--noflush"), stdin=_docker_rules()),),
        picture=BRIDGE_PICTURE,
    )


#: Lab name -> builder. The CLI and :func:`tracer.lab.get_lab` read this.
LABS: dict[str, Callable[[], Topology]] = {
    "two-node-vxlan": two_node_vxlan,
    "bridge": bridge,
}
