"""The probe catalogue: every probe point hoptrace knows, and its mechanisms in order.

This is the one place that says which kernel points exist, how each can be observed, and what
hoptrace falls back to. Ids come from ``enum ht_probe`` in ``probes/hoptrace.h`` (read from the
object's BTF by name); ``hoptrace doctor`` prints this table with what the running kernel chose;
docs/probes.md is checked against it by tests.

Mechanisms, best first: ``fentry``/``fexit`` (BPF trampoline), ``kprobe.multi`` (one link, many
functions), ``kprobe``, ``kretprobe`` (with a companion entry kprobe that saves the arguments,
``Mechanism.entry``), ``tp_btf`` (typed tracepoint), ``netfilter`` (BPF netfilter link, per
netns), and ``inferred`` (no probe: the point is reconstructed from neighbouring events; see
tracer/hops.py).

Points with an ``opt_in`` name are attached only when asked for (``--probes all-skb``): the
``func`` point stands for every kernel function with a ``struct sk_buff *`` argument, found in
BTF by tracer/allskb.py, with one program per argument position (``<program>`` names the
position-1 program; ``..._2`` to ``..._5`` are its siblings).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mech(StrEnum):
    FENTRY = "fentry"
    FEXIT = "fexit"
    KPROBE_MULTI = "kprobe.multi"
    KPROBE = "kprobe"
    KRETPROBE = "kretprobe"
    TP_BTF = "tp_btf"
    NETFILTER = "netfilter"
    INFERRED = "inferred"


@dataclass(frozen=True, slots=True)
class Mechanism:
    kind: Mech
    program: str = ""  # program name in probes/hoptrace.bpf.c ("" for inferred)
    target: str = ""  # kernel function or tracepoint
    how: str = ""  # for inferred: from which events
    check_at: str = ""  # the function capabilities.py tries, when target names more than one
    entry: str = ""  # a program attached with it at the function's entry (kretprobe: saves
    # the arguments; fexit nft_do_chain: remembers the chain while the call runs)


@dataclass(frozen=True, slots=True)
class ProbePoint:
    name: str  # the kernel point, as users know it
    enum: str  # member of enum ht_probe
    label: str  # short label in hop chains
    core: bool  # tracing cannot run without it
    mechanisms: tuple[Mechanism, ...]
    doc: str
    opt_in: str = ""  # attached only with --probes <opt_in>; "" = the curated default set


def _ret(fn: str) -> tuple[Mechanism, Mechanism]:
    """fexit ``fx_<fn>`` then kretprobe ``kr_<fn>`` (with entry kprobe ``kpe_<fn>``)."""
    return (
        Mechanism(Mech.FEXIT, f"fx_{fn}", fn),
        Mechanism(Mech.KRETPROBE, f"kr_{fn}", fn, entry=f"kpe_{fn}"),
    )


def _func(name: str, fn: str = "") -> tuple[Mechanism, Mechanism]:
    """fentry then kprobe programs ``fe_<name>``/``kp_<name>`` on kernel function ``fn``."""
    return (
        Mechanism(Mech.FENTRY, f"fe_{name}", fn or name),
        Mechanism(Mech.KPROBE, f"kp_{name}", fn or name),
    )


ALLSKB_TARGET = "every function with a struct sk_buff * argument (BTF)"

CATALOGUE: tuple[ProbePoint, ...] = (
    ProbePoint(
        "netif_receive_skb",
        "HT_PROBE_NETIF_RECEIVE_SKB",
        "rx",
        True,
        (Mechanism(Mech.TP_BTF, "tp_netif_receive_skb", "netif_receive_skb"),),
        "a device receives a packet (every device, every netns)",
    ),
    ProbePoint(
        "net_dev_queue",
        "HT_PROBE_NET_DEV_QUEUE",
        "tx",
        True,
        (Mechanism(Mech.TP_BTF, "tp_net_dev_queue", "net_dev_queue"),),
        "a packet is queued for transmit on a device (dev_queue_xmit)",
    ),
    ProbePoint(
        "kfree_skb",
        "HT_PROBE_KFREE_SKB",
        "DROP",
        True,
        (Mechanism(Mech.TP_BTF, "tp_kfree_skb", "kfree_skb"),),
        "a packet is freed as dropped, with the kernel's drop reason",
    ),
    ProbePoint(
        "consume_skb",
        "HT_PROBE_CONSUME_SKB",
        "free",
        True,
        (Mechanism(Mech.TP_BTF, "tp_consume_skb", "consume_skb"),),
        "a packet is freed after normal use (delivered, or a copy of it was)",
    ),
    ProbePoint(
        "nf_hook_first",
        "HT_PROBE_NF_FIRST",
        "nf",
        True,
        (
            Mechanism(Mech.FENTRY, "fe_nf_hook_slow", "nf_hook_slow"),
            Mechanism(Mech.KPROBE, "kp_nf_hook_slow", "nf_hook_slow"),
            Mechanism(Mech.NETFILTER, "nf_first", "IPv4+IPv6, 5 hooks, priority INT_MIN+1"),
        ),
        "a packet enters a netfilter hook (before every other hook function)",
    ),
    ProbePoint(
        "nf_hook_last",
        "HT_PROBE_NF_LAST",
        "nf-out",
        True,
        (
            *_ret("nf_hook_slow"),  # return 1: verdict ACCEPT on the event
            Mechanism(Mech.NETFILTER, "nf_last", "IPv4+IPv6, 5 hooks, priority INT_MAX-1"),
        ),
        "a packet leaves a netfilter hook accepted (a first without a last: dropped inside)",
    ),
    ProbePoint(
        "ipt_do_table",
        "HT_PROBE_IPT_DO_TABLE",
        "nf-table",
        False,
        _ret("ipt_do_table"),
        "an iptables-legacy IPv4 table returned a verdict other than ACCEPT (table, chain)",
    ),
    ProbePoint(
        "ip6t_do_table",
        "HT_PROBE_IP6T_DO_TABLE",
        "nf-table",
        False,
        _ret("ip6t_do_table"),
        "an ip6tables-legacy table returned a verdict other than ACCEPT (table, chain)",
    ),
    ProbePoint(
        "nft_do_chain",
        "HT_PROBE_NFT_DO_CHAIN",
        "nf-table",
        False,
        (  # the entry program remembers the chain: newer kernels free a drop inside the call
            Mechanism(Mech.FEXIT, "fx_nft_do_chain", "nft_do_chain", entry="fe_nft_do_chain"),
            _ret("nft_do_chain")[1],
        ),
        "an nftables base chain (iptables-nft too) returned a verdict other than ACCEPT",
    ),
    ProbePoint(
        "ip_rcv",
        "HT_PROBE_IP_RCV",
        "ip_rcv",
        False,
        (
            *_func("ip_rcv", "ip_rcv_core"),  # ip_rcv and the list path both call it
            Mechanism(Mech.INFERRED, how="IPv4 PRE_ROUTING runs inside ip_rcv: nf PRE event"),
        ),
        "the IPv4 stack receives a packet",
    ),
    ProbePoint(
        "br_handle_frame",
        "HT_PROBE_BR_HANDLE_FRAME",
        "br_in",
        False,
        (
            *_func("br_handle_frame"),
            Mechanism(Mech.INFERRED, how="rx on a device whose master is a bridge"),
        ),
        "a bridge port receives a frame",
    ),
    ProbePoint(
        "br_forward",
        "HT_PROBE_BR_FORWARD",
        "br_fwd",
        False,
        (
            *_func("br_forward"),
            Mechanism(
                Mech.INFERRED, how="rx on one bridge port, then tx on another of that bridge"
            ),
        ),
        "the bridge forwards a frame to another port",
    ),
    ProbePoint(
        "br_pass_frame_up",
        "HT_PROBE_BR_PASS_FRAME_UP",
        "br_up",
        False,
        (
            *_func("br_pass_frame_up"),
            Mechanism(Mech.INFERRED, how="rx on the bridge device itself"),
        ),
        "the bridge passes a frame up to the host stack",
    ),
    ProbePoint(
        "func",
        "HT_PROBE_FUNC",
        "fn",
        False,
        (
            Mechanism(Mech.KPROBE_MULTI, "kp_allskb_m1", ALLSKB_TARGET, check_at="ip_rcv"),
            Mechanism(Mech.KPROBE, "kp_allskb_1", ALLSKB_TARGET, check_at="ip_rcv"),
        ),
        "any kernel function with a struct sk_buff * argument (the event names it)",
        opt_in="all-skb",
    ),
)

BY_NAME = {p.name: p for p in CATALOGUE}
BY_ENUM = {p.enum: p for p in CATALOGUE}
PROBE_SETS = ("curated", *sorted({p.opt_in for p in CATALOGUE if p.opt_in}))


def points_of(probe_set: str = "curated") -> tuple[ProbePoint, ...]:
    """The points a run attaches: the curated set, plus the opt-in points of ``probe_set``."""
    return tuple(p for p in CATALOGUE if not p.opt_in or p.opt_in == probe_set)


#: points whose events carry a netfilter table's decision (verdict, nf_table, nf_chain)
NF_TABLE_POINTS = ("ipt_do_table", "ip6t_do_table", "nft_do_chain")
