"""The declarative description of a lab topology.

A topology is plain data: frozen dataclasses naming namespaces by their *short* name
(``n1``, ``a1``); the lab's prefix is added only when it is applied (``htlab-n1``). One
generic applier (:mod:`tracer.lab.apply`) turns a :class:`Topology` into namespaces,
links, addresses, routes, neighbours, fdb entries, sysctls and firewall rules, in the
order of the fields below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["node", "pod"]


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace: a node (a host's root netns) or a pod."""

    short: str
    role: Role
    addr: str | None = None  # the address lab.addr() answers with
    node: str | None = None  # for a pod: the node it runs on


@dataclass(frozen=True, slots=True)
class Veth:
    """A veth pair created directly between two namespaces (or inside one)."""

    ns: str
    ifname: str
    peer_ns: str
    peer_ifname: str
    mac: str | None = None
    peer_mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class Bridge:
    """A Linux bridge."""

    ns: str
    ifname: str
    mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class Vxlan:
    """A VXLAN device with an explicit local address and underlay device (Flannel style)."""

    ns: str
    ifname: str
    vni: int
    port: int
    local: str
    underlay: str  # ifname of the underlay device in the same namespace
    learning: bool = False
    mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class Port:
    """Enslave ``ifname`` to the bridge ``bridge`` (both in ``ns``)."""

    ns: str
    ifname: str
    bridge: str


@dataclass(frozen=True, slots=True)
class Address:
    """An IPv4 address in CIDR form on an interface."""

    ns: str
    ifname: str
    cidr: str


@dataclass(frozen=True, slots=True)
class Route:
    """A route; ``dst`` is a CIDR or ``"default"``."""

    ns: str
    dst: str
    gateway: str | None = None
    ifname: str | None = None
    onlink: bool = False


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A permanent neighbour (ARP) entry."""

    ns: str
    ifname: str
    dst: str
    lladdr: str


@dataclass(frozen=True, slots=True)
class Fdb:
    """A forwarding-database entry: on a VXLAN device, where to send frames for ``lladdr``."""

    ns: str
    ifname: str
    lladdr: str
    dst: str


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A sysctl set inside the namespace and read back to check it took effect."""

    ns: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Command:
    """A command run inside the namespace (iptables/nft rules, where pyroute2 has no API)."""

    ns: str
    argv: tuple[str, ...]
    stdin: str | None = None  # e.g. a ruleset for iptables-restore / nft -f -


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole lab: what to build, plus a picture for ``describe``."""

    name: str
    summary: str
    namespaces: tuple[Namespace, ...]
    veths: tuple[Veth, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    vxlans: tuple[Vxlan, ...] = ()
    ports: tuple[Port, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    fdb: tuple[Fdb, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()
    commands: tuple[Command, ...] = ()
    picture: str = field(default="", compare=False)

    def namespace(self, short: str) -> Namespace:
        """The namespace called ``short``; KeyError if there is none."""
        for ns in self.namespaces:
            if ns.short == short:
                return ns
        raise KeyError(short)

    def interfaces(self, ns: str) -> tuple[str, ...]:
        """Every interface this topology creates in ``ns``, in creation order."""
        names: list[str] = []
        for veth in self.veths:
            if veth.ns == ns:
                names.append(veth.ifname)
            if veth.peer_ns == ns:
                names.append(veth.peer_ifname)
        names += [b.ifname for b in self.bridges if b.ns == ns]
        names += [v.ifname for v in self.vxlans if v.ns == ns]
        return tuple(names)

    def problems(self) -> list[str]:
        """Inconsistencies in the description (unknown namespaces or interfaces, duplicate
        names or MACs); empty when the topology is sound. The applier refuses a topology
        with problems before touching the kernel."""
        found: list[str] = []
        shorts = [ns.short for ns in self.namespaces]
        found += [f"namespace {s} declared twice" for s in set(shorts) if shorts.count(s) > 1]
        for ns in self.namespaces:
            if ns.node is not None and ns.node not in shorts:
                found.append(f"{ns.short}: unknown node {ns.node}")
            ifnames = self.interfaces(ns.short)
            found += [
                f"{ns.short}: interface {i} declared twice"
                for i in set(ifnames)
                if ifnames.count(i) > 1
            ]
        uses: list[tuple[str, str, str]] = [(p.ns, p.ifname, "port") for p in self.ports]
        uses += [(p.ns, p.bridge, "port bridge") for p in self.ports]
        uses += [(x.ns, x.underlay, "vxlan underlay") for x in self.vxlans]
        uses += [(a.ns, a.ifname, f"address {a.cidr}") for a in self.addresses]
        uses += [(r.ns, r.ifname, f"route {r.dst}") for r in self.routes if r.ifname]
        uses += [(n.ns, n.ifname, f"neighbour {n.dst}") for n in self.neighbours]
        uses += [(f.ns, f.ifname, f"fdb {f.lladdr}") for f in self.fdb]
        for where, ifname, what in uses:
            if where not in shorts:
                found.append(f"{what}: unknown namespace {where}")
            elif ifname not in self.interfaces(where):
                found.append(f"{what}: no interface {ifname} in {where}")
        others = [r.ns for r in self.routes] + [s.ns for s in self.sysctls]
        others += [c.ns for c in self.commands] + [v.peer_ns for v in self.veths]
        found += [f"unknown namespace {ns}" for ns in sorted(set(others) - set(shorts))]
        macs = [v.mac for v in self.veths] + [v.peer_mac for v in self.veths]
        macs += [b.mac for b in self.bridges] + [x.mac for x in self.vxlans]
        named = [m for m in macs if m]
        found += [f"MAC {m} used twice" for m in sorted(set(named)) if named.count(m) > 1]
        return found
