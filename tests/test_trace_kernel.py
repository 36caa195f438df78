"""Kernel tier: real probes, real namespaces, real packets through the two-node VXLAN lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.tracing import chain_between, chains_of, hoptrace, require_kernel, tracing
from tracer.catalogue import BY_NAME, Mech
from tracer.chains import Chain, render
from tracer.hops import HopKind
from tracer.lab import Lab
from tracer.loader import NF_HOOKS, NFPROTO

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def lab_netns(lab: Lab) -> str:
    return ",".join(lab.namespaces())


def ping(lab: Lab, pod: str, dst: str, count: int = 1) -> subprocess.CompletedProcess[str]:
    return lab.exec(pod, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst], timeout=10)


def hops(chain: Chain) -> list[tuple[str, str, HopKind]]:
    return [(s.event.netns, s.event.ifname, s.hop.kind) for s in chain.steps]


def assert_in_order(chain: Chain, expected: list[tuple[str, str, HopKind]]) -> None:
    """Each expected (netns, device, hop) appears, in this order (other hops may sit between)."""
    got = hops(chain)
    i = 0
    for want in expected:
        while i < len(got) and got[i] != want:
            i += 1
        assert i < len(got), f"{want} missing or out of order in:\n" + "\n".join(map(str, got))
        i += 1


def assert_latencies(chain: Chain) -> None:
    dts = [s.dt_ns for s in chain.steps[1:]]
    assert all(dt > 0 for dt in dts), dts
    assert sum(dts) == chain.duration_ns > 0


def cross_node_path(lab: Lab, src: str, dst: str) -> list[tuple[str, str, HopKind]]:
    n1, n2 = lab.netns("n1"), lab.netns("n2")
    return [
        (lab.netns(src), "eth0", HopKind.POD_TX),
        (n1, f"veth-{src}", HopKind.BRIDGE_IN),
        (n1, "cni0", HopKind.BRIDGE_UP),
        (n1, "flannel.1", HopKind.ENCAP),
        (n1, "u1", HopKind.UNDERLAY_TX),
        (n2, "u2", HopKind.UNDERLAY_RX),
        (n2, "flannel.1", HopKind.DECAP),
        (n2, "cni0", HopKind.BRIDGE_TX),
        (n2, f"veth-{dst}", HopKind.VETH_TX),
        (lab.netns(dst), "eth0", HopKind.POD_RX),
    ]


def test_ping_across_nodes_follows_every_hop(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    with tracing(tmp_path, f"host {b1} and icmp", "--netns", lab_netns(lab)) as run:
        assert ping(lab, "a1", b1).returncode == 0
        time.sleep(0.3)
        trace = run.stop()
    chains = chains_of(trace)
    req = chain_between(chains, a1, b1)
    assert_in_order(req, cross_node_path(lab, "a1", "b1"))
    assert_latencies(req)
    changes = [s.change for s in req.steps if s.change]
    assert any(c.startswith("encapsulated VXLAN vni 1") for c in changes), changes
    assert "decapsulated" in changes
    assert req.complete and not req.dropped
    # the reply is its own packet, on the mirrored path
    reply = chain_between(chains, b1, a1)
    assert reply.track != req.track
    assert (lab.netns("a1"), "eth0", HopKind.POD_RX) in hops(reply)
    # delivered to the ping socket's clone: the original's NO_SOCKET free is not a drop
    assert reply.complete and not reply.dropped and reply.fate() == "freed", render(reply)
    # the trace file is self-describing
    assert trace.header["filter"] == f"host {b1} and icmp"
    assert {p["point"] for p in trace.header["probes"]} >= {"netif_receive_skb", "kfree_skb"}
    assert trace.summary["lost"] == {}


def start_echo_server(lab: Lab, pod: str, port: int) -> subprocess.Popen[str]:
    """A one-shot TCP echo server in ``pod``, returned once it listens. Bounded by itself (it
    gives up 60 s after it started listening) and by ``timeout 90`` around it, so it outlasts
    a tracer start-up under emulation (15-25 s) but never the test."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_server(('0.0.0.0',{port})); s.settimeout(60)\n"
        "print('listening', flush=True)\n"
        "c,_=s.accept(); c.settimeout(10); c.sendall(c.recv(100)); c.close()"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns(pod), "timeout", "90", "python3", "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    ready = server.stdout.readline()  # python3 -c exits (EOF) if it cannot listen
    if ready.strip() != "listening":
        server.kill()
        server.wait()
        raise AssertionError(f"echo server in {pod} did not start (exit {server.poll()})")
    return server


