"""``hoptrace trace``: follow matching packets through the kernel and print their hop chains."""

from __future__ import annotations

import argparse
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from tracer import __version__, libbpf
from tracer.capabilities import require_root
from tracer.catalogue import PROBE_SETS
from tracer.chains import Chain, ChainBuilder, render
from tracer.errors import UsageError
from tracer.event import NEW_TRACK, Namer
from tracer.filter import compile_filter
from tracer.names import Topology, resolve
from tracer.tracefile import TraceWriter

T = TypeVar("T")

EXAMPLES = """\
examples:
  hoptrace trace 'host 10.244.2.2 and icmp' --netns all --count 4
  hoptrace trace 'tcp port 8080' --duration 5 -o trace.jsonl
  hoptrace trace 'udp port 8472' --outer --netns htlab-n1,htlab-n2
  hoptrace trace 'icmp and host 10.244.2.2' --probes all-skb --count 1
  hoptrace trace --format json | jq 'select(.type=="event") | .probe'

The filter is tcpdump syntax (see docs/filters.md), matched in the kernel against the innermost
headers (after VXLAN/Geneve/GRE/IPIP decapsulation) unless --outer is given. A matching packet is
then followed by identity through veth, bridges, tunnels and NAT until it is freed.

--probes all-skb (pwru's idea) adds every kernel function with a struct sk_buff * argument,
found from BTF, through kprobe.multi (or one kprobe each where the kernel lacks it): thousands
of probes, seconds to attach, and a cost on every packet of the machine, matching or not.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "trace",
        help="trace matching packets hop by hop",
        description="Trace packets that match FILTER through the Linux network path: every "
        "device, bridge, netfilter hook, tunnel and the drop, with per-hop latency.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("filter", nargs="*", help="tcpdump filter expression (default: everything)")
    p.add_argument(
        "--netns",
        default="all",
        metavar="all|NAME,...",
        help="namespaces to trace: 'all' (default) or names; the machine's own is 'host'",
    )
    p.add_argument(
        "--node",
        default=socket.gethostname(),
        help="node name written on every event (default: the hostname)",
    )
    p.add_argument(
        "--count",
        "-c",
        type=int,
        default=0,
        metavar="N",
        help="stop after N packets have completed their path",
    )
    p.add_argument(
        "--duration",
        "-d",
        type=float,
        default=0,
        metavar="SECONDS",
        help="stop after this many seconds",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write every event as JSON lines to FILE (docs/event-schema.md); like "
        "tcpdump -w, hop chains are then not printed unless --print is given",
    )
    p.add_argument(
        "--print",
        action="store_true",
        dest="print_chains",
        help="print hop chains on stdout even when writing to a file with -o",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="stdout format: hop chains as text (default) or the JSON-lines stream",
    )
    p.add_argument(
        "--outer",
        action="store_true",
        help="match the filter against the outer headers, not the innermost",
    )
    p.add_argument(
        "--vxlan-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="also decapsulate VXLAN on this UDP port (4789, 8472, 6784 and the "
        "ports of VXLAN devices found in the traced namespaces are always used)",
    )
    p.add_argument(
        "--ring-size",
        type=int,
        default=16,
        metavar="MiB",
        help="kernel ring buffer size in MiB, a power of two (default 16)",
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show netfilter accept (last-priority) events in hop chains",
    )
    p.add_argument(
        "--probes",
        choices=PROBE_SETS,
        default="curated",
        help="curated (default): the catalogue's points (hoptrace doctor); all-skb: those "
        "plus every kernel function taking a struct sk_buff * (needs kprobe.multi or kprobes)",
    )
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    # benchmarks/trace_overhead.py: every probe attached, every program returning at once
    p.add_argument("--empty-probes", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks. An exception raised from a signal handler
    would be swallowed when it lands inside the ring buffer's ctypes callback (it did, under
    load); and installing our own handler also undoes an inherited 'ignore SIGINT'."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self, _sig: int, _frame: object) -> None:
        self.set = True


def uninterrupted(work: Callable[[], T], stop: _StopFlag) -> T:
    """``work()``, done even if a SIGINT lands in it. polars installs a SIGINT handler of its
    own beside ours (pola-rs/polars#20961) and turns a signal that arrives during its work into
    KeyboardInterrupt, whatever Python's handler is: a batch being written when the user (or a
    test) stopped the tracer was lost, though counted. Here that means "stop", and the work is
    done again."""
    while True:
        try:
            return work()
        except KeyboardInterrupt:
            stop.set = True


def run(args: argparse.Namespace) -> int:
    from tracer.loader import DEFAULT_VXLAN_PORTS, ProbeOptions, Probes

    if args.debug:
        libbpf.set_echo(True)
    expr = " ".join(args.filter)
    flt = compile_filter(expr)  # a bad filter fails before anything is attached
    if args.debug:
        print(flt.describe(), file=sys.stderr)
    require_root()
    ring = args.ring_size
    if ring <= 0 or ring & (ring - 1):
        raise UsageError(f"--ring-size {ring}: must be a power of two (MiB)")
    if args.count < 0 or args.duration < 0:
        raise UsageError("--count and --duration must not be negative")
    namespaces = resolve(args.netns)
    topo = Topology.read(namespaces)
    ports = tuple(sorted(set(DEFAULT_VXLAN_PORTS) | topo.tunnel_ports() | set(args.vxlan_port)))
    opts = ProbeOptions(
        filter=flt,
        netns=namespaces,
        netns_all=args.netns.strip() == "all",
        outer=args.outer,
        vxlan_ports=ports,
        ring_bytes=ring << 20,
        probe_set=args.probes,
        empty=args.empty_probes,
    )
    out_fp: IO[bytes] | None = args.output.open("wb") if args.output else None
    writers = [TraceWriter(out_fp, background=True)] if out_fp else []
    if args.format == "json":
        writers.append(TraceWriter(sys.stdout.buffer))
    stop = _StopFlag()
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Probes(opts) as probes:
            return _loop(args, probes, topo, writers, expr, ports, stop)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if out_fp:
            try:
                writers[0].close()  # an error ends the run before: what is queued still goes
            finally:
                try:
                    out_fp.close()
                except OSError:
                    pass  # its data was flushed by close() above, or its error raised there


def _loop(args, probes, topo, writers, expr, ports, stop) -> int:  # type: ignore[no-untyped-def]
    from decoders import PortMap
    from tracer.catalogue import CATALOGUE

    allskb = probes.allskb
    namer = Namer(
        args.node,
        probes.probe_ids,
        {p.enum: p.name for p in CATALOGUE},
        functions=allskb.plan.functions if allskb else None,
    )
    header = dict(
        node=args.node,
        hostname=socket.gethostname(),
        kernel=platform.release(),
        hoptrace=__version__,
        clock="CLOCK_MONOTONIC",
        started_mono_ns=time.monotonic_ns(),
        started_unix_ns=time.time_ns(),
        filter=expr,
        outer=args.outer,
        netns=[n.name for n in probes.opts.netns],
        vxlan_ports=list(ports),
        probes=[
            {
                "point": c.point.name,
                "mechanism": c.chosen.kind.value if c.chosen else None,
                "target": c.chosen.target if c.chosen else None,
                "rejected": {m.kind.value: v.error for m, v in c.rejected},
            }
            for c in probes.choices
        ],
        topology=topo.to_json(),
        probe_set=probes.opts.probe_set,
        attach_s=round(probes.timings.total_s, 3),
    )
    if allskb:
        header["all_skb"] = allskb.to_json()
    for warning in probes.warnings:
        print(f"hoptrace: warning: {warning}", file=sys.stderr)
    if allskb:
        print(f"hoptrace: {allskb.summary()}", file=sys.stderr)
    for w in writers:
        w.header(**header)
    # Hop chains are built only when someone reads them (text on stdout) or --count needs them;
    # recording (-o, --format json) writes the kernel records column-wise, making no Event.
    text = args.format == "text" and (args.output is None or args.print_chains)
    need_chains = text or bool(args.count)
    builder = ChainBuilder(topo, PortMap({p: "vxlan" for p in ports}))
    print(
        f"Tracing {expr or 'all packets'} in {len(probes.opts.netns)} netns "
        f"(attached in {probes.timings.total_s:.2f}s). "
        "Ctrl-C to end.",
        file=sys.stderr,
    )
    if args.ready_file:
        args.ready_file.touch()
    deadline = time.monotonic() + args.duration if args.duration else None
    n_events = n_packets = 0
    lost_seen: dict[str, int] = {}
    last_lost_check = time.monotonic()

    def emit(chains: list[Chain]) -> bool:
        nonlocal n_packets
        for c in chains:
            n_packets += 1
            if text:
                print(render(c, args.verbose), flush=True)
            if args.count and n_packets >= args.count:
                return True
        return False

    def write(recs: np.ndarray) -> None:
        nonlocal n_packets
        if not need_chains:  # packets = tracks started (chains count completed ones)
            n_packets += int(np.count_nonzero(recs["flags"] & NEW_TRACK))
        if writers and len(recs):
            lines = uninterrupted(lambda: namer.ndjson(recs), stop)
            for w in writers:
                w.event_lines(lines)

    def check_lost() -> None:
        for probe, count in probes.lost().items():
            if count > lost_seen.get(probe, 0):
                print(
                    f"hoptrace: lost {count - lost_seen.get(probe, 0)} events at {probe} "
                    "(ring buffer full: raise --ring-size or narrow the filter)",
                    file=sys.stderr,
                )
                lost_seen[probe] = count
                for w in writers:
                    w.lost(probe, count)

    done = False
    t_start = time.monotonic()
    try:
        while not done and not stop.set:
            timeout = 50
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout = max(1, min(timeout, int(left * 1000)))
            recs = probes.read(timeout)
            n_events += len(recs)
            write(recs)
            if need_chains:
                for ev in namer.events(recs):
                    chain = builder.add(ev)
                    if chain is not None and emit([chain]):
                        done = True
                        break
                if not done:
                    done = emit(builder.expire(time.monotonic_ns()))
            if time.monotonic() - last_lost_check > 1.0:
                check_lost()
                last_lost_check = time.monotonic()
    except KeyboardInterrupt:
        pass
    recs = probes.drain()
    n_events += len(recs)
    write(recs)
    if need_chains:
        for ev in namer.events(recs):
            chain = builder.add(ev)
            if chain is not None and not (args.count and n_packets >= args.count):
                emit([chain])
        if not (args.count and n_packets >= args.count):
            emit(builder.flush())
    check_lost()
    elapsed = time.monotonic() - t_start
    for w in writers:
        w.summary(events=n_events, packets=n_packets, lost=lost_seen, duration_s=round(elapsed, 3))
    lost_txt = ", ".join(f"{n} at {p}" for p, n in lost_seen.items()) or "none"
    print(
        f"{n_events} events, {n_packets} packets in {elapsed:.1f}s; lost events: {lost_txt}",
        file=sys.stderr,
    )
    sys.stdout.flush()
    return 0
