"""The VM kernel tier (``make test-kernels``): hoptrace's kernel tests under stock Debian kernels.

For each kernel of the matrix, one after another (each VM uses both cores), this boots the kernel
with ``../shared/kvm-kernel-test/run.sh`` with the repository shared in, and runs
``tools/kernel-guest.sh`` there: ``hoptrace doctor`` (text and JSON) and pytest on the tests that
need a kernel (``-m kernel`` in tests/test_trace_kernel.py and tests/guest/). The guest has no
network: Python dependencies are wheels installed on the host into a ``--target`` directory with
the venv's exact versions, packed as build/kernel-tier/site.tar (the guest unpacks it to tmpfs:
importing numpy over 9p took 14 s, from tmpfs 6 s). The BPF objects built on the host are used
as they are (CO-RE).

Per kernel the result is PASSED, FAILED or SKIPPED (with the reason: no kvm-kernel-test, the
kernel could not be fetched, not root). A kernel where pytest ran no test at all is FAILED,
never a pass. Results go to build/kernel-tier/<label>/ (guest output, doctor table and JSON,
JUnit XML, timings) and build/kernel-tier/summary.json; the exit status is 1 if any kernel
FAILED, else 0 (all SKIPPED too, unless --require, or HT_KERNELS_REQUIRED=1, is given).

    python3 tools/kernel_matrix.py                      # the whole matrix
    python3 tools/kernel_matrix.py --kernel 6.12 -- -k vxlan   # one kernel, pytest args
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "kernel-tier"
RUN_SH = Path(os.environ.get("KT_RUN_SH", ROOT.parent / "shared" / "kvm-kernel-test" / "run.sh"))

# label -> Debian package (SUITE/PKG for another suite), as run.sh --kernel takes it
MATRIX = {
    "6.1": "linux-image-amd64",  # bookworm
    "6.12": "linux-image-6.12-amd64",  # bookworm-security
    "7.3": "trixie-backports/linux-image-amd64",
}
# Debian packages the guest tests need beyond run.sh's base set (iptables, nftables: the FORWARD
# DROP tests; iptables: the IPVS lab's MASQUERADE rule; IPVS itself is configured with pyroute2,
# no ipvsadm). KT_EXTRA_PACKAGES in the caller's environment adds more ("ipvsadm" to look around).
GUEST_APT = "iptables nftables"
# Python packages for the guest: pyproject's runtime dependencies and the pytest plugins the
# kernel tests use, with everything they require, at the venv's exact versions (the guest runs
# what the host tests ran).
GUEST_TEST_PY = ("pytest", "pytest-timeout")
PIN_CLOSURE = """
import importlib.metadata as m, sys, tomllib
from packaging.requirements import Requirement
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] + sys.argv[2:]
todo, seen = [Requirement(d).name for d in deps], {}
while todo:
    name = todo.pop()
    key = name.lower().replace("_", "-")
    if key in seen:
        continue
    seen[key] = f"{name}=={m.version(name)}"
    for r in m.requires(name) or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(" ".join(sorted(seen.values())))
"""
VM_TIMEOUT_S = 1500


@dataclass
class Result:
    label: str
    package: str
    status: str = "SKIPPED"  # PASSED | FAILED | SKIPPED
    reason: str = ""
    kernel: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    doctor: list[dict[str, object]] = field(default_factory=list)
    leftover_programs: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"test-kernels: {msg}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    venv = ROOT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def prepare_site() -> tuple[Path, float]:
    """build/kernel-tier/site.tar: the guest's packages, venv versions (rebuilt on a change)."""
    py = venv_python()
    pins = subprocess.run(
        [str(py), "-c", PIN_CLOSURE, str(ROOT / "pyproject.toml"), *GUEST_TEST_PY],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    tar = OUT / "site.tar"
    stamp = OUT / "site.key"
    key = hashlib.sha256(" ".join(pins).encode()).hexdigest()[:16]
    if tar.exists() and stamp.exists() and stamp.read_text() == key:
        return tar, 0.0
    t0 = time.monotonic()
    target = OUT / "site"
    shutil.rmtree(target, ignore_errors=True)
    log(f"preparing guest Python packages: {' '.join(pins)}")
    # Wheels only, for the guest's CPython 3.11 (bookworm's python3) on x86_64 glibc 2.36.
    plats = [f"--platform=manylinux_2_{v}_x86_64" for v in (17, 28, 34, 36)]
    with open(OUT / "pip.log", "w") as pip_log:
        pip = subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(target),
                "--only-binary=:all:",
                "--python-version=3.11",
                "--implementation=cp",
                "--no-deps",
                *plats,
                *pins,
            ],
            stdout=pip_log,
            stderr=subprocess.STDOUT,
        )
    if pip.returncode:
        raise SystemExit(f"test-kernels: pip failed, see {OUT / 'pip.log'}")
    subprocess.run(
        [
            "tar",
            "-cf",
            str(tar),
            "--exclude=./numpy/*/tests",
            "--exclude=./pandas/tests",
            "--exclude=./pyarrow/tests",
            "--exclude=./pyarrow/include",
            "--exclude=./pyarrow/src",
            "--exclude=./bin",
            "-C",
            str(target),
            ".",
        ],
        check=True,
    )
    shutil.rmtree(target, ignore_errors=True)
    stamp.write_text(key)
    return tar, time.monotonic() - t0


