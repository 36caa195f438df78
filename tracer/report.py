"""``hoptrace report``'s content: one JSON-able model, rendered as text, Markdown or HTML.

:func:`build` turns correlated traces (tracer/correlate.py) into the report model whose JSON
form is documented in docs/report.md (``schema`` 1; keys are only ever added). :func:`render`
formats it; HTML lives in tracer/report_html.py, the diagnosis rules in
tracer/report_diagnose.py.
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

import numpy as np
import pandas as pd

from tracer import __version__
from tracer.chains import decision_text
from tracer.correlate import Traces, str_values
from tracer.hops import HopKind
from tracer.report_diagnose import diagnose

REPORT_SCHEMA = 1
FORMATS = ("text", "md", "html", "json")


def _q(values: Any) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None}
    p = np.percentile(v, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _num(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


def _paths(tr: Traces, flows: Any = None) -> dict[int, list[dict[str, Any]]]:
    """Per flow and direction: the hops in path order with latency percentiles.

    Netfilter "accept" (last-priority) steps are left out; a hop's latency is the time since
    the previous hop shown. The same place seen twice in one packet is two hops. ``flows``:
    only these flow ids (default all).
    """
    h = tr.hops
    out: dict[int, list[dict[str, Any]]] = {}
    if h.empty or tr.packets.empty:
        return out
    h = h[h["hop"] != str(HopKind.NETFILTER_OUT)]
    pk = tr.packets.set_index("packet")
    flow = pk["flow"].reindex(h["packet"]).to_numpy()
    keep = np.isin(flow, list(flows)) if flows is not None else np.ones(len(h), bool)
    h = h[keep]
    pkt = h["packet"].to_numpy()
    off = h["offset_ns"].to_numpy(np.int64)
    first = np.r_[True, pkt[1:] != pkt[:-1]]
    lat = np.r_[0, np.diff(off)].astype(np.float64)
    lat[first] = 0
    place = ["node", "netns", "ifname", "label", "hop"]
    d = pd.DataFrame({c: str_values(h[c]) for c in place})
    d["flow"] = flow[keep]
    d["direction"] = pk["direction"].reindex(pkt).to_numpy()
    d["packet"] = pkt
    d["off"] = off
    d["step"] = h["step"].to_numpy()
    d["lat"] = lat
    d["cross"] = h["cross_node"].to_numpy()
    d["unc"] = h["uncertainty_ns"].to_numpy(np.float64)
    d["clamped"] = h["clamped"].to_numpy()
    d["change"] = str_values(h["change"])
    d["nth"] = d.groupby(["packet", *place], sort=False).cumcount()
    key = ["flow", "direction", *place, "nth"]
    g = d.groupby(key, sort=False)
    agg = g.agg(packets=("packet", "nunique"), off=("off", "median"), step=("step", "median"),
                cross=("cross", "any"), unc=("unc", "max"), clamped=("clamped", "any"))
    q = g["lat"].quantile([0.5, 0.9, 0.99]).unstack()
    agg = agg.join(q)
    ch = d[d["change"] != ""].groupby(key, sort=False)["change"].first()
    agg = agg.join(ch.rename("change")).reset_index()
    agg["change"] = agg["change"].fillna("")
    agg = agg.sort_values(["flow", "direction", "off", "step"], kind="stable")
    npk = d.groupby(["flow", "direction"])["packet"].nunique()
    cur: tuple[int, str] | None = None
    hops: list[dict[str, Any]] = []
    for r in agg.itertuples(index=False):
        fd = (int(r.flow), str(r.direction))
        if fd != cur:
            cur = fd
            hops = []
            out.setdefault(fd[0], []).append(
                {"direction": fd[1], "packets": int(npk[fd]), "hops": hops})
        i = len(hops)
        lq = (
            {"p50": float(r[-4]), "p90": float(r[-3]), "p99": float(r[-2])}
            if i else {"p50": 0.0, "p90": 0.0, "p99": 0.0}
        )
        hops.append({
            "index": i, "node": r.node, "netns": r.netns, "ifname": r.ifname,
            "hop": r.hop, "label": r.label, "change": r.change, "packets": int(r.packets),
            "offset_ns": float(r.off), "latency_ns": lq, "cross_node": bool(r.cross),
            "uncertainty_ns": (None if (r.cross and (r.unc != r.unc)) else
                               (float(r.unc) if r.cross else 0.0)),
            "clamped": bool(r.clamped),
        })
    return out


def _drops(tr: Traces) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    h = tr.hops
    if h.empty:
        return [], []
    pk = tr.packets.set_index("packet")
    real: list[dict[str, Any]] = []
    benign: list[dict[str, Any]] = []
    for sel, out in ((h["is_drop"], real), (h["benign"], benign)):
        d = h[sel]
        if d.empty:
            continue
        prev = h.loc[np.maximum(d.index.to_numpy() - 1, 0)]
        df = pd.DataFrame({
            "node": d["node"].astype(str).to_numpy(), "netns": d["netns"].astype(str).to_numpy(),
            "ifname": d["ifname"].astype(str).to_numpy(),
            "after": (prev["label"].astype(str) + " " + prev["ifname"].astype(str)).to_numpy(),
            "reason": d["drop_reason"].astype(str).to_numpy(),
            "hook": d["drop_hook"].astype(str).to_numpy(),
            # the table and base chain that decided, where a table probe saw it ("" else)
            "table": d["nf_table"].astype(str).to_numpy(),
            "chain": d["nf_chain"].astype(str).to_numpy(),
            "verdict": d["verdict"].astype(str).to_numpy(),
            "flow": pk.loc[d["packet"], "flow"].to_numpy()})
        keys = ["node", "netns", "ifname", "after", "reason", "hook", "table", "chain", "verdict"]
        for key, g in df.groupby(keys, sort=False):
            out.append({**dict(zip(keys, key, strict=True)),
                        "packets": len(g), "flows": sorted({int(f) for f in g["flow"]})})
        out.sort(key=lambda r: -r["packets"])
    return real, benign


#: Flows whose paths are worked out and shown (flows with drops first, then the busiest).
MAX_PATHS = 50
#: Flows listed one by one in text/markdown/HTML (all are in JSON).
MAX_FLOWS_SHOWN = 100


def build(tr: Traces, max_paths: int = MAX_PATHS) -> dict[str, Any]:
    """The report model (docs/report.md)."""
    nodes = []
    for n in tr.nodes:
        hd = n.header
        nodes.append({
            "file": n.path, "node": n.node, "hostname": hd.get("hostname"),
            "kernel": hd.get("kernel"), "filter": hd.get("filter", ""),
            "outer": bool(hd.get("outer", False)), "netns": hd.get("netns", []),
            "probes": [{"point": p.get("point"), "mechanism": p.get("mechanism")}
                       for p in hd.get("probes", [])],
            "duration_s": n.summary.get("duration_s"), "events": n.summary.get("events"),
            "lost": n.lost, "started_unix_ns": hd.get("started_unix_ns"),
        })
    f = tr.flows
    p = tr.packets
    chosen = None
    if not f.empty and len(f) > max_paths:
        chosen = list(f.sort_values(["drops", "packets"], ascending=False, kind="stable")[
            "flow"].head(max_paths))
    paths = _paths(tr, chosen)
    flows = []
    natp = p[p["nat"]].drop_duplicates(["flow", "tuple_before", "tuple_after"]) if len(
        p) else p
    nat_of: dict[int, list[dict[str, str]]] = {}
    for k, b, a in zip(natp["flow"].to_numpy(), natp["tuple_before"], natp["tuple_after"],
                       strict=True):
        nat_of.setdefault(int(k), []).append({"before": b, "after": a})
    clamped = p.groupby("flow")["clamped"].sum() if len(p) else {}
    for r in (f.to_dict("records") if not f.empty else []):
        flows.append({
            "flow": int(r["flow"]), "name": r["name"], "proto": r["proto"],
            "client": r["client"], "client_pod": r["client_pod"], "server": r["server"],
            "server_pod": r["server_pod"], "nat_to": r["nat_to"],
            "packets": int(r["packets"]), "forward": int(r["forward"]),
            "reverse": int(r["reverse"]), "drops": int(r["drops"]), "nodes": r["nodes"],
            "e2e_ns": {"p50": _num(r["e2e_p50_ns"]), "p90": _num(r["e2e_p90_ns"]),
                       "p99": _num(r["e2e_p99_ns"])},
            "nat": nat_of.get(int(r["flow"]), []),
            "paths": paths.get(int(r["flow"]), []),
            "clamped_packets": int(clamped.get(r["flow"], 0)),
        })
    real, benign = _drops(tr)
    t0 = int(p["first_ns"].min()) if not p.empty else 0
    t1 = int(p["first_ns"].max()) if not p.empty else 0
    lost_total = sum(sum(n.lost.values()) for n in tr.nodes)
    return {
        "schema": REPORT_SCHEMA,
        "hoptrace": __version__,
        "traced": {
            "nodes": nodes,
            "events": int(len(tr.events)),
            "packets": int(len(p)),
            "flows": int(len(f)),
            "flows_with_paths": int(len(paths)),
            "span_ns": t1 - t0,
            "lost_events": lost_total,
            "clocks": [c.to_json() for c in tr.clocks.values()],
        },
        "flows": flows,
        "drops": real,
        "benign_frees": benign,
        "diagnosis": diagnose(tr, paths),
    }


def us(ns: Any) -> str:
    """A duration for people: 12.3us, 4.56ms, '-' when unknown."""
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    return f"{ns / 1e6:.2f}ms" if ns >= 1e6 else f"{ns / 1e3:.1f}us"


def _clock_text(c: dict[str, Any]) -> str:
    if c["method"] == "reference":
        return f"{c['node']}: reference clock"
    unc = "unknown" if c["uncertainty_ns"] is None else us(c["uncertainty_ns"])
    return (f"{c['node']}: offset {c['offset_ns'] / 1e3:+.1f}us +/- {unc} ({c['method']}, "
            f"{c['samples']} packets{'' if c['consistent'] else ', INCONSISTENT'})")


def _hop_name(hp: dict[str, Any]) -> str:
    """``nf:FWD`` for netfilter hooks (the label says which), the hop name otherwise."""
    return hp["label"] if hp["hop"].startswith("netfilter") else hp["hop"]


def render_text(rep: dict[str, Any], md: bool = False) -> str:
    """Text for a terminal (80 columns) or Markdown for a pull request."""
    L: list[str] = []
    h1 = (lambda s: L.extend([f"## {s}", ""])) if md else (lambda s: L.extend([s, "=" * len(s)]))
    code = "```" if md else ""
    t = rep["traced"]
    L.append("# hoptrace report" if md else "hoptrace report")
    L.append("")
    h1("What was traced")
    for n in t["nodes"]:
        probes = ", ".join(f"{p['point']}({p['mechanism'] or 'none'})" for p in n["probes"])
        lost = ", ".join(f"{k} {v}" for k, v in n["lost"].items()) or "none"
        L.extend(textwrap.wrap(
            f"{'- ' if md else ''}node {n['node']} ({n['hostname']}, kernel {n['kernel']}): "
            f"filter '{n['filter'] or 'all'}', {n['events']} events in {n['duration_s']}s, "
            f"lost: {lost}", 78, subsequent_indent="  "))
        L.extend(textwrap.wrap(f"netns: {', '.join(n['netns'])}", 78, initial_indent="  ",
                               subsequent_indent="    "))
        L.extend(textwrap.wrap(f"probes: {probes}", 78, initial_indent="  ",
                               subsequent_indent="    "))
    for c in t["clocks"]:
        L.append(f"{'- ' if md else ''}clock {_clock_text(c)}")
    L.extend(textwrap.wrap(
        f"{t['packets']} packets in {t['flows']} flows over {us(t['span_ns'])}"
        + (f"; LOST {t['lost_events']} events: results are incomplete"
           if t["lost_events"] else ""), 78))
    L.append("")
    h1("Diagnosis")
    if not rep["diagnosis"]:
        L.append("No problems found: no drops, no standout hop.")
    for i, d in enumerate(rep["diagnosis"], 1):
        L.extend(textwrap.wrap(f"{i}. {d['title']}", 78, subsequent_indent="   "))
        L.extend(textwrap.wrap(d["detail"], 78, initial_indent="   ", subsequent_indent="   "))
        for e in d["evidence"]:
            L.extend(textwrap.wrap(e, 78, initial_indent="   - ", subsequent_indent="     "))
    L.append("")
    h1("Flows")
    if md:
        L.append("| flow | packets (fwd/rev) | drops | e2e p50 | p90 | p99 | nodes |")
        L.append("|---|---|---|---|---|---|---|")
    shown = rep["flows"][:MAX_FLOWS_SHOWN]
    for f in shown:
        e = f["e2e_ns"]
        if md:
            L.append(f"| {f['name']} | {f['packets']} ({f['forward']}/{f['reverse']}) | "
                     f"{f['drops']} | {us(e['p50'])} | {us(e['p90'])} | {us(e['p99'])} | "
                     f"{f['nodes']} |")
        else:
            L.append(f"#{f['flow']} {f['name']}")
            L.append(f"   {f['client']} -> {f['server']}"
                     + (f" (NAT to {f['nat_to']})" if f["nat_to"] else "")
                     + f"  packets {f['packets']} ({f['forward']}>/{f['reverse']}<) "
                     f"drops {f['drops']}")
            L.append(f"   e2e p50 {us(e['p50'])} p90 {us(e['p90'])} p99 {us(e['p99'])}"
                     f"  nodes {f['nodes']}")
    if len(rep["flows"]) > len(shown):
        L.append(f"... and {len(rep['flows']) - len(shown)} more flows (all in --format json)")
    L.append("")
    for f in rep["flows"]:
        if not f["paths"]:
            continue
        h1(f"Path of flow #{f['flow']}: {f['name']}")
        for n in f["nat"]:
            L.append(f"NAT: {n['before']} -> {n['after']}")
        for p in f["paths"]:
            L.append(f"{p['direction']} ({p['packets']} packets):")
            if code:
                L.append(code)
            L.append(f"{'#':>3} {'node':<4} {'netns':<11} {'device':<10} {'hop':<13} "
                     f"{'p50':>8} {'p90':>8} {'p99':>8}")
            for hp in p["hops"]:
                q = hp["latency_ns"]
                mark = ""
                if hp["cross_node"]:
                    unc = hp["uncertainty_ns"]
                    mark = " +-" + (us(unc) if unc is not None else "?")
                if hp["clamped"]:
                    mark += " (clamped)"
                L.append(f"{hp['index']:>3} {hp['node'][:4]:<4} {hp['netns'][-11:]:<11} "
                         f"{hp['ifname'][:10]:<10} {_hop_name(hp)[:13]:<13} "
                         f"{us(q['p50']):>8} {us(q['p90']):>8} {us(q['p99']):>8}{mark}")
                if hp["change"]:
                    L.append(f"{'':>9}{hp['change']}")
            if code:
                L.append(code)
        L.append("")
    h1("Drops")
    if not rep["drops"]:
        L.append("none")
    for d in rep["drops"]:
        inside = f" inside nf:{d['hook']}" if d["hook"] else ""
        if d.get("table"):
            inside += f" ({decision_text(d['table'], d['chain'], d['verdict'])})"
        L.append(f"{'- ' if md else ''}{d['packets']} x {d['reason']}{inside} in {d['netns']} "
                 f"(node {d['node']}) after {d['after']}")
    if rep["benign_frees"]:
        L.extend(textwrap.wrap("not drops (normal end of life): " + ", ".join(
            f"{b['reason']} x{b['packets']} in {b['netns']}" for b in rep["benign_frees"]),
            78, subsequent_indent="  "))
    return "\n".join(L).rstrip() + "\n"


def render(rep: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rep, indent=1, sort_keys=False) + "\n"
    if fmt == "html":
        from tracer.report_html import render_html

        return render_html(rep)
    return render_text(rep, md=fmt == "md")
