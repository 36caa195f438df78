"""Faults to inject into a running lab, recorded so ``clear`` undoes exactly them.

Each fault is planned from the lab's :class:`~tracer.lab.spec.FaultTargets` as a list of
:class:`Action` (a command in a namespace, and the command that undoes it). Applying runs the
commands and appends them, with their undo commands, to ``faults.json`` in the lab's state
directory; ``clear`` runs the undo commands newest first and empties the record.

==============  =============================================================================
kind            what it does (default target: the lab's cross-node pod pair CLIENT -> SERVER)
==============  =============================================================================
iptables-drop   ``iptables -I FORWARD -d SERVER -j DROP`` on SERVER's node (macvlan: INPUT in
                the SERVER pod); ``--hook`` picks another chain
nft-drop        the same as an nftables table ``inet hoptrace_fault`` with a base chain
wrong-fdb       the VXLAN fdb entry for SERVER's node's MAC on CLIENT's node points at another
                node (or at the underlay's own host when there are only two nodes)
mtu             CLIENT pod's eth0 and its host-side veth get MTU 1500, more than the overlay
                carries (flannel.1 1450): large DF packets die on the node (PKT_TOO_BIG)
rp-filter       rp_filter strict (1) on the interface whose path needs loose (calico-vxlan)
no-route        the route on CLIENT's node that carries traffic to SERVER is deleted
slow-rules      N (default 5000) non-matching Service rules in front of the Service's rule
                in KUBE-SERVICES on CLIENT's node (kube-proxy)
vxlan-port      CLIENT's node sends VXLAN for SERVER's node to a UDP port nobody listens on
                there (4789, or 8472 if the lab uses 4789): the fdb entry gets a ``port``
no-neigh        the permanent neighbour entry for SERVER's node's tunnel address is deleted on
                CLIENT's node: ARP on the VXLAN device finds nobody, packets die NEIGH_FAILED
conntrack       SERVER's node drops ``--ctstate INVALID`` in FORWARD (as kube-proxy does) and
                its TCP conntrack entries expire after 2 s idle with loose pick-up off: a
                connection idle longer loses its entry and its next packets are INVALID
==============  =============================================================================

Why ``vxlan-port`` changes the sender's fdb entry rather than the receiver's device: the
kernel cannot change a VXLAN device's port in place (``ip link set flannel.1 type vxlan
dstport 4789``: "Cannot change port"), and recreating the device would lose its addresses,
routes, neighbours and fdb. A per-destination port in the sender's fdb entry puts the same
packets on the same wire: the receiver's VXLAN socket listens on another port. Why
``conntrack`` uses expiry rather than a full table: ``nf_conntrack_max`` is read-only
outside the initial network namespace, and the lab must not change the host's.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tracer.errors import LabError, UsageError
from tracer.lab.apply import ns_run
from tracer.lab.lab import Lab
from tracer.lab.spec import Fdb

KINDS = (
    "iptables-drop",
    "nft-drop",
    "wrong-fdb",
    "mtu",
    "rp-filter",
    "no-route",
    "slow-rules",
    "vxlan-port",
    "no-neigh",
    "conntrack",
)
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
COMMENT = "hoptrace-fault"
NFT_TABLE = "hoptrace_fault"
#: conntrack fault: TCP established entries expire after this many idle seconds.
CT_IDLE_S = 2


@dataclass(frozen=True)
class Action:
    ns: str  # full namespace name
    argv: list[str]
    undo: list[str]
    stdin: str | None = None
    undo_stdin: str | None = None


@dataclass(frozen=True)
class Fault:
    kind: str
    summary: str
    actions: list[Action]


def record_path(lab: Lab) -> Path:
    return lab.state_dir / "faults.json"


def active(lab: Lab) -> list[Fault]:
    """The faults applied to ``lab`` and not cleared, oldest first."""
    path = record_path(lab)
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [Fault(f["kind"], f["summary"], [Action(**a) for a in f["actions"]]) for f in data]


def _save(lab: Lab, faults: list[Fault]) -> None:
    path = record_path(lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(f) for f in faults], indent=1))
    tmp.rename(path)


def _pair(lab: Lab) -> tuple[str, str]:
    pair = lab.topology.faults.pair
    if pair is None:
        raise UsageError(f"lab {lab.name} has no pod pair to aim faults at")
    return pair


def _node_of(lab: Lab, short: str) -> str:
    node = lab.topology.namespace(short).node
    if node is None:
        raise LabError(f"{short} is not a pod")
    return node


def plan(lab: Lab, kind: str, hook: str | None = None, rules: int = 5000, mtu: int = 1500) -> Fault:
    """What fault ``kind`` does in ``lab``: the actions, nothing applied yet."""
    topo = lab.topology
    client, server = _pair(lab)
    dst = lab.addr(server)
    if kind in ("iptables-drop", "nft-drop"):
        in_pod = topo.faults.drop_in_pod
        where = server if in_pod else _node_of(lab, server)
        chain = (hook or ("INPUT" if in_pod else "FORWARD")).upper()
        if chain not in HOOKS:
            raise UsageError(f"--hook {hook}: use one of {', '.join(HOOKS)}")
        ns = lab.netns(where)
        if kind == "iptables-drop":
            rule = ["-d", dst, "-m", "comment", "--comment", COMMENT, "-j", "DROP"]
            act = Action(
                ns, ["iptables", "-I", chain, "1", *rule], ["iptables", "-D", chain, *rule]
            )
        else:
            nft_hook = {"PREROUTING": "prerouting", "POSTROUTING": "postrouting"}.get(
                chain, chain.lower()
            )
            ruleset = (
                f"table inet {NFT_TABLE} {{\n chain fault {{\n  type filter hook {nft_hook} "
                f"priority filter; policy accept;\n  ip daddr {dst} counter drop\n }}\n}}\n"
            )
            act = Action(
                ns, ["nft", "-f", "-"], ["nft", "delete", "table", "inet", NFT_TABLE], ruleset
            )
        return Fault(kind, f"{kind}: {chain} in {ns} drops packets to {server} {dst}", [act])
    if kind == "wrong-fdb":
        return _wrong_fdb(lab, client, server)
    if kind == "mtu":
        node = _node_of(lab, client)
        host_if = next(v.peer_ifname for v in topo.veths if v.ns == client and v.ifname == "eth0")
        acts = []
        for ns, ifname in ((client, "eth0"), (node, host_if)):
            old = next(
                (
                    v.mtu
                    for v in topo.veths
                    if (v.ns, v.ifname) == (ns, ifname)
                    or (v.peer_ns, v.peer_ifname) == (ns, ifname)
                ),
                None,
            )
            if old is None or old >= mtu:
                raise UsageError(
                    f"lab {lab.name}: {client}'s interfaces have no overlay MTU below {mtu}"
                )
            link = ["ip", "link", "set", "dev", ifname, "mtu"]
            acts.append(Action(lab.netns(ns), [*link, str(mtu)], [*link, str(old)]))
        return Fault(kind, f"mtu: {client} eth0 and {host_if} at {mtu}, above the overlay's", acts)
    if kind == "rp-filter":
        if topo.faults.loose_rpf is None:
            raise UsageError(
                f"lab {lab.name} has no path that needs loose rp_filter (calico-vxlan has one)"
            )
        node, ifname = topo.faults.loose_rpf
        key = f"net/ipv4/conf/{ifname}/rp_filter"
        ns = lab.netns(node)
        was = ns_run(ns, ["sysctl", "-n", key]).strip()
        act = Action(ns, ["sysctl", "-q", "-w", f"{key}=1"], ["sysctl", "-q", "-w", f"{key}={was}"])
        return Fault(kind, f"rp-filter: strict on {ifname} in {ns} (was {was})", [act])
    if kind == "no-route":
        node = _node_of(lab, client)
        addr = ipaddress.IPv4Address(dst)
        routes = [
            r
            for r in topo.routes
            if r.ns == node
            and r.dst != "default"
            and r.type == "unicast"
            and addr in ipaddress.IPv4Network(r.dst)
        ]
        if not routes:
            raise UsageError(
                f"lab {lab.name}: {node} reaches {server} without a route of its "
                "own (a connected subnet or a bridge): nothing to delete"
            )
        r = max(routes, key=lambda r: ipaddress.IPv4Network(r.dst).prefixlen)
        add = ["ip", "route", "add", r.dst]
        add += ["via", r.gateway] if r.gateway else []
        add += ["dev", r.ifname] if r.ifname else []
        add += ["onlink"] if r.onlink else []
        add += ["scope", "link"] if r.scope == "link" else []
        add += ["proto", "static"]  # as the lab's pyroute2 added it
        ns = lab.netns(node)
        act = Action(ns, ["ip", "route", "del", r.dst], add)
        return Fault(kind, f"no-route: {' '.join(add[3:-2])} deleted in {ns}", [act])
    if kind == "slow-rules":
        return _slow_rules(lab, client, rules)
    if kind == "vxlan-port":
        return _vxlan_port(lab, client, server)
    if kind == "no-neigh":
        return _no_neigh(lab, client, server)
    if kind == "conntrack":
        return _conntrack(lab, server)
    raise UsageError(f"unknown fault {kind!r}; faults: {', '.join(KINDS)}")


def _fdb_entry(lab: Lab, client: str, server: str) -> tuple[str, str, Fdb]:
    """(client's node, server's node, the VXLAN fdb entry on the first for the second)."""
    node, target = _node_of(lab, client), _node_of(lab, server)
    right = lab.addr(target)
    entry = next(
        (
            f
            for f in lab.topology.fdb
            if f.ns == node and f.dst == right and f.lladdr != "00:00:00:00:00:00"
        ),
        None,
    )
    if entry is None:
        raise UsageError(f"lab {lab.name} has no VXLAN fdb entry on {node} for {target}")
    return node, target, entry


def _wrong_fdb(lab: Lab, client: str, server: str) -> Fault:
    topo = lab.topology
    node, target, entry = _fdb_entry(lab, client, server)
    right = entry.dst
    others = [ns for ns in topo.namespaces if ns.role == "node" and ns.short not in (node, target)]
    others += [ns for ns in topo.namespaces if ns.role == "net"]
    if not others or others[0].addr is None:
        raise UsageError(f"lab {lab.name} has no other node to misdirect VXLAN to")
    wrong = others[0]
    base = ["bridge", "fdb", "replace", entry.lladdr, "dev", entry.ifname, "dst"]
    ns = lab.netns(node)
    act = Action(ns, [*base, str(wrong.addr)], [*base, right])
    return Fault(
        "wrong-fdb",
        f"wrong-fdb: {entry.ifname} in {ns} sends {target}'s MAC {entry.lladdr} to "
        f"{wrong.short} {wrong.addr} instead of {right}",
        [act],
    )


def _vxlan_port(lab: Lab, client: str, server: str) -> Fault:
    node, target, entry = _fdb_entry(lab, client, server)
    listening = {v.port for v in lab.topology.vxlans if v.ns == target}
    port = next(p for p in (4789, 8472, 6784) if p not in listening)
    base = ["bridge", "fdb", "replace", entry.lladdr, "dev", entry.ifname, "dst", entry.dst]
    act = Action(lab.netns(node), [*base, "port", str(port)], base)
    return Fault(
        "vxlan-port",
        f"vxlan-port: {entry.ifname} in {lab.netns(node)} sends {target}'s MAC {entry.lladdr} "
        f"to {entry.dst} port {port}; {target} listens on "
        f"{', '.join(map(str, sorted(listening))) or 'no VXLAN port'}",
        [act],
    )


def _no_neigh(lab: Lab, client: str, server: str) -> Fault:
    node, target, entry = _fdb_entry(lab, client, server)
    neigh = next(
        (n for n in lab.topology.neighbours
         if n.ns == node and n.ifname == entry.ifname and n.lladdr == entry.lladdr),
        None,
    )
    if neigh is None:
        raise UsageError(f"lab {lab.name} has no static neighbour on {node} for {target}")
    dev = ["dev", neigh.ifname]
    act = Action(
        lab.netns(node),
        ["ip", "neigh", "del", neigh.dst, *dev],
        ["ip", "neigh", "replace", neigh.dst, "lladdr", neigh.lladdr, *dev, "nud", "permanent"],
    )
    return Fault(
        "no-neigh",
        f"no-neigh: neighbour {neigh.dst} ({target}'s {neigh.ifname}) deleted on "
        f"{neigh.ifname} in {lab.netns(node)}",
        [act],
    )


def _conntrack(lab: Lab, server: str) -> Fault:
    in_pod = lab.topology.faults.drop_in_pod
    where = server if in_pod else _node_of(lab, server)
    chain = "INPUT" if in_pod else "FORWARD"
    ns = lab.netns(where)
    rule = ["-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", COMMENT,
            "-j", "DROP"]
    acts = [Action(ns, ["iptables", "-I", chain, "1", *rule], ["iptables", "-D", chain, *rule])]
    for key, value in (("net.netfilter.nf_conntrack_tcp_timeout_established", CT_IDLE_S),
                       ("net.netfilter.nf_conntrack_tcp_loose", 0)):
        was = ns_run(ns, ["sysctl", "-n", key]).strip()
        acts.append(Action(ns, ["sysctl", "-q", "-w", f"{key}={value}"],
                           ["sysctl", "-q", "-w", f"{key}={was}"]))
    return Fault(
        "conntrack",
        f"conntrack: {chain} in {ns} drops ctstate INVALID; TCP entries there expire after "
        f"{CT_IDLE_S} s idle, without loose pick-up",
        acts,
    )


def _slow_rules(lab: Lab, client: str, rules: int) -> Fault:
    chain = lab.topology.faults.service_chain
    if chain is None:
        raise UsageError(f"lab {lab.name} has no Service chain (the kube-proxy lab has one)")
    if not 1 <= rules <= 100_000:
        raise UsageError("--rules: between 1 and 100000")
    ns = lab.netns(_node_of(lab, client))
    saved = ns_run(ns, ["iptables", "-t", "nat", "-S", chain]).splitlines()
    body = [line for line in saved if line.startswith("-A ")]
    # Service addresses nobody uses (10.97.0.0/16), each rule shaped like kube-proxy's.
    fake = [
        f"-A {chain} -d 10.97.{i // 250}.{i % 250 + 1}/32 -p tcp -m comment --comment "
        f'"{COMMENT} svc-{i} cluster IP" -m tcp --dport 80 -j RETURN'
        for i in range(rules)
    ]
    apply = "\n".join(["*nat", f"-F {chain}", *fake, *body, "COMMIT", ""])
    undo = "\n".join(["*nat", f"-F {chain}", *body, "COMMIT", ""])
    restore = ["iptables-restore", "--noflush"]
    act = Action(ns, restore, restore, apply, undo)
    return Fault("slow-rules", f"slow-rules: {rules} rules in front of {chain} in {ns}", [act])


def inject(lab: Lab, fault: Fault) -> None:
    """Apply ``fault`` and record it (the record first names only what succeeded)."""
    if not lab.is_up():
        raise LabError(
            f"lab {lab.name} is not up under prefix {lab.prefix!r}: "
            f"'hoptrace lab up {lab.name} --prefix {lab.prefix}' first"
        )
    if any(f.kind == fault.kind for f in active(lab)):
        raise LabError(f"fault {fault.kind} is already active in {lab.name}: clear it first")
    done: list[Action] = []
    try:
        for act in fault.actions:
            ns_run(act.ns, act.argv, stdin=act.stdin)
            done.append(act)
    finally:
        if done:
            _save(lab, [*active(lab), Fault(fault.kind, fault.summary, done)])


def clear(lab: Lab) -> list[Fault]:
    """Undo every recorded fault, newest first; return what was undone."""
    faults = active(lab)
    for i, fault in enumerate(reversed(faults)):
        for act in reversed(fault.actions):
            try:
                ns_run(act.ns, act.undo, stdin=act.undo_stdin)
            except LabError:
                _save(lab, faults[: len(faults) - i])
                raise
    if record_path(lab).exists():
        record_path(lab).unlink()
    return faults
