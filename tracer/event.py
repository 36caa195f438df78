"""The event as the rest of hoptrace sees it, and its JSON form (docs/event-schema.md).

Kernel records arrive as numpy structured arrays whose dtype is built from the object's BTF
(``struct ht_event`` in probes/hoptrace.h); :class:`Namer` turns them into :class:`Event`
objects that carry names beside numbers (node, netns name, probe point, hook, drop reason).
A trace file is JSON lines: one ``header`` object, then ``event`` and ``lost`` objects, and a
``summary`` at the end. :func:`event_from_json` reads events back for replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tracer.btf import drop_reason_name, kernel_enum
from tracer.names import list_netns

SCHEMA_VERSION = 1
HDR_KINDS = {0: "none", 1: "eth", 2: "ip"}
NF_PF = {2: "ipv4", 10: "ipv6"}
FLAG_NAMES = {1: "new_track", 2: "reused_skb", 4: "parsed", 8: "fragment"}


@dataclass(frozen=True, slots=True)
class Event:
    """One packet seen at one probe point."""

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
        d = asdict(self)
        d["hdr"] = self.hdr.hex()
        d["flags"] = list(self.flags)
        d["skb"] = f"{self.skb:#x}"
        return {"type": "event", **d}


def event_from_json(d: dict[str, Any]) -> Event:
    """Inverse of :meth:`Event.to_json` (unknown keys are ignored, for forward compatibility)."""
    kw = {k: d[k] for k in Event.__slots__ if k in d}
    kw["hdr"] = bytes.fromhex(d.get("hdr", ""))
    kw["flags"] = tuple(d.get("flags", ()))
    skb = d.get("skb", 0)
    kw["skb"] = int(skb, 16) if isinstance(skb, str) else int(skb)
    return Event(**kw)


class Namer:
    """Turns raw kernel records into :class:`Event` objects with names."""

    def __init__(self, node: str, probe_ids: dict[str, int], point_of_enum: dict[str, str]):
        self.node = node
        self._probe = {v: point_of_enum.get(k, k) for k, v in probe_ids.items()}
        hooks = kernel_enum("nf_inet_hooks")
        self._hooks = {k: v.removeprefix("NF_INET_") for k, v in hooks.items()}
        self._drop_code = probe_ids.get("HT_PROBE_KFREE_SKB", -1)
        self._nf_codes = {probe_ids.get("HT_PROBE_NF_FIRST", -1), probe_ids.get("HT_PROBE_NF_LAST", -1)}
        self._netns: dict[int, str] = {}
        self.refresh_netns()

    def refresh_netns(self) -> None:
        self._netns = {n.inode: n.name for n in list_netns()}

    def netns_name(self, ino: int) -> str:
        if ino == 0:
            return "?"
        if ino not in self._netns:
            self.refresh_netns()
            self._netns.setdefault(ino, f"netns{ino}")
        return self._netns[ino]

    def events(self, recs: np.ndarray) -> list[Event]:
        out = []
        for r in recs:
            probe = int(r["probe"])
            is_nf = probe in self._nf_codes
            code = int(r["drop_reason"]) if probe == self._drop_code else 0
            hdr_len = int(r["hdr_len"])
            flags = int(r["flags"])
            out.append(
                Event(
                    ts_ns=int(r["ts_ns"]),
                    node=self.node,
                    netns=self.netns_name(int(r["netns"])),
                    netns_ino=int(r["netns"]),
                    ifindex=int(r["ifindex"]),
                    ifname=bytes(r["ifname"]).split(b"\0", 1)[0].decode(errors="replace"),
                    probe=self._probe.get(probe, str(probe)),
                    track=int(r["track"]),
                    skb=int(r["skb"]),
                    cpu=int(r["cpu"]),
                    len=int(r["len"]),
                    mark=int(r["mark"]),
                    protocol=int(r["protocol"]),
                    nf_hook=self._hooks.get(int(r["nf_hook"]), str(int(r["nf_hook"])))
                    if is_nf
                    else "",
                    nf_pf=NF_PF.get(int(r["nf_pf"]), str(int(r["nf_pf"]))) if is_nf else "",
                    nf_prio=int(r["nf_prio"]) if is_nf else 0,
                    drop_reason=drop_reason_name(code) if probe == self._drop_code else "",
                    drop_reason_code=code,
                    identity=int(r["identity"]),
                    flags=tuple(n for bit, n in FLAG_NAMES.items() if flags & bit),
                    hdr_kind=HDR_KINDS.get(int(r["hdr_kind"]), "none"),
                    hdr=bytes(r["hdr"][:hdr_len]),
                )
            )
        return out
