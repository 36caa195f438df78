"""annotate end to end: tcpdump on the two-node-vxlan lab's underlay, pings between pods, the
capture annotated (with a kernel trace taken at the same time), the output read by tshark."""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.tracing import hoptrace, require_kernel, tracing
from tracer.lab import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
PINGS = 3
AGG = "\x1e"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("tcpdump", "tshark"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {tool})")


def start_tcpdump(lab: Lab, node: str, iface: str, out: Path, count: int) -> subprocess.Popen:
    """tcpdump -c COUNT on IFACE inside NODE's namespace (at most 20 s), once it listens."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns(node), "timeout", "20", "tcpdump", "-n", "-U",
         "-i", iface, "-c", str(count), "-w", str(out), "udp", "port", "8472"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    seen = ""
    while "listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"tcpdump did not start: {seen}")
        if select.select([proc.stderr], [], [], left)[0]:
            seen += proc.stderr.readline()  # type: ignore[union-attr]
    return proc


def ping(lab: Lab, src: str, dst: str) -> None:
    res = lab.exec(src, ["ping", "-c", str(PINGS), "-i", "0.2", "-W", "1", lab.addr(dst)],
                   timeout=15)
    assert res.returncode == 0, res.stdout + res.stderr


def capture_pings(lab: Lab, tmp_path: Path) -> Path:
    cap = tmp_path / "underlay.pcap"
    dump = start_tcpdump(lab, "n1", "u1", cap, 2 * PINGS)
    try:
        ping(lab, "a1", "b1")
        assert dump.wait(timeout=15) == 0, dump.stderr.read()  # type: ignore[union-attr]
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    return cap


def tshark_rows(path: Path, *fields: str, decode_as: bool = False) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", f"aggregator={AGG}"]
    if decode_as:
        args += ["-d", "udp.port==8472,vxlan"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.split("\n") if line]


def inner_flows_by_tshark(cap: Path) -> list[tuple[str, str, str, str]]:
    """(inner src, inner dst, icmp type, icmp seq) per packet, as tshark decodes VXLAN."""
    rows = tshark_rows(cap, "ip.src", "ip.dst", "icmp.type", "icmp.seq", decode_as=True)
    out = []
    for src, dst, typ, seq in rows:
        out.append((src.split(AGG)[-1], dst.split(AGG)[-1], typ, seq))  # the innermost IP
    return out


def check_stacks(lab: Lab, cap: Path, comments: list[str]) -> None:
    a1, b1, n1, n2 = (lab.addr(x) for x in ("a1", "b1", "n1", "n2"))
    tshark_inner = inner_flows_by_tshark(cap)
    assert len(comments) == len(tshark_inner) == 2 * PINGS
    for stack, (src, dst, typ, seq) in zip(comments, tshark_inner, strict=True):
        assert {src, dst} == {a1, b1}
        outer = f"{n1}:" if src == a1 else f"{n2}:"
        kind = "echo" if typ == "8" else "echo-reply"
        m = re.fullmatch(r"VXLAN vni=1 (\S+) -> (\S+) \| (\S+) -> (\S+) ICMP (\S+) id=\d+ "
                         r"seq=(\d+)", stack)
        assert m, stack
        assert m.group(1).startswith(outer) and m.group(2).endswith(":8472")
        assert (m.group(3), m.group(4), m.group(5), m.group(6)) == (src, dst, kind, seq)


def test_annotate_a_real_underlay_capture(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    cap = capture_pings(lab, tmp_path)
    out = tmp_path / "annotated.pcapng"
    res = hoptrace("annotate", str(cap), "-o", str(out))
    assert res.returncode == 0, res.stderr
    comments = [r[0] for r in tshark_rows(out, "frame.comment")]
    check_stacks(lab, cap, comments)
    # the packets themselves are untouched: tshark sees the same bytes in both files
    assert tshark_rows(out, "frame.len", "frame.time_epoch", "udp.srcport") == \
        tshark_rows(cap, "frame.len", "frame.time_epoch", "udp.srcport")
    summary = hoptrace("annotate", str(cap), "--format", "json")
    flows = [json.loads(x) for x in summary.stdout.splitlines()]
    assert len(flows) == 2  # one ICMP flow (both directions) and the summary
    f = flows[0]
    assert {f["flow"]["a"], f["flow"]["b"]} == {lab.addr("a1"), lab.addr("b1")}
    assert (f["packets"], f["vnis"], f["malformed"]) == (2 * PINGS, [1], 0)
    assert {tuple(e) for e in f["outer_endpoints"]} == {(lab.addr("n1"), lab.addr("n2")),
                                                        (lab.addr("n2"), lab.addr("n1"))}


def test_annotate_with_the_kernel_trace(vxlan_lab: Lab, tmp_path: Path) -> None:
    require_kernel()
    lab = vxlan_lab
    b1 = lab.addr("b1")
    with tracing(tmp_path, f"host {b1} and icmp", "--netns", ",".join(lab.namespaces())) as run:
        cap = capture_pings(lab, tmp_path)
        time.sleep(0.3)
        run.stop()
    out = tmp_path / "annotated.pcapng"
    res = hoptrace("annotate", str(cap), "--trace", str(run.out), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert f"{2 * PINGS} matched to kernel paths" in res.stderr, res.stderr
    rows = [r[0].split(AGG) for r in tshark_rows(out, "frame.comment")]
    assert all(len(r) == 2 for r in rows), rows
    check_stacks(lab, cap, [r[0] for r in rows])
    n1, a1_ns, b1_ns = lab.netns("n1"), lab.netns("a1"), lab.netns("b1")
    tracks = set()
    for stack, path in rows:
        head, *hops = path.split("; ")
        m = re.fullmatch(r"kernel path on node \S+, packet #(\d+) \[([\d.]+)us, ([^\]]+)\], "
                         r"captured at \+([\d.]+)us", head)
        assert m, path
        tracks.add(m.group(1))
        request = " ICMP echo " in stack
        first, last = (a1_ns, b1_ns) if request else (b1_ns, a1_ns)
        assert hops[0].split()[1] == first and hops[-1].split()[1:3] == [last, "eth0"], path
        # delivered: freed, or (the reply) the original freed as NO_SOCKET after the ping
        # socket got its clone (kernel-facts: a benign "drop")
        assert m.group(3) in ("freed", f"dropped: NO_SOCKET in {a1_ns}"), path
        direction = "tx" if request else "rx"
        on_u1 = [h for h in hops if h.split(" ", 1)[1] == f"{n1} u1 {direction} (underlay "
                 f"{direction})"]
        assert len(on_u1) == 1, path
        # the capture time, moved to the trace's clock through its header, lies in the path
        # and next to the hop on u1 (measured here: tcpdump's stamp of a received packet is
        # 2-3 us before the netif_receive_skb event; the bound allows for a loaded machine)
        at, u1_at = float(m.group(4)), float(on_u1[0].split("us")[0])
        assert 0 <= at <= float(m.group(2)) and abs(at - u1_at) < 1000, path
    assert len(tracks) == 2 * PINGS  # every captured packet got its own kernel packet
