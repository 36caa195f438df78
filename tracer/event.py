"""The event as the rest of hoptrace sees it, and its JSON form (docs/event-schema.md).

Kernel records arrive as numpy structured arrays whose dtype is built from the object's BTF
(``struct ht_event`` in probes/hoptrace.h); :class:`Namer` turns them into :class:`Event`
objects that carry names beside numbers (node, netns name, probe point, hook, drop reason).
A trace file is JSON lines: one ``header`` object, then ``event`` and ``lost`` objects, and a
``summary`` at the end. :func:`event_from_json` reads events back for replay.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from tracer.btf import drop_reason_name, kernel_enum
from tracer.names import list_netns

SCHEMA_VERSION = 1
HDR_KINDS = {0: "none", 1: "eth", 2: "ip"}
NF_PF = {2: "ipv4", 10: "ipv6"}
FLAG_NAMES = {1: "new_track", 2: "reused_skb", 4: "parsed", 8: "fragment"}
NEW_TRACK = 1  # the flag of a track's first event
VERDICT_NONE = -1  # ht_event.verdict when no probe saw a verdict (HT_VERDICT_NONE)
#: Event fields written only when set (a netfilter decision: see docs/event-schema.md)
NF_DECISION_FIELDS = ("verdict", "nf_table", "nf_chain")


@functools.cache
def verdict_names() -> dict[int, str]:
    """Netfilter verdict codes -> names (DROP, ACCEPT, ...), from ``enum ht_nf_verdict`` in the
    built object's BTF (probes/hoptrace.h); empty when the object is not built."""
    import probes
    from tracer.btf import Btf

    path = probes.object_path("hoptrace")
    if not path.exists():
        return {}
    btf = Btf.from_file(path)
    try:
        return {v: k.removeprefix("HT_NF_") for k, v in btf.enum("ht_nf_verdict").items()}
    except KeyError:
        return {}
    finally:
        btf.close()


def verdict_name(code: int) -> str:
    return "" if code == VERDICT_NONE else verdict_names().get(code, str(code))


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
    func: str = ""  # --probes all-skb: the kernel function (probe "func"); "" otherwise
    # a netfilter decision (table probes, and the drop that follows one; nf_hook_last: ACCEPT)
    verdict: str = ""  # "" / DROP / ACCEPT / QUEUE / ... (enum ht_nf_verdict)
    nf_table: str = ""  # the table that decided: filter, nat, or an nft table's name
    nf_chain: str = ""  # its base chain: FORWARD (iptables), an nft base chain's name

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "event", **self._asdict()}
        d["hdr"] = self.hdr.hex()
        d["flags"] = list(self.flags)
        d["skb"] = f"{self.skb:#x}"
        if not self.verdict:  # written only when a probe saw a decision
            for k in NF_DECISION_FIELDS:
                del d[k]
        return d


def event_from_json(d: dict[str, Any]) -> Event:
    """Inverse of :meth:`Event.to_json` (unknown keys are ignored, for forward compatibility)."""
    kw = {k: d[k] for k in Event._fields if k in d}
    kw["hdr"] = bytes.fromhex(d.get("hdr", ""))
    kw["flags"] = tuple(d.get("flags", ()))
    skb = d.get("skb", 0)
    kw["skb"] = int(skb, 16) if isinstance(skb, str) else int(skb)
    return Event(**kw)


# two lowercase hex digits per byte value, as one uint16 each (little-endian: "0" then "f")
_HEX = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), dtype=np.uint16)


def _ndjson_bytes(df: Any) -> bytes:
    """A polars frame as JSON lines, bytes: kept from str, they go to a binary file as they are."""
    buf = io.BytesIO()
    df.write_ndjson(buf)
    return buf.getvalue()


def _hex_rows(mat: np.ndarray) -> Any:
    """Row i -> hex of all of ``mat[i]`` (fixed width; callers cut each row to its length)."""
    import pyarrow as pa

    n, width = mat.shape
    offsets = np.arange(0, 2 * width * n + 1, 2 * width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(_HEX[mat]))


def _addresses(addr: np.ndarray) -> Any:
    """u64 -> "0x" + 16 hex digits (what ``f"{a:#x}"`` gives for every kernel address)."""
    import pyarrow as pa

    n = len(addr)
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, 0], out[:, 1] = ord("0"), ord("x")
    big_endian = np.ascontiguousarray(addr.astype(">u8")).view(np.uint8).reshape(n, 8)
    out[:, 2:] = _HEX[big_endian].view(np.uint8).reshape(n, 16)
    offsets = np.arange(0, 18 * n + 1, 18, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out))


