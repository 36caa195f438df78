"""Which kernel features a lab needs are present here, found by trying them.

A device kind is probed by creating one in a scratch namespace (``PREFIX.probe``): on a stock
kernel that also auto-loads its module (``rtnl-link-<kind>``), so "not there" means the kernel
really cannot do it, and the error names the config option (``CONFIG_GENEVE``). IPVS has no
device: it is present when ``/proc/net/ip_vs`` exists (after a ``modprobe ip_vs`` attempt).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from tracer.errors import LabError
from tracer.lab.spec import FEATURE_CONFIG

# What a probe device of each kind needs to be accepted (parameters, not features). IPIP and
# GRE get a remote end (TEST-NET-1, never used: the device stays down) because loading their
# module makes a fallback device (tunl0, gre0) with no ends in every namespace, and a second
# tunnel with the same ends is refused (EEXIST).
_PROBE_ARGS: dict[str, dict[str, Any]] = {
    "bridge": {},
    "vxlan": {"vxlan_id": 1, "vxlan_port": 8472},
    "ipip": {"ipip_remote": "192.0.2.1"},
    "gre": {"gre_remote": "192.0.2.1"},
    "geneve": {"geneve_id": 1, "geneve_remote": "192.0.2.1"},
    "dummy": {},
    "tuntap": {"mode": "tun"},
}
_CHILD_KINDS: dict[str, dict[str, Any]] = {
    "macvlan": {"macvlan_mode": "bridge"},
    "ipvlan": {"ipvlan_mode": 0},
}


def _device_kind_works(ipr: IPRoute, kind: str, parent: int) -> bool:
    kw = dict(_PROBE_ARGS.get(kind, {}))
    if kind in _CHILD_KINDS:
        kw = {**_CHILD_KINDS[kind], "link": parent}
    try:
        ipr.link("add", ifname=f"probe-{kind}"[:15], kind=kind, **kw)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            return False
        raise LabError(f"probing for {kind} devices: {exc.args[-1]}") from exc
    return True


def _ipvs_works() -> bool:
    if os.path.exists("/proc/net/ip_vs"):
        return True
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, timeout=10, check=False)
    return os.path.exists("/proc/net/ip_vs")


def missing(features: Iterable[str], prefix: str) -> list[str]:
    """The features (keys of FEATURE_CONFIG) this kernel lacks, probed in a scratch netns."""
    want = list(dict.fromkeys(features))
    out: list[str] = []
    if "ipvs" in want and not _ipvs_works():
        out.append("ipvs")
    kinds = [f for f in want if f != "ipvs"]
    if not kinds:
        return out
    scratch = f"{prefix}probe"
    netns.create(scratch)
    try:
        with IPRoute(netns=scratch, flags=0) as ipr:
            ipr.link("add", ifname="probe-parent", kind="veth", peer={"ifname": "probe-peer"})
            parent = int(ipr.link_lookup(ifname="probe-parent")[0])
            out += [k for k in kinds if not _device_kind_works(ipr, k, parent)]
    finally:
        netns.remove(scratch)
    return out


def describe_missing(lab: str, features: list[str]) -> str:
    """One line naming what is missing and what provides it."""
    parts = [f"{f} ({FEATURE_CONFIG.get(f, '?')})" for f in features]
    return (
        f"lab {lab} needs kernel features this kernel lacks: {', '.join(parts)}; "
        "run it on a kernel built with them (a stock distribution kernel has them as modules)"
    )
