"""Apply a :class:`~tracer.lab.spec.Topology` to the kernel, and tear it down again.

Netlink work goes through pyroute2 (``netns.create/remove`` and one ``IPRoute`` per
namespace); sysctls and firewall rules go through ``ip netns exec`` because pyroute2 has
no API for them. Every failure is re-raised as :class:`~tracer.errors.LabError` naming
the step that failed (``add vxlan flannel.1 in htlab-n1: ...``).

Teardown is deliberately simple: everything a lab makes lives inside its namespaces, so
deleting the namespaces deletes the lab, whatever state a failed ``up`` left it in.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import GRE_KEY
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

from tracer.errors import LabError
from tracer.lab import procs
from tracer.lab.spec import Topology, Tunnel

NETNS_DIR = "/run/netns"
FALLBACK_TUNNELS = ("tunl0", "gre0")  # made in every netns by the ipip / ip_gre modules
COMMAND_TIMEOUT = 15.0  # seconds for each sysctl/iptables/nft call
IP_VS_CONN_F_MASQ = 0  # IPVS forwarding method: NAT (ipvsadm -m), what kube-proxy uses


def require_root() -> None:
    """Raise LabError unless we are root and ``ip`` (iproute2) is installed."""
    if os.geteuid() != 0:
        raise LabError("labs need root (network namespaces): run as root or with sudo")
    if shutil.which("ip") is None:
        raise LabError("labs need ip netns: install iproute2")


def existing_namespaces() -> set[str]:
    """Names of the named network namespaces (``/run/netns``) that exist now."""
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def remove_namespaces(names: Sequence[str]) -> list[str]:
    """Delete every namespace in ``names`` that exists; return the ones removed.

    Interfaces inside (veth pairs, bridges, VXLAN devices) go with their namespace.
    """
    present = existing_namespaces()
    removed: list[str] = []
    failures: list[str] = []
    for name in names:
        if name not in present:
            continue
        try:
            netns.remove(name)
            removed.append(name)
        except OSError as exc:
            failures.append(f"{name}: {exc.strerror or exc}")
    if failures:
        raise LabError("could not delete namespace " + "; ".join(failures))
    return removed


@contextmanager
def step(what: str) -> Iterator[None]:
    """Turn netlink/OS/subprocess failures inside the block into a LabError naming ``what``."""
    try:
        yield
    except LabError:
        raise
    except NetlinkError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else os.strerror(exc.code)
        if exc.code == errno.EOPNOTSUPP and what.startswith("add "):
            kind = what.split()[1]
            reason = f"the kernel lacks the device kind {kind!r} ({reason})"
        raise LabError(f"{what}: {reason}") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"{what}: {exc}") from exc


def ns_run(
    nsname: str, argv: Sequence[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> str:
    """Run ``argv`` inside ``nsname``; return stdout; LabError on failure or timeout."""
    cmd = ["ip", "netns", "exec", nsname, *argv]
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} in {nsname}: timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(
            f"{' '.join(argv)} in {nsname}: exit {proc.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )
    return proc.stdout


class Applier:
    """Builds one topology under one prefix. Use :meth:`run`; it tracks what it created."""

    def __init__(self, topo: Topology, prefix: str) -> None:
        self.topo = topo
        self.prefix = prefix
        self.created: list[str] = []  # namespaces this applier made, for rollback
        self._ipr: dict[str, IPRoute] = {}

    def name(self, short: str) -> str:
        """The full namespace name of ``short``."""
        return self.prefix + short

    def ipr(self, short: str) -> IPRoute:
        """An IPRoute bound to the namespace ``short`` (opened once, closed by :meth:`run`)."""
        if short not in self._ipr:
            self._ipr[short] = IPRoute(netns=self.name(short), flags=0)
        return self._ipr[short]

    def index(self, short: str, ifname: str) -> int:
        """The ifindex of ``ifname`` in ``short``; LabError if it does not exist."""
        found = self.ipr(short).link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"no interface {ifname} in {self.name(short)}")
        return int(found[0])

    def run(self) -> None:
        """Create everything, in dependency order. On error, raise (the caller rolls back)."""
        problems = self.topo.problems()
        if problems:
            raise LabError(f"lab {self.topo.name} is inconsistent: {'; '.join(problems)}")
        try:
            for phase in self._phases():
                phase()
        finally:
            for ipr in self._ipr.values():
                ipr.close()
            self._ipr.clear()

    def _phases(self) -> list[Callable[[], None]]:
        return [
            self.create_namespaces,
            self.create_links,
            self.configure_links,
            self.add_addresses,
            self.add_routes,
            self.add_neighbours,
            self.apply_sysctls,
            self.run_commands,
            self.add_ipvs,
            self.start_daemons,
        ]

    def create_namespaces(self) -> None:
        present = existing_namespaces()
        names = [self.name(ns.short) for ns in self.topo.namespaces]
        taken = [name for name in names if name in present]
        if taken:
            raise LabError(
                (
                    "namespace {} already exists"
                    if len(taken) == 1
                    else "namespaces {} already exist"
                ).format(", ".join(taken))
                + f": is lab {self.topo.name} already up (or half up) with prefix "
                f"{self.prefix!r}? 'hoptrace lab down {self.topo.name} --prefix {self.prefix}' "
                "removes it"
            )
        for name in names:
            with step(f"create namespace {name}"):
                netns.create(name)
            self.created.append(name)

    def create_links(self) -> None:
        t = self.topo
        for br in t.bridges:
            with step(f"add bridge {br.ifname} in {self.name(br.ns)}"):
                self.ipr(br.ns).link("add", ifname=br.ifname, kind="bridge")
        for v in t.veths:
            with step(f"add veth {v.ifname}/{v.peer_ifname} in {self.name(v.ns)}"):
                peer: dict[str, Any] = {"ifname": v.peer_ifname}
                if v.peer_ns != v.ns:
                    peer["net_ns_fd"] = self.name(v.peer_ns)
                self.ipr(v.ns).link("add", ifname=v.ifname, kind="veth", peer=peer)
        for tun in t.tuns:
            with step(f"add tun {tun.ifname} in {self.name(tun.ns)}"):
                self.ipr(tun.ns).link("add", ifname=tun.ifname, kind="tuntap", mode="tun")
        for d in t.dummies:
            with step(f"add dummy {d.ifname} in {self.name(d.ns)}"):
                self.ipr(d.ns).link("add", ifname=d.ifname, kind="dummy")
        for tn in t.tunnels:
            if tn.ifname in FALLBACK_TUNNELS and self.ipr(tn.ns).link_lookup(ifname=tn.ifname):
                continue  # the module's fallback device (tunl0, gre0): Calico uses it as is
            with step(f"add {tn.kind} {tn.ifname} in {self.name(tn.ns)}"):
                self.ipr(tn.ns).link("add", ifname=tn.ifname, kind=tn.kind, **self._tunnel(tn))
        for m in t.macvlans:
            with step(f"add {m.kind} {m.ifname} in {self.name(m.ns)}"):
                mode: dict[str, Any] = (
                    {"macvlan_mode": m.mode}
                    if m.kind == "macvlan"
                    else {"ipvlan_mode": ("l2", "l3", "l3s").index(m.mode)}
                )
                # Made under a temporary name next to its parent, then moved into the pod and
                # renamed, as the CNI plugins do: a child named like its parent (eth0 on eth0)
                # made straight in the pod is refused by ipvlan (EEXIST, seen on 6.12).
                tmp = f"ht{m.kind[:2]}-{m.ns}"[:15]
                parent = self.ipr(m.parent_ns)
                parent.link(
                    "add",
                    ifname=tmp,
                    kind=m.kind,
                    link=self.index(m.parent_ns, m.parent),
                    **mode,
                )
                parent.link("set", index=self.index(m.parent_ns, tmp), net_ns_fd=self.name(m.ns))
                self.ipr(m.ns).link("set", index=self.index(m.ns, tmp), ifname=m.ifname)
        for x in t.vxlans:
            with step(f"add vxlan {x.ifname} in {self.name(x.ns)}"):
                self.ipr(x.ns).link(
                    "add",
                    ifname=x.ifname,
                    kind="vxlan",
                    vxlan_id=x.vni,
                    vxlan_port=x.port,
                    vxlan_local=x.local,
                    vxlan_link=self.index(x.ns, x.underlay),
                    vxlan_learning=int(x.learning),
                )

    def _tunnel(self, tn: Tunnel) -> dict[str, Any]:
        """pyroute2 attributes of an ipip/gre/geneve device."""
        if tn.kind == "geneve":
            kw: dict[str, Any] = {"geneve_id": tn.vni, "geneve_remote": tn.remote}
            if tn.port:
                kw["geneve_port"] = tn.port
            return kw
        key = "ipip" if tn.kind == "ipip" else "gre"
        kw = {}
        if tn.local:
            kw[f"{key}_local"] = tn.local
        if tn.remote:
            kw[f"{key}_remote"] = tn.remote
        if tn.underlay:
            kw[f"{key}_link"] = self.index(tn.ns, tn.underlay)
        if tn.kind == "gre" and tn.key is not None:
            kw |= {"gre_ikey": tn.key, "gre_okey": tn.key}
            kw |= {"gre_iflags": GRE_KEY, "gre_oflags": GRE_KEY}
        return kw

    def configure_links(self) -> None:
        """MACs and MTUs, bridge ports, then every interface (and lo) up."""
        t = self.topo
        settings: list[tuple[str, str, str | None, int | None]] = []
        for v in t.veths:
            settings.append((v.ns, v.ifname, v.mac, v.mtu))
            settings.append((v.peer_ns, v.peer_ifname, v.peer_mac, v.mtu))
        settings += [(b.ns, b.ifname, b.mac, b.mtu) for b in t.bridges]
        settings += [(x.ns, x.ifname, x.mac, x.mtu) for x in t.vxlans]
        settings += [(x.ns, x.ifname, None, x.mtu) for x in t.tuns]
        settings += [(m.ns, m.ifname, m.mac, m.mtu) for m in t.macvlans]
        settings += [(x.ns, x.ifname, x.mac, x.mtu) for x in t.tunnels]
        for ns, ifname, mac, mtu in settings:
            attrs: dict[str, Any] = {}
            if mac:
                attrs["address"] = mac
            if mtu:
                attrs["mtu"] = mtu
            if attrs:
                with step(f"set {ifname} {attrs} in {self.name(ns)}"):
                    self.ipr(ns).link("set", index=self.index(ns, ifname), **attrs)
        for p in t.ports:
            with step(f"enslave {p.ifname} to {p.bridge} in {self.name(p.ns)}"):
                master = self.index(p.ns, p.bridge)
                self.ipr(p.ns).link("set", index=self.index(p.ns, p.ifname), master=master)
        for short in (n.short for n in t.namespaces):
            for ifname in ("lo", *t.interfaces(short)):
                with step(f"set {ifname} up in {self.name(short)}"):
                    self.ipr(short).link("set", index=self.index(short, ifname), state="up")
        # A veth gets its carrier when its peer comes up, but the operational state a bridge
        # port waits for is set later by linkwatch, which batches events for up to a second:
        # the first packets over a port would be lost. RTM_GETLINK on one device syncs its
        # pending linkwatch event now (rtnl_getlink -> linkwatch_sync_dev).
        for short in (n.short for n in t.namespaces):
            for ifname in t.interfaces(short):
                with step(f"get {ifname} in {self.name(short)}"):
                    self.ipr(short).link("get", index=self.index(short, ifname))

    def add_addresses(self) -> None:
        for a in self.topo.addresses:
            address, _, plen = a.cidr.partition("/")
            with step(f"add address {a.cidr} on {a.ifname} in {self.name(a.ns)}"):
                self.ipr(a.ns).addr(
                    "add",
                    index=self.index(a.ns, a.ifname),
                    address=address,
                    prefixlen=int(plen or 32),
                )

    def add_routes(self) -> None:
        for r in self.topo.routes:
            kw: dict[str, Any] = {"dst": "0.0.0.0/0" if r.dst == "default" else r.dst}
            if r.gateway:
                kw["gateway"] = r.gateway
            if r.ifname:
                kw["oif"] = self.index(r.ns, r.ifname)
            if r.onlink:
                kw["flags"] = RTNH_F_ONLINK
            if r.scope == "link":
                kw["scope"] = 253  # RT_SCOPE_LINK, what `ip route add X dev Y` picks
            if r.type == "blackhole":
                kw["type"] = "blackhole"
            with step(f"add route {r.dst} via {r.gateway} in {self.name(r.ns)}"):
                self.ipr(r.ns).route("add", **kw)

    def add_neighbours(self) -> None:
        for n in self.topo.neighbours:
            with step(f"add neighbour {n.dst} on {n.ifname} in {self.name(n.ns)}"):
                self.ipr(n.ns).neigh(
                    "add",
                    ifindex=self.index(n.ns, n.ifname),
                    dst=n.dst,
                    lladdr=n.lladdr,
                    state=NUD_PERMANENT,
                )
        for f in self.topo.fdb:
            with step(f"add fdb {f.lladdr} dst {f.dst} on {f.ifname} in {self.name(f.ns)}"):
                self.ipr(f.ns).fdb(
                    "append", ifindex=self.index(f.ns, f.ifname), lladdr=f.lladdr, dst=f.dst
                )

    def apply_sysctls(self) -> None:
        """Set sysctls per namespace, then read them back: some are per-netns, some not."""
        by_ns: dict[str, list[tuple[str, str]]] = {}
        for s in self.topo.sysctls:
            by_ns.setdefault(s.ns, []).append((s.key, s.value))
        for short, pairs in by_ns.items():
            name = self.name(short)
            ns_run(name, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in pairs)])
            got = ns_run(name, ["sysctl", "-n", *(k for k, _ in pairs)]).split("\n")
            for (key, want), have in zip(pairs, got, strict=False):
                if have.strip() != want:
                    raise LabError(
                        f"sysctl {key}={want} did not take effect in {name} (reads {have!r})"
                    )

    def start_daemons(self) -> None:
        procs.start(self.topo.daemons, self.prefix, procs.state_dir(self.prefix, self.topo.name))

    def add_ipvs(self) -> None:
        """IPVS services and their real servers, over generic netlink in each namespace."""
        for svc in self.topo.ipvs:
            name = self.name(svc.ns)
            what = f"add IPVS service {svc.vip}:{svc.port} in {name}"
            with step(what), IPVS(netns=name, flags=0) as ipvs:
                service = IPVSService(
                    addr=svc.vip,
                    port=svc.port,
                    protocol=socket.IPPROTO_TCP,
                    sched_name=svc.scheduler,
                )
                ipvs.service("add", service=service)
                for real in svc.reals:
                    ip, _, port = real.rpartition(":")
                    dest = IPVSDest(addr=ip, port=int(port), fwd_method=IP_VS_CONN_F_MASQ)
                    ipvs.dest("add", service=service, dest=dest)

    def run_commands(self) -> None:
        for c in self.topo.commands:
            ns_run(self.name(c.ns), c.argv, stdin=c.stdin)
