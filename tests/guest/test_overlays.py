"""Kernel tier, for the VM matrix: the overlays the development kernel lacks, traced live.

calico-ipip (``tunl0``), geneve, gre (keyed), ipvs (kube-proxy's IPVS mode) and ipvlan come up
on stock kernels (their modules autoload). Per lab: a bounded ping (or, for IPVS, bounded TCP
connections to the ClusterIP) between pods across the overlay under a live ``hoptrace trace``,
then the hop chain: the tunnel device encapsulating on one node and decapsulating on the other,
the outer header (type, underlay addresses, GRE key, Geneve VNI) on the underlay, and the inner
flow the same on both sides; for IPVS the NAT from the virtual IP to the real server and back.
For the tunnels, a second check loads the probes in this process on the receiving node only,
so the first point a packet reaches carries it encapsulated: the filter on the inner hosts must
match there, which only the in-kernel parser (probes/hoptrace.bpf.c) going through the tunnel
header can do.

On a kernel without the device (the development machine) each test skips naming the missing
feature; inside a VM guest (KT_GUEST=1, a stock Debian kernel) that is a failure.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_lab_paths import Hop, assert_path, bridged_cross_node, find, flows
from tests.tracing import IN_GUEST, chains_of, require_kernel, tracing
from tracer.chains import Chain, decode_event, render
from tracer.errors import LabError
from tracer.hops import HopKind as H
from tracer.lab import Lab
from tracer.lab.build import UNDERLAY, cali_name
from tracer.lab.kubeproxy import SERVICE_IP, SERVICE_PORT, TARGET_PORT
from tracer.lab.others import GENEVE_VNI, GRE_KEY

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def overlay_lab(make_lab: Callable[..., Lab], name: str) -> Lab:
    """Lab ``name`` up; without its kernel features: skip here, fail in a stock-kernel guest
    (``up`` names the missing features before it builds anything)."""
    try:
        return make_lab(name)
    except LabError as exc:
        if "needs kernel features this kernel lacks" not in str(exc):
            raise
        if IN_GUEST:
            pytest.fail(f"a stock kernel has these as modules: {exc}")
        pytest.skip(str(exc))


def ping(lab: Lab, src: str, dst: str) -> None:
    r = lab.exec(src, ["ping", "-c", "1", "-W", "3", dst], timeout=15)
    assert r.returncode == 0, f"{src} -> {dst}: {r.stdout}{r.stderr}"


def trace(lab: Lab, tmp_path: Path, flt: str, traffic: Callable[[], None]) -> list[Chain]:
    """``hoptrace trace FLT`` over every namespace of the lab while ``traffic`` runs."""
    with tracing(tmp_path, flt, "--netns", ",".join(lab.namespaces())) as run:
        traffic()
        time.sleep(0.5)
        got = run.stop(timeout=60)
    assert got.summary["lost"] == {}
    return chains_of(got)


@dataclass(frozen=True)
class Tunnelled:
    """What one tunnel lab shows: its device, the outer header's kind and id, the path."""

    lab: str
    device: str
    kind: str  # decoders' Tunnel.kind
    key: int | None = None  # GRE key
    vni: int | None = None  # Geneve VNI

    def path(self) -> list[Hop]:
        if self.lab == "calico-ipip":  # Calico: routed cali veths, no bridge
            return [
                ("a1", "eth0", H.POD_TX),
                ("n1", cali_name("a1"), None),
                ("n1", "tunl0", H.ENCAP),
                ("n1", "eth0", H.UNDERLAY_TX),
                ("net", "port-n1", H.BRIDGE_IN),
                ("n2", "eth0", H.UNDERLAY_RX),
                ("n2", "tunl0", H.DECAP),
                ("n2", cali_name("b1"), None),
                ("b1", "eth0", H.POD_RX),
            ]
        return bridged_cross_node("a1", "b1", self.device, "n1", "n2")


TUNNELS = [
    Tunnelled("calico-ipip", "tunl0", "ipip"),
    Tunnelled("geneve", "genev_sys_6081", "geneve", vni=GENEVE_VNI),
    Tunnelled("gre", "gre1", "gre", key=GRE_KEY),
]


def ends_in(chain: Chain) -> str:
    """The namespace of the chain's last event that has one (a socket's free has no device)."""
    return next((s.event.netns for s in reversed(chain.steps) if s.event.ifname), "")