def kt_env() -> dict[str, str]:
    extra = os.environ.get("KT_EXTRA_PACKAGES", "").split()
    return {**os.environ, "KT_EXTRA_PACKAGES": " ".join(dict.fromkeys([GUEST_APT, *extra]))}


def sections(text: str) -> dict[str, str]:
    """``@@begin NAME`` ... ``@@end NAME rc=N`` blocks of the guest's output."""
    out = {}
    for m in re.finditer(r"^@@begin (\S+)\n(.*?)^@@end \1 rc=(-?\d+)$", text, re.M | re.S):
        out[m.group(1)] = m.group(2)
        out[m.group(1) + ".rc"] = m.group(3)
    return out


def junit_counts(xml: str) -> dict[str, int]:
    root = ET.fromstring(xml)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    c = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    # known gaps (tests/guest/known_gaps.py) are xfails, which JUnit counts as skipped
    c["xfailed"] = sum(1 for e in suite.iter("skipped") if e.get("type") == "pytest.xfail")
    c["skipped"] -= c["xfailed"]
    return c


VM_LOCK = Path(os.environ.get("HT_VM_LOCK", "/tmp/hoptrace-kvm.lock"))


def run_kernel(label: str, package: str, pytest_args: list[str]) -> Result:
    """One kernel; VMs of every checkout on this machine take turns (each uses both cores)."""
    with open(VM_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{label}: another VM runs on this machine; waiting for {VM_LOCK}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_kernel(label, package, pytest_args)


def _run_kernel(label: str, package: str, pytest_args: list[str]) -> Result:
    res = Result(label, package)
    d = OUT / label
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    # 1. the cache (rootfs, kernel, image): a kernel that cannot be fetched is SKIPPED
    t0 = time.monotonic()
    b = subprocess.run(
        ["bash", str(RUN_SH), "--build-only", "-k", package],
        env=kt_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    res.timings["cache_s"] = round(time.monotonic() - t0, 1)
    (d / "cache.log").write_text(b.stdout + b.stderr)
    if b.returncode != 0:
        errs = [ln for ln in b.stderr.splitlines() if "error" in ln.lower()]
        last = (errs or b.stderr.splitlines() or ["?"])[-1]
        res.reason = f"kernel cache could not be built: {last}"
        return res
    # 2. boot and run the guest script; output streamed (indented) and kept
    log(f"{label}: booting {package}")
    cmd = [
        "bash",
        str(RUN_SH),
        "-v",
        "-t",
        str(VM_TIMEOUT_S),
        "--console-log",
        str(d / "console.log"),
        "-k",
        package,
        str(ROOT),
        "--",
        "bash",
        "tools/kernel-guest.sh",
        *pytest_args,
    ]
    t0 = time.monotonic()
    with open(d / "run.err", "w") as err:
        proc = subprocess.Popen(cmd, env=kt_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        lines = []
        quiet = False  # machine-readable sections are kept, not shown
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("@@begin "):
                quiet = line.split()[1] in ("doctor-json", "junit")
            elif line.startswith("@@end "):
                quiet = False
            elif not quiet and not line.startswith("@@"):
                sys.stdout.write("  | " + line)
                sys.stdout.flush()
        rc = proc.wait()
    res.timings["vm_total_s"] = round(time.monotonic() - t0, 1)
    text = "".join(lines)
    (d / "guest.out").write_text(text)
    errtext = (d / "run.err").read_text()
    m = re.search(r"VM start->poweroff ([\d.]+)s \(guest uptime at init ([\d.]+)s", errtext)
    if m:
        res.timings["vm_s"] = float(m.group(1))
        res.timings["boot_s"] = float(m.group(2))
    stamps = dict(re.findall(r"^@@time (\S+) ([\d.]+)$", text, re.M))
    for a, b_ in (("start", "setup"), ("setup", "doctor"), ("doctor", "pytest")):
        if a in stamps and b_ in stamps:
            res.timings[f"guest_{b_}_s"] = round(float(stamps[b_]) - float(stamps[a]), 1)
    s = sections(text)
    if "doctor" in s:
        (d / "doctor.txt").write_text(s["doctor"])
        res.kernel = s["doctor"].split(",")[0].removeprefix("kernel ").strip()
    if "doctor-json" in s:
        (d / "doctor.json").write_text(s["doctor-json"])
        try:
            res.doctor = json.loads(s["doctor-json"])["probes"]
        except (ValueError, KeyError):
            pass
    for what in ("prog", "link"):
        if f"bpftool-{what}" in s:
            (d / f"bpftool-{what}.txt").write_text(s[f"bpftool-{what}"])
    # hoptrace's program names (probes/*.bpf.c): tp_*, nf_first/nf_last, fe_*, kp_*, caps_*
    res.leftover_programs = re.findall(
        r"^\d+: \S+\s+name ((?:tp_|fe_|kp_|caps_|nf_first|nf_last)\S*)",
        s.get("bpftool-prog", ""),
        re.M,
    )
    if rc in (124, 125):
        res.status, res.reason = "FAILED", f"VM: {errtext.strip().splitlines()[-1:]}"
        return res
    if "junit" not in s or s.get("junit.rc") != "0":
        res.status, res.reason = "FAILED", f"pytest did not run (exit {rc}); see {d}/guest.out"
        return res
    (d / "junit.xml").write_text(s["junit"])
    res.counts = junit_counts(s["junit"])
    ran = res.counts["passed"] + res.counts["failures"] + res.counts["errors"]
    if ran == 0:
        res.status, res.reason = "FAILED", "no test ran in the guest (all skipped or none)"
    elif rc != 0 or res.counts["failures"] or res.counts["errors"]:
        res.status, res.reason = "FAILED", f"pytest exit {rc}"
    elif res.leftover_programs:
        res.status, res.reason = "FAILED", f"programs left loaded: {res.leftover_programs}"
    else:
        res.status = "PASSED"
        if res.counts["xfailed"]:
            res.reason = f"{res.counts['xfailed']} known-gap xfails (see guest.out)"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", choices=sorted(MATRIX), help="only this kernel")
    ap.add_argument(
        "--require",
        action="store_true",
        default=os.environ.get("HT_KERNELS_REQUIRED") == "1",
        help="a SKIPPED kernel fails the run (HT_KERNELS_REQUIRED=1)",
    )
    ap.add_argument(
        "--probes-from",
        metavar="DIR",
        help="use DIR/*.bpf.o (inside the repository) instead of probes/ in the guests",
    )
    ap.add_argument("pytest_args", nargs="*", help="pytest arguments for the guest (after --)")
    args = ap.parse_args(argv)
    labels = args.kernel or list(MATRIX)
    OUT.mkdir(parents=True, exist_ok=True)
    results = [Result(lb, MATRIX[lb]) for lb in labels]
    why_not = None
    if not RUN_SH.exists():
        why_not = f"{RUN_SH} not found (the kvm-kernel-test tool lives in ../shared)"
    elif os.geteuid() != 0:
        why_not = "needs root (kvm-kernel-test runs mmdebstrap and QEMU)"
    elif not (ROOT / "probes" / "hoptrace.bpf.o").exists():
        why_not = "needs the built BPF objects (make build)"
    t_all = time.monotonic()
    if why_not:
        for r in results:
            r.reason = why_not
    else:
        _, site_s = prepare_site()
        for i, r in enumerate(results):
            guest_args = list(args.pytest_args)
            if args.probes_from:
                rel = Path(args.probes_from).resolve().relative_to(ROOT)
                guest_args = ["--probes-from", str(rel), *guest_args]
            results[i] = run_kernel(r.label, r.package, guest_args)
            results[i].timings["site_s"] = round(site_s, 1) if i == 0 else 0.0
            log(f"{r.label}: {results[i].status} {results[i].reason} {results[i].counts}")
    total = round(time.monotonic() - t_all, 1)
    (OUT / "summary.json").write_text(
        json.dumps({"total_s": total, "kernels": [asdict(r) for r in results]}, indent=2)
    )
    print(f"\nkernel tier ({total}s total; details in {OUT.relative_to(ROOT)}/):")
    print(
        f"  {'kernel':<6} {'release':<22} {'result':<8} {'pass/fail/skip/xf':<17} "
        f"{'cache':>6} {'boot':>5} {'tests':>6}  reason"
    )
    for r in results:
        c = r.counts
        pfs = (
            f"{c['passed']}/{c['failures'] + c['errors']}/{c['skipped']}/{c['xfailed']}"
            if c
            else "-"
        )
        t = r.timings
        print(
            f"  {r.label:<6} {r.kernel or '-':<22} {r.status:<8} {pfs:<17} "
            f"{t.get('cache_s', 0):>5.0f}s {t.get('boot_s', 0):>4.0f}s "
            f"{t.get('guest_pytest_s', 0):>5.0f}s  {r.reason}"
        )
    failed = [r for r in results if r.status == "FAILED"]
    skipped = [r for r in results if r.status == "SKIPPED"]
    if skipped:
        print(
            f"SKIPPED {len(skipped)} kernel(s): {skipped[0].reason}"
            + ("  (--require: this is a failure)" if args.require else "")
        )
    return 1 if failed or (skipped and args.require) else 0


if __name__ == "__main__":
    sys.exit(main())
