"""What the running kernel allows: one module, used by ``hoptrace doctor``, the loader and tests.

Each mechanism is tried for real with an empty program from ``probes/caps.bpf.o`` (load, attach,
detach at once), so a verdict carries the kernel's own error. Results are cached per process.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import probes
from tracer import libbpf
from tracer.catalogue import Mech, Mechanism, ProbePoint, points_of
from tracer.errors import NoBTFError, PermissionError_

NFPROTO_IPV4 = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    error: str = ""


def tracing_missing() -> str | None:
    """Why hoptrace cannot load probes here (root, BTF, the built object), or None.
    Used by the CLI's checks and by test skips, so both say the same thing."""
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "needs kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)"
    if not (probes.HERE / "hoptrace.bpf.o").exists():
        return "needs the built BPF object (make build)"
    return None


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError_(
            "tracing needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns): "
            "run with sudo"
        )


def require_btf() -> None:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise NoBTFError(
            "/sys/kernel/btf/vmlinux is missing: this kernel has no BTF "
            "(CONFIG_DEBUG_INFO_BTF=y), which CO-RE probes need"
        )


def _last_log_line(log: str) -> str:
    """The most specific line of a libbpf log: the first that names the failing program."""
    lines = [ln.strip().removeprefix("libbpf: ") for ln in log.strip().splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("prog '") and ("fail" in line or "error" in line.lower()):
            return line
    return lines[-1] if lines else ""


def _try(kind: Mech, target: str) -> Verdict:
    lib = libbpf.lib()
    libbpf.take_log()
    obj = lib.bpf_object__open_file(str(probes.object_path("caps")).encode(), None)
    if not obj:
        return Verdict(False, f"open caps object: {libbpf.errmsg(ctypes.get_errno())}")
    link = None
    nf_fd = -1
    try:
        # a kretprobe is the kprobe program attached at the function's return
        kind_name = Mech.KPROBE.value if kind == Mech.KRETPROBE else kind.value
        name = f"caps_{kind_name}".replace(".", "_")
        prog = None
        p = lib.bpf_object__next_program(obj, None)
        while p:
            mine = lib.bpf_program__name(p).decode() == name
            lib.bpf_program__set_autoload(p, mine)
            if mine:
                prog = p
            p = lib.bpf_object__next_program(obj, p)
        if kind in (Mech.FENTRY, Mech.FEXIT, Mech.TP_BTF):
            lib.bpf_program__set_attach_target(prog, 0, target.encode())
        if kind == Mech.NETFILTER:
            lib.bpf_program__set_type(prog, libbpf.BPF_PROG_TYPE_NETFILTER)
            lib.bpf_program__set_expected_attach_type(prog, libbpf.BPF_NETFILTER)
        err = lib.bpf_object__load(obj)
        if err:
            why = _last_log_line(libbpf.take_log())
            return Verdict(False, f"load: {libbpf.errmsg(err)}" + (f" ({why})" if why else ""))
        if kind == Mech.NETFILTER:
            try:
                nf_fd = libbpf.link_create_netfilter(lib.bpf_program__fd(prog), NFPROTO_IPV4, 0, 0)
            except OSError as exc:
                return Verdict(False, f"BPF_LINK_CREATE: {libbpf.errmsg(exc.errno or 0)}")
            return Verdict(True)
        if kind in (Mech.KPROBE, Mech.KRETPROBE):
            link = lib.bpf_program__attach_kprobe(prog, kind == Mech.KRETPROBE, target.encode())
        elif kind == Mech.KPROBE_MULTI:
            try:
                link = libbpf.attach_kprobe_multi(prog, [target], [0])
            except OSError as exc:
                ctypes.set_errno(exc.errno or 0)
                link = None
        else:
            link = lib.bpf_program__attach(prog)
        if not link:
            err = ctypes.get_errno()
            why = _last_log_line(libbpf.take_log())
            return Verdict(False, f"attach: {libbpf.errmsg(err)}" + (f" ({why})" if why else ""))
        return Verdict(True)
    finally:
        if link:
            lib.bpf_link__destroy(link)
        if nf_fd >= 0:
            os.close(nf_fd)
        lib.bpf_object__close(obj)
        libbpf.take_log()


@functools.cache
def check(kind: Mech, target: str) -> Verdict:
    """Can a ``kind`` program be loaded and attached at ``target`` on this kernel?"""
    if kind == Mech.INFERRED:
        return Verdict(True)
    if kind == Mech.NETFILTER:
        target = "netfilter"  # one verdict for every hook
    return _try(kind, target)


@dataclass(frozen=True, slots=True)
class Choice:
    point: ProbePoint
    chosen: Mechanism | None
    rejected: tuple[tuple[Mechanism, Verdict], ...]


def choose(point: ProbePoint, allow: frozenset[Mech] | None = None) -> Choice:
    """The first mechanism of ``point`` that works here (and is allowed), and why the others
    before it were rejected."""
    rejected: list[tuple[Mechanism, Verdict]] = []
    for mech in point.mechanisms:
        if allow is not None and mech.kind not in allow and mech.kind != Mech.INFERRED:
            rejected.append((mech, Verdict(False, "not allowed by --mechanisms")))
            continue
        verdict = check(mech.kind, mech.check_at or mech.target)
        if verdict.ok:
            return Choice(point, mech, tuple(rejected))
        rejected.append((mech, verdict))
    return Choice(point, None, tuple(rejected))


def choose_all(
    allow: frozenset[Mech] | None = None, probe_set: str = "curated"
) -> list[Choice]:
    """The choice for every point of ``probe_set`` (the curated points, plus its opt-in ones)."""
    return [choose(p, allow) for p in points_of(probe_set)]
