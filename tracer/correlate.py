"""Correlation: trace files from one or many nodes -> packets, hops and flows (pandas).

::

    from tracer.correlate import load
    tr = load(["n1.jsonl", "n2.jsonl"])
    tr.flows                     # one row per flow (innermost 5-tuple, both directions)
    tr.packets                   # one row per packet journey (across nodes, NAT, tunnels)
    tr.hops                      # one row per hop of a packet's path, with its latency
    tr.events                    # every event, decoded, with its packet and hop name
    tr.clocks                    # node -> ClockOffset (tracer/correlate_clock.py)

How events become packets (docs/report.md has the details and the column lists):

1. Within a node, the kernel gave every journey of an skb a track id: one *segment* is the
   events of one (file, track), in time order. NAT rewrites happen inside a segment (the skb
   is the same), so a DNATed packet stays one journey; the tuple before and after is recorded.
2. Across nodes (and across encapsulation, whose inner headers survive), a segment that
   leaves a node (its last path event is a transmit, and it was not dropped) is joined to a
   segment on another node that starts with a receive, when the innermost directional tuple
   and the packet identity (IP ID, fragment offset, ICMP id/seq, TCP seq/ack, payload length:
   ``decoders.Flow.identity``) agree. Equal identities (retransmissions, duplicates) are
   paired in time order, the k-th leaving with the k-th arriving, so they stay separate.
3. Clocks: the joined pairs give each node's offset (tracer/correlate_clock.py); hop latencies
   are computed on that one time line, and a hop that crosses nodes is clamped at zero and
   flagged when the estimate would make it negative.
4. Flows: packets are grouped by the direction-independent innermost 5-tuple (ICMP echo: the
   echo id stands for the ports, as conntrack does); tuples joined by NAT form one flow.

Hops are named with the one vocabulary of tracer/hops.py: :func:`tracer.hops.classify` runs
once per distinct (probe, device, previous device, tunnelled) combination, not per event, and
encapsulation/NAT changes come from :func:`tracer.chains.change_between`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from decoders import DEFAULT_PORTS, START_ETH, START_IP, Decoded, PortMap, decode
from tracer.chains import DEVICE_POINTS, change_between, decision_text
from tracer.correlate_clock import ClockOffset, estimate
from tracer.errors import UsageError
from tracer.event import SCHEMA_VERSION, Event
from tracer.hops import BENIGN_REASONS, HopKind, classify, is_benign
from tracer.names import Topology

__all__ = ["Traces", "load", "from_frame", "BENIGN_REASONS", "is_benign", "str_values"]

_ICMP_REQ = {8, 13, 15, 17, 128}
_ICMP_REPLY = {0, 14, 16, 18, 129}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}

EVENT_SCHEMA = pa.schema(
    [
        ("type", pa.string()),
        ("ts_ns", pa.int64()),
        ("node", pa.string()),
        ("netns", pa.string()),
        ("netns_ino", pa.int64()),
        ("ifindex", pa.int32()),
        ("ifname", pa.string()),
        ("probe", pa.string()),
        ("track", pa.int64()),
        ("skb", pa.string()),
        ("cpu", pa.int32()),
        ("len", pa.int32()),
        ("mark", pa.int64()),
        ("protocol", pa.int32()),
        ("nf_hook", pa.string()),
        ("nf_pf", pa.string()),
        ("nf_prio", pa.int32()),
        ("drop_reason", pa.string()),
        ("drop_reason_code", pa.int32()),
        ("identity", pa.int64()),
        ("flags", pa.list_(pa.string())),
        ("hdr_kind", pa.string()),
        ("hdr", pa.string()),
        ("verdict", pa.string()),  # these three only where a probe saw a netfilter decision
        ("nf_table", pa.string()),
        ("nf_chain", pa.string()),
        ("count", pa.int64()),  # of "lost" lines
    ]
)
_CATEGORIES = ("node", "netns", "ifname", "probe", "nf_hook", "nf_pf", "drop_reason",
               "hdr_kind", "flags", "hdr", "verdict", "nf_table", "nf_chain")
_TEXT = ("nf_hook", "nf_pf", "drop_reason", "ifname", "netns", "verdict", "nf_table", "nf_chain")


@dataclass
class NodeTrace:
    """One trace file: its header, lost-event counts and summary."""

    path: str
    node: str
    header: dict[str, Any]
    lost: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def _read_file(path: Path, idx: int) -> tuple[NodeTrace, pa.Table]:
    """Header and summary by json; every line through polars' JSON-lines reader (Rust)."""
    try:
        fp = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read trace file {path}: {exc.strerror}") from exc
    with fp:
        first = fp.readline()
        try:
            header = json.loads(first) if first.strip() else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("type") != "header":
            raise UsageError(f"{path}: not a hoptrace trace file (no header line)")
        if header.get("schema", 0) > SCHEMA_VERSION:
            raise UsageError(f"{path}: schema {header['schema']} is newer than this hoptrace reads")
        body_at = len(first)
        fp.seek(0, 2)
        size = fp.tell()
        fp.seek(max(body_at, size - 65536))
        tail = fp.read().splitlines()
    summary: dict[str, Any] = {}
    for line in reversed(tail):
        if line.startswith(b'{"type":"summary"') or b'"summary"' in line[:30]:
            try:
                summary = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    nt = NodeTrace(str(path), str(header.get("node") or path.stem), header,
                   {k: int(v) for k, v in (summary.get("lost") or {}).items()}, summary)
    import polars as pl  # lazily: the live tracer imports this module's helpers

    schema = pl.Schema({f.name: pl.from_arrow(pa.array([], f.type)).dtype for f in EVENT_SCHEMA})
    try:
        # polars' JSON-lines reader is ~2x pyarrow.json here (tested on 1M events); keys that
        # are not in the schema (the header line's) are ignored
        df = pl.read_ndjson(path, schema=schema)
    except (pl.exceptions.PolarsError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: not a hoptrace trace file ({msg})") from exc
    lost_rows = df.filter(pl.col("type") == "lost")
    for probe, count in zip(lost_rows["probe"].to_list(), lost_rows["count"].to_list(),
                            strict=True):
        nt.lost[probe] = max(nt.lost.get(probe, 0), int(count or 0))
    df = df.filter(pl.col("type") == "event").drop("type", "count").with_columns(
        pl.col("flags").list.join(","),
        # events keep the file's node name even if an old writer left it out
        pl.col("node").fill_null(nt.node),
        pl.lit(idx, pl.Int16).alias("file"),
    )
    table = df.to_arrow()
    # polars hands out large_string; pandas would keep those Arrow-backed (slow per-row access)
    return nt, table.cast(pa.schema([pa.field(f.name, pa.string())
                                     if f.type == pa.large_string() else f
                                     for f in table.schema]))


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas(strings_to_categorical=True, split_blocks=True, self_destruct=True)
    for c in _CATEGORIES:
        if c in df and not isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype("category")
    for c in (*_TEXT, "flags", "hdr", "hdr_kind"):
        if df[c].isna().any():
            df[c] = df[c].cat.add_categories([""]) if "" not in df[c].cat.categories else df[c]
            df[c] = df[c].fillna("")
    return df


def load(paths: Iterable[str | Path], idle_note: bool = True) -> Traces:
    """Read trace files (one per node, as written by ``hoptrace trace -o``) and correlate."""
    nodes: list[NodeTrace] = []
    tables = []
    for i, p in enumerate(paths):
        nt, table = _read_file(Path(p), i)
        nodes.append(nt)
        tables.append(table)
    if not nodes:
        raise UsageError("no trace files given")
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    del tables
    return from_frame(nodes, _frame(table))


def from_frame(nodes: Sequence[NodeTrace], events: pd.DataFrame) -> Traces:
    """Correlate an events frame (the columns of docs/event-schema.md plus ``file``, the index
    of its file in ``nodes``) that is already in memory: tests and benchmarks build these."""
    return _Correlator(list(nodes), events).run()


# ----------------------------------------------------------------------------- decoding


def _ports(f: Any) -> tuple[int, int]:
    """Ports of a flow for grouping: ICMP queries use the echo id (as conntrack does)."""
    if f.proto in (1, 58):
        if f.icmp_type in _ICMP_REQ:
            return f.icmp_id, 0
        if f.icmp_type in _ICMP_REPLY:
            return 0, f.icmp_id
        return 0, 0
    return f.sport, f.dport


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr and port else (f"{addr}:{port}" if port else addr)


def _tuple_text(src: str, sport: int, dst: str, dport: int) -> str:
    return f"{_endpoint(src, sport)}>{_endpoint(dst, dport)}"


@dataclass
class _Headers:
    """Decoded distinct headers: per-event columns index into these arrays."""

    decoded: list[Decoded | None]
    cols: dict[str, np.ndarray]
    tuples: list[tuple[str, str, int, int, int]]  # directional (src, dst, proto, sport, dport)
    keys: list[tuple[int, str, int, str, int]]  # direction-independent


_INT_COLS = ("proto", "sport", "dport", "ip_id", "frag_offset", "tcp_seq", "tcp_ack",
             "tcp_flags", "icmp_type", "icmp_code", "icmp_id", "icmp_seq", "payload_len",
             "more_frags", "ntun", "tuple_id", "key_id", "ident_id", "outer_dport", "q_proto",
             "q_dport")
_STR_COLS = ("src", "dst", "tunnel", "q_dst")
_NONE_ROW = (0,) * 15 + (-1, -1, -1, 0, 0, 0)


def _normal(h: str, kind: str) -> str:
    """``kind:hex`` with what hop-by-hop forwarding changes blanked, so that one decode serves
    every hop of a packet: an untagged IPv4 frame's Ethernet header (MACs change at every
    router) and the outer IPv4 TTL and checksum. Nothing correlation reads is lost."""
    if kind == "eth" and h[24:28] == "0800" and len(h) > 68:
        h, kind = h[28:], "ip"
    if kind == "ip" and h[:1] == "4" and len(h) >= 24:
        h = h[:16] + "00" + h[18:20] + "0000" + h[24:]
    return f"{kind}:{h}"


def _decode_all(hdrs: Sequence[str], kinds: Sequence[str], ports: PortMap) -> _Headers:
    """Decode each distinct header once; one row of ints and strings per header.

    Rows are tuples gathered in lists and turned into arrays at the end: per-element numpy
    stores cost more than the decoding itself.
    """
    decs: list[Decoded | None] = []
    ints: list[tuple[int, ...]] = []
    strs: list[tuple[str, str, str, str]] = []
    tuple_ids: dict[tuple[str, str, int, int, int], int] = {}
    key_ids: dict[tuple[int, str, int, str, int], int] = {}
    ident_ids: dict[tuple[int, ...], int] = {}
    empty = ("", "", "", "")
    for h, kind in zip(hdrs, kinds, strict=True):
        d = None
        if h and kind in ("eth", "ip"):
            try:
                d = decode(bytes.fromhex(h), start=START_ETH if kind == "eth" else START_IP,
                           ports=ports)
            except ValueError:
                d = None
        f = d.inner if d is not None else None
        if d is None or f is None:
            decs.append(None)
            ints.append(_NONE_ROW)
            strs.append(empty)
            continue
        decs.append(d)
        sp, dp = _ports(f)
        t = (f.src, f.dst, f.proto, sp, dp)
        tid = tuple_ids.setdefault(t, len(tuple_ids))
        k = (f.proto, f.dst, dp, f.src, sp) if (f.dst, dp) < (f.src, sp) else (
            f.proto, f.src, sp, f.dst, dp)
        kid = key_ids.setdefault(k, len(key_ids))
        iid = ident_ids.setdefault(f.identity(), len(ident_ids))
        if d.tunnels:
            tu = d.tunnels[0]
            vni = f" vni {tu.vni}" if tu.vni is not None else ""
            tunnel, odp = f"{tu.kind.upper()}{vni} {tu.src}>{tu.dst}", tu.dport
        else:
            o = d.outer
            tunnel, odp = "", (o.dport if o is not None and o.proto == 17 else 0)
        q = d.quoted
        ints.append((f.proto, f.sport, f.dport, f.ip_id, f.frag_offset, f.tcp_seq, f.tcp_ack,
                     f.tcp_flags, f.icmp_type, f.icmp_code, f.icmp_id, f.icmp_seq,
                     f.payload_len, int(f.more_frags), len(d.tunnels), tid, kid, iid, odp,
                     q.proto if q is not None else 0, q.dport if q is not None else 0))
        strs.append((f.src, f.dst, tunnel, q.dst if q is not None else ""))
    ia = np.array(ints, np.int64).reshape(len(ints), len(_INT_COLS))
    sa = np.array(strs, object).reshape(len(strs), len(_STR_COLS))
    cols = {c: ia[:, j].copy() for j, c in enumerate(_INT_COLS)}
    cols.update({c: sa[:, j].copy() for j, c in enumerate(_STR_COLS)})
    return _Headers(decs, cols, list(tuple_ids), list(key_ids))


# ----------------------------------------------------------------------------- correlating


def _group_ffill(values: np.ndarray, seg: np.ndarray, missing: int = -1) -> np.ndarray:
    """Forward fill ``values`` (``missing`` = none) within runs of equal ``seg`` (sorted)."""
    n = len(values)
    idx = np.where(values != missing, np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)
    starts = np.r_[0, np.flatnonzero(seg[1:] != seg[:-1]) + 1]
    seg_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ok = idx >= seg_start
    out = np.full(n, missing, values.dtype)
    out[ok] = values[idx[ok]]
    return out


def _group_shift(values: np.ndarray, seg: np.ndarray, missing: int = -1) -> np.ndarray:
    """The previous row's value within the same ``seg`` (sorted), else ``missing``."""
    out = np.empty_like(values)
    out[0] = missing
    out[1:] = values[:-1]
    first = np.r_[True, seg[1:] != seg[:-1]]
    out[first] = missing
    return out


class _Correlator:
    def __init__(self, nodes: list[NodeTrace], ev: pd.DataFrame) -> None:
        self.nodes = nodes
        self.ev = ev

    def run(self) -> Traces:
        ev = self.ev
        if ev.empty:
            return Traces(self.nodes, ev, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {})
        ev = self.ev = ev.sort_values(["file", "track", "ts_ns"], kind="stable").reset_index(
            drop=True)
        seg = (ev["file"].to_numpy(np.int64) << 48) + ev["track"].to_numpy(np.int64)
        self.seg = pd.factorize(seg, sort=False)[0].astype(np.int64)
        ev["segment"] = self.seg
        self._decode()
        self._classify()
        self._changes()
        segs = self._segments()
        links = self._link(segs)
        clocks = estimate(
            list(dict.fromkeys(n.node for n in self.nodes)),
            links[links["from_node"] != links["to_node"]],
            {n.node: int(n.header.get("started_unix_ns", 0)) - int(n.header.get(
                "started_mono_ns", 0)) for n in self.nodes if n.header.get("started_unix_ns")},
        )
        hops = self._hops(segs, links, clocks)
        packets = self._packets(hops, segs)
        flows = self._flows(packets, hops)
        return Traces(self.nodes, ev, packets, hops, flows, clocks, segs, links, self.h.cols)

    # -- per event

    def _decode(self) -> None:
        ev = self.ev
        ports = DEFAULT_PORTS
        for n in self.nodes:
            ports = ports.with_ports({int(p): "vxlan" for p in n.header.get("vxlan_ports", [])
                                      if int(p) not in ports})
        hdr = ev["hdr"].cat.codes.to_numpy(np.int64)
        kind = ev["hdr_kind"].cat.codes.to_numpy(np.int64)
        combo = hdr * (len(ev["hdr_kind"].cat.categories) + 1) + kind
        dcode, uniq = pd.factorize(combo, sort=False)
        nk = len(ev["hdr_kind"].cat.categories) + 1
        hcats = np.asarray(ev["hdr"].cat.categories, dtype=object)
        kcats = np.asarray(ev["hdr_kind"].cat.categories, dtype=object)
        norm = [_normal(hcats[c // nk] if c // nk >= 0 else "",
                        kcats[c % nk] if c % nk < len(kcats) else "") for c in uniq]
        ncode, nuniq = pd.factorize(np.asarray(norm, dtype=object), sort=False)
        parts = [str(x).split(":", 1) for x in nuniq]
        self.h = _decode_all([p[1] for p in parts], [p[0] for p in parts], ports)
        self.d = ncode[dcode].astype(np.int64)
        c = self.h.cols
        for name in ("tuple_id", "key_id", "ident_id", "ntun", "proto"):
            ev[name] = c[name][self.d]
        ev["decoded"] = ev["tuple_id"].to_numpy() >= 0
        ev["dec"] = self.d
        for name in ("src", "dst"):
            codes, cats = pd.factorize(c[name])
            ev[name] = pd.Categorical.from_codes(codes[self.d], categories=cats)

    def _classify(self) -> None:
        """Hop names through tracer.hops.classify, once per distinct situation."""
        ev = self.ev
        seg = self.seg
        probe = ev["probe"].cat.codes.to_numpy(np.int64)
        netns = ev["netns"].cat.codes.to_numpy(np.int64)
        ifindex = ev["ifindex"].to_numpy(np.int64)
        pcats = list(ev["probe"].cat.categories)
        dev_codes = [pcats.index(p) for p in DEVICE_POINTS if p in pcats]
        is_dev = np.isin(probe, dev_codes)
        row = np.arange(len(ev))
        last_dev = _group_shift(_group_ffill(np.where(is_dev, row, -1), seg), seg)
        has_prev = last_dev >= 0
        pl = np.where(has_prev, last_dev, 0)
        tunnelled = self.h.cols["ntun"][self.d] > 0
        # what classify() looks at: a free's reason and ICMP type decide "drop" vs "freed"
        is_kfree = probe == pcats.index("kfree_skb") if "kfree_skb" in pcats else np.zeros(
            len(ev), bool)
        icmp_t = np.where(self.d >= 0, self.h.cols["icmp_type"][np.maximum(self.d, 0)], -1)
        key = pd.DataFrame({
            "f": ev["file"].to_numpy(np.int64), "p": probe,
            "r": np.where(is_kfree, ev["drop_reason"].cat.codes.to_numpy(np.int64), -1),
            "it": np.where(is_kfree, icmp_t, -1),
            "pr": np.where(is_kfree, ev["proto"].to_numpy(np.int64), -1),
            "h": ev["nf_hook"].cat.codes.to_numpy(np.int64),
            "pf": ev["nf_pf"].cat.codes.to_numpy(np.int64), "n": netns, "i": ifindex,
            "t": tunnelled, "pn": np.where(has_prev, netns[pl], -1),
            "pp": np.where(has_prev, probe[pl], -1), "pi": np.where(has_prev, ifindex[pl], -1),
        })
        combo = key.groupby(list(key.columns), sort=False).ngroup().to_numpy()
        _, rep = np.unique(combo, return_index=True)
        topos = [Topology.from_json(n.header.get("topology") or {}) for n in self.nodes]
        kinds, labels, inferred = [], [], []
        cols = [c for c in Event._fields if c in ev.columns]  # older files: defaults
        for r in rep:
            e = _event_at(ev, cols, int(r))
            prev = _event_at(ev, cols, int(last_dev[r])) if last_dev[r] >= 0 else None
            hop = classify(e, topos[int(ev["file"].iat[r])], self.h.decoded[self.d[r]], prev)
            kinds.append(str(hop.kind))
            labels.append(hop.label)
            inferred.append(hop.inferred)
        # combo ids are 0..k-1 in first-seen order and rep is sorted by combo id
        ev["hop"] = pd.Categorical(np.asarray(kinds, object)[combo])
        ev["label"] = pd.Categorical(np.asarray(labels, object)[combo])
        ev["inferred"] = pd.Categorical(np.asarray(inferred, object)[combo])

    def _changes(self) -> None:
        """Encapsulation, decapsulation, NAT (chains.change_between) and drop text."""
        ev = self.ev
        seg = self.seg
        d = np.where(ev["decoded"].to_numpy(), self.d, -1)
        prev_d = _group_shift(_group_ffill(d, seg), seg)
        c = self.h.cols
        cand = (d >= 0) & (prev_d >= 0) & (d != prev_d)
        cand[cand] = (c["ntun"][d[cand]] != c["ntun"][prev_d[cand]]) | (
            c["tuple_id"][d[cand]] != c["tuple_id"][prev_d[cand]])
        change = np.full(len(ev), "", object)
        if cand.any():
            pairs = pd.DataFrame({"a": prev_d[cand], "b": d[cand]})
            codes, uniq = pd.factorize(pd.MultiIndex.from_frame(pairs))
            texts = np.array([change_between(self.h.decoded[a], self.h.decoded[b])
                              for a, b in uniq], object)
            change[cand] = texts[codes]
        ev["nat"] = cand & (c["ntun"][np.maximum(d, 0)] == c["ntun"][np.maximum(prev_d, 0)])
        # drops: reason, and the netfilter hook the packet entered and never left
        probe = str_values(ev["probe"])
        hook = ev["nf_hook"].cat.codes.to_numpy(np.int64)
        state = np.where(probe == "nf_hook_first", hook, np.where(probe == "nf_hook_last", -2, -1))
        open_hook = _group_shift(_group_ffill(state, seg), seg)
        is_drop = probe == "kfree_skb"
        hcats = ev["nf_hook"].cat.categories
        inside = np.full(len(ev), "", object)
        sel = is_drop & (open_hook >= 0)
        inside[sel] = np.asarray(hcats, object)[open_hook[sel]]
        ev["drop_hook"] = pd.Categorical(inside)
        if is_drop.any():
            txt = ("reason " + ev.loc[is_drop, "drop_reason_code"].astype(str) + " ("
                   + ev.loc[is_drop, "drop_reason"].astype(str) + ")").to_numpy(object)
            txt = np.where(inside[is_drop] != "", txt + " inside nf:" + inside[is_drop], txt)
            change[is_drop] = txt
        # netfilter decisions of a table: on table events, and on the drop a table announced
        # (nf_hook_last's ACCEPT names no table and needs no text)
        verdict = str_values(ev["verdict"])
        table = str_values(ev["nf_table"])
        decided = (verdict != "") & (table != "")
        if decided.any():
            chain = str_values(ev["nf_chain"])
            texts = np.array([decision_text(t, c, v) for t, c, v in
                              zip(table[decided], chain[decided], verdict[decided], strict=True)],
                             object)
            on_drop = is_drop[decided]
            change[decided] = np.where(on_drop, change[decided] + ": " + texts, texts)
        ev["change"] = pd.Categorical(change)
        benign = is_drop & (str_values(ev["hop"]) == str(HopKind.FREED))  # hops.is_benign
        ev["benign"] = benign
        ev["is_free"] = (probe == "consume_skb") | benign
        ev["is_drop"] = is_drop & ~benign

    # -- per segment (one node's part of a journey)

    def _segments(self) -> pd.DataFrame:
        ev = self.ev
        seg = self.seg
        n = len(ev)
        starts = np.r_[0, np.flatnonzero(seg[1:] != seg[:-1]) + 1]
        ends = np.r_[starts[1:], n] - 1
        probe = str_values(ev["probe"])
        is_free = ev["is_free"].to_numpy()
        decoded = ev["decoded"].to_numpy()
        row = np.arange(n)
        # last path row: the last event that is not a free (a free after the last tx is the
        # driver's, not the packet's end) -- unless the segment is only frees
        path_row = _group_ffill(np.where(~is_free, row, -1), seg)
        last_path = path_row[ends]
        last_path = np.where(last_path >= 0, last_path, ends)
        dec_row = np.where(decoded, row, -1)
        last_dec = _group_ffill(np.where(decoded & ~is_free, row, -1), seg)[ends]
        # first decoded row: reverse ffill
        rev = _group_ffill(dec_row[::-1], seg[::-1])[::-1]
        first_dec = rev[starts]
        ts = ev["ts_ns"].to_numpy(np.int64)
        tid = ev["tuple_id"].to_numpy(np.int64)
        iid = ev["ident_id"].to_numpy(np.int64)

        def at(col: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.where(rows >= 0, col[np.maximum(rows, 0)], -1)

        end_probe = probe[ends]
        dropped = ev["is_drop"].to_numpy()[ends]
        node_name = str_values(ev["node"])
        s = pd.DataFrame({
            "segment": seg[starts],
            "file": ev["file"].to_numpy()[starts],
            "node": node_name[starts],
            "track": ev["track"].to_numpy()[starts],
            "first_row": starts,
            "last_row": ends,
            "last_path_row": last_path,
            "first_ns": ts[starts],
            "last_path_ns": ts[last_path],
            "entry_tuple": at(tid, first_dec),
            "entry_ident": at(iid, first_dec),
            "exit_tuple": at(tid, last_dec),
            "exit_ident": at(iid, last_dec),
            "last_ns": ts[ends],
            "starts_rx": probe[starts] == "netif_receive_skb",
            # a packet born here: a local send (LOCAL_OUT) or a pod's first transmit
            "starts_local": ((probe[starts] == "nf_hook_first")
                             & (str_values(ev["nf_hook"])[starts] == "LOCAL_OUT"))
            | (str_values(ev["hop"])[starts] == str(HopKind.POD_TX)),
            "leaves_tx": (probe[last_path] == "net_dev_queue") & ~dropped,
            "end": np.where(dropped, "dropped", np.where(
                is_free[ends], "freed", "open")),
            "end_probe": end_probe,
        })
        return s

    def _link(self, s: pd.DataFrame) -> pd.DataFrame:
        """Join segments leaving one node with segments arriving on another."""
        cols = ["segment", "node", "exit_tuple", "exit_ident", "last_path_ns"]
        out = s.loc[s["leaves_tx"] & (s["exit_tuple"] >= 0), cols].rename(
            columns={"exit_tuple": "tuple", "exit_ident": "ident", "last_path_ns": "tx_ns",
                     "node": "from_node", "segment": "pred"})
        inn = s.loc[s["starts_rx"] & (s["entry_tuple"] >= 0),
                    ["segment", "node", "entry_tuple", "entry_ident", "first_ns"]].rename(
            columns={"entry_tuple": "tuple", "entry_ident": "ident", "first_ns": "rx_ns",
                     "node": "to_node", "segment": "succ"})
        empty = pd.DataFrame(columns=["pred", "succ", "from_node", "to_node", "tx_ns", "rx_ns"])
        if out.empty or inn.empty or len(self.nodes) < 2:
            m = self._continuations(s).drop_duplicates("succ").drop_duplicates("pred")
            return m.reset_index(drop=True) if len(m) else empty
        # the k-th departure of an identity pairs with its k-th arrival on the other node
        out = out.sort_values("tx_ns", kind="stable")
        inn = inn.sort_values("rx_ns", kind="stable")
        out["k"] = out.groupby(["from_node", "tuple", "ident"], sort=False).cumcount()
        inn["k"] = inn.groupby(["to_node", "tuple", "ident"], sort=False).cumcount()
        m = out.merge(inn, on=["tuple", "ident", "k"])
        m = m[m["from_node"] != m["to_node"]]
        m = pd.concat([m, self._continuations(s)], ignore_index=True)
        m = m.drop_duplicates("succ").drop_duplicates("pred")
        return m[["pred", "succ", "from_node", "to_node", "tx_ns", "rx_ns"]].reset_index(
            drop=True)

    def _continuations(self, s: pd.DataFrame, window_ns: int = 200_000) -> pd.DataFrame:
        """Same node, new skb: IP fragmentation and reassembly free the packet's skb and go
        on with another that carries the same innermost packet. A segment that ends freed is
        continued by one that starts mid-path (not received, not born here) with the same
        tuple and identity, while the first was alive or just after."""
        a = s.loc[(s["end"] == "freed") & (s["exit_tuple"] >= 0),
                  ["segment", "file", "node", "exit_tuple", "exit_ident", "first_ns", "last_ns",
                   "last_path_ns"]].rename(columns={"exit_tuple": "tuple", "exit_ident": "ident",
                                                    "segment": "pred", "node": "from_node"})
        b = s.loc[~s["starts_rx"] & ~s["starts_local"] & (s["entry_tuple"] >= 0),
                  ["segment", "file", "entry_tuple", "entry_ident", "first_ns"]].rename(
            columns={"entry_tuple": "tuple", "entry_ident": "ident", "segment": "succ",
                     "first_ns": "b_first"})
        if a.empty or b.empty:
            return pd.DataFrame(columns=["pred", "succ", "from_node", "to_node", "tx_ns",
                                         "rx_ns"])
        m = a.merge(b, on=["file", "tuple", "ident"])
        m = m[(m["pred"] != m["succ"]) & (m["b_first"] >= m["first_ns"])
              & (m["b_first"] <= m["last_ns"] + window_ns)]
        m = m.sort_values("b_first", kind="stable")
        return pd.DataFrame({"pred": m["pred"], "succ": m["succ"], "from_node": m["from_node"],
                             "to_node": m["from_node"], "tx_ns": m["last_path_ns"],
                             "rx_ns": m["b_first"]})

    # -- packets and their hops

    def _hops(
        self, s: pd.DataFrame, lk: pd.DataFrame, clocks: dict[str, ClockOffset]
    ) -> pd.DataFrame:
        ev = self.ev
        nseg = len(s)
        pred = np.full(nseg, -1, np.int64)
        if len(lk):
            pred[lk["succ"].to_numpy(np.int64)] = lk["pred"].to_numpy(np.int64)
        has_succ = np.zeros(nseg, bool)
        if len(lk):
            has_succ[lk["pred"].to_numpy(np.int64)] = True
        root = np.arange(nseg)
        depth = np.zeros(nseg, np.int64)
        cur = pred.copy()
        while (cur >= 0).any():  # pointer chase to the first segment of each journey
            m = cur >= 0
            root[m] = cur[m]
            depth[m] += 1
            cur = np.where(m, pred[np.maximum(cur, 0)], -1)
        packet_of_seg = pd.factorize(root)[0]
        s["packet"] = packet_of_seg
        s["depth"] = depth
        s["pred"] = pred
        s["has_succ"] = has_succ
        seg = self.seg
        ev["packet"] = packet_of_seg[seg]
        # a free ending a segment that continues on another node is the sender's, not a hop
        tail_free = has_succ[seg] & ev["is_free"].to_numpy() & (
            np.arange(len(ev)) > s["last_path_row"].to_numpy()[seg])
        ev["in_path"] = ~tail_free
        off = {n: c.offset_ns for n, c in clocks.items()}
        unc = {n: c.uncertainty_ns for n, c in clocks.items()}
        node = pd.Series(str_values(ev["node"]), index=ev.index)
        ev["t_ns"] = ev["ts_ns"].to_numpy(np.int64) + node.map(off).fillna(0).to_numpy(np.int64)
        h = ev.loc[ev["in_path"], ["packet", "segment", "node", "netns", "ifname", "probe",
                                   "hop", "label", "inferred", "change", "nat", "ts_ns", "t_ns",
                                   "drop_reason", "drop_hook", "is_drop", "is_free", "benign",
                                   "verdict", "nf_table", "nf_chain",
                                   "len", "src", "dst", "proto", "dec"]].copy()
        h["depth"] = depth[h["segment"].to_numpy()]
        h = h.sort_values(["packet", "depth", "ts_ns"], kind="stable").reset_index(
            names="event")
        pk = h["packet"].to_numpy()
        t = h["t_ns"].to_numpy(np.int64)
        first = np.r_[True, pk[1:] != pk[:-1]]
        dt = np.r_[0, np.diff(t)]
        dt[first] = 0
        hn = str_values(h["node"])
        cross = np.r_[False, hn[1:] != hn[:-1]] & ~first
        u = np.zeros(len(h), np.float64)
        if cross.any():
            idx = np.flatnonzero(cross)
            for i in idx:
                a, b = unc.get(hn[i - 1]), unc.get(hn[i])
                u[i] = np.nan if a is None or b is None else a + b
        clamped = dt < 0
        dt = np.where(dt < 0, 0, dt)
        h["step"] = h.groupby("packet", sort=False).cumcount()
        h["dt_ns"] = dt
        h["offset_ns"] = pd.Series(dt).groupby(pk).cumsum().to_numpy()
        h["cross_node"] = cross
        h["uncertainty_ns"] = np.where(cross, u, 0.0)
        h["clamped"] = clamped
        last = np.r_[pk[1:] != pk[:-1], True]
        h["terminal"] = last & h["is_free"].to_numpy()
        return h

    def _packets(self, h: pd.DataFrame, s: pd.DataFrame) -> pd.DataFrame:
        c = self.h.cols
        g = h.groupby("packet", sort=True)
        first = g.head(1).set_index("packet")
        last = g.tail(1).set_index("packet")
        # the end of the path: the last step that is not a normal free
        body = h[~h["terminal"]]
        gb = body.groupby("packet", sort=True)
        end_off = gb["offset_ns"].max().reindex(first.index).fillna(0).astype(np.int64)
        dec = h[h["dec"] >= 0]
        dec = dec[h.loc[dec.index, "proto"].notna()]
        decoded_ok = dec[c["tuple_id"][dec["dec"].to_numpy()] >= 0]
        gd = decoded_ok.groupby("packet", sort=True)
        d_first = gd["dec"].first().reindex(first.index).fillna(-1).astype(np.int64).to_numpy()
        d_last = gd["dec"].last().reindex(first.index).fillna(-1).astype(np.int64).to_numpy()
        nodes = _joined(h.drop_duplicates(["packet", "node"]), "packet", "node")
        segs = s.groupby("packet", sort=True).size()

        def col(name: str, rows: np.ndarray, missing: Any = "") -> np.ndarray:
            v = c[name][np.maximum(rows, 0)]
            return np.where(rows >= 0, v, missing)

        tup_before = [_tuple_of(self.h, r) for r in d_first]
        tup_after = [_tuple_of(self.h, r) for r in d_last]
        ended = last["is_drop"].to_numpy()
        fate = np.where(ended, "dropped", np.where(last["is_free"].to_numpy(), "freed", "open"))
        p = pd.DataFrame({
            "packet": first.index.to_numpy(),
            "first_ns": first["t_ns"].to_numpy(),
            "nodes": nodes.reindex(first.index).to_numpy(),
            "segments": segs.reindex(first.index).to_numpy(),
            "steps": g.size().to_numpy(),
            "src": col("src", d_first), "dst": col("dst", d_first),
            "proto": col("proto", d_first, 0).astype(np.int64),
            "sport": col("sport", d_first, 0).astype(np.int64),
            "dport": col("dport", d_first, 0).astype(np.int64),
            "summary": _summaries(self.h, d_first),
            "tuple_before": tup_before,
            "tuple_after": tup_after,
            "nat": np.array(tup_before, object) != np.array(tup_after, object),
            "key_before": col("key_id", d_first, -1).astype(np.int64),
            "key_after": col("key_id", d_last, -1).astype(np.int64),
            "ident": col("ident_id", d_first, -1).astype(np.int64),
            "fate": fate,
            "drop_reason": np.where(ended, str_values(last["drop_reason"]), ""),
            "drop_node": np.where(ended, str_values(last["node"]), ""),
            "drop_netns": np.where(ended, str_values(last["netns"]), ""),
            "drop_hook": np.where(ended, str_values(last["drop_hook"]), ""),
            # the table and base chain that decided, when a table probe saw it (else "")
            "drop_table": np.where(ended, str_values(last["nf_table"]), ""),
            "drop_chain": np.where(ended, str_values(last["nf_chain"]), ""),
            "drop_verdict": np.where(ended, str_values(last["verdict"]), ""),
            "e2e_ns": end_off.to_numpy(),
            "clamped": g["clamped"].any().to_numpy(),
        })
        # the k-th packet with the same identity (retransmissions and duplicates)
        p["occurrence"] = p.sort_values("first_ns").groupby(["key_before", "ident"]).cumcount()
        return p

    def _flows(self, p: pd.DataFrame, h: pd.DataFrame) -> pd.DataFrame:
        if p.empty:
            return pd.DataFrame()
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            while parent.get(x, x) != x:
                parent[x] = parent.get(parent[x], parent[x])
                x = parent[x]
            return x

        nat = p[p["nat"] & (p["key_before"] >= 0) & (p["key_after"] >= 0)]
        for a, b in zip(nat["key_before"].to_numpy(), nat["key_after"].to_numpy(), strict=True):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        kb = p["key_before"].to_numpy()
        if parent:
            roots = {int(k): find(int(k)) for k in np.unique(kb) if k >= 0}
            root = np.array([roots.get(int(k), -1) for k in kb])
        else:
            root = kb
        order = np.argsort(p["first_ns"].to_numpy(), kind="stable")
        fid = np.empty(len(p), np.int64)
        fid[order] = pd.factorize(root[order])[0]
        p["flow"] = fid
        # the flow's first packet names its client (source) and server (destination)
        firsts = p.iloc[order].drop_duplicates("flow").set_index("flow").sort_index()
        client = firsts["src"].reindex(fid).to_numpy()
        fwd = p["src"].to_numpy() == client
        p["direction"] = np.where(fwd, "forward", "reverse")
        g = p.groupby("flow", sort=True)
        natf = p[fwd & p["nat"]].sort_values("first_ns").drop_duplicates("flow")
        nat_to = pd.Series([_dst_of(t) for t in natf["tuple_after"]], index=natf["flow"],
                           dtype=object).reindex(firsts.index).fillna("")
        ok = p[p["fate"] != "dropped"]
        q = ok.groupby("flow")["e2e_ns"].quantile([0.5, 0.9, 0.99]).unstack()
        q = q.reindex(firsts.index)
        # the nodes of all its packets' paths, in order of first appearance
        node_seq = p.drop_duplicates(["flow", "nodes"])[["flow", "nodes"]]
        node_seq = node_seq.assign(nodes=node_seq["nodes"].astype(str).str.split(">")).explode(
            "nodes").drop_duplicates()
        nodes = _joined(node_seq, "flow", "nodes")
        pods = self._pods(h)
        proto = firsts["proto"].to_numpy(np.int64)
        server = str_values(firsts["dst"])
        served_by = [t.rsplit(":", 1)[0] if t else s for t, s in zip(nat_to, server,
                                                                      strict=True)]
        ends = {
            "client": [a if pr == 1 or not pt else _endpoint(a, int(pt)) for a, pt, pr in zip(
                str_values(firsts["src"]), firsts["sport"], proto, strict=True)],
            "server": [a if pr == 1 or not pt else _endpoint(a, int(pt)) for a, pt, pr in zip(
                server, firsts["dport"], proto, strict=True)],
        }
        flows = pd.DataFrame({
            "flow": firsts.index.to_numpy(),
            "proto": [PROTO_NAMES.get(int(x), str(x)) for x in proto],
            "client": ends["client"],
            "client_pod": [pods.get(str(a), "") for a in firsts["src"]],
            "server": ends["server"],
            "server_pod": [pods.get(a, "") for a in served_by],
            "nat_to": nat_to.to_numpy(),
            "packets": g.size().to_numpy(),
            "forward": pd.Series(fwd).groupby(fid).sum().reindex(firsts.index).to_numpy(),
            "reverse": pd.Series(~fwd).groupby(fid).sum().reindex(firsts.index).to_numpy(),
            "drops": (p["fate"] == "dropped").groupby(fid).sum().reindex(firsts.index).to_numpy(),
            "nodes": nodes.reindex(firsts.index).to_numpy(),
            "first_ns": g["first_ns"].min().to_numpy(),
            "last_ns": g["first_ns"].max().to_numpy(),
            "e2e_p50_ns": q[0.5].to_numpy(np.float64) if 0.5 in q else np.nan,
            "e2e_p90_ns": q[0.9].to_numpy(np.float64) if 0.9 in q else np.nan,
            "e2e_p99_ns": q[0.99].to_numpy(np.float64) if 0.99 in q else np.nan,
        })
        names = []
        for r in flows.itertuples():
            a = r.client_pod or r.client
            b = r.server_pod or r.server
            port = r.server.rsplit(":", 1)[1] if ":" in r.server and r.proto != "icmp" else ""
            names.append(f"{a} -> {b} {r.proto}{'/' + port if port else ''}")
        flows.insert(1, "name", names)
        return flows

    def _pods(self, h: pd.DataFrame) -> dict[str, str]:
        """Address -> the pod namespace that sent (pod tx) or received (pod rx) it."""
        out: dict[str, str] = {}
        for kind, col in ((HopKind.POD_TX, "src"), (HopKind.POD_RX, "dst")):
            sel = h[h["hop"] == str(kind)]
            for addr, ns in zip(str_values(sel[col]), str_values(sel["netns"]), strict=True):
                out.setdefault(addr, ns)
        return out


def str_values(s: pd.Series) -> np.ndarray:
    """The column as an object array of str: through the categories for a categorical (pandas'
    ``astype(str)`` builds an Arrow string array first, ~1 s per million rows)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = np.array([str(c) for c in s.cat.categories] + [np.nan], dtype=object)
        return cats[s.cat.codes.to_numpy()]  # code -1: missing stays NaN, as with astype(str)
    return s.astype(str).to_numpy(object)


def _joined(df: pd.DataFrame, key: str, col: str, sep: str = ">") -> pd.Series:
    """``sep.join`` of ``col`` per ``key`` in row order, without a Python call per group: each
    group has a few rows (its nodes), so this joins the k-th members column by column."""
    k = df.groupby(key, sort=False).cumcount().to_numpy()
    wide = pd.DataFrame({key: df[key].to_numpy(), "k": k,
                         col: str_values(df[col])}).pivot(
        index=key, columns="k", values=col)
    out = wide[0].to_numpy(object)
    for j in wide.columns[1:]:
        nxt = wide[j].to_numpy(object)
        has = pd.notna(nxt)
        out[has] = out[has] + sep + nxt[has]
    return pd.Series(out, index=wide.index, dtype=object)


def _summaries(h: _Headers, rows: np.ndarray) -> np.ndarray:
    """``Flow.summary()`` of the given header rows (computed once per distinct row)."""
    done: dict[int, str] = {}
    out = np.empty(len(rows), object)
    for i, r in enumerate(rows):
        r = int(r)
        if r not in done:
            d = h.decoded[r] if r >= 0 else None
            done[r] = d.inner.summary() if d is not None and d.inner is not None else ""
        out[i] = done[r]
    return out


def _tuple_of(h: _Headers, row: int) -> str:
    if row < 0:
        return ""
    c = h.cols
    return _tuple_text(c["src"][row], int(c["sport"][row]), c["dst"][row], int(c["dport"][row]))


def _dst_of(tuple_text: str) -> str:
    return tuple_text.split(">", 1)[1] if ">" in tuple_text else ""


def _event_at(ev: pd.DataFrame, cols: list[str], r: int) -> Event:
    vals = []
    for c in cols:
        v = ev[c].iat[r]
        if c == "flags":
            v = tuple(str(v).split(",")) if v else ()
        elif c == "hdr":
            v = b""
        elif c == "skb":
            v = 0
        elif isinstance(v, (np.integer,)):
            v = int(v)
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            v = 0 if c not in _TEXT else ""
        vals.append(v)
    return Event(**dict(zip(cols, vals, strict=True)))  # columns a file lacks: the defaults


# ----------------------------------------------------------------------------- result


@dataclass
class Traces:
    """Correlated traces. Every table is a pandas DataFrame; docs/report.md lists the columns.

    ``events``: every event with its decoded innermost tuple, ``hop`` (tracer.hops vocabulary),
    ``packet``, ``segment``, ``t_ns`` (on the reference node's clock) and change text.
    ``packets``: one journey each. ``hops``: the steps of each packet's path in order with
    ``dt_ns`` (this hop's latency, never negative), ``offset_ns``, ``cross_node``,
    ``uncertainty_ns`` and ``clamped``. ``flows``: grouped packets with percentiles.
    ``clocks``: node -> :class:`~tracer.correlate_clock.ClockOffset`. ``segments``: one
    node's part of a journey (file, track); ``links``: which segment continues which.
    """

    nodes: list[NodeTrace]
    events: pd.DataFrame
    packets: pd.DataFrame
    hops: pd.DataFrame
    flows: pd.DataFrame
    clocks: dict[str, ClockOffset]
    segments: pd.DataFrame = field(default_factory=pd.DataFrame)
    links: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: decoded distinct headers, column -> array; ``events["dec"]`` indexes into them
    headers: dict[str, np.ndarray] | None = None

    def packet_hops(self, packet: int) -> pd.DataFrame:
        """The hops of one packet, in path order."""
        return self.hops[self.hops["packet"] == packet]

    def flow_packets(self, flow: int) -> pd.DataFrame:
        return self.packets[self.packets["flow"] == flow]
