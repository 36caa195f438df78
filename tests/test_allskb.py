"""``--probes all-skb`` on the host: the BTF scan against bpftool's reading of the same BTF, the
function names in events (both JSON paths), the clear failure on a kernel without kprobe.multi
and kprobes, and the loader's per-program fallback. The traced run itself needs a kernel that
allows kprobes: tests/guest/test_allskb.py, in the VM matrix."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.tracing import hoptrace, require_kernel
from tracer.btf import VMLINUX
from tracer.catalogue import BY_NAME, CATALOGUE, Mech, points_of

ROOT = Path(__file__).resolve().parent.parent
OBJ = ROOT / "probes" / "hoptrace.bpf.o"


def bpftool_skb_functions(path: Path) -> dict[str, int]:
    """The same scan done on ``bpftool btf dump`` text: an independent reading of the BTF."""
    text = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(path)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    types: dict[int, tuple[str, str, str]] = {}  # id -> (kind, name, rest of the line)
    params: dict[int, list[int]] = {}
    cur = -1
    for line in text.splitlines():
        if line.startswith("["):
            m = re.match(r"\[(\d+)\] (\S+) '([^']*)'(.*)", line)
            assert m, line
            cur = int(m.group(1))
            types[cur] = (m.group(2), m.group(3), m.group(4))
            if m.group(2) == "FUNC_PROTO":
                params[cur] = []
        elif cur in params:
            m = re.search(r"type_id=(\d+)", line)
            assert m, line
            params[cur].append(int(m.group(1)))

    def resolve(tid: int) -> int:
        while types.get(tid, ("",))[0] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(re.search(r"type_id=(\d+)", types[tid][2]).group(1))  # type: ignore[union-attr]
        return tid

    def is_skb_ptr(tid: int) -> bool:
        kind, _, rest = types.get(resolve(tid), ("", "", ""))
        if kind != "PTR":
            return False
        target = types.get(resolve(int(re.search(r"type_id=(\d+)", rest).group(1))))  # type: ignore[union-attr]
        return target is not None and target[:2] == ("STRUCT", "sk_buff")

    out: dict[str, int] = {}
    for kind, name, rest in types.values():
        if kind != "FUNC":
            continue
        proto = int(re.search(r"type_id=(\d+)", rest).group(1))  # type: ignore[union-attr]
        for pos, p in enumerate(params[proto][:5]):
            if is_skb_ptr(p):
                out.setdefault(name, pos + 1)
                break
    return out


def test_btf_scan_agrees_with_bpftool() -> None:
    """tracer/btf.py's scan finds exactly the functions (and argument positions) that an
    independent parse of bpftool's dump of the same vmlinux BTF finds."""
    if not VMLINUX.exists() or not shutil.which("bpftool"):
        pytest.skip("needs /sys/kernel/btf/vmlinux and bpftool")
    from tracer.btf import Btf

    btf = Btf.vmlinux()
    try:
        ours = btf.functions_taking("sk_buff", 5)
    finally:
        btf.close()
    ref = bpftool_skb_functions(VMLINUX)
    assert len(ref) > 1000
    assert ours == ref
    assert ours["ip_rcv"] == 1 and ours["__dev_queue_xmit"] == 1


def test_only_all_skb_attaches_the_func_point() -> None:
    assert "func" not in {p.name for p in points_of("curated")}
    assert "func" in {p.name for p in points_of("all-skb")}
    assert BY_NAME["func"].mechanisms[0].kind == Mech.KPROBE_MULTI


