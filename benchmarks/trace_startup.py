"""Start-up time: from ``hoptrace trace`` being started to every probe attached (its ready file).

``hoptrace trace 'host 10.250.0.1' --netns NS --ready-file F`` is started as a subprocess and
timed until F exists, then stopped with SIGINT (time to exit reported too); NS is the
two-node VXLAN lab's 5 namespaces, or ``all``. Runs alternate between the two and the median
of N is reported, beside the tracer's own "attached in X s" figure from its stderr line (the
rest of the time is the interpreter, imports, namespace and topology discovery). Then the
same steps are timed one by one in a fresh interpreter: imports, namespace resolution,
topology read (netlink), then :class:`tracer.loader.Probes` ``timings``: choose (capability
probing), open, load (verifier) and attach; a bare ``python -c pass``
and ``python -c 'import tracer.cli'`` give the interpreter's and the imports' share.

    .venv/bin/python benchmarks/trace_startup.py            # 9 runs each
    .venv/bin/python benchmarks/trace_startup.py --quick    # 3 runs each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trace_common import (  # noqa: E402
    NO_MATCH,
    PYTHON,
    ROOT,
    Tracer,
    TracerFailed,
    lab_up,
    machine,
    median,
    table,
)

TARGET_S = 1.0


def wall(argv: list[str]) -> float:
    """Wall time of one bounded command."""
    t = time.monotonic()
    subprocess.run(argv, cwd=ROOT, check=True, timeout=60, capture_output=True)
    return time.monotonic() - t


def one_attach(netns: str) -> None:
    """(Child mode) time each start-up step of ``hoptrace trace`` once, print JSON."""
    t0 = time.monotonic()
    from tracer.filter import compile_filter
    from tracer.loader import ProbeOptions, Probes
    from tracer.names import Topology, resolve

    t1 = time.monotonic()
    namespaces = resolve(netns)
    t2 = time.monotonic()
    Topology.read(namespaces)
    t3 = time.monotonic()
    opts = ProbeOptions(filter=compile_filter(NO_MATCH), netns=namespaces,
                        netns_all=netns == "all")
    with Probes(opts) as probes:
        tm = probes.timings
        out = {"imports": t1 - t0, "resolve": t2 - t1, "topology": t3 - t2,
               "choose": tm.choose_s, "open": tm.open_s, "load": tm.load_s,
               "attach": tm.attach_s}
    print(json.dumps(out))


def in_process(netns: str, runs: int) -> list[object]:
    """Median milliseconds per start-up step, each run in a fresh interpreter (the probe
    choice is cached within a process)."""
    parts: dict[str, list[float]] = {}
    for _ in range(runs):
        for _attempt in range(3):  # with `all`, other people's namespaces come and go
            proc = subprocess.run([PYTHON, __file__, "--one-attach", netns], cwd=ROOT,
                                  timeout=60, capture_output=True, text=True)
            if proc.returncode == 0:
                break
            print(f"--one-attach {netns} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        else:
            continue
        for k, v in json.loads(proc.stdout.splitlines()[-1]).items():
            parts.setdefault(k, []).append(v)
    return [f"{median(v) * 1000:.0f}" for v in parts.values()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs each")
    ap.add_argument("--runs", type=int, help="runs per --netns value (default 9, quick 3)")
    ap.add_argument("--one-attach", metavar="NETNS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_attach:
        one_attach(args.one_attach)
        return 0
    runs = args.runs or (3 if args.quick else 9)

    base: dict[str, list[float]] = {
        "python -c pass": [],
        "python -c 'import tracer.cli, tracer.commands.trace'": [],
    }
    for _ in range(runs):
        base["python -c pass"].append(wall([PYTHON, "-c", "pass"]))
        base["python -c 'import tracer.cli, tracer.commands.trace'"].append(
            wall([PYTHON, "-c", "import tracer.cli, tracer.commands.trace"]))

    ready: dict[str, list[float]] = {"lab": [], "all": []}
    attached: dict[str, list[float]] = {"lab": [], "all": []}
    stop: dict[str, list[float]] = {"lab": [], "all": []}
    count: dict[str, int] = {}
    failed: list[str] = []
    with lab_up("st") as lab:
        specs = {"lab": ",".join(lab.namespaces()), "all": "all"}
        for _ in range(runs):
            for key, ns in specs.items():
                try:
                    with Tracer(NO_MATCH, ns, out=False, max_s=60) as tr:
                        assert tr.run is not None
                        run = tr.run
                        t = time.monotonic()
                        tr.stop(timeout=30)
                        stop[key].append(run.exit_s - t)
                except TracerFailed as exc:  # `all` meets other people's namespaces and links
                    failed.append(f"--netns {key}: {exc}")
                    continue
                ready[key].append(run.ready_s)
                attached[key].append(run.attached_s)
                count[key] = run.netns_count
        split = {key: in_process(ns, runs) for key, ns in specs.items()}

    print(f"## trace_startup ({machine()}; median of {runs} runs)\n")
    rows = []
    for key in specs:
        r, a = median(ready[key]), median(attached[key])
        rows.append([f"--netns {'<lab, 5>' if key == 'lab' else 'all'} ({count[key]} netns)",
                     f"{r:.3f}", f"{a:.3f}", f"{r - a:.3f}", f"{median(stop[key]):.3f}",
                     "yes" if r < TARGET_S else f"no (+{r - TARGET_S:.2f} s)"])
    print(table(["run", "start -> ready (s)", "attached in (s, its stderr)",
                 "before attaching (s)", "SIGINT -> exit (s)", "under 1 s"], rows))
    print()
    print(table(["steps, fresh interpreter (ms)", "imports", "resolve netns", "topology",
                 "choose probes", "open", "load", "attach"],
                [[f"--netns {k}", *v] for k, v in split.items()]))
    print()
    print(table(["baseline", "wall (s)"], [[k, f"{median(v):.3f}"] for k, v in base.items()]))
    if failed:
        print(f"\n{len(failed)} run(s) failed to start and are left out:")
        print("\n".join(f"- {f}" for f in failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
