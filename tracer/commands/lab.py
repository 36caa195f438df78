"""``hoptrace lab``: build, inspect and remove lab topologies in network namespaces."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from tracer.errors import HoptraceError, LabError, UsageError
from tracer.lab import DEFAULT_PREFIX, LABS, Lab, faults, get_lab

EPILOG = """\
examples:
  hoptrace lab list
  hoptrace lab describe two-node-vxlan
  hoptrace lab up two-node-vxlan
  hoptrace lab exec two-node-vxlan a1 -- ping -c 2 10.244.2.2
  hoptrace lab exec two-node-vxlan n1 -- tcpdump -ni u1 udp port 8472
  hoptrace lab up two-node-vxlan --prefix mine-     # a second copy beside the first
  hoptrace lab down two-node-vxlan --prefix mine-
  hoptrace lab down two-node-vxlan
  hoptrace lab up kube-proxy
  hoptrace lab exec kube-proxy a1 -- python3 -c "import urllib.request as u; \
      print(u.urlopen('http://10.96.0.10/', timeout=2).read())"
  hoptrace lab fault kube-proxy list              # the faults this lab offers
  hoptrace lab fault kube-proxy iptables-drop     # b1's node drops packets to b1
  hoptrace lab fault kube-proxy slow-rules --rules 5000
  hoptrace lab fault kube-proxy clear             # undo exactly what was injected

faults: iptables-drop, nft-drop (--hook CHAIN), wrong-fdb, mtu (--mtu N), rp-filter,
no-route, slow-rules (--rules N); see docs/labs.md.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lab`` and its subcommands."""
    parser = subparsers.add_parser(
        "lab",
        help="build container-network topologies in network namespaces",
        description="Build the container-network topologies people run (Flannel VXLAN, "
        "Docker bridge ...) in network namespaces named PREFIX+NAME, with no link to the "
        "machine's own interfaces. 'down' deletes every namespace of the lab.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run, lab_parser=parser)
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION")
    labs = sorted(LABS)

    def with_prefix(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--prefix",
            default=DEFAULT_PREFIX,
            help=f"namespace name prefix (default {DEFAULT_PREFIX!r})",
        )
        return p

    with_prefix(sub.add_parser("up", help="build a lab")).add_argument("name", choices=labs)
    with_prefix(sub.add_parser("down", help="delete every namespace of a lab")).add_argument(
        "name", choices=labs
    )
    with_prefix(sub.add_parser("list", help="the labs and whether they are up"))
    with_prefix(sub.add_parser("describe", help="a picture of a lab")).add_argument(
        "name", choices=labs
    )
    fault = with_prefix(
        sub.add_parser(
            "fault",
            help="inject a fault into a running lab, list them, or clear them",
            description="Inject a fault into a running lab (recorded under "
            "/run/hoptrace/labs), 'list' what the lab offers and what is active, or "
            "'clear' to undo exactly the recorded faults. Faults aim at the lab's "
            "cross-node pod pair (a1 -> b1).",
        )
    )
    fault.add_argument("name", choices=labs)
    fault.add_argument(
        "kind",
        choices=[*faults.KINDS, "list", "clear"],
        metavar="KIND",
        help=f"one of {', '.join(faults.KINDS)}, or list, clear",
    )
    fault.add_argument("--hook", help="iptables-drop/nft-drop: the chain (default FORWARD)")
    fault.add_argument("--rules", type=int, default=5000, help="slow-rules: how many (5000)")
    fault.add_argument("--mtu", type=int, default=1500, help="mtu: the pod's MTU (1500)")
    ex = with_prefix(
        sub.add_parser(
            "exec",
            help="run a command in a lab's node or pod",
            usage="hoptrace lab exec NAME POD [--prefix P] -- CMD...",
        )
    )
    ex.add_argument("name", choices=labs)
    ex.add_argument("pod", help="node or pod, e.g. a1, n1")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")


def run(args: argparse.Namespace) -> int:
    """Dispatch ``hoptrace lab ACTION``."""
    action = getattr(args, "lab_command", None)
    if action is None:
        args.lab_parser.print_help(sys.stderr)
        return 2
    if action == "list":
        return _list(args.prefix)
    lab = get_lab(args.name, prefix=args.prefix)
    if action == "describe":
        print(lab.describe(), end="")
        return 0
    if action == "fault":
        return _fault(lab, args)
    if action == "up":
        start = time.monotonic()
        lab.up()
        took = time.monotonic() - start
        print(f"lab {lab.name} up in {took:.2f}s: {' '.join(lab.namespaces())}")
        return 0
    if action == "down":
        removed = lab.down()
        print(f"lab {lab.name} down: deleted {' '.join(removed) or 'nothing (was not up)'}")
        return 0
    prefix, cmd = _split_exec(args.prefix, args.cmd)
    return _exec(lab.name, prefix, args.pod, cmd)


def _fault(lab: Lab, args: argparse.Namespace) -> int:
    if args.kind == "list":
        for kind in faults.KINDS:
            try:
                what = faults.plan(lab, kind, args.hook, args.rules, args.mtu).summary
            except HoptraceError as exc:
                what = f"(not here: {exc})"
            print(f"{kind:<14} {what}")
        for f in faults.active(lab):
            print(f"active: {f.summary}")
        return 0
    if args.kind == "clear":
        undone = faults.clear(lab)
        print(f"lab {lab.name}: cleared {', '.join(f.kind for f in undone) or 'nothing'}")
        return 0
    fault = faults.plan(lab, args.kind, args.hook, args.rules, args.mtu)
    faults.inject(lab, fault)
    print(fault.summary)
    return 0


def _list(prefix: str) -> int:
    print(f"{'lab':<16} {'state':<11} summary")
    for name in sorted(LABS):
        lab = get_lab(name, prefix=prefix)
        have, want = len(lab.present()), len(lab.namespaces())
        state = "up" if have == want else "down" if have == 0 else f"partial {have}/{want}"
        print(f"{name:<16} {state:<11} {lab.topology.summary}")
    return 0


def _split_exec(prefix: str, rest: list[str]) -> tuple[str, list[str]]:
    """Options may sit between POD and ``--`` (``a1 --prefix p- -- ping``): the remainder
    argument swallows them, so parse that head here."""
    if "--" not in rest:
        return prefix, rest
    cut = rest.index("--")
    head = argparse.ArgumentParser(prog="hoptrace lab exec", add_help=False, exit_on_error=False)
    head.add_argument("--prefix", default=prefix)
    try:
        opts, extra = head.parse_known_args(rest[:cut])
    except argparse.ArgumentError as exc:
        raise UsageError(f"lab exec: {exc}") from exc
    if extra:
        raise UsageError(f"lab exec: unknown option {' '.join(extra)!r} before --")
    return str(opts.prefix), rest[cut + 1 :]


def _exec(name: str, prefix: str, pod: str, cmd: list[str]) -> int:
    if not cmd:
        raise UsageError("lab exec: give a command after --, e.g. -- ping -c 1 10.244.2.2")
    lab = get_lab(name, prefix=prefix)
    netns = lab.netns(pod)
    if netns not in lab.present():
        raise LabError(f"{netns} does not exist: run 'hoptrace lab up {name} --prefix {prefix}'")
    # The user's command, with the terminal: no capture, no timeout (think tcpdump).
    return subprocess.call(["ip", "netns", "exec", netns, *cmd])
