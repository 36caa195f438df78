"""``hoptrace lab describe``: a lab's picture, its namespaces, and every device it creates.

The picture is drawn by hand in each lab's builder; the lists below it are generated from the
same :class:`~tracer.lab.spec.Topology` the applier builds, so they cannot disagree with it.
"""

from __future__ import annotations

from tracer.lab.spec import Topology


def device_lines(topo: Topology, short: str) -> list[str]:
    """``ifname  what  addresses`` for every device the lab creates in ``short``."""
    what: dict[str, str] = {}
    for v in topo.veths:
        if v.ns == short:
            what[v.ifname] = f"veth, peer {v.peer_ifname} in {v.peer_ns}"
        if v.peer_ns == short:
            what[v.peer_ifname] = f"veth, peer {v.ifname} in {v.ns}"
    for b in topo.bridges:
        if b.ns == short:
            ports = [p.ifname for p in topo.ports if p.ns == short and p.bridge == b.ifname]
            what[b.ifname] = "bridge" + (f", ports {' '.join(ports)}" if ports else "")
    for x in topo.vxlans:
        if x.ns == short:
            learn = "" if x.learning else " nolearning"
            what[x.ifname] = f"vxlan id {x.vni} port {x.port} dev {x.underlay}{learn}"
    for t in topo.tuns:
        if t.ns == short:
            what[t.ifname] = "tun (a lab daemon reads and writes it)"
    for m in topo.macvlans:
        if m.ns == short:
            what[m.ifname] = f"{m.kind} {m.mode} on {m.parent} in {m.parent_ns}"
    for tn in topo.tunnels:
        if tn.ns == short:
            ends = " ".join(
                f"{k} {v}" for k, v in (("local", tn.local), ("remote", tn.remote)) if v
            )
            vni = f" id {tn.vni}" if tn.vni is not None else ""
            vni += f" key {tn.key}" if tn.key is not None else ""
            what[tn.ifname] = f"{tn.kind}{vni} {ends}".rstrip()
    for dummy in topo.dummies:
        if dummy.ns == short:
            what[dummy.ifname] = "dummy"
    mtus = {v.ifname: v.mtu for v in topo.veths if v.ns == short and v.mtu}
    mtus |= {v.peer_ifname: v.mtu for v in topo.veths if v.peer_ns == short and v.mtu}
    for group in (topo.bridges, topo.vxlans, topo.tuns, topo.macvlans, topo.tunnels):
        mtus |= {x.ifname: x.mtu for x in group if x.ns == short and x.mtu}
    lines = []
    for ifname in topo.interfaces(short):
        addrs = [a.cidr for a in topo.addresses if a.ns == short and a.ifname == ifname]
        mtu = f", mtu {mtus[ifname]}" if ifname in mtus else ""
        lines.append(f"    {ifname:<15} {' '.join(addrs) or '-':<18} {what.get(ifname, '')}{mtu}")
    for r in topo.routes:
        if r.ns == short:
            via = f" via {r.gateway}" if r.gateway else ""
            dev = f" dev {r.ifname}" if r.ifname else ""
            extra = " onlink" if r.onlink else ""
            extra += " scope link" if r.scope == "link" else ""
            kind = "blackhole " if r.type == "blackhole" else ""
            lines.append(f"    route {kind}{r.dst}{via}{dev}{extra}")
    for n in topo.neighbours:
        if n.ns == short:
            lines.append(f"    neigh {n.dst} lladdr {n.lladdr} dev {n.ifname}")
    for f in topo.fdb:
        if f.ns == short:
            lines.append(f"    fdb {f.lladdr} dev {f.ifname} dst {f.dst}")
    for v in topo.ipvs:
        if v.ns == short:
            reals = " ".join(v.reals)
            lines.append(f"    ipvs TCP {v.vip}:{v.port} {v.scheduler} -> {reals} (masq)")
    for d in topo.daemons:
        if d.ns == short:
            lines.append(f"    daemon {d.program} {' '.join(d.args)}")
    return [part for line in lines for part in _wrap(line)]


def _wrap(line: str, width: int = 80) -> list[str]:
    """A long device line continues on the next, indented under its description."""
    if len(line) <= width:
        return [line]
    cut = line.rfind(" ", 0, width)
    return [line[:cut], " " * 40 + line[cut + 1 :]][: 2 if len(line) - cut < width - 40 else 1]


def describe(topo: Topology, prefix: str) -> str:
    """The whole ``describe`` text; every line fits 80 columns."""
    lines = [f"{topo.name}: {topo.summary}", topo.picture.rstrip("\n")]
    if topo.notes:
        lines += [topo.notes.rstrip("\n")]
    lines += ["", f"{'namespace':<24} {'role':<5} {'address':<15} on"]
    for ns in topo.namespaces:
        lines.append(
            f"{prefix + ns.short:<24} {ns.role:<5} {ns.addr or '-':<15} "
            f"{prefix + ns.node if ns.node else '-'}"
        )
    lines += ["", "devices (name, addresses, kind), routes, neighbours, fdb, daemons:"]
    for ns in topo.namespaces:
        lines.append(f"  {ns.short} ({prefix + ns.short})")
        lines += device_lines(topo, ns.short)
    if topo.features():
        lines += ["", f"needs: {', '.join(topo.features())}"]
    return "\n".join(lines) + "\n"
