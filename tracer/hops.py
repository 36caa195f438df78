"""The hop vocabulary: what each event means on a packet's path, in one set of names.

Every consumer (trace text, report, TUI, docs/hops.md) names hops with :class:`HopKind`.
:func:`classify` derives a hop from an event, the devices of its namespace, the decoded headers
and the previous event of the same packet. Probe points this kernel cannot observe directly
(``ip_rcv``, the bridge functions: see tracer/catalogue.py) are inferred here and marked so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from decoders import Decoded
from tracer.catalogue import NF_TABLE_POINTS
from tracer.event import Event
from tracer.names import Topology


class HopKind(StrEnum):
    """Hop names, with what each means (docs/hops.md is this table)."""

    POD_TX = "pod tx"  # a pod's interface (eth0) transmits
    POD_RX = "pod rx"  # a pod's interface receives
    VETH_RX = "veth rx"  # node-side veth of a pod receives from the pod
    VETH_TX = "veth tx"  # node-side veth transmits towards the pod
    BRIDGE_IN = "bridge in"  # a bridge port receives a frame (br_handle_frame)
    BRIDGE_FORWARD = "bridge forward"  # the bridge sends the frame out of another port (br_forward)
    BRIDGE_UP = "bridge up"  # the bridge passes the frame to the node's IP stack (br_pass_frame_up)
    BRIDGE_TX = "bridge tx"  # the node's IP stack sends through the bridge device
    IP_RCV = "ip_rcv"  # the IPv4 stack receives the packet
    NETFILTER = "netfilter"  # a netfilter hook (PRE_ROUTING, LOCAL_IN, FORWARD, ...)
    NETFILTER_OUT = "netfilter accept"  # the packet left a hook accepted (last priority)
    NETFILTER_VERDICT = "netfilter verdict"  # a table/base chain decided (DROP, QUEUE, ...)
    ENCAP = "encap"  # a tunnel device (VXLAN, Geneve, ...) takes the packet in to encapsulate
    DECAP = "decap"  # a tunnel device hands up the decapsulated packet
    UNDERLAY_TX = "underlay tx"  # the packet leaves the node on its underlay (tunnelled or routed)
    UNDERLAY_RX = "underlay rx"  # the packet arrives at the node from the underlay
    DEV_TX = "tx"  # any other transmit
    DEV_RX = "rx"  # any other receive
    DROP = "drop"  # freed as dropped, with the kernel's reason
    FREED = "freed"  # freed after normal use: delivered, consumed, or copied
    FUNCTION = "function"  # --probes all-skb: a kernel function the packet passed (named)


TUNNEL_KINDS = {"vxlan", "geneve", "ipip", "gre", "gretap", "ip6tnl", "sit", "tun"}


@dataclass(frozen=True, slots=True)
class Hop:
    kind: HopKind
    label: str  # short text for the point column: "tx", "nf:FWD", "DROP", ...
    inferred: str = ""  # the catalogue point this hop stands for when it is inferred


NF_SHORT = {
    "PRE_ROUTING": "PRE",
    "LOCAL_IN": "IN",
    "FORWARD": "FWD",
    "LOCAL_OUT": "OUT",
    "POST_ROUTING": "POST",
}


#: Drop reasons that are normal end-of-life, not failures (docs/report.md).
BENIGN_REASONS = frozenset({"SKB_CONSUMED", "QUEUE_PURGE", "SOCKET_CLOSE"})


def is_benign(reason: str, proto: int, icmp_type: int) -> bool:
    """A kfree_skb that is not a failure: see :data:`BENIGN_REASONS`; and an ICMP echo reply
    freed with NO_SOCKET after its delivery to the ping socket's clone."""
    if reason in BENIGN_REASONS:
        return True
    return reason == "NO_SOCKET" and proto in (1, 58) and icmp_type in (0, 129)


