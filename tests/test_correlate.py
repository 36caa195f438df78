"""Pure tier: correlation of recorded two-node traces (tests/data/report/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.correlate import Traces, load
from tracer.errors import UsageError
from tracer.hops import HopKind

DATA = Path(__file__).parent / "data"
REP = DATA / "report"
SHIFT_NS = 3_200_000


def files(name: str) -> list[Path]:
    return [REP / f"{name}-n1.jsonl", REP / f"{name}-n2.jsonl"]


def rewrite(src: Path, dst: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    """Copy a trace file, passing every event through ``fn`` (which returns a list)."""
    out = []
    for line in src.read_text().splitlines():
        rec = json.loads(line)
        out += fn(rec) if rec.get("type") == "event" else [rec]
    dst.write_text("".join(json.dumps(r) + "\n" for r in out))
    return dst


@pytest.fixture(scope="module")
def clean() -> Traces:
    return load(files("clean"))


def device_hops(tr: Traces, packet: int) -> list[tuple[str, str]]:
    h = tr.packet_hops(packet)
    h = h[h["probe"].isin(["netif_receive_skb", "net_dev_queue"])]
    return list(zip(h["node"].astype(str), h["hop"].astype(str), strict=True))


def test_one_flow_per_exchange_across_both_nodes(clean: Traces) -> None:
    f = clean.flows.set_index("proto")
    assert sorted(f.index) == ["icmp", "tcp"]
    assert (f.loc["icmp", "packets"], f.loc["icmp", "forward"], f.loc["icmp", "reverse"]) == (
        6, 3, 3)
    assert f.loc["tcp", "packets"] == 10 and f.loc["tcp", "server"] == "10.244.2.2:8080"
    assert f.loc["icmp", "client_pod"] == "ht4dev-a1" and f.loc["icmp", "server_pod"] == "ht4dev-b1"
    assert set(clean.packets["segments"]) == {2}  # every packet: one segment on each node
    assert set(clean.packets["nodes"]) == {"n1>n2", "n2>n1"}
    assert (clean.packets["fate"] != "dropped").all()


def test_request_hops_in_path_order(clean: Traces) -> None:
    p = clean.packets
    req = p[(p["proto"] == 1) & (p["direction"] == "forward")].iloc[0]
    assert device_hops(clean, req["packet"]) == [
        ("n1", HopKind.POD_TX), ("n1", HopKind.BRIDGE_IN), ("n1", HopKind.BRIDGE_UP),
        ("n1", HopKind.ENCAP), ("n1", HopKind.UNDERLAY_TX), ("n2", HopKind.UNDERLAY_RX),
        ("n2", HopKind.DECAP), ("n2", HopKind.BRIDGE_TX), ("n2", HopKind.VETH_TX),
        ("n2", HopKind.POD_RX),
    ]
    h = clean.packet_hops(req["packet"])
    assert list(h["step"]) == list(range(len(h)))
    assert (h["dt_ns"] >= 0).all() and h["offset_ns"].is_monotonic_increasing
    cross = h[h["cross_node"]]
    assert len(cross) == 1 and cross.iloc[0]["hop"] == HopKind.UNDERLAY_RX
    assert any(str(c).startswith("encapsulated VXLAN vni 1") for c in h["change"])
    # the ping reply freed after delivery to the raw socket's clone is not a drop
    rep = p[(p["proto"] == 1) & (p["direction"] == "reverse")]
    assert set(rep["fate"]) == {"freed"}


def test_clock_offset_of_one_machine_is_zero_within_uncertainty(clean: Traces) -> None:
    c = clean.clocks["n2"]
    assert c.method == "causal" and c.samples == 16 and c.consistent
    assert c.lo_ns is not None and c.hi_ns is not None
    assert c.lo_ns <= 0 <= c.hi_ns
    assert c.uncertainty_ns is not None and c.uncertainty_ns < 50_000


def test_shifted_clock_is_estimated(tmp_path: Path, clean: Traces) -> None:
    def shift(rec: dict) -> list[dict]:  # type: ignore[type-arg]
        rec["ts_ns"] += SHIFT_NS
        return [rec]

    n1, n2 = files("clean")
    tr = load([n1, rewrite(n2, tmp_path / "n2.jsonl", shift)])
    c = tr.clocks["n2"]
    assert c.uncertainty_ns is not None
    assert abs(c.offset_ns - (-SHIFT_NS)) <= c.uncertainty_ns
    assert c.lo_ns <= -SHIFT_NS <= c.hi_ns  # type: ignore[operator]
    assert (tr.hops["dt_ns"] >= 0).all()
    assert len(tr.packets) == len(clean.packets) and len(tr.flows) == len(clean.flows)
    # the same packets, the same latencies up to the offset's rounding
    assert abs(tr.packets["e2e_ns"].sum() - clean.packets["e2e_ns"].sum()) < 16 * 2 * 1000


def test_duplicates_stay_separate_packets(tmp_path: Path, clean: Traces) -> None:
    """The same echo request (same identity) sent again 1 s later on both nodes: two packets,
    each node's k-th copy paired with the other's k-th."""
    req = clean.packets[(clean.packets["proto"] == 1)].iloc[0]
    segs = clean.segments[clean.segments["packet"] == req["packet"]]
    tracks = {(r.node, int(r.track)) for r in segs.itertuples()}

    def dup(rec: dict) -> list[dict]:  # type: ignore[type-arg]
        if (rec["node"], rec["track"]) not in tracks:
            return [rec]
        again = dict(rec, track=rec["track"] + 100_000, ts_ns=rec["ts_ns"] + 1_000_000_000)
        return [rec, again]

    n1, n2 = files("clean")
    tr = load([rewrite(n1, tmp_path / "n1.jsonl", dup), rewrite(n2, tmp_path / "n2.jsonl", dup)])
    assert len(tr.packets) == len(clean.packets) + 1
    same = tr.packets[(tr.packets["summary"] == req["summary"])].sort_values("first_ns")
    assert list(same["occurrence"]) == [0, 1]
    assert list(same["segments"]) == [2, 2]
    gap = same["first_ns"].iloc[1] - same["first_ns"].iloc[0]
    assert gap == pytest.approx(1_000_000_000, abs=10_000)
    assert same["e2e_ns"].iloc[0] == same["e2e_ns"].iloc[1]  # paired copy for copy
    assert tr.clocks["n2"].uncertainty_ns == clean.clocks["n2"].uncertainty_ns


def test_dnat_is_one_journey_with_tuple_before_and_after() -> None:
    tr = load(files("dnat"))
    p = tr.packets
    syn = p[p["summary"].str.contains(r"TCP \[S\]", regex=True)].iloc[0]
    assert syn["tuple_before"].endswith(">10.96.0.10:80")
    assert syn["tuple_after"].endswith(">10.244.2.2:8080")
    assert syn["nat"] and syn["segments"] == 2 and syn["nodes"] == "n1>n2"
    h = tr.packet_hops(syn["packet"])
    nat = h[h["nat"]]
    assert len(nat) == 1 and str(nat.iloc[0]["node"]) == "n1"
    assert str(nat.iloc[0]["change"]).startswith("NAT 10.244.1.2:")
    # the reply is un-NATed on n1: 10.244.2.2:8080 before, 10.96.0.10:80 after
    synack = p[p["summary"].str.contains(r"TCP \[SA\]", regex=True)].iloc[0]
    assert synack["tuple_before"].startswith("10.244.2.2:8080>")
    assert synack["tuple_after"].startswith("10.96.0.10:80>")
    f = tr.flows.set_index("proto")
    assert f.loc["tcp", "server"] == "10.96.0.10:80" and f.loc["tcp", "nat_to"] == (
        "10.244.2.2:8080")
    assert f.loc["tcp", "packets"] == 10 and f.loc["tcp", "reverse"] > 0
    assert len(tr.flows) == 2  # request and reply tuples joined into one flow each


def test_fragmented_overlay_packet_is_one_journey() -> None:
    tr = load(files("mtu"))
    fwd = tr.packets[tr.packets["direction"] == "forward"]
    assert len(fwd) == 4
    assert set(fwd["segments"]) == {4}  # original + fragment on n1, fragment + reassembled on n2
    assert set(fwd["nodes"]) == {"n1>n2"}
    rev = tr.packets[tr.packets["direction"] == "reverse"]
    assert set(rev["fate"]) == {"dropped"}


def test_single_file_trace() -> None:
    tr = load([DATA / "two-node-vxlan.jsonl"])
    assert len(tr.packets) == 3
    assert list(tr.clocks) == ["n1"]
    fates = tr.packets.set_index("direction")["fate"]
    assert sorted(tr.packets["fate"]) == ["dropped", "freed", "freed"]
    d = tr.packets[tr.packets["fate"] == "dropped"].iloc[0]
    assert (d["drop_reason"], d["drop_netns"], d["drop_hook"]) == (
        "NETFILTER_DROP", "htlab-n2", "FORWARD")
    assert len(fates)


def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"type":"event"}\n')
    with pytest.raises(UsageError, match="no header line"):
        load([bad])
    with pytest.raises(UsageError, match="cannot read"):
        load([tmp_path / "missing.jsonl"])
    with pytest.raises(UsageError, match="no trace files"):
        load([])
    header = (REP / "rpf-n1.jsonl").read_text().splitlines()[0]
    bad.write_text(header + "\nnot json at all\n")
    with pytest.raises(UsageError, match="not a hoptrace trace file"):
        load([bad])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(header + "\n")
    assert load([empty]).packets.empty
