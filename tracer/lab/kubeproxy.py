"""kube-proxy on top of flannel-vxlan: a ClusterIP Service and a NodePort, iptables or IPVS.

The iptables rules are shaped like kube-proxy's own (``iptables-save`` of a 1.28 node,
reduced to one Service): ``KUBE-SERVICES`` matches the ClusterIP and jumps to
``KUBE-SVC-<hash>``, which picks an endpoint chain ``KUBE-SEP-<hash>`` with ``statistic
--mode random --probability 1/n``; the endpoint chain DNATs to the pod. NodePort traffic is
marked (``KUBE-MARK-MASQ``) and MASQUERADEd in ``KUBE-POSTROUTING``. Chain names use
kube-proxy's hash: base32(sha256(name + protocol [+ endpoint]))[:16].

Backends are ``echo`` daemons in pods a2 (node n1) and b1 (node n2) answering with their name.
"""

from __future__ import annotations

import base64
import hashlib

from tracer.lab.build import CLUSTER_CIDR, Draft, restore
from tracer.lab.flannel import FLANNEL_VXLAN_PICTURE, THREE_NODES, flannel_draft
from tracer.lab.spec import (
    Address,
    Daemon,
    Dummy,
    FaultTargets,
    IpvsService,
    Sysctl,
    Topology,
)

SERVICE_IP = "10.96.0.10"
SERVICE_PORT = 80
NODE_PORT = 30080
TARGET_PORT = 8080
SERVICE_NAME = "default/web:http"
BACKENDS = ("a2", "b1")  # pods on n1 and n2; a1 (n1) is the client


def _hash(*parts: str) -> str:
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def svc_chain() -> str:
    return "KUBE-SVC-" + _hash(SERVICE_NAME, "tcp")


def ext_chain() -> str:
    return "KUBE-EXT-" + _hash(SERVICE_NAME, "tcp")


def sep_chain(endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(SERVICE_NAME, "tcp", endpoint)


def kube_proxy_rules(endpoints: list[str]) -> str:
    """kube-proxy's nat rules for one Service with ``endpoints`` (``ip:port``)."""
    svc, ext = svc_chain(), ext_chain()
    seps = [sep_chain(e) for e in endpoints]
    name = SERVICE_NAME.split(":")[0]
    lines = ["*nat"]
    for chain in (
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        svc,
        ext,
        *seps,
    ):
        lines.append(f":{chain} - [0:0]")
    lines += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring '
        'SNAT" -j MASQUERADE --random-fully',
        f'-A KUBE-SERVICES -d {SERVICE_IP}/32 -p tcp -m comment --comment "{name} cluster IP"'
        f" -m tcp --dport {SERVICE_PORT} -j {svc}",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
        'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{name}" -m tcp --dport {NODE_PORT}'
        f" -j {ext}",
        f'-A {ext} -m comment --comment "masquerade traffic for {name} external '
        'destinations" -j KUBE-MARK-MASQ',
        f"-A {ext} -j {svc}",
        f"-A {svc} ! -s {CLUSTER_CIDR} -d {SERVICE_IP}/32 -p tcp -m comment --comment "
        f'"{name} cluster IP" -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ',
    ]
    for i, (ep, sep) in enumerate(zip(endpoints, seps, strict=True)):
        left = len(endpoints) - i
        prob = f" -m statistic --mode random --probability {1 / left:.11f}" if left > 1 else ""
        lines.append(f'-A {svc} -m comment --comment "{name} -> {ep}"{prob} -j {sep}')
    for ep, sep in zip(endpoints, seps, strict=True):
        ip = ep.split(":")[0]
        lines += [
            f'-A {sep} -s {ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
            f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT --to-destination {ep}',
        ]
    return "\n".join([*lines, "COMMIT", ""])


KUBE_PROXY_PICTURE = (
    FLANNEL_VXLAN_PICTURE
    + rf"""
 Service default/web: ClusterIP {SERVICE_IP}:{SERVICE_PORT}, NodePort {NODE_PORT} on every
 node -> endpoints a2 10.244.1.3:{TARGET_PORT} (n1), b1 10.244.2.2:{TARGET_PORT} (n2), 50/50
 PREROUTING/OUTPUT -> KUBE-SERVICES -> KUBE-SVC-... -> KUBE-SEP-... (DNAT)
 NodePort: KUBE-NODEPORTS -> KUBE-EXT-... (mark 0x4000) -> KUBE-SVC-...;
 POSTROUTING -> KUBE-POSTROUTING: MASQUERADE what carries mark 0x4000
"""
)

IPVS_PICTURE = (
    FLANNEL_VXLAN_PICTURE
    + rf"""
 kube-proxy --proxy-mode=ipvs: each node's kube-ipvs0 (dummy) has {SERVICE_IP}/32,
 IPVS has TCP {SERVICE_IP}:{SERVICE_PORT} rr -> 10.244.1.3:{TARGET_PORT}, 10.244.2.2:{TARGET_PORT}
 (masquerade forwarding); NodePort {NODE_PORT} the same on each node's 192.168.77.N
"""
)


def _with_backends(d: Draft) -> list[str]:
    addr = {ns.short: ns.addr for ns in d.namespaces}
    for pod in BACKENDS:
        d.daemons.append(Daemon(pod, "echo", ("--port", str(TARGET_PORT), "--text", pod)))
    return [f"{addr[p]}:{TARGET_PORT}" for p in BACKENDS]


def kube_proxy() -> Topology:
    """flannel-vxlan plus kube-proxy's iptables rules for one Service on every node."""
    d = flannel_draft("vxlan", THREE_NODES)
    endpoints = _with_backends(d)
    for n in THREE_NODES:
        d.commands.append(restore(f"n{n}", kube_proxy_rules(endpoints)))
    return d.freeze(
        "kube-proxy",
        f"kube-proxy iptables on flannel-vxlan: {SERVICE_IP}:{SERVICE_PORT} -> a2, b1",
        KUBE_PROXY_PICTURE,
        faults=FaultTargets(
            pair=("a1", "b1"), service_chain="KUBE-SERVICES", service=f"{SERVICE_IP}:{SERVICE_PORT}"
        ),
    )


def kube_proxy_ipvs() -> Topology:
    """flannel-vxlan plus kube-proxy in IPVS mode (needs CONFIG_IP_VS and dummy devices)."""
    d = flannel_draft("vxlan", THREE_NODES)
    endpoints = _with_backends(d)
    for n in THREE_NODES:
        node = f"n{n}"
        d.dummies.append(Dummy(node, "kube-ipvs0"))
        d.addresses.append(Address(node, "kube-ipvs0", f"{SERVICE_IP}/32"))
        d.sysctls.append(Sysctl(node, "net.ipv4.vs.conntrack", "1"))
        for vip in (SERVICE_IP, f"192.168.77.{n}"):
            port = SERVICE_PORT if vip == SERVICE_IP else NODE_PORT
            d.ipvs.append(IpvsService(node, vip, port, tuple(endpoints)))
        d.commands.append(
            restore(
                node,
                "*nat\n-A POSTROUTING -m ipvs --vaddr 0.0.0.0/0 ! -s 10.244.0.0/16 "
                "-j MASQUERADE\nCOMMIT\n",
            )
        )
    return d.freeze(
        "ipvs",
        f"kube-proxy IPVS on flannel-vxlan: {SERVICE_IP}:{SERVICE_PORT} -> a2, b1",
        IPVS_PICTURE,
        faults=FaultTargets(pair=("a1", "b1"), service=f"{SERVICE_IP}:{SERVICE_PORT}"),
    )
