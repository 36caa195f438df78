"""``hoptrace report``: trace files from one or many nodes -> flows, hops, drops, diagnosis."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tracer.errors import UsageError

EXAMPLES = """\
examples:
  hoptrace report trace.jsonl
  hoptrace report n1.jsonl n2.jsonl --format html -o report.html
  hoptrace report n1.jsonl n2.jsonl --format md
  hoptrace report n1.jsonl n2.jsonl --format json | jq '.diagnosis[].title'

Record one file per node with `hoptrace trace --node NAME -o FILE`. Packets are matched across
files by their innermost headers and identity; each node's clock offset is estimated from the
order of matched packets (docs/report.md).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="correlate trace files into flows, hops, drops and a diagnosis",
        description="Read trace files written by 'hoptrace trace -o' (one per node), follow "
        "every packet across nodes, tunnels and NAT, and report what was traced, the flows "
        "with end-to-end latency, each flow's path with per-hop latency, drops grouped by "
        "place and reason, and a diagnosis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="trace files")
    p.add_argument("--format", "-f", choices=("text", "md", "html", "json"), default="text",
                   help="text (default, for a terminal), md (Markdown), html (one "
                   "self-contained file) or json (docs/report.md)")
    p.add_argument("--output", "-o", type=Path, metavar="OUT",
                   help="write the report to OUT instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.correlate import load
    from tracer.report import build, render

    for f in args.files:
        if not f.is_file():
            raise UsageError(f"{f}: no such trace file")
    t0 = time.monotonic()
    print(f"Reading {len(args.files)} trace file(s)...", file=sys.stderr)
    tr = load(args.files)
    rep = build(tr)
    text = render(rep, args.format)
    if args.output:
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    print(
        f"{len(tr.events)} events, {len(tr.packets)} packets, {len(tr.flows)} flows, "
        f"{len(rep['diagnosis'])} finding(s) in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0