@pytest.mark.timeout(240)  # the tracer alone takes 15-25 s to start under emulation
def test_tcp_connection_across_nodes(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    with tracing(tmp_path, "tcp port 8080", "--netns", lab_netns(lab)) as run:
        # started once the tracer is attached: its lifetime does not include the start-up
        server = start_echo_server(lab, "b1", 8080)
        try:
            client = lab.exec(
                "a1",
                [
                    "timeout",
                    "10",
                    "python3",
                    "-c",
                    f"import socket; c=socket.create_connection(('{b1}', 8080), 5);"
                    "c.sendall(b'hoptrace'); assert c.recv(100) == b'hoptrace'",
                ],
                timeout=15,
            )
            assert client.returncode == 0, client.stderr
            time.sleep(0.3)
            trace = run.stop(timeout=60)
        finally:
            server.kill()
            server.wait()
    chains = [c for c in chains_of(trace) if c.first.decoded and c.first.decoded.inner]
    syn = next(
        c
        for c in chains
        if c.first.decoded.inner.dst == b1 and c.first.decoded.inner.tcp_flags & 0x02
    )
    assert_in_order(syn, cross_node_path(lab, "a1", "b1"))
    assert_latencies(syn)
    assert chain_between(chains, b1, a1)  # and the server's segments come back
    assert len(chains) >= 6  # SYN, SYN-ACK, ACK, data both ways, FINs


def test_same_node_traffic_is_bridged(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    a1, a2 = lab.addr("a1"), lab.addr("a2")
    n1 = lab.netns("n1")
    with tracing(
        tmp_path, f"src host {a1} and dst host {a2} and icmp", "--netns", lab_netns(lab)
    ) as run:
        assert ping(lab, "a1", a2).returncode == 0
        time.sleep(0.3)
        trace = run.stop()
    req = chain_between(chains_of(trace), a1, a2)
    assert_in_order(
        req,
        [
            (lab.netns("a1"), "eth0", HopKind.POD_TX),
            (n1, "veth-a1", HopKind.BRIDGE_IN),
            (n1, "veth-a2", HopKind.BRIDGE_FORWARD),
            (lab.netns("a2"), "eth0", HopKind.POD_RX),
        ],
    )
    assert not any(s.hop.kind in (HopKind.ENCAP, HopKind.UNDERLAY_TX) for s in req.steps)
    assert_latencies(req)


def test_forward_drop_ends_the_chain_with_its_reason(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    a1, b1 = lab.addr("a1"), lab.addr("b1")
    n2 = lab.netns("n2")
    rule = ["FORWARD", "-d", b1, "-p", "icmp", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", n2, "iptables", "-I", *rule], check=True, timeout=10)
    try:
        with tracing(tmp_path, f"host {b1} and icmp", "--netns", lab_netns(lab)) as run:
            assert ping(lab, "a1", b1).returncode != 0
            time.sleep(0.3)
            trace = run.stop()
    finally:
        subprocess.run(["ip", "netns", "exec", n2, "iptables", "-D", *rule], check=True, timeout=10)
    req = chain_between(chains_of(trace), a1, b1)
    assert req.dropped
    last = req.last
    assert (last.event.netns, last.event.drop_reason) == (n2, "NETFILTER_DROP")
    assert "inside nf:FORWARD" in last.change
    before = req.steps[-2].event
    assert (before.probe, before.nf_hook, before.netns) == ("nf_hook_first", "FORWARD", n2)
    assert not any(s.event.netns == lab.netns("b1") for s in req.steps)

    # without the rule the same packet reaches the pod again
    with tracing(tmp_path, f"host {b1} and icmp", "--netns", lab_netns(lab)) as run:
        assert ping(lab, "a1", b1).returncode == 0
        time.sleep(0.3)
        trace = run.stop()
    again = chain_between(chains_of(trace), a1, b1)
    assert (lab.netns("b1"), "eth0", HopKind.POD_RX) in hops(again)


def test_filter_matching_nothing_yields_no_events(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    with tracing(tmp_path, "host 10.250.99.99", "--netns", lab_netns(lab)) as run:
        assert ping(lab, "a1", lab.addr("b1"), count=3).returncode == 0
        trace = run.stop()
    assert trace.events == []
    assert trace.summary["events"] == 0


def test_format_json_streams_the_trace_to_stdout(vxlan_lab: Lab, tmp_path: Path) -> None:
    """--format json: the same JSON lines as -o, on stdout: header first, every event the
    summary counts, the summary last. Nobody reads the pipe until after the SIGINT, so the
    write of the batch fills the pipe (64 KiB) and blocks when the signal lands: with polars
    loaded, BufferedWriter then returned a short count and the rest of the batch was lost."""
    lab = vxlan_lab
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer", "trace", "icmp", "--netns", lab_netns(lab),
         "--format", "json", "--duration", "20", "--ready-file", str(ready)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "not ready"
        assert ping(lab, "a1", lab.addr("b1"), count=3).returncode == 0
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert len(out) > 65536  # more than a pipe holds: the blocked write happened
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [rec["type"] for rec in lines]
    assert kinds[0] == "header" and kinds[-1] == "summary", kinds
    events = [rec for rec in lines if rec["type"] == "event"]
    assert len(events) == lines[-1]["events"] >= 3 * 4  # 3 requests + 3 replies, several hops
    assert {e["netns"] for e in events} >= {lab.netns("a1"), lab.netns("b1")}


def test_empty_probes_attach_everything_and_record_nothing(vxlan_lab: Lab, tmp_path: Path) -> None:
    """--empty-probes (benchmarks/trace_overhead.py's floor): with no filter, every probe is
    attached as usual, and the programs return before recording anything."""
    lab = vxlan_lab
    with tracing(tmp_path, "--empty-probes", "--netns", lab_netns(lab)) as run:
        assert ping(lab, "a1", lab.addr("b1"), count=3).returncode == 0
        trace = run.stop()
    attached = {p["point"]: p["mechanism"] for p in trace.header["probes"]}
    assert attached["netif_receive_skb"] and attached["nf_hook_first"], attached
    assert trace.events == [] and trace.summary["events"] == 0


def test_no_match_decisions_never_hide_a_matching_packet(vxlan_lab: Lab, tmp_path: Path) -> None:
    """The kernel remembers "no match" per skb (the no-match cache); sk_buffs and their data are
    reused LIFO, so a matching packet sent right after a rejected one often lands in the same
    memory. Interleave them on one socket and path: every matching packet must be traced."""
    lab = vxlan_lab
    b1, n = lab.addr("b1"), 150
    with tracing(tmp_path, "udp dst port 7001", "--netns", lab_netns(lab)) as run:
        sent = lab.exec(
            "a1",
            [
                "timeout",
                "10",
                "python3",
                "-c",
                "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"for i in range({n}):\n"
                f"    s.sendto(b'no' * 20, ('{b1}', 7000))\n"
                f"    s.sendto(b'yes%05d' % i, ('{b1}', 7001))\n"
                "    time.sleep(0.002)",
            ],
            timeout=15,
        )
        assert sent.returncode == 0, sent.stderr
        time.sleep(0.3)
        trace = run.stop()
    assert trace.summary["lost"] == {}
    chains = [c for c in chains_of(trace) if c.first.decoded and c.first.decoded.inner]
    assert {c.first.decoded.inner.dport for c in chains} == {7001}
    at_b1 = [c for c in chains if (lab.netns("b1"), "eth0", HopKind.POD_RX) in hops(c)]
    assert len(at_b1) == n, f"{len(at_b1)} of {n} matching datagrams traced to b1"
    assert len({c.first.decoded.inner.ip_id for c in at_b1}) == n


def test_count_stops_after_n_packets(vxlan_lab: Lab, tmp_path: Path) -> None:
    lab = vxlan_lab
    out = tmp_path / "t.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracer",
            "trace",
            f"icmp and host {lab.addr('b1')}",
            "--count",
            "2",
            "--print",
            "--netns",
            lab_netns(lab),
            "-o",
            str(out),
            "--ready-file",
            str(tmp_path / "r"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "r").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        ping(lab, "a1", lab.addr("b1"), count=3)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout.count("\npacket ") + stdout.startswith("packet ") == 2, stdout
    assert "Tracing" in stderr and "2 packets" in stderr


def test_bad_input_fails_before_attaching(tmp_path: Path) -> None:
    r = hoptrace("trace", "host 10.0.0.300")
    assert r.returncode == 2 and "hoptrace: " in r.stderr and "Traceback" not in r.stderr
    r = hoptrace("trace", "tcp and (port 80", "--count", "1")
    assert r.returncode == 2 and "filter" in r.stderr
    r = hoptrace("trace", "--netns", "no-such-netns-xyz", "--count", "1")
    assert r.returncode == 2 and "unknown network namespace 'no-such-netns-xyz'" in r.stderr


def test_output_that_cannot_be_written_is_a_clear_error(vxlan_lab: Lab) -> None:
    """-o goes through a writer thread: its failure (here ENOSPC) still ends the run with one
    line and exit 1, and the probes are detached (the process exits)."""
    lab = vxlan_lab
    r = hoptrace("trace", "--netns", lab_netns(lab), "--duration", "1", "-o", "/dev/full")
    assert r.returncode == 1, r.stderr
    assert "hoptrace: cannot write /dev/full: No space left on device" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_not_root_is_a_clear_error() -> None:
    # A real unprivileged process: import as root (the interpreter lives under /root), then
    # drop to nobody before hoptrace runs, as `sudo -u nobody hoptrace trace` would.
    code = (
        "import os, sys, tracer.cli, tracer.commands.trace, tracer.loader, tracer.names;"
        "tracer.cli.build_parser(); os.setgroups([]); os.setgid(65534); os.setuid(65534);"
        "sys.exit(tracer.cli.main(['trace', '--count', '1']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert r.returncode == 1, r.stderr
    assert "needs root" in r.stderr and "Traceback" not in r.stderr


def links_held_by(pid: int) -> set[int]:
    """BPF link ids a process holds open (the kernel's /proc/PID/fdinfo says 'link_id:')."""
    out = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("link_id:"):
                out.add(int(line.split()[1]))
    return out


def existing_links() -> set[int]:
    out = subprocess.run(
        ["bpftool", "-j", "link", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return {link["id"] for link in json.loads(out or "[]")}


def expected_links(probes: list[dict[str, str | None]], namespaces: int) -> list[str]:
    """The programs of the links a tracer holds with the mechanisms it chose (its trace
    header's ``probes``, after any fallback): one link per attached program (tracepoint,
    fentry/fexit, kprobe; a kretprobe's entry kprobe too), and for netfilter-link programs one
    per family and hook in each traced namespace."""
    out: list[str] = []
    for p in probes:
        point = BY_NAME[str(p["point"])]
        m = next((m for m in point.mechanisms if m.kind.value == p["mechanism"]), None)
        if m is None or not m.program or point.opt_in:
            continue
        if m.kind == Mech.NETFILTER:
            out += [m.program] * (len(NFPROTO) * len(NF_HOOKS) * namespaces)
        else:
            out += [p for p in (m.entry, m.program) if p]
    return sorted(out)


def link_programs(ids: set[int]) -> list[str]:
    """The program name behind each of these link ids (bpftool shows 15 characters)."""

    def show(what: str) -> list[dict[str, object]]:
        out = subprocess.run(
            ["bpftool", "-j", what, "show"], capture_output=True, text=True, timeout=30
        ).stdout
        return list(json.loads(out or "[]"))

    names = {p["id"]: str(p.get("name", "?")) for p in show("prog")}
    return sorted(names.get(link.get("prog_id"), "?") for link in show("link") if link["id"] in ids)


@pytest.mark.timeout(300)  # three tracer start-ups
def test_nothing_stays_attached(vxlan_lab: Lab, tmp_path: Path) -> None:
    """Every link the tracer held is gone after SIGINT, SIGTERM and SIGKILL; while it runs it
    holds exactly the links of the mechanisms its trace header names (the first run's)."""
    # Other tracers may run on the machine: follow only the links this test's tracer made.
    lab = vxlan_lab
    want: list[str] = []
    for how in ("SIGINT", "SIGTERM", "SIGKILL"):
        with tracing(tmp_path, "icmp", "--netns", lab_netns(lab)) as run:
            mine = links_held_by(run.proc.pid)
            ping(lab, "a1", lab.addr("b1"))
            if how == "SIGINT":
                trace = run.stop(timeout=60)
                want = expected_links(trace.header["probes"], len(lab.namespaces()))
            else:
                run.proc.send_signal(getattr(signal, how))
                run.proc.wait(timeout=60)
                if how == "SIGTERM":
                    assert run.proc.returncode == 0
                run.trace = object()  # type: ignore[assignment]  # nothing to read
        if len(mine) != len(want):
            got = Counter(link_programs(mine)) if how != "SIGINT" else Counter()
            raise AssertionError(
                f"{how}: {len(mine)} links, not {len(want)} ({want}); extra "
                f"{dict(got - Counter(want))}, missing {dict(Counter(want) - got)}"
            )
        assert not (mine & existing_links()), f"links left after {how}"
