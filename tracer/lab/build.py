"""Building blocks shared by the lab builders: a mutable draft, MACs, pods, the underlay.

A builder fills a :class:`Draft` (plain lists, one per :class:`~tracer.lab.spec.Topology`
field) with the helpers below and freezes it. The helpers are the pieces every CNI repeats:
a pod on a bridge (the CNI bridge plugin), a pod on a routed veth (Calico), nodes on an
underlay switch, a static VXLAN mesh (what flanneld or Felix write for each peer).

MAC addresses are fixed so captures are reproducible: pods' ``eth0`` use the CNI bridge
plugin's scheme (``0a:58`` followed by the IPv4 address), everything else ``02:68:74``
(locally administered, "ht") followed by a small code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from tracer.lab.spec import (
    Address,
    Bridge,
    Command,
    Daemon,
    Dummy,
    Fdb,
    IpvsService,
    Macvlan,
    Namespace,
    Neighbour,
    Port,
    Route,
    Sysctl,
    Topology,
    Tun,
    Tunnel,
    Veth,
    Vxlan,
)

CLUSTER_CIDR = "10.244.0.0/16"
UNDERLAY = "192.168.77"
SWITCH_ADDR = f"{UNDERLAY}.254"  # the underlay network's own host (ToR / a client outside)
CALICO_MAC = "ee:ee:ee:ee:ee:ee"  # Calico gives every host-side cali veth this MAC


def pod_mac(ip: str) -> str:
    """The CNI bridge plugin's MAC for a pod address: ``0a:58:`` + the IPv4 octets."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def lab_mac(kind: int, a: int, b: int) -> str:
    """A locally administered MAC ``02:68:74:KK:AA:BB`` for lab-owned devices."""
    return f"02:68:74:{kind:02x}:{a:02x}:{b:02x}"


def cali_name(pod: str) -> str:
    """Calico's host-side veth name: ``cali`` + 11 hex digits of a hash of the workload."""
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


@dataclasses.dataclass
class Draft:
    """A topology under construction: append to the lists, then :meth:`freeze`."""

    namespaces: list[Namespace] = dataclasses.field(default_factory=list)
    veths: list[Veth] = dataclasses.field(default_factory=list)
    bridges: list[Bridge] = dataclasses.field(default_factory=list)
    vxlans: list[Vxlan] = dataclasses.field(default_factory=list)
    tuns: list[Tun] = dataclasses.field(default_factory=list)
    macvlans: list[Macvlan] = dataclasses.field(default_factory=list)
    tunnels: list[Tunnel] = dataclasses.field(default_factory=list)
    dummies: list[Dummy] = dataclasses.field(default_factory=list)
    ports: list[Port] = dataclasses.field(default_factory=list)
    addresses: list[Address] = dataclasses.field(default_factory=list)
    routes: list[Route] = dataclasses.field(default_factory=list)
    neighbours: list[Neighbour] = dataclasses.field(default_factory=list)
    fdb: list[Fdb] = dataclasses.field(default_factory=list)
    sysctls: list[Sysctl] = dataclasses.field(default_factory=list)
    commands: list[Command] = dataclasses.field(default_factory=list)
    ipvs: list[IpvsService] = dataclasses.field(default_factory=list)
    daemons: list[Daemon] = dataclasses.field(default_factory=list)

    def freeze(self, name: str, summary: str, picture: str, **extra: Any) -> Topology:
        fields: dict[str, Any] = {
            f.name: tuple(getattr(self, f.name)) for f in dataclasses.fields(self)
        }
        return Topology(name=name, summary=summary, picture=picture, **fields, **extra)

    def node_sysctls(self, node: str, bridge_nf: bool = True) -> None:
        """A Kubernetes node: forwarding on, bridged IPv4 through iptables (br_netfilter)."""
        self.sysctls.append(Sysctl(node, "net.ipv4.ip_forward", "1"))
        if bridge_nf:
            self.sysctls.append(Sysctl(node, "net.bridge.bridge-nf-call-iptables", "1"))


