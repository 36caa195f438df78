"""The ``hoptrace`` command: one module per subcommand under tracer/commands/.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tracer import __version__
from tracer.errors import HoptraceError

# Order is the order shown in --help.
COMMANDS = ("trace", "doctor", "lab", "annotate", "report")

EPILOG = """\
examples:
  hoptrace doctor
  hoptrace lab up two-node-vxlan
  hoptrace trace 'host 10.244.2.2 and icmp' --netns all --count 4
  hoptrace trace 'tcp port 8080' --duration 5 -o trace.jsonl
  hoptrace lab down two-node-vxlan
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoptrace",
        description="Trace packets through Linux container networking: every hop, its latency, "
        "and where and why a packet died.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hoptrace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and libbpf logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tracer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tracer.commands.{name}":
                raise
            continue  # subcommand not built yet
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except HoptraceError as exc:
        if args.debug:
            raise
        print(f"hoptrace: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
