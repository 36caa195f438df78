"""Pure-tier lab tests: the topologies as data, names, pictures, errors, CLI parsing.

Nothing here touches the kernel.
"""

from __future__ import annotations

import dataclasses
import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from tracer.cli import main
from tracer.errors import LabError
from tracer.lab import LABS, get_lab
from tracer.lab.apply import step
from tracer.lab.spec import Address, Fdb, Neighbour
from tracer.lab.topologies import pod_mac


def test_registry_has_the_labs() -> None:
    assert {"two-node-vxlan", "bridge"} <= set(LABS)
    with pytest.raises(LabError, match="no lab .nope.; labs: bridge, calico-ipip, "):
        get_lab("nope")


@pytest.mark.parametrize("name", sorted(LABS))
def test_every_lab_is_consistent(name: str) -> None:
    assert LABS[name]().problems() == []


def test_problems_are_found() -> None:
    topo = get_lab("two-node-vxlan").topology
    broken = dataclasses.replace(
        topo, addresses=(*topo.addresses, Address("n1", "eth9", "10.0.0.1/24"))
    )
    assert broken.problems() == ["address 10.0.0.1/24: no interface eth9 in n1"]
    broken = dataclasses.replace(topo, fdb=(Fdb("n3", "flannel.1", "02:00:00:00:00:01", "x"),))
    assert broken.problems() == ["fdb 02:00:00:00:00:01: unknown namespace n3"]


def test_names_and_addresses() -> None:
    lab = get_lab("two-node-vxlan", prefix="htlab-")
    assert lab.netns("a1") == "htlab-a1"
    assert lab.addr("a1") == "10.244.1.2"
    assert lab.addr("a2") == "10.244.1.3"
    assert lab.addr("b1") == "10.244.2.2"
    assert lab.addr("n2") == "192.168.77.2"
    assert lab.namespaces() == ["htlab-n1", "htlab-a1", "htlab-a2", "htlab-n2", "htlab-b1"]
    with pytest.raises(LabError, match="has no node or pod 'c1'"):
        lab.netns("c1")


@pytest.mark.parametrize("prefix", ["", "bad prefix", "a/b", "x" * 40])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(LabError, match="bad lab prefix"):
        get_lab("two-node-vxlan", prefix=prefix)


def test_flannel_static_entries_point_at_the_other_node() -> None:
    topo = get_lab("two-node-vxlan").topology
    vxlan_mac = {x.ns: x.mac for x in topo.vxlans}
    assert {x.ns: (x.vni, x.port, x.local, x.learning) for x in topo.vxlans} == {
        "n1": (1, 8472, "192.168.77.1", False),
        "n2": (1, 8472, "192.168.77.2", False),
    }
    assert set(topo.neighbours) == {
        Neighbour("n1", "flannel.1", "10.244.2.0", vxlan_mac["n2"]),
        Neighbour("n2", "flannel.1", "10.244.1.0", vxlan_mac["n1"]),
    }
    assert set(topo.fdb) == {
        Fdb("n1", "flannel.1", vxlan_mac["n2"], "192.168.77.2"),
        Fdb("n2", "flannel.1", vxlan_mac["n1"], "192.168.77.1"),
    }
    onlink = [r for r in topo.routes if r.onlink]
    assert [(r.ns, r.dst, r.gateway, r.ifname) for r in onlink] == [
        ("n1", "10.244.2.0/24", "10.244.2.0", "flannel.1"),
        ("n2", "10.244.1.0/24", "10.244.1.0", "flannel.1"),
    ]


def test_pod_mac_follows_the_cni_bridge_plugin() -> None:
    assert pod_mac("10.244.1.2") == "0a:58:0a:f4:01:02"


@pytest.mark.parametrize("name", sorted(LABS))
def test_describe_draws_the_lab_in_80_columns(name: str) -> None:
    lab = get_lab(name, prefix="p-")
    text = lab.describe()
    assert max(len(line) for line in text.splitlines()) <= 80
    for ns in lab.namespaces():
        assert ns in text
    for short in (ns.short for ns in lab.topology.namespaces):
        assert lab.addr(short) in text


def test_step_names_a_missing_device_kind() -> None:
    with pytest.raises(LabError, match="add ipip tun0 in x: the kernel lacks the device kind"):
        with step("add ipip tun0 in x"):
            raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
    with pytest.raises(LabError, match="set u1 up in x: No such device"):
        with step("set u1 up in x"):
            raise NetlinkError(errno.ENODEV, "No such device")


def test_up_without_root_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(LabError, match="need root"):
        get_lab("two-node-vxlan").up()


def test_cli_describe_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "describe", "two-node-vxlan", "--prefix", "q-"]) == 0
    out = capsys.readouterr().out
    assert "flannel.1 10.244.1.0/32" in out and "q-b1" in out
    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    assert "examples:\n  hoptrace lab list" in capsys.readouterr().out


def test_cli_exec_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "exec", "two-node-vxlan", "a1", "--"]) == 2
    assert "give a command after --" in capsys.readouterr().err
    assert main(["lab", "exec", "two-node-vxlan", "a1", "--bogus", "--", "true"]) == 2
    assert "unknown option '--bogus'" in capsys.readouterr().err


def test_cli_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab"]) == 2
    assert "ACTION" in capsys.readouterr().err