def test_func_names_are_the_same_in_both_json_paths() -> None:
    """Kernel records of the func point carry the function's index + 1; Namer.events,
    Event.to_json and the column-wise Namer.ndjson name it identically."""
    if not OBJ.exists():
        pytest.skip("needs the built BPF object (make build)")
    from tracer.btf import Btf
    from tracer.event import Namer

    b = Btf.from_file(OBJ)
    dtype, ids = b.struct_dtype("ht_event"), b.enum("ht_probe")
    b.close()
    funcs = ["ip_rcv", "vxlan_xmit", "__dev_queue_xmit"]
    recs = np.zeros(5, dtype=dtype)
    recs["probe"] = [ids["HT_PROBE_FUNC"]] * 3 + [ids["HT_PROBE_NET_DEV_QUEUE"]] * 2
    recs["func"] = [2, 1, 3, 0, 0]
    recs["ts_ns"] = np.arange(5)
    recs["skb"] = 0xFFFF888004A1B200  # a kernel address, as "0x" + 16 digits
    namer = Namer("n", ids, {p.enum: p.name for p in CATALOGUE}, netns={0: "host"},
                  functions=funcs)
    events = namer.events(recs)
    assert [e.func for e in events] == ["vxlan_xmit", "ip_rcv", "__dev_queue_xmit", "", ""]
    assert [e.probe for e in events] == ["func"] * 3 + ["net_dev_queue"] * 2
    lines = namer.ndjson(recs).decode().splitlines()
    assert [json.loads(ln) for ln in lines] == [e.to_json() for e in events]


def test_all_skb_without_kprobes_is_a_clear_error() -> None:
    """On a kernel with neither kprobe.multi nor kprobes (the development machine), the run
    stops before tracing, names both and the kernel's errors, and exits non-zero."""
    require_kernel()
    from tracer.capabilities import choose

    if choose(BY_NAME["func"]).chosen is not None:
        pytest.skip("this kernel allows kprobe.multi or kprobes (tests/guest/test_allskb.py)")
    r = hoptrace("trace", "--probes", "all-skb", "--count", "1", "icmp", timeout=120)
    assert r.returncode != 0
    assert "--probes all-skb needs kprobe.multi or kprobe" in r.stderr, r.stderr
    assert "kprobe.multi: attach:" in r.stderr and "kprobe: attach:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    doctor = hoptrace("doctor", timeout=120)
    assert "--probes all-skb: not possible here: needs kprobe.multi or kprobe" in doctor.stdout


def test_optional_program_failing_to_load_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-program fallback, in the real kernel: the function points are given their fentry
    programs as if the capability check had allowed them; where the kernel refuses them at
    load, each point moves on (kprobe, then inference) with a warning, and the run starts. The
    same failure on the point the user asked for (--probes all-skb) is an error."""
    require_kernel()
    from tracer import loader
    from tracer.capabilities import Choice, check, choose_all
    from tracer.errors import AttachError
    from tracer.filter import compile_filter

    if check(Mech.FENTRY, "ip_rcv").ok:
        pytest.skip("fentry loads here: no refusal to fall back from")

    def forced(allow: object = None, probe_set: str = "curated") -> list[Choice]:
        out = []
        for c in choose_all(None, probe_set):
            first = c.point.mechanisms[0]
            if not c.point.core and first.kind in (Mech.FENTRY, Mech.KPROBE_MULTI):
                c = Choice(c.point, first, ())
            out.append(c)
        return out

    monkeypatch.setattr(loader, "choose_all", forced)
    # no namespace: the netfilter links (per netns) are not what this is about
    opts = loader.ProbeOptions(filter=compile_filter("icmp"), netns=[], netns_all=False)
    with loader.Probes(opts) as probes:
        chosen = {c.point.name: c.chosen.kind for c in probes.choices if c.chosen}
        for point in ("ip_rcv", "br_handle_frame", "br_forward", "br_pass_frame_up"):
            assert chosen[point] == Mech.INFERRED, chosen
            assert any(w.startswith(f"optional probe {point}: fentry") for w in probes.warnings)
        assert all("failed to load" in w for w in probes.warnings), probes.warnings
        probes.read(10)  # the ring buffer works: the run goes on

    opts.probe_set = "all-skb"
    with pytest.raises(AttachError, match="all-skb"):
        with loader.Probes(opts):
            pass
