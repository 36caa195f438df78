"""Diagnosis: causes a person can act on, each with its evidence (docs/report.md, "rules").

Every rule reads the correlated tables (tracer/correlate.py) and returns findings::

    {"rule": "netfilter-drop", "title": "...", "detail": "... what to do ...",
     "evidence": ["3 packets of a1 -> b1 icmp dropped in htlab-n2 ..."], "packets": 3,
     "flows": [0]}

Benign frees (consume_skb, a ping reply's NO_SOCKET after delivery to the raw socket's clone,
socket queue purges) are never drops (tracer.hops.is_benign), so they trigger nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer.chains import decision_text
from tracer.correlate import Traces, str_values
from tracer.hops import HopKind
from tracer.names import Topology

Finding = dict[str, Any]

NO_ROUTE = {"IP_OUTNOROUTES", "IP_INNOROUTES", "IP_INADDRERRORS", "NEIGH_FAILED",
            "NEIGH_QUEUEFULL", "NEIGH_CREATEFAIL", "NEIGH_DEAD", "NEIGH_HH_FILLFAIL"}
MTU_REASONS = {"PKT_TOO_BIG", "FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "DUP_FRAG", "SKB_GSO_SEG"}
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
#: Bytes a tunnel device adds to what it carries (outer IPv4; Geneve and GRE without options)
TUNNEL_OVERHEAD = {"vxlan": VXLAN_OVERHEAD, "geneve": 50, "gretap": 38, "gre": 24, "ipip": 20,
                   "tun": 28}
#: A hop "stands out" when its median is this many times the path's typical hop and at least
#: OUTLIER_MIN_NS: lab hops take 1-100 us, so only real stalls (ms) are reported.
OUTLIER_FACTOR = 10.0
OUTLIER_MIN_NS = 1_000_000
#: A netfilter hook is slow when the median time inside it is at least NF_SLOW_MIN_NS and
#: NF_SLOW_FACTOR times the median of every other hook traversal of the same kind of packet
#: (lab: 1-25 us per hook; 10000 iptables rules in front of a Service rule: 100-300 us).
NF_SLOW_MIN_NS = 50_000
NF_SLOW_FACTOR = 4.0
NF_SLOW_MIN_SAMPLES = 2
#: conntrack: an idle gap this long before a connection's first dropped packet is named as
#: evidence (conntrack's established timeout is 5 days by default, but NAT gateways, cloud
#: firewalls and tuned nodes use minutes or less).
CT_IDLE_MIN_S = 1.0


def _us(ns: float) -> str:
    if ns != ns:  # NaN
        return "?"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.1f} us"


def _drops(tr: Traces) -> pd.DataFrame:
    """Real drops, one row per dropped packet, with the step before the drop."""
    h = tr.hops
    if h.empty:
        return h
    d = h[h["is_drop"]]
    if d.empty:
        return d
    prev = h.loc[np.maximum(d.index.to_numpy() - 1, 0)]
    out = d.assign(prev_hop=prev["hop"].astype(str).to_numpy(),
                   prev_ifname=prev["ifname"].astype(str).to_numpy(),
                   prev_label=prev["label"].astype(str).to_numpy())
    pk = tr.packets.set_index("packet")
    out["flow"] = pk.loc[out["packet"], "flow"].to_numpy()
    out["summary"] = pk.loc[out["packet"], "summary"].to_numpy()
    return out


def _flow_names(tr: Traces, flows: Any) -> list[str]:
    names = tr.flows.set_index("flow")["name"]
    return [str(names.get(int(f), f)) for f in sorted(set(flows))]


def _finding(rule: str, title: str, detail: str, evidence: list[str], packets: int,
             flows: Any) -> Finding:
    return {"rule": rule, "title": title, "detail": detail, "evidence": evidence[:8],
            "packets": int(packets), "flows": sorted({int(f) for f in flows})}


def netfilter_drops(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    out = []
    nf = d[d["drop_reason"].astype(str) == "NETFILTER_DROP"]
    text = ["node", "netns", "drop_hook", "nf_table", "nf_chain", "verdict"]
    for (node, netns, hook, table, chain, verdict), g in nf.groupby(
            [nf[c].astype(str) if c in nf else pd.Series("", index=nf.index) for c in text]):
        conn = _conntrack_like(tr, g, hook)
        if conn:
            out.append(conn)
            continue
        where = f"the {hook} hook" if hook else "a netfilter hook"
        cmd = {"FORWARD": "FORWARD", "LOCAL_IN": "INPUT", "LOCAL_OUT": "OUTPUT",
               "PRE_ROUTING": "PREROUTING", "POST_ROUTING": "POSTROUTING"}.get(hook, "")
        decided = f" ({decision_text(table, chain, verdict)})" if table else ""
        ev = [f"{len(g)} packet(s) of {', '.join(_flow_names(tr, g['flow']))} dropped with "
              f"reason NETFILTER_DROP inside nf:{hook or '?'}{decided} on "
              f"{g['prev_ifname'].iloc[0]} (netns {netns}, node {node})"]
        ev += [f"packet: {s}" for s in g["summary"].head(3)]
        if table:
            title = (f"A netfilter rule in table {table}, chain {chain} drops packets in "
                     f"{where} of netns {netns} (node {node})")
            detail = (f"The kernel's table probe saw table {table}, base chain {chain} return "
                      f"{verdict}: a rule in {chain} or in a chain it jumps to, or the chain's "
                      f"policy. List it: ip netns exec {netns} iptables -t {table} -S {chain} "
                      f"(iptables-legacy -t {table} -S {chain}), or nft list chain ip {table} "
                      f"{chain} (ip6 or inet for other families).")
        else:
            title = f"A netfilter rule drops packets in {where} of netns {netns} (node {node})"
            detail = ("No table probe saw the decision here (hoptrace doctor: ipt_do_table, "
                      "nft_do_chain), so only the hook is known. List the rules that apply: "
                      f"ip netns exec {netns} iptables -S {cmd} ; iptables -t mangle -S {cmd} ; "
                      "nft list ruleset (look for DROP/REJECT matching these packets).")
        out.append(_finding("netfilter-drop", title, detail, ev, len(g), g["flow"]))
    return out


def _conntrack_like(tr: Traces, g: pd.DataFrame, hook: str) -> Finding | None:
    """Netfilter drops of mid-connection TCP packets whose connection's SYN passed the same
    hook: a stateful rule (ctstate INVALID / conntrack table trouble), not a port block.

    Evidence: where (hook, device, netns, node, and the table/chain when a table probe saw
    it), the reason and count, the SYN that passed, how long the connection was idle before
    its first dropped packet (an idle gap longer than the conntrack timeout is the usual
    cause), and the dropped packets (retransmissions counted, not repeated)."""
    if hook == "":
        return None
    tcp = g[g["proto"] == 6]
    if tcp.empty or len(tcp) < len(g):
        return None
    flows = set(tcp["flow"])
    p = tr.packets[tr.packets["flow"].isin(flows)]
    passed = p[p["fate"] != "dropped"]
    syn_ok = passed[passed["summary"].str.contains(r"\[S\]", regex=True)]
    if syn_ok.empty:
        return None
    node, netns = str(g["node"].iloc[0]), str(g["netns"].iloc[0])
    table = str(g["nf_table"].iloc[0]) if "nf_table" in g else ""
    decided = (f" ({decision_text(table, str(g['nf_chain'].iloc[0]), str(g['verdict'].iloc[0]))})"
               if table and table != "nan" else "")
    ev = [f"{len(g)} TCP packet(s) of {', '.join(_flow_names(tr, g['flow']))} dropped with "
          f"reason NETFILTER_DROP inside nf:{hook}{decided} on {g['prev_ifname'].iloc[0]} "
          f"(netns {netns}, node {node})",
          f"the connection's SYN got through: {syn_ok['summary'].iloc[0]}"]
    first_drop = int(p.loc[p["fate"] == "dropped", "first_ns"].min())
    before = passed.loc[passed["first_ns"] < first_drop, "first_ns"]
    idle_s = (first_drop - int(before.max())) / 1e9 if len(before) else 0.0
    if idle_s >= CT_IDLE_MIN_S:
        ev.append(f"the connection was idle {idle_s:.1f} s before its first dropped packet: "
                  "longer than its conntrack entry lived?")
    counts = g["summary"].value_counts(sort=False)
    ev += [f"dropped: {s}" + (f" ({n} times: the sender retransmits)" if n > 1 else "")
           for s, n in counts.head(3).items()]
    return _finding(
        "conntrack",
        f"Connection tracking rejects established TCP packets in {hook} of netns {netns} "
        f"(node {node})",
        "The connection's SYN passed this hook but later packets were dropped there: a "
        "stateful rule (-m conntrack --ctstate INVALID -j DROP, which kube-proxy installs) "
        "meets packets whose conntrack entry expired (idle longer than "
        "nf_conntrack_tcp_timeout_established, and nf_conntrack_tcp_loose=0 refuses to pick "
        "the connection up again), was flushed or never matched (asymmetric path, NAT on one "
        f"direction only). Check: ip netns exec {netns} conntrack -S (the invalid counter "
        "grows) ; conntrack -L ; sysctl net.netfilter.nf_conntrack_tcp_timeout_established "
        "net.netfilter.nf_conntrack_tcp_loose.",
        ev, len(g), g["flow"])


def rp_filter(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    out = []
    rp = d[d["drop_reason"].astype(str) == "IP_RPFILTER"]
    for (netns, ifname), g in rp.groupby([rp["netns"].astype(str), rp["ifname"].astype(str)]):
        srcs = sorted(set(g["src"].astype(str)))
        out.append(_finding(
            "rp-filter",
            f"Reverse-path filter drops packets from {', '.join(srcs[:3])} arriving on "
            f"{ifname} in netns {netns}",
            "rp_filter (strict, 1) drops a packet when the route back to its source leaves "
            "through another interface. Fix the routes (asymmetric path, spoofed or "
            "unexpected source), or use loose mode: ip netns exec "
            f"{netns} sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ifname}."
            "rp_filter=2",
            [f"{len(g)} packet(s) dropped with reason IP_RPFILTER on {ifname} (netns {netns}, "
             f"node {g['node'].iloc[0]})"] + [f"packet: {s}" for s in g["summary"].head(3)],
            len(g), g["flow"]))
    return out


def no_route(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    out = []
    nr = d[d["drop_reason"].astype(str).isin(NO_ROUTE)]
    for (node, netns, reason), g in nr.groupby([nr["node"].astype(str), nr["netns"].astype(str),
                                                nr["drop_reason"].astype(str)]):
        neigh = reason.startswith("NEIGH")
        dsts = sorted(set(g["dst"].astype(str)))
        dev = str(g["ifname"].iloc[0] or g["prev_ifname"].iloc[0])
        # how long the packets sat in the neighbour's queue before it gave up (about
        # mcast_solicit x retrans_time: 3 s by default); for no-route, where the lookup ran
        waited = (f" after waiting {_us(float(g['dt_ns'].median()))} for resolution"
                  if neigh and "dt_ns" in g and g["dt_ns"].notna().any() else "")
        looked = (f" (a route lookup for packets arriving on {dev})"
                  if reason == "IP_INNOROUTES" else "")
        out.append(_finding(
            "neighbour" if neigh else "no-route",
            (f"Neighbour (ARP/NDP) resolution fails on {dev} in netns {netns} (node {node})"
             if neigh else f"No route in netns {netns} (node {node}) for "
             f"{', '.join(dsts[:3])}"),
            ("The next hop's link-layer address could not be resolved: check that the "
             "gateway/peer answers ARP (ip neigh show), static neighbour/fdb entries "
             f"(VXLAN: ip netns exec {netns} ip neigh show dev {dev} ; bridge fdb show dev "
             f"{dev}: Flannel and Calico write a permanent entry per remote node), and that "
             "the link is up."
             if neigh else
             f"Add the missing route: ip netns exec {netns} ip route get <dst> shows what "
             "the kernel chooses."),
            [f"{len(g)} packet(s) to {', '.join(dsts[:3])} dropped with reason {reason} on "
             f"{dev}{looked} in netns {netns} (node {node}){waited}"]
            + [f"packet: {s}" for s in g["summary"].head(3)],
            len(g), g["flow"]))
    ev = tr.events
    if not ev.empty:
        c = _icmp_errors(tr, codes=(0, 1, 6, 7))
        if len(c):
            out.append(_finding(
                "no-route", "Destination unreachable (no route or host down) was signalled",
                "A router or host answered with ICMP destination unreachable "
                "(net/host unknown or unreachable): check routes towards the quoted "
                "destination.",
                [f"ICMP unreachable code {r.code} about {r.q_dst} seen in {r.netns}"
                 for r in c.head(4).itertuples()], len(c), []))
    return out


def _icmp_errors(tr: Traces, codes: tuple[int, ...], typ: int = 3) -> pd.DataFrame:
    """Distinct ICMP errors (type ``typ`` with one of ``codes``) seen in the events."""
    ev = tr.events
    hdr = tr.headers
    if ev.empty or hdr is None:
        return pd.DataFrame()
    d = ev["dec"].to_numpy()
    ok = d >= 0
    c = hdr
    proto = np.where(ok, c["proto"][np.maximum(d, 0)], 0)
    ityp = np.where(ok, c["icmp_type"][np.maximum(d, 0)], -1)
    icode = np.where(ok, c["icmp_code"][np.maximum(d, 0)], -1)
    sel = (proto == 1) & (ityp == typ) & np.isin(icode, codes)
    if not sel.any():
        return pd.DataFrame()
    rows = ev[sel]
    dd = d[sel]
    return pd.DataFrame({"packet": rows["packet"].to_numpy(), "netns": rows["netns"].astype(
        str).to_numpy(), "code": icode[sel], "q_dst": c["q_dst"][dd],
        "q_dport": c["q_dport"][dd], "q_proto": c["q_proto"][dd]}).drop_duplicates("packet")


def mtu(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    ev = tr.events
    evidence: list[str] = []
    packets = 0
    flows: list[int] = []
    md = d[d["drop_reason"].astype(str).isin(MTU_REASONS)]
    if len(md):
        evidence.append(f"{len(md)} packet(s) dropped as too big ({', '.join(sorted(set(md['drop_reason'].astype(str))))}) in {', '.join(sorted(set(md['netns'].astype(str))))}")  # noqa: E501
        packets += len(md)
        flows += list(md["flow"])
    # a frame the link's receiver refused: dropped right after its own transmit, and large
    big = d[(d["prev_label"] == "tx") & (d["prev_ifname"] == d["ifname"].astype(str))
            & (d["len"] > 1280) & ~d.index.isin(md.index)]
    if len(big):
        for (netns, ifname), g in big.groupby([big["netns"].astype(str),
                                               big["ifname"].astype(str)]):
            evidence.append(
                f"{len(g)} frame(s) of {int(g['len'].max())} bytes dropped "
                f"({g['drop_reason'].iloc[0]}) right after transmit on {ifname} (netns {netns}):"
                " larger than the MTU of the link's other end")
        packets += len(big)
        flows += list(big["flow"])
    icmp = _icmp_errors(tr, codes=(4,))
    if len(icmp):
        for r in icmp.head(3).itertuples():
            evidence.append(f"ICMP fragmentation needed about {r.q_dst} seen in {r.netns}")
        packets += len(icmp)
    if not ev.empty:
        frag = ev["flags"].astype(str).str.contains("fragment") & (ev["ntun"] > 0)
        if frag.any():
            fp = ev.loc[frag, "packet"].unique()
            ifs = sorted(set(ev.loc[frag, "ifname"].astype(str)) - {""})
            evidence.append(f"{len(fp)} encapsulated packet(s) fragmented on the underlay "
                            f"({', '.join(ifs)}): inner MTU + {VXLAN_OVERHEAD} bytes of VXLAN "
                            "exceeds the underlay MTU")
            packets += len(fp)
            flows += list(tr.packets.set_index("packet").loc[fp, "flow"])
    if not evidence:
        return []
    evidence += _mtu_facts(tr)
    return [_finding(
        "mtu",
        "MTU / fragmentation problem on the overlay",
        f"VXLAN adds {VXLAN_OVERHEAD} bytes: the pod and VXLAN device MTU must be at most the "
        f"underlay MTU minus {VXLAN_OVERHEAD} on every node, and both ends of a link must "
        "agree. Compare: ip -d link show (pod eth0, cni0, flannel.1, underlay) on each node; "
        "large DF packets then fail while small ones (ping) work.",
        evidence, packets, flows)]


def _mtu_facts(tr: Traces) -> list[str]:
    """Device MTUs that cannot work together, from the trace headers' topology (recorded
    when tracing started): a tunnel whose MTU plus its overhead exceeds every link of its
    namespace that could carry it, a pod interface larger than its node's tunnel, and veth
    ends that disagree."""
    out: list[str] = []
    for n in tr.nodes:
        topo = Topology.from_json(n.header.get("topology") or {})
        for ns, devs in topo.devs.items():
            tunnels = [d for d in devs.values() if d.kind in TUNNEL_OVERHEAD and d.mtu]
            carriers = [d for d in devs.values() if d.mtu and d.name != "lo" and not d.master
                        and d.kind in ("", "veth", "macvlan", "ipvlan", "vlan")]
            for t in tunnels:
                need = t.mtu + TUNNEL_OVERHEAD[t.kind]
                if carriers and max(c.mtu for c in carriers) < need:
                    links = ", ".join(f"{c.name} {c.mtu}" for c in carriers)
                    out.append(f"{t.name} ({t.kind}) MTU {t.mtu} + {TUNNEL_OVERHEAD[t.kind]} = "
                               f"{need} bytes on the wire, more than {links} in {ns} "
                               f"(node {n.node}): lower {t.name} to "
                               f"{max(c.mtu for c in carriers) - TUNNEL_OVERHEAD[t.kind]}")
                for d in devs.values():
                    peer = topo.peer(ns, d.ifindex)
                    if peer and peer[1].mtu > t.mtu and topo.role(peer[0]) == "pod":
                        out.append(f"pod {peer[0]} {peer[1].name} MTU {peer[1].mtu} is larger "
                                   f"than {t.name} MTU {t.mtu} on its node {ns}: set the pod "
                                   f"MTU to {t.mtu} (the CNI's mtu setting)")
            for d in devs.values():
                peer = topo.peer(ns, d.ifindex)
                if peer and d.mtu and peer[1].mtu and peer[1].mtu != d.mtu and ns < peer[0]:
                    out.append(f"veth ends disagree: {d.name} in {ns} MTU {d.mtu}, "
                               f"{peer[1].name} in {peer[0]} MTU {peer[1].mtu}")
    return list(dict.fromkeys(out))


def _vxlan_devices(tr: Traces, netns: str) -> list[tuple[str, int]]:
    """(device, UDP port) of the VXLAN devices in ``netns``, from the trace headers'
    topology (what ``hoptrace trace`` read over netlink when it started)."""
    for n in tr.nodes:
        devs = Topology.from_json(n.header.get("topology") or {}).devs.get(netns)
        if devs is not None:
            return [(d.name, d.port) for d in devs.values() if d.kind == "vxlan" and d.port]
    return []


def vxlan_no_listener(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    """VXLAN packets freed with NO_SOCKET where they arrived (the UDP port has no socket), and
    ICMP port unreachable quoting a VXLAN port. Evidence: where (netns, node, device), the
    outer endpoints and port, the count, and the port the VXLAN devices there listen on."""
    ports = set()
    for n in tr.nodes:
        ports |= {int(p) for p in n.header.get("vxlan_ports", [])}
    ports |= {4789, 8472, 6784}
    hdr = tr.headers
    out = []
    ns = d[d["drop_reason"].astype(str) == "NO_SOCKET"]
    if len(ns) and hdr is not None:
        dec = ns["dec"].to_numpy()
        ok = dec >= 0
        ntun = np.where(ok, hdr["ntun"][np.maximum(dec, 0)], 0)
        odp = np.where(ok, hdr["outer_dport"][np.maximum(dec, 0)], 0)
        tunnel = np.where(ok, hdr["tunnel"][np.maximum(dec, 0)], "")
        sel = (ntun > 0) | np.isin(odp, list(ports))
        g = ns[sel].assign(outer_dport=odp[sel], tunnel=tunnel[sel])
        for (node, netns, port), gg in g.groupby(
                [g["node"].astype(str), g["netns"].astype(str), g["outer_dport"]]):
            dev = str(gg["ifname"].iloc[0] or gg["prev_ifname"].iloc[0])
            outer = sorted({str(t).split(" ")[-1] for t in gg["tunnel"] if t})
            listen = _vxlan_devices(tr, netns)
            there = (", ".join(f"{name} on UDP {p}" for name, p in listen) if listen
                     else "none in the trace's topology")
            ev = [f"{len(gg)} VXLAN packet(s) to UDP port {port} dropped with reason NO_SOCKET "
                  f"on {dev} in netns {netns} (node {node}): no socket listens on {port}"
                  + (f"; outer {', '.join(outer[:3])}" if outer else ""),
                  f"VXLAN devices in {netns}: {there}"]
            ev += [f"packet: {s}" for s in gg["summary"].head(3)]
            fix = (f"{netns}'s VXLAN device listens on "
                   f"{', '.join(str(p) for _, p in listen)}, the sender sends to {port}: "
                   if listen else "")
            out.append(_finding(
                "vxlan-port",
                f"VXLAN packets to UDP port {port} reach netns {netns} (node {node}) but no "
                "socket listens there",
                f"{fix}the sender's VXLAN destination port differs from the receiver's VXLAN "
                "device port (or the device is missing/down). Make them agree: compare ip -d "
                "link show <vxlan> (dstport) on both nodes, and the sender's per-destination "
                "ports (bridge fdb show dev <vxlan>: 'port N').",
                ev, len(gg), gg["flow"]))
    pu = _icmp_errors(tr, codes=(3,))
    if len(pu):
        pu = pu[np.isin(pu["q_dport"], list(ports)) & (pu["q_proto"] == 17)]
        if len(pu):
            out.append(_finding(
                "vxlan-port", "ICMP port unreachable for VXLAN traffic on the underlay",
                "A node answered VXLAN packets with port unreachable: nothing listens on that "
                "UDP port there. Compare the VXLAN devices' dstport on both nodes.",
                [f"port unreachable about {r.q_dst}:{r.q_dport} seen in {r.netns}"
                 for r in pu.head(4).itertuples()], len(pu), []))
    return out


def wrong_fdb(tr: Traces, d: pd.DataFrame) -> list[Finding]:
    """Decapsulated on a node the inner packet is not for: dropped there as OTHERHOST (its
    inner destination MAC is another node's VXLAN device). The sender's fdb entry is wrong."""
    out: list[Finding] = []
    oh = d[d["drop_reason"].astype(str) == "OTHERHOST"]
    if oh.empty:
        return out
    h = tr.hops
    h = h[h["packet"].isin(set(oh["packet"]))]
    by_packet = dict(tuple(h.groupby("packet", sort=False)))
    rows = []
    for r in oh.itertuples():
        path = by_packet[r.packet]
        path = path[path.index < r.Index]
        dec = path[(path["hop"].astype(str) == str(HopKind.DECAP))
                   & (path["netns"].astype(str) == str(r.netns))
                   & (path["node"].astype(str) == str(r.node))]
        if dec.empty and str(r.prev_hop) != str(HopKind.DECAP):
            continue
        enc = path[path["change"].astype(str).str.startswith("encapsulated")]
        encap_dev = path[path["hop"].astype(str) == str(HopKind.ENCAP)]
        outer = ""
        if len(enc):
            outer = str(enc["change"].iloc[-1]).rsplit(" ", 1)[-1]
        rows.append({"packet": r.packet, "flow": r.flow, "summary": r.summary,
                     "node": str(r.node), "netns": str(r.netns), "ifname": str(r.ifname),
                     "dst": str(r.dst),
                     "enc_node": str(encap_dev["node"].iloc[-1]) if len(encap_dev) else "",
                     "enc_netns": str(encap_dev["netns"].iloc[-1]) if len(encap_dev) else "",
                     "enc_if": str(encap_dev["ifname"].iloc[-1]) if len(encap_dev) else "",
                     "outer": outer})
    if not rows:
        return out
    df = pd.DataFrame(rows)
    for (netns, dst, enc_netns), g in df.groupby(["netns", "dst", "enc_netns"]):
        node, ifname = g["node"].iloc[0], g["ifname"].iloc[0]
        enc_if = g["enc_if"].iloc[0] or ifname or "<vxlan>"
        outer = g["outer"].iloc[0]
        sender = (f"{enc_netns} (node {g['enc_node'].iloc[0]})" if enc_netns
                  else "the sending node")
        ev = []
        if enc_netns:
            ev.append(f"encapsulated on {enc_if} in {sender}"
                      + (f", outer {outer}" if outer else ""))
        ev.append(f"{len(g)} packet(s) for {dst} decapsulated on {ifname} in {netns} (node "
                  f"{node}) and dropped there with reason OTHERHOST: the inner frame's MAC is "
                  "not this node's")
        ev += [f"packet: {s}" for s in g["summary"].head(3)]
        ns_cmd = f"ip netns exec {enc_netns} " if enc_netns else ""
        out.append(_finding(
            "wrong-fdb",
            f"VXLAN delivered {dst}'s packets to {netns} (node {node}), which does not own "
            "that address",
            f"The VXLAN forwarding entry on the sender points the destination node's MAC at "
            f"the wrong underlay address{f' ({outer.split(chr(62))[-1]})' if outer else ''}: "
            f"check the fdb/neighbour entries for {enc_if} on {sender}: "
            f"{ns_cmd}bridge fdb show dev {enc_if} ; {ns_cmd}ip neigh show dev {enc_if} "
            "(flannel/calico rewrite them from the node list: a stale or misdirected entry, "
            "a node IP reused, or the agent not running there).",
            ev, len(g), g["flow"]))
    return out


def _hook_times(tr: Traces) -> pd.DataFrame:
    """One row per netfilter hook traversal: time from nf_hook_first to the packet's next
    event in the same netns (the time spent in the hook's rules), and whether the packet is
    its flow's first (a new connection: the nat table and other per-connection rules)."""
    h = tr.hops
    ev = tr.events
    if h.empty or "nf_hook" not in ev.columns:
        return pd.DataFrame()
    pk = h["packet"].to_numpy()
    ns = str_values(h["netns"])
    nd = str_values(h["node"])
    nxt = np.r_[(pk[1:] == pk[:-1]) & (ns[1:] == ns[:-1]) & (nd[1:] == nd[:-1]), False]
    rows = np.flatnonzero((str_values(h["probe"]) == "nf_hook_first") & nxt)
    if not len(rows):
        return pd.DataFrame()
    t = h["ts_ns"].to_numpy(np.int64)
    hook = str_values(ev.loc[h["event"].to_numpy()[rows], "nf_hook"])
    out = pd.DataFrame({"packet": pk[rows], "node": nd[rows], "netns": ns[rows],
                        "hook": hook, "ifname": str_values(h["ifname"])[rows],
                        "inside_ns": t[rows + 1] - t[rows]})
    p = tr.packets
    first = p.sort_values("first_ns", kind="stable").groupby("flow")["packet"].first()
    out["new_conn"] = out["packet"].isin(first.to_numpy())
    out["flow"] = p.set_index("packet").loc[out["packet"], "flow"].to_numpy()
    return out


def slow_hooks(tr: Traces) -> list[Finding]:
    """A netfilter hook whose rules take far longer than the other hooks (long rule chains)."""
    ht = _hook_times(tr)
    if ht.empty:
        return []
    out: list[Finding] = []
    seen: set[tuple[str, str, str, str]] = set()
    for new_conn, pop in ((True, ht[ht["new_conn"]]), (False, ht)):
        for (node, netns, hook, ifname), g in pop.groupby(["node", "netns", "hook", "ifname"]):
            if (node, netns, hook, ifname) in seen or len(g) < NF_SLOW_MIN_SAMPLES:
                continue
            others = pop.loc[~pop.index.isin(g.index), "inside_ns"]
            if len(others) < NF_SLOW_MIN_SAMPLES:
                continue
            med = float(g["inside_ns"].median())
            typical = float(others.median())
            if med < NF_SLOW_MIN_NS or med < NF_SLOW_FACTOR * max(typical, 1.0):
                continue
            seen.add((node, netns, hook, ifname))
            cmd = {"FORWARD": "FORWARD", "LOCAL_IN": "INPUT", "LOCAL_OUT": "OUTPUT",
                   "PRE_ROUTING": "PREROUTING", "POST_ROUTING": "POSTROUTING"}.get(hook, hook)
            which = "new connections' first packets" if new_conn else "packets"
            out.append(_finding(
                "slow-rules",
                f"Netfilter hook {hook} on {ifname or '-'} in netns {netns} (node {node}) is "
                f"slow: "
                f"{_us(med)} per packet vs {_us(typical)} for other hooks",
                "The packet spends its time walking rules in this hook: long rule chains "
                f"(count them: ip netns exec {netns} iptables-save | wc -l ; iptables -t nat "
                f"-S {cmd} ; nft list ruleset | wc -l). kube-proxy in iptables mode puts one "
                "rule per Service port in KUBE-SERVICES and new connections walk them in "
                "order: consider kube-proxy in nftables or IPVS mode, or fewer Services.",
                [f"{which}: median {_us(med)} inside nf:{hook} on {ifname or '-'} "
                 f"(netns {netns}), max "
                 f"{_us(float(g['inside_ns'].max()))} over {len(g)} traversal(s)",
                 f"other netfilter hooks on these paths: median {_us(typical)} over "
                 f"{len(others)} traversal(s) ({med / max(typical, 1.0):.0f}x)"],
                len(g), g["flow"]))
    return out


def latency_outliers(tr: Traces, paths: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """Hops whose median latency stands out from the rest of the path (report paths)."""
    out = []
    names = tr.flows.set_index("flow")["name"] if not tr.flows.empty else {}
    for flow, dirs in paths.items():
        for p in dirs:
            # not the final free or drop: the time before a drop (an ARP wait of seconds)
            # is not a latency of packets that got through
            hops = [h for h in p["hops"] if h["hop"] not in (str(HopKind.FREED),
                                                             str(HopKind.DROP))
                    and h["latency_ns"]["p50"] is not None and h["index"] > 0
                    and not (h["cross_node"] and h["uncertainty_ns"] is None)]
            if len(hops) < 3:
                continue
            med = float(np.median([h["latency_ns"]["p50"] for h in hops]))
            total = sum(h["latency_ns"]["p50"] for h in hops) or 1
            for h in hops:
                v = h["latency_ns"]["p50"]
                if v >= OUTLIER_MIN_NS and v >= OUTLIER_FACTOR * max(med, 1):
                    out.append(_finding(
                        "latency",
                        f"Hop {h['label']} on {h['ifname'] or '-'} ({h['netns']}) stands out in "
                        f"{names.get(flow, flow)} ({p['direction']})",
                        "This hop takes most of the path's time: look for queueing (qdisc, "
                        "tc netem/tbf), CPU contention or a slow netfilter rule set at this "
                        "point.",
                        [f"p50 {_us(v)} vs {_us(med)} for a typical hop on this path, "
                         f"{100 * v / total:.0f}% of the path; p90 "
                         f"{_us(h['latency_ns']['p90'])} over {h['packets']} packet(s)"],
                        h["packets"], [flow]))
    return out


def diagnose(tr: Traces, paths: dict[int, list[dict[str, Any]]]) -> list[Finding]:
    """All findings, most actionable first."""
    d = _drops(tr)
    if d.empty:
        d = pd.DataFrame(columns=["packet", "drop_reason", "node", "netns", "drop_hook", "flow",
                                  "prev_hop", "prev_ifname", "prev_label", "ifname", "len",
                                  "summary", "src", "dst", "proto", "dec"])
    out: list[Finding] = []
    for rule in (netfilter_drops, rp_filter, no_route, mtu, vxlan_no_listener, wrong_fdb):
        out += rule(tr, d)
    out += slow_hooks(tr)
    out += latency_outliers(tr, paths)
    return out
