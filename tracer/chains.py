"""Hop chains: one packet's events on one node, in order, with latencies and what changed.

A chain is keyed by (node, track): the kernel gives a track id when the filter first matches a
packet and follows that skb until it is freed. A chain is complete when the packet is freed
(consumed or dropped) and is otherwise flushed after ``idle_ns`` without events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from decoders import DEFAULT_PORTS, START_ETH, START_IP, Decoded, PortMap, decode
from tracer.event import Event
from tracer.hops import Hop, HopKind, classify
from tracer.names import Topology

if TYPE_CHECKING:
    from tracer.tracefile import Trace

DEVICE_POINTS = ("netif_receive_skb", "net_dev_queue")


@dataclass(frozen=True, slots=True)
class Step:
    event: Event
    hop: Hop
    decoded: Decoded | None
    offset_ns: int  # since the chain's first event
    dt_ns: int  # since the previous step: this hop's latency
    change: str  # what changed at this hop: encapsulated, decapsulated, NAT, dropped


@dataclass
class Chain:
    node: str
    track: int
    steps: list[Step] = field(default_factory=list)
    complete: bool = False
    last_dev: Event | None = None  # the latest rx/tx event: hop inference looks back to it

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def duration_ns(self) -> int:
        return self.last.event.ts_ns - self.first.event.ts_ns

    @property
    def dropped(self) -> bool:
        return self.last.hop.kind == HopKind.DROP

    def summary(self) -> str:
        for s in self.steps:
            if s.decoded is not None and s.decoded.inner is not None:
                return s.decoded.summary()
        return "(not IP)"

    def fate(self) -> str:
        if not self.complete:
            return "in flight"
        if self.dropped:
            ev = self.last.event
            where = ""
            if ev.nf_table:  # a table probe saw the decision
                where = f" in {decision_text(ev.nf_table, ev.nf_chain, ev.verdict)}"
            return f"dropped{where}: {ev.drop_reason} in {ev.netns}"
        return "freed"


def decision_text(table: str, chain: str, verdict: str) -> str:
    """``filter/FORWARD, verdict DROP``: a netfilter decision as trace and report show it."""
    place = "/".join(x for x in (table, chain) if x) or "?"
    return f"{place}, verdict {verdict}"


def decode_event(ev: Event, ports: PortMap = DEFAULT_PORTS) -> Decoded | None:
    if not ev.hdr or ev.hdr_kind == "none":
        return None
    return decode(ev.hdr, start=START_ETH if ev.hdr_kind == "eth" else START_IP, ports=ports)


def _flow_text(d: Decoded) -> str:
    f = d.inner
    if f is None:
        return "?"
    if f.sport or f.dport:
        return f"{f.src}:{f.sport}>{f.dst}:{f.dport}"
    return f"{f.src}>{f.dst}"


def change_between(prev: Decoded | None, cur: Decoded | None) -> str:
    if prev is None or cur is None or cur.inner is None or prev.inner is None:
        return ""
    if len(cur.tunnels) > len(prev.tunnels):
        t = cur.tunnels[0]  # the outermost: the one just added
        vni = f" vni {t.vni}" if t.vni is not None else ""
        return f"encapsulated {t.kind.upper()}{vni} {t.src}>{t.dst}"
    if len(cur.tunnels) < len(prev.tunnels):
        return "decapsulated"
    a, b = prev.inner, cur.inner
    if (a.src, a.dst, a.sport, a.dport) != (b.src, b.dst, b.sport, b.dport):
        return f"NAT {_flow_text(prev)} -> {_flow_text(cur)}"
    return ""


class ChainBuilder:
    """Feeds events in, hands complete chains out."""

    def __init__(
        self, topo: Topology, ports: PortMap = DEFAULT_PORTS, idle_ns: int = 2_000_000_000
    ) -> None:
        self.topo = topo
        self.ports = ports
        self.idle_ns = idle_ns
        self._open: dict[tuple[str, int], Chain] = {}

    def add(self, ev: Event) -> Chain | None:
        """Add one event; returns its chain when this event completed it."""
        key = (ev.node, ev.track)
        chain = self._open.get(key)
        if chain is None:
            chain = self._open[key] = Chain(ev.node, ev.track)
        prev = chain.steps[-1] if chain.steps else None
        pdec = prev.decoded if prev else None
        if prev is not None and ev.hdr == prev.event.hdr and ev.hdr_kind == prev.event.hdr_kind:
            dec = pdec  # same bytes at the next hook: most steps; decoding is the costly part
        else:
            dec = decode_event(ev, self.ports)
        hop = classify(ev, self.topo, dec, chain.last_dev)
        if ev.probe in DEVICE_POINTS:
            chain.last_dev = ev
        change = change_between(pdec, dec) if dec is not None else ""
        if hop.kind == HopKind.DROP:
            change = f"reason {ev.drop_reason_code} ({ev.drop_reason})"
            hook = _open_hook(chain)
            if hook:
                change += f" inside nf:{hook}"
            if ev.nf_table:
                change += ": " + decision_text(ev.nf_table, ev.nf_chain, ev.verdict)
        elif hop.kind == HopKind.FREED and ev.probe == "kfree_skb":
            change = f"{ev.drop_reason}, not a drop (tracer.hops.is_benign)"
        elif hop.kind == HopKind.NETFILTER_VERDICT:
            change = decision_text(ev.nf_table, ev.nf_chain, ev.verdict)
        t0 = chain.steps[0].event.ts_ns if chain.steps else ev.ts_ns
        dt = ev.ts_ns - prev.event.ts_ns if prev else 0
        chain.steps.append(
            Step(ev, hop, dec if dec is not None else pdec, ev.ts_ns - t0, dt, change)
        )
        if hop.kind in (HopKind.DROP, HopKind.FREED):
            chain.complete = True
            return self._open.pop(key)
        return None

    def expire(self, now_ns: int) -> list[Chain]:
        """Chains with no event for ``idle_ns`` (the packet left the traced namespaces)."""
        done = [k for k, c in self._open.items() if now_ns - c.last.event.ts_ns > self.idle_ns]
        return [self._open.pop(k) for k in done]

    def flush(self) -> list[Chain]:
        out = sorted(self._open.values(), key=lambda c: c.first.event.ts_ns)
        self._open.clear()
        return out


def replay(trace: Trace, ports: PortMap | None = None) -> list[Chain]:
    """A recorded trace's hop chains, named exactly as the live run named them (the header's
    topology and VXLAN ports): what report tests, annotate and the TUI replay."""
    h = trace.header
    learned = dict.fromkeys(h.get("vxlan_ports", ()), "vxlan")
    file_ports = (ports or DEFAULT_PORTS).with_ports(learned)
    builder = ChainBuilder(Topology.from_json(h.get("topology", {})), file_ports)
    out = []
    for ev in sorted(trace.events, key=lambda e: e.ts_ns):
        chain = builder.add(ev)
        if chain is not None:
            out.append(chain)
    return out + builder.flush()


def _open_hook(chain: Chain) -> str:
    """The netfilter hook the packet entered last and never left, if any."""
    for s in reversed(chain.steps):
        if s.event.probe == "nf_hook_last":
            return ""
        if s.event.probe == "nf_hook_first":
            return s.event.nf_hook
    return ""


def render(chain: Chain, verbose: bool = False) -> str:
    """The chain as text lines that fit 80 columns (nf accept lines only with ``verbose``, or
    when the packet changed inside that hook: IPVS un-NATs a reply there)."""
    head = (
        f"packet {chain.node}#{chain.track}: {chain.summary()}  "
        f"[{chain.duration_ns / 1000:.1f}us, {chain.fate()}]"
    )
    lines = [head]
    for s in chain.steps:
        if s.hop.kind == HopKind.NETFILTER_OUT and not verbose and not s.change:
            continue
        ev = s.event
        note = s.change
        if s.hop.inferred:
            note = (note + " " if note else "") + f"({s.hop.inferred}, inferred)"
        elif s.hop.kind not in (HopKind.NETFILTER, HopKind.NETFILTER_VERDICT, HopKind.DROP,
                                HopKind.FREED):
            note = (note + " " if note else "") + f"({s.hop.kind})"
        line = (
            f"{s.offset_ns / 1000:>9.1f}us {ev.netns[:12]:<12} {ev.ifname[:12]:<12} "
            f"{s.hop.label:<9} {note}".rstrip()
        )
        if len(line) > 80:  # keep 80 columns: the note goes on its own line
            line = line[: line.rindex(note)].rstrip() + "\n" + " " * 12 + note
        lines.append(line)
    return "\n".join(lines)
