"""Load hoptrace's probes: open -> configure -> load -> attach -> read -> close.

The only place that drives libbpf (through tracer/libbpf.py). Each step that fails raises an
error naming the step, with the libbpf/verifier log where there is one. Everything attached is
detached by :meth:`Probes.close` (also on errors, Ctrl-C and SIGTERM: the CLI turns SIGTERM into
an exception so ``with Probes(...)`` unwinds).

Optional points fall back one program at a time: when the chosen program of an optional point
fails to load or attach, that point moves to its next mechanism (inference at the end) with a
warning in :attr:`Probes.warnings`, and the rest of the run goes on; a core point, or one the
user asked for by name (``--probes all-skb``), is an error instead.

``--probes all-skb`` adds the ``func`` point: tracer/allskb.py plans which functions, and
:meth:`Probes._attach_allskb` attaches one program per skb argument position to them with
kprobe.multi (one link per position) or one kprobe per function, each with its attach cookie.

Netfilter hooks have no libbpf attach call in libbpf 1.1: the loader sets the program type
(BPF_PROG_TYPE_NETFILTER) before load and creates the links with the raw bpf(BPF_LINK_CREATE)
syscall, entering each network namespace with setns() because a link belongs to the netns of the
thread that creates it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

import probes
from tracer import allskb, libbpf
from tracer.btf import Btf
from tracer.capabilities import Choice, Verdict, check, choose_all, require_btf, require_root
from tracer.catalogue import Mech, Mechanism
from tracer.errors import AttachError, LoadError
from tracer.filter import CompiledFilter
from tracer.names import Netns
from tracer.ringbuf import RingReader

NFPROTO = {"ipv4": 2, "ipv6": 10}
NF_HOOKS = range(5)  # PRE_ROUTING, LOCAL_IN, FORWARD, LOCAL_OUT, POST_ROUTING
NF_PRIO = {"nf_first": -(2**31) + 1, "nf_last": 2**31 - 2}  # INT_MIN/INT_MAX are refused
DEFAULT_VXLAN_PORTS = (4789, 8472, 6784)


@dataclass
class ProbeOptions:
    """What the user asked for, as the loader needs it."""

    filter: CompiledFilter
    netns: list[Netns]
    netns_all: bool = True
    outer: bool = False
    vxlan_ports: tuple[int, ...] = DEFAULT_VXLAN_PORTS
    ring_bytes: int = 16 << 20
    allow: frozenset[Mech] | None = None
    probe_set: str = "curated"  # or "all-skb" (tracer/catalogue.py PROBE_SETS)
    empty: bool = False  # programs that return at once: the cost of attaching alone (benchmarks)

    @property
    def explicit(self) -> frozenset[str]:
        """Points the user asked for by name: their failure is an error, not a fallback."""
        from tracer.catalogue import CATALOGUE

        return frozenset(p.name for p in CATALOGUE if p.opt_in and p.opt_in == self.probe_set)


@dataclass
class Timings:
    choose_s: float = 0.0
    open_s: float = 0.0
    load_s: float = 0.0
    attach_s: float = 0.0
    allskb_s: float = 0.0  # of attach_s: the --probes all-skb functions (scan included)

    @property
    def total_s(self) -> float:
        return self.choose_s + self.open_s + self.load_s + self.attach_s


class Probes:
    """A loaded, attached set of hoptrace probes. Use as a context manager."""

    def __init__(self, opts: ProbeOptions) -> None:
        self.opts = opts
        self._lib = libbpf.lib()
        self._obj: int = 0
        self._btf: Btf | None = None
        self._links: list[int] = []
        self._nf_fds: list[int] = []
        self._ring: RingReader | None = None
        self.choices: list[Choice] = []
        self.event_dtype: np.dtype | None = None
        self.probe_ids: dict[str, int] = {}
        self.timings = Timings()
        self.nf_netns: list[str] = []
        self.warnings: list[str] = []  # optional probes that fell back, and why
        self.allskb: allskb.Report | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Probes:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        require_root()
        require_btf()
        t0 = time.monotonic()
        self.choices = choose_all(self.opts.allow, self.opts.probe_set)
        explicit = self.opts.explicit
        for c in self.choices:
            if c.chosen is None and (c.point.core or c.point.name in explicit):
                why = "; ".join(f"{m.kind}: {v.error}" for m, v in c.rejected)
                if c.point.core:
                    raise AttachError(f"core probe {c.point.name} cannot be attached here ({why})")
                kinds = " or ".join(m.kind.value for m in c.point.mechanisms)
                raise AttachError(
                    f"--probes {c.point.opt_in} needs {kinds} and this kernel allows neither "
                    f"({why})"
                )
        # Each pass loads and attaches what is chosen; an optional program that fails moves
        # its point to the next mechanism (_Fallback) and the next pass starts over without it.
        for _ in range(2 * len(self.choices) + 1):
            t1b = time.monotonic()
            try:
                self._open()
                t2 = time.monotonic()
                self._configure()
                self._load()
                t3 = time.monotonic()
                self._attach()
                t4 = time.monotonic()
                break
            except _Fallback:
                self.close()
                self.nf_netns.clear()
                continue
        else:
            raise LoadError("optional probes kept failing: giving up")
        # passes that fell back count as choosing
        self.timings = Timings(t1b - t0, t2 - t1b, t3 - t2, t4 - t3, self.timings.allskb_s)

    def _fall_back(self, program: str, step: str, error: str) -> bool:
        """The optional point whose chosen program is ``program`` moves to its next mechanism
        that works here; returns False when ``program`` is no such point's (core, explicit, or
        not a point's program at all). The new mechanism needs a program: a new pass."""
        for i, c in enumerate(self.choices):
            m = c.chosen
            if m is None or program not in (m.program, m.entry):
                continue
            if c.point.core or c.point.name in self.opts.explicit:
                return False
            rejected = [*c.rejected, (m, Verdict(False, f"{step}: {error}"))]
            nxt: Mechanism | None = None
            for cand in c.point.mechanisms[c.point.mechanisms.index(m) + 1 :]:
                allow = self.opts.allow
                if allow is not None and cand.kind not in allow and cand.kind != Mech.INFERRED:
                    continue
                v = check(cand.kind, cand.check_at or cand.target)
                if v.ok:
                    nxt = cand
                    break
                rejected.append((cand, v))
            self.choices[i] = Choice(c.point, nxt, tuple(rejected))
            instead = f"{nxt.kind} instead" if nxt else "nothing instead"
            self.warnings.append(
                f"optional probe {c.point.name}: {m.kind} {m.target} failed to {step} "
                f"({error}); {instead}"
            )
            return True
        return False

    def close(self) -> None:
        """Detach and free everything; safe to call twice and after partial starts."""
        lib = self._lib
        if self._ring:
            self._ring.close()
            self._ring = None
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        for fd in self._nf_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._nf_fds.clear()
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = 0
        if self._btf:
            self._btf.close()
            self._btf = None

    # -- steps -----------------------------------------------------------------------------

    def _open(self) -> None:
        path = probes.object_path("hoptrace")
        libbpf.take_log()
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        self._obj = libbpf.check_ptr(obj, f"open {path}", LoadError)
        self._btf = Btf.from_file(path)
        self.event_dtype = self._btf.struct_dtype("ht_event")
        self.probe_ids = self._btf.enum("ht_probe")

    def _program(self, name: str) -> int:
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LoadError(f"program {name} missing from the BPF object (rebuild: make build)")
        return int(prog)

    def _configure(self) -> None:
        lib, btf, opts = self._lib, self._btf, self.opts
        assert btf is not None
        # a kretprobe's entry kprobe (Mechanism.entry) is loaded and attached with it
        wanted = {p for c in self.choices if c.chosen
                  for p in (c.chosen.program, c.chosen.entry) if p}
        for c in self.choices:
            if c.chosen and c.point.opt_in == "all-skb":
                # one program per skb argument position, and the free-path guard
                wanted |= {c.chosen.program[:-1] + str(n) for n in range(1, allskb.MAX_ARG + 1)}
                wanted |= {"tp_allskb_kfree", "tp_allskb_consume"}
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            lib.bpf_program__set_autoload(prog, name in wanted)
            if name in NF_PRIO:
                lib.bpf_program__set_type(prog, libbpf.BPF_PROG_TYPE_NETFILTER)
                lib.bpf_program__set_expected_attach_type(prog, libbpf.BPF_NETFILTER)
            prog = lib.bpf_object__next_program(self._obj, prog)

        ring = self._map("events")
        libbpf.check_int(
            lib.bpf_map__set_max_entries(ring, opts.ring_bytes), "resize ring buffer", LoadError
        )

        cfg = np.zeros(1, dtype=btf.struct_dtype("ht_config"))[0]
        fields = btf.enum("ht_field")
        cfg["match_all"] = int(opts.filter.match_all)
        cfg["outer"] = int(opts.outer)
        cfg["filter_netns"] = int(not opts.netns_all)
        cfg["empty"] = int(opts.empty)
        ports = sorted(set(opts.vxlan_ports))
        if len(ports) > len(cfg["vxlan_ports"]):
            raise LoadError(f"at most {len(cfg['vxlan_ports'])} VXLAN ports can be decapsulated")
        cfg["n_tunnel_ports"] = len(ports)
        cfg["vxlan_ports"][: len(ports)] = ports
        flt = cfg["filter"]
        flt["nterms"] = len(opts.filter.terms)
        for i, term in enumerate(opts.filter.terms):
            flt["terms"][i]["npreds"] = len(term)
            for j, pred in enumerate(term):
                dst = flt["terms"][i]["preds"][j]
                dst["field"] = fields[pred.field]
                dst["negate"] = int(pred.negate)
                dst["mask"] = pred.mask
                dst["lo"] = pred.lo
                dst["hi"] = pred.hi
        rodata = self._map_ending(".rodata")
        size = ctypes.c_size_t()
        base = lib.bpf_map__initial_value(rodata, ctypes.byref(size))
        off = btf.var_offset(".rodata", "ht_cfg")
        raw = cfg.tobytes()
        if not base or off + len(raw) > size.value:
            raise LoadError("cannot reach the .rodata of the BPF object to configure it")
        ctypes.memmove(base + off, raw, len(raw))

    def _load(self) -> None:
        libbpf.take_log()
        err = self._lib.bpf_object__load(self._obj)
        if err:
            log = libbpf.take_log()
            m = re.search(r"prog '(\w+)': (?:BPF program load failed|failed to load)", log)
            if m and self._fall_back(m.group(1), "load", libbpf.errmsg(err)):
                raise _Fallback()
            raise LoadError(f"loading BPF programs failed ({libbpf.errmsg(err)})", log)
        if not self.opts.netns_all:
            fd = self._lib.bpf_map__fd(self._map("netns_allow"))
            one = ctypes.c_uint8(1)
            for ns in self.opts.netns:
                key = ctypes.c_uint32(ns.inode)
                libbpf.check_int(
                    self._lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(one), 0),
                    "netns_allow update",
                    LoadError,
                )

    def _attach(self) -> None:
        lib = self._lib
        nf_progs: list[str] = []
        fallback = False
        for c in list(self.choices):
            mech = c.chosen
            if mech is None or not mech.program:
                continue
            if mech.kind == Mech.NETFILTER:
                nf_progs.append(mech.program)
                continue
            if c.point.opt_in == "all-skb":
                continue  # attached last, below: its attach time is measured on its own
            failed = ""
            for prog in (mech.entry, mech.program):  # a kretprobe's entry kprobe first
                if not prog:
                    continue
                libbpf.take_log()
                link = lib.bpf_program__attach(self._program(prog))
                if not link:
                    failed = prog
                    break
                self._links.append(link)  # close() destroys them, also after a fallback
            if failed:
                err = ctypes.get_errno()
                log = libbpf.take_log().strip()
                if self._fall_back(failed, "attach", f"{libbpf.errmsg(err)}: {log}"):
                    nxt = next(x for x in self.choices if x.point == c.point).chosen
                    fallback = fallback or bool(nxt and nxt.program)
                    continue
                raise AttachError(
                    f"attaching {mech.kind} {mech.target} for {c.point.name} failed "
                    f"({libbpf.errmsg(err)}): {log}"
                )
        if fallback:
            raise _Fallback()  # a next mechanism needs its program loaded: a new pass
        if nf_progs:
            self._attach_netfilter(nf_progs, self.opts.netns)
        for c in self.choices:
            if c.chosen and c.point.opt_in == "all-skb":
                self._attach_allskb(c.chosen)
        assert self.event_dtype is not None
        ring = self._map("events")
        try:
            self._ring = RingReader(lib.bpf_map__fd(ring), self.opts.ring_bytes, self.event_dtype)
        except OSError as exc:
            raise LoadError(f"map the ring buffer: {exc.strerror}") from exc

    def _attach_allskb(self, mech: Mechanism) -> None:
        """Every function of the all-skb plan, by skb argument position; functions the kernel
        refuses are skipped and counted (pwru skips them too), an empty result is an error."""
        t0 = time.monotonic()
        curated = {
            c.chosen.target
            for c in self.choices
            if c.chosen and c.chosen.kind in (Mech.FENTRY, Mech.FEXIT, Mech.KPROBE)
            and not c.point.opt_in
        }
        plan = allskb.plan(curated)
        report = allskb.Report(mech.kind.value, plan)
        # a kprobe holds a perf event fd and a link fd; the ring buffer and maps need more
        _raise_nofile(3 * len(plan.functions) + 1024)
        t1 = time.monotonic()
        for pos, items in sorted(plan.by_position().items()):
            prog = self._program(mech.program[:-1] + str(pos))
            if mech.kind == Mech.KPROBE_MULTI:
                report.attached += self._attach_multi(prog, items, report)
            else:
                for fn, cookie in items:
                    try:
                        self._links.append(libbpf.attach_kprobe(prog, fn, cookie))
                        report.attached += 1
                        report.links += 1
                    except OSError as exc:
                        if exc.errno not in self._SKIPPABLE:  # EMFILE, ENOMEM...: not fn's
                            raise AttachError(
                                f"--probes all-skb: kprobe on {fn} failed "
                                f"({libbpf.errmsg(exc.errno or 0)}) after {report.attached}"
                            ) from exc
                        report.rejected[fn] = libbpf.errmsg(exc.errno or 0)
        libbpf.take_log()  # libbpf logs every refusal; the report has them
        report.attach_s = time.monotonic() - t1
        self.allskb = report
        self.timings.allskb_s = time.monotonic() - t0
        if report.attached == 0:
            some = "; ".join(f"{k}: {v}" for k, v in list(report.rejected.items())[:3])
            raise AttachError(
                f"--probes all-skb: no function could be attached with {mech.kind} "
                f"({len(plan.functions)} tried; {some or 'none traceable'})"
            )

    _SKIPPABLE = {errno.ESRCH, errno.ENOENT, errno.EINVAL, errno.EADDRNOTAVAIL, errno.EBUSY}

    def _attach_multi(self, prog: int, items: list[tuple[str, int]], rep: allskb.Report) -> int:
        """One kprobe.multi link for ``items``; when the kernel refuses the list (it does not
        say which function), halve it until the refused functions stand alone."""
        try:
            self._links.append(
                libbpf.attach_kprobe_multi(prog, [f for f, _ in items], [c for _, c in items])
            )
            rep.links += 1
            return len(items)
        except OSError as exc:
            err = exc.errno or 0
            if err not in self._SKIPPABLE:
                raise AttachError(
                    f"--probes all-skb: kprobe.multi link on {len(items)} functions failed "
                    f"({libbpf.errmsg(err)}): {libbpf.take_log().strip()[-300:]}"
                ) from exc
            if len(items) == 1:
                rep.rejected[items[0][0]] = libbpf.errmsg(err)
                return 0
        half = len(items) // 2
        return self._attach_multi(prog, items[:half], rep) + self._attach_multi(
            prog, items[half:], rep
        )

    def _attach_netfilter(self, names: Iterable[str], namespaces: list[Netns]) -> None:
        fds = {n: self._lib.bpf_program__fd(self._program(n)) for n in names}
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            for ns in namespaces:
                try:
                    target = os.open(ns.path, os.O_RDONLY)
                except OSError:
                    continue  # the namespace went away since it was listed
                try:
                    libbpf.setns(target)
                    for name, fd in fds.items():
                        for pf in NFPROTO.values():
                            for hook in NF_HOOKS:
                                self._nf_fds.append(self._nf_link(fd, name, pf, hook, ns))
                    self.nf_netns.append(ns.name)
                finally:
                    os.close(target)
                    libbpf.setns(own)
        finally:
            os.close(own)

    @staticmethod
    def _nf_link(fd: int, name: str, pf: int, hook: int, ns: Netns) -> int:
        """A netfilter link at the first free priority next to the wanted one: another tracer
        (another hoptrace, say) may hold that exact priority already (EBUSY)."""
        step = 1 if NF_PRIO[name] < 0 else -1
        for i in range(64):
            try:
                return libbpf.link_create_netfilter(fd, pf, hook, NF_PRIO[name] + i * step)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    continue
                raise AttachError(
                    f"netfilter link pf={pf} hook={hook} in netns {ns.name}: "
                    f"{libbpf.errmsg(exc.errno or 0)}"
                ) from exc
        raise AttachError(f"netfilter hook {hook} in netns {ns.name}: 64 priorities in use")

    def _map(self, name: str) -> int:
        m = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        return libbpf.check_ptr(m, f"find map {name}", LoadError)

    def _map_ending(self, suffix: str) -> int:
        m = self._lib.bpf_object__next_map(self._obj, None)
        while m:
            if self._lib.bpf_map__name(m).decode().endswith(suffix):
                return int(m)
            m = self._lib.bpf_object__next_map(self._obj, m)
        raise LoadError(f"BPF object has no {suffix} map")

    # -- reading ---------------------------------------------------------------------------

    def read(self, timeout_ms: int = 10) -> np.ndarray:
        """Wait up to ``timeout_ms`` (less when the ring fills), drain it, return the records."""
        assert self._ring is not None
        self._ring.wait(timeout_ms)
        return self._ring.take()

    def drain(self) -> np.ndarray:
        assert self._ring is not None
        return self._ring.take()

    def lost(self) -> dict[str, int]:
        """Events the kernel could not write, per probe point name (summed over CPUs)."""
        ncpu = self._lib.libbpf_num_possible_cpus()
        fd = self._lib.bpf_map__fd(self._map("lost"))
        vals = (ctypes.c_uint64 * ncpu)()
        names = {v: k for k, v in self.probe_ids.items()}
        out: dict[str, int] = {}
        for pid in range(self.probe_ids.get("HT_PROBE_MAX", 0)):
            key = ctypes.c_uint32(pid)
            if self._lib.bpf_map_lookup_elem(fd, ctypes.byref(key), vals) == 0 and sum(vals):
                out[_point_name(names.get(pid, str(pid)))] = int(sum(vals))
        return out

    def probe_name(self, probe_id: int) -> str:
        for k, v in self.probe_ids.items():
            if v == probe_id:
                return _point_name(k)
        return str(probe_id)


class _Fallback(Exception):
    """An optional program failed and its point moved on: load and attach again."""


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    want = max(need, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _point_name(enum_name: str) -> str:
    from tracer.catalogue import BY_ENUM

    point = BY_ENUM.get(enum_name)
    return point.name if point else enum_name
