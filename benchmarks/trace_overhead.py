"""Tracing overhead: pod-to-pod throughput across the VXLAN lab with hoptrace off and on.

Pod a1 (node n1) sends to an iperf3 server in pod b1 (node n2) through veth, bridge and
Flannel-style VXLAN. Each round runs, for TCP (``-t SECONDS``) and for 64-byte UDP (``-b 0``,
bounded by time), four configurations back to back: ``off``; ``empty``, every probe attached
as for a trace but each program returning at once (``--empty-probes``: the floor that the
attach points alone cost, whatever a program does); ``nomatch``, hoptrace with a filter no
packet matches (``host 10.250.0.1``); ``all``, hoptrace with no filter. The order rotates each
round so drift on the shared machine does not favour one configuration.
hoptrace runs as ``hoptrace trace ... --netns <the lab's 5 namespaces> -o FILE
--ready-file F``, and is stopped with SIGINT; its summary line gives events and lost events.
Reported: median received throughput per configuration, its ratio to ``off`` (and the median
of the per-round ratios), and for ``all`` the events/s written, lost events and tracer CPU.

    .venv/bin/python benchmarks/trace_overhead.py            # 3 rounds of 5 s runs
    .venv/bin/python benchmarks/trace_overhead.py --quick    # 2 rounds of 3 s runs
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trace_common import (  # noqa: E402
    NO_MATCH,
    IperfResult,
    Tracer,
    bpf_stats,
    iperf,
    iperf_server,
    lab_up,
    machine,
    median,
    prog_stats,
    table,
)

CONFIGS = ("off", "empty", "nomatch", "all")
TRACER_ARGS = {"empty": ("", ("--empty-probes",)), "nomatch": (NO_MATCH, ()), "all": ("", ())}
WORKLOADS = ("tcp", "udp")
TARGET_LOSS = 0.05  # at most 5 % throughput loss with the non-matching filter


def rate(r: IperfResult) -> float:
    """The throughput figure compared: Gbit/s for TCP, received kpackets/s for UDP."""
    return r.bits_per_s / 1e9 if r.mode == "tcp" else r.packets_per_s / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 2)")
    ap.add_argument("--seconds", type=float, help="iperf3 -t per run (default 5, quick 3)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    secs = args.seconds or (3.0 if args.quick else 5.0)

    # (workload, config) -> per-round figures
    thr: dict[tuple[str, str], list[float]] = defaultdict(list)
    evs: dict[str, list[float]] = defaultdict(list)
    lost: dict[str, list[int]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    sent: dict[str, list[float]] = defaultdict(list)
    profile: dict[str, tuple[float, dict[str, tuple[int, int]]]] = {}
    with lab_up("ov") as lab, iperf_server(lab):
        netns = ",".join(lab.namespaces())
        for rnd in range(rounds):
            order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[: rnd % len(CONFIGS)]
            for wl in WORKLOADS:
                for cfg in order:
                    if cfg == "off":
                        res = iperf(lab, wl, secs)
                    else:
                        flt, extra = TRACER_ARGS[cfg]
                        with Tracer(flt, netns, max_s=secs + 60, extra=extra) as tr:
                            c0 = tr.cpu()
                            res = iperf(lab, wl, secs)
                            c1 = tr.cpu()
                            run = tr.stop()
                        if cfg == "all":
                            evs[wl].append(run.events / res.seconds)
                            lost[wl].append(run.lost_total)
                            cpu[wl].append((c1 - c0) / res.seconds)
                    thr[wl, cfg].append(rate(res))
                    if wl == "udp":
                        sent[cfg].append(res.sent_packets_per_s / 1e3)
                    print(f"round {rnd + 1} {wl} {cfg}: {rate(res):.3f}", file=sys.stderr)
        # one more UDP run per configuration, with BPF run-time statistics on (they add two
        # clock reads per program run, so these runs are not in the throughput table)
        for cfg in ("empty", "nomatch", "all"):
            flt, extra = TRACER_ARGS[cfg]
            with bpf_stats(), Tracer(flt, netns, max_s=secs + 60, extra=extra) as tr:
                s0 = prog_stats(tr.pid)
                res = iperf(lab, "udp", secs)
                s1 = prog_stats(tr.pid)
                tr.stop()
            profile[cfg] = (res.packets_per_s * res.seconds, {
                k: (s1[k][0] - s0.get(k, (0, 0))[0], s1[k][1] - s0.get(k, (0, 0))[1])
                for k in s1})

    print(f"## trace_overhead ({machine()}; {rounds} rounds of {secs:g} s)\n")
    rows = []
    verdict = []
    for wl in WORKLOADS:
        off = thr[wl, "off"]
        for cfg in CONFIGS:
            vals = thr[wl, cfg]
            paired = median([v / o for v, o in zip(vals, off, strict=True)])
            rows.append([wl, cfg, f"{median(vals):.3f}", f"{median(vals) / median(off):.3f}",
                         f"{paired:.3f}", " ".join(f"{v:.3f}" for v in vals)])
            if cfg == "nomatch":
                loss = 1 - paired
                verdict.append(f"{wl}: nomatch loss {loss * 100:.1f} % "
                               f"({'meets' if loss <= TARGET_LOSS else 'misses'} the 5 % target)")
            elif cfg == "empty":
                verdict.append(f"{wl}: empty programs at the same points (the floor) cost "
                               f"{(1 - paired) * 100:.1f} %")
    print(table(["workload", "config", "median (TCP Gbit/s, UDP kpkt/s)", "ratio of medians",
                 "median paired ratio", "per round"], rows))
    print()
    print("UDP sent by the client (kpkt/s, median): "
          + ", ".join(f"{c} {median(sent[c]):.1f}" for c in CONFIGS))
    print()
    prow = []
    for cfg, (pkts, st) in profile.items():
        for name, (cnt, ns) in sorted(st.items()):
            if cnt:
                prow.append([cfg, name, f"{cnt / max(pkts, 1):.1f}", f"{ns / cnt:.0f}",
                             f"{ns / 1e9 / secs:.3f}"])
    print(f"BPF run time during one {secs:g} s UDP run (BPF_ENABLE_STATS):\n")
    print(table(["config", "program", "runs per received packet", "ns per run",
                 "CPU (cores)"], prow))
    print()
    print(table(["workload", "match-all events/s (median)", "lost events (median)",
                 "tracer CPU (median, 1.0 = one core)"],
                [[wl, f"{median(evs[wl]):,.0f}", f"{median(lost[wl]):,.0f}",
                  f"{median(cpu[wl]):.2f}"] for wl in WORKLOADS]))
    print()
    print("\n".join(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
