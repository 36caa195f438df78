"""Names for numbers: netns inode -> name, and each netns's devices (name, kind, bridge master).

Named namespaces are the ``ip netns`` ones (/run/netns); the machine's own is ``host``; any other
namespace a process lives in (a container's) is named after that process, ``pid1234:comm``.
Devices are read over netlink with pyroute2, in each namespace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.errors import UsageError

NETNS_DIR = Path("/run/netns")
HOST = "host"


@dataclass(frozen=True, slots=True)
class Netns:
    name: str
    path: str  # a path setns() can open
    inode: int


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def list_netns(include_processes: bool = True) -> list[Netns]:
    """Every network namespace on this machine: host first, then named, then process-held."""
    found: dict[int, Netns] = {}
    host = _inode("/proc/1/ns/net")
    if host is not None:
        found[host] = Netns(HOST, "/proc/1/ns/net", host)
    if NETNS_DIR.is_dir():
        for entry in sorted(NETNS_DIR.iterdir()):
            ino = _inode(str(entry))
            if ino is not None and ino not in found:
                found[ino] = Netns(entry.name, str(entry), ino)
    if include_processes:
        for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
            path = f"/proc/{pid}/ns/net"
            ino = _inode(path)
            if ino is None or ino in found:
                continue
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            found[ino] = Netns(f"pid{pid}:{comm}", path, ino)
    return list(found.values())


def resolve(spec: str) -> list[Netns]:
    """``all`` or a comma-separated list of names (``host`` is the machine's own)."""
    known = list_netns()
    if spec.strip() == "all":
        return known
    by_name = {n.name: n for n in known}
    out: list[Netns] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name not in by_name:
            named = ", ".join(n.name for n in known if not n.name.startswith("pid"))
            raise UsageError(f"unknown network namespace {name!r} (known: {named})")
        out.append(by_name[name])
    if not out:
        raise UsageError("--netns: no namespace given")
    return out


@dataclass(frozen=True, slots=True)
class Device:
    ifindex: int
    name: str
    kind: str  # veth, bridge, vxlan, ... ("" for physical / unknown)
    master: int  # ifindex of the bridge this device is a port of, 0 if none
    port: int = 0  # UDP destination port of a VXLAN/Geneve device
    peer_netns: str = ""  # a veth's other end, a macvlan's lower device: its namespace ("" when
    peer_ifindex: int = 0  # unknown, or a device linked to nothing)
    mtu: int = 0  # 0 when unknown (trace files written before hoptrace recorded it)


# devices whose IFLA_LINK names another device, possibly in another namespace
LINKED_KINDS = ("veth", "macvlan", "ipvlan")
# Kinds whose module puts a fallback device (tunl0, gre0, gretap0, erspan0, sit0, ip6tnl0, ...)
# in every namespace once loaded, pods included. Down, it carries nothing and says nothing
# about the namespace: it is left out, or every pod would look like a tunnelling node.
FALLBACK_KINDS = ("ipip", "gre", "gretap", "erspan", "sit", "ip6tnl", "ip6gre", "ip6gretap")
IFF_UP = 1


def _nsid_names(ipr: Any, wanted: set[int], candidates: Sequence[Netns]) -> dict[int, str]:
    """Which namespace each netns id (as this namespace numbers its peers) stands for."""
    found: dict[int, str] = {}
    for other in candidates:
        if wanted <= found.keys():
            break
        try:
            fd = os.open(other.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            nsid = (ipr.get_netnsid(fd=fd) or {}).get("nsid")
        finally:
            os.close(fd)
        if nsid in wanted:
            found[nsid] = other.name
    return found


def devices(ns: Netns, others: Sequence[Netns] = ()) -> dict[int, Device]:
    """The devices of one namespace, by ifindex (empty when the namespace is gone). A veth's
    peer is named when it lives here or in one of ``others``."""
    from pyroute2 import NetNS

    out: dict[int, Device] = {}
    try:
        with NetNS(ns.path) as ipr:
            links = list(ipr.get_links())
            wanted = {
                link.get_attr("IFLA_LINK_NETNSID")
                for link in links
                if link.get_attr("IFLA_LINK_NETNSID") is not None
            }
            nsids = _nsid_names(ipr, wanted, [o for o in others if o.path != ns.path])
            for link in links:
                info = link.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
                if kind in FALLBACK_KINDS and not link["flags"] & IFF_UP:
                    continue
                data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
                port = 0
                if kind in ("vxlan", "geneve") and data is not None:
                    port = (
                        data.get_attr("IFLA_VXLAN_PORT" if kind == "vxlan" else "IFLA_GENEVE_PORT")
                        or 0
                    )
                peer_ns, peer_if = "", 0
                if kind in LINKED_KINDS and link.get_attr("IFLA_LINK"):
                    nsid = link.get_attr("IFLA_LINK_NETNSID")
                    peer_ns = ns.name if nsid is None else nsids.get(nsid, "")
                    peer_if = link.get_attr("IFLA_LINK") if peer_ns else 0
                out[link["index"]] = Device(
                    link["index"],
                    link.get_attr("IFLA_IFNAME"),
                    kind or "",
                    link.get_attr("IFLA_MASTER") or 0,
                    int(port),
                    peer_ns,
                    peer_if,
                    int(link.get_attr("IFLA_MTU") or 0),
                )
    except Exception:  # namespace vanished or netlink refused: names fall back to the event's
        return {}
    return out


class Topology:
    """Devices of every traced namespace, by netns name: what hop naming needs to know.

    Live, it is read over netlink (and re-read when an unknown device shows up); in a trace
    file it is written into the header, so a replay names hops exactly as the live run did.
    """

    def __init__(self, devs: dict[str, dict[int, Device]] | None = None) -> None:
        self.devs: dict[str, dict[int, Device]] = devs or {}
        self._paths: dict[str, str] = {}
        self._roles: dict[str, str] = {}

    @classmethod
    def read(cls, namespaces: list[Netns]) -> Topology:
        topo = cls()
        for ns in namespaces:
            topo._paths[ns.name] = ns.path
            topo.devs[ns.name] = devices(ns, namespaces)
        return topo

    def peer(self, netns: str, ifindex: int) -> tuple[str, Device] | None:
        """The other end of a veth, as (netns name, device), when it is known."""
        d = self.devs.get(netns, {}).get(ifindex)
        if d is None or not d.peer_netns:
            return None
        other = self.devs.get(d.peer_netns, {}).get(d.peer_ifindex)
        return (d.peer_netns, other) if other else None

    def device(self, netns: str, ifindex: int) -> Device | None:
        found = self.devs.get(netns, {}).get(ifindex)
        if found is None and netns in self._paths:
            # a device created after start: read that namespace again, once per miss
            known = [Netns(n, p, 0) for n, p in self._paths.items()]
            self.devs[netns] = devices(Netns(netns, self._paths[netns], 0), known)
            self._roles.pop(netns, None)
            found = self.devs[netns].get(ifindex)
        return found

    def tunnel_ports(self, kind: str = "vxlan") -> set[int]:
        """UDP ports of the tunnel devices seen (learned from the node, not assumed)."""
        return {
            d.port
            for devs in self.devs.values()
            for d in devs.values()
            if d.kind == kind and d.port
        }

    def role(self, netns: str) -> str:
        """``node`` for the host, namespaces that bridge or tunnel, and namespaces linked (by
        veth or macvlan) to two or more others (routed nodes such as Calico's, a switch);
        ``pod`` for the rest."""
        role = self._roles.get(netns)
        if role is None:
            kinds = {d.kind for d in self.devs.get(netns, {}).values()}
            tunnel_or_bridge = kinds & {"bridge", "vxlan", "geneve", "ipip", "gre", "tun"}
            role = "node" if netns == HOST or tunnel_or_bridge or len(self.linked(netns)) >= 2 \
                else "pod"
            self._roles[netns] = role
        return role

    def linked(self, netns: str) -> set[str]:
        """Namespaces joined to ``netns`` by a veth or a macvlan/ipvlan, either way round."""
        out = {d.peer_netns for d in self.devs.get(netns, {}).values() if d.peer_netns}
        out |= {
            ns
            for ns, devs in self.devs.items()
            if any(d.peer_netns == netns for d in devs.values())
        }
        out.discard(netns)
        return out

    def to_json(self) -> dict[str, list[dict[str, object]]]:
        return {
            ns: [
                {"ifindex": d.ifindex, "name": d.name, "kind": d.kind, "master": d.master,
                 **({"port": d.port} if d.port else {}),
                 **({"peer": [d.peer_netns, d.peer_ifindex]} if d.peer_netns else {}),
                 **({"mtu": d.mtu} if d.mtu else {})}
                for d in sorted(devs.values(), key=lambda d: d.ifindex)
            ]
            for ns, devs in self.devs.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, list[dict[str, object]]]) -> Topology:
        return cls(
            {
                ns: {
                    int(d["ifindex"]): Device(  # type: ignore[arg-type]
                        int(d["ifindex"]),
                        str(d["name"]),
                        str(d["kind"]),
                        int(d["master"]),  # type: ignore[arg-type]
                        int(d.get("port", 0)),  # type: ignore[arg-type]
                        *(d.get("peer") or ("", 0)),  # type: ignore[arg-type]
                        int(d.get("mtu", 0)),  # type: ignore[arg-type]
                    )
                    for d in devs
                }
                for ns, devs in data.items()
            }
        )
