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

Role = Literal["node", "pod", "net"]  # net: the underlay "physical network" (a switch)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace: a node (a host's root netns), a pod, or the underlay network."""

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
class Tun:
    """A persistent TUN device (Flannel's ``flannel0``); a :class:`Daemon` attaches to it."""

    ns: str
    ifname: str
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class Macvlan:
    """A macvlan (or ipvlan) child of ``parent`` in ``parent_ns``, created inside ``ns``.

    This is how the macvlan/ipvlan CNI plugins give a pod an interface on the node's
    network: the child lives in the pod, its parent stays on the node.
    """

    ns: str
    ifname: str
    parent_ns: str
    parent: str
    mode: str = "bridge"  # macvlan: bridge/private/vepa/passthru; ipvlan: l2/l3/l3s
    kind: Literal["macvlan", "ipvlan"] = "macvlan"
    mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A point-to-point or Geneve tunnel device: ``ipip``, ``gre`` or ``geneve``.

    ``remote`` is the far end (Geneve: the remote VTEP); ``vni``/``port`` are Geneve's,
    ``key`` is GRE's.
    """

    ns: str
    ifname: str
    kind: Literal["ipip", "gre", "geneve"]
    local: str | None = None
    remote: str | None = None
    underlay: str | None = None
    vni: int | None = None
    port: int | None = None
    mac: str | None = None
    mtu: int | None = None
    key: int | None = None  # GRE: the key (RFC 2890) both ways; None: no key


@dataclass(frozen=True, slots=True)
class Daemon:
    """A small bounded user-space process that is part of the lab (``tracer/lab/daemons``).

    ``program`` names a stdlib-only script in tracer/lab/daemons/ (``udpfwd``: Flannel's UDP
    backend; ``echo``: a TCP server answering with its name). It runs inside ``ns``, writes
    a pid file under /run/hoptrace/labs/PREFIX/ when ready, exits by itself when its
    namespace is deleted or its lifetime ends, and ``down`` kills it first.
    """

    ns: str
    program: Literal["udpfwd", "echo"]
    args: tuple[str, ...] = ()


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
    scope: Literal["universe", "link"] = "universe"  # link: a directly attached /32 (Calico)
    type: Literal["unicast", "blackhole"] = "unicast"  # blackhole: a node's own block (BIRD)


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


#: MACs a lab may give several devices on purpose (Calico: every host-side cali veth).
SHARED_MACS = frozenset({"ee:ee:ee:ee:ee:ee"})

#: Kernel features a lab may need beyond namespaces and veth, with the config option that
#: provides each (named in the error when it is missing).
FEATURE_CONFIG = {
    "bridge": "CONFIG_BRIDGE",
    "vxlan": "CONFIG_VXLAN",
    "tuntap": "CONFIG_TUN",
    "macvlan": "CONFIG_MACVLAN",
    "ipvlan": "CONFIG_IPVLAN",
    "ipip": "CONFIG_NET_IPIP",
    "gre": "CONFIG_NET_IPGRE",
    "geneve": "CONFIG_GENEVE",
    "dummy": "CONFIG_DUMMY",
    "ipvs": "CONFIG_IP_VS",
}


@dataclass(frozen=True, slots=True)
class Dummy:
    """A dummy device (kube-proxy's ``kube-ipvs0`` holds Service addresses on one)."""

    ns: str
    ifname: str


@dataclass(frozen=True, slots=True)
class IpvsService:
    """An IPVS virtual service, as kube-proxy's IPVS mode makes one per Service port: TCP
    ``vip:port`` scheduled by ``scheduler`` to ``reals`` (``ip:port``) with masquerade (NAT)
    forwarding. Made through IPVS's generic netlink family (pyroute2), like ``ipvsadm -A -t
    VIP:PORT -s rr`` and ``ipvsadm -a -t VIP:PORT -r REAL -m``."""

    ns: str
    vip: str
    port: int
    reals: tuple[str, ...]
    scheduler: str = "rr"


@dataclass(frozen=True, slots=True)
class FaultTargets:
    """Where a lab's faults aim (see :mod:`tracer.lab.faults`). Short names throughout.

    ``pair`` is the cross-node (client, server) pod pair the faults break; ``loose_rpf``
    the (node, interface) whose path needs rp_filter loose; ``service_chain`` the iptables
    chain that holds the Service rule (kube-proxy's KUBE-SERVICES), on ``pair[0]``'s node.
    """

    pair: tuple[str, str] | None = None
    loose_rpf: tuple[str, str] | None = None
    rpf_client: str | None = None  # who sends on the path that needs loose rp_filter
    service_chain: str | None = None
    service: str | None = None  # "10.96.0.10:80" for kube-proxy
    drop_in_pod: bool = False  # the path skips the nodes' IP stack (macvlan): drop in the pod


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole lab: what to build, plus a picture for ``describe``."""

    name: str
    summary: str
    namespaces: tuple[Namespace, ...]
    veths: tuple[Veth, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    vxlans: tuple[Vxlan, ...] = ()
    tuns: tuple[Tun, ...] = ()
    macvlans: tuple[Macvlan, ...] = ()
    tunnels: tuple[Tunnel, ...] = ()
    dummies: tuple[Dummy, ...] = ()
    ports: tuple[Port, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    fdb: tuple[Fdb, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()
    commands: tuple[Command, ...] = ()
    ipvs: tuple[IpvsService, ...] = ()
    daemons: tuple[Daemon, ...] = ()
    requires: tuple[str, ...] = ()  # features beyond the devices' kinds (e.g. "ipvs")
    faults: FaultTargets = field(default_factory=FaultTargets)
    picture: str = field(default="", compare=False)
    notes: str = field(default="", compare=False)  # extra lines for describe

    def features(self) -> tuple[str, ...]:
        """Kernel features this lab needs (keys of FEATURE_CONFIG), in a stable order."""
        need: list[str] = []
        if self.bridges:
            need.append("bridge")
        if self.vxlans:
            need.append("vxlan")
        if self.tuns:
            need.append("tuntap")
        need += [m.kind for m in self.macvlans]
        need += [t.kind for t in self.tunnels]
        if self.dummies:
            need.append("dummy")
        if self.ipvs:
            need.append("ipvs")
        need += list(self.requires)
        return tuple(dict.fromkeys(need))

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
        names += [t.ifname for t in self.tuns if t.ns == ns]
        names += [m.ifname for m in self.macvlans if m.ns == ns]
        names += [t.ifname for t in self.tunnels if t.ns == ns]
        names += [d.ifname for d in self.dummies if d.ns == ns]
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
        uses += [(m.parent_ns, m.parent, f"{m.kind} parent") for m in self.macvlans]
        uses += [(t.ns, t.underlay, f"{t.kind} underlay") for t in self.tunnels if t.underlay]
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
        others += [d.ns for d in self.daemons] + [v.ns for v in self.ipvs]
        pair = self.faults.pair or ()
        others += [*pair, *(self.faults.loose_rpf or ())[:1]]
        others += [self.faults.rpf_client] if self.faults.rpf_client else []
        unknown = set(self.features()) - set(FEATURE_CONFIG)
        found += [f"unknown feature {f}" for f in sorted(unknown)]
        found += [f"unknown namespace {ns}" for ns in sorted(set(others) - set(shorts))]
        macs = [v.mac for v in self.veths] + [v.peer_mac for v in self.veths]
        macs += [b.mac for b in self.bridges] + [x.mac for x in self.vxlans]
        macs += [m.mac for m in self.macvlans] + [t.mac for t in self.tunnels]
        named = [m for m in macs if m and m not in SHARED_MACS]
        found += [f"MAC {m} used twice" for m in sorted(set(named)) if named.count(m) > 1]
        return found
