"""Kernel tier: the two-node lab traced once per node (two tracers, two files), then
correlated and reported: flows across both nodes, clock offset, DNAT, and each diagnosis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.tracing import require_kernel, tracing
from tracer.correlate import Traces, load
from tracer.hops import HopKind
from tracer.lab import Lab
from tracer.report import build

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
VIP = "10.96.0.10"  # inside the lab only: routed to n1 by a1's default route, DNATed there


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def node_netns(lab: Lab, node: str) -> str:
    pods = [ns.short for ns in lab.topology.namespaces if ns.node == node]
    return ",".join(lab.netns(s) for s in [node, *pods])


def trace_nodes(lab: Lab, tmp_path: Path, flt: str, action: Callable[[], None]) -> list[Path]:
    """Trace n1's and n2's namespaces with two tracers at once (``--node n1``/``n2``)."""
    out = []
    with ExitStack() as stack:
        runs = []
        for node in ("n1", "n2"):
            d = tmp_path / node
            d.mkdir()
            runs.append(stack.enter_context(tracing(
                d, flt, "--netns", node_netns(lab, node), "--node", node)))
        action()
        time.sleep(0.3)
        for r in runs:
            r.stop()
            out.append(r.out)
    return out


def ping(lab: Lab, dst: str, count: int = 1, *extra: str) -> subprocess.CompletedProcess[str]:
    return lab.exec("a1", ["ping", "-c", str(count), "-i", "0.2", "-W", "1", *extra, dst],
                    timeout=10)


def tcp_echo(lab: Lab, dst: str, port: int, server_port: int = 8080) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns("b1"), "timeout", "10", sys.executable, "-c",
         f"import socket; s=socket.create_server(('0.0.0.0', {server_port})); "
         "c,_=s.accept(); c.sendall(c.recv(100)); c.close()"])
    try:
        time.sleep(0.4)
        r = lab.exec("a1", ["timeout", "8", sys.executable, "-c",
                            f"import socket; c=socket.create_connection(('{dst}', {port}), 5);"
                            "c.sendall(b'hoptrace'); assert c.recv(100) == b'hoptrace'"],
                     timeout=12)
        assert r.returncode == 0, r.stderr
    finally:
        server.kill()
        server.wait()


def rules(rep: dict[str, Any]) -> list[str]:
    return [d["rule"] for d in rep["diagnosis"]]


def device_path(tr: Traces, packet: int) -> list[tuple[str, str, str]]:
    h = tr.packet_hops(packet)
    h = h[h["probe"].isin(["netif_receive_skb", "net_dev_queue"])]
    return list(zip(h["node"].astype(str), h["netns"].astype(str), h["hop"].astype(str),
                    strict=True))


def test_ping_and_tcp_one_flow_each_across_both_nodes(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    b1 = lab.addr("b1")

    def traffic() -> None:
        assert ping(lab, b1, 2).returncode == 0
        tcp_echo(lab, b1, 8080)

    paths = trace_nodes(lab, tmp_path, f"host {b1}", traffic)
    tr = load(paths)
    f = tr.flows.set_index("proto")
    assert sorted(f.index) == ["icmp", "tcp"]
    assert f.loc["icmp", "forward"] == 2 and f.loc["icmp", "reverse"] == 2
    assert f.loc["tcp", "server"] == f"{b1}:8080" and f.loc["tcp", "forward"] >= 3
    assert (f["nodes"] == "n1>n2").all()
    assert (f["client_pod"] == lab.netns("a1")).all() and (
        f["server_pod"] == lab.netns("b1")).all()
    p = tr.packets
    req = p[(p["proto"] == 1) & (p["direction"] == "forward")].iloc[0]
    n1, n2 = lab.netns("n1"), lab.netns("n2")
    assert device_path(tr, req["packet"]) == [
        ("n1", lab.netns("a1"), HopKind.POD_TX), ("n1", n1, HopKind.BRIDGE_IN),
        ("n1", n1, HopKind.BRIDGE_UP), ("n1", n1, HopKind.ENCAP),
        ("n1", n1, HopKind.UNDERLAY_TX), ("n2", n2, HopKind.UNDERLAY_RX),
        ("n2", n2, HopKind.DECAP), ("n2", n2, HopKind.BRIDGE_TX), ("n2", n2, HopKind.VETH_TX),
        ("n2", lab.netns("b1"), HopKind.POD_RX)]
    syn = p[p["summary"].str.contains(r"TCP \[S\]", regex=True)].iloc[0]
    assert syn["nodes"] == "n1>n2" and syn["segments"] == 2
    assert (tr.hops["dt_ns"] >= 0).all()
    c = tr.clocks["n2"]
    assert c.method == "causal" and c.lo_ns <= 0 <= c.hi_ns  # one machine: true offset 0
    rep = build(tr)
    assert rules(rep) == [], rep["diagnosis"]
    tcp = next(x for x in rep["flows"] if x["proto"] == "tcp")
    fwd = next(x for x in tcp["paths"] if x["direction"] == "forward")
    assert [h["node"] for h in fwd["hops"]].index("n2") > 0
    assert fwd["hops"][0]["node"] == "n1"

    # the same files with n2's clock 3.2 ms ahead: the offset is found, nothing negative
    shifted = tmp_path / "n2-shifted.jsonl"
    with paths[1].open() as src, shifted.open("w") as dst:
        for line in src:
            rec = json.loads(line)
            if rec.get("type") == "event":
                rec["ts_ns"] += 3_200_000
            dst.write(json.dumps(rec) + "\n")
    tr2 = load([paths[0], shifted])
    c2 = tr2.clocks["n2"]
    assert c2.uncertainty_ns is not None
    assert abs(c2.offset_ns + 3_200_000) <= c2.uncertainty_ns
    assert (tr2.hops["dt_ns"] >= 0).all()
    assert len(tr2.packets) == len(tr.packets)


def test_service_dnat_is_one_journey(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    b1 = lab.addr("b1")
    lab.exec("n1", ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", VIP, "-p", "tcp",
                    "--dport", "80", "-j", "DNAT", "--to-destination", f"{b1}:8080"], check=True)
    paths = trace_nodes(lab, tmp_path, f"host {b1} or host {VIP}",
                        lambda: tcp_echo(lab, VIP, 80))
    tr = load(paths)
    assert len(tr.flows) == 1
    fl = tr.flows.iloc[0]
    assert (fl["server"], fl["nat_to"]) == (f"{VIP}:80", f"{b1}:8080")
    syn = tr.packets[tr.packets["summary"].str.contains(r"TCP \[S\]", regex=True)].iloc[0]
    assert syn["nat"] and syn["nodes"] == "n1>n2" and syn["segments"] == 2
    assert syn["tuple_before"].endswith(f">{VIP}:80")
    assert syn["tuple_after"].endswith(f">{b1}:8080")
    rep = build(tr)
    nat = rep["flows"][0]["nat"]
    assert any(n["before"].endswith(f"{VIP}:80") and n["after"].endswith(f"{b1}:8080")
               for n in nat)
    assert rules(rep) == []


def test_forward_drop_diagnosed(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    b1 = lab.addr("b1")
    lab.exec("n2", ["iptables", "-I", "FORWARD", "-d", b1, "-p", "icmp", "-j", "DROP"],
             check=True)
    paths = trace_nodes(lab, tmp_path, f"host {b1}", lambda: ping(lab, b1, 2))
    rep = build(load(paths))
    assert rules(rep) == ["netfilter-drop"]
    d = rep["diagnosis"][0]
    assert "FORWARD" in d["title"] and lab.netns("n2") in d["title"] and d["packets"] == 2


def test_rp_filter_drop_diagnosed(vxlan_lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("scapy")
    lab = vxlan_lab
    b1 = lab.addr("b1")
    spoofed = "10.244.2.50"  # b1's subnet: routed back via flannel.1, so cni0 fails strict rp
    lab.exec("n1", ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1",
                    "net.ipv4.conf.cni0.rp_filter=1"], check=True)

    def send() -> None:
        lab.exec("a1", [sys.executable, "-c",
                        "from scapy.all import IP, ICMP, send; "
                        f"send(IP(src='{spoofed}', dst='{b1}')/ICMP(id=77), count=2, "
                        "verbose=0)"], timeout=20, check=True)

    paths = trace_nodes(lab, tmp_path, f"host {b1}", send)
    rep = build(load(paths))
    assert rules(rep) == ["rp-filter"]
    assert spoofed in rep["diagnosis"][0]["title"]


def test_mtu_problem_diagnosed(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    b1 = lab.addr("b1")
    lab.exec("n1", ["ip", "link", "set", "u1", "mtu", "1400"], check=True)
    # 1422 + 28 = 1450: fits the pod and flannel.1 MTU, but not u1 once VXLAN adds 50 bytes
    paths = trace_nodes(lab, tmp_path, f"host {b1}",
                        lambda: ping(lab, b1, 2, "-M", "do", "-s", "1422"))
    rep = build(load(paths))
    assert rules(rep) == ["mtu"]
    assert any("fragmented on the underlay" in e for e in rep["diagnosis"][0]["evidence"])
    # the MTUs recorded in the trace header name the misfit
    n1 = lab.netns("n1")
    assert (f"flannel.1 (vxlan) MTU 1450 + 50 = 1500 bytes on the wire, more than u1 1400 in {n1}"
            in " ".join(rep["diagnosis"][0]["evidence"])), rep["diagnosis"][0]["evidence"]


def test_pod_mtu_above_the_overlay_diagnosed(vxlan_lab: Lab, tmp_path: Path) -> None:
    """`lab fault mtu`: a1's eth0 and its host-side veth at 1500 while flannel.1 is 1450: a
    full-size DF packet cannot enter the tunnel; the diagnosis names the two MTUs."""
    from tracer.lab.faults import inject, plan

    lab = vxlan_lab
    b1 = lab.addr("b1")
    inject(lab, plan(lab, "mtu"))
    paths = trace_nodes(lab, tmp_path, f"host {b1}",
                        lambda: ping(lab, b1, 2, "-M", "do", "-s", "1472"))
    rep = build(load(paths))
    assert rules(rep) == ["mtu"], rep["diagnosis"]
    evidence = " ".join(rep["diagnosis"][0]["evidence"])
    assert (f"pod {lab.netns('a1')} eth0 MTU 1500 is larger than flannel.1 MTU 1450 on its "
            f"node {lab.netns('n1')}") in evidence, evidence


def test_benign_and_real_frees_at_one_place_are_told_apart(vxlan_lab: Lab,
                                                           tmp_path: Path) -> None:
    """Ping replies and UDP datagrams to a closed port both end in a1 with NO_SOCKET, at the
    same device after the same hooks: the replies are benign frees, the datagrams real drops.
    (Hop naming runs once per distinct situation; the free's reason and ICMP type are part of
    it.)"""
    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    udp = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
           f"[s.sendto(b'x' * 20, ('{a1}', 9)) for _ in range(3)]")

    def traffic() -> None:
        assert ping(lab, b1, 2).returncode == 0
        lab.exec("b1", [sys.executable, "-c", udp], check=True, timeout=10)

    paths = trace_nodes(lab, tmp_path, f"host {b1}", traffic)
    rep = build(load(paths))
    a1_ns = lab.netns("a1")
    real = [d for d in rep["drops"] if d["netns"] == a1_ns]
    benign = [d for d in rep["benign_frees"] if d["netns"] == a1_ns]
    assert [(d["reason"], d["packets"]) for d in real] == [("NO_SOCKET", 3)], rep["drops"]
    assert [(d["reason"], d["packets"]) for d in benign] == [("NO_SOCKET", 2)], benign
