"""Kernel-tier lab tests: real namespaces, real packets, always torn down.

Traffic only ever goes to addresses inside namespaces these tests made. Every subprocess
has a timeout and every ping is bounded (``-c 2 -W 1``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from tracer.errors import LabError
from tracer.lab import Lab, get_lab
from tracer.lab.spec import Address, Command

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

PING = ["ping", "-c", "2", "-i", "0.2", "-W", "1"]


def ping(lab: Lab, src: str, dst_ip: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(src, [*PING, dst_ip], timeout=10)


def leftovers(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def attrs(msg: Any) -> dict[str, Any]:
    return dict(msg["attrs"])


# (source, destination, which path it exercises)
PAIRS = [
    ("a1", "a2", "same node, bridged on cni0"),
    ("a1", "b1", "cross node over VXLAN"),
    ("b1", "a2", "cross node over VXLAN, other direction"),
    ("a1", "n1", "pod to its node (underlay address)"),
    ("a1", "n2", "pod to the other node (MASQUERADE by the flannel rules)"),
    ("n1", "n2", "node to node on the underlay"),
    ("n2", "a1", "node to a remote pod over VXLAN"),
]


@pytest.mark.parametrize(("src", "dst", "path"), PAIRS, ids=[f"{s}-{d}" for s, d, _ in PAIRS])
def test_ping(vxlan_lab: Lab, src: str, dst: str, path: str) -> None:
    result = ping(vxlan_lab, src, vxlan_lab.addr(dst))
    assert result.returncode == 0, (
        f"{src} -> {dst} ({path}) failed:\n{result.stdout}{result.stderr}"
    )
    assert "2 received" in result.stdout


def test_pod_reaches_its_gateway(vxlan_lab: Lab) -> None:
    assert ping(vxlan_lab, "b1", "10.244.2.1").returncode == 0


def test_vxlan_device_is_flannels(vxlan_lab: Lab) -> None:
    for node, local, other_mac, other_ip in [
        ("n1", "192.168.77.1", "02:68:74:f1:00:02", "192.168.77.2"),
        ("n2", "192.168.77.2", "02:68:74:f1:00:01", "192.168.77.1"),
    ]:
        with IPRoute(netns=vxlan_lab.netns(node), flags=0) as ipr:
            (link,) = ipr.get_links(ifname="flannel.1")
            info = attrs(attrs(link)["IFLA_LINKINFO"])
            data = attrs(info["IFLA_INFO_DATA"])
            assert info["IFLA_INFO_KIND"] == "vxlan"
            assert data["IFLA_VXLAN_ID"] == 1
            assert data["IFLA_VXLAN_PORT"] == 8472
            assert data["IFLA_VXLAN_LOCAL"] == local
            assert data["IFLA_VXLAN_LEARNING"] == 0
            assert data["IFLA_VXLAN_LINK"] == ipr.link_lookup(ifname=f"u{node[1]}")[0]
            assert attrs(link)["IFLA_MTU"] == 1450
            index = link["index"]
            fdb = [attrs(m) for m in ipr.fdb("dump", ifindex=index)]
            assert {"NDA_LLADDR": other_mac, "NDA_DST": other_ip}.items() <= fdb[0].items()
            neigh = [n for n in ipr.get_neighbours(ifindex=index) if n["state"] == 0x80]
            assert [attrs(n)["NDA_LLADDR"] for n in neigh] == [other_mac]


def test_cross_node_traffic_is_encapsulated(vxlan_lab: Lab) -> None:
    def tx_packets() -> int:
        with IPRoute(netns=vxlan_lab.netns("n1"), flags=0) as ipr:
            (link,) = ipr.get_links(ifname="flannel.1")
            return int(attrs(link)["IFLA_STATS64"]["tx_packets"])

    before = tx_packets()
    assert ping(vxlan_lab, "a1", vxlan_lab.addr("b1")).returncode == 0
    assert tx_packets() - before >= 2


def test_nodes_forward_and_bridged_traffic_hits_iptables(vxlan_lab: Lab) -> None:
    for node in ("n1", "n2"):
        keys = ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"]
        out = vxlan_lab.exec(node, ["sysctl", "-n", *keys], timeout=5, check=True).stdout
        assert out.split() == ["1", "1"], node
    # a1 -> a2 is only bridged: it reaches iptables' FORWARD chain only via br_netfilter.
    rule = ["FORWARD", "-s", "10.244.1.2", "-d", "10.244.1.3", "-p", "icmp"]
    vxlan_lab.exec("n1", ["iptables", "-I", *rule], timeout=10, check=True)
    assert ping(vxlan_lab, "a1", vxlan_lab.addr("a2")).returncode == 0
    listing = vxlan_lab.exec("n1", ["iptables", "-S", "FORWARD", "-v"], timeout=10, check=True)
    (line,) = [x for x in listing.stdout.splitlines() if "10.244.1.3" in x]
    assert " -c 2 " in line, line


def test_two_labs_side_by_side(make_lab: Callable[..., Lab]) -> None:
    first, second = make_lab(), make_lab()
    assert not set(first.namespaces()) & set(second.namespaces())
    for lab in (first, second):
        assert ping(lab, "a1", lab.addr("b1")).returncode == 0
    first.down()
    assert not first.is_up() and second.is_up()
    assert ping(second, "b1", second.addr("a1")).returncode == 0


def test_bridge_lab_masquerades(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab("bridge")
    assert ping(lab, "c1", lab.addr("c2")).returncode == 0
    assert ping(lab, "c1", lab.addr("ext")).returncode == 0
    # ext has no route back to 172.17/16: replies only work because of MASQUERADE.
    assert ping(lab, "ext", lab.addr("c1")).returncode != 0
    flows = lab.exec("host", ["conntrack", "-L", "-p", "icmp"], timeout=10, check=True).stdout
    assert "src=172.17.0.2 dst=198.51.100.2" in flows
    assert "src=198.51.100.2 dst=198.51.100.1" in flows


def test_down_after_half_failed_up_leaves_nothing(lab_prefix: str) -> None:
    lab = get_lab("two-node-vxlan", prefix=lab_prefix)
    duplicate = Address("n2", "cni0", "10.244.2.1/24")  # already there: EEXIST, half way up
    topo = dataclasses.replace(lab.topology, addresses=(*lab.topology.addresses, duplicate))
    half = Lab(topo, prefix=lab.prefix)
    try:
        with pytest.raises(LabError, match=r"add address 10.244.2.1/24 on cni0 in .*n2"):
            half.up(rollback=False)
        assert half.present() == half.namespaces()  # namespaces made, then it failed
        assert sorted(half.down()) == sorted(half.namespaces())
        assert leftovers(lab.prefix) == []
    finally:
        half.down()


def test_failed_up_rolls_back_by_default(lab_prefix: str) -> None:
    lab = get_lab("two-node-vxlan", prefix=lab_prefix)
    half = Lab(dataclasses.replace(lab.topology, commands=(Command("n2", ("false",)),)), lab.prefix)
    try:
        with pytest.raises(LabError, match=r"false in .*n2: exit 1"):
            half.up()
        assert leftovers(lab.prefix) == []
    finally:
        half.down()


def test_up_refuses_an_existing_namespace_and_keeps_it(lab_prefix: str) -> None:
    lab = get_lab("two-node-vxlan", prefix=lab_prefix)
    netns.create(lab.netns("n2"))
    try:
        with pytest.raises(LabError, match=f"namespace {lab.netns('n2')} already exists"):
            lab.up()
        assert lab.present() == [lab.netns("n2")]  # not ours to delete on rollback
        assert lab.down() == [lab.netns("n2")]
    finally:
        lab.down()
    assert leftovers(lab.prefix) == []


def test_context_manager_always_downs(lab_prefix: str) -> None:
    prefix = lab_prefix
    with pytest.raises(RuntimeError):
        with get_lab("two-node-vxlan", prefix=prefix) as lab:
            assert lab.is_up()
            raise RuntimeError("test body failed")
    assert leftovers(prefix) == []
    assert lab.down() == []  # idempotent


def test_cli_up_exec_down(lab_prefix: str) -> None:
    prefix = lab_prefix
    cli = [sys.executable, "-m", "tracer", "lab"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, env=env)

    try:
        start = time.monotonic()
        up = run("up", "two-node-vxlan", "--prefix", prefix)
        assert up.returncode == 0, up.stderr
        assert time.monotonic() - start < 20
        assert "two-node-vxlan   up " in run("list", "--prefix", prefix).stdout
        pinged = run("exec", "two-node-vxlan", "a1", "--prefix", prefix, "--", *PING, "10.244.2.2")
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        again = run("up", "two-node-vxlan", "--prefix", prefix)
        assert again.returncode == 1 and "already exist" in again.stderr
    finally:
        down = run("down", "two-node-vxlan", "--prefix", prefix)
    assert down.returncode == 0 and leftovers(prefix) == []
