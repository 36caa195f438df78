"""``hoptrace annotate`` benchmark: throughput and peak memory against capture-copying peers.

No other tool writes per-packet tunnel/flow comments, so the peers are the tools that read a
capture and write it back as pcapng: ``editcap IN OUT`` (copy, no dissection),
``tshark -r IN -w OUT`` (copies without dissecting), and ``tshark -Y 'frame.len > 0' -w OUT``
(the same, but a display filter makes it dissect every packet). Each command runs
as its own process; time is the process's CPU time (user + system, from ``wait4``), peak
memory its ``ru_maxrss``; each runs ``--repeat`` times interleaved and the best time counts.
``hoptrace annotate`` runs as the CLI, start-up included, in both output modes.

Memory flatness: the same corpus ``--scale`` times bigger, same commands, RSS compared.

The pcapng writer alone: this project's :class:`decoders.pcapng.PcapngWriter` against
scapy's ``RawPcapNgWriter`` writing the same frames with the same comment, in this process.

    .venv/bin/python benchmarks/annotate_bench.py                   # 200,000 packets, x10
    .venv/bin/python benchmarks/annotate_bench.py --packets 20000 --scale 3   # quick
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from decode_corpus import CORPORA, TSHARK_DECODE_AS, write_corpus  # noqa: E402

from decoders.pcap import Capture  # noqa: E402

# A child of this (large) Python process would report this process's RSS as its peak:
# ru_maxrss survives fork and execve. So each command runs under a small launcher that forks
# it and reports its rusage: GNU time if installed, else a bare Python (-S, ~9 MB floor).
TIME = shutil.which("time") and Path("/usr/bin/time").exists()
_LAUNCHER = ("import os,sys\npid=os.fork()\nif pid==0: os.execvp(sys.argv[1], sys.argv[1:])\n"
             "_,st,ru=os.wait4(pid,0)\nprint(f'{ru.ru_utime} {ru.ru_stime} {ru.ru_maxrss}',"
             "file=sys.stderr)\nsys.exit(os.waitstatus_to_exitcode(st))")


def measure(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of one command, output discarded."""
    if TIME:
        wrapped = ["/usr/bin/time", "-f", "%U %S %M", *argv]
    else:
        wrapped = [sys.executable, "-S", "-c", _LAUNCHER, *argv]
    proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    user, system, maxrss_kb = proc.stderr.strip().splitlines()[-1].split()
    # GNU time reports CPU in 10 ms steps: never 0
    return max(float(user) + float(system), 0.01), int(maxrss_kb) / 1024


def commands(pcap: Path, out: Path, corpus: str) -> dict[str, list[str]]:
    hoptrace = [sys.executable, "-m", "tracer", "annotate", str(pcap)]
    cmds = {"annotate": [*hoptrace, "-o", str(out)],
            "annotate-json": [*hoptrace, "--format", "json", "-o", str(out) + ".json"]}
    if shutil.which("editcap"):
        cmds["editcap"] = ["editcap", "-F", "pcapng", str(pcap), str(out) + ".editcap"]
    if shutil.which("tshark"):
        decode_as = [a for d in TSHARK_DECODE_AS.get(corpus, ()) for a in ("-d", d)]
        cmds["tshark -w"] = ["tshark", "-n", "-r", str(pcap), "-F", "pcapng",
                             "-w", str(out) + ".tshark"]
        # a display filter makes tshark dissect every packet before writing it (VXLAN on
        # 8472 with -d): the closest peer to decoding and writing
        cmds["tshark -Y -w"] = ["tshark", "-n", "-r", str(pcap), *decode_as, "-Y",
                                "frame.len > 0", "-F", "pcapng", "-w", str(out) + ".tshark2"]
    return cmds


def run_corpus(pcap: Path, out: Path, corpus: str, repeat: int) -> dict[str, tuple[float, float]]:
    best: dict[str, tuple[float, float]] = {}
    cmds = commands(pcap, out, corpus)
    for _ in range(repeat):
        for name, argv in cmds.items():
            cpu, rss = measure(argv)
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, max(rss, best.get(name, (0, 0))[1]))
    return best


def check_output(pcap: Path, out: Path) -> str:
    """Every input packet is in the output, each with a comment."""
    with Capture(pcap) as a, Capture(out) as b:
        n = m = commented = 0
        for ra, rb in zip(a, b, strict=False):
            n += 1
            m += ra[2] == rb[2] and ra[0] == rb[0]
            commented += bool(rb[6])
        n += sum(1 for _ in a)
    return "ok" if n == m == commented else f"MISMATCH {n} in, {m} same, {commented} commented"


