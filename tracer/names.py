"""Names for numbers: netns inode -> name, and each netns's devices (name, kind, bridge master).

Named namespaces are the ``ip netns`` ones (/run/netns); the machine's own is ``host``; any other
namespace a process lives in (a container's) is named after that process, ``pid1234:comm``.
Devices are read over netlink with pyroute2, in each namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    peer_netns: int = 0  # veth: netns inode of the peer ("link-netnsid" resolved), if known


def devices(ns: Netns) -> dict[int, Device]:
    """The devices of one namespace, by ifindex (empty when the namespace is gone)."""
    from pyroute2 import NetNS

    out: dict[int, Device] = {}
    try:
        with NetNS(ns.path) as ipr:
            for link in ipr.get_links():
                info = link.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
                out[link["index"]] = Device(
                    link["index"],
                    link.get_attr("IFLA_IFNAME"),
                    kind or "",
                    link.get_attr("IFLA_MASTER") or 0,
                )
    except Exception:  # namespace vanished or netlink refused: names fall back to the event's
        return {}
    return out
