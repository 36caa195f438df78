"""``hoptrace annotate``: comment every packet of a capture with its tunnels, inner flow and,
given trace files, the kernel path of that same packet."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from decoders import DEFAULT_PORTS, Flow, PortMap
from decoders.annotate import FlowTable, stack_comment
from decoders.pcap import Capture, CaptureError, decode_record
from decoders.pcapng import PcapngWriter
from tracer.errors import UsageError

EXAMPLES = """\
examples:
  hoptrace annotate underlay.pcap -o annotated.pcapng
  hoptrace annotate underlay.pcap --decode-as udp.port==9527,vxlan -o annotated.pcapng
  hoptrace annotate underlay.pcap --trace trace.jsonl -o annotated.pcapng   # add the kernel path
  hoptrace annotate underlay.pcap --format json                            # flow summary only
  tshark -r annotated.pcapng -T fields -e frame.number -e frame.comment

Each packet gets a comment with its encapsulation stack in one line, e.g.
  VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472 | 10.244.1.2 -> 10.244.2.2 ICMP echo ...
VXLAN is decoded on UDP 4789, 8472 and 6784, Geneve on 6081, Flannel's UDP backend on 8285, and
VXLAN on any other port when the payload is unmistakably VXLAN: such a tunnel is shown as
'VXLAN?' and the comment says it is a guess (--decode-as to confirm, --no-guess to turn off).
With --trace (files written by 'hoptrace trace -o'), a second comment lists the kernel path of
the same packet: matched by its innermost flow and identity (IP ID, ICMP id/seq, TCP seq/ack,
length), with the capture time (realtime) put on the trace's clock (monotonic) through the
trace header, within --window.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "annotate",
        help="comment each packet of a pcap with its tunnels, inner flow and kernel path",
        description="Read a pcap or pcapng capture (Ethernet, Linux cooked SLL/SLL2 or raw IP) "
        "and write pcapng with a comment on every packet that Wireshark and tshark show "
        "(frame.comment), or a per-flow summary as JSON lines.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN",
                   help="pcap or pcapng file ('-': standard input, e.g. from tcpdump -w -)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (pcapng, or JSON lines with --format json); '-' is stdout")
    p.add_argument("--format", choices=("pcapng", "json"), default="pcapng",
                   help="pcapng with per-packet comments (default), or one JSON object per "
                   "inner flow")
    p.add_argument("--decode-as", action="append", default=[], metavar="udp.port==N,PROTO",
                   help="decode this UDP port (or N-M range) as vxlan, geneve or ip "
                   "(Wireshark syntax; repeatable)")
    p.add_argument("--no-guess", action="store_true",
                   help="do not recognise VXLAN on ports not in the port map")
    p.add_argument("--trace", action="append", default=[], type=Path, metavar="TRACE.jsonl",
                   help="add the kernel path of each packet from this trace file (repeatable: "
                   "one per node)")
    p.add_argument("--window", type=float, default=1.0, metavar="SECONDS",
                   help="a trace packet matches a captured one only within this time (default 1)")
    p.add_argument("--progress", action="store_true",
                   help="report progress on stderr every second (default: only on a terminal)")
    p.set_defaults(func=run)


def parse_ports(specs: list[str]) -> PortMap:
    ports = DEFAULT_PORTS
    for spec in specs:
        try:
            ports = PortMap.parse_decode_as(spec, ports)
        except ValueError as exc:
            raise UsageError(f"--decode-as: {exc}") from None
    return ports


# ---- kernel paths from trace files --------------------------------------------------------


@dataclass
class _Candidate:
    chain: Any  # tracer.chains.Chain
    source: int  # which trace file
    first_ns: int  # the chain's first and last event, on the trace's clock
    last_ns: int


