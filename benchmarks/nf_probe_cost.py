"""What the netfilter hook and decision probes cost per call and per packet, from the kernel's
own BPF statistics (``kernel.bpf_stats_enabled``: run_time_ns and run_cnt per program).

In the two-node VXLAN lab (Flannel's iptables-nft tables on both nodes, plus one
iptables-legacy rule on n2 that matches nothing, so ``ipt_do_table`` runs too), a bounded ping
flood a1 -> b1 (``ping -f -c PINGS``, every packet accepted) is traced with the curated probes,
and the statistics of the nf programs are read while they are still attached. Then a bounded
burst that n2's FORWARD drops (DROP_PINGS echo requests, ``-i 0.01``): the decision path.
Each with the trampolines (fentry/fexit) and with the kprobe/kretprobe fallback (on a kernel
with neither, the netfilter links' programs nf_first/nf_last), and each with a filter that
matches the lab traffic and one that matches nothing (``host 10.250.0.1``: what every other
packet pays).

run_time_ns counts the program only, not the trampoline or kprobe entry around it: the
per-call figure is a lower bound of the whole cost. Calls per packet divide run_cnt by the
echo requests sent (each request's reply passes the hooks too).

    .venv/bin/python benchmarks/nf_probe_cost.py --kernel 6.1   # in the VM (TCG: emulated)
    python3 benchmarks/nf_probe_cost.py --here                  # this kernel, as root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PINGS = 2000
DROP_PINGS = 200
NO_MATCH = "host 10.250.0.1"
# program name suffixes; nf_first/nf_last are the BPF netfilter links (6.4+), for comparison
NF_PROGRAMS = ("nf_hook_slow", "ipt_do_table", "nft_do_chain", "nf_first", "nf_last")


def bpf_stats() -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) of every loaded program (bpftool, names cut at 15)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                         check=True).stdout
    return {p.get("name", ""): (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out)}


def one(lab, mechs: str, flt: str, drop: bool) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from tracer.catalogue import Mech
    from tracer.filter import compile_filter
    from tracer.loader import ProbeOptions, Probes
    from tracer.names import resolve

    allow = None if mechs == "fexit" else frozenset(Mech) - {Mech.FENTRY, Mech.FEXIT}
    opts = ProbeOptions(filter=compile_filter(flt), netns=resolve(",".join(lab.namespaces())),
                        netns_all=False, allow=allow)
    b1 = lab.addr("b1")
    if drop:
        lab.exec("n2", ["iptables", "-I", "FORWARD", "1", "-d", b1, "-p", "icmp", "-j", "DROP"],
                 check=True)
        argv = ["ping", "-q", "-c", str(DROP_PINGS), "-i", "0.01", "-W", "1", b1]  # no -w: it would
        # keep sending until the deadline
        sent = DROP_PINGS
    else:
        argv = ["ping", "-q", "-f", "-c", str(PINGS), "-w", "120", b1]
        sent = PINGS
    events = 0
    try:
        with Probes(opts) as probes:
            names = {p for c in probes.choices if c.chosen
                     for p in (c.chosen.program, c.chosen.entry)
                     if p and p.endswith(NF_PROGRAMS)}
            before = bpf_stats()
            t0 = time.monotonic()
            ping = subprocess.Popen(["ip", "netns", "exec", lab.netns("a1"), *argv],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while ping.poll() is None and time.monotonic() - t0 < 150:
                events += len(probes.read(50))
            if ping.poll() is None:
                ping.kill()
            out = ping.communicate()[0]
            after = bpf_stats()
            events += len(probes.drain())
            lost = sum(probes.lost().values())
    finally:
        if drop:
            lab.exec("n2", ["iptables", "-D", "FORWARD", "1"], check=True)
    if not drop and ping.returncode != 0:
        raise RuntimeError(f"ping flood failed: {out[-300:]}")
    progs = {}
    for name in sorted(names):
        # bpftool names a program by its BTF function name when it has one, else the kernel's
        # 15-character name
        key = name if name in after else name[:15]
        ns = after.get(key, (0, 0))[0] - before.get(key, (0, 0))[0]
        cnt = after.get(key, (0, 0))[1] - before.get(key, (0, 0))[1]
        progs[name] = {"calls": cnt, "ns_per_call": round(ns / cnt, 1) if cnt else None,
                       "calls_per_request": round(cnt / sent, 2),
                       "ns_per_request": round(ns / sent, 1)}
    return {"mechanisms": mechs, "filter": "match" if flt != NO_MATCH else "nomatch",
            "traffic": "drop" if drop else "accept", "requests": sent, "events": events,
            "lost": lost, "programs": progs}


def run_here() -> dict[str, object]:
    from trace_common import lab_up

    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    rows = []
    try:
        with lab_up("nf") as lab:
            lab.exec("n2", ["iptables-legacy", "-A", "FORWARD", "-p", "udp", "--dport", "9",
                            "-j", "DROP"], check=True)  # ipt_do_table runs; matches nothing
            lab.exec("a1", ["ping", "-c", "2", "-W", "2", lab.addr("b1")])  # ARP, caches
            match = f"icmp and host {lab.addr('b1')}"
            for mechs in ("fexit", "kretprobe"):
                for flt in (match, NO_MATCH):
                    for drop in (False, True):
                        print(f"{mechs} {flt} {'drop' if drop else 'accept'}", file=sys.stderr,
                              flush=True)
                        rows.append(one(lab, mechs, flt, drop))
    finally:
        subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "runs": rows}


def report(res: dict[str, object]) -> str:
    from trace_common import table

    rows = []
    for r in res["runs"]:  # type: ignore[attr-defined]
        for name, p in r["programs"].items():
            rows.append([f"{r['mechanisms']}, {r['filter']}, {r['traffic']}", name, p["calls"],
                         p["ns_per_call"] if p["ns_per_call"] is not None else "-",
                         p["calls_per_request"], p["ns_per_request"]])
    return (f"Linux {res['kernel']}, {res['cpus']} CPUs (TCG-emulated in the VM tier): "
            f"{PINGS} flood pings accepted, {DROP_PINGS} dropped in n2's FORWARD\n\n"
            + table(["run", "program", "calls", "ns/call", "calls/request", "ns/request"], rows))


GUEST = r"""
set -e
W=/tmp/htb; H=${KT_HOST_DIR:-/host}
mkdir -p $W/src $W/site $W/tmp
(cd $H && tar -cf - pyproject.toml tracer decoders probes benchmarks) | tar -C $W/src -xf -
tar -C $W/site -xf $H/build/kernel-tier/site.tar
export PYTHONPATH=$W/site TMPDIR=$W/tmp
cd $W/src
for m in br_netfilter veth vxlan bridge ip_tables nf_tables; do modprobe $m || true; done
python3 benchmarks/nf_probe_cost.py --here --json
"""


def run_vm(label: str) -> int:
    from trace_common import guest_json

    res = guest_json("nf-probe-cost", label, GUEST, 1500)
    if res is None:
        return 1
    print(report(res))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="6.1", help="VM kernel of tools/kernel_matrix.py")
    ap.add_argument("--here", action="store_true", help="run on this kernel, not in a VM")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args()
    if not args.here:
        return run_vm(args.kernel)
    res = run_here()
    print(json.dumps(res) if args.json else report(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
