"""Pure tier: hoptrace report on recorded two-node traces: diagnosis, formats, CLI."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.test_correlate import files, rewrite
from tests.tracing import hoptrace
from tracer.correlate import load
from tracer.report import build, render


def report(name: str) -> dict[str, Any]:
    return build(load(files(name)))


def rules(rep: dict[str, Any]) -> list[str]:
    return [d["rule"] for d in rep["diagnosis"]]


def test_clean_run_has_no_diagnosis() -> None:
    rep = report("clean")
    assert rules(rep) == []
    assert rep["drops"] == []
    # the ping replies' NO_SOCKET and the FIN's queue purge are listed as normal frees
    assert {b["reason"] for b in rep["benign_frees"]} <= {"NO_SOCKET", "QUEUE_PURGE"}
    assert "No problems found" in render(rep, "text")


def test_forward_drop_is_diagnosed() -> None:
    rep = report("fwd")
    assert rules(rep) == ["netfilter-drop"]
    d = rep["diagnosis"][0]
    assert "FORWARD" in d["title"] and "ht4dev-n2" in d["title"] and "node n2" in d["title"]
    assert "iptables -S FORWARD" in d["detail"]
    assert d["packets"] == 2
    assert rep["drops"][0]["reason"] == "NETFILTER_DROP" and rep["drops"][0]["hook"] == "FORWARD"


def test_rp_filter_drop_is_diagnosed() -> None:
    rep = report("rpf")
    assert rules(rep) == ["rp-filter"]
    d = rep["diagnosis"][0]
    assert "10.244.2.50" in d["title"] and "cni0" in d["title"]
    assert "rp_filter=2" in d["detail"]


def test_mtu_problem_is_diagnosed() -> None:
    rep = report("mtu")
    assert rules(rep) == ["mtu"]
    ev = " ".join(rep["diagnosis"][0]["evidence"])
    assert "fragmented on the underlay" in ev and "1514 bytes" in ev


def test_dnat_report_shows_tuple_before_and_after() -> None:
    rep = report("dnat")
    assert rules(rep) == []
    tcp = next(f for f in rep["flows"] if f["proto"] == "tcp")
    assert tcp["nat_to"] == "10.244.2.2:8080"
    pairs = {(n["before"].split(">")[1], n["after"].split(">")[1]) for n in tcp["nat"]}
    assert ("10.96.0.10:80", "10.244.2.2:8080") in pairs
    text = render(rep, "text")
    assert "(NAT to 10.244.2.2:8080)" in text and "NAT: 10.244.1.2:" in text


def test_slow_hop_stands_out(tmp_path: Path) -> None:
    """Every echo request held 5 ms before n2's bridge transmits it: that hop is named."""
    n1, n2 = files("clean")
    tr = load(files("clean"))
    p = tr.packets
    req = p[(p["proto"] == 1) & (p["direction"] == "forward")]["packet"]
    segs = tr.segments[tr.segments["packet"].isin(req) & (tr.segments["node"] == "n2")]
    tracks = set(segs["track"].astype(int))
    h = tr.hops[tr.hops["packet"].isin(req)]
    cut = h[(h["hop"] == "bridge tx")].set_index("packet")["ts_ns"]
    cut_of = {int(t): int(cut[pk]) for pk, t in zip(segs["packet"], segs["track"], strict=True)}

    def hold(rec: dict) -> list[dict]:  # type: ignore[type-arg]
        t = rec["track"]
        if t in tracks and rec["ts_ns"] >= cut_of[t]:
            rec["ts_ns"] += 5_000_000
        return [rec]

    rep = build(load([n1, rewrite(n2, tmp_path / "n2.jsonl", hold)]))
    assert rules(rep) == ["latency"]
    d = rep["diagnosis"][0]
    assert "bridge tx" in d["title"] or "tx on cni0" in d["title"]
    assert "cni0" in d["title"] and "forward" in d["title"]
    assert "p50 5.0" in d["evidence"][0]


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_flows_and_hops() -> None:
    rep = report("dnat")
    html = render(rep, "html")
    parser = _Html()
    parser.feed(html)
    parser.close()
    tags = parser.tags
    for _, attrs in tags:
        for k in ("src", "href"):
            v = attrs.get(k) or ""
            assert not v.startswith(("http:", "https:", "//")), (k, v)
    assert not any(t in ("script", "link", "img", "iframe") for t, _ in tags)
    flow_rows = [a for t, a in tags if t == "tr" and a.get("class") == "flow"]
    assert len(flow_rows) == len(rep["flows"]) == 2
    hop_rows = [a for t, a in tags if t == "tr" and a.get("class") == "hop"]
    assert len(hop_rows) == sum(len(p["hops"]) for f in rep["flows"] for p in f["paths"])
    svgs = [a for t, a in tags if t == "svg"]
    assert {a.get("class") for a in svgs} == {"waterfall", "hopchart"}
    assert len(svgs) == 2 * sum(len(f["paths"]) for f in rep["flows"])
    for f in rep["flows"]:
        assert f"id=\"flow{f['flow']}\"" in html


