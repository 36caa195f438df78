"""Names for numbers, read from real namespaces: netns names, devices and veth peers."""

from __future__ import annotations

from tracer.lab import Lab
from tracer.names import Topology, resolve


def test_veth_peers_are_named_across_namespaces(vxlan_lab: Lab) -> None:
    lab = vxlan_lab
    topo = Topology.read(resolve(",".join(lab.namespaces())))
    n1, n2, a1, b1 = (lab.netns(x) for x in ("n1", "n2", "a1", "b1"))

    def peer_of(ns: str, ifname: str) -> tuple[str, str]:
        dev = next(d for d in topo.devs[ns].values() if d.name == ifname)
        found = topo.peer(ns, dev.ifindex)
        assert found, f"{ns}/{ifname} has no peer"
        return found[0], found[1].name

    # every pod's eth0 is the same interface index in its own namespace: only the netns ids
    # tell the pairs apart
    assert peer_of(a1, "eth0") == (n1, "veth-a1")
    assert peer_of(n1, "veth-a1") == (a1, "eth0")
    assert peer_of(b1, "eth0") == (n2, "veth-b1")
    assert peer_of(n1, "u1") == (n2, "u2")
    # not a veth: no peer
    cni0 = next(d for d in topo.devs[n1].values() if d.name == "cni0")
    assert topo.peer(n1, cni0.ifindex) is None
    # and the trace file's copy of the topology keeps them
    assert Topology.from_json(topo.to_json()).devs == topo.devs


def test_a_peer_outside_the_traced_namespaces_is_left_unnamed(vxlan_lab: Lab) -> None:
    lab = vxlan_lab
    topo = Topology.read(resolve(lab.netns("n1")))
    veth = next(d for d in topo.devs[lab.netns("n1")].values() if d.name == "veth-a1")
    assert topo.peer(lab.netns("n1"), veth.ifindex) is None
