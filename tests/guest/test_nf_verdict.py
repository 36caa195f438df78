"""Kernel tier, written for the VM matrix (tools/kernel_matrix.py): a FORWARD DROP shows the hook,
the table, the chain and the verdict, from ipt_do_table / nft_do_chain probes (fexit, and the
kretprobe fallback) in a real kernel with real packets.

The rule drops ICMP to pod b1 in node n2's FORWARD hook of the two-node VXLAN lab; a1 pings b1
once. Variants: ``iptables`` (whatever backend the distribution chose: nf_tables on Debian, so
``nft_do_chain`` decides in table ``filter`` chain ``FORWARD``), ``iptables-legacy``
(``ipt_do_table``, x_tables) and native ``nft`` (a table and base chain of our own names). A
variant whose tool is missing skips. On kernels that refuse fexit and kprobes (the development
machine) the tests skip naming the kernel's error; inside a stock-kernel guest that is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tracing import chains_of, require_kernel, require_mechanism, tracing
from tracer.capabilities import choose_all
from tracer.catalogue import Mech
from tracer.chains import Chain
from tracer.event import Event
from tracer.lab import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

NFT_TABLE, NFT_CHAIN = "htverdict", "fwd-pods"  # names of our own: not iptables' names


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def add_drop(lab: Lab, variant: str) -> tuple[str, str, str]:
    """The FORWARD DROP rule on n2 for ICMP to b1; returns (probe, table, chain) expected."""
    b1 = lab.addr("b1")
    tool = "nft" if variant == "nft" else variant
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if variant == "nft":
        for cmd in (
            f"add table ip {NFT_TABLE}",
            f"add chain ip {NFT_TABLE} {NFT_CHAIN} {{ type filter hook forward priority 0; }}",
            f"add rule ip {NFT_TABLE} {NFT_CHAIN} ip daddr {b1} ip protocol icmp drop",
        ):
            lab.exec("n2", ["nft", cmd], check=True)
        return "nft_do_chain", NFT_TABLE, NFT_CHAIN
    # first in FORWARD: the lab's Flannel rules (FLANNEL-FWD, iptables-restore: the nf_tables
    # backend) accept pod traffic, and an ACCEPT ends the table: an appended DROP never runs
    r = lab.exec("n2", [tool, "-I", "FORWARD", "1", "-d", b1, "-p", "icmp", "-j", "DROP"])
    if r.returncode != 0:
        pytest.skip(f"{tool} cannot add a rule here: {r.stderr.strip()}")
    version = lab.exec("n2", [tool, "-V"]).stdout
    probe = "nft_do_chain" if "nf_tables" in version else "ipt_do_table"
    return probe, "filter", "FORWARD"


def ping_dropped(lab: Lab) -> None:
    r = lab.exec("a1", ["ping", "-c", "1", "-W", "1", lab.addr("b1")], timeout=15)
    if r.returncode != 0:
        return
    rules = "".join(
        f"\n$ {' '.join(argv)}\n{x.stdout}{x.stderr}"
        for argv in (["nft", "list", "ruleset"], ["iptables-legacy", "-S"])
        if shutil.which(argv[0]) and (x := lab.exec("n2", argv))
    )
    raise AssertionError(f"the ping went through: the DROP rule did not apply; n2:{rules}")


def dropped_chain(chains: list[Chain], lab: Lab) -> Chain:
    n2 = lab.netns("n2")
    for c in chains:
        last = c.last.event
        if c.dropped and last.netns == n2 and last.drop_reason == "NETFILTER_DROP":
            return c
    raise AssertionError(
        "no chain ends in a NETFILTER_DROP on n2: " + "; ".join(
            f"{c.summary()} -> {c.fate()}" for c in chains)
    )


def check_decision(events: list[Event], probe: str, table: str, chain: str) -> bool:
    """The table event and the drop it announced both say FORWARD, table, chain, DROP.
    Kernels whose nf_tables frees a dropped packet inside nft_do_chain (NF_DROP_REASON: 6.12+,
    and the 6.1 stable series) have no table event (the call returns NF_STOLEN after the
    free): there the drop alone names the decision. Returns whether a table event was seen."""
    decided = [e for e in events if e.probe == probe]
    assert decided or probe == "nft_do_chain", (
        f"no {probe} event: {[(e.probe, e.nf_hook) for e in events]}")
    for e in decided:
        assert (e.nf_hook, e.nf_pf, e.nf_table, e.nf_chain, e.verdict) == (
            "FORWARD", "ipv4", table, chain, "DROP"), e
    drop = events[-1]
    assert drop.probe == "kfree_skb", drop
    assert (drop.nf_hook, drop.nf_table, drop.nf_chain, drop.verdict) == (
        "FORWARD", table, chain, "DROP"), drop
    # the hooks it passed before: nf_hook_last (nf_hook_slow returned 1) says ACCEPT
    accepted = [e for e in events if e.probe == "nf_hook_last"]
    assert accepted and all(e.verdict == "ACCEPT" and not e.nf_table for e in accepted), accepted
    return bool(decided)


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy", "nft"])
def test_forward_drop_names_hook_table_chain_verdict(
    vxlan_lab: Lab, tmp_path: Path, variant: str, record_property: Callable[[str, object], None]
) -> None:
    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    probe, table, chain = add_drop(lab, variant)  # loads the modules the probes attach to
    require_mechanism(Mech.FEXIT, probe)
    with tracing(tmp_path, f"icmp and src host {a1} and dst host {b1}", "--netns",
                 ",".join(lab.namespaces()), ready_timeout=float(
                     os.environ.get("HT_READY_TIMEOUT", "15")) * 2) as run:
        ping_dropped(lab)
        time.sleep(0.5)
        trace = run.stop(timeout=60)
    row = next(p for p in trace.header["probes"] if p["point"] == probe)
    assert row["mechanism"] == "fexit", (row, run.stderr)
    c = dropped_chain(chains_of(trace), lab)
    events = [s.event for s in c.steps]
    record_property(variant, [(e.probe, e.nf_hook, e.nf_table, e.nf_chain, e.verdict)
                              for e in events if e.verdict])
    table_event = check_decision(events, probe, table, chain)
    assert f"dropped in {table}/{chain}, verdict DROP" in c.fate(), c.fate()
    if table_event:
        verdict_step = next(s for s in c.steps if s.event.probe == probe)
        assert verdict_step.hop.label == "nf:FWD" and "verdict DROP" in verdict_step.change


def test_kretprobe_fallback_names_the_decision_too(vxlan_lab: Lab) -> None:
    """Without fentry/fexit the kretprobe programs (arguments saved by an entry kprobe) give
    the same decision on the same drop."""
    from tracer.catalogue import CATALOGUE
    from tracer.chains import ChainBuilder
    from tracer.event import Namer
    from tracer.filter import compile_filter
    from tracer.loader import ProbeOptions, Probes
    from tracer.names import Topology, resolve

    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    probe, table, chain = add_drop(lab, "iptables")
    require_mechanism(Mech.KRETPROBE, probe)
    allow = frozenset(Mech) - {Mech.FENTRY, Mech.FEXIT}
    for choice in choose_all(allow):
        if choice.point.core and choice.chosen is None:
            pytest.skip(f"without fentry/fexit, core probe {choice.point.name} has no mechanism")
    namespaces = resolve(",".join(lab.namespaces()))
    opts = ProbeOptions(filter=compile_filter(f"icmp and src host {a1} and dst host {b1}"),
                        netns=namespaces, netns_all=False, allow=allow)
    recs = []
    with Probes(opts) as probes:
        chosen = {ch.point.name: ch.chosen.kind for ch in probes.choices if ch.chosen}
        assert chosen[probe] == Mech.KRETPROBE and chosen["nf_hook_last"] == Mech.KRETPROBE, chosen
        assert probes.warnings == []
        ping_dropped(lab)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            recs.append(probes.read(50))
        namer = Namer("n", probes.probe_ids, {p.enum: p.name for p in CATALOGUE})
        events = sorted((e for r in recs for e in namer.events(r)), key=lambda e: e.ts_ns)
    builder = ChainBuilder(Topology.read(namespaces))
    chains = [ch for e in events if (ch := builder.add(e)) is not None] + builder.flush()
    c = dropped_chain(chains, lab)
    check_decision([s.event for s in c.steps], probe, table, chain)