class KernelPaths:
    """Chains replayed from trace files, indexed by directed inner flow + packet identity.

    ``offset_ns`` per file (realtime - monotonic) comes from the header's ``started_unix_ns``
    and ``started_mono_ns``, both written by ``hoptrace trace``. A file without them is
    matched by identity alone until the first unambiguous match gives the offset.
    """

    def __init__(self, paths: list[Path], ports: PortMap, window_s: float) -> None:
        from tracer.chains import replay
        from tracer.tracefile import read_trace

        self.window_ns = int(window_s * 1e9)
        self.offsets: list[int | None] = []  # realtime - monotonic, from the header
        self.learned: list[int | None] = []  # the same, estimated from a unique match
        self.index: dict[tuple[Any, ...], list[_Candidate]] = {}
        self.chains = 0
        self._used: set[int] = set()
        for n, path in enumerate(paths):
            trace = read_trace(path)
            h = trace.header
            if "started_unix_ns" in h and "started_mono_ns" in h:
                self.offsets.append(int(h["started_unix_ns"]) - int(h["started_mono_ns"]))
            else:
                self.offsets.append(None)
            self.learned.append(None)
            for chain in replay(trace, ports):
                self.chains += 1
                cand = _Candidate(chain, n, chain.first.event.ts_ns, chain.last.event.ts_ns)
                keys = {_key(s.decoded.inner) for s in chain.steps
                        if s.decoded is not None and s.decoded.inner is not None}
                for k in keys:
                    self.index.setdefault(k, []).append(cand)

    def match(self, flow: Flow, ts_ns: int | None) -> list[tuple[_Candidate, int | None]]:
        """The best chain per (trace file, node) for this packet, each with the capture time
        on that trace's clock (None when unknown)."""
        cands = self.index.get(_key(flow))
        if not cands:
            return []
        best: dict[tuple[int, str], tuple[tuple[int, int], _Candidate, int | None]] = {}
        for c in cands:
            off = self.offsets[c.source]
            at = None
            if ts_ns is None:
                rank = (int(id(c) in self._used), c.first_ns)
            elif off is None:
                # no common clock: identity decides; among equal identities the time on a
                # clock offset learned from an unambiguous match, else the earliest chain
                # not yet given to a packet
                learned = self.learned[c.source]
                if learned is None:
                    rank = (int(id(c) in self._used), c.first_ns)
                else:
                    t = ts_ns - learned
                    rank = (0, max(c.first_ns - t, t - c.last_ns, 0))
            else:
                at = ts_ns - off
                dist = max(c.first_ns - at, at - c.last_ns, 0)
                if dist > self.window_ns:
                    continue
                rank = (0, dist)
            group = (c.source, c.chain.node)
            if group not in best or rank < best[group][0]:
                best[group] = (rank, c, at)
        out = []
        for _, c, at in sorted(best.values(), key=lambda b: b[1].first_ns):
            self._used.add(id(c))
            if (self.offsets[c.source] is None and ts_ns is not None and len(cands) == 1
                    and self.learned[c.source] is None):
                # the capture falls somewhere in this chain's span: good enough to rank
                # later equal identities by time, not to show a capture offset
                self.learned[c.source] = ts_ns - c.first_ns
            out.append((c, at))
        return out


def _key(f: Flow) -> tuple[Any, ...]:
    return (f.src, f.dst, f.sport, f.dport, *f.identity())


def path_comment(c: _Candidate, at: int | None) -> str:
    """The chain as one line: node, packet and fate, then every hop with its offset since
    the first, all separated by ``"; "``."""
    from tracer.hops import HopKind

    chain = c.chain
    parts = []
    for s in chain.steps:
        if s.hop.kind == HopKind.NETFILTER_OUT:
            continue
        ev = s.event
        text = f"+{s.offset_ns / 1000:.1f}us {ev.netns} {ev.ifname} {s.hop.label}"
        if s.change:
            text += f" {s.change}"
        if s.hop.inferred:
            text += f" ({s.hop.inferred}, inferred)"
        elif s.hop.kind not in (HopKind.NETFILTER, HopKind.DROP, HopKind.FREED):
            text += f" ({s.hop.kind})"
        parts.append(text)
    head = (f"kernel path on node {chain.node}, packet #{chain.track} "
            f"[{chain.duration_ns / 1000:.1f}us, {chain.fate()}]")
    if at is not None:
        head += f", captured at {(at - c.first_ns) / 1000:+.1f}us"  # before it: -
    return "; ".join([head, *parts])


# ---- the command ----------------------------------------------------------------------------


