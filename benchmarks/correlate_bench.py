"""Correlation benchmark: 1,000,000 events from two nodes -> packets, hops, flows.

The events are generated from a recorded lab trace (tests/data/report/clean-n{1,2}.jsonl: a
ping and a TCP exchange across the two-node VXLAN lab, traced by one tracer per node). Each
copy of that trace gets its own tracks, a time shift, its own flows (TCP client port, ICMP
echo id) and its own packet identities (IP ID, ICMP seq), consistently on both nodes, so the
correlator has to match every packet across the two files by its headers.

Each stage runs in a fresh process, so its peak RSS (ru_maxrss) is its own:

- ``load``: ``tracer.correlate.load`` end to end (read both files + correlate).
- ``read``: the file-reading part alone (polars JSON lines -> Arrow -> DataFrame).
- ``read-pyarrow`` (peer): pyarrow's JSON reader on the same files (what ``read`` used before).
- ``report``: ``load`` + ``tracer.report.build`` (percentiles, paths, diagnosis).
- ``chains`` (peer): the live per-event path on the same files, ``read_trace`` +
  ``ChainBuilder`` per node (one node's chains, no cross-node matching).

    .venv/bin/python benchmarks/correlate_bench.py [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "data" / "report"
sys.path.insert(0, str(ROOT))


def _mutate(hdr: str, kind: str, copy: int) -> str:
    """Give packet copy ``copy`` its own flow and identity: IP ID, TCP client port 48834 ->
    another, ICMP echo id/seq. The same function on both nodes keeps the copies matchable."""
    from decoders import decode
    from decoders.model import START_ETH, START_IP

    if not hdr:
        return hdr
    b = bytearray.fromhex(hdr)
    d = decode(bytes(b), start=START_ETH if kind == "eth" else START_IP)
    if d.inner is None:
        return hdr
    off = (14 if kind == "eth" else 0) + (50 if d.tunnels else 0)
    if off + 20 > len(b) or b[off] >> 4 != 4:
        return hdr
    ihl = (b[off] & 15) * 4
    b[off + 4 : off + 6] = ((int.from_bytes(b[off + 4 : off + 6], "big") + copy * 7) & 0xFFFF
                            ).to_bytes(2, "big")
    l4 = off + ihl
    port = (20000 + copy % 40000).to_bytes(2, "big")
    if d.inner.proto == 6 and l4 + 4 <= len(b):
        for at in (l4, l4 + 2):
            if b[at : at + 2] == (48834).to_bytes(2, "big"):
                b[at : at + 2] = port
    elif d.inner.proto == 1 and l4 + 8 <= len(b) and b[l4] in (0, 8):
        b[l4 + 4 : l4 + 6] = (copy & 0xFFFF).to_bytes(2, "big")
        b[l4 + 6 : l4 + 8] = ((copy >> 16) + 1).to_bytes(2, "big")
    return b.hex()


def generate(out_dir: Path, events: int) -> list[Path]:
    srcs = [SRC / "clean-n1.jsonl", SRC / "clean-n2.jsonl"]
    recs = [[json.loads(x) for x in p.read_text().splitlines()] for p in srcs]
    per_copy = sum(1 for r in recs for e in r if e["type"] == "event")
    copies = max(1, round(events / per_copy))
    cache: dict[tuple[str, str, int], str] = {}
    paths = []
    for i, rs in enumerate(recs):
        path = out_dir / f"bench-n{i + 1}.jsonl"
        evs = [e for e in rs if e["type"] == "event"]
        t0 = min(e["ts_ns"] for e in evs)
        with path.open("w") as fp:
            fp.write(json.dumps(rs[0]) + "\n")
            for c in range(copies):
                shift = c * 600_000  # copies overlap: the trace lasts ~550 ms
                lines = []
                for e in evs:
                    key = (e["hdr"], e["hdr_kind"], c)
                    h = cache.get(key)
                    if h is None:
                        h = cache[key] = _mutate(e["hdr"], e["hdr_kind"], c)
                    lines.append(json.dumps(dict(
                        e, track=e["track"] + c * 1000, ts_ns=e["ts_ns"] - t0 + 10**12 + shift
                        + (c * 37) % 1000, hdr=h), separators=(",", ":")))
                fp.write("\n".join(lines) + "\n")
                if len(cache) > 200_000:
                    cache.clear()
            fp.write(json.dumps({"type": "summary", "events": len(evs) * copies,
                                 "packets": 0, "lost": {}, "duration_s": 1.0}) + "\n")
        paths.append(path)
    return paths


def stage(name: str, files: list[str]) -> dict[str, float]:
    t = time.perf_counter()
    c0 = time.process_time()
    out: dict[str, float] = {}
    if name == "load":
        from tracer.correlate import load

        tr = load(files)
        out.update(events=len(tr.events), packets=len(tr.packets), flows=len(tr.flows),
                   hops=len(tr.hops))
    elif name == "read":
        from tracer.correlate import _frame, _read_file

        tabs = [_read_file(Path(f), i)[1] for i, f in enumerate(files)]
        import pyarrow as pa

        out["events"] = len(_frame(pa.concat_tables(tabs)))
    elif name == "read-pyarrow":  # peer: pyarrow's JSON reader, what correlate used before
        import pyarrow as pa
        import pyarrow.json as pj

        from tracer.correlate import EVENT_SCHEMA

        n = 0
        for f in files:
            with open(f, "rb") as fp:
                fp.readline()
                tab = pj.read_json(fp, parse_options=pj.ParseOptions(
                    explicit_schema=EVENT_SCHEMA, unexpected_field_behavior="ignore"))
            n += len(tab.filter(pa.compute.equal(tab["type"], "event")))
        out["events"] = n
    elif name == "report":
        from tracer.correlate import load
        from tracer.report import build

        tr = load(files)
        t1 = time.perf_counter()
        rep = build(tr)
        out.update(events=len(tr.events), build_s=time.perf_counter() - t1,
                   flows=len(rep["flows"]), findings=len(rep["diagnosis"]))
    elif name == "chains":
        from tests.tracing import chains_of
        from tracer.tracefile import read_trace

        n = 0
        for f in files:
            tr = read_trace(Path(f))
            out["events"] = out.get("events", 0) + len(tr.events)
            n += len(chains_of(tr))
            del tr
        out["chains"] = n
    out["seconds"] = time.perf_counter() - t
    out["cpu_s"] = time.process_time() - c0  # all threads; the machine is shared
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="generate into DIR and keep the files")
    ap.add_argument("--stages", default="read,read-pyarrow,load,report,chains")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        print(json.dumps(stage(a.stage, a.files)))
        return 0
    with tempfile.TemporaryDirectory(dir=a.keep.parent if a.keep else None) as tmp:
        d = a.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        files = generate(d, a.events)
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"generated {a.events} events in {time.perf_counter() - t:.1f}s "
              f"({size:.0f} MiB, 2 files)", file=sys.stderr)
        results = {}
        for s in a.stages.split(","):
            r = subprocess.run([sys.executable, __file__, "--stage", s, *map(str, files)],
                               capture_output=True, text=True, check=True)
            results[s] = json.loads(r.stdout)
            print(f"{s:>7}: {results[s]}", file=sys.stderr)
    base = results.get("load", {}).get("seconds")
    print("| stage | events | wall s | CPU s | peak RSS MiB | wall vs load |")
    print("|---|---|---|---|---|---|")
    for s, r in results.items():
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        print(f"| {s} | {int(r['events']):,} | {r['seconds']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {ratio} |")
    if "load" in results:
        r = results["load"]
        print(f"\nload: {int(r['packets']):,} packets, {int(r['flows']):,} flows, "
              f"{int(r['hops']):,} hops")
    if "report" in results:
        print(f"report build alone: {results['report']['build_s']:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
