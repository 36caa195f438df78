"""The report as one self-contained HTML file: inline CSS and SVG, no scripts, no fetches.

Per flow and direction, a latency waterfall (each hop a bar from its median offset for its
median latency) and a per-hop latency chart (p50 bar, p90 whisker).
"""

from __future__ import annotations

from html import escape
from typing import Any

from tracer.chains import decision_text
from tracer.report import MAX_FLOWS_SHOWN, _clock_text, us


def _decided(d: dict[str, Any]) -> str:
    """`` (filter/FORWARD, verdict DROP)`` when a table probe saw the decision, else ""."""
    return f" ({decision_text(d['table'], d['chain'], d['verdict'])})" if d.get("table") else ""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left;font-size:13px}th{background:#f4f4f4}td.n{text-align:right}
.diag{border-left:4px solid #c33;background:#fff4f4;padding:.5em 1em;margin:.7em 0}
.ok{border-left:4px solid #393;background:#f4fff4;padding:.5em 1em}
.change{color:#666;font-size:12px}svg text{font:11px monospace}code{background:#f4f4f4}
"""


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _waterfall(path: dict[str, Any]) -> str:
    hops = path["hops"]
    if not hops:
        return ""
    total = max(h["offset_ns"] for h in hops) or 1
    row, left, width = 16, 330, 520
    height = row * len(hops) + 24
    out = [f'<svg class="waterfall" xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}"'
           f' height="{height}" role="img"><title>latency waterfall</title>']
    for i, h in enumerate(hops):
        y = 4 + i * row
        p50 = h["latency_ns"]["p50"] or 0.0
        start = max(h["offset_ns"] - p50, 0.0)
        x = left + width * start / total
        w = max(width * p50 / total, 1.0)
        color = "#d55" if h["hop"] == "drop" else ("#e93" if h["cross_node"] else "#48c")
        label = f"{h['node']} {h['netns'][:14]} {h['ifname'][:10]} {h['label']}"
        out.append(f'<text x="2" y="{y + 11}">{_e(label)}</text>')
        out.append(f'<rect class="hop" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 4}" '
                   f'fill="{color}"><title>{_e(h["hop"])}: {us(p50)} at '
                   f'{us(h["offset_ns"])}</title></rect>')
        out.append(f'<text x="{left + width + 4}" y="{y + 11}">{us(h["offset_ns"])}</text>')
    out.append("</svg>")
    return "".join(out)


def _hop_chart(path: dict[str, Any]) -> str:
    hops = [h for h in path["hops"] if h["index"] > 0]
    if not hops:
        return ""
    top = max((h["latency_ns"]["p90"] or 0.0) for h in hops) or 1
    row, left, width = 16, 330, 520
    out = [f'<svg class="hopchart" xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}"'
           f' height="{row * len(hops) + 8}" role="img"><title>per-hop latency</title>']
    for i, h in enumerate(hops):
        y = 4 + i * row
        q = h["latency_ns"]
        p50, p90 = q["p50"] or 0.0, q["p90"] or 0.0
        label = f"{h['node']} {h['netns'][:14]} {h['ifname'][:10]} {h['label']}"
        out.append(f'<text x="2" y="{y + 11}">{_e(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{max(width * p50 / top, 1):.1f}" '
                   f'height="{row - 4}" fill="#6a6"><title>p50 {us(p50)}</title></rect>')
        x90 = left + width * p90 / top
        out.append(f'<line x1="{x90:.1f}" x2="{x90:.1f}" y1="{y}" y2="{y + row - 4}" '
                   f'stroke="#333"><title>p90 {us(p90)}</title></line>')
        out.append(f'<text x="{left + width + 4}" y="{y + 11}">{us(p50)}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(rep: dict[str, Any]) -> str:
    t = rep["traced"]
    o = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         "<title>hoptrace report</title>", f"<style>{CSS}</style></head><body>",
         "<h1>hoptrace report</h1>", "<h2>What was traced</h2>",
         "<table><tr><th>node</th><th>host</th><th>kernel</th><th>filter</th><th>netns</th>"
         "<th>events</th><th>duration</th><th>lost</th><th>probes</th></tr>"]
    for n in t["nodes"]:
        lost = ", ".join(f"{k} {v}" for k, v in n["lost"].items()) or "none"
        probes = ", ".join(f"{p['point']} ({p['mechanism'] or 'none'})" for p in n["probes"])
        o.append(f"<tr><td>{_e(n['node'])}</td><td>{_e(n['hostname'])}</td>"
                 f"<td>{_e(n['kernel'])}</td><td><code>{_e(n['filter'] or 'all')}</code></td>"
                 f"<td>{_e(', '.join(n['netns']))}</td><td class=n>{_e(n['events'])}</td>"
                 f"<td class=n>{_e(n['duration_s'])}s</td><td>{_e(lost)}</td>"
                 f"<td>{_e(probes)}</td></tr>")
    o.append("</table><ul>")
    for c in t["clocks"]:
        o.append(f"<li>clock {_e(_clock_text(c))}</li>")
    o.append(f"</ul><p>{t['packets']} packets in {t['flows']} flows over {us(t['span_ns'])}"
             + (f"; <b>lost {t['lost_events']} events</b>" if t["lost_events"] else "")
             + "</p><h2>Diagnosis</h2>")
    if not rep["diagnosis"]:
        o.append('<p class="ok">No problems found: no drops, no standout hop.</p>')
    for d in rep["diagnosis"]:
        o.append(f'<div class="diag" data-rule="{_e(d["rule"])}"><b>{_e(d["title"])}</b>'
                 f"<p>{_e(d['detail'])}</p><ul>"
                 + "".join(f"<li>{_e(e)}</li>" for e in d["evidence"]) + "</ul></div>")
    o.append("<h2>Flows</h2><table><tr><th>#</th><th>flow</th><th>client</th><th>server</th>"
             "<th>NAT to</th><th>packets</th><th>drops</th><th>e2e p50</th><th>p90</th>"
             "<th>p99</th><th>nodes</th></tr>")
    for f in rep["flows"][:MAX_FLOWS_SHOWN]:
        e = f["e2e_ns"]
        o.append(f'<tr class="flow"><td><a href="#flow{f["flow"]}">{f["flow"]}</a></td>'
                 f"<td>{_e(f['name'])}</td><td>{_e(f['client'])} {_e(f['client_pod'])}</td>"
                 f"<td>{_e(f['server'])} {_e(f['server_pod'])}</td><td>{_e(f['nat_to'])}</td>"
                 f"<td class=n>{f['packets']} ({f['forward']}/{f['reverse']})</td>"
                 f"<td class=n>{f['drops']}</td><td class=n>{us(e['p50'])}</td>"
                 f"<td class=n>{us(e['p90'])}</td><td class=n>{us(e['p99'])}</td>"
                 f"<td>{_e(f['nodes'])}</td></tr>")
    o.append("</table>")
    if len(rep["flows"]) > MAX_FLOWS_SHOWN:
        o.append(f"<p>... and {len(rep['flows']) - MAX_FLOWS_SHOWN} more flows (all in the "
                 "JSON report)</p>")
    for f in rep["flows"]:
        if not f["paths"]:
            continue
        o.append(f'<h2 id="flow{f["flow"]}">Flow {f["flow"]}: {_e(f["name"])}</h2>')
        for n in f["nat"]:
            o.append(f"<p>NAT: <code>{_e(n['before'])}</code> &rarr; "
                     f"<code>{_e(n['after'])}</code></p>")
        for p in f["paths"]:
            o.append(f"<h3>{_e(p['direction'])} ({p['packets']} packets)</h3>")
            o.append("<table><tr><th>#</th><th>node</th><th>netns</th><th>device</th>"
                     "<th>hop</th><th>p50</th><th>p90</th><th>p99</th><th>note</th></tr>")
            for h in p["hops"]:
                q = h["latency_ns"]
                note = h["change"]
                if h["cross_node"]:
                    unc = h["uncertainty_ns"]
                    note += f" crosses nodes, +/- {us(unc) if unc is not None else '?'}"
                if h["clamped"]:
                    note += " (clamped at 0)"
                o.append(f'<tr class="hop"><td class=n>{h["index"]}</td><td>{_e(h["node"])}'
                         f"</td><td>{_e(h['netns'])}</td><td>{_e(h['ifname'])}</td>"
                         f"<td>{_e(h['label'])} {_e(h['hop'])}</td>"
                         f"<td class=n>{us(q['p50'])}</td><td class=n>{us(q['p90'])}</td>"
                         f"<td class=n>{us(q['p99'])}</td>"
                         f'<td class="change">{_e(note.strip())}</td></tr>')
            o.append("</table><p>Latency waterfall (median packet):</p>")
            o.append(_waterfall(p))
            o.append("<p>Per-hop latency (bar p50, line p90):</p>")
            o.append(_hop_chart(p))
    o.append("<h2>Drops</h2>")
    if not rep["drops"]:
        o.append("<p>none</p>")
    else:
        o.append("<table><tr><th>packets</th><th>reason</th><th>hook</th><th>netns</th>"
                 "<th>node</th><th>after</th></tr>")
        for d in rep["drops"]:
            o.append(f"<tr><td class=n>{d['packets']}</td><td>{_e(d['reason'])}</td>"
                     f"<td>{_e(d['hook'])}{_e(_decided(d))}</td><td>{_e(d['netns'])}</td>"
                     f"<td>{_e(d['node'])}"
                     f"</td><td>{_e(d['after'])}</td></tr>")
        o.append("</table>")
    if rep["benign_frees"]:
        o.append("<p>Not drops (normal end of life): " + _e(", ".join(
            f"{b['reason']} x{b['packets']} in {b['netns']}" for b in rep["benign_frees"]))
            + "</p>")
    o.append(f"<p><small>hoptrace {_e(rep['hoptrace'])}, report schema {rep['schema']}"
             "</small></p></body></html>")
    return "\n".join(o) + "\n"
