/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * hoptrace.h - the one definition of what hoptrace's kernel probes share with user space.
 *
 * Everything here is compiled into the BPF object's BTF. The Python side never copies these
 * layouts or numbers: tracer/btf.py reads them back from the built object (struct offsets,
 * enum values), so C is the single source of truth. docs/event-schema.md describes the fields.
 *
 * Fixed-width fields only; no pointers; natural alignment; sizes are multiples of 8.
 */
#ifndef __HOPTRACE_H
#define __HOPTRACE_H

#define HT_HDR_LEN 128          /* header bytes copied into each event */
#define HT_IFNAMSIZ 16
#define HT_NF_TABLE_LEN 16      /* netfilter table name bytes kept (xt: XT_TABLE_MAXNAMELEN 32; real ones are short) */
#define HT_NF_CHAIN_LEN 32      /* netfilter chain name bytes kept (KUBE-SVC-<16 hex> fits) */
#define HT_VERDICT_NONE (-1)    /* ht_event.verdict when the probe saw no verdict */
#define HT_FILTER_MAX_TERMS 32  /* disjunction: at most this many AND-terms */
#define HT_FILTER_MAX_PREDS 12  /* conjunction: at most this many predicates per term */
#define HT_MAX_TUNNEL_PORTS 16  /* UDP ports decapsulated as VXLAN in the kernel */
#define HT_MAX_DEPTH 4          /* encapsulation levels the kernel parser follows */

/*
 * Probe points. Ids are stable within one build; user space reads names and values from BTF.
 * tracer/catalogue.py describes each point (label, mechanisms in order of preference).
 */
enum ht_probe {
	HT_PROBE_NONE = 0,
	HT_PROBE_NETIF_RECEIVE_SKB = 1,
	HT_PROBE_NET_DEV_QUEUE = 2,
	HT_PROBE_KFREE_SKB = 3,
	HT_PROBE_CONSUME_SKB = 4,
	HT_PROBE_NF_FIRST = 5,     /* netfilter hook, first priority: the packet entered the hook */
	HT_PROBE_NF_LAST = 6,      /* netfilter hook, last priority: the packet left it accepted */
	HT_PROBE_IP_RCV = 7,
	HT_PROBE_BR_HANDLE_FRAME = 8,
	HT_PROBE_BR_FORWARD = 9,
	HT_PROBE_BR_PASS_FRAME_UP = 10,
	HT_PROBE_FUNC = 11,        /* --probes all-skb: any kernel function taking an skb (ht_event.func) */
	HT_PROBE_IPT_DO_TABLE = 12,  /* an iptables (legacy, x_tables) IPv4 table returned a verdict */
	HT_PROBE_IP6T_DO_TABLE = 13, /* an ip6tables (legacy) table returned a verdict */
	HT_PROBE_NFT_DO_CHAIN = 14,  /* an nftables base chain (also iptables-nft) returned a verdict */
	HT_PROBE_MAX = 15,
};

/*
 * Netfilter verdicts as ht_event.verdict carries them (the kernel's NF_* codes from
 * include/uapi/linux/netfilter.h, masked with NF_VERDICT_MASK; defines there, so not in the
 * kernel's BTF: named here once, read by user space from this object's BTF).
 */
enum ht_nf_verdict {
	HT_NF_DROP = 0,
	HT_NF_ACCEPT = 1,
	HT_NF_STOLEN = 2,
	HT_NF_QUEUE = 3,
	HT_NF_REPEAT = 4,
	HT_NF_STOP = 5,
};

/* Where ht_event.hdr starts. */
enum ht_hdr_kind {
	HT_HDR_NONE = 0,   /* nothing captured */
	HT_HDR_ETH = 1,    /* at the MAC header, Ethernet */
	HT_HDR_IP = 2,     /* at the network header (no usable MAC header) */
};

/* Flag bits in ht_event.flags. */
enum ht_event_flags {
	HT_EF_NEW_TRACK = 1,     /* first event of this track: the filter matched here */
	HT_EF_REUSED_SKB = 2,    /* skb address was tracked but the packet identity differed */
	HT_EF_PARSED = 4,        /* the kernel parser reached an IP header */
	HT_EF_FRAG = 8,          /* innermost IP packet is a fragment */
};