def switch(d: Draft, nodes: Sequence[int], mtu: int | None = None) -> None:
    """Nodes ``n1..`` with ``eth0`` (192.168.77.N/24) on one L2 network: a bridge ``ul0`` in
    a namespace ``net`` standing for the physical switch, which also has an address
    (192.168.77.254) so the underlay can send traffic too (a client outside the cluster)."""
    d.namespaces.append(Namespace("net", "net", addr=SWITCH_ADDR))
    d.bridges.append(Bridge("net", "ul0", mac=lab_mac(0x5A, 0, 0xFE), mtu=mtu))
    d.addresses.append(Address("net", "ul0", f"{SWITCH_ADDR}/24"))
    # A switch does not run iptables on what it forwards (br_netfilter is on by default).
    d.sysctls.append(Sysctl("net", "net.bridge.bridge-nf-call-iptables", "0"))
    for n in nodes:
        d.veths.append(
            Veth(
                f"n{n}",
                "eth0",
                "net",
                f"port-n{n}",
                mac=lab_mac(0x77, 0, n),
                peer_mac=lab_mac(0x5A, 0, n),
                mtu=mtu,
            )
        )
        d.ports.append(Port("net", f"port-n{n}", "ul0"))
        d.addresses.append(Address(f"n{n}", "eth0", f"{UNDERLAY}.{n}/24"))


def pod_on_bridge(
    d: Draft,
    pod: str,
    node: str,
    ip: str,
    plen: int,
    gateway: str | None,
    bridge: str,
    mtu: int | None,
    host_ifname: str | None = None,
) -> None:
    """A pod netns with eth0, its host side ``veth-<pod>`` on ``bridge``, a default route."""
    octets = ipaddress.IPv4Address(ip).packed
    host = host_ifname or f"veth-{pod}"
    d.namespaces.append(Namespace(pod, "pod", addr=ip, node=node))
    d.veths.append(
        Veth(
            ns=pod,
            ifname="eth0",
            peer_ns=node,
            peer_ifname=host,
            mac=pod_mac(ip),
            peer_mac=lab_mac(0xAA, octets[2], octets[3]),
            mtu=mtu,
        )
    )
    d.ports.append(Port(node, host, bridge))
    d.addresses.append(Address(pod, "eth0", f"{ip}/{plen}"))
    if gateway:
        d.routes.append(Route(pod, "default", gateway=gateway))


def routed_pod(d: Draft, pod: str, node: str, ip: str, mtu: int | None) -> None:
    """A Calico workload: eth0 with a /32, default via 169.254.1.1 (answered by proxy ARP on
    the host side), and on the node a ``cali...`` veth with a /32 route and no address."""
    cali = cali_name(pod)
    d.namespaces.append(Namespace(pod, "pod", addr=ip, node=node))
    d.veths.append(Veth(pod, "eth0", node, cali, mac=pod_mac(ip), peer_mac=CALICO_MAC, mtu=mtu))
    d.addresses.append(Address(pod, "eth0", f"{ip}/32"))
    d.routes.append(Route(pod, "default", gateway="169.254.1.1", ifname="eth0", onlink=True))
    d.routes.append(Route(node, f"{ip}/32", ifname=cali, scope="link"))
    d.sysctls += [
        Sysctl(node, f"net.ipv4.conf.{cali}.proxy_arp", "1"),
        Sysctl(node, f"net.ipv4.neigh.{cali}.proxy_delay", "0"),
        Sysctl(node, f"net.ipv4.conf.{cali}.rp_filter", "1"),  # Felix's anti-spoofing
    ]


def vxlan_mesh(
    d: Draft,
    nodes: Sequence[int],
    ifname: str,
    vni: int,
    port: int,
    mac_kind: int,
    tunnel_ip: Callable[[int], str],
    subnet: Callable[[int], str],
    mtu: int,
    underlay: Callable[[int], str] = lambda n: "eth0",
) -> None:
    """A VXLAN device per node and, for every other node, the three static entries Flannel
    and Calico write: a route to its pod subnet via its tunnel address (onlink), a permanent
    neighbour for that address with its VXLAN MAC, an fdb entry sending that MAC to its
    underlay address."""
    for n in nodes:
        node = f"n{n}"
        d.vxlans.append(
            Vxlan(
                node,
                ifname,
                vni=vni,
                port=port,
                local=f"{UNDERLAY}.{n}",
                underlay=underlay(n),
                learning=False,
                mac=lab_mac(mac_kind, 0, n),
                mtu=mtu,
            )
        )
        d.addresses.append(Address(node, ifname, f"{tunnel_ip(n)}/32"))
        for m in nodes:
            if m == n:
                continue
            other_mac = lab_mac(mac_kind, 0, m)
            d.routes.append(
                Route(node, subnet(m), gateway=tunnel_ip(m), ifname=ifname, onlink=True)
            )
            d.neighbours.append(Neighbour(node, ifname, tunnel_ip(m), other_mac))
            d.fdb.append(Fdb(node, ifname, other_mac, f"{UNDERLAY}.{m}"))


def restore(ns: str, rules: str) -> Command:
    """An ``iptables-restore --noflush`` of ``rules`` in ``ns``."""
    return Command(ns, ("iptables-restore", "--noflush"), stdin=rules)
