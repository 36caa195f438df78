"""``--probes all-skb`` against the curated set: functions, attach time, and the cost on a
bounded pod-to-pod transfer across the two-node VXLAN lab.

Configurations, run back to back on the same lab: ``off`` (no tracer); ``curated`` and
``all-skb``, each with a filter that matches the traffic (``host <b1>``: every packet of it is
followed and recorded) and one that matches nothing (``host 10.250.0.1``: the cost every other
packet of the machine pays). Workloads, both bounded in count and time and inside the lab:
``ping``, a flood of PINGS echo requests a1 -> b1 (``ping -f -c``), timed; ``tcp``, TCP_MIB MiB
sent a1 -> b1 over one connection, timed by the sender from connect to the receiver's close.
Reported: per workload the rate and its ratio to ``off``; per tracer run the functions
attached, the seconds to attach them, events and lost events.

The kernels that allow all-skb are the VM matrix's (the development machine forbids kprobes),
so by default this boots one with tools/kernel_matrix.py's machinery and runs itself inside:

    .venv/bin/python benchmarks/allskb_bench.py --kernel 6.12     # in the VM (TCG: emulated)
    python3 benchmarks/allskb_bench.py --here                     # on this kernel, as root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PINGS = 1000
TCP_MIB = 16
NO_MATCH = "host 10.250.0.1"
TCP_PORT = 5302
CONFIGS = (
    ("off", None, None),
    ("curated, matching", "curated", "match"),
    ("curated, non-matching", "curated", "nomatch"),
    ("all-skb, matching", "all-skb", "match"),
    ("all-skb, non-matching", "all-skb", "nomatch"),
)

# tracer/allskb.py Report.summary(), on the tracer's stderr
ALLSKB_LINE = re.compile(
    r"all-skb: (?P<n>\d+) functions attached via (?P<mech>\S+) in (?P<s>[\d.]+)s "
    r"\((?P<btf>\d+) with an skb argument in BTF, \d+ modules; skipped \d+: "
    r"(?P<nt>\d+) not traceable, (?P<ref>\d+) refused"
)

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(120)
while True:
    c, _ = s.accept(); c.settimeout(120)
    while c.recv(1 << 16):
        pass
    c.close()
"""
CLIENT = """
import socket, sys, time
n = int(sys.argv[3]) << 20; buf = b"x" * (1 << 16)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
t0 = time.monotonic(); sent = 0
while sent < n:
    sent += c.send(buf)
c.shutdown(socket.SHUT_WR); c.recv(1)  # returns when the receiver has read all and closed
print(time.monotonic() - t0)
"""


def ping_rate(lab, dst: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    r = lab.exec("a1", ["ping", "-q", "-f", "-c", str(PINGS), "-w", "120", dst], timeout=150)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"ping flood failed: {r.stdout[-300:]} {r.stderr[-300:]}")
    return PINGS / dt


def tcp_rate(lab, dst: str) -> float:  # type: ignore[no-untyped-def]
    r = lab.exec("a1", [sys.executable, "-c", CLIENT, dst, str(TCP_PORT), str(TCP_MIB)],
                 timeout=180)
    if r.returncode != 0:
        raise RuntimeError(f"TCP transfer failed: {r.stderr[-500:]}")
    return TCP_MIB * 8 / 1024 / float(r.stdout.split()[-1])  # Gbit/s


