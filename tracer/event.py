"""The event as the rest of hoptrace sees it, and its JSON form (docs/event-schema.md).

Kernel records arrive as numpy structured arrays whose dtype is built from the object's BTF
(``struct ht_event`` in probes/hoptrace.h); :class:`Namer` turns them into :class:`Event`
objects that carry names beside numbers (node, netns name, probe point, hook, drop reason).
A trace file is JSON lines: one ``header`` object, then ``event`` and ``lost`` objects, and a
``summary`` at the end. :func:`event_from_json` reads events back for replay.
"""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import numpy as np

from tracer.btf import drop_reason_name, kernel_enum
from tracer.names import list_netns

SCHEMA_VERSION = 1
HDR_KINDS = {0: "none", 1: "eth", 2: "ip"}
NF_PF = {2: "ipv4", 10: "ipv6"}
FLAG_NAMES = {1: "new_track", 2: "reused_skb", 4: "parsed", 8: "fragment"}


class Event(NamedTuple):
    """One packet seen at one probe point (immutable; a NamedTuple because a batch of 100k
    must be built per second: a frozen dataclass's __init__ costs 3x more)."""

    ts_ns: int  # CLOCK_MONOTONIC of the node that recorded it
    node: str
    netns: str
    netns_ino: int
    ifindex: int
    ifname: str
    probe: str  # catalogue point name (tracer/catalogue.py)
    track: int  # one packet's journey on this node
    skb: int
    cpu: int
    len: int
    mark: int
    protocol: int
    nf_hook: str  # "" unless a netfilter probe: PRE_ROUTING, LOCAL_IN, ...
    nf_pf: str  # "" / ipv4 / ipv6
    nf_prio: int
    drop_reason: str  # "" unless kfree_skb: NETFILTER_DROP, NO_SOCKET, ...
    drop_reason_code: int
    identity: int
    flags: tuple[str, ...]
    hdr_kind: str  # eth / ip / none
    hdr: bytes

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "event", **self._asdict()}
        d["hdr"] = self.hdr.hex()
        d["flags"] = list(self.flags)
        d["skb"] = f"{self.skb:#x}"
        return d


def event_from_json(d: dict[str, Any]) -> Event:
    """Inverse of :meth:`Event.to_json` (unknown keys are ignored, for forward compatibility)."""
    kw = {k: d[k] for k in Event._fields if k in d}
    kw["hdr"] = bytes.fromhex(d.get("hdr", ""))
    kw["flags"] = tuple(d.get("flags", ()))
    skb = d.get("skb", 0)
    kw["skb"] = int(skb, 16) if isinstance(skb, str) else int(skb)
    return Event(**kw)


_js = functools.lru_cache(maxsize=4096)(json.dumps)


def json_lines(events: list[Event]) -> str:
    """The events as JSON lines, equal to ``json.dumps(ev.to_json())`` per event but ~4x faster:
    strings repeat (node, netns, device, probe), so their escaped forms are cached."""
    out = []
    for e in events:
        out.append(
            f'{{"type":"event","ts_ns":{e.ts_ns},"node":{_js(e.node)},"netns":{_js(e.netns)},'
            f'"netns_ino":{e.netns_ino},"ifindex":{e.ifindex},"ifname":{_js(e.ifname)},'
            f'"probe":{_js(e.probe)},"track":{e.track},"skb":"{e.skb:#x}","cpu":{e.cpu},'
            f'"len":{e.len},"mark":{e.mark},"protocol":{e.protocol},"nf_hook":{_js(e.nf_hook)},'
            f'"nf_pf":{_js(e.nf_pf)},"nf_prio":{e.nf_prio},"drop_reason":{_js(e.drop_reason)},'
            f'"drop_reason_code":{e.drop_reason_code},"identity":{e.identity},'
            f'"flags":{_js_list(e.flags)},"hdr_kind":{_js(e.hdr_kind)},"hdr":"{e.hdr.hex()}"}}\n'
        )
    return "".join(out)


@functools.lru_cache(maxsize=64)
def _js_list(flags: tuple[str, ...]) -> str:
    return json.dumps(list(flags))


