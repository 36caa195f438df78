"""``--probes all-skb``: which kernel functions to probe, found from BTF (pwru's idea).

Every function of vmlinux and of the loaded modules (``/sys/kernel/btf/*``) with a
``struct sk_buff *`` among its first five parameters is a candidate; the BPF side has one program
per argument position (``kp_allskb_m<n>`` / ``kp_allskb_<n>`` in probes/hoptrace.bpf.c). A
function can be in BTF and still not be traceable: inlined everywhere, ``notrace``, or on the
kprobe blacklist. Functions missing from tracefs' ``available_filter_functions`` are skipped
before attaching (one refused name would make the kernel refuse a whole kprobe.multi link); the
loader skips what the kernel still refuses. Both are counted and reported.

Each function gets a number: its index in :attr:`Plan.functions` plus one, passed as the attach
cookie and written by the kernel into ``ht_event.func``; the trace header carries the list.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracer.btf import BTF_DIR, Btf

MAX_ARG = 5  # PT_REGS_PARM1..5: the BPF programs cover these positions
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass
class Plan:
    """What to attach: functions by argument position, and what was left out and why."""

    functions: list[str]  # cookie k names functions[k - 1]
    position: dict[str, int]  # function -> 1-based argument position of its skb
    in_btf: int  # functions with an skb argument in BTF (vmlinux + modules, deduplicated)
    modules: int  # module BTF files read
    curated: list[str]  # left to the curated probes, which attach there themselves
    not_traceable: list[str]  # not in available_filter_functions
    traceable_known: bool  # False: available_filter_functions could not be read
    scan_s: float

    def by_position(self) -> dict[int, list[tuple[str, int]]]:
        """{position: [(function, cookie), ...]}."""
        out: dict[int, list[tuple[str, int]]] = {}
        for i, fn in enumerate(self.functions):
            out.setdefault(self.position[fn], []).append((fn, i + 1))
        return out


@dataclass
class Report:
    """What attaching a :class:`Plan` gave; goes to the trace header and the stderr line."""

    mechanism: str
    plan: Plan
    attached: int = 0
    links: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # function -> the kernel's error
    attach_s: float = 0.0

    def to_json(self) -> dict[str, object]:
        p = self.plan
        return {
            "mechanism": self.mechanism,
            "in_btf": p.in_btf,
            "modules": p.modules,
            "attached": self.attached,
            "links": self.links,
            "curated": p.curated,
            "not_traceable": len(p.not_traceable),
            "traceable_known": p.traceable_known,
            "rejected": self.rejected,
            "scan_s": round(p.scan_s, 3),
            "attach_s": round(self.attach_s, 3),
            "functions": p.functions,
        }

    def summary(self) -> str:
        p = self.plan
        skipped = len(p.not_traceable) + len(self.rejected)
        return (
            f"all-skb: {self.attached} functions attached via {self.mechanism} in "
            f"{self.attach_s:.2f}s ({p.in_btf} with an skb argument in BTF, {p.modules} "
            f"modules; skipped {skipped}: {len(p.not_traceable)} not traceable, "
            f"{len(self.rejected)} refused by the kernel; {len(p.curated)} left to the "
            "curated probes)"
        )


def skb_functions() -> tuple[dict[str, int], int]:
    """{function: skb argument position} from vmlinux and module BTF; and the module count."""
    base = Btf.vmlinux()
    try:
        found = base.functions_taking("sk_buff", MAX_ARG)
        modules = 0
        for path in sorted(BTF_DIR.iterdir()):
            if path.name == "vmlinux":
                continue
            try:
                mod = Btf.module(path, base)
            except Exception:  # noqa: BLE001 - a module unloaded meanwhile, or unreadable
                continue
            try:
                for fn, pos in mod.functions_taking("sk_buff", MAX_ARG).items():
                    found.setdefault(fn, pos)
                modules += 1
            finally:
                mod.close()
        return found, modules
    finally:
        base.close()


def _mount_tracefs(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount(b"tracefs", str(path).encode(), b"tracefs", 0, None)


def traceable() -> set[str] | None:
    """Names in tracefs' available_filter_functions (mounting tracefs where it is not), or
    None when the kernel does not let us read it (lockdown gives EPERM)."""
    for base in TRACEFS:
        f = base / "available_filter_functions"
        if not f.exists() and base == TRACEFS[0] and base.is_dir() and os.geteuid() == 0:
            _mount_tracefs(base)
        try:
            text = f.read_text()
        except OSError:
            continue
        # "name" or "name [module]"; a name may repeat (static functions of several files)
        return {line.split(" ", 1)[0] for line in text.splitlines() if line}
    return None


def plan(curated_targets: set[str]) -> Plan:
    """Scan BTF and tracefs; ``curated_targets``: functions the curated set probes already."""
    t0 = time.monotonic()
    found, modules = skb_functions()
    ok = traceable()
    funcs, not_traceable, curated = [], [], []
    for fn in sorted(found):
        if fn in curated_targets:
            curated.append(fn)
        elif ok is not None and fn not in ok:
            not_traceable.append(fn)
        else:
            funcs.append(fn)
    return Plan(
        functions=funcs,
        position={fn: found[fn] for fn in funcs},
        in_btf=len(found),
        modules=modules,
        curated=curated,
        not_traceable=not_traceable,
        traceable_known=ok is not None,
        scan_s=time.monotonic() - t0,
    )
