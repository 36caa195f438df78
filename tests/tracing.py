"""Helpers for kernel-tier tests that run ``hoptrace trace`` for real (pwru's shape): start it
with a ready file, wait until every probe is attached, make traffic, stop it, read its JSON."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer.capabilities import check, tracing_missing
from tracer.catalogue import Mech
from tracer.chains import Chain, replay
from tracer.tracefile import Trace, read_trace

ROOT = Path(__file__).resolve().parent.parent
# Start-up takes seconds under emulation: the VM tier (tools/kernel-guest.sh) raises this.
READY_TIMEOUT_S = float(os.environ.get("HT_READY_TIMEOUT", "15"))
IN_GUEST = os.environ.get("KT_GUEST") == "1"  # a stock-kernel guest of tools/kernel_matrix.py


def require_kernel() -> None:
    reason = tracing_missing()
    if reason:
        pytest.skip(reason)


def require_mechanism(kind: Mech, target: str = "ip_rcv") -> None:
    """Skip unless ``kind`` programs load and attach on ``target`` here; in a guest, fail."""
    verdict = check(kind, target)
    if verdict.ok:
        return
    if IN_GUEST:
        pytest.fail(f"a stock kernel must allow {kind} on {target}: {verdict.error}")
    pytest.skip(f"{kind} on {target} is refused by this kernel: {verdict.error}")


def chain_between(chains: list[Chain], src: str, dst: str) -> Chain:
    """The chain whose innermost headers go from ``src`` to ``dst``."""
    for c in chains:
        inner = next((s.decoded.inner for s in c.steps if s.decoded and s.decoded.inner), None)
        if inner and inner.src == src and inner.dst == dst:
            return c
    raise AssertionError(f"no chain {src} -> {dst} in {[c.summary() for c in chains]}")


def hoptrace(*args: str, timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[call-overload]
    )


@dataclass
class Running:
    proc: subprocess.Popen[str]
    out: Path
    trace: Trace | None = None
    stderr: str = ""

    def stop(self, timeout: float = 20) -> Trace:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
            raise
        assert self.proc.returncode == 0, self.stderr
        self.trace = read_trace(self.out)
        return self.trace


@contextmanager
def tracing(
    tmp_path: Path, *args: str, ready_timeout: float = READY_TIMEOUT_S
) -> Iterator[Running]:
    """Run ``hoptrace trace ARGS -o FILE`` until the block ends (then SIGINT), always reaped."""
    out = tmp_path / "trace.jsonl"
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)  # a second run in the same test must wait for its own
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracer",
            "trace",
            *args,
            "-o",
            str(out),
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = Running(proc, out)
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"hoptrace trace exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("hoptrace trace did not attach in time")
            time.sleep(0.02)
        yield run
        if run.trace is None:
            run.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def chains_of(trace: Trace) -> list[Chain]:
    """Replay a trace file into complete hop chains (the same code the live text output uses)."""
    return replay(trace)