class Namer:
    """Turns raw kernel records into :class:`Event` objects with names."""

    def __init__(self, node: str, probe_ids: dict[str, int], point_of_enum: dict[str, str]):
        self.node = node
        self._probe = {v: point_of_enum.get(k, k) for k, v in probe_ids.items()}
        hooks = kernel_enum("nf_inet_hooks")
        self._hooks = {k: v.removeprefix("NF_INET_") for k, v in hooks.items()}
        self._drop_code = probe_ids.get("HT_PROBE_KFREE_SKB", -1)
        self._nf_codes = {
            probe_ids.get("HT_PROBE_NF_FIRST", -1),
            probe_ids.get("HT_PROBE_NF_LAST", -1),
        }
        self._netns: dict[int, str] = {}
        self.refresh_netns()

    def refresh_netns(self) -> None:
        self._netns = {n.inode: n.name for n in list_netns()}

    def netns_name(self, ino: int) -> str:
        name = self._netns.get(ino)
        if name is not None:
            return name
        if ino == 0:
            return "?"
        if ino not in self._netns:
            self.refresh_netns()
            self._netns.setdefault(ino, f"netns{ino}")
        return self._netns[ino]

    def events(self, recs: np.ndarray) -> list[Event]:
        """Name a batch of kernel records. Column-wise: per-row numpy access costs ~20x more."""
        if len(recs) == 0:
            return []
        col = {name: recs[name].tolist() for name in _INT_COLUMNS}
        ifnames = recs["ifname"].tolist()
        hdr = recs["hdr"]
        hdrs = hdr.tobytes()
        width = hdr.shape[1]
        probe_name, hooks, netns_name = self._probe, self._hooks, self.netns_name
        nf_codes, drop_code = self._nf_codes, self._drop_code
        names: dict[bytes, str] = {}
        flag_cache: dict[int, tuple[str, ...]] = {}
        out: list[Event] = []
        new_event = tuple.__new__
        for i, probe in enumerate(col["probe"]):
            is_nf = probe in nf_codes
            is_drop = probe == drop_code
            raw_if = ifnames[i]
            ifname = names.get(raw_if)
            if ifname is None:
                ifname = names[raw_if] = raw_if.split(b"\0", 1)[0].decode(errors="replace")
            flags = col["flags"][i]
            fl = flag_cache.get(flags)
            if fl is None:
                fl = flag_cache[flags] = tuple(n for bit, n in FLAG_NAMES.items() if flags & bit)
            code = col["drop_reason"][i] if is_drop else 0
            ns = col["netns"][i]
            base = i * width
            # positional tuple.__new__: the NamedTuple keyword constructor costs 3x more
            out.append(
                new_event(
                    Event,
                    (
                        col["ts_ns"][i],
                        self.node,
                        netns_name(ns),
                        ns,
                        col["ifindex"][i],
                        ifname,
                        probe_name.get(probe, str(probe)),
                        col["track"][i],
                        col["skb"][i],
                        col["cpu"][i],
                        col["len"][i],
                        col["mark"][i],
                        col["protocol"][i],
                        hooks.get(col["nf_hook"][i], str(col["nf_hook"][i])) if is_nf else "",
                        NF_PF.get(col["nf_pf"][i], str(col["nf_pf"][i])) if is_nf else "",
                        col["nf_prio"][i] if is_nf else 0,
                        drop_reason_name(code) if is_drop else "",
                        code,
                        col["identity"][i],
                        fl,
                        HDR_KINDS.get(col["hdr_kind"][i], "none"),
                        hdrs[base : base + col["hdr_len"][i]],
                    ),
                )
            )
        return out


_INT_COLUMNS = (
    "ts_ns",
    "skb",
    "track",
    "netns",
    "ifindex",
    "len",
    "mark",
    "drop_reason",
    "cpu",
    "nf_prio",
    "identity",
    "probe",
    "nf_hook",
    "nf_pf",
    "protocol",
    "hdr_kind",
    "flags",
    "hdr_len",
)
