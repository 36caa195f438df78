"""Pure tier: the vxlan-port, no-route, neighbour and conntrack diagnoses on traces recorded
from the flannel-vxlan lab with each fault injected (tests/data/faults/README.md says how).
The kernel tier (tests/test_report_live_faults.py) records and checks the same live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tracer.correlate import load
from tracer.report import build, render

DATA = Path(__file__).resolve().parent / "data" / "faults"


def report(name: str) -> dict[str, Any]:
    return build(load([DATA / f"{name}.jsonl"]))


def only(rep: dict[str, Any], rule: str) -> dict[str, Any]:
    assert [d["rule"] for d in rep["diagnosis"]] == [rule], rep["diagnosis"]
    return dict(rep["diagnosis"][0])


def test_vxlan_port_names_the_port_the_place_and_the_listener() -> None:
    f = only(report("vxlan-port"), "vxlan-port")
    assert f["title"] == ("VXLAN packets to UDP port 4789 reach netns htdd1-n2 (node vm) but "
                          "no socket listens there")
    assert f["packets"] == 3
    assert f["evidence"][:2] == [
        "3 VXLAN packet(s) to UDP port 4789 dropped with reason NO_SOCKET on eth0 in netns "
        "htdd1-n2 (node vm): no socket listens on 4789; outer 192.168.77.1>192.168.77.2",
        "VXLAN devices in htdd1-n2: flannel.1 on UDP 8472"]
    assert f["detail"].startswith("htdd1-n2's VXLAN device listens on 8472, the sender sends "
                                  "to 4789")


def test_vxlan_port_without_topology_still_names_the_drop(tmp_path: Path) -> None:
    """Older trace files have no topology in their header: the finding stays, without the
    listener."""
    lines = (DATA / "vxlan-port.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    del head["topology"]
    (tmp_path / "old.jsonl").write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    rep = build(load([tmp_path / "old.jsonl"]))
    f = only(rep, "vxlan-port")
    assert f["evidence"][1] == "VXLAN devices in htdd1-n2: none in the trace's topology"
    assert f["detail"].startswith("the sender's VXLAN destination port differs")


def test_no_route_names_the_reason_the_device_and_the_count() -> None:
    f = only(report("no-route"), "no-route")
    assert f["title"] == "No route in netns htdd1-n1 (node vm) for 10.244.2.2"
    assert f["evidence"][0] == (
        "3 packet(s) to 10.244.2.2 dropped with reason IP_INNOROUTES on cni0 (a route lookup "
        "for packets arriving on cni0) in netns htdd1-n1 (node vm)")
    assert f["packets"] == 3


def test_neighbour_failure_names_the_wait_and_is_no_latency_outlier() -> None:
    rep = report("no-neigh")
    f = only(rep, "neighbour")  # the 2.9 s before the drop is not a "latency" finding
    assert f["title"] == ("Neighbour (ARP/NDP) resolution fails on flannel.1 in netns "
                          "htdd1-n1 (node vm)")
    assert f["evidence"][0] == (
        "3 packet(s) to 10.244.2.2 dropped with reason NEIGH_FAILED on flannel.1 in netns "
        "htdd1-n1 (node vm) after waiting 2.87 s for resolution")
    assert "ip netns exec htdd1-n1 ip neigh show dev flannel.1" in f["detail"]


def test_conntrack_names_the_hook_the_idle_gap_and_the_retransmissions() -> None:
    f = only(report("conntrack"), "conntrack")
    assert f["title"] == ("Connection tracking rejects established TCP packets in FORWARD of "
                          "netns htdd1-n2 (node vm)")
    ev = f["evidence"]
    assert ev[0] == ("4 TCP packet(s) of htdd1-a1 -> htdd1-b1 tcp/8080 dropped with reason "
                     "NETFILTER_DROP inside nf:FORWARD on flannel.1 (netns htdd1-n2, node vm)")
    assert ev[1].startswith("the connection's SYN got through: 10.244.1.2:") and "[S]" in ev[1]
    assert ev[2].startswith("the connection was idle 3.5 s before its first dropped packet")
    assert ev[3].endswith("len=5 (4 times: the sender retransmits)")
    assert "nf_conntrack_tcp_timeout_established" in f["detail"]


@pytest.mark.parametrize("name", ["vxlan-port", "no-route", "no-neigh", "conntrack"])
def test_every_format_renders_the_finding(name: str) -> None:
    rep = report(name)
    title = rep["diagnosis"][0]["title"]
    for fmt in ("text", "md", "html"):
        assert title.split(" (node")[0][:40] in render(rep, fmt), fmt
