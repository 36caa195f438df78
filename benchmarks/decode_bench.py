"""Decoder benchmark: hoptrace vs dpkt, scapy, pyshark and tshark on generated pcaps.

Each tool decodes every packet of a corpus to its innermost flow and counts packets per
flow (direction-independent 5-tuple). Every (tool, corpus) runs in a fresh process so the
peak RSS it reports is its own; the time covers reading the pcap, decoding and counting,
and is CPU time (the process's and its children's), steadier than wall time on a shared
machine. hoptrace and dpkt run ``--repeat`` times, interleaved, and the best run counts.
scapy and pyshark are far too slow for 200,000 packets: they run on the first
``--sample``/``--pyshark-sample`` packets and the table says so. Afterwards hoptrace's
per-flow counts are checked against tshark's on every packet tshark decodes.

    .venv/bin/python benchmarks/decode_bench.py                  # 200,000 packets per corpus
    .venv/bin/python benchmarks/decode_bench.py --packets 20000  # quick run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

# decode_corpus (scapy) is imported where needed so the workers' RSS stays their own
from decode_tshark import TSHARK, flow_key, tshark_command  # noqa: E402

CORPORA = ("plain", "vxlan4789", "vxlan8472", "ipip", "geneve", "mix")
TSHARK_DECODE_AS = {"vxlan8472": ["udp.port==8472,vxlan"],
                    "mix": ["udp.port==8472,vxlan", "udp.port==8285,ip"]}

TOOLS = ("hoptrace", "dpkt", "scapy", "pyshark", "tshark")
VXLAN_PORTS = frozenset({4789, 8472, 6784})


def _addr_text() -> tuple[object, object]:
    """Cached address-to-text helpers, given to every Python tool alike."""
    from socket import AF_INET6, inet_ntoa, inet_ntop

    c4: dict[bytes, str] = {}
    c6: dict[bytes, str] = {}

    def v4(raw: bytes) -> str:
        s = c4.get(raw)
        if s is None:
            s = c4[raw] = inet_ntoa(raw)
        return s

    def v6(raw: bytes) -> str:
        s = c6.get(raw)
        if s is None:
            s = c6[raw] = inet_ntop(AF_INET6, raw)
        return s

    return v4, v6


def run_hoptrace(pcap: str, limit: int, corpus: str) -> Counter:
    from decoders import decode
    from decoders.pcap import PcapFile

    counts: Counter = Counter()
    capture = PcapFile(pcap)
    start = capture.start
    for frame in capture.frames():
        flow = decode(frame, start).inner
        counts[flow.key() if flow is not None else None] += 1
    return counts


def run_dpkt(pcap: str, limit: int, corpus: str) -> Counter:
    import dpkt
    from dpkt.ethernet import Ethernet
    from dpkt.gre import GRE
    from dpkt.ip import IP
    from dpkt.ip6 import IP6
    from dpkt.tcp import TCP
    from dpkt.udp import UDP

    v4, v6 = _addr_text()
    ips = (IP, IP6)

    def inner(buf: bytes) -> tuple | None:
        try:
            ip = Ethernet(buf).data
            last = l4 = None
            for _ in range(8):
                if not isinstance(ip, ips):
                    break
                last, l4 = ip, ip.data
                if isinstance(l4, ips):
                    ip = l4
                elif isinstance(l4, UDP) and l4.dport in VXLAN_PORTS:
                    ip = Ethernet(l4.data[8:]).data
                elif isinstance(l4, UDP) and l4.dport == 6081:
                    pl = l4.data
                    body = pl[8 + ((pl[0] & 0x3F) << 2):]
                    ptype = int.from_bytes(pl[2:4], "big")
                    ip = (Ethernet(body).data if ptype == 0x6558 else
                          IP(body) if ptype == 0x0800 else IP6(body))
                elif isinstance(l4, UDP) and l4.dport == 8285:
                    ip = IP(l4.data) if l4.data[0] >> 4 == 4 else IP6(l4.data)
                elif isinstance(l4, GRE):
                    ip = l4.data
                    if l4.p == 0x6558 and isinstance(ip, bytes):
                        ip = Ethernet(ip).data
                else:
                    break
        except Exception:  # dpkt raises many kinds on malformed input
            return None
        if last is None:
            return None
        text = v4 if isinstance(last, IP) else v6
        sport = dport = 0
        if isinstance(l4, (TCP, UDP)):
            sport, dport = l4.sport, l4.dport
        return flow_key(last.p, text(last.src), sport, text(last.dst), dport)

    counts: Counter = Counter()
    with open(pcap, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            counts[inner(buf)] += 1
    return counts


def run_scapy(pcap: str, limit: int, corpus: str) -> Counter:
    from scapy.contrib.geneve import GENEVE  # noqa: F401 - registers UDP 6081
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers
    from scapy.utils import PcapReader

    for port in VXLAN_PORTS:
        bind_layers(UDP, VXLAN, dport=port)
    bind_layers(UDP, IP, dport=8285)
    l4_proto = {TCP: 6, UDP: 17}
    counts: Counter = Counter()
    with PcapReader(pcap) as reader:
        for n, pkt in enumerate(reader):
            if n == limit:
                break
            last = l4 = None
            layer = pkt
            while layer:
                kind = type(layer)
                if kind is IP or kind is IPv6:  # IPerror/IPerror6 (ICMP quotes) are subclasses
                    last, l4 = layer, None
                elif (kind is TCP or kind is UDP) and l4 is None:
                    l4 = layer
                layer = layer.payload
            if last is None:
                counts[None] += 1
                continue
            proto = last.proto if type(last) is IP else l4_proto.get(type(l4), last.nh)
            ports = (l4.sport, l4.dport) if l4 is not None else (0, 0)
            counts[flow_key(proto, last.src, ports[0], last.dst, ports[1])] += 1
    return counts


def run_pyshark(pcap: str, limit: int, corpus: str) -> Counter:
    import pyshark

    decode_as = {}
    for spec in TSHARK_DECODE_AS.get(corpus, ()):
        sel, proto = spec.split(",")
        decode_as[sel] = proto
    cap = pyshark.FileCapture(pcap, keep_packets=False, decode_as=decode_as or None,
                              override_prefs={"ip.defragment": "FALSE",
                                              "ipv6.defragment": "FALSE"})
    l4_proto = {"udp": 17, "tcp": 6, "icmp": 1, "icmpv6": 58}
    counts: Counter = Counter()
    try:
        for n, pkt in enumerate(cap):
            if n == limit:
                break
            last = l4 = None
            for layer in pkt.layers:
                name = layer.layer_name
                if name in ("ip", "ipv6"):
                    last, l4 = layer, None
                elif name in l4_proto and l4 is None:
                    l4 = layer
                    if name.startswith("icmp"):
                        break
            try:
                ports = (0, 0)
                if l4 is not None and l4.layer_name in ("udp", "tcp"):
                    ports = (int(l4.srcport), int(l4.dstport))
                proto = (int(last.proto) if last.layer_name == "ip" else
                         l4_proto.get(l4.layer_name, -1) if l4 is not None else -1)
                key = flow_key(proto, last.src, ports[0], last.dst, ports[1])
            except AttributeError:  # no IP layer, or one tshark could not decode
                key = None
            counts[key] += 1
    finally:
        cap.close()
    return counts


def run_tshark(pcap: str, limit: int, corpus: str, keys_out: str = "") -> Counter:
    from decode_tshark import parse_line

    out = subprocess.run(tshark_command(pcap, TSHARK_DECODE_AS.get(corpus, ())), check=True,
                         capture_output=True, text=True).stdout
    keys = [parse_line(line) for line in out.splitlines()]
    if keys_out:
        Path(keys_out).write_text(json.dumps(keys))
    return Counter(keys)


def worker(tool: str, pcap: str, limit: int, corpus: str, keys_out: str) -> None:
    """Run one tool on one pcap in this process and print a JSON result line."""
    run = globals()[f"run_{tool}"]
    # CPU time, not wall time: the machine is shared and noisy. For tshark it is tshark's
    # own CPU time (a child process) plus ours parsing its output.
    t0 = time.process_time()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = run(pcap, limit, corpus, keys_out) if tool == "tshark" else run(pcap, limit, corpus)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (time.process_time() - t0 + c1.ru_utime - c0.ru_utime + c1.ru_stime
               - c0.ru_stime)
    # ru_maxrss survives execve (Linux), so it would report the parent's size; VmHWM is
    # this process image's own peak. tshark's peak comes from RUSAGE_CHILDREN.
    own = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"packets": sum(counts.values()), "seconds": seconds,
                      "flows": sum(1 for k in counts if k is not None),
                      "rss_mb": max(own, kids) / 1024}))


def check_against_tshark(pcap: Path, keys_file: Path) -> tuple[int, int, list[str]]:
    """(packets compared, packets tshark decoded, problems) for hoptrace vs tshark."""
    from decoders import decode
    from decoders.pcap import PcapFile

    theirs = [tuple(k) if k else None for k in json.loads(keys_file.read_text())]
    ours = [decode(frame) for _, frame in PcapFile(pcap)]
    problems = []
    if len(theirs) != len(ours):
        problems.append(f"packet count {len(ours)} vs tshark {len(theirs)}")
    mine: Counter = Counter()
    ref: Counter = Counter()
    for d, key in zip(ours, theirs, strict=False):
        if key is None:
            continue
        ref[key] += 1
        if d.error is None and d.inner is not None:
            mine[d.inner.key()] += 1
    if mine != ref:
        diff = (mine - ref) + (ref - mine)
        problems.append(f"{len(diff)} flows differ, e.g. {list(diff.items())[:3]}")
    return sum(mine.values()), sum(ref.values()), problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=200_000, help="packets per corpus")
    p.add_argument("--sample", type=int, default=5_000, help="packets scapy decodes")
    p.add_argument("--pyshark-sample", type=int, default=1_000, help="packets pyshark decodes")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of hoptrace and dpkt, interleaved; the best one counts")
    p.add_argument("--corpora", default=",".join(CORPORA))
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--keep", help="write the pcaps here instead of a temporary directory")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        tool, pcap, limit, corpus, keys_out = args.worker
        worker(tool, pcap, int(limit), corpus, keys_out)
        return 0
    tools = [t for t in args.tools.split(",") if t != "tshark" or TSHARK]
    limits = {"scapy": args.sample, "pyshark": args.pyshark_sample}
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.machine()} "
          f"Python {platform.python_version()}, {args.packets} packets per corpus")
    with tempfile.TemporaryDirectory(prefix="hoptrace-bench-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        header = (f"{'corpus':10} {'tool':9} {'packets':>8} {'pkts/s':>9} {'x dpkt':>7} "
                  f"{'RSS MB':>7} {'flows':>6}")
        print(header)
        print("-" * len(header))
        failed = False
        from decode_corpus import write_corpus

        for corpus in args.corpora.split(","):
            pcap = where / f"{corpus}.pcap"
            write_corpus(corpus, pcap, args.packets)
            keys_file = where / f"{corpus}.tshark.json"
            results: dict[str, dict] = {}
            runs = [t for _ in range(args.repeat) for t in tools if t in ("hoptrace", "dpkt")]
            runs += [t for t in tools if t not in ("hoptrace", "dpkt")]
            for tool in runs:
                limit = min(limits.get(tool, args.packets), args.packets)
                out = subprocess.run([sys.executable, __file__, "--worker", tool, str(pcap),
                                      str(limit), corpus, str(keys_file)],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{corpus:10} {tool:9} failed: {out.stderr.strip()[-300:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if tool not in results or r["seconds"] < results[tool]["seconds"]:
                    results[tool] = r
            base = results.get("dpkt")
            for tool in tools:
                if tool not in results:
                    continue
                r = results[tool]
                rate = r["packets"] / r["seconds"]
                ratio = rate / (base["packets"] / base["seconds"]) if base else float("nan")
                sampled = "*" if r["packets"] < args.packets else " "
                print(f"{corpus:10} {tool:9} {r['packets']:>7}{sampled} {rate:>9,.0f} "
                      f"{ratio:>6.2f}x {r['rss_mb']:>7.0f} {r['flows']:>6}")
            if "tshark" in results and "hoptrace" in results:
                compared, decoded, problems = check_against_tshark(pcap, keys_file)
                verdict = "same flow counts" if not problems else "; ".join(problems)
                failed |= bool(problems)
                print(f"{corpus:10} check     hoptrace vs tshark on {decoded} packets tshark "
                      f"decodes ({compared} decoded by both): {verdict}")
        print("* decoded a sample (the first N packets) of the corpus")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
