"""Compile tier: the one definitions agree everywhere they are used.

`probes/hoptrace.h` (compiled into the object's BTF) defines the event record, probe ids and
filter fields; tracer/catalogue.py the probe points; tracer/hops.py the hop vocabulary. The docs
and the Python side must follow them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.catalogue import CATALOGUE, Mech
from tracer.hops import HopKind

ROOT = Path(__file__).resolve().parent.parent
OBJ = ROOT / "probes" / "hoptrace.bpf.o"
pytestmark = pytest.mark.compile


@pytest.fixture(scope="module")
def btf():  # type: ignore[no-untyped-def]
    if not OBJ.exists():
        pytest.skip("needs the built BPF object (make build: clang, bpftool)")
    from tracer.btf import Btf

    b = Btf.from_file(OBJ)
    yield b
    b.close()


def header_define(name: str) -> int:
    text = (ROOT / "probes" / "hoptrace.h").read_text()
    m = re.search(rf"#define {name} (\d+)", text)
    assert m, name
    return int(m.group(1))


def test_event_dtype_matches_the_c_struct(btf) -> None:  # type: ignore[no-untyped-def]
    dt = btf.struct_dtype("ht_event")
    assert dt.itemsize % 8 == 0
    assert dt.fields["hdr"][0].shape == (header_define("HT_HDR_LEN"),)
    assert dt.fields["ifname"][0].itemsize == header_define("HT_IFNAMSIZ")
    offsets = [dt.fields[n][1] for n in dt.names]
    assert offsets == sorted(offsets)
    # every field is documented in the schema, and the schema names no field that is not there
    doc = (ROOT / "docs" / "event-schema.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)`", doc, re.M))
    assert set(dt.names) == documented


def test_every_probe_id_has_one_catalogue_point(btf) -> None:  # type: ignore[no-untyped-def]
    ids = btf.enum("ht_probe")
    real = {k for k in ids if k not in ("HT_PROBE_NONE", "HT_PROBE_MAX")}
    assert real == {p.enum for p in CATALOGUE}
    assert len({p.name for p in CATALOGUE}) == len(CATALOGUE)


def test_catalogue_programs_exist_in_the_object() -> None:
    if not OBJ.exists():
        pytest.skip("needs the built BPF object (make build)")
    from tracer import libbpf

    lib = libbpf.lib()
    obj = lib.bpf_object__open_file(str(OBJ).encode(), None)
    assert obj
    try:
        for point in CATALOGUE:
            for mech in point.mechanisms:
                if mech.kind == Mech.INFERRED:
                    assert mech.how and not mech.program
                    continue
                prog = lib.bpf_object__find_program_by_name(obj, mech.program.encode())
                assert prog, f"{point.name}: {mech.program} missing"
                sec = lib.bpf_program__section_name(prog).decode()
                assert sec.split("/")[0] == mech.kind.value, (mech.program, sec)
            kinds = [m.kind for m in point.mechanisms]
            order = list(Mech)
            assert kinds == sorted(kinds, key=order.index), f"{point.name}: not best-first"
    finally:
        lib.bpf_object__close(obj)


def test_filter_fields_exist_in_the_kernel_enum(btf) -> None:  # type: ignore[no-untyped-def]
    from tracer.filter import compile_filter

    fields = btf.enum("ht_field")
    flt = compile_filter("(host 10.0.0.1 or net fd00::/8) and tcp portrange 1-1024 and not icmp")
    used = {p.field for term in flt.terms for p in term}
    assert used and used <= set(fields)
    cfg = btf.struct_dtype("ht_config")
    assert cfg["filter"]["terms"].shape == (header_define("HT_FILTER_MAX_TERMS"),)


def test_docs_follow_the_catalogue_and_the_hop_vocabulary() -> None:
    probes_doc = (ROOT / "docs" / "probes.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", probes_doc, re.M))
    assert rows == {p.name for p in CATALOGUE}
    hops_doc = (ROOT / "docs" / "hops.md").read_text()
    rows = set(re.findall(r"^\| `([\w ]+)` \|", hops_doc, re.M))
    assert rows == {h.value for h in HopKind}
