"""Shared parts of the trace benchmarks: a lab that always comes down, iperf3 inside it,
and ``hoptrace trace`` run as a subprocess (ready file, SIGINT, summary line, CPU used).

Every traffic run is bounded in time (iperf3 ``-t`` plus a subprocess timeout) and goes
only between the lab's own namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tracer.errors import LabError  # noqa: E402
from tracer.lab import Lab, get_lab  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAB = "two-node-vxlan"
IPERF_PORT = 5301
NO_MATCH = "host 10.250.0.1"  # an address no lab packet carries


def unique_prefix(tag: str) -> str:
    """A namespace prefix no other run uses: ``hb<tag><pid>-``."""
    return f"hb{tag}{os.getpid()}-"


_MAIN_PID = os.getpid()


def _raise_interrupt(sig: int, _frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2's netns workers): die as usual
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def lab_up(tag: str) -> Iterator[Lab]:
    """The two-node VXLAN lab under a unique prefix, torn down however the block ends
    (exception, Ctrl-C, SIGTERM)."""
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    lab = get_lab(LAB, prefix=unique_prefix(tag))
    try:
        for attempt in range(3):  # lab.up() has failed transiently here (netlink ENOENT)
            try:
                lab.up()
                break
            except LabError as exc:
                print(f"lab up failed ({exc}); retrying", file=sys.stderr)
                lab.down()
                if attempt == 2:
                    raise
        yield lab
    finally:
        lab.down()
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


@contextlib.contextmanager
def iperf_server(lab: Lab, pod: str = "b1", port: int = IPERF_PORT,
                 cpu: int | None = None) -> Iterator[None]:
    """An iperf3 server in ``pod`` for the block's duration (killed at the end); ``cpu``
    pins it (``-A``)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns(pod), "iperf3", "-s", "-p", str(port),
         *(["-A", str(cpu)] if cpu is not None else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # let it listen
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class IperfResult:
    mode: str  # "tcp" or "udp"
    seconds: float
    bits_per_s: float  # received
    packets_per_s: float  # received (UDP; 0 for TCP)
    sent_packets_per_s: float  # UDP only


def iperf(
    lab: Lab, mode: str, seconds: float, rate: str = "0", length: int = 64,
    src: str = "a1", dst: str = "b1", port: int = IPERF_PORT, cpu: int | None = None,
) -> IperfResult:
    """One bounded iperf3 client run from ``src`` to ``dst``'s server; receiver-side rates.
    ``cpu`` pins the client (``-A``): the lab's softirq work then runs on that CPU too."""
    argv = ["iperf3", "-c", lab.addr(dst), "-p", str(port), "-t", f"{seconds:g}", "-J"]
    if cpu is not None:
        argv += ["-A", str(cpu)]
    if mode == "udp":
        argv += ["-u", "-b", rate, "-l", str(length)]
    proc = lab.exec(src, argv, timeout=seconds + 20)
    try:
        end = json.loads(proc.stdout)["end"]
    except (json.JSONDecodeError, KeyError) as exc:
        why = f"{proc.stdout[-300:]} {proc.stderr[-300:]}"
        raise RuntimeError(f"iperf3 {mode} failed: {why}") from exc
    recv = end["sum_received"]
    secs = float(recv["seconds"]) or seconds
    if mode == "udp":
        sent = end["sum_sent"]
        return IperfResult(mode, secs, float(recv["bits_per_second"]),
                           recv["bytes"] / length / secs, sent["packets"] / secs)
    return IperfResult(mode, secs, float(recv["bits_per_second"]), 0.0, 0.0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class TraceRun:
    """What one ``hoptrace trace`` run reported."""

    ready_s: float  # command start -> ready file
    attached_s: float  # the tracer's own "attached in" figure
    netns_count: int
    events: int = 0
    packets: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    stderr: str = ""
    sigints: int = 0  # SIGINTs it took to stop it
    cpu_s: float = 0.0  # the tracer's whole CPU time (user + system)
    exit_s: float = 0.0  # time.monotonic() when it had exited

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


SWALLOWED = "Exception ignored on calling ctypes callback"
_TRACING = re.compile(r"in (\d+) netns \(attached in ([0-9.]+)s\)")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TracerFailed(RuntimeError):
    """``hoptrace trace`` exited before it was ready (its stderr is the message)."""


class Tracer:
    """``hoptrace trace FILTER --netns NS -o FILE --ready-file F`` as a subprocess.

    Use as a context manager: entering waits for the ready file; :meth:`stop` sends SIGINT,
    waits, and reads the summary line of the -o file. The process is killed if it outlives
    the block, and its files are removed.
    """

    def __init__(self, flt: str, netns: str, out: bool = True, ring_mib: int = 16,
                 max_s: float = 300.0, cpu: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hoptrace-bench-"))
        self.ready = self.tmp / "ready"
        self.out = self.tmp / "trace.jsonl"
        self.err = self.tmp / "stderr"
        self.argv = [PYTHON, "-m", "tracer", "trace", *([flt] if flt else []), "--netns", netns,
                     "--ready-file", str(self.ready), "--duration", f"{max_s:g}",
                     "--ring-size", str(ring_mib), *extra]
        if out:
            self.argv += ["-o", str(self.out)]
        if cpu is not None:  # the tracer alone on one CPU: "events/s on one core"
            self.argv = ["taskset", "-c", str(cpu), *self.argv]
        self.proc: subprocess.Popen[str] | None = None
        self.run: TraceRun | None = None

    def __enter__(self) -> Tracer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for p in self.tmp.iterdir():
            p.unlink()
        self.tmp.rmdir()

    def start(self, timeout: float = 30.0) -> TraceRun:
        if self.proc is not None:
            raise RuntimeError("this Tracer was started already")
        t0 = time.monotonic()
        with self.err.open("w") as err:  # a file, not a pipe: a full pipe would stall it
            # SIGINT back to default in the child: started from a background job it would
            # inherit SIG_IGN, and Python then never raises KeyboardInterrupt
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=err, text=True, preexec_fn=_default_sigint)
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise TracerFailed(f"hoptrace trace exited early: {self.err.read_text()[-500:]}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"hoptrace trace not ready after {timeout:g}s")
            time.sleep(0.002)
        ready_s = time.monotonic() - t0
        # the "Tracing ... (attached in X s)" line is written before the ready file
        m = _TRACING.search(self.err.read_text())
        self.run = TraceRun(ready_s, float(m.group(2)) if m else float("nan"),
                            int(m.group(1)) if m else 0)
        return self.run

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds the tracer has used so far."""
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 120.0) -> TraceRun:
        """SIGINT, wait for it to drain and exit, read the summary line of the -o file."""
        assert self.proc is not None and self.run is not None
        deadline = time.monotonic() + timeout
        swallowed = self.err.read_text().count(SWALLOWED)
        self.proc.send_signal(signal.SIGINT)
        self.run.sigints = 1
        while True:  # wait4, not Popen.wait: its rusage is the tracer's whole CPU time
            # a SIGINT that lands while libbpf runs the Python ring-buffer callback is
            # swallowed (stderr says so): repeat it then, and only then (a second SIGINT
            # during the final drain would cut the summary off)
            now = self.err.read_text().count(SWALLOWED)
            if now > swallowed:
                swallowed = now
                self.proc.send_signal(signal.SIGINT)
                self.run.sigints += 1
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"hoptrace trace did not stop within {timeout:g}s")
            time.sleep(0.01)
        self.run.exit_s = time.monotonic()
        self.run.cpu_s = ru.ru_utime + ru.ru_stime
        self.run.stderr = self.err.read_text()
        summary = _last_json_line(self.out) if self.out.exists() else {}
        if summary.get("type") == "summary":
            self.run.events = int(summary["events"])
            self.run.packets = int(summary["packets"])
            self.run.lost = {k: int(v) for k, v in summary.get("lost", {}).items()}
        if self.out.exists():
            self.out.unlink()  # can be large: free the disk now
        return self.run


def _last_json_line(path: Path) -> dict[str, Any]:
    with path.open("rb") as fp:
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
        fp.seek(max(0, size - 65536))
        lines = fp.read().splitlines()
    for raw in reversed(lines):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return {}


SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """Count run time of every BPF program while the block runs (``BPF_ENABLE_STATS``: the
    kernel keeps counting only while the returned fd is open; nothing global to restore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf(BPF_ENABLE_STATS)")
    try:
        yield
    finally:
        os.close(fd)


def prog_stats(pid: int) -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) per BPF program name held by process ``pid`` (from its fdinfo;
    names from bpftool). Programs of the same name are summed."""
    by_id: dict[int, tuple[int, int]] = {}
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            kv = dict(line.split(":\t", 1) for line in fdinfo.read_text().splitlines()
                      if ":\t" in line)
        except OSError:
            continue
        if "prog_id" in kv and "run_cnt" in kv:
            by_id[int(kv["prog_id"])] = (int(kv["run_cnt"]), int(kv["run_time_ns"]))
    names = {p["id"]: p["name"] for p in json.loads(
        subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                       timeout=30, check=True).stdout) if p["id"] in by_id}
    out: dict[str, tuple[int, int]] = {}
    for pid_, (cnt, ns) in by_id.items():
        name = names.get(pid_, str(pid_))
        c0, n0 = out.get(name, (0, 0))
        out[name] = (c0 + cnt, n0 + ns)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine() -> str:
    """One line naming the date, kernel and CPU count, for the report."""
    return (f"{time.strftime('%Y-%m-%d')}, Linux {platform.release()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def guest_json(name: str, label: str, script: str, timeout_s: int) -> dict[str, Any] | None:
    """Run the bash ``script`` in the VM kernel ``label`` of tools/kernel_matrix.py (taking
    the machine-wide VM lock, as the kernel tier does) and return the last JSON line it
    printed, or None if the run failed. The whole output goes to build/NAME/LABEL.log, the
    result to build/NAME/LABEL.json."""
    import fcntl

    sys.path.insert(0, str(ROOT / "tools"))
    import kernel_matrix as km

    km.OUT.mkdir(parents=True, exist_ok=True)
    km.prepare_site()
    out = ROOT / "build" / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["bash", str(km.RUN_SH), "-v", "-t", str(timeout_s), "-k", km.MATRIX[label],
           str(ROOT), "--", "bash", "-c", script]
    with open(km.VM_LOCK, "w") as lock:
        print(f"{name}: waiting for the VM lock {km.VM_LOCK}", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.run(cmd, env=km.kt_env(), capture_output=True, text=True,
                           timeout=timeout_s + 600)
    (out / f"{label}.log").write_text(p.stdout + "\n--- stderr\n" + p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        print(f"{name}: the guest run failed ({p.returncode}); see {out}/{label}.log",
              file=sys.stderr)
        return None
    res: dict[str, Any] = json.loads(lines[-1])
    (out / f"{label}.json").write_text(json.dumps(res, indent=2))
    return res