def _names(codes: np.ndarray, name: Callable[[int], str]) -> Any:
    """A string column from small integer codes: name each distinct code once."""
    import pandas as pd
    import pyarrow as pa

    idx, uniq = pd.factorize(codes, sort=False)
    return pa.DictionaryArray.from_arrays(
        pa.array(idx.astype(np.int32)), pa.array([name(int(u)) for u in uniq], pa.string())
    )


class Namer:
    """Turns raw kernel records into :class:`Event` objects with names."""

    def __init__(
        self,
        node: str,
        probe_ids: dict[str, int],
        point_of_enum: dict[str, str],
        netns: dict[int, str] | None = None,
        functions: list[str] | None = None,
    ):
        """``netns``: names known beforehand (inode -> name, e.g. from a trace file), which
        win over what the machine says; the rest are read from the machine. ``functions``:
        the all-skb function list of the trace header (``ht_event.func`` k names entry k-1)."""
        self.node = node
        self._funcs = ["", *(functions or ())]
        self._probe = {v: point_of_enum.get(k, k) for k, v in probe_ids.items()}
        hooks = kernel_enum("nf_inet_hooks")
        self._hooks = {k: v.removeprefix("NF_INET_") for k, v in hooks.items()}
        self._drop_code = probe_ids.get("HT_PROBE_KFREE_SKB", -1)
        # points whose events name a netfilter hook (hook entry/exit, and the table probes)
        self._nf_codes = {
            probe_ids.get(e, -1)
            for e in ("HT_PROBE_NF_FIRST", "HT_PROBE_NF_LAST", "HT_PROBE_IPT_DO_TABLE",
                      "HT_PROBE_IP6T_DO_TABLE", "HT_PROBE_NFT_DO_CHAIN")
        }
        self._given = dict(netns or {})
        self._netns: dict[int, str] = {}
        self._refreshed = 0.0
        self.refresh_netns()

    def refresh_netns(self) -> None:
        """Re-read namespace names. Inodes still unnamed keep their ``netns<ino>`` placeholder."""
        fresh = {n.inode: n.name for n in list_netns()}
        self._netns = {**self._netns, **fresh, **self._given}
        self._refreshed = time.monotonic()

    def netns_name(self, ino: int) -> str:
        name = self._netns.get(ino)
        if name is not None:
            return name
        if ino == 0:
            return "?"
        # a namespace created since the last look: look again, at most once a second (a
        # scan of /proc costs ~4 ms; unnamed namespaces must not trigger one per event)
        if time.monotonic() - self._refreshed > 1.0:
            self.refresh_netns()
        return self._netns.setdefault(ino, f"netns{ino}")

    def ndjson(self, recs: np.ndarray) -> bytes:
        """The records as JSON lines ``{"type": "event", ...}`` (docs/event-schema.md), equal
        to ``json.dumps(Event.to_json())`` per event, written column-wise: names are looked up
        once per distinct value, hex is made by numpy, and polars (Rust) writes the lines (bytes).
        This is the recording path of ``hoptrace trace -o``; it makes no :class:`Event`."""
        # imported here: pandas, pyarrow and polars take ~0.3 s, which every command would pay
        import pandas as pd
        import polars as pl
        import pyarrow as pa

        n = len(recs)
        if n == 0:
            return b""
        probe = recs["probe"]
        is_drop = probe == self._drop_code
        verdict = recs["verdict"].astype(np.int64)
        decided = verdict != VERDICT_NONE
        # a drop that a table announced names its hook too (docs/event-schema.md)
        is_nf = np.isin(probe, list(self._nf_codes)) | (is_drop & decided)
        nf_prio_set = np.isin(probe, list(self._nf_codes))
        none = 0xFFFF  # a code no hook, family or reason has
        flag_bits = np.array(list(FLAG_NAMES), dtype=np.uint8)
        has_flag = (recs["flags"][:, None] & flag_bits[None, :]) != 0
        flag_names = np.array(list(FLAG_NAMES.values()))[np.nonzero(has_flag)[1]]
        flag_off = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(has_flag.sum(axis=1), out=flag_off[1:])
        dev_key = recs["netns"].astype(np.uint64) << np.uint64(32) | recs["ifindex"]
        dev_idx, devs = pd.factorize(dev_key, sort=False)
        first = np.empty(len(devs), dtype=np.int64)
        first[dev_idx[::-1]] = np.arange(n - 1, -1, -1)  # first row naming each device
        ifnames = [b.split(b"\0", 1)[0].decode(errors="replace")
                   for b in recs["ifname"][first].tolist()]
        drop_code = np.where(is_drop, recs["drop_reason"], 0).astype(np.int64)
        cols: dict[str, Any] = {
            "type": _names(np.zeros(n, np.uint8), lambda _: "event"),
            "ts_ns": recs["ts_ns"],
            "node": _names(np.zeros(n, np.uint8), lambda _: self.node),
            "netns": _names(recs["netns"], self.netns_name),
            "netns_ino": recs["netns"],
            "ifindex": recs["ifindex"],
            "ifname": pa.DictionaryArray.from_arrays(
                pa.array(dev_idx.astype(np.int32)), pa.array(ifnames, pa.string())
            ),
            "probe": _names(probe, lambda c: self._probe.get(c, str(c))),
            "track": recs["track"],
            "skb": _addresses(recs["skb"]),
            "cpu": recs["cpu"],
            "len": recs["len"],
            "mark": recs["mark"],
            "protocol": recs["protocol"],
            "nf_hook": _names(np.where(is_nf, recs["nf_hook"].astype(np.int64), none),
                              lambda c: "" if c == none else self._hooks.get(c, str(c))),
            "nf_pf": _names(np.where(is_nf, recs["nf_pf"].astype(np.int64), none),
                            lambda c: "" if c == none else NF_PF.get(c, str(c))),
            "nf_prio": np.where(nf_prio_set, recs["nf_prio"], 0),
            "drop_reason": _names(np.where(is_drop, drop_code, -1),
                                  lambda c: "" if c < 0 else drop_reason_name(c)),
            "drop_reason_code": drop_code,
            "identity": recs["identity"],
            "flags": pa.ListArray.from_arrays(pa.array(flag_off),
                                              pa.array(flag_names, pa.string())),
            "hdr_kind": _names(recs["hdr_kind"], lambda c: HDR_KINDS.get(c, "none")),
            "hdr": _hex_rows(recs["hdr"]),
            "func": _names(recs["func"], self.func_name),
        }
        assert list(cols)[1:] + list(NF_DECISION_FIELDS) == list(Event._fields)  # one schema
        hex_len = pl.Series(np.minimum(recs["hdr_len"], recs["hdr"].shape[1]).astype(np.int64) * 2)
        frame = pl.from_arrow(pa.table(cols))
        assert isinstance(frame, pl.DataFrame)
        df = frame.with_columns(pl.col("hdr").str.slice(0, hex_len))
        if not decided.any():
            return _ndjson_bytes(df)
        # rows with a decision (rare: drops and their table events) carry three more keys;
        # written apart and put back in place, so the common rows stay one columnar write
        rows = np.flatnonzero(decided)
        extra = df[rows].with_columns(
            pl.Series("verdict", [verdict_name(int(v)) for v in verdict[rows]], pl.String),
            pl.Series("nf_table", _cstrings(recs["nf_table"][rows]), pl.String),
            pl.Series("nf_chain", _cstrings(recs["nf_chain"][rows]), pl.String),
        )
        lines = _ndjson_bytes(df).splitlines()
        for i, line in zip(rows.tolist(), _ndjson_bytes(extra).splitlines(), strict=True):
            lines[i] = line
        return b"\n".join(lines) + b"\n"

    def func_name(self, code: int) -> str:
        """``ht_event.func`` -> the kernel function's name ("" for 0, the curated probes)."""
        return self._funcs[code] if 0 <= code < len(self._funcs) else f"func#{code}"

    def events(self, recs: np.ndarray) -> list[Event]:
        """Name a batch of kernel records. Column-wise: per-row numpy access costs ~20x more."""
        if len(recs) == 0:
            return []
        col = {name: recs[name].tolist() for name in _INT_COLUMNS}
        ifnames = recs["ifname"].tolist()
        tables = recs["nf_table"].tolist()
        chains = recs["nf_chain"].tolist()
        hdr = recs["hdr"]
        hdrs = hdr.tobytes()
        width = hdr.shape[1]
        probe_name, hooks, netns_name = self._probe, self._hooks, self.netns_name
        nf_codes, drop_code, func_name = self._nf_codes, self._drop_code, self.func_name
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
            vcode = col["verdict"][i]
            if vcode != VERDICT_NONE:
                decision = (verdict_name(vcode), _cstring(tables[i]), _cstring(chains[i]))
                named_hook = is_nf or is_drop
            else:
                decision = ("", "", "")
                named_hook = is_nf
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
                        hooks.get(col["nf_hook"][i], str(col["nf_hook"][i])) if named_hook else "",
                        NF_PF.get(col["nf_pf"][i], str(col["nf_pf"][i])) if named_hook else "",
                        col["nf_prio"][i] if is_nf else 0,
                        drop_reason_name(code) if is_drop else "",
                        code,
                        col["identity"][i],
                        fl,
                        HDR_KINDS.get(col["hdr_kind"][i], "none"),
                        hdrs[base : base + col["hdr_len"][i]],
                        func_name(col["func"][i]) if col["func"][i] else "",
                        *decision,
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
    "func",
    "verdict",
)


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _cstrings(mat: np.ndarray) -> list[str]:
    return [_cstring(b) for b in mat.tolist()]
