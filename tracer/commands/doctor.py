"""``hoptrace doctor``: what this kernel allows, probe point by probe point."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from tracer.capabilities import Choice, choose_all, require_btf, require_root
from tracer.catalogue import Mech

EXAMPLES = """\
examples:
  hoptrace doctor
  hoptrace doctor --format json
  hoptrace doctor --mechanisms tp_btf,netfilter   # what a kernel without kprobes/fentry gets
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="show which probe points work on this kernel, and how",
        description="Try every mechanism of every probe point (fentry, kprobe, tracepoint, "
        "netfilter link) with an empty program and show what was chosen and why the others "
        "were rejected, with the kernel's error.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--mechanisms",
        metavar="LIST",
        help="only consider these mechanisms (comma-separated: "
        + ",".join(m.value for m in Mech if m != Mech.INFERRED)
        + ")",
    )
    p.set_defaults(func=run)


def parse_mechanisms(spec: str | None) -> frozenset[Mech] | None:
    from tracer.errors import UsageError

    if not spec:
        return None
    out = set()
    for name in spec.split(","):
        try:
            out.add(Mech(name.strip()))
        except ValueError:
            raise UsageError(
                f"unknown mechanism {name!r} (known: {', '.join(m.value for m in Mech)})"
            ) from None
    return frozenset(out)


def _allskb_status(choice: Choice) -> dict[str, object]:
    """Whether ``--probes all-skb`` can run here, how, and on how many functions (BTF)."""
    from tracer.allskb import skb_functions

    funcs, modules = skb_functions()
    out: dict[str, object] = {
        "possible": choice.chosen is not None,
        "mechanism": choice.chosen.kind.value if choice.chosen else None,
        "functions_in_btf": len(funcs),
        "modules": modules,
        "why_not": "",
    }
    if choice.chosen is None:
        kinds = " or ".join(m.kind.value for m in choice.point.mechanisms)
        why = "; ".join(f"{m.kind}: {v.error}" for m, v in choice.rejected)
        out["why_not"] = f"needs {kinds} ({why})"
    return out


def run(args: argparse.Namespace) -> int:
    require_root()
    require_btf()
    choices = choose_all(parse_mechanisms(args.mechanisms), "all-skb")
    rows = [
        {
            "point": c.point.name,
            "core": c.point.core,
            "mechanism": c.chosen.kind.value if c.chosen else None,
            "target": (c.chosen.target or c.chosen.how) if c.chosen else None,
            "rejected": [{"mechanism": m.kind.value, "error": v.error} for m, v in c.rejected],
        }
        for c in choices
    ]
    allskb = _allskb_status(next(c for c in choices if c.point.opt_in == "all-skb"))
    if args.format == "json":
        print(
            json.dumps(
                {"kernel": platform.release(), "probes": rows, "all_skb": allskb}, indent=2
            )
        )
    else:
        print(
            f"kernel {platform.release()}, BTF {Path('/sys/kernel/btf/vmlinux').exists()}, "
            f"euid {os.geteuid()}"
        )
        print(f"{'probe point':<18} {'mechanism':<12} target / why others were rejected")
        for r in rows:
            mech = r["mechanism"] or "NONE"
            print(f"{r['point']:<18} {mech:<12} {r['target'] or ''}")
            for rej in r["rejected"]:
                print(f"{'':<18} {'':<12} not {rej['mechanism']}: {rej['error']}")
        if allskb["possible"]:
            print(
                f"--probes all-skb: possible, via {allskb['mechanism']} on "
                f"{allskb['functions_in_btf']} functions with a struct sk_buff * argument in BTF"
            )
        else:
            print(f"--probes all-skb: not possible here: {allskb['why_not']}")
    missing = [r["point"] for r in rows if r["core"] and not r["mechanism"]]
    return 1 if missing else 0
