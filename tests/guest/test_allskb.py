"""Kernel tier, for the VM matrix: ``hoptrace trace --probes all-skb`` on stock kernels.

Every kernel function with a ``struct sk_buff *`` argument (BTF) is probed through kprobe.multi
or one kprobe each; one ping across the two-node VXLAN lab must show the real functions of its
path, named, in path order, and everything must be gone once the tracer exits. On a kernel that
allows neither mechanism (the development machine) the tests skip naming the kernel's errors;
in a kvm-kernel-test guest (KT_GUEST=1) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tracing import IN_GUEST, chain_between, chains_of, hoptrace, require_kernel, tracing
from tracer.capabilities import choose
from tracer.catalogue import BY_NAME, Mech
from tracer.lab import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]

# Attaching thousands of probes under TCG takes minutes on kernels without kprobe.multi.
ALLSKB_READY_S = float(os.environ.get("HT_ALLSKB_READY_TIMEOUT", "900"))
PREFIXES = ("tp_", "fe_", "fx_", "kp_", "caps_", "nf_first", "nf_last")


@pytest.fixture(autouse=True)
def _kernel() -> None:
    require_kernel()


def require_allskb() -> Mech:
    """The mechanism all-skb gets here; skip (host) or fail (stock-kernel guest) without one."""
    c = choose(BY_NAME["func"])
    if c.chosen is not None:
        return c.chosen.kind
    why = "; ".join(f"{m.kind}: {v.error}" for m, v in c.rejected)
    if IN_GUEST:
        pytest.fail(f"a stock kernel must allow kprobe.multi or kprobes: {why}")
    pytest.skip(f"--probes all-skb needs kprobe.multi or kprobes, refused here: {why}")


def kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m, os.uname().release
    return int(m.group(1)), int(m.group(2))


def ping(lab: Lab, pod: str, dst: str) -> None:
    r = lab.exec(pod, ["ping", "-c", "1", "-W", "2", dst], timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr


def first(names: list[tuple[str, str]], fn: str, netns: str | None = None) -> int:
    """Index of the first event of function ``fn`` (any of ``a|b``) in ``netns``."""
    want = set(fn.split("|"))
    for i, (ns, name) in enumerate(names):
        if name in want and (netns is None or ns == netns):
            return i
    raise AssertionError(f"{fn} (netns {netns}) not on the path: {names}")


def hoptrace_bpf_left() -> tuple[list[str], list[object]]:
    """hoptrace's programs still loaded, and kprobe links still there (nothing else traces in
    a guest)."""
    progs = json.loads(
        subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                       timeout=60, check=True).stdout or "[]"
    )
    links = json.loads(
        subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                       timeout=60, check=True).stdout or "[]"
    )
    ours = sorted(p.get("name", "") for p in progs if p.get("name", "").startswith(PREFIXES))
    kp = [x for x in links if x.get("type") in ("kprobe_multi", "perf_event")]
    return ours, kp


def test_doctor_says_whether_allskb_is_possible() -> None:
    """``hoptrace doctor --format json`` says whether all-skb can run and how; on 6.12 and later
    stock kernels through kprobe.multi, on others through kprobes."""
    r = hoptrace("doctor", "--format", "json", timeout=300)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)["all_skb"]
    assert status["functions_in_btf"] > 1000, status
    row = next(p for p in json.loads(r.stdout)["probes"] if p["point"] == "func")
    assert row["mechanism"] == status["mechanism"]
    if not status["possible"]:
        assert "kprobe.multi" in status["why_not"] and row["mechanism"] is None
        require_allskb()  # skips (fails in a guest) naming the errors
    mech = require_allskb()
    assert status["mechanism"] == mech.value
    if IN_GUEST and kernel_version() >= (6, 12):
        assert mech == Mech.KPROBE_MULTI, status


def test_allskb_ping_shows_the_functions_of_its_path(
    vxlan_lab: Lab, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """One ping a1 -> b1 across the VXLAN lab with --probes all-skb: its chain carries the real
    kernel functions, named, in path order (pod veth, bridge, VXLAN encap on node 1, VXLAN
    decap on node 2, IP receive in pod b1); over 1000 functions attached; all gone after."""
    mech = require_allskb()
    lab = vxlan_lab
    a1, a2, b1 = lab.addr("a1"), lab.addr("a2"), lab.addr("b1")
    n1, n2, nb1 = lab.netns("n1"), lab.netns("n2"), lab.netns("b1")
    ping(lab, "a1", a2)  # ARP and FDB entries settle before tracing
    ping(lab, "a1", b1)
    t0 = time.monotonic()
    with tracing(
        tmp_path,
        f"icmp and src host {a1} and dst host {b1}",
        "--netns",
        ",".join(lab.namespaces()),
        "--probes",
        "all-skb",
        ready_timeout=ALLSKB_READY_S,
    ) as run:
        ready_s = time.monotonic() - t0
        ping(lab, "a1", b1)
        time.sleep(1.0)
        trace = run.stop(timeout=600)
    stats = trace.header["all_skb"]
    for key in ("mechanism", "in_btf", "attached", "not_traceable", "links", "attach_s"):
        record_property(f"allskb_{key}", stats[key])
    record_property("allskb_rejected", len(stats["rejected"]))
    record_property("allskb_ready_s", round(ready_s, 1))
    assert stats["mechanism"] == mech.value
    assert stats["attached"] > 1000, {k: v for k, v in stats.items() if k != "functions"}
    assert stats["attached"] + stats["not_traceable"] + len(stats["rejected"]) + len(
        stats["curated"]
    ) == stats["in_btf"]
    assert f"all-skb: {stats['attached']} functions attached via {mech.value}" in run.stderr

    chain = chain_between(chains_of(trace), a1, b1)
    names = [(s.event.netns, s.event.func) for s in chain.steps if s.event.probe == "func"]
    record_property("allskb_path", [f"{ns}:{fn}" for ns, fn in names])
    assert all(fn and not fn.startswith("func#") for _, fn in names), names
    assert len(names) > 20, names
    for s in chain.steps:
        if s.event.probe == "func":
            assert s.hop.label == s.event.func
    # the path, in order: a1's veth transmits; node 1's bridge takes the frame; the VXLAN
    # device encapsulates; node 2's VXLAN socket decapsulates; pod b1's IP stack receives
    order = [
        first(names, "veth_xmit", lab.netns("a1")),
        # 7.3 inlines br_handle_frame_finish; br_netfilter's hook runs on every kernel here
        first(names, "br_handle_frame_finish|br_nf_pre_routing", n1),
        first(names, "vxlan_xmit", n1),
        first(names, "vxlan_rcv", n2),
    ]
    assert order == sorted(order), order
    rcv = [i for i, (ns, fn) in enumerate(names) if ns == nb1 and fn in ("ip_rcv", "ip_list_rcv")]
    curated_rcv = any(s.event.probe == "ip_rcv" and s.event.netns == nb1 for s in chain.steps)
    assert (rcv and rcv[0] > order[-1]) or curated_rcv, names
    assert any(fn in ("__dev_queue_xmit", "dev_queue_xmit") for _, fn in names), names
    assert chain.complete, chain.fate()

    if IN_GUEST:  # nothing else traces in the guest: every program and kprobe link is gone
        deadline = time.monotonic() + 30
        while (left := hoptrace_bpf_left()) != ([], []) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == ([], []), left
