"""Pure tier: hop chains from a recorded trace (no root): the same code the live output uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tracing import chains_of
from tracer.chains import Chain, render
from tracer.errors import UsageError
from tracer.hops import HopKind
from tracer.tracefile import read_trace

DATA = Path(__file__).parent / "data" / "two-node-vxlan.jsonl"


@pytest.fixture(scope="module")
def chains() -> list[Chain]:
    return chains_of(read_trace(DATA))


def by_flow(chains: list[Chain], src: str, dst: str) -> list[Chain]:
    return [
        c
        for c in chains
        if c.first.decoded
        and c.first.decoded.inner
        and (c.first.decoded.inner.src, c.first.decoded.inner.dst) == (src, dst)
    ]


def test_recorded_trace_has_three_packets(chains: list[Chain]) -> None:
    assert len(chains) == 3
    assert [c.complete for c in chains] == [True, True, True]
    assert len(by_flow(chains, "10.244.1.2", "10.244.2.2")) == 2
    assert len(by_flow(chains, "10.244.2.2", "10.244.1.2")) == 1


def test_request_path_crosses_both_nodes_in_order(chains: list[Chain]) -> None:
    req = by_flow(chains, "10.244.1.2", "10.244.2.2")[0]
    kinds = [
        s.hop.kind for s in req.steps if s.event.probe in ("netif_receive_skb", "net_dev_queue")
    ]
    assert kinds == [
        HopKind.POD_TX,
        HopKind.BRIDGE_IN,
        HopKind.BRIDGE_UP,
        HopKind.ENCAP,
        HopKind.UNDERLAY_TX,
        HopKind.UNDERLAY_RX,
        HopKind.DECAP,
        HopKind.BRIDGE_TX,
        HopKind.VETH_TX,
        HopKind.POD_RX,
    ]
    nodes = [s.event.netns for s in req.steps]
    assert nodes.index("htlab-n1") < nodes.index("htlab-n2") < nodes.index("htlab-b1")
    assert [s.offset_ns for s in req.steps] == sorted(s.offset_ns for s in req.steps)
    assert sum(s.dt_ns for s in req.steps) == req.duration_ns
    assert req.last.hop.kind == HopKind.FREED


def test_encapsulation_is_named_with_vni_and_underlay(chains: list[Chain]) -> None:
    req = by_flow(chains, "10.244.1.2", "10.244.2.2")[0]
    changes = [s.change for s in req.steps if s.change]
    assert changes[0] == "encapsulated VXLAN vni 1 192.168.77.1>192.168.77.2"
    assert "decapsulated" in changes
    inferred = {s.hop.inferred for s in req.steps if s.hop.inferred}
    assert inferred == {"ip_rcv", "br_handle_frame", "br_pass_frame_up"}


def test_dropped_packet_ends_inside_forward_on_n2(chains: list[Chain]) -> None:
    dropped = [c for c in chains if c.dropped and c.last.event.drop_reason == "NETFILTER_DROP"]
    assert len(dropped) == 1
    # the echo reply, delivered to the ping socket's clone, is freed as NO_SOCKET: benign
    reply = by_flow(chains, "10.244.2.2", "10.244.1.2")[0]
    assert (reply.last.event.netns, reply.last.event.drop_reason) == ("htlab-a1", "NO_SOCKET")
    last = dropped[0].last
    assert (last.event.netns, last.event.drop_reason, last.event.drop_reason_code) == (
        "htlab-n2",
        "NETFILTER_DROP",
        12,
    )
    assert last.change == "reason 12 (NETFILTER_DROP) inside nf:FORWARD"
    assert dropped[0].fate() == "dropped: NETFILTER_DROP in htlab-n2"


def test_render_fits_80_columns(chains: list[Chain]) -> None:
    text = render(by_flow(chains, "10.244.1.2", "10.244.2.2")[0])
    lines = text.splitlines()
    assert lines[0].startswith("packet n1#")
    assert "ICMP echo" in lines[0]
    assert all(len(line) <= 80 for line in lines[1:]), [ln for ln in lines if len(ln) > 80]
    assert not any("nf:" in ln and "<" in ln for ln in lines)  # accept events only with -v
    assert len(
        render(by_flow(chains, "10.244.1.2", "10.244.2.2")[0], verbose=True).splitlines()
    ) > len(lines)


def test_not_a_trace_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"type":"event"}\n')
    with pytest.raises(UsageError, match="no header line"):
        read_trace(bad)
    bad.write_text("garbage\n")
    with pytest.raises(UsageError, match="not a hoptrace trace line"):
        read_trace(bad)
    with pytest.raises(UsageError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")
