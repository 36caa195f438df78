"""Kernel tier: each fault ``hoptrace lab fault`` injects, traced through, then cleared.

For every fault: inject it with the CLI, send bounded traffic, trace it with ``hoptrace
trace``, assert the hop chain shows the failure where it happens (the hook that dropped it,
the kernel's drop reason, the wrong node's underlay), ask ``hoptrace report`` for its
diagnosis and assert it names the fault, then ``clear`` and assert the traffic works again
and the lab is exactly as before.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_lab_paths import changes, find, ping, tcp
from tests.tracing import chains_of, hoptrace, require_kernel, tracing
from tracer.chains import Chain, render
from tracer.hops import HopKind as H
from tracer.lab import Lab, faults

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def fault_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    r = hoptrace("lab", "fault", lab.name, *args, "--prefix", lab.prefix)
    assert r.returncode == 0, r.stderr
    return r


def traced(
    lab: Lab, tmp_path: Path, flt: str, traffic: Callable[[], object]
) -> tuple[list[Chain], Path]:
    with tracing(tmp_path, flt, "--netns", ",".join(lab.namespaces())) as run:
        traffic()
        time.sleep(0.3)
        trace = run.stop()
    return chains_of(trace), run.out


def diagnosis(trace_file: Path) -> list[dict[str, object]]:
    r = hoptrace("report", str(trace_file), "--format", "json", timeout=60)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout)["diagnosis"])


def rules(trace_file: Path) -> set[str]:
    return {str(f["rule"]) for f in diagnosis(trace_file)}


def state(lab: Lab, node: str) -> str:
    """Everything a fault may touch on a node, to compare before inject and after clear."""
    cmds = [
        "iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'",
        "nft list tables",
        "ip route",
        "bridge fdb show | grep dst",
        "ip -o link | sed 's/state [A-Z]*//' | awk '{print $2, $4, $5}'",
        "sysctl -a 2>/dev/null | grep rp_filter",
    ]
    out = lab.exec(node, ["sh", "-c", "; ".join(cmds)], timeout=20)
    return out.stdout


def assert_cleared(lab: Lab, before: dict[str, str]) -> None:
    r = fault_cli(lab, "clear")
    assert "cleared" in r.stdout
    assert faults.active(lab) == []
    for node, text in before.items():
        assert state(lab, node) == text, f"{node} differs after clear"


def test_iptables_drop_ends_in_forward(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("flannel-vxlan")
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    before = {"n2": state(lab, "n2")}
    assert "FORWARD in" in fault_cli(lab, "iptables-drop").stdout
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "a1", b1))
    req = find(chains, a1, b1)
    assert req.dropped, render(req)
    assert (req.last.event.netns, req.last.event.drop_reason) == (lab.netns("n2"), "NETFILTER_DROP")
    assert "inside nf:FORWARD" in req.last.change
    assert not any(s.event.netns == lab.netns("b1") for s in req.steps)
    assert "netfilter-drop" in rules(out)
    assert_cleared(lab, before)
    assert ping(lab, "a1", b1).returncode == 0


def test_nft_drop_ends_in_the_hook(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("flannel-vxlan")
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    before = {"n2": state(lab, "n2")}
    fault_cli(lab, "nft-drop", "--hook", "PREROUTING")
    listed = lab.exec("n2", ["nft", "list", "table", "inet", "hoptrace_fault"], timeout=10)
    assert "hook prerouting" in listed.stdout
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "a1", b1))
    req = find(chains, a1, b1)
    assert req.dropped and req.last.event.drop_reason == "NETFILTER_DROP", render(req)
    assert req.last.event.netns == lab.netns("n2")
    assert "inside nf:PRE_ROUTING" in req.last.change
    assert "netfilter-drop" in rules(out)
    assert_cleared(lab, before)
    assert ping(lab, "a1", b1).returncode == 0


def test_wrong_fdb_sends_vxlan_to_the_wrong_node(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("flannel-vxlan")
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    before = {"n1": state(lab, "n1")}
    assert "to n3 192.168.77.3 instead of 192.168.77.2" in fault_cli(lab, "wrong-fdb").stdout
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "a1", b1))
    req = find(chains, a1, b1)
    assert "encapsulated VXLAN vni 1 192.168.77.1>192.168.77.3" in changes(req), render(req)
    on = [s.event.netns for s in req.steps]
    assert lab.netns("n3") in on and lab.netns("n2") not in on and lab.netns("b1") not in on
    # n3 decapsulates it, but the inner frame is for n2's flannel.1 MAC: n3 drops it
    assert req.dropped and req.last.event.netns == lab.netns("n3"), render(req)
    assert (req.last.event.ifname, req.last.event.drop_reason) == ("flannel.1", "OTHERHOST")
    assert req.steps[-2].hop.kind == H.DECAP
    found = diagnosis(out)
    assert [f["rule"] for f in found] == ["wrong-fdb"], found
    f = found[0]
    assert f"to {lab.netns('n3')}" in str(f["title"]) and b1 in str(f["title"])
    assert "bridge fdb show dev flannel.1" in str(f["detail"])
    assert lab.netns("n1") in str(f["detail"])  # the sender's entry is the one to fix
    ev = str(f["evidence"])
    assert "outer 192.168.77.1>192.168.77.3" in ev and "OTHERHOST" in ev
    assert_cleared(lab, before)
    assert ping(lab, "a1", b1).returncode == 0


def test_mtu_above_the_overlay(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("flannel-vxlan")
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    before = {"n1": state(lab, "n1"), "a1": state(lab, "a1")}
    fault_cli(lab, "mtu")
    big = ["-M", "do", "-s", "1472"]  # 1500-byte packets, Don't Fragment
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "a1", b1, *big))
    req = find(chains, a1, b1)
    assert req.dropped and req.last.event.netns == lab.netns("n1"), render(req)
    assert req.last.event.drop_reason == "PKT_TOO_BIG"
    assert not any(s.hop.kind == H.ENCAP for s in req.steps)
    assert "mtu" in rules(out)
    assert_cleared(lab, before)
    assert ping(lab, "a1", b1, "-s", "1400").returncode == 0


def test_rp_filter_strict_on_an_asymmetric_path(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("calico-vxlan")
    b1, edge = lab.addr("b1"), lab.addr("net")
    before = {"n2": state(lab, "n2")}
    assert "strict on vxlan.calico" in fault_cli(lab, "rp-filter").stdout
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "net", b1))
    req = find(chains, edge, b1)
    assert req.dropped, render(req)
    assert (req.last.event.netns, req.last.event.drop_reason) == (lab.netns("n2"), "IP_RPFILTER")
    assert req.steps[-2].event.ifname == "vxlan.calico" or any(
        s.event.ifname == "vxlan.calico" and s.hop.kind == H.DECAP for s in req.steps
    )
    assert "rp-filter" in rules(out)
    assert_cleared(lab, before)
    assert ping(lab, "net", b1).returncode == 0


def test_missing_route(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("flannel-vxlan")
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    before = {"n1": state(lab, "n1")}
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1" in fault_cli(lab, "no-route").stdout
    chains, out = traced(lab, tmp_path, "icmp", lambda: ping(lab, "a1", b1))
    req = find(chains, a1, b1)
    assert req.dropped and req.last.event.netns == lab.netns("n1"), render(req)
    assert "NOROUTE" in req.last.event.drop_reason or "UNREACH" in req.last.event.drop_reason
    assert not any(s.hop.kind == H.ENCAP for s in req.steps)
    assert "no-route" in rules(out)
    assert_cleared(lab, before)
    assert ping(lab, "a1", b1).returncode == 0


def _pre_routing_ns(chain: Chain, netns: str) -> int:
    """Time the packet spent in nf PRE_ROUTING on ``netns`` (first to last priority)."""
    first = next(
        s
        for s in chain.steps
        if s.event.netns == netns
        and s.event.probe == "nf_hook_first"
        and s.event.nf_hook == "PRE_ROUTING"
    )
    last = next(
        s
        for s in chain.steps
        if s.event.netns == netns
        and s.event.probe == "nf_hook_last"
        and s.event.nf_hook == "PRE_ROUTING"
    )
    return last.event.ts_ns - first.event.ts_ns


def test_thousands_of_rules_before_the_service(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("kube-proxy")
    n1 = lab.netns("n1")
    (tmp_path / "base").mkdir()
    (tmp_path / "slow").mkdir()
    before = {"n1": state(lab, "n1")}

    def connects() -> None:
        for _ in range(3):
            assert tcp(lab, "a1", "10.96.0.10", 80) in ("a2", "b1")

    def syn_pre_routing(chains: list[Chain]) -> float:
        syns = [
            c
            for c in chains
            if c.first.decoded
            and c.first.decoded.inner
            and c.first.decoded.inner.dst == "10.96.0.10"
            and c.first.decoded.inner.tcp_flags & 0x12 == 0x02
        ]
        assert len(syns) == 3
        return statistics.median(_pre_routing_ns(c, n1) for c in syns)

    flt = "tcp port 80 or tcp port 8080"
    base_chains, base_out = traced(lab, tmp_path / "base", flt, connects)
    base = syn_pre_routing(base_chains)
    fault_cli(lab, "slow-rules", "--rules", "10000")
    slow_chains, out = traced(lab, tmp_path / "slow", flt, connects)
    slow = syn_pre_routing(slow_chains)
    # the SYN walks 10000 rules in KUBE-SERVICES (later packets ride conntrack): about
    # 16 ns a rule here, against ~25 us for the hook's usual work on a new connection
    assert slow > 3 * base and slow - base > 80_000, (base, slow)
    # the report names the hook on n1 for the slow run, and nothing for the same traffic
    # before the fault
    assert "slow-rules" not in rules(base_out)
    found = [f for f in diagnosis(out) if f["rule"] == "slow-rules"]
    assert len(found) >= 1, diagnosis(out)
    f = next(f for f in found if "PRE_ROUTING" in str(f["title"]))
    assert n1 in str(f["title"]) and "iptables-save | wc -l" in str(f["detail"])
    assert_cleared(lab, before)
    assert tcp(lab, "a1", "10.96.0.10", 80) in ("a2", "b1")