/*
 * The event record: one per (packet, probe point) written to the ring buffer.
 * Times are CLOCK_MONOTONIC (bpf_ktime_get_ns).
 */
struct ht_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns() */
	__u64 skb;            /* struct sk_buff address (identity within one kernel) */
	__u64 track;          /* track id given when the filter matched; 0 = none */
	__u32 netns;          /* network namespace inode number */
	__u32 ifindex;        /* skb->dev->ifindex (0 when no device) */
	__u32 len;            /* skb->len */
	__u32 mark;           /* skb->mark */
	__u32 drop_reason;    /* enum skb_drop_reason (kfree_skb only) */
	__u32 cpu;            /* bpf_get_smp_processor_id() */
	__s32 nf_prio;        /* netfilter priority (NF_FIRST / NF_LAST) */
	__u32 identity;       /* hash of the innermost packet's identity fields */
	__u16 probe;          /* enum ht_probe */
	__u8 nf_hook;         /* enum nf_inet_hooks (netfilter probes) */
	__u8 nf_pf;           /* NFPROTO_IPV4 (2) / NFPROTO_IPV6 (10) */
	__u16 protocol;       /* skb->protocol, host byte order */
	__u8 hdr_kind;        /* enum ht_hdr_kind */
	__u8 flags;           /* enum ht_event_flags */
	__u16 hdr_len;        /* valid bytes in hdr */
	__s16 verdict;        /* netfilter verdict where the probe saw one (NF_DROP 0, NF_ACCEPT 1, ...), else HT_VERDICT_NONE */
	__u32 func;           /* --probes all-skb: index of the kernel function in the header's list (attach cookie); 0 otherwise */
	char ifname[HT_IFNAMSIZ];
	char nf_table[HT_NF_TABLE_LEN]; /* netfilter table that decided (ipt_do_table / nft_do_chain probes), else "" */
	char nf_chain[HT_NF_CHAIN_LEN]; /* netfilter chain that decided, else "" */
	__u8 hdr[HT_HDR_LEN]; /* first bytes from the MAC header, or the network header */
};

/*
 * Flow key fields the filter looks at, indexed by enum ht_field. Values are host byte order;
 * an IPv6 address is four 32-bit words, an IPv4 address sits in word 0.
 * The kernel fills them from the innermost headers (or the outermost with --outer).
 */
enum ht_field {
	HT_F_L3 = 0,        /* 4, 6, or 0 when not IP */
	HT_F_PROTO = 1,     /* L4 protocol number after IPv6 extension headers */
	HT_F_PORTS = 2,     /* 1 when sport/dport are valid (TCP/UDP/SCTP, first fragment) */
	HT_F_SPORT = 3,
	HT_F_DPORT = 4,
	HT_F_SADDR0 = 5,
	HT_F_SADDR1 = 6,
	HT_F_SADDR2 = 7,
	HT_F_SADDR3 = 8,
	HT_F_DADDR0 = 9,
	HT_F_DADDR1 = 10,
	HT_F_DADDR2 = 11,
	HT_F_DADDR3 = 12,
	HT_F_MAX = 13,
};

/* One predicate: ((f[field] & mask) in [lo, hi]) != negate. */
struct ht_pred {
	__u32 field;
	__u32 negate;
	__u32 mask;
	__u32 lo;
	__u32 hi;
};

/* An AND of predicates; npreds == 0 is true. */
struct ht_term {
	__u32 npreds;
	struct ht_pred preds[HT_FILTER_MAX_PREDS];
};

/* The filter is an OR of terms (disjunctive normal form); nterms == 0 matches nothing. */
struct ht_filter {
	__u32 nterms;
	struct ht_term terms[HT_FILTER_MAX_TERMS];
};

/* Configuration set by the loader between open and load (const volatile rodata). */
struct ht_config {
	__u32 match_all;        /* 1: no filter, every packet is tracked */
	__u32 outer;            /* 1: filter on the outermost headers, not the innermost */
	__u32 filter_netns;     /* 1: only netns inodes present in the netns_allow map */
	__u32 n_tunnel_ports;
	__u32 empty;            /* 1: every program returns at once (benchmarks: attaching alone) */
	__u16 vxlan_ports[HT_MAX_TUNNEL_PORTS]; /* UDP destination ports carrying VXLAN */
	struct ht_filter filter;
};

#endif /* __HOPTRACE_H */