class Progress:
    """A status line on stderr about once a second (``\\r``-rewritten on a terminal)."""

    def __init__(self, enabled: bool, total_bytes: int) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.total = total_bytes
        self.t0 = self.last = time.monotonic()
        self.shown = False

    def update(self, packets: int, offset: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 1.0:
            return
        self.last = now
        pct = f" ({100 * offset / self.total:.0f}%)" if self.total else ""
        rate = packets / max(now - self.t0, 1e-9)
        line = f"annotate: {packets:,} packets{pct}, {rate:,.0f} packets/s"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")


def _open_output(args: argparse.Namespace, binary: bool) -> IO[Any] | None:
    if args.output is None:
        return None
    if args.output == "-":
        if binary and sys.stdout.isatty():
            raise UsageError("will not write pcapng to a terminal: give -o FILE or pipe it")
        return sys.stdout.buffer if binary else sys.stdout
    out = Path(args.output)
    try:
        if out.exists() and str(args.input) != "-" and out.resolve() == args.input.resolve():
            raise UsageError(f"-o {out}: is the input file")
        return out.open("wb" if binary else "w")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    ports = parse_ports(args.decode_as)
    guess = not args.no_guess
    if args.window <= 0:
        raise UsageError("--window must be positive")
    pcapng = args.format == "pcapng"
    if pcapng and args.output is None:
        raise UsageError("annotate writes pcapng: give -o FILE (or -o - for stdout), or "
                         "--format json for the flow summary")
    if args.trace and not pcapng:
        raise UsageError("--trace adds kernel paths to the pcapng comments; it does nothing "
                         "with --format json")
    try:
        cap = Capture(args.input)
    except CaptureError as exc:
        raise UsageError(str(exc)) from None
    paths = KernelPaths(args.trace, ports, args.window) if args.trace else None
    want_progress = args.progress or sys.stderr.isatty()
    failed: CaptureError | None = None
    with cap:
        fp = _open_output(args, pcapng)
        try:
            counts = _annotate(cap, fp, ports, guess, paths,
                               Progress(want_progress, cap.size()), pcapng)
        except CaptureError as exc:  # e.g. an unknown link type on a later pcapng interface
            failed = exc
        finally:
            if fp is not None and fp not in (sys.stdout, sys.stdout.buffer):
                fp.close()
            elif fp is not None:
                fp.flush()
    if failed is not None:
        if args.output not in (None, "-"):
            Path(args.output).unlink(missing_ok=True)  # no half-written output
        raise UsageError(str(failed))
    n, flows, malformed, matched, dt = counts
    where = f" -> {args.output}" if args.output not in (None, "-") else ""
    kernel = f", {matched} matched to kernel paths ({paths.chains} in trace)" if paths else ""
    nflows = f", {flows} flows" if not pcapng else ""
    print(f"annotate: {n} packets{nflows}, {malformed} malformed{kernel}{where} in {dt:.1f}s",
          file=sys.stderr)
    if cap.truncated:
        print(f"hoptrace: warning: {cap.truncated}", file=sys.stderr)
        return 1
    return 0


def _annotate(cap: Capture, fp: IO[Any] | None, ports: PortMap, guess: bool,
              paths: KernelPaths | None, progress: Progress,
              pcapng: bool) -> tuple[int, int, int, int, float]:
    t0 = time.monotonic()
    writer = PcapngWriter(fp) if pcapng and fp is not None else None  # type: ignore[arg-type]
    table = None if pcapng else FlowTable()
    out_iface: dict[int, int] = {}
    interfaces = cap.interfaces
    n = malformed = matched = 0
    for ts, lt, data, off, wirelen, iface, old in cap:
        d = decode_record(lt, data, off, ports, guess)
        n += 1
        if d.error is not None:
            malformed += 1
        if table is not None:
            table.add(d, ts, wirelen)
        if writer is not None:
            comments = [*old, stack_comment(d)]
            if paths is not None and d.inner is not None:
                found = paths.match(d.inner, ts)
                if found:
                    matched += 1
                    comments += [path_comment(c, at) for c, at in found]
                else:
                    comments.append("kernel path: not in the trace (no event with this flow "
                                    "and identity within the window)")
            oi = out_iface.get(iface)
            if oi is None:
                i = interfaces[iface]
                oi = out_iface[iface] = writer.add_interface(i.linktype, i.snaplen or 262144,
                                                             i.name)
            writer.write(oi, ts, data, wirelen, comments)
        if not n & 0x3FFF:
            progress.update(n, cap.offset)
    if writer is not None:
        writer.flush()
    progress.done()
    nflows = 0
    if table is not None:
        nflows = len(table)
        out = fp if fp is not None else sys.stdout
        for rec in table.records():
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        out.write(json.dumps({"type": "summary", "packets": n, "flows": nflows,
                              "malformed": malformed, "truncated": cap.truncated},
                             separators=(",", ":")) + "\n")
    return n, nflows, malformed, matched, time.monotonic() - t0

