"""annotate, pure tier: the streaming capture reader on crafted pcap/pcapng files (byte orders,
resolutions, interfaces, link types, truncation), the pcapng writer read back by tshark, and
the CLI's output and exit codes. Captures are built with scapy or, where scapy cannot write
the variant (big-endian pcap, several pcapng interfaces and sections), block by block here."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap, wrpcapng

from decoders import decode
from decoders.pcap import Capture, CaptureError, decode_record
from decoders.pcapng import PcapngWriter
from tests.tracing import ROOT, chains_of, hoptrace
from tracer.tracefile import read_trace

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="needs tshark (apt-get install tshark)")
POD_A, POD_B = "10.244.1.2", "10.244.2.2"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
T0 = 1_795_265_330_123_456_789  # ns since the epoch
AGG = "\x1e"  # tshark's separator between several comments of one packet


def echo(seq: int, ip_id: int = 100) -> IP:
    return IP(src=POD_A, dst=POD_B, id=ip_id + seq) / ICMP(id=7133, seq=seq) / Raw(b"p" * 56)


def vxlan(inner: IP, dport: int = 8472, vni: int = 1) -> Ether:
    return (Ether(**MAC) / IP(src="192.168.77.1", dst="192.168.77.2") /
            UDP(sport=38664, dport=dport) / VXLAN(vni=vni, flags=0x08) / Ether(**MAC) / inner)


# ---- hand-written captures (independent of decoders/) -----------------------------------------


def classic(frames: list[bytes], endian: str = "<", nano: bool = False, linktype: int = 1,
            t0: int = T0) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        ts = t0 + i * 1_000_001
        frac = ts % 10**9 if nano else ts % 10**9 // 1000
        out.append(struct.pack(endian + "IIII", ts // 10**9, frac, len(f), len(f) + 4) + f)
    return b"".join(out)


def block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(e + "II", btype, 12 + len(body)) + body + struct.pack(e + "I",
                                                                           12 + len(body))


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, linktype: int, tsresol: int | None = None, name: str = "") -> bytes:
    opts = b""
    if name:
        opts += opt(e, 2, name.encode())
    if tsresol is not None:
        opts += opt(e, 9, bytes([tsresol]))
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts +
                 (struct.pack(e + "HH", 0, 0) if opts else b""))


def epb(e: str, iface: int, ticks: int, frame: bytes, comment: str = "") -> bytes:
    body = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                       len(frame)) + frame + b"\0" * (-len(frame) % 4)
    if comment:
        body += opt(e, 1, comment.encode()) + struct.pack(e + "HH", 0, 0)
    return block(e, 6, body)


def records(path: Path, chunk: int = 1 << 20) -> tuple[list, Capture]:
    with Capture(path, chunk=chunk) as cap:
        return list(cap), cap


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    args = [TSHARK, "-r", str(path), "-T", "fields", "-E", f"aggregator={AGG}"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    # not splitlines(): it splits at the \x1e aggregator too
    return [line.split("\t") for line in out.split("\n") if line]


# ---- reader -------------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_byte_orders_and_resolutions(tmp_path: Path, endian: str,
                                                  nano: bool) -> None:
    frames = [bytes(Ether(**MAC) / echo(i)) for i in range(3)]
    (tmp_path / "c.pcap").write_bytes(classic(frames, endian, nano))
    recs, cap = records(tmp_path / "c.pcap")
    assert cap.format == "pcap" and cap.truncated is None and cap.packets == 3
    for i, (ts, lt, data, off, wirelen, iface, comments) in enumerate(recs):
        want = T0 + i * 1_000_001
        assert ts == (want if nano else want // 1000 * 1000)
        assert (lt, data, off, wirelen, iface, comments) == (1, frames[i], 0, len(frames[i]) + 4,
                                                             0, ())
        assert decode_record(lt, data, off).inner.icmp_seq == i  # type: ignore[union-attr]


def test_scapy_pcap_and_pcapng_read_alike(tmp_path: Path) -> None:
    pkts = [Ether(**MAC) / echo(i) for i in range(4)]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i / 8
    wrpcap(str(tmp_path / "s.pcap"), pkts)
    wrpcapng(str(tmp_path / "s.pcapng"), pkts)
    a, _ = records(tmp_path / "s.pcap")
    b, cap = records(tmp_path / "s.pcapng")
    assert cap.format == "pcapng"
    assert [r[:5] for r in a] == [r[:5] for r in b]
    assert [r[0] for r in a] == [1_700_000_000_000_000_000 + i * 125_000_000 for i in range(4)]


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interfaces_resolutions_sections(tmp_path: Path, e: str) -> None:
    eth = bytes(Ether(**MAC) / echo(1))
    raw = bytes(echo(2))
    sll2 = bytes(CookedLinuxV2(proto=0x0800) / echo(3))
    data = (shb(e) + idb(e, 1, name="u1") + idb(e, 101, tsresol=9) +
            epb(e, 0, 1_700_000_000_000_001, eth, comment="kept") +  # default: microseconds
            epb(e, 1, 1_700_000_000_000_000_002, raw) +  # nanoseconds
            block(e, 5, b"\0" * 8) +  # an Interface Statistics Block: skipped
            shb(">") + idb(">", 276, tsresol=0x80 | 20) +  # new section: 2^-20 s, big-endian
            epb(">", 0, 3 << 20, sll2) +
            block(">", 3, struct.pack(">I", len(sll2)) + sll2))  # Simple Packet Block
    (tmp_path / "m.pcapng").write_bytes(data)
    recs, cap = records(tmp_path / "m.pcapng")
    assert cap.truncated is None
    assert [(i.linktype, i.name) for i in cap.interfaces] == [(1, "u1"), (101, None), (276, None)]
    assert [r[0] for r in recs] == [1_700_000_000_000_001_000, 1_700_000_000_000_000_002,
                                    3_000_000_000, None]
    assert [(r[1], r[3], r[5]) for r in recs] == [(1, 0, 0), (101, 0, 1), (276, 20, 2),
                                                  (276, 20, 2)]
    assert recs[0][6] == ("kept",) and recs[1][6] == ()
    seqs = [decode_record(r[1], r[2], r[3]).inner.icmp_seq for r in recs]  # type: ignore
    assert seqs == [1, 2, 3, 3]


def test_linux_cooked_and_raw_ip(tmp_path: Path) -> None:
    inner = echo(5)
    cases = {113: CookedLinux(proto=0x0800) / inner, 276: CookedLinuxV2(proto=0x0800) / inner,
             101: inner, 12: inner, 14: inner}
    for lt, pkt in cases.items():
        (tmp_path / f"{lt}.pcap").write_bytes(classic([bytes(pkt)], linktype=lt))
        ((ts, got_lt, data, off, *_),), cap = records(tmp_path / f"{lt}.pcap")
        d = decode_record(got_lt, data, off)
        assert d.inner == decode(bytes(inner), start=2).inner, lt
        assert d.inner.icmp_seq == 5 and d.error is None
    arp = decode_record(113, bytes(CookedLinux(proto=0x0806) / ARP()), 16)
    assert (arp.layers, arp.inner, arp.error) == (("sll", "arp"), None, None)
    cut = decode_record(276, b"\x08\x00", 20)
    assert cut.error == "truncated sll header"


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunk_boundaries_do_not_matter(tmp_path: Path, chunk: int) -> None:
    frames = [bytes(Ether(**MAC) / echo(i) / Raw(b"z" * (i * 13 % 97))) for i in range(40)]
    (tmp_path / "c.pcap").write_bytes(classic(frames))
    pkts = [Ether(f) for f in frames]
    wrpcapng(str(tmp_path / "c.pcapng"), pkts)
    for name in ("c.pcap", "c.pcapng"):
        recs, cap = records(tmp_path / name, chunk=chunk)
        assert [r[2] for r in recs] == frames and cap.truncated is None, name


@pytest.mark.parametrize("chunk", [7, 64, 1000, 1 << 20])
def test_frames_are_the_records_from_where_decoding_starts(tmp_path: Path, chunk: int) -> None:
    """Capture.frames(), the fast path (no tuple per packet; pcap cut a chunk at a time),
    gives exactly the records' bytes past any cooked header, and counts like the records."""
    frames = [bytes(Ether(**MAC) / echo(i) / Raw(b"z" * (i * 13 % 97))) for i in range(40)]
    sll = [bytes(CookedLinuxV2(proto=0x0800) / echo(i)) for i in range(5)]
    (tmp_path / "e.pcap").write_bytes(classic(frames))
    (tmp_path / "s.pcap").write_bytes(classic(sll, endian=">", linktype=276))
    wrpcapng(str(tmp_path / "e.pcapng"), [Ether(f) for f in frames])
    e = "<"
    (tmp_path / "s.pcapng").write_bytes(shb(e) + idb(e, 1) + idb(e, 276) + b"".join(
        epb(e, i % 2, i, frames[i] if i % 2 == 0 else sll[i % 5]) for i in range(10)))
    for name in ("e.pcap", "s.pcap", "e.pcapng", "s.pcapng"):
        recs, rcap = records(tmp_path / name, chunk=chunk)
        with Capture(tmp_path / name, chunk=chunk) as cap:
            got = list(cap.frames())
        want = [data[off:] for _, _, data, off, *_ in recs]
        assert got == want and len(got) in (5, 10, 40), name
        assert decode(got[-1], start=2 if name == "s.pcap" else 1).error is None
        assert (cap.packets, cap.offset, cap.truncated) == (len(recs), rcap.offset, None), name


