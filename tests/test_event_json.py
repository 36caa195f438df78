"""The recording path (``Namer.ndjson``: kernel records -> JSON lines, column-wise) writes the
same objects as the reference per-event form (``Event.to_json``), on a recorded lab trace turned
back into kernel records with the dtype read from the built object's BTF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tracer.btf import kernel_enum
from tracer.catalogue import CATALOGUE
from tracer.event import FLAG_NAMES, HDR_KINDS, NF_PF, Namer
from tracer.tracefile import read_trace

ROOT = Path(__file__).resolve().parent.parent
OBJ = ROOT / "probes" / "hoptrace.bpf.o"
TRACE = ROOT / "tests" / "data" / "two-node-vxlan.jsonl"
pytestmark = pytest.mark.compile


@pytest.fixture(scope="module")
def probe_ids() -> dict[str, int]:
    if not OBJ.exists():
        pytest.skip("needs the built BPF object (make build: clang, bpftool)")
    from tracer.btf import Btf

    b = Btf.from_file(OBJ)
    try:
        yield b.enum("ht_probe")
    finally:
        b.close()


def records_of(events: list, probe_ids: dict[str, int]) -> np.ndarray:  # type: ignore[type-arg]
    from tracer.btf import Btf

    b = Btf.from_file(OBJ)
    dtype = b.struct_dtype("ht_event")
    b.close()
    probe_of = {p.name: probe_ids[p.enum] for p in CATALOGUE if p.enum in probe_ids}
    hooks = {v.removeprefix("NF_INET_"): k for k, v in kernel_enum("nf_inet_hooks").items()}
    pf = {v: k for k, v in NF_PF.items()}
    flag = {v: k for k, v in FLAG_NAMES.items()}
    kinds = {v: k for k, v in HDR_KINDS.items()}
    recs = np.zeros(len(events), dtype=dtype)
    for r, e in zip(recs, events, strict=True):
        for f in ("ts_ns", "skb", "track", "ifindex", "len", "mark", "cpu", "nf_prio",
                  "identity", "protocol"):
            r[f] = getattr(e, f)
        r["netns"] = e.netns_ino
        r["probe"] = probe_of[e.probe]
        r["nf_hook"] = hooks[e.nf_hook] if e.nf_hook else 0
        r["nf_pf"] = pf[e.nf_pf] if e.nf_pf else 0
        r["drop_reason"] = e.drop_reason_code
        r["flags"] = sum(flag[f] for f in e.flags)
        r["hdr_kind"] = kinds[e.hdr_kind]
        r["hdr_len"] = len(e.hdr)
        r["hdr"][: len(e.hdr)] = np.frombuffer(e.hdr, np.uint8)
        r["hdr"][len(e.hdr):] = 0xAA  # bytes past hdr_len are stale in the kernel's scratch
        r["ifname"] = e.ifname.encode() + b"\0junk"[: 16 - len(e.ifname)]
    return recs


def test_ndjson_writes_what_event_to_json_describes(probe_ids: dict[str, int]) -> None:
    trace = read_trace(TRACE)
    events = trace.events
    assert len(events) > 100 and any(e.drop_reason for e in events)
    assert any(e.nf_hook for e in events) and len({e.netns for e in events}) >= 4
    namer = Namer(trace.header["node"], probe_ids, {p.enum: p.name for p in CATALOGUE},
                  netns={e.netns_ino: e.netns for e in events})
    recs = records_of(events, probe_ids)
    lines = namer.ndjson(recs).splitlines()
    assert len(lines) == len(events)
    for line, ev, named in zip(lines, events, namer.events(recs), strict=True):
        got = json.loads(line)
        assert got == ev.to_json(), (got, ev.to_json())
        assert named == ev  # and the per-event path agrees with both
    assert namer.ndjson(recs[:0]) == ""
