"""Kernel tier: every lab that can come up here, traced end to end with ``hoptrace trace``.

One lab and one tracer per test: the traffic of every interesting pair (same node, cross node,
pod to Service, NodePort from the underlay) goes through a single tracing session, bounded
(``ping -c 1 -W 1``, TCP exchanges with 2 s timeouts), then each packet's hop chain is checked:
devices and hooks in order, encapsulation/decapsulation and NAT where the lab has them, and
the pods' namespace names. Then the lab goes down and nothing of it may remain: no namespace,
no daemon, no state directory.

Labs whose device the kernel lacks (calico-ipip, geneve, gre, ipvs, ipvlan) are checked to
fail ``up`` naming the feature, and skip their traffic test with that reason.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.tracing import chains_of, require_kernel, tracing
from tracer.chains import Chain, render
from tracer.errors import LabError
from tracer.hops import HopKind as H
from tracer.lab import LABS, Lab, get_lab, procs
from tracer.lab.build import cali_name
from tracer.tracefile import Trace

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

UNAVAILABLE_HERE = ("calico-ipip", "geneve", "gre", "ipvs", "ipvlan")
# (namespace short name, device, hop kind or None when the kind is not asserted)
Hop = tuple[str, str, H | None]


def ping(lab: Lab, src: str, dst: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(src, ["ping", "-c", "1", "-W", "1", *extra, dst], timeout=10)


def tcp(lab: Lab, src: str, ip: str, port: int) -> str:
    """Connect, send a byte, return what the server answered ('' on failure)."""
    code = (
        "import socket,sys\n"
        f"c=socket.create_connection(('{ip}',{port}),2); c.settimeout(2); c.sendall(b'x')\n"
        "sys.stdout.write(c.recv(100).decode())"
    )
    out = lab.exec(src, ["timeout", "5", "python3", "-c", code], timeout=10)
    return out.stdout.strip()


def flows(chain: Chain) -> list[tuple[str, str]]:
    return [
        (s.decoded.inner.src, s.decoded.inner.dst)
        for s in chain.steps
        if s.decoded is not None and s.decoded.inner is not None
    ]


def find(chains: Sequence[Chain], src: str, dst: str, first: bool = True) -> Chain:
    """The first chain whose packet starts (or, with first=False, ever is) src -> dst."""
    for c in chains:
        f = flows(c)
        if f and ((f[0] == (src, dst)) if first else ((src, dst) in f)):
            return c
    shown = "\n".join(render(c) for c in chains)
    raise AssertionError(f"no chain {src} -> {dst} among:\n{shown}")


def assert_path(lab: Lab, chain: Chain, expected: Sequence[Hop]) -> None:
    """Each expected hop appears, in this order (other hops may sit between)."""
    got = [(s.event.netns, s.event.ifname, s.hop.kind) for s in chain.steps]
    i = 0
    for short, dev, kind in expected:
        want_ns = lab.netns(short)
        while i < len(got) and not (
            got[i][0] == want_ns and got[i][1] == dev and kind in (None, got[i][2])
        ):
            i += 1
        assert i < len(got), f"{(short, dev, kind)} missing or out of order in:\n{render(chain)}"
        i += 1


def changes(chain: Chain) -> list[str]:
    return [s.change for s in chain.steps if s.change]


def assert_nothing_left(lab: Lab) -> None:
    assert lab.present() == []
    assert procs.running(lab.state_dir) == []
    assert not lab.state_dir.exists()


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def trace_lab(
    lab: Lab, tmp_path: Path, flt: str, traffic: Callable[[], None], *args: str
) -> list[Chain]:
    with tracing(tmp_path, flt, "--netns", ",".join(lab.namespaces()), *args) as run:
        traffic()
        time.sleep(0.3)
        trace: Trace = run.stop()
    assert trace.summary["lost"] == {}
    # seen once in CI (calico-routed): a run with no event at all; say what the tracer saw
    assert trace.events, (f"no events: summary {trace.summary}, netns "
                          f"{trace.header.get('netns')}, probes {trace.header.get('probes')}")
    return chains_of(trace)


def bridged_cross_node(src: str, dst: str, tunnel: str, n_src: str, n_dst: str) -> list[Hop]:
    """A cni0-bridge pod to a pod on another node through a tunnel device."""
    return [
        (src, "eth0", H.POD_TX),
        (n_src, f"veth-{src}", H.BRIDGE_IN),
        (n_src, "cni0", H.BRIDGE_UP),
        (n_src, tunnel, H.ENCAP),
        (n_src, "eth0", H.UNDERLAY_TX),
        ("net", f"port-{n_src}", H.BRIDGE_IN),
        ("net", f"port-{n_dst}", H.BRIDGE_FORWARD),
        (n_dst, "eth0", H.UNDERLAY_RX),
        (n_dst, tunnel, H.DECAP),
        (n_dst, "cni0", H.BRIDGE_TX),
        (n_dst, f"veth-{dst}", H.VETH_TX),
        (dst, "eth0", H.POD_RX),
    ]


SAME_NODE = [
    ("a1", "eth0", H.POD_TX),
    ("n1", "veth-a1", H.BRIDGE_IN),
    ("n1", "veth-a2", H.BRIDGE_FORWARD),
    ("a2", "eth0", H.POD_RX),
]


def check_flannel_vxlan(lab: Lab, tmp_path: Path) -> None:
    a1, a2, b1, c1 = (lab.addr(p) for p in ("a1", "a2", "b1", "c1"))

    def traffic() -> None:
        for src, dst in (("a1", a2), ("a1", b1), ("b1", c1), ("n2", a1)):
            assert ping(lab, src, dst).returncode == 0, (src, dst)

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    assert_path(lab, find(chains, a1, a2), SAME_NODE)
    cross = find(chains, a1, b1)
    assert_path(lab, cross, bridged_cross_node("a1", "b1", "flannel.1", "n1", "n2"))
    assert "encapsulated VXLAN vni 1 192.168.77.1>192.168.77.2" in changes(cross)
    assert "decapsulated" in changes(cross)
    assert cross.complete and not cross.dropped
    to_n3 = find(chains, b1, c1)
    assert_path(lab, to_n3, bridged_cross_node("b1", "c1", "flannel.1", "n2", "n3"))
    assert "encapsulated VXLAN vni 1 192.168.77.2>192.168.77.3" in changes(to_n3)
    # a node reaching a remote pod: source 10.244.2.0 (flannel.1's address), VXLAN
    node_to_pod = find(chains, "10.244.2.0", a1)
    assert_path(
        lab,
        node_to_pod,
        [("n2", "flannel.1", H.ENCAP), ("n1", "flannel.1", H.DECAP), ("a1", "eth0", H.POD_RX)],
    )


def check_flannel_host_gw(lab: Lab, tmp_path: Path) -> None:
    a1, a2, b1 = (lab.addr(p) for p in ("a1", "a2", "b1"))

    def traffic() -> None:
        for src, dst in (("a1", a2), ("a1", b1)):
            assert ping(lab, src, dst).returncode == 0, (src, dst)

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    assert_path(lab, find(chains, a1, a2), SAME_NODE)
    cross = find(chains, a1, b1)
    assert_path(
        lab,
        cross,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "veth-a1", H.BRIDGE_IN),
            ("n1", "cni0", H.BRIDGE_UP),
            ("n1", "eth0", H.UNDERLAY_TX),  # routed, not tunnelled: a veth to the switch
            ("net", "port-n1", H.BRIDGE_IN),
            ("n2", "eth0", H.UNDERLAY_RX),
            ("n2", "cni0", H.BRIDGE_TX),
            ("b1", "eth0", H.POD_RX),
        ],
    )
    assert not any(s.hop.kind in (H.ENCAP, H.DECAP) for s in cross.steps)
    assert not any("capsulated" in c for c in changes(cross))


def check_flannel_udp(lab: Lab, tmp_path: Path) -> None:
    a1, b1 = lab.addr("a1"), lab.addr("b1")

    def traffic() -> None:
        assert ping(lab, "a1", b1).returncode == 0

    # the kernel's parser sees through Flannel's UDP (8285): the filter is on the inner packet
    chains = trace_lab(lab, tmp_path, f"icmp and host {b1}", traffic)
    # The packet crosses user space (udpfwd reads it from flannel0 and sends it in UDP), so
    # the kernel sees three packets: into the TUN, the UDP carrier, out of the other TUN.
    into_tun = find(chains, a1, b1)
    assert_path(
        lab,
        into_tun,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "veth-a1", H.BRIDGE_IN),
            ("n1", "cni0", H.BRIDGE_UP),
            ("n1", "flannel0", H.ENCAP),
        ],
    )
    assert into_tun.last.event.ifname == "flannel0" and not into_tun.dropped
    carrier = next(
        c
        for c in chains
        if c.first.decoded and c.first.decoded.tunnels and c.first.decoded.inner.dst == b1
    )
    assert carrier.first.decoded.tunnels[0].kind == "flannel-udp"
    assert (carrier.first.decoded.outer.src, carrier.first.decoded.outer.dst) == (
        "192.168.77.1",
        "192.168.77.2",
    )
    assert_path(lab, carrier, [("n1", "eth0", H.UNDERLAY_TX), ("n2", "eth0", H.UNDERLAY_RX)])
    out_of_tun = next(
        c
        for c in chains
        if c.first.event.ifname == "flannel0" and c.first.event.netns == lab.netns("n2")
    )
    assert_path(
        lab,
        out_of_tun,
        [("n2", "flannel0", H.DECAP), ("n2", "cni0", H.BRIDGE_TX), ("b1", "eth0", H.POD_RX)],
    )


def check_calico(lab: Lab, tmp_path: Path, vxlan: bool) -> None:
    a1, a2, b1 = (lab.addr(p) for p in ("a1", "a2", "b1"))
    ca1, ca2, cb1 = (cali_name(p) for p in ("a1", "a2", "b1"))

    def traffic() -> None:
        for src, dst in (("a1", a2), ("a1", b1)):
            assert ping(lab, src, dst).returncode == 0, (src, dst)
        if vxlan:  # the path that needs rp_filter loose on n2
            assert ping(lab, "net", b1).returncode == 0

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    # a routed node has no bridge or tunnel: it is a node because it links 2+ namespaces
    same = find(chains, a1, a2)
    assert_path(
        lab,
        same,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", ca1, H.VETH_RX),
            ("n1", ca2, H.VETH_TX),
            ("a2", "eth0", H.POD_RX),
        ],
    )
    assert not any(s.event.netns == lab.netns("net") for s in same.steps)
    cross = find(chains, a1, b1)
    if vxlan:
        path: list[Hop] = [
            ("a1", "eth0", H.POD_TX),
            ("n1", ca1, None),
            ("n1", "vxlan.calico", H.ENCAP),
            ("n1", "eth0", H.UNDERLAY_TX),
            ("net", "port-n1", H.BRIDGE_IN),
            ("n2", "eth0", H.UNDERLAY_RX),
            ("n2", "vxlan.calico", H.DECAP),
            ("n2", cb1, None),
            ("b1", "eth0", H.POD_RX),
        ]
        assert "encapsulated VXLAN vni 4096 192.168.77.1>192.168.77.2" in changes(cross)
        edge = find(chains, "192.168.77.254", b1)
        assert_path(
            lab,
            edge,
            [
                ("net", "ul0", None),
                ("n1", "eth0", None),
                ("n1", "vxlan.calico", H.ENCAP),
                ("n2", "vxlan.calico", H.DECAP),
                ("b1", "eth0", H.POD_RX),
            ],
        )
        reply = find(chains, b1, "192.168.77.254")  # asymmetric: straight from n2
        assert not any(s.event.netns == lab.netns("n1") for s in reply.steps)
    else:
        path = [
            ("a1", "eth0", H.POD_TX),
            ("n1", ca1, None),
            ("n1", "eth0", None),
            ("net", "port-n1", H.BRIDGE_IN),
            ("net", "port-n2", H.BRIDGE_FORWARD),
            ("n2", "eth0", None),
            ("n2", cb1, None),
            ("b1", "eth0", H.POD_RX),
        ]
        assert not any("capsulated" in c for c in changes(cross))
    assert_path(lab, cross, path)


def check_weave(lab: Lab, tmp_path: Path) -> None:
    a1, a2, b1 = (lab.addr(p) for p in ("a1", "a2", "b1"))

    def traffic() -> None:
        for src, dst in (("a1", a2), ("a1", b1)):
            assert ping(lab, src, dst).returncode == 0, (src, dst)

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    assert_path(
        lab,
        find(chains, a1, a2),
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "vethwepl-a1", H.BRIDGE_IN),
            ("n1", "vethwepl-a2", H.BRIDGE_FORWARD),
            ("a2", "eth0", H.POD_RX),
        ],
    )
    cross = find(chains, a1, b1)
    # Weave's VXLAN device is a port of its bridge: the tunnel wins over the bridge port
    assert_path(
        lab,
        cross,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "vethwepl-a1", H.BRIDGE_IN),
            ("n1", "vxlan-6784", H.ENCAP),
            ("n1", "eth0", H.UNDERLAY_TX),
            ("n2", "eth0", H.UNDERLAY_RX),
            ("n2", "vxlan-6784", H.DECAP),
            ("n2", "vethwepl-b1", H.BRIDGE_FORWARD),
            ("b1", "eth0", H.POD_RX),
        ],
    )
    assert "encapsulated VXLAN vni 1 192.168.77.1>192.168.77.2" in changes(cross)
    assert "decapsulated" in changes(cross)


def check_macvlan(lab: Lab, tmp_path: Path) -> None:
    a1, a2, b1 = (lab.addr(p) for p in ("a1", "a2", "b1"))

    def traffic() -> None:
        for src, dst in (("a1", a2), ("a1", b1)):
            assert ping(lab, src, dst).returncode == 0, (src, dst)
        # a macvlan parent never hears its children: node n1 cannot reach its pod a1
        assert ping(lab, "n1", a1).returncode != 0

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    same = find(chains, a1, a2)
    assert_path(lab, same, [("a1", "eth0", H.POD_TX), ("n1", "eth0", None)])
    assert same.last.event.netns == lab.netns("a2")
    assert not any(s.event.netns == lab.netns("net") for s in same.steps)
    cross = find(chains, a1, b1)
    assert_path(
        lab,
        cross,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "eth0", None),
            ("net", "port-n1", H.BRIDGE_IN),
            ("net", "port-n2", H.BRIDGE_FORWARD),
            ("n2", "eth0", None),
        ],
    )
    assert cross.last.event.netns == lab.netns("b1") and not cross.dropped
    # no netfilter hook of either node sees macvlan traffic
    assert not any(
        s.hop.kind == H.NETFILTER and s.event.netns in (lab.netns("n1"), lab.netns("n2"))
        for s in cross.steps
    )


def check_kube_proxy(lab: Lab, tmp_path: Path) -> None:
    a1 = lab.addr("a1")
    answers: list[tuple[str, str]] = []

    def traffic() -> None:
        for _ in range(3):
            answers.append(("a1", tcp(lab, "a1", "10.96.0.10", 80)))
        answers.append(("net", tcp(lab, "net", lab.addr("n3"), 30080)))

    chains = trace_lab(lab, tmp_path, "tcp port 80 or tcp port 8080 or tcp port 30080", traffic)
    assert all(name in ("a2", "b1") for _, name in answers), answers
    syns = [
        c
        for c in chains
        if c.first.decoded
        and c.first.decoded.inner
        and c.first.decoded.inner.tcp_flags & 0x12 == 0x02
    ]
    to_svc = [c for c in syns if flows(c)[0] == (a1, "10.96.0.10")]
    assert len(to_svc) == 3, [render(c) for c in syns]
    for chain, (_, backend) in zip(to_svc, answers[:3], strict=True):
        ip = lab.addr(backend)
        nat = [x for x in changes(chain) if x.startswith("NAT ")]
        assert nat and nat[0].endswith(f"-> {a1}:{chain.first.decoded.inner.sport}>{ip}:8080")
        assert nat[0].startswith(f"NAT {a1}:")
        n1 = lab.netns("n1")
        dnat_at = next(s for s in chain.steps if s.change.startswith("NAT "))
        assert dnat_at.event.netns == n1
        if backend == "b1":
            assert_path(
                lab,
                chain,
                [
                    ("a1", "eth0", H.POD_TX),
                    ("n1", "cni0", H.BRIDGE_UP),
                    ("n1", "flannel.1", H.ENCAP),
                    ("n2", "flannel.1", H.DECAP),
                    ("b1", "eth0", H.POD_RX),
                ],
            )
        else:
            assert_path(
                lab,
                chain,
                # br_netfilter's DNAT to a pod on the same bridge: straight back out of
                # the bridge (br_nf_pre_routing_finish_bridge), never up to the IP stack
                [
                    ("a1", "eth0", H.POD_TX),
                    ("n1", "veth-a1", H.BRIDGE_IN),
                    ("n1", "veth-a2", None),
                    ("a2", "eth0", H.POD_RX),
                ],
            )
    # NodePort from the underlay: DNAT and MASQUERADE on n3, then VXLAN to the backend
    node_port = next(c for c in syns if flows(c)[0] == ("192.168.77.254", lab.addr("n3")))
    backend = answers[3][1]
    nat = [x for x in changes(node_port) if x.startswith("NAT ")]
    assert any(x.endswith(f"{lab.addr(backend)}:8080") for x in nat), nat
    assert_path(
        lab,
        node_port,
        [("n3", "eth0", None), ("n3", "flannel.1", H.ENCAP), (backend, "eth0", H.POD_RX)],
    )
    # after MASQUERADE the backend sees n3's flannel.1 address, not the client
    last = node_port.last.decoded.inner
    assert (last.src, last.dst) == ("10.244.3.0", lab.addr(backend))


def check_bridge(lab: Lab, tmp_path: Path) -> None:
    c1, c2, ext = lab.addr("c1"), lab.addr("c2"), lab.addr("ext")

    def traffic() -> None:
        for dst in (c2, ext):
            assert ping(lab, "c1", dst).returncode == 0, dst

    chains = trace_lab(lab, tmp_path, "icmp", traffic)
    assert_path(
        lab,
        find(chains, c1, c2),
        [
            ("c1", "eth0", H.POD_TX),
            ("host", "veth-c1", H.BRIDGE_IN),
            ("host", "veth-c2", H.BRIDGE_FORWARD),
            ("c2", "eth0", H.POD_RX),
        ],
    )
    out = find(chains, c1, ext)
    assert_path(
        lab,
        out,
        [
            ("c1", "eth0", H.POD_TX),
            ("host", "veth-c1", H.BRIDGE_IN),
            ("host", "docker0", H.BRIDGE_UP),
            ("host", "up0", None),
            ("ext", "eth0", None),
        ],
    )
    assert any(x.startswith(f"NAT {c1}>{ext} -> 198.51.100.1>{ext}") for x in changes(out))


CHECKS: dict[str, Callable[[Lab, Path], None]] = {
    "bridge": check_bridge,
    "flannel-vxlan": check_flannel_vxlan,
    "flannel-host-gw": check_flannel_host_gw,
    "flannel-udp": check_flannel_udp,
    "calico-routed": lambda lab, p: check_calico(lab, p, vxlan=False),
    "calico-vxlan": lambda lab, p: check_calico(lab, p, vxlan=True),
    "weave-vxlan": check_weave,
    "macvlan": check_macvlan,
    "kube-proxy": check_kube_proxy,
}


def test_every_lab_has_a_check_or_is_unavailable_here() -> None:
    assert set(LABS) == set(CHECKS) | set(UNAVAILABLE_HERE) | {"two-node-vxlan"}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_lab_traced_end_to_end(name: str, lab_prefix: str, tmp_path: Path) -> None:
    lab = get_lab(name, prefix=lab_prefix)
    start = time.monotonic()
    lab.up()
    took = time.monotonic() - start
    try:
        assert took < 5, f"lab up took {took:.2f}s"
        CHECKS[name](lab, tmp_path)
    finally:
        lab.down()
    assert_nothing_left(lab)


@pytest.mark.parametrize("name", UNAVAILABLE_HERE)
def test_lab_needing_a_missing_feature(name: str, lab_prefix: str) -> None:
    lab = get_lab(name, prefix=lab_prefix)
    lacking = lab.missing_features()
    if not lacking:
        pytest.skip(f"this kernel has everything {name} needs: run its traffic test in a VM")
    with pytest.raises(LabError, match=f"lab {name} needs kernel features this kernel lacks"):
        lab.up()
    assert lab.present() == [] and not lab.state_dir.exists()
    pytest.skip(f"{name} needs {', '.join(lacking)}, which this kernel lacks (kernel-facts.md)")