def test_corrupt_record_length_ends_both_paths_alike(tmp_path: Path) -> None:
    frames = [bytes(Ether(**MAC) / echo(i)) for i in range(3)]
    data = bytearray(classic(frames))
    at = 24 + 2 * (16 + len(frames[0]))  # the third record's header
    struct.pack_into("<I", data, at + 8, 100 << 20)  # captured length 100 MiB
    (tmp_path / "bad.pcap").write_bytes(bytes(data))
    recs, rcap = records(tmp_path / "bad.pcap")
    with Capture(tmp_path / "bad.pcap") as cap:
        got = list(cap.frames())
    assert [r[2] for r in recs] == got == frames[:2]
    assert rcap.truncated == cap.truncated and cap.truncated is not None
    assert f"packet 3 at byte {at}: corrupt record (captured length {100 << 20})" in cap.truncated


def test_pcapfile_frames_close_the_file(tmp_path: Path) -> None:
    from decoders.pcap import PcapFile

    path = tmp_path / "c.pcap"
    path.write_bytes(classic([bytes(Ether(**MAC) / echo(i)) for i in range(3)]))

    def open_fds() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if fd.exists() and fd.resolve() == path)

    assert len(list(PcapFile(path).frames())) == 3 and open_fds() == 0
    it = PcapFile(path).frames()
    next(it)
    assert open_fds() == 1
    del it  # dropped half-way: the file closes too
    assert open_fds() == 0


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_last_packet_is_reported_after_the_rest(tmp_path: Path, fmt: str) -> None:
    frames = [bytes(Ether(**MAC) / echo(i)) for i in range(5)]
    full = tmp_path / f"full.{fmt}"
    if fmt == "pcap":
        full.write_bytes(classic(frames))
    else:
        wrpcapng(str(full), [Ether(f) for f in frames])
    whole = full.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(whole[:-10])
    last_at = len(whole) - (16 + len(frames[4]) if fmt == "pcap" else
                            len(block("<", 6, b"\0" * (20 + len(frames[4])))))
    recs, cap = records(cut)
    assert [r[2] for r in recs] == frames[:4]
    assert cap.truncated is not None
    assert f"packet 5 at byte {last_at}" in cap.truncated, cap.truncated
    with Capture(cut) as fast:
        assert list(fast.frames()) == frames[:4]
    assert fast.truncated == cap.truncated
    # the CLI annotates the four and says so, exit 1
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(cut), "-o", str(out))
    assert res.returncode == 1, res.stderr
    assert f"packet 5 at byte {last_at}" in res.stderr.splitlines()[-1]
    assert [r[2] for r in records(out)[0]] == frames[:4]