def step_at(chain: Chain, netns: str, device: str, kind: H) -> int:
    for i, s in enumerate(chain.steps):
        if (s.event.netns, s.event.ifname, s.hop.kind) == (netns, device, kind):
            return i
    raise AssertionError(f"no {kind} on {device} in {netns}:\n{render(chain)}")


def check_tunnel(t: Tunnelled, lab: Lab, chain: Chain, a1: str, b1: str) -> None:
    """Encapsulation on n1's tunnel device, the outer header on the underlay, decapsulation on
    n2's, and the inner packet (flow and ICMP identity) the same before and after."""
    assert_path(lab, chain, t.path())
    n1, n2, net = lab.netns("n1"), lab.netns("n2"), lab.netns("net")
    enc = step_at(chain, n1, t.device, H.ENCAP)
    dec = step_at(chain, n2, t.device, H.DECAP)
    assert enc < dec
    added = [s for s in chain.steps[enc:dec] if s.change.startswith("encapsulated")]
    assert added and added[0].event.netns == n1, render(chain)
    assert added[0].change.startswith(f"encapsulated {t.kind.upper()}"), added[0].change
    assert f"{UNDERLAY}.1>{UNDERLAY}.2" in added[0].change
    assert any(s.change == "decapsulated" for s in chain.steps[dec:]), render(chain)
    # on the wire (the switch's port): outer header, tunnel ids, the inner flow
    wire = [s for s in chain.steps if s.event.netns == net and s.decoded and s.decoded.tunnels]
    assert wire, f"the underlay switch never saw the packet encapsulated:\n{render(chain)}"
    outer = wire[0].decoded
    assert outer is not None and outer.outer is not None and outer.inner is not None
    tun = outer.tunnels[0]
    assert (tun.kind, tun.src, tun.dst) == (t.kind, f"{UNDERLAY}.1", f"{UNDERLAY}.2"), tun
    assert tun.key == t.key, tun
    assert tun.vni == t.vni, tun
    if t.kind == "geneve":
        assert tun.dport == 6081, tun
    assert (outer.outer.src, outer.outer.dst) == (f"{UNDERLAY}.1", f"{UNDERLAY}.2")
    # the same inner packet on both sides of the tunnel
    before = chain.steps[enc].decoded
    after = chain.steps[dec].decoded
    assert before is not None and before.inner is not None and not before.tunnels
    assert after is not None and after.inner is not None and not after.tunnels
    for d in (before, outer, after):
        assert d.inner is not None
        assert (d.inner.src, d.inner.dst, d.inner.proto) == (a1, b1, 1), d.summary()
        assert d.inner.identity() == before.inner.identity(), d.summary()
    assert ends_in(chain) == lab.netns("b1") and not chain.dropped, render(chain)


