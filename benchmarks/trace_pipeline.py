"""Event pipeline: how many events/s hoptrace's Python side takes without loss, and past that.

Part 1, end to end: ``hoptrace trace --netns <lab> -o FILE`` matching everything, while iperf3
sends 64-byte UDP from pod a1 to pod b1 at increasing rates (``-b RATE -l 64 -t SECONDS``);
every packet makes ~38 events on the VXLAN path (5 netif_receive_skb, 5 net_dev_queue and 14
netfilter hooks x first/last priority). Per step: packets/s received, events/s written to the
file (the summary line's count over the traffic time, and over the time until the tracer had
drained the ring and exited: the rate it sustained), lost events per probe (the summary
line's counters: a full ring must show there, never silently), and the tracer's CPU (its
rusage from traffic start until it has drained and exited, over that wall time).

Part 2, in process: :class:`tracer.loader.Probes` directly, match-all, ``--netns`` the lab.
(a) burst: a 128 MiB ring is filled by a flood while nobody reads, then drained with
``probes.read(0)`` and timed; (b) live: ``probes.read(10)`` in a loop counting records during a
``-b 0`` flood; (c) the burst's records pushed through the per-event stages the CLI adds
: recording (``-o FILE``: ``Namer.ndjson``, records to JSON lines) and text output
(``Namer.events``, ``ChainBuilder.add``, ``render``), each timed.

    .venv/bin/python benchmarks/trace_pipeline.py            # 6 rates x 5 s
    .venv/bin/python benchmarks/trace_pipeline.py --quick    # 4 rates x 3 s
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trace_common import (  # noqa: E402
    IPERF_PORT,
    IperfResult,
    Lab,
    Tracer,
    iperf,
    iperf_server,
    lab_up,
    machine,
    table,
)

RATES = (1000, 2000, 4000, 8000, 12000, 16000)  # offered UDP packets/s (x ~38 events)
QUICK_RATES = (2000, 8000, 12000, 16000)
PIN_RATES = (2000, 4000, 6000, 8000, 10000, 12000)  # one CPU for traffic: it tops out lower
TARGET = 300_000  # events/s without loss
TRAFFIC_CPU, TRACER_CPU = 0, 1  # --pin: iperf3 (and so the lab's softirq work) vs the tracer


def step(lab: Lab, netns: str, pps: int, secs: float, pin: bool) -> list[object]:
    """One rate: trace everything while iperf3 sends ``pps`` 64-byte packets/s."""
    with Tracer("", netns, max_s=secs + 120, cpu=TRACER_CPU if pin else None) as tr:
        c0, t0 = tr.cpu(), time.monotonic()
        res = iperf(lab, "udp", secs, rate=str(pps * 64 * 8), cpu=TRAFFIC_CPU if pin else None)
        run = tr.stop()
    wall = run.exit_s - t0
    lost = ", ".join(f"{p} {n:,}" for p, n in sorted(run.lost.items())) or "0"
    return [f"{pps:,}", f"{res.sent_packets_per_s:,.0f}", f"{res.packets_per_s:,.0f}",
            f"{run.events / res.seconds:,.0f}", f"{run.events / wall:,.0f}",
            f"{run.lost_total / res.seconds:,.0f}", lost,
            f"{(run.cpu_s - c0) / wall:.2f}", f"{wall - res.seconds:.1f}", run.sigints]


def flood(lab: Lab, secs: float, into: list[IperfResult]) -> threading.Thread:
    """A ``-b 0`` 64-byte UDP flood for ``secs`` in a thread (its result appended to ``into``)."""
    th = threading.Thread(target=lambda: into.append(iperf(lab, "udp", secs)), daemon=True)
    th.start()
    return th


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def in_process(lab: Lab, secs: float) -> tuple[list[list[object]], list[list[object]]]:
    """Raw drain rates of :class:`Probes` and the per-event cost of each CLI stage."""
    from decoders import PortMap
    from tracer.catalogue import CATALOGUE
    from tracer.chains import ChainBuilder, render
    from tracer.event import Namer
    from tracer.filter import compile_filter
    from tracer.loader import DEFAULT_VXLAN_PORTS, ProbeOptions, Probes
    from tracer.names import Topology, resolve

    namespaces = resolve(",".join(lab.namespaces()))
    opts = ProbeOptions(filter=compile_filter(""), netns=namespaces, netns_all=False,
                        vxlan_ports=DEFAULT_VXLAN_PORTS, ring_bytes=128 << 20)
    rows: list[list[object]] = []
    results: list[IperfResult] = []
    with Probes(opts) as probes:
        # (a) burst: fill while nobody reads (bounded by the flood and by the ring size)
        flood(lab, min(secs, 2.0), results).join(timeout=60)
        lost0 = sum(probes.lost().values())
        c0, t0 = cpu_self(), time.perf_counter()
        batch = probes.read(0)
        n = len(batch)
        while True:
            more = len(probes.read(0))
            if not more:
                break
            n += more
        dt, dc = time.perf_counter() - t0, cpu_self() - c0
        rows.append(["burst: drain a filled ring, read(0)", f"{n:,}", f"{n / dt:,.0f}",
                     f"{lost0:,}", f"{dc / dt:.2f}"])
        # (b) live: count records while a flood runs (loop bounded by the flood's time)
        results.clear()
        th = flood(lab, secs, results)
        lost0 = sum(probes.lost().values())
        c0, t0, n = cpu_self(), time.perf_counter(), 0
        deadline = time.monotonic() + secs + 30
        while th.is_alive() and time.monotonic() < deadline:
            n += len(probes.read(10))
        n += len(probes.drain())
        dt, dc = time.perf_counter() - t0, cpu_self() - c0
        lost = sum(probes.lost().values()) - lost0
        rows.append([f"live: read(10) loop during a -b 0 flood "
                     f"({results[0].packets_per_s:,.0f} pkt/s received)" if results else "live",
                     f"{n:,}", f"{n / dt:,.0f}", f"{lost:,}", f"{dc / dt:.2f}"])

        # (c) the per-event stages of `hoptrace trace`, on the burst's records. Recording
        # (-o FILE, --format json) is Namer.ndjson alone; text output adds Event objects,
        # chains and their rendering.
        namer = Namer("bench", probes.probe_ids, {p.enum: p.name for p in CATALOGUE})
        batch = batch[:100_000]
        namer.ndjson(batch[:10])  # imports polars
        stages: list[tuple[str, str, float]] = []
        t = time.perf_counter()
        namer.ndjson(batch)
        stages.append(("record", "Namer.ndjson (records -> JSON lines)", time.perf_counter() - t))
        t = time.perf_counter()
        events = namer.events(batch)
        stages.append(("text", "Namer.events (records -> Event)", time.perf_counter() - t))
        builder = ChainBuilder(Topology.read(namespaces),
                               PortMap({p: "vxlan" for p in DEFAULT_VXLAN_PORTS}))
        t = time.perf_counter()
        chains = [c for c in map(builder.add, events) if c is not None]
        chains += builder.flush()
        stages.append(("text", "ChainBuilder.add (hop chains)", time.perf_counter() - t))
        t = time.perf_counter()
        for c in chains:
            render(c, False)
        stages.append(("text", f"render ({len(chains):,} text chains)", time.perf_counter() - t))
    m = max(len(batch), 1)
    stage_rows: list[list[object]] = [
        [mode, name, f"{dt / m * 1e6:.2f}", f"{m / dt:,.0f}"] for mode, name, dt in stages
    ]
    for mode in ("record", "text"):
        total = sum(dt for md, _, dt in stages if md == mode)
        stage_rows.append([mode, "all stages of this mode", f"{total / m * 1e6:.2f}",
                           f"{m / total:,.0f}"])
    return rows, stage_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 rates of 3 s")
    ap.add_argument("--seconds", type=float, help="traffic time per step (default 5, quick 3)")
    ap.add_argument("--pin", action="store_true",
                    help=f"tracer alone on CPU {TRACER_CPU}, iperf3 (client, server, softirq) on "
                    f"CPU {TRAFFIC_CPU}: what the Python side takes on one core")
    args = ap.parse_args()
    secs = args.seconds or (3.0 if args.quick else 5.0)
    rates = PIN_RATES if args.pin else QUICK_RATES if args.quick else RATES

    rows = []
    with lab_up("pl") as lab, iperf_server(lab, port=IPERF_PORT,
                                           cpu=TRAFFIC_CPU if args.pin else None):
        netns = ",".join(lab.namespaces())
        for pps in rates:
            rows.append(step(lab, netns, pps, secs, args.pin))
            print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
        drain_rows, stage_rows = in_process(lab, secs)

    pinned = f"; tracer on CPU {TRACER_CPU}, traffic on CPU {TRAFFIC_CPU}" if args.pin else ""
    print(f"## trace_pipeline ({machine()}; {secs:g} s per step{pinned})\n")
    print(table(["offered pkt/s", "sent pkt/s", "received pkt/s", "events/s written",
                 "events/s until drained", "lost events/s", "lost per probe (total)",
                 "tracer CPU (cores)",
                 "stop after traffic (s)", "SIGINTs to stop"], rows))
    print()
    print(table(["in-process drain (Probes, count only)", "records", "records/s",
                 "lost", "CPU (cores)"], drain_rows))
    print()
    print(table(["mode", "per-event stage of hoptrace trace", "us/event", "events/s"],
                stage_rows))
    print()
    ok = [r for r in rows if r[5] == "0"]
    best = max((float(str(r[3]).replace(",", "")) for r in ok), default=0.0)
    print(f"highest lossless step: {best:,.0f} events/s written "
          f"({'meets' if best >= TARGET else 'misses'} the {TARGET:,} events/s target)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.TimeoutExpired as exc:
        sys.exit(f"timed out: {exc}")