def test_memory_stays_flat(tmp_path: Path) -> None:
    frame = bytes(vxlan(echo(1)))
    n = 60_000  # ~9 MB
    with (tmp_path / "big.pcap").open("wb") as f:
        f.write(classic([]))
        rec = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
        f.write(rec * n)
    tracemalloc.start()
    try:
        count = sum(1 for _ in Capture(tmp_path / "big.pcap"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 4 << 20, peak  # two 1 MiB chunks and change, not the 9 MB file


# ---- writer -------------------------------------------------------------------------------------


def test_writer_round_trip(tmp_path: Path) -> None:
    frames = [bytes(Ether(**MAC) / echo(i)) for i in range(3)]
    with (tmp_path / "w.pcapng").open("wb") as fp:
        w = PcapngWriter(fp)
        a = w.add_interface(1, name="u1")
        b = w.add_interface(101)
        w.write(a, T0, frames[0], 100, ["one", "ünïcode, with comma"])
        w.write(b, T0 + 1, bytes(echo(9)), 84)
        w.write(a, None, frames[2], len(frames[2]), ["x" * 5])
        w.flush()
    recs, cap = records(tmp_path / "w.pcapng")
    assert [(i.linktype, i.name) for i in cap.interfaces] == [(1, "u1"), (101, None)]
    assert [(r[0], r[1], r[4], r[5], r[6]) for r in recs] == [
        (T0, 1, 100, 0, ("one", "ünïcode, with comma")), (T0 + 1, 101, 84, 1, ()),
        (0, 1, len(frames[2]), 0, ("xxxxx",))]
    assert recs[1][2] == bytes(echo(9))


@needs_tshark
def test_tshark_reads_our_comments_and_times(tmp_path: Path) -> None:
    with (tmp_path / "w.pcapng").open("wb") as fp:
        w = PcapngWriter(fp)
        i = w.add_interface(1)
        w.write(i, T0, bytes(Ether(**MAC) / echo(1)), 98, ["first | one", "second"])
        w.flush()
    rows = tshark_fields(tmp_path / "w.pcapng", "frame.time_epoch", "frame.comment",
                         "frame.len", "icmp.seq")
    assert rows == [[f"{T0 // 10**9}.{T0 % 10**9:09d}", f"first | one{AGG}second", "98", "1"]]


# ---- the command --------------------------------------------------------------------------------


def test_annotate_comments_every_packet(tmp_path: Path) -> None:
    pkts = [vxlan(echo(1)), vxlan(echo(2), dport=9527, vni=7),
            Ether(**MAC) / IP(src=POD_A, dst=POD_B) / TCP(sport=40000, dport=8080, seq=5),
            Ether(**MAC) / ARP()]
    wrpcap(str(tmp_path / "in.pcap"), pkts)
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(tmp_path / "in.pcap"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    comments = [r[6] for r in records(out)[0]]
    want = [decode(bytes(p)).summary() for p in pkts]
    assert [c[0][:len(w)] for c, w in zip(comments, want, strict=True)] == want
    assert comments[0] == (f"VXLAN vni=1 192.168.77.1:38664 -> 192.168.77.2:8472 | {POD_A} -> "
                           f"{POD_B} ICMP echo id=7133 seq=1",)
    assert comments[1][0].startswith("VXLAN? vni=7 ")
    assert "guess" in comments[1][0] and "--decode-as udp.port==9527,vxlan" in comments[1][0]
    # told the port, it is no longer a guess; with --no-guess it is plain UDP
    res = hoptrace("annotate", str(tmp_path / "in.pcap"), "-o", str(out),
                   "--decode-as", "udp.port==9527,vxlan")
    assert res.returncode == 0
    assert records(out)[0][1][6][0].startswith("VXLAN vni=7 ")
    hoptrace("annotate", str(tmp_path / "in.pcap"), "-o", str(out), "--no-guess")
    assert records(out)[0][1][6][0] == "192.168.77.1:38664 -> 192.168.77.2:9527 UDP len=106"


def test_annotate_reads_standard_input(tmp_path: Path) -> None:
    pkts = [vxlan(echo(i)) for i in range(3)]
    wrpcap(str(tmp_path / "in.pcap"), pkts)
    out = tmp_path / "out.pcapng"
    res = subprocess.run([sys.executable, "-m", "tracer", "annotate", "-", "-o", str(out)],
                         input=(tmp_path / "in.pcap").read_bytes(), capture_output=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert [r[6][0] for r in records(out)[0]] == [decode(bytes(p)).summary() for p in pkts]


def test_annotate_json_flow_summary(tmp_path: Path) -> None:
    pkts = [vxlan(echo(1)), vxlan(echo(2)), vxlan(echo(3), vni=2),
            Ether(**MAC) / IP(src=POD_B, dst=POD_A) / ICMP(type=0, id=7133, seq=1),
            Ether(**MAC) / IP(src=POD_A, dst="10.244.3.3") / TCP(sport=5, dport=80),
            Ether(**MAC) / IP(src=POD_A, dst=POD_B, ihl=4)]  # malformed
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i
    wrpcap(str(tmp_path / "in.pcap"), pkts)
    res = hoptrace("annotate", str(tmp_path / "in.pcap"), "--format", "json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    flows, summary = lines[:-1], lines[-1]
    assert summary == {"type": "summary", "packets": 6, "flows": 3, "malformed": 1,
                       "truncated": None}
    icmp = flows[0]
    assert icmp["flow"] == {"proto": "icmp", "a": POD_A, "a_port": 0, "b": POD_B, "b_port": 0,
                            "l3": "ipv4"}
    assert icmp["packets"] == 4 and icmp["vnis"] == [1, 2]
    assert icmp["bytes"] == sum(len(p) for p in pkts[:4])
    assert icmp["outer_endpoints"] == [["192.168.77.1", "192.168.77.2"]]
    assert icmp["first_ns"] == 1_700_000_000 * 10**9 and icmp["last_ns"] == 1_700_000_003 * 10**9
    malformed = next(f for f in flows if f["malformed"])
    assert malformed["flow"] is None and malformed["packets"] == 1  # IHL 4: no IP flow
    tcp = next(f for f in flows if f["flow"] and f["flow"]["proto"] == "tcp")
    assert (tcp["packets"], tcp["tunnels"], tcp["flow"]["b_port"]) == (1, [], 80)


@pytest.mark.parametrize("content,message", [
    (b"this is not a capture file", "not a classic pcap or pcapng file"),
    (b"", "not a classic pcap or pcapng file (starts with nothing)"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147), "unsupported link type 147"),
    (shb("<") + idb("<", 195), "unsupported link type 195"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad").write_bytes(content)
    res = hoptrace("annotate", str(tmp_path / "bad"), "-o", str(tmp_path / "o.pcapng"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("hoptrace: "), res.stderr
    assert message in res.stderr
    with pytest.raises(CaptureError, match=message.split(" (")[0]):
        list(Capture(tmp_path / "bad"))


@pytest.mark.parametrize("args,message", [
    (["--decode-as", "udp.port=9527,vxlan"], "--decode-as: cannot parse"),
    (["--decode-as", "udp.port==9527,foo"], "cannot decode UDP as 'foo'"),
    ([], "give -o FILE"),
    (["-o", "IN"], "is the input file"),
    (["-o", "OUT", "--trace", "MISSING"], "cannot read trace file"),
    (["-o", "OUT", "--window", "0"], "--window must be positive"),
    (["--format", "json", "--trace", "MISSING"], "it does nothing with --format json"),
])
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    wrpcap(str(tmp_path / "in.pcap"), [Ether() / echo(1)])
    names = {"IN": "in.pcap", "OUT": "out.pcapng", "MISSING": "missing.jsonl"}
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    res = hoptrace("annotate", str(tmp_path / "in.pcap"), *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    missing = hoptrace("annotate", str(tmp_path / "nope.pcap"), "-o", str(tmp_path / "o"))
    assert missing.returncode == 2 and "cannot read: No such file" in missing.stderr


def test_progress_about_once_a_second(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tracer.commands import annotate

    now = [100.0]
    monkeypatch.setattr(annotate.time, "monotonic", lambda: now[0])
    progress = annotate.Progress(True, total_bytes=1000)
    for packets in range(1, 40):
        now[0] += 0.125  # exact in binary
        progress.update(packets * 1000, packets * 25)
    progress.done()
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one line per report
    assert len(lines) == 4, lines  # at 1, 2, 3 and 4 s of the 4.875 s
    assert lines[0] == "annotate: 8,000 packets (20%), 8,000 packets/s"
    quiet = annotate.Progress(False, 1000)
    now[0] += 5
    quiet.update(1, 1)
    assert capsys.readouterr().err == ""


# ---- kernel paths from a recorded trace ----------------------------------------------------

TRACE = ROOT / "tests" / "data" / "two-node-vxlan.jsonl"


def underlay_capture(tmp_path: Path, shift_ns: int = 0) -> tuple[Path, list]:
    """A pcap of what the trace saw leave n1 on u1: the header bytes the probe copied, at the
    event's time moved to the realtime clock (as tcpdump on u1 would have stamped them)."""
    trace = read_trace(TRACE)
    off = trace.header["started_unix_ns"] - trace.header["started_mono_ns"] + shift_ns
    evs = [e for e in trace.events if e.ifname == "u1" and e.probe == "net_dev_queue"]
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for e in evs:
        ts = e.ts_ns + off
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(e.hdr), e.len) + e.hdr)
    (tmp_path / "u1.pcap").write_bytes(b"".join(out))
    return tmp_path / "u1.pcap", evs


def test_kernel_path_from_a_recorded_trace(tmp_path: Path) -> None:
    cap, evs = underlay_capture(tmp_path)
    assert len(evs) >= 2
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(cap), "--trace", str(TRACE), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert f"{len(evs)} matched to kernel paths" in res.stderr
    chains = {(c.node, c.track): c for c in chains_of(read_trace(TRACE))}
    for (_, _, _, _, _, _, comments), ev in zip(records(out)[0], evs, strict=True):
        stack, path = comments
        assert stack.startswith("VXLAN vni=1 ") and f"| {POD_A} -> {POD_B} ICMP echo" in stack
        chain = chains[(ev.node, ev.track)]  # the chain this very event belongs to
        assert path.startswith(f"kernel path on node {ev.node}, packet #{ev.track} ")
        at = (ev.ts_ns - chain.first.event.ts_ns) / 1000
        head, *hops = path.split("; ")
        assert head.endswith(f"captured at +{at:.1f}us")
        shown = [s for s in chain.steps if s.event.probe != "nf_hook_last"]
        assert len(hops) == len(shown)
        for hop, s in zip(hops, shown, strict=True):
            assert hop.startswith(f"+{s.offset_ns / 1000:.1f}us {s.event.netns} "
                                  f"{s.event.ifname} {s.hop.label}")
        if chain.dropped:
            assert "DROP reason" in hops[-1] and chain.last.event.drop_reason in hops[-1]
        else:
            assert hops[-1].endswith("freed")


def test_kernel_path_needs_the_time_to_agree(tmp_path: Path) -> None:
    cap, evs = underlay_capture(tmp_path, shift_ns=5 * 10**9)
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(cap), "--trace", str(TRACE), "-o", str(out))
    assert res.returncode == 0 and "0 matched" in res.stderr
    assert all(r[6][1].startswith("kernel path: not in the trace") for r in records(out)[0])
    wide = hoptrace("annotate", str(cap), "--trace", str(TRACE), "-o", str(out), "--window", "6")
    assert f"{len(evs)} matched" in wide.stderr


def test_kernel_path_without_clock_fields_matches_by_identity(tmp_path: Path) -> None:
    lines = TRACE.read_text().splitlines()
    header = json.loads(lines[0])
    del header["started_unix_ns"], header["started_mono_ns"]
    (tmp_path / "t.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    cap, evs = underlay_capture(tmp_path, shift_ns=3600 * 10**9)  # an unrelated clock
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(cap), "--trace", str(tmp_path / "t.jsonl"), "-o", str(out))
    assert f"{len(evs)} matched" in res.stderr, res.stderr
    paths = [r[6][1] for r in records(out)[0]]
    for ev, path in zip(evs, paths, strict=True):
        assert path.startswith(f"kernel path on node {ev.node}, packet #{ev.track} [")
        assert "captured at" not in path  # no common clock: no capture time on the path


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_one_trace_file_per_node(tmp_path: Path) -> None:
    """The recorded trace split as two nodes would have written it (n1 with its pods, n2 with
    its pod): each captured packet gets one path per node, in time order."""
    lines = [json.loads(x) for x in TRACE.read_text().splitlines() if x.strip()]
    header, events = lines[0], [x for x in lines if x.get("type") == "event"]
    n2_side = {"htlab-n2", "htlab-b1"}
    for node, keep in (("n1", lambda e: e["netns"] not in n2_side),
                       ("n2", lambda e: e["netns"] in n2_side)):
        part = [{**e, "node": node} for e in events if keep(e)]
        (tmp_path / f"{node}.jsonl").write_text(
            "\n".join(json.dumps(x) for x in [{**header, "node": node}, *part]) + "\n")
    cap, evs = underlay_capture(tmp_path)
    out = tmp_path / "out.pcapng"
    res = hoptrace("annotate", str(cap), "--trace", str(tmp_path / "n1.jsonl"),
                   "--trace", str(tmp_path / "n2.jsonl"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    for rec in records(out)[0]:
        _, n1_path, n2_path = rec[6]
        assert n1_path.startswith("kernel path on node n1,")
        assert n2_path.startswith("kernel path on node n2,")
        assert "htlab-n2" not in n1_path and "htlab-a1" not in n2_path
        assert " htlab-n1 u1 tx " in n1_path and " htlab-n2 u2 rx " in n2_path.split("; ")[1]
        # captured on n1's u1 before n2's part of the path began
        assert re.search(r", captured at -\d+\.\dus;", n2_path), n2_path