def first_seen_on_receiver(lab: Lab, a1: str, b1: str) -> tuple[str, str, object]:
    """Probes loaded in this process, tracing node n2 only, filter on the inner hosts: the
    first event of the packet is n2's underlay receive, still encapsulated, so matching it
    needs the in-kernel parser to look through the tunnel header."""
    from tracer.catalogue import CATALOGUE
    from tracer.event import Namer
    from tracer.filter import compile_filter
    from tracer.loader import ProbeOptions, Probes
    from tracer.names import resolve

    opts = ProbeOptions(
        filter=compile_filter(f"icmp and src host {a1} and dst host {b1}"),
        netns=resolve(lab.netns("n2")),
        netns_all=False,
    )
    recs = []
    with Probes(opts) as probes:
        ping(lab, "a1", b1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            recs.append(probes.read(50))
        namer = Namer("n", probes.probe_ids, {p.enum: p.name for p in CATALOGUE})
        events = sorted((e for r in recs for e in namer.events(r)), key=lambda e: e.ts_ns)
    assert events, "the filter on the inner hosts matched nothing on the receiving node"
    first = events[0]
    return first.ifname, first.probe, decode_event(first)


@pytest.mark.parametrize("t", TUNNELS, ids=[t.lab for t in TUNNELS])
def test_tunnel_traced_end_to_end(
    t: Tunnelled,
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    lab = overlay_lab(make_lab, t.lab)
    a1, a2, b1 = lab.addr("a1"), lab.addr("a2"), lab.addr("b1")
    ping(lab, "a1", b1)  # neighbours settle before tracing
    ping(lab, "a1", a2)

    def traffic() -> None:
        ping(lab, "a1", b1)
        ping(lab, "a1", a2)

    chains = trace(lab, tmp_path, f"icmp and src host {a1}", traffic)
    cross = find(chains, a1, b1)
    record_property("chain", render(cross))  # kept per kernel in the VM tier's JUnit XML
    check_tunnel(t, lab, cross, a1, b1)
    # same node: never encapsulated, never on the underlay
    same = find(chains, a1, a2)
    assert not any(s.decoded and s.decoded.tunnels for s in same.steps), render(same)
    assert not any(s.event.netns == lab.netns("net") for s in same.steps), render(same)

    ifname, probe, decoded = first_seen_on_receiver(lab, a1, b1)
    assert ifname == "eth0", (ifname, probe)
    assert decoded is not None and decoded.tunnels, decoded  # type: ignore[attr-defined]
    assert decoded.tunnels[0].kind == t.kind  # type: ignore[attr-defined]
    assert (decoded.inner.src, decoded.inner.dst) == (a1, b1)  # type: ignore[attr-defined]


def test_ipvlan_pod_to_pod(
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """ipvlan L2: pods share their node's MAC; across nodes the packet leaves through the
    parent (n1's eth0) onto the underlay switch and is handed by n2's eth0 to pod b1; on one
    node the ipvlan driver delivers it straight to the other pod, never through the parent's
    transmit or the switch. No netfilter hook of a node sees it."""
    lab = overlay_lab(make_lab, "ipvlan")
    a1, a2, b1 = lab.addr("a1"), lab.addr("a2"), lab.addr("b1")
    ping(lab, "a1", b1)
    ping(lab, "a1", a2)

    def traffic() -> None:
        ping(lab, "a1", b1)
        ping(lab, "a1", a2)

    chains = trace(lab, tmp_path, f"icmp and src host {a1}", traffic)
    cross = find(chains, a1, b1)
    same = find(chains, a1, a2)
    record_property("chain", render(cross))
    record_property("same_node", render(same))
    assert_path(
        lab,
        cross,
        [
            ("a1", "eth0", H.POD_TX),
            ("n1", "eth0", None),
            ("net", "port-n1", H.BRIDGE_IN),
            ("net", "port-n2", H.BRIDGE_FORWARD),
            ("n2", "eth0", None),
            ("b1", "eth0", None),
        ],
    )
    assert ends_in(cross) == lab.netns("b1") and not cross.dropped, render(cross)
    nodes = (lab.netns("n1"), lab.netns("n2"))
    assert not any(s.hop.kind == H.NETFILTER and s.event.netns in nodes for s in cross.steps)
    assert ends_in(same) == lab.netns("a2") and not same.dropped, render(same)
    assert not any(s.event.netns in (lab.netns("net"), *nodes) for s in same.steps), render(same)


def tcp(lab: Lab, src: str, ip: str, port: int) -> str:
    """Connect, send a byte, return what the server answered ('' on failure); bounded."""
    code = (
        "import socket,sys\n"
        f"c=socket.create_connection(('{ip}',{port}),5); c.settimeout(5); c.sendall(b'x')\n"
        "sys.stdout.write(c.recv(100).decode())"
    )
    out = lab.exec(src, ["timeout", "15", "python3", "-c", code], timeout=20)
    return out.stdout.strip()


def ipvs_services(lab: Lab, node: str) -> dict[tuple[str, int], list[tuple[str, int]]]:
    """IPVS's table in ``node``, read back over generic netlink (what ``ipvsadm -Ln`` shows)."""
    from pyroute2 import IPVS, IPVSDest, IPVSService

    out: dict[tuple[str, int], list[tuple[str, int]]] = {}
    with IPVS(netns=lab.netns(node), flags=0) as ipvs:
        for msg in ipvs.service("dump"):
            svc = IPVSService.from_message(msg)
            reals = [IPVSDest.from_message(d) for d in ipvs.dest("dump", service=svc)]
            out[(svc["addr"], svc["port"])] = sorted((d["addr"], d["port"]) for d in reals)
    return out


def syn_chains(chains: Sequence[Chain], src: str, dst: str, flags: int) -> list[Chain]:
    """Chains whose first packet is a TCP segment src -> dst with exactly SYN/ACK ``flags``."""
    return [
        c
        for c in chains
        if c.first.decoded
        and c.first.decoded.inner
        and c.first.decoded.inner.proto == socket.IPPROTO_TCP
        and c.first.decoded.inner.tcp_flags & 0x12 == flags
        and flows(c)[0] == (src, dst)
    ]


def test_ipvs_cluster_ip_nat(
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """kube-proxy's IPVS mode: the ClusterIP is local to the node (on kube-ipvs0), IPVS takes
    the SYN at LOCAL_IN and sends it on NATed to a real server (round robin: one connection
    to each backend); the backend's SYN-ACK is NATed back to the ClusterIP on the client's
    node. The chains show each tuple before and after."""
    lab = overlay_lab(make_lab, "ipvs")
    a1 = lab.addr("a1")
    vip = (SERVICE_IP, SERVICE_PORT)
    reals = sorted((lab.addr(p), TARGET_PORT) for p in ("a2", "b1"))
    assert ipvs_services(lab, "n1")[vip] == reals
    answers: list[str] = []

    def traffic() -> None:
        answers.extend(tcp(lab, "a1", SERVICE_IP, SERVICE_PORT) for _ in range(2))

    chains = trace(lab, tmp_path, f"tcp port {SERVICE_PORT} or tcp port {TARGET_PORT}", traffic)
    assert sorted(answers) == ["a2", "b1"], answers  # rr: each backend once
    n1 = lab.netns("n1")
    syns = syn_chains(chains, a1, SERVICE_IP, 0x02)
    assert len(syns) == 2, [render(c) for c in chains]
    seen = set()
    for chain in syns:
        sport = chain.first.decoded.inner.sport  # type: ignore[union-attr]
        nat_i = next(i for i, s in enumerate(chain.steps) if s.change.startswith("NAT "))
        nat = chain.steps[nat_i]
        backend = nat.decoded.inner.dst  # type: ignore[union-attr]
        seen.add(backend)
        assert nat.change == (
            f"NAT {a1}:{sport}>{SERVICE_IP}:{SERVICE_PORT} -> {a1}:{sport}>{backend}:{TARGET_PORT}"
        ), render(chain)
        assert nat.event.netns == n1, render(chain)
        # the VIP is local (kube-ipvs0): the SYN reached n1's LOCAL_IN hook, where IPVS sits
        local_in = [
            s
            for s in chain.steps[:nat_i]
            if s.event.netns == n1 and s.event.nf_hook == "LOCAL_IN" and s.hop.kind == H.NETFILTER
        ]
        assert local_in, render(chain)
        pod = "a2" if backend == lab.addr("a2") else "b1"
        record_property(f"syn_{pod}", render(chain))
        assert ends_in(chain) == lab.netns(pod) and not chain.dropped, render(chain)
        if pod == "b1":  # to the other node over flannel's VXLAN, NATed before encapsulation
            assert_path(
                lab,
                chain,
                [
                    ("a1", "eth0", H.POD_TX),
                    ("n1", "flannel.1", H.ENCAP),
                    ("n2", "flannel.1", H.DECAP),
                    ("b1", "eth0", H.POD_RX),
                ],
            )
            enc = step_at(chain, n1, "flannel.1", H.ENCAP)
            assert nat_i <= enc, render(chain)
        # the SYN-ACK: from the real server, NATed back to the ClusterIP on n1
        back = syn_chains(chains, backend, a1, 0x12)
        assert back, [render(c) for c in chains]
        record_property(f"synack_{pod}", render(back[0]))
        unnat = [s for s in back[0].steps if s.change.startswith("NAT ")]
        assert unnat and unnat[0].change == (
            f"NAT {backend}:{TARGET_PORT}>{a1}:{sport} -> "
            f"{SERVICE_IP}:{SERVICE_PORT}>{a1}:{sport}"
        ), render(back[0])
        assert unnat[0].event.netns == n1
        assert ends_in(back[0]) == lab.netns("a1"), render(back[0])
    assert seen == {lab.addr("a2"), lab.addr("b1")}