def run_here(rounds: int) -> dict[str, object]:
    import trace_common
    from trace_common import Tracer, lab_up, median

    trace_common.PYTHON = sys.executable  # the guest has no .venv
    results: dict[str, dict[str, list[float]]] = {c[0]: {"ping": [], "tcp": []} for c in CONFIGS}
    runs: dict[str, list[dict[str, object]]] = {c[0]: [] for c in CONFIGS}
    with lab_up("as") as lab:
        b1 = lab.addr("b1")
        server = subprocess.Popen(["ip", "netns", "exec", lab.netns("b1"), sys.executable, "-c",
                                   SERVER, str(TCP_PORT)])
        try:
            time.sleep(3)  # the server's Python starts slowly under emulation
            ping_rate(lab, b1)  # ARP, FDB, caches warm
            for rnd in range(rounds):
                order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[: rnd % len(CONFIGS)]
                for name, probe_set, flt in order:
                    print(f"round {rnd + 1}: {name}", file=sys.stderr, flush=True)
                    if probe_set is None:
                        results[name]["ping"].append(ping_rate(lab, b1))
                        results[name]["tcp"].append(tcp_rate(lab, b1))
                        continue
                    tr = Tracer(f"host {b1}" if flt == "match" else NO_MATCH,
                                ",".join(lab.namespaces()), max_s=900)
                    tr.argv += ["--probes", probe_set]
                    try:  # not "with tr": that starts it with a 30 s timeout
                        run = tr.start(timeout=900)
                        m = ALLSKB_LINE.search(tr.err.read_text())  # written before ready
                        results[name]["ping"].append(ping_rate(lab, b1))
                        results[name]["tcp"].append(tcp_rate(lab, b1))
                        done = tr.stop(timeout=600)
                    finally:
                        tr.__exit__(None, None, None)  # kills it if still running; cleans up
                    runs[name].append({
                        "ready_s": round(run.ready_s, 2),
                        "attach_total_s": run.attached_s,
                        "functions": int(m["n"]) if m else 0,
                        "mechanism": m["mech"] if m else "curated",
                        "allskb_attach_s": float(m["s"]) if m else None,
                        "in_btf": int(m["btf"]) if m else None,
                        "not_traceable": int(m["nt"]) if m else None,
                        "rejected": int(m["ref"]) if m else None,
                        "events": done.events,
                        "lost": done.lost_total,
                    })
        finally:
            server.kill()
            server.wait(timeout=10)
    base = {w: median(results["off"][w]) for w in ("ping", "tcp")}
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "pings": PINGS,
        "tcp_mib": TCP_MIB,
        "rounds": rounds,
        "rates": {k: {w: median(v) for w, v in r.items()} for k, r in results.items()},
        "ratios": {k: {w: round(median(v) / base[w], 3) for w, v in r.items()}
                   for k, r in results.items()},
        "tracer_runs": runs,
    }


def report(res: dict[str, object]) -> str:
    from trace_common import table

    rates, ratios, runs = res["rates"], res["ratios"], res["tracer_runs"]
    rows = []
    for name, *_ in CONFIGS:
        r = runs[name][0] if runs[name] else {}  # type: ignore[index]
        rows.append([
            name,
            f"{rates[name]['ping']:.0f} ({ratios[name]['ping']:.2f})",  # type: ignore[index]
            f"{rates[name]['tcp']:.3f} ({ratios[name]['tcp']:.2f})",  # type: ignore[index]
            r.get("functions", "-") if r else "-",
            r.get("allskb_attach_s", "-") if r and r.get("functions") else "-",
            r.get("ready_s", "-") if r else "-",
            f"{r['events']} / {r['lost']}" if r else "-",
        ])
    return (
        f"Linux {res['kernel']}, {res['cpus']} CPUs, {res['pings']} flood pings and "
        f"{res['tcp_mib']} MiB TCP a1 -> b1 per run, {res['rounds']} round(s), medians\n\n"
        + table(["configuration", "ping/s (ratio to off)", "TCP Gbit/s (ratio)",
                 "functions", "attach s (all-skb)", "start to ready s", "events / lost"], rows)
    )


GUEST = r"""
set -e
W=/tmp/htb; H=${KT_HOST_DIR:-/host}
mkdir -p $W/src $W/site $W/tmp
(cd $H && tar -cf - pyproject.toml tracer decoders probes benchmarks) | tar -C $W/src -xf -
tar -C $W/site -xf $H/build/kernel-tier/site.tar
export PYTHONPATH=$W/site TMPDIR=$W/tmp
cd $W/src
for m in br_netfilter veth vxlan bridge; do modprobe $m || true; done
python3 benchmarks/allskb_bench.py --here --json --rounds ROUNDS
"""


def run_vm(label: str, rounds: int) -> int:
    from trace_common import guest_json

    res = guest_json("allskb-bench", label, GUEST.replace("ROUNDS", str(rounds)), 3000)
    if res is None:
        return 1
    print(report(res))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="6.12", help="VM kernel of tools/kernel_matrix.py")
    ap.add_argument("--here", action="store_true", help="run on this kernel, not in a VM")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if not args.here:
        return run_vm(args.kernel, args.rounds)
    res = run_here(args.rounds)
    print(json.dumps(res) if args.json else report(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
