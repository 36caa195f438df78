"""The labs hoptrace can build, as data: :data:`LABS` maps each name to its builder.

Each builder returns a :class:`~tracer.lab.spec.Topology`. The builders live by family
(:mod:`~tracer.lab.flannel`, :mod:`~tracer.lab.calico`, :mod:`~tracer.lab.kubeproxy`,
:mod:`~tracer.lab.others`) and share the pieces in :mod:`~tracer.lab.build`; the Docker
bridge lab is here. To add a lab, write one more builder and register it: the applier
needs no change.
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.lab.build import Draft, lab_mac, pod_mac, pod_on_bridge, restore
from tracer.lab.calico import calico_ipip, calico_routed, calico_vxlan
from tracer.lab.flannel import (
    VXLAN_MTU,
    VXLAN_PORT,
    VXLAN_VNI,
    flannel_host_gw,
    flannel_udp,
    flannel_vxlan,
    two_node_vxlan,
)
from tracer.lab.kubeproxy import kube_proxy, kube_proxy_ipvs
from tracer.lab.others import geneve, gre, ipvlan, macvlan, weave_vxlan
from tracer.lab.spec import Address, Bridge, FaultTargets, Namespace, Route, Topology, Veth

__all__ = ["LABS", "VXLAN_MTU", "VXLAN_PORT", "VXLAN_VNI", "lab_mac", "pod_mac"]

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
    d = Draft()
    d.namespaces += [
        Namespace("host", "node", addr="198.51.100.1"),
        Namespace("ext", "node", addr="198.51.100.2"),
    ]
    d.veths.append(
        Veth("host", "up0", "ext", "eth0", mac=lab_mac(0x51, 0, 1), peer_mac=lab_mac(0x51, 0, 2))
    )
    d.bridges.append(Bridge("host", "docker0", mac=lab_mac(0xD0, 0, 1)))
    d.addresses += [
        Address("host", "docker0", "172.17.0.1/16"),
        Address("host", "up0", "198.51.100.1/24"),
        Address("ext", "eth0", "198.51.100.2/24"),
    ]
    d.routes.append(Route("host", "default", gateway="198.51.100.2"))
    for i, ctr in enumerate(("c1", "c2"), start=2):
        pod_on_bridge(d, ctr, "host", f"172.17.0.{i}", 16, "172.17.0.1", "docker0", None)
    d.node_sysctls("host", bridge_nf=False)
    d.commands.append(restore("host", _docker_rules()))
    return d.freeze(
        "bridge",
        "Docker bridge: c1 c2 on docker0, NAT out to ext",
        BRIDGE_PICTURE,
        faults=FaultTargets(pair=("c1", "c2")),
    )


#: Lab name -> builder. The CLI and :func:`tracer.lab.get_lab` read this.
LABS: dict[str, Callable[[], Topology]] = {
    "bridge": bridge,
    "two-node-vxlan": two_node_vxlan,
    "flannel-vxlan": flannel_vxlan,
    "flannel-host-gw": flannel_host_gw,
    "flannel-udp": flannel_udp,
    "calico-routed": calico_routed,
    "calico-vxlan": calico_vxlan,
    "weave-vxlan": weave_vxlan,
    "macvlan": macvlan,
    "kube-proxy": kube_proxy,
    # Defined here, but need kernel features this development kernel lacks (kernel-facts.md):
    "calico-ipip": calico_ipip,
    "geneve": geneve,
    "gre": gre,
    "ipvs": kube_proxy_ipvs,
    "ipvlan": ipvlan,
}
