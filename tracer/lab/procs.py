"""The user-space processes that are part of a lab (:class:`~tracer.lab.spec.Daemon`).

Each runs a stdlib-only script from this package (``udpfwd.py``, ``echod.py``) with
``python -I`` inside its namespace, and writes ``/run/hoptrace/labs/PREFIXLAB/NS-PROGRAM.pid``
once it is ready (socket bound, TUN attached). ``stop`` kills the processes recorded for
a lab, checking each pid still runs our script (pids get reused). A daemon also exits
by itself when its namespace is deleted or its lifetime ends, so nothing outlives a lab
for long even when ``down`` never runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tracer.errors import LabError
from tracer.lab.spec import Daemon

STATE_DIR = Path("/run/hoptrace/labs")
SCRIPTS = {"udpfwd": "udpfwd.py", "echo": "echod.py"}
READY_TIMEOUT = 5.0
LIFETIME = 12 * 3600  # seconds a daemon lives at most


def state_dir(prefix: str, lab: str) -> Path:
    """Where lab ``lab`` under ``prefix`` keeps pid files, logs and its fault record."""
    return STATE_DIR / f"{prefix}{lab}"


def script(program: str) -> str:
    return str(Path(__file__).with_name(SCRIPTS[program]))


def start(daemons: Sequence[Daemon], prefix: str, where: Path) -> list[Path]:
    """Start every daemon, then wait until each has written its pid file in ``where``."""
    if not daemons:
        return []
    where.mkdir(parents=True, exist_ok=True)
    started: list[tuple[Daemon, Path, subprocess.Popen[bytes]]] = []
    for d in daemons:
        ns = prefix + d.ns
        pidfile = where / f"{d.ns}-{d.program}.pid"
        pidfile.unlink(missing_ok=True)
        argv = [sys.executable, "-I", script(d.program), "--netns", ns, "--pidfile", str(pidfile)]
        argv += ["--lifetime", str(LIFETIME), *d.args]
        log = (where / f"{d.ns}-{d.program}.log").open("wb")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed by the CLI's Ctrl-C; `down` stops it
            )
        finally:
            log.close()
        started.append((d, pidfile, proc))
    deadline = time.monotonic() + READY_TIMEOUT
    for d, pidfile, proc in started:
        while not pidfile.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (where / f"{d.ns}-{d.program}.log").read_text(errors="replace").strip()
                last = text.splitlines()[-1] if text else "no output"
                raise LabError(f"{d.program} in {prefix + d.ns} did not start: {last}")
            time.sleep(0.005)
    return [p for _, p, _ in started]


def _ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    mine = {script(p).encode() for p in SCRIPTS}
    return any(arg in mine for arg in cmdline)


def stop(where: Path, timeout: float = 2.0) -> list[int]:
    """Kill the daemons recorded in ``where``; return the pids killed."""
    killed: list[int] = []
    for pidfile in sorted(where.glob("*.pid")) if where.is_dir() else []:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and _ours(pid):
            try:
                os.kill(pid, signal.SIGTERM)
                killed.append(pid)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    for pid in killed:
        while _ours(pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        if _ours(pid):
            os.kill(pid, signal.SIGKILL)
    return killed


def running(where: Path) -> list[int]:
    """Pids of the daemons recorded in ``where`` that are alive now."""
    out = []
    for pidfile in sorted(where.glob("*.pid")) if where.is_dir() else []:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if _ours(pid):
            out.append(pid)
    return out


def forget(where: Path) -> None:
    """Remove a lab's state directory (pid files, logs, fault record)."""
    if where.is_dir():
        for f in where.iterdir():
            f.unlink(missing_ok=True)
        where.rmdir()