def writer_bench(pcap: Path, limit: int) -> list[tuple[str, float]]:
    from scapy.utils import RawPcapNgWriter

    from decoders.pcapng import PcapngWriter

    with Capture(pcap) as cap:
        recs = [(r[0], r[2], r[4]) for _, r in zip(range(limit), cap, strict=False)]
    comment = ("VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472 | 10.244.1.2 -> "
               "10.244.2.2 ICMP echo id=7133 seq=1")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        with open(Path(tmp) / "ours.pcapng", "wb", buffering=1 << 20) as fp:
            w = PcapngWriter(fp)
            i = w.add_interface(1)
            for ts, data, wirelen in recs:
                w.write(i, ts, data, wirelen, [comment])
            w.flush()
        out.append(("hoptrace PcapngWriter", len(recs) / (time.process_time() - t0)))
        t0 = time.process_time()
        sw = RawPcapNgWriter(str(Path(tmp) / "scapy.pcapng"))
        sw.linktype = 1
        sw._write_header(None)
        c = [comment.encode()]
        for ts, data, wirelen in recs:
            sec = ts / 1e9
            sw._write_packet(data, 1, sec=sec, usec=0, wirelen=wirelen, comments=c)
        sw.close()
        out.append(("scapy RawPcapNgWriter", len(recs) / (time.process_time() - t0)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=200_000)
    p.add_argument("--scale", type=int, default=10, help="the big file is this many times bigger")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--corpora", default=",".join(CORPORA))
    p.add_argument("--scale-corpus", default="vxlan8472")
    args = p.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.machine()} Python "
          f"{platform.python_version()}, {args.packets} packets per corpus, CPU time, best of "
          f"{args.repeat}, RSS via {'GNU time' if TIME else 'python -S launcher'}")
    with tempfile.TemporaryDirectory(prefix="hoptrace-annotate-bench-") as tmp:
        where = Path(tmp)
        empty = where / "empty.pcap"
        write_corpus("plain", empty, 0)
        startup = min(measure(commands(empty, where / "e.pcapng", "plain")["annotate"])[0]
                      for _ in range(3))
        print(f"\n`hoptrace annotate` start-up (an empty pcap): {startup:.2f} s CPU, included "
              "in every annotate figure below")
        print("\n| corpus | command | packets/s | without start-up | x editcap | "
              "x tshark -Y -w | peak RSS MB | output |")
        print("|---|---|---|---|---|---|---|---|")
        for corpus in args.corpora.split(","):
            pcap = where / f"{corpus}.pcap"
            n = write_corpus(corpus, pcap, args.packets)
            out = where / f"{corpus}.pcapng"
            best = run_corpus(pcap, out, corpus, args.repeat)
            check = check_output(pcap, out)
            for name, (cpu, rss) in best.items():
                rate = n / cpu
                ratio = {k: rate / (n / best[k][0]) if k in best else float("nan")
                         for k in ("editcap", "tshark -Y -w")}
                steady = (f"{n / max(cpu - startup, 0.01):,.0f}" if name.startswith("annotate")
                          else "")
                print(f"| {corpus} | {name} | {rate:,.0f} | {steady} | {ratio['editcap']:.2f} | "
                      f"{ratio['tshark -Y -w']:.2f} | {rss:.0f} | "
                      f"{check if name == 'annotate' else ''} |")
            sys.stdout.flush()
            for f in where.glob(f"{corpus}.pcapng*"):
                f.unlink()
            if corpus != args.scale_corpus:
                pcap.unlink()
        # memory flatness
        corpus = args.scale_corpus
        scale_pcap = where / f"{corpus}.pcap"
        if not scale_pcap.exists():
            write_corpus(corpus, scale_pcap, args.packets)
        big = where / f"{corpus}-x{args.scale}.pcap"
        nb = write_corpus(corpus, big, args.packets * args.scale)
        size = big.stat().st_size / 1e6
        small = run_corpus(scale_pcap, where / "s.pcapng", corpus, 1)
        large = run_corpus(big, where / "b.pcapng", corpus, 1)
        print(f"\n{corpus}: {args.packets} packets ({scale_pcap.stat().st_size / 1e6:.0f} MB) "
              f"vs {nb} packets ({size:.0f} MB)\n")
        print(f"| command | RSS MB x1 | RSS MB x{args.scale} | ratio | packets/s x{args.scale} |")
        print("|---|---|---|---|---|")
        for name in small:
            (_, r1), (c2, r2) = small[name], large[name]
            print(f"| {name} | {r1:.0f} | {r2:.0f} | {r2 / r1:.2f} | {nb / c2:,.0f} |")
        print(f"\npcapng writer alone, {min(args.packets, 200_000)} {corpus} frames, one "
              "comment each:\n")
        print("| writer | packets/s |\n|---|---|")
        for name, rate in writer_bench(scale_pcap, min(args.packets, 200_000)):
            print(f"| {name} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