def test_json_is_stable_and_complete() -> None:
    rep = report("fwd")
    back = json.loads(render(rep, "json"))
    assert back["schema"] == 1
    assert set(back) == {"schema", "hoptrace", "traced", "flows", "drops", "benign_frees",
                         "diagnosis"}
    assert set(back["traced"]) >= {"nodes", "events", "packets", "flows", "lost_events",
                                   "clocks"}
    f = back["flows"][0]
    assert set(f["e2e_ns"]) == {"p50", "p90", "p99"}
    hop = f["paths"][0]["hops"][1]
    assert set(hop) == {"index", "node", "netns", "ifname", "hop", "label", "change",
                        "packets", "offset_ns", "latency_ns", "cross_node", "uncertainty_ns",
                        "clamped"}


def test_text_fits_80_columns_and_markdown_has_tables() -> None:
    rep = report("clean")
    text = render(rep, "text")
    long = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not long, long
    md = render(rep, "md")
    assert "| flow | packets (fwd/rev) |" in md and md.count("```") % 2 == 0


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = hoptrace("report", *map(str, files("fwd")), "--format", "html", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("<!DOCTYPE html>") and "finding(s)" in r.stderr
    r = hoptrace("report", *map(str, files("rpf")), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["diagnosis"][0]["rule"] == "rp-filter"
    r = hoptrace("report", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and "no such trace file" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n")
    r = hoptrace("report", str(bad))
    assert r.returncode == 2 and "not a hoptrace trace file" in r.stderr
    r = hoptrace("report", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


@pytest.mark.parametrize("name", ["clean", "dnat", "fwd", "rpf", "mtu"])
def test_no_negative_latency_anywhere(name: str) -> None:
    rep = report(name)
    for f in rep["flows"]:
        for p in f["paths"]:
            for h in p["hops"]:
                assert all(v is None or v >= 0 for v in h["latency_ns"].values())


def _decap_then(n2: Path, out: Path, fn: Any) -> Path:
    """Copy n2's clean trace; ``fn(rec, state)`` sees every event of a packet decapsulated on
    n2's flannel.1 after the decapsulation (state: per-track dict) and returns its records."""
    state: dict[int, dict[str, Any]] = {}

    def edit(rec: dict[str, Any]) -> list[dict[str, Any]]:
        t = rec["track"]
        if t in state:
            return fn(rec, state[t])  # type: ignore[no-any-return]
        if (rec["netns"], rec["ifname"], rec["probe"]) == ("ht4dev-n2", "flannel.1",
                                                           "netif_receive_skb"):
            state[t] = {}
        return [rec]

    return rewrite(n2, out, edit)


def test_otherhost_after_decap_is_a_wrong_fdb(tmp_path: Path) -> None:
    """Every packet decapsulated on n2 is dropped there as OTHERHOST (its inner MAC is not
    n2's, as when n1's fdb sends n3's traffic to n2): the sender's fdb entry is named."""
    n1, n2 = files("clean")

    def drop(rec: dict[str, Any], st: dict[str, Any]) -> list[dict[str, Any]]:
        if st:
            return []  # nothing after the drop
        st["dropped"] = True
        return [dict(rec, probe="kfree_skb", ifname="flannel.1", nf_hook="", nf_pf="",
                     nf_prio=0, drop_reason="OTHERHOST", drop_reason_code=13)]

    rep = build(load([n1, _decap_then(n2, tmp_path / "n2.jsonl", drop)]))
    assert rules(rep) == ["wrong-fdb"]
    d = rep["diagnosis"][0]
    assert "10.244.2.2's packets to ht4dev-n2 (node n2)" in d["title"]
    assert "bridge fdb show dev flannel.1" in d["detail"] and "ht4dev-n1 (node n1)" in d["detail"]
    ev = " ".join(d["evidence"])
    assert "encapsulated on flannel.1 in ht4dev-n1 (node n1), outer " in ev
    assert "reason OTHERHOST" in ev
    assert d["packets"] == sum(r["packets"] for r in rep["drops"] if r["reason"] == "OTHERHOST")


@pytest.mark.parametrize(("extra_ns", "slow"), [(200_000, True), (30_000, False)])
def test_slow_netfilter_hook_is_named(tmp_path: Path, extra_ns: int, slow: bool) -> None:
    """Every decapsulated packet held ``extra_ns`` inside n2's PRE_ROUTING hook (as by a long
    rule chain): 200 us is named (the latency rule wants 1 ms), 30 us is not."""
    n1, n2 = files("clean")

    def hold(rec: dict[str, Any], st: dict[str, Any]) -> list[dict[str, Any]]:
        if st:
            rec["ts_ns"] += extra_ns
        elif rec["probe"] == "nf_hook_first" and rec["nf_hook"] == "PRE_ROUTING":
            st["held"] = True  # this event enters the hook; the ones after leave later
        return [rec]

    rep = build(load([n1, _decap_then(n2, tmp_path / "n2.jsonl", hold)]))
    if not slow:
        assert rules(rep) == []
        return
    assert rules(rep) == ["slow-rules"]
    d = rep["diagnosis"][0]
    assert "PRE_ROUTING on flannel.1 in netns ht4dev-n2 (node n2)" in d["title"]
    assert "iptables-save | wc -l" in d["detail"] and "IPVS" in d["detail"]
    assert "on flannel.1" in d["evidence"][0] and "median 20" in d["evidence"][0]


def with_decision(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Formatting only: the fwd drop as a kernel with table probes records it (a table event
    just before the drop, and the drop naming its decision); the kernel facts of these fields
    are tested against real kernels in tests/guest/test_nf_verdict.py."""
    if rec["probe"] != "kfree_skb" or rec["drop_reason"] != "NETFILTER_DROP":
        return [rec]
    decision = {"nf_hook": "FORWARD", "nf_pf": "ipv4", "verdict": "DROP", "nf_table": "filter",
                "nf_chain": "FORWARD"}
    table = {**rec, **decision, "probe": "nft_do_chain", "ts_ns": rec["ts_ns"] - 1000,
             "drop_reason": "", "drop_reason_code": 0}
    return [table, {**rec, **decision}]


def test_forward_drop_names_table_and_chain_when_the_kernel_tells(tmp_path: Path) -> None:
    n1, n2 = files("fwd")
    paths = [n1, rewrite(n2, tmp_path / "fwd-n2.jsonl", with_decision)]
    tr = load(paths)
    rep = build(tr)
    assert rules(rep) == ["netfilter-drop"]
    d = rep["diagnosis"][0]
    assert "table filter, chain FORWARD" in d["title"] and "FORWARD hook" in d["title"]
    assert "iptables -t filter -S FORWARD" in d["detail"] and "nft list chain ip filter FORWARD" \
        in d["detail"]
    assert "(filter/FORWARD, verdict DROP)" in d["evidence"][0]
    drop = rep["drops"][0]
    assert (drop["table"], drop["chain"], drop["verdict"]) == ("filter", "FORWARD", "DROP")
    assert "inside nf:FORWARD (filter/FORWARD, verdict DROP)" in render(rep, "text")
    assert "(filter/FORWARD, verdict DROP)" in render(rep, "html")
    assert json.loads(render(rep, "json"))["drops"][0]["chain"] == "FORWARD"
    p = tr.packets[tr.packets["fate"] == "dropped"]
    assert set(p["drop_table"]) == {"filter"} and set(p["drop_chain"]) == {"FORWARD"}
    h = tr.hops[tr.hops["probe"] == "nft_do_chain"]
    assert set(h["hop"].astype(str)) == {"netfilter verdict"}
    assert set(h["change"].astype(str)) == {"filter/FORWARD, verdict DROP"}
    # without table probes the diagnosis says only the hook is known, and why
    plain = report("fwd")
    assert "table" not in plain["diagnosis"][0]["title"]
    assert plain["drops"][0]["table"] == ""


def test_chain_text_shows_the_decision(tmp_path: Path) -> None:
    from tracer.chains import replay
    from tracer.tracefile import read_trace

    path = rewrite(files("fwd")[1], tmp_path / "fwd-n2.jsonl", with_decision)
    chains = [c for c in replay(read_trace(path)) if c.dropped]
    assert chains
    for c in chains:
        assert c.fate().startswith("dropped in filter/FORWARD, verdict DROP: NETFILTER_DROP")
        assert c.last.change.endswith("inside nf:FORWARD: filter/FORWARD, verdict DROP")
        verdict = [s for s in c.steps if s.event.probe == "nft_do_chain"]
        assert [s.hop.label for s in verdict] == ["nf:FWD"]