def classify(ev: Event, topo: Topology, dec: Decoded | None, prev: Event | None) -> Hop:
    """The hop ``ev`` stands for; ``prev`` is the packet's previous device (rx/tx) event."""
    if ev.probe == "kfree_skb":
        f = dec.inner if dec is not None else None
        if is_benign(ev.drop_reason, f.proto if f else 0, f.icmp_type if f else -1):
            return Hop(HopKind.FREED, "freed")
        return Hop(HopKind.DROP, "DROP")
    if ev.probe == "consume_skb":
        return Hop(HopKind.FREED, "freed")
    if ev.probe == "func":
        return Hop(HopKind.FUNCTION, ev.func or "function")
    if ev.probe in NF_TABLE_POINTS:  # ipt_do_table, nft_do_chain, ...: event.nf_table/nf_chain
        v6 = "6" if ev.nf_pf == "ipv6" else ""
        return Hop(HopKind.NETFILTER_VERDICT, f"nf{v6}:{NF_SHORT.get(ev.nf_hook, ev.nf_hook)}")
    if ev.probe in ("nf_hook_first", "nf_hook_last"):
        hook = NF_SHORT.get(ev.nf_hook, ev.nf_hook)
        v6 = "6" if ev.nf_pf == "ipv6" else ""
        if ev.probe == "nf_hook_last":
            return Hop(HopKind.NETFILTER_OUT, f"nf{v6}:{hook}<")
        if ev.nf_hook == "PRE_ROUTING" and ev.nf_pf == "ipv4" and not _bridged(topo, ev):
            return Hop(HopKind.NETFILTER, f"nf{v6}:{hook}", inferred="ip_rcv")
        return Hop(HopKind.NETFILTER, f"nf{v6}:{hook}")
    for point, kind in (
        ("ip_rcv", HopKind.IP_RCV),
        ("br_handle_frame", HopKind.BRIDGE_IN),
        ("br_forward", HopKind.BRIDGE_FORWARD),
        ("br_pass_frame_up", HopKind.BRIDGE_UP),
    ):
        if ev.probe == point:  # a real probe (fentry/kprobe) where the kernel allows it
            return Hop(kind, point)

    rx = ev.probe == "netif_receive_skb"
    dev = topo.device(ev.netns, ev.ifindex)
    kind = dev.kind if dev else ""
    tunnelled = bool(dec and dec.tunnels)
    if kind in TUNNEL_KINDS:  # before the bridge-port case: Weave's VXLAN device is a port
        return Hop(HopKind.DECAP, "rx") if rx else Hop(HopKind.ENCAP, "tx")
    if kind == "bridge":
        return (
            Hop(HopKind.BRIDGE_UP, "rx", "br_pass_frame_up") if rx else Hop(HopKind.BRIDGE_TX, "tx")
        )
    if dev and dev.master and topo_kind(topo, ev.netns, dev.master) == "bridge":
        if rx:
            return Hop(HopKind.BRIDGE_IN, "rx", "br_handle_frame")
        if prev and prev.netns == ev.netns and prev.probe == "netif_receive_skb":
            pdev = topo.device(prev.netns, prev.ifindex)
            if pdev and pdev.master == dev.master and pdev.ifindex != dev.ifindex:
                return Hop(HopKind.BRIDGE_FORWARD, "tx", "br_forward")
        return Hop(HopKind.VETH_TX, "tx")
    if tunnelled:
        return Hop(HopKind.UNDERLAY_RX, "rx") if rx else Hop(HopKind.UNDERLAY_TX, "tx")
    if topo.role(ev.netns) == "pod":
        return Hop(HopKind.POD_RX, "rx") if rx else Hop(HopKind.POD_TX, "tx")
    if kind == "veth":
        peer = topo.peer(ev.netns, ev.ifindex)
        if peer and topo.role(peer[0]) == "node":  # node to node (or switch): the underlay
            return Hop(HopKind.UNDERLAY_RX, "rx") if rx else Hop(HopKind.UNDERLAY_TX, "tx")
        return Hop(HopKind.VETH_RX, "rx") if rx else Hop(HopKind.VETH_TX, "tx")
    return Hop(HopKind.DEV_RX, "rx") if rx else Hop(HopKind.DEV_TX, "tx")


def topo_kind(topo: Topology, netns: str, ifindex: int) -> str:
    dev = topo.device(netns, ifindex)
    return dev.kind if dev else ""


def _bridged(topo: Topology, ev: Event) -> bool:
    """br_netfilter runs IPv4 PRE_ROUTING for bridged frames too: that is not ip_rcv."""
    d = topo.device(ev.netns, ev.ifindex)
    if d is None:
        return False
    return d.kind == "bridge" or bool(d.master and topo_kind(topo, ev.netns, d.master) == "bridge")
