"""What the lab daemons (``udpfwd.py``, ``echod.py``) share: their common arguments, the
ready signal (the pid file) and the check that their namespace still exists.

Standard library only, and imported by the daemons as a sibling file (they run with
``python -I``, without the ``tracer`` package, to start in tens of milliseconds).
"""

from __future__ import annotations

import argparse
import os


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every lab daemon takes (:mod:`tracer.lab.procs`)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--netns", required=True, help="the namespace it runs in (exit when gone)")
    p.add_argument("--pidfile", required=True, help="written once ready")
    p.add_argument("--lifetime", type=float, default=3600, help="seconds before it exits")
    return p


def ready(pidfile: str) -> None:
    """Tell the lab's ``up`` this daemon is ready: write the pid file atomically."""
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(pidfile + ".tmp", pidfile)


def netns_gone(name: str) -> bool:
    """True when /run/netns/NAME no longer is the namespace this process runs in."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return True
