"""What ``hoptrace annotate`` says about each packet and each flow (no kernel trace involved).

:func:`stack_comment` is the one-line encapsulation stack written as a pcapng comment;
:class:`FlowTable` folds decoded packets into one record per innermost flow for
``--format json``. Both are pure and work on :class:`decoders.Decoded` results.
"""

from __future__ import annotations

from typing import Any

from .model import Decoded, Flow, Tunnel

_PROTO = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 4: "ipip", 41: "ipv6"}
#: distinct tunnel stacks kept per flow (GRE sequence numbers etc. must not grow memory)
MAX_STACKS = 16


def stack_comment(d: Decoded) -> str:
    """``d.summary()``, plus a note naming each tunnel recognised by the heuristic only."""
    text = d.summary()
    for t in d.tunnels:
        if t.guessed:
            text += (f" [{t.kind.upper()}? is a guess from the payload: confirm with "
                     f"--decode-as udp.port=={t.dport},{t.kind}]")
    return text


def _tunnel_json(t: Tunnel) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": t.kind, "outer_src": t.src, "outer_dst": t.dst}
    if t.vni is not None:
        out["vni"] = t.vni
    if t.key is not None:
        out["key"] = t.key
    if t.dport:
        out["dport"] = t.dport
    if t.guessed:
        out["guessed"] = True
    return out


class FlowTable:
    """Packets, bytes, first/last time, tunnels and malformed count per innermost flow.

    Flows are keyed by :meth:`Flow.key` (both directions of a connection are one flow).
    Packets without an IP flow are grouped by their layer stack (``"eth/arp"``).
    """

    def __init__(self) -> None:
        # key -> [packets, bytes, first_ns, last_ns, malformed, stacks(dict), flow, layers]
        self._flows: dict[object, list[Any]] = {}

    def add(self, d: Decoded, ts_ns: int | None, wirelen: int) -> None:
        inner = d.inner
        key: object = inner.key() if inner is not None else "/".join(d.layers) or "empty"
        rec = self._flows.get(key)
        if rec is None:
            rec = self._flows[key] = [0, 0, ts_ns, ts_ns, 0, {}, inner, d.layers]
        rec[0] += 1
        rec[1] += wirelen
        if ts_ns is not None:
            if rec[2] is None or ts_ns < rec[2]:
                rec[2] = ts_ns
            if rec[3] is None or ts_ns > rec[3]:
                rec[3] = ts_ns
        if d.error is not None:
            rec[4] += 1
        if d.tunnels:
            stacks = rec[5]
            sig = tuple((t.kind, t.vni, t.key, t.src, t.dst, t.dport, t.guessed)
                        for t in d.tunnels)
            if sig not in stacks and len(stacks) < MAX_STACKS:
                stacks[sig] = d.tunnels

    def __len__(self) -> int:
        return len(self._flows)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready object per flow, busiest first."""
        out = []
        for key, (pkts, nbytes, first, last, bad, stacks, flow, _) in sorted(
                self._flows.items(), key=lambda kv: (-kv[1][0], str(kv[0]))):
            rec: dict[str, Any] = {"type": "flow"}
            if isinstance(flow, Flow):
                proto, a, pa, b, pb = flow.key()
                rec["flow"] = {"proto": _PROTO.get(proto, proto), "a": a, "a_port": pa,
                               "b": b, "b_port": pb, "l3": f"ipv{flow.l3}"}
            else:
                rec["flow"] = None
                rec["layers"] = key
            tunnels = [[_tunnel_json(t) for t in stack] for stack in stacks.values()]
            rec["tunnels"] = tunnels
            rec["vnis"] = sorted({t["vni"] for s in tunnels for t in s if "vni" in t})
            rec["outer_endpoints"] = sorted({(s[0]["outer_src"], s[0]["outer_dst"])
                                             for s in tunnels})
            rec.update(packets=pkts, bytes=nbytes, first_ns=first, last_ns=last, malformed=bad)
            out.append(rec)
        return out
