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
from tracer.event import FLAG_NAMES, HDR_KINDS, NF_PF, Event, Namer, verdict_names
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
        codes = {v: k for k, v in verdict_names().items()}
        r["verdict"] = codes[e.verdict] if e.verdict else -1
        r["nf_table"] = e.nf_table.encode() + b"\0junk"[: 16 - len(e.nf_table)]
        r["nf_chain"] = e.nf_chain.encode() + b"\0junk"[: 32 - len(e.nf_chain)]
    return recs


def test_ndjson_writes_what_event_to_json_describes(probe_ids: dict[str, int]) -> None:
    trace = read_trace(TRACE)
    events = trace.events
    assert len(events) > 100 and any(e.drop_reason for e in events)
    assert any(e.nf_hook for e in events) and len({e.netns for e in events}) >= 4
    namer = Namer(trace.header["node"], probe_ids, {p.enum: p.name for p in CATALOGUE},
                  netns={e.netns_ino: e.netns for e in events})
    recs = records_of(events, probe_ids)
    lines = namer.ndjson(recs).decode().splitlines()
    assert len(lines) == len(events)
    for line, ev, named in zip(lines, events, namer.events(recs), strict=True):
        got = json.loads(line)
        assert got == ev.to_json(), (got, ev.to_json())
        assert named == ev  # and the per-event path agrees with both
    assert namer.ndjson(recs[:0]) == b""


def test_netfilter_decisions_are_written_only_where_set(probe_ids: dict[str, int]) -> None:
    """A table event and the drop it announced carry verdict, nf_table and nf_chain (and the
    drop names its hook); every other event writes none of the three keys, in both paths."""
    trace = read_trace(TRACE)
    events = trace.events
    drop = next(i for i, e in enumerate(events) if e.probe == "kfree_skb")
    nf = next(i for i, e in enumerate(events) if e.probe == "nf_hook_first")
    assert verdict_names()[0] == "DROP" and verdict_names()[1] == "ACCEPT"
    decided = {
        nf: events[nf]._replace(probe="nft_do_chain", nf_prio=0, verdict="DROP",
                                nf_table="filter", nf_chain="FORWARD"),
        drop: events[drop]._replace(nf_hook="FORWARD", nf_pf="ipv4", verdict="DROP",
                                    nf_table="t" * 15, nf_chain="K" * 31),
    }
    events = [decided.get(i, e) for i, e in enumerate(events)]
    namer = Namer(trace.header["node"], probe_ids, {p.enum: p.name for p in CATALOGUE},
                  netns={e.netns_ino: e.netns for e in events})
    recs = records_of(events, probe_ids)
    lines = namer.ndjson(recs).decode().splitlines()
    named = namer.events(recs)
    for i, (line, ev) in enumerate(zip(lines, events, strict=True)):
        got = json.loads(line)
        assert got == ev.to_json() and named[i] == ev, (got, ev.to_json(), named[i])
        assert ("verdict" in got) == (i in decided), got
    assert json.loads(lines[drop])["nf_chain"] == "K" * 31
    assert json.loads(lines[drop])["nf_table"] == "t" * 15  # the kernel keeps 15 + NUL


def test_event_defaults_keep_old_trace_files_readable() -> None:
    from tracer.event import event_from_json

    ev = read_trace(TRACE).events[0]
    d = ev.to_json()
    assert not {"verdict", "nf_table", "nf_chain"} & set(d)
    assert event_from_json(d) == ev and ev.verdict == ev.nf_table == ev.nf_chain == ""
    assert Event._fields[-3:] == ("verdict", "nf_table", "nf_chain")



SIGINT_SCRIPT = """
import json, os, signal, sys, threading
from tests.test_event_json import TRACE, records_of
from tracer.catalogue import CATALOGUE
from tracer.commands.trace import _StopFlag, uninterrupted
from tracer.event import Namer
from tracer.tracefile import read_trace

stop = _StopFlag()
signal.signal(signal.SIGINT, stop)  # as hoptrace trace does: before polars is imported
ids = json.loads(sys.argv[1])
trace = read_trace(TRACE)
namer = Namer("n", ids, {p.enum: p.name for p in CATALOGUE},
              netns={e.netns_ino: e.netns for e in trace.events})
recs = records_of(trace.events, ids)
want = namer.ndjson(recs)  # imports polars, which adds its own SIGINT handler
done = threading.Event()
def sigints():
    while not done.wait(0.002):
        os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=sigints, daemon=True).start()
raised = 0
for _ in range(100):
    try:
        namer.ndjson(recs)
    except KeyboardInterrupt:
        raised += 1
same = all(uninterrupted(lambda: namer.ndjson(recs), stop) == want for _ in range(100))
done.set()
print(json.dumps({"bare_raised": raised, "same": same, "stopped": stop.set}))
"""


def test_a_sigint_during_a_batch_stops_the_tracer_but_loses_no_line(
    probe_ids: dict[str, int],
) -> None:
    """polars raises KeyboardInterrupt from a SIGINT handler of its own, even when Python's
    handler (hoptrace trace's stop flag) does not raise: a batch being written when the tracer
    was stopped was lost, though counted (seen in CI as a trace with a summary and no event).
    In a fresh process set up like the tracer (handler first, polars imported later), a thread
    sends SIGINT every 2 ms: the bare call raises; through ``uninterrupted`` every batch is
    written whole and the stop flag is set."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT, json.dumps(probe_ids)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    if not got["bare_raised"]:
        pytest.skip("this polars no longer raises KeyboardInterrupt from its own SIGINT handler")
    assert got["same"] and got["stopped"], got
