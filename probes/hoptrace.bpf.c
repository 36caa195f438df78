// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * hoptrace.bpf.c - per-packet events at each point of the Linux network path.
 *
 * Every program funnels into handle(): it copies the first HT_HDR_LEN header bytes, parses them
 * down to the innermost IP header (through VLAN, VXLAN, Geneve, GRE, IPIP, Flannel UDP), and
 *   - for an skb already tracked, emits an event (unless the packet identity changed, which means
 *     the skb address was freed and reused by another packet);
 *   - for an untracked skb, evaluates the user's filter (a DNF table in rodata) and, on a match,
 *     starts a new track.
 * kfree_skb / consume_skb end a track. Ring buffer overflow is counted per probe in `lost`.
 *
 * Mechanisms per probe point (tracer/catalogue.py chooses, in order): fentry, kprobe, then
 * tp_btf tracepoints and BPF netfilter links. Programs not chosen are never loaded.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "hoptrace.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_TEB 0x6558
#define GENEVE_PORT 6081
#define FLANNEL_UDP_PORT 8285 /* Flannel's udp backend: a bare IP packet in UDP */
#define NF_ACCEPT 1

/* Set by the loader between open and load (tracer/loader.py). */
const volatile struct ht_config ht_cfg = {};

/* Puts the contract's enums into the object's BTF, where user space reads names and values. */
struct {
	enum ht_probe probe;
	enum ht_hdr_kind hdr_kind;
	enum ht_event_flags flags;
	enum ht_field field;
	enum ht_nf_verdict verdict;
} ht_btf_anchor = {};

/* Next track id; shared by all CPUs (atomic add). */
__u64 ht_next_track = 0;

struct ht_track {
	__u64 id;
	__u32 identity;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* skb address */
	__type(value, struct ht_track);
} tracks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_PROBE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* netns inode */
	__type(value, __u8);
} netns_allow SEC(".maps");

struct scratch {
	struct ht_event ev;
	__u32 f[HT_F_MAX];
	__u32 ident;
	__u32 id_off; /* offset in hdr of 8 bytes that tell this packet from the next (see nomatch) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* ---- header parsing on the copied bytes ---------------------------------------------------- */

static __always_inline int rd8(const __u8 *b, __u32 off, __u32 len)
{
	if (off >= len || off >= HT_HDR_LEN)
		return -1;
	return b[off];
}

static __always_inline int rd16(const __u8 *b, __u32 off, __u32 len)
{
	if (off + 2 > len || off > HT_HDR_LEN - 2)
		return -1;
	return (b[off] << 8) | b[off + 1];
}

static __always_inline __u32 rd32(const __u8 *b, __u32 off)
{
	/* callers have checked off + 4 <= len <= HT_HDR_LEN */
	if (off > HT_HDR_LEN - 4)
		return 0;
	return ((__u32)b[off] << 24) | ((__u32)b[off + 1] << 16) | ((__u32)b[off + 2] << 8) |
	       b[off + 3];
}

static __always_inline bool is_vxlan_port(__u16 port)
{
	for (int i = 0; i < HT_MAX_TUNNEL_PORTS; i++) {
		if (i >= ht_cfg.n_tunnel_ports)
			break;
		if (ht_cfg.vxlan_ports[i] == port)
			return true;
	}
	return false;
}

/* Offset of the IP header after an Ethernet header (with up to two VLAN tags) at off, or -1. */
static __always_inline int skip_eth(const __u8 *b, __u32 off, __u32 len)
{
	int et = rd16(b, off + 12, len);
	off += 14;
	for (int i = 0; i < 2; i++) {
		if (et != ETH_P_8021Q && et != ETH_P_8021AD)
			break;
		et = rd16(b, off + 2, len);
		off += 4;
	}
	if (et != ETH_P_IP && et != ETH_P_IPV6)
		return -1;
	return off;
}

/*
 * Parse the IP header at `off` (one encapsulation level). Fills s->f with this level's flow and
 * s->ident with its identity: a hash of fields that do not change along the path (IP ID,
 * fragment, TCP seq/ack, ICMP id/seq, UDP length) — never addresses or ports, which NAT
 * rewrites; 0 when the L4 header was not reached. Returns the offset of the next (inner) IP
 * header when this one carries a tunnel hoptrace follows, else -1.
 *
 * A global function: the verifier checks it once with `off` unknown, instead of once per path
 * through every level of every program.
 */
__noinline int ht_parse_level(struct scratch *s, __u32 off)
{
	const __u8 *b;
	__u32 *f, len, l4, proto, frag = 0, ipid = 0, ident;
	int v;

	if (!s)
		return -1;
	b = s->ev.hdr;
	f = s->f;
	len = s->ev.hdr_len;
	if (len > HT_HDR_LEN || off >= HT_HDR_LEN)
		return -1;
	s->ident = 0;
	v = rd8(b, off, len);
	if (v < 0)
		return -1;
	f[HT_F_PORTS] = 0;
	f[HT_F_SPORT] = 0;
	f[HT_F_DPORT] = 0;
	if ((v >> 4) == 4) {
		__u32 ihl = (v & 0xf) * 4;
		if (ihl < 20 || off + 20 > len)
			return -1;
		proto = b[(off + 9) & (HT_HDR_LEN - 1)];
		ipid = rd16(b, off + 4, len);
		frag = rd16(b, off + 6, len) & 0x3fff; /* MF + offset */
		f[HT_F_L3] = 4;
		s->id_off = off + 4; /* IP ID, fragment word, TTL, protocol (but see below) */
		f[HT_F_SADDR0] = rd32(b, off + 12);
		f[HT_F_DADDR0] = rd32(b, off + 16);
		f[HT_F_SADDR1] = f[HT_F_SADDR2] = f[HT_F_SADDR3] = 0;
		f[HT_F_DADDR1] = f[HT_F_DADDR2] = f[HT_F_DADDR3] = 0;
		l4 = off + ihl;
	} else if ((v >> 4) == 6) {
		if (off + 40 > len)
			return -1;
		proto = b[(off + 6) & (HT_HDR_LEN - 1)];
		f[HT_F_L3] = 6;
		f[HT_F_SADDR0] = rd32(b, off + 8);
		f[HT_F_SADDR1] = rd32(b, off + 12);
		f[HT_F_SADDR2] = rd32(b, off + 16);
		f[HT_F_SADDR3] = rd32(b, off + 20);
		f[HT_F_DADDR0] = rd32(b, off + 24);
		f[HT_F_DADDR1] = rd32(b, off + 28);
		f[HT_F_DADDR2] = rd32(b, off + 32);
		f[HT_F_DADDR3] = rd32(b, off + 36);
		l4 = off + 40;
		/* extension headers: hop-by-hop, routing, fragment, destination options */
		for (int i = 0; i < 4; i++) {
			int nh = rd8(b, l4, len);
			if (proto == 0 || proto == 43 || proto == 60) {
				int hl = rd8(b, l4 + 1, len);
				if (hl < 0 || nh < 0)
					return -1;
				proto = nh;
				l4 += (hl + 1) * 8;
			} else if (proto == 44) {
				int fo = rd16(b, l4 + 2, len);
				if (nh < 0 || fo < 0 || l4 + 8 > len)
					return -1;
				proto = nh;
				frag = fo & 0xfff9; /* offset + M */
				ipid = rd32(b, l4 + 4);
				l4 += 8;
			} else {
				break;
			}
			if (l4 >= HT_HDR_LEN)
				return -1;
		}
	} else {
		return -1;
	}
	f[HT_F_PROTO] = proto;
	/* L4 bytes 4-11: TCP seq and ack; UDP length, checksum and payload; ICMP id, seq and
	 * payload. They tell datagrams of one socket apart where the IP ID does not (an
	 * unconnected UDP socket sends DF packets with ID 0, and IPv6 has none). */
	if (l4 + 12 <= len)
		s->id_off = l4 + 4;
	else if (f[HT_F_L3] == 6)
		s->id_off = off; /* flow label and payload length */
	s->ev.flags |= HT_EF_PARSED;
	if (frag)
		s->ev.flags |= HT_EF_FRAG;
	ident = (ipid * 0x9e3779b1u ^ frag ^ (proto << 24)) | 1;
	s->ident = ident;

	/* non-first fragments carry no L4 header */
	if ((f[HT_F_L3] == 4 && (frag & 0x1fff)) || (f[HT_F_L3] == 6 && (frag & 0xfff8)))
		return -1;
	if (l4 >= HT_HDR_LEN)
		return -1;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		int sp = rd16(b, l4, len), dp = rd16(b, l4 + 2, len);
		if (sp < 0 || dp < 0) {
			s->ident = 0;
			return -1;
		}
		f[HT_F_PORTS] = 1;
		f[HT_F_SPORT] = sp;
		f[HT_F_DPORT] = dp;
		if (proto == IPPROTO_TCP) {
			if (l4 + 12 > len) {
				s->ident = 0;
				return -1;
			}
			s->ident = ((ident * 31 + rd32(b, l4 + 4)) * 31 + rd32(b, l4 + 8)) | 1;
			return -1;
		}
		if (proto != IPPROTO_UDP)
			return -1;
		int ulen = rd16(b, l4 + 4, len);
		if (ulen < 0) {
			s->ident = 0;
			return -1;
		}
		s->ident = (ident * 31 + ulen) | 1;
		if (ht_cfg.outer)
			return -1;
		if (is_vxlan_port(dp)) {
			/* VXLAN (RFC 7348): 8-byte header with the I flag, then an Ethernet frame */
			int fl = rd8(b, l4 + 8, len);
			if (fl < 0 || !(fl & 0x08))
				return -1;
			return skip_eth(b, l4 + 16, len);
		}
		if (dp == FLANNEL_UDP_PORT) {
			int v = rd8(b, l4 + 8, len);
			if (v >= 0 && ((v >> 4) == 4 || (v >> 4) == 6))
				return l4 + 8;
			return -1;
		}
		if (dp == GENEVE_PORT) {
			/* Geneve (RFC 8926): 8 bytes + options, protocol type names the payload */
			int o = rd8(b, l4 + 8, len), pt = rd16(b, l4 + 10, len);
			if (o < 0 || pt < 0)
				return -1;
			if (pt == ETH_P_TEB)
				return skip_eth(b, l4 + 16 + (o & 0x3f) * 4, len);
			if (pt == ETH_P_IP || pt == ETH_P_IPV6)
				return l4 + 16 + (o & 0x3f) * 4;
		}
		return -1;
	}
	if (proto == IPPROTO_ICMP || proto == 58 /* ICMPv6 */) {
		int id = rd16(b, l4 + 4, len), seq = rd16(b, l4 + 6, len);
		int type = rd8(b, l4, len);
		if (id < 0 || seq < 0 || type < 0) {
			s->ident = 0;
			return -1;
		}
		s->ident = ((ident * 31 + ((__u32)id << 16 | seq)) * 31 + type) | 1;
		return -1;
	}
	if (ht_cfg.outer)
		return -1;
	if (proto == IPPROTO_IPIP || proto == IPPROTO_IPV6)
		return l4;
	if (proto == IPPROTO_GRE) {
		/* GRE (RFC 2784/2890): optional checksum, key and sequence words */
		int gf = rd16(b, l4, len), pt = rd16(b, l4 + 2, len);
		__u32 in;
		if (gf < 0 || pt < 0)
			return -1;
		in = l4 + 4 + ((gf & 0x8000) ? 4 : 0) + ((gf & 0x2000) ? 4 : 0) +
		     ((gf & 0x1000) ? 4 : 0);
		if (pt == ETH_P_TEB)
			return skip_eth(b, in, len);
		if (pt == ETH_P_IP || pt == ETH_P_IPV6)
			return in;
	}
	return -1;
}

/* Parse the captured headers down to the innermost IP header; returns the packet identity. */
__noinline int ht_parse(struct scratch *s)
{
	int off = 0;

	if (!s)
		return 0;
	s->ident = 0;
	/* a packet that does not parse must not keep the previous packet's flow key */
	__builtin_memset(s->f, 0, sizeof(s->f));
	if (s->ev.hdr_len > HT_HDR_LEN)
		return 0;
	if (s->ev.hdr_kind == HT_HDR_ETH)
		off = skip_eth(s->ev.hdr, 0, s->ev.hdr_len);
	else if (s->ev.hdr_kind != HT_HDR_IP)
		return 0;
	for (int depth = 0; depth < HT_MAX_DEPTH && off >= 0; depth++)
		off = ht_parse_level(s, off);
	return s->ident;
}

static __always_inline bool filter_match(const __u32 *f)
{
	if (ht_cfg.match_all)
		return true;
	for (int t = 0; t < HT_FILTER_MAX_TERMS; t++) {
		bool ok = true;

		if (t >= ht_cfg.filter.nterms)
			break;
		for (int p = 0; p < HT_FILTER_MAX_PREDS; p++) {
			__u32 field, v;
			bool in;

			if (p >= ht_cfg.filter.terms[t].npreds)
				break;
			field = ht_cfg.filter.terms[t].preds[p].field;
			if (field >= HT_F_MAX)
				return false;
			v = f[field] & ht_cfg.filter.terms[t].preds[p].mask;
			in = v >= ht_cfg.filter.terms[t].preds[p].lo &&
			     v <= ht_cfg.filter.terms[t].preds[p].hi;
			if (in == !!ht_cfg.filter.terms[t].preds[p].negate) {
				ok = false;
				break;
			}
		}
		if (ok)
			return true;
	}
	return false;
}

__noinline int ht_filter(struct scratch *s)
{
	if (!s)
		return 0;
	return filter_match(s->f);
}

/* ---- the common handler -------------------------------------------------------------------- */

/*
 * The last netfilter decision other than ACCEPT that a table probe saw for a tracked packet, per
 * CPU (ipt_do_table / ip6t_do_table / nft_do_chain, below). The table event carries it, and so
 * does the kfree_skb that follows on the same CPU for the same skb (nf_hook_slow frees a dropped
 * packet right after the table returns NF_DROP): the drop event names its table and chain.
 */
struct nf_decision {
	__u64 skb;
	__s16 verdict;
	__u8 hook;
	__u8 pf;
	__u32 pad;
	char table[HT_NF_TABLE_LEN];
	char chain[HT_NF_CHAIN_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nf_decision);
} nf_decisions SEC(".maps");

/*
 * The nft_do_chain call running on this CPU (its entry program writes it, its exit clears it).
 * Since 2024 nf_tables frees a dropped packet itself (NF_DROP_REASON: kfree_skb_reason inside
 * nft_do_chain, which then returns NF_STOLEN; in 6.12 and later, and in the 6.1 stable series
 * the VM matrix runs), so at its return the skb is gone and the kfree_skb came first: that
 * kfree_skb takes table and chain from here. A nested call overwrites the slot; the outer
 * call's drop then names no table (skb mismatch), never a wrong one.
 */
struct nft_inflight {
	__u64 skb;
	__u64 chain; /* struct nft_chain *: the base chain */
	__u64 state; /* const struct nf_hook_state * */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nft_inflight);
} nft_inflights SEC(".maps");

static __always_inline struct nf_decision *nft_inflight_decision(__u64 key);

struct hook_info {
	__u16 probe;
	__u8 nf_hook;
	__u8 nf_pf;
	__s32 nf_prio;
	__u32 drop_reason;
	struct net_device *dev; /* overrides skb->dev when set (netfilter in/out) */
	struct net *net;        /* netns when known from the hook state */
	__u32 func;             /* --probes all-skb: the function's index (attach cookie) */
	struct nf_decision *nfv; /* a table probe's decision (verdict, table, chain) */
	__u8 accepted;          /* the kernel returned NF_ACCEPT for the whole hook (nf_hook_slow) */
};

/*
 * Field reads. Programs whose skb is a typed kernel pointer (tp_btf, fentry, netfilter) read
 * it with plain loads, which the verifier checks against BTF and clang relocates (CO-RE);
 * kprobes get an untyped register and must go through bpf_probe_read_kernel. `direct` is a
 * compile-time constant in every caller, so each program keeps only one of the two forms.
 * A helper call costs 10-20 ns; a load, about one.
 */
#define RD(direct, plain, ...) ((direct) ? (plain) : BPF_CORE_READ(__VA_ARGS__))

/*
 * The no-match cache: per CPU, direct-mapped by skb address, the packets whose filter decision
 * was "no". The decision is made once, at the first probe point a packet reaches; every later
 * point on the same CPU (a packet's whole path through veth, bridge and VXLAN stays on one CPU
 * unless RPS moves it) answers from here instead of copying and parsing headers again.
 * sk_buffs and their data buffers are both reused, LIFO, and not every free has a tracepoint
 * (__kfree_skb, GRO merges), so a slot names the packet three ways: skb address, skb->head
 * (without it, stale bytes of a freed buffer would be compared), and 8 bytes of the innermost
 * headers read back at their kernel address (L4 bytes 4-11, or the IPv4 ID word). Encapsulation
 * leaves those bytes where they were; when NAT or routing changes them, the only cost is a new
 * decision. kfree_skb/consume_skb clear the slot.
 */
#define HT_NOMATCH_SLOTS 1024

struct nomatch_slot {
	__u64 skb;
	__u64 head;
	__u64 id_addr; /* kernel address of the identity bytes */
	__u64 id_val;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_NOMATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct nomatch_slot);
} nomatch SEC(".maps");

static __always_inline struct nomatch_slot *nomatch_slot(__u64 skb)
{
	/* sk_buffs come from a slab of 256-byte objects: the low 8 bits carry nothing. The hash
	 * needs bits 8..27 only: a 32-bit move makes them a scalar for the verifier, which refuses
	 * shifts on a pointer register (clang may shift the skb pointer itself: 6.1 refused
	 * fx_nft_do_chain with "R2 32-bit pointer arithmetic prohibited"). */
	__u32 lo, i;

	asm volatile("%[lo] = %[p]" : [lo] "=w"(lo) : [p] "w"((__u32)skb));
	i = ((lo >> 8) ^ (lo >> 18)) & (HT_NOMATCH_SLOTS - 1);
	return bpf_map_lookup_elem(&nomatch, &i);
}

static __always_inline __u32 netns_of(struct net_device *dev, struct sk_buff *skb, bool direct)
{
	if (dev)
		return RD(direct, dev->nd_net.net->ns.inum, dev, nd_net.net, ns.inum);
	struct sock *sk = RD(direct, skb->sk, skb, sk);
	if (sk)
		return RD(direct, sk->__sk_common.skc_net.net->ns.inum, sk,
			  __sk_common.skc_net.net, ns.inum);
	return 0;
}

static __always_inline int handle(struct sk_buff *skb, struct hook_info *hi, const bool direct)
{
	__u32 zero = 0, netns, hlen = 0;
	__u64 key = (__u64)skb;
	struct scratch *s;
	struct ht_event *e;
	struct ht_track *tr, ntr = {};
	struct nomatch_slot *nm;
	struct net_device *dev;
	unsigned char *head;
	__u16 mh, nh;
	__u32 tail;
	int start = -1;
	bool is_free = hi->probe == HT_PROBE_KFREE_SKB || hi->probe == HT_PROBE_CONSUME_SKB;

	if (ht_cfg.empty || !skb)
		return 0;
	head = RD(direct, skb->head, skb, head);

	/* Decided "no" already: the common case for traffic the user did not ask about. */
	nm = nomatch_slot(key);
	if (nm && nm->skb == key && nm->head == (__u64)head) {
		__u64 v;

		if (!bpf_probe_read_kernel(&v, sizeof(v), (void *)nm->id_addr) && v == nm->id_val) {
			if (is_free)
				nm->skb = 0;
			return 0;
		}
	}

	tr = bpf_map_lookup_elem(&tracks, &key);
	/* Points that only follow packets already matched elsewhere: return before any copy or
	 * parse (consumed packets; leaving a netfilter hook). */
	if (!tr && (hi->probe == HT_PROBE_CONSUME_SKB || hi->probe == HT_PROBE_NF_LAST || hi->nfv))
		return 0;

	dev = hi->dev ? hi->dev : RD(direct, skb->dev, skb, dev);
	struct net *net = hi->net; /* a local: CO-RE must not relocate hook_info's fields */
	netns = net ? RD(direct, net->ns.inum, net, ns.inum) : netns_of(dev, skb, direct);
	if (ht_cfg.filter_netns && !(tr && netns == 0) && !bpf_map_lookup_elem(&netns_allow, &netns))
		return 0;

	s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	e = &s->ev;
	e->flags = 0;
	e->verdict = HT_VERDICT_NONE;
	e->func = hi->func;
	e->nf_table[0] = 0;
	e->nf_chain[0] = 0;
	{
		struct nf_decision *d = hi->nfv;

		if (!d && tr && hi->probe == HT_PROBE_KFREE_SKB) {
			d = bpf_map_lookup_elem(&nf_decisions, &zero);
			if (d && d->skb != key)
				d = nft_inflight_decision(key); /* freed inside nft_do_chain */
		}
		if (d) {
			e->verdict = d->verdict;
			__builtin_memcpy(e->nf_table, d->table, HT_NF_TABLE_LEN);
			__builtin_memcpy(e->nf_chain, d->chain, HT_NF_CHAIN_LEN);
			if (!hi->nfv) {
				/* the drop this decision announced: name its hook on the drop event */
				hi->nf_hook = d->hook;
				hi->nf_pf = d->pf;
				d->skb = 0;
			}
		} else if (hi->accepted) {
			e->verdict = HT_NF_ACCEPT;
		}
	}

	/* headers: from the MAC header when it is set and Ethernet-sized, else the network header */
	mh = RD(direct, skb->mac_header, skb, mac_header);
	nh = RD(direct, skb->network_header, skb, network_header);
	tail = RD(direct, skb->tail, skb, tail);
	e->hdr_kind = HT_HDR_NONE;
	if (mh != (__u16)~0U && nh >= mh && (nh - mh == 14 || nh - mh == 18 || nh - mh == 22)) {
		start = mh;
		e->hdr_kind = HT_HDR_ETH;
	} else if (nh != (__u16)~0U && nh != 0) {
		start = nh;
		e->hdr_kind = HT_HDR_IP;
	}
	if (start >= 0 && tail > (__u32)start) {
		hlen = tail - start;
		if (hlen > HT_HDR_LEN)
			hlen = HT_HDR_LEN;
		if (bpf_probe_read_kernel(e->hdr, hlen & (2 * HT_HDR_LEN - 1), head + start))
			hlen = 0;
	}
	if (hlen == 0)
		e->hdr_kind = HT_HDR_NONE;
	e->hdr_len = hlen;

	/* parse to the flow key and the packet identity */
	__u32 ident = ht_parse(s);

	if (tr && ident && tr->identity && ident != tr->identity) {
		/* the skb address was freed without our seeing it and now holds another packet */
		bpf_map_delete_elem(&tracks, &key);
		tr = NULL;
		e->flags |= HT_EF_REUSED_SKB;
	}
	if (tr) {
		e->track = tr->id;
		if (!tr->identity && ident)
			tr->identity = ident;
	} else {
		if (hi->probe == HT_PROBE_CONSUME_SKB)
			return 0;
		if (!ht_filter(s)) {
			/* remember "no" only for a decision taken on parsed headers */
			__u32 io = s->id_off;
			if (nm && !is_free && (e->flags & HT_EF_PARSED) && io <= HT_HDR_LEN - 8 &&
			    io + 8 <= hlen) {
				nm->skb = key;
				nm->head = (__u64)head;
				nm->id_addr = (__u64)head + start + io;
				__builtin_memcpy(&nm->id_val, &e->hdr[io], 8);
			}
			return 0;
		}
		e->track = __sync_fetch_and_add(&ht_next_track, 1) + 1;
		e->flags |= HT_EF_NEW_TRACK;
		if (!is_free) {
			ntr.id = e->track;
			ntr.identity = ident;
			bpf_map_update_elem(&tracks, &key, &ntr, BPF_ANY);
		}
	}

	e->ts_ns = bpf_ktime_get_ns();
	e->skb = key;
	e->netns = netns;
	if (dev) {
		e->ifindex = RD(direct, dev->ifindex, dev, ifindex);
		if (direct)
			__builtin_memcpy(e->ifname, dev->name, HT_IFNAMSIZ);
		else
			BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	} else {
		e->ifindex = 0;
		e->ifname[0] = 0;
	}
	e->len = RD(direct, skb->len, skb, len);
	e->mark = RD(direct, skb->mark, skb, mark);
	e->protocol = bpf_ntohs(RD(direct, skb->protocol, skb, protocol));
	e->cpu = bpf_get_smp_processor_id();
	e->probe = hi->probe;
	e->nf_hook = hi->nf_hook;
	e->nf_pf = hi->nf_pf;
	e->nf_prio = hi->nf_prio;
	e->drop_reason = hi->drop_reason;
	e->identity = ident;

	if (is_free)
		bpf_map_delete_elem(&tracks, &key);

	/* Wake the consumer only when the ring is filling up; it polls on a short timer otherwise
	 * (waking per event costs far more than the event: see docs/design.md). */
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), flags)) {
		__u32 p = hi->probe;
		__u64 *cnt = bpf_map_lookup_elem(&lost, &p);
		if (cnt)
			*cnt += 1;
	}
	return 0;
}

/* ---- tracepoints (tp_btf) ------------------------------------------------------------------ */

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tp_netif_receive_skb, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_NETIF_RECEIVE_SKB };
	return handle(skb, &hi, true);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_net_dev_queue, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_NET_DEV_QUEUE };
	return handle(skb, &hi, true);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct hook_info hi = { .probe = HT_PROBE_KFREE_SKB, .drop_reason = reason };
	return handle(skb, &hi, true);
}

SEC("tp_btf/consume_skb")
int BPF_PROG(tp_consume_skb, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_CONSUME_SKB };
	return handle(skb, &hi, true);
}

/* ---- netfilter BPF links (prog type BPF_PROG_TYPE_NETFILTER, set by the loader) ----------- */

static __always_inline int nf_handle(struct bpf_nf_ctx *ctx, __u16 probe)
{
	const struct nf_hook_state *st = ctx->state;
	struct hook_info hi = { .probe = probe };
	__u8 hook;

	if (ht_cfg.empty)
		return NF_ACCEPT;
	hook = st->hook;

	hi.nf_hook = hook;
	hi.nf_pf = st->pf;
	hi.nf_prio = probe == HT_PROBE_NF_FIRST ? -0x7fffffff : 0x7ffffffe;
	hi.net = st->net;
	/* NF_INET_LOCAL_OUT (3) and POST_ROUTING (4) have an output device; the others an input */
	hi.dev = hook >= 3 ? st->out : st->in;
	handle((struct sk_buff *)ctx->skb, &hi, true);
	return NF_ACCEPT;
}

SEC("netfilter")
int nf_first(struct bpf_nf_ctx *ctx)
{
	return nf_handle(ctx, HT_PROBE_NF_FIRST);
}

SEC("netfilter")
int nf_last(struct bpf_nf_ctx *ctx)
{
	return nf_handle(ctx, HT_PROBE_NF_LAST);
}

/* ---- netfilter hooks from nf_hook_slow (kernels without BPF netfilter links, e.g. 6.1) ----
 * int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state,
 *                  const struct nf_hook_entries *e, unsigned int s)
 * runs every hook function of one hook. Entry: the packet enters the hook (NF_FIRST). Return 1:
 * every hook function accepted it (NF_LAST). Otherwise it was dropped (kfree_skb reports it,
 * with its reason) or stolen/queued: the skb must not be read then, it may be freed. Only IPv4
 * and IPv6, like the netfilter links (bridged IPv4 shows in the IPv4 hooks via br_netfilter). */

static __always_inline int nfs_handle(struct sk_buff *skb, struct nf_hook_state *st, __u16 probe,
				      const bool direct)
{
	struct hook_info hi = { .probe = probe };
	__u8 pf = RD(direct, st->pf, st, pf);
	__u8 hook = RD(direct, st->hook, st, hook);

	if (pf != 2 /* NFPROTO_IPV4 */ && pf != 10 /* NFPROTO_IPV6 */)
		return 0;
	hi.nf_hook = hook;
	hi.nf_pf = pf;
	hi.nf_prio = probe == HT_PROBE_NF_FIRST ? -0x7fffffff : 0x7ffffffe;
	hi.net = RD(direct, st->net, st, net);
	hi.dev = hook >= 3 ? RD(direct, st->out, st, out) : RD(direct, st->in, st, in);
	hi.accepted = probe == HT_PROBE_NF_LAST; /* only ever called for a return of 1 */
	return handle(skb, &hi, direct);
}

SEC("fentry/nf_hook_slow")
int BPF_PROG(fe_nf_hook_slow, struct sk_buff *skb, struct nf_hook_state *state)
{
	return nfs_handle(skb, state, HT_PROBE_NF_FIRST, true);
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(fx_nf_hook_slow, struct sk_buff *skb, struct nf_hook_state *state, const void *e,
	     unsigned int s, int ret)
{
	if (ret != 1)
		return 0;
	return nfs_handle(skb, state, HT_PROBE_NF_LAST, true);
}

SEC("kprobe/nf_hook_slow")
int BPF_KPROBE(kp_nf_hook_slow, struct sk_buff *skb, struct nf_hook_state *state)
{
	return nfs_handle(skb, state, HT_PROBE_NF_FIRST, false);
}

/* ---- kretprobe fallback: arguments saved at entry, per CPU --------------------------------
 * A kretprobe sees only the return value. Its companion kprobe (kpe_<fn>) pushes the arguments
 * on a small per-CPU stack and the kretprobe (kr_<fn>) pops them: netfilter runs nested on one
 * CPU (a softirq's hook inside a process's LOCAL_OUT; nft_do_chain inside nf_hook_slow), which a
 * stack follows and a map keyed by task would not. A frame that does not match (a missed
 * return, a task that migrated between entry and return) empties the stack: that call is lost,
 * never misattributed. */
#define HT_ARGSTACK_DEPTH 8

struct arg_frame {
	__u64 fn; /* the probe id of the function, to check pops */
	__u64 a[3];
};

struct arg_stack {
	__u32 depth;
	__u32 pad;
	struct arg_frame f[HT_ARGSTACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct arg_stack);
} arg_stacks SEC(".maps");

static __always_inline void args_push(__u64 fn, __u64 a0, __u64 a1, __u64 a2)
{
	__u32 zero = 0;
	struct arg_stack *st = bpf_map_lookup_elem(&arg_stacks, &zero);
	__u32 d;

	if (!st)
		return;
	d = st->depth;
	if (d >= HT_ARGSTACK_DEPTH) {
		st->depth = 0; /* unbalanced: start over */
		return;
	}
	d &= HT_ARGSTACK_DEPTH - 1; /* for the verifier: clang may drop the check above */
	st->f[d].fn = fn;
	st->f[d].a[0] = a0;
	st->f[d].a[1] = a1;
	st->f[d].a[2] = a2;
	st->depth = d + 1;
}

static __always_inline bool args_pop(__u64 fn, __u64 *a)
{
	__u32 zero = 0;
	struct arg_stack *st = bpf_map_lookup_elem(&arg_stacks, &zero);
	__u32 d;

	if (!st)
		return false;
	d = st->depth;
	if (d == 0 || d > HT_ARGSTACK_DEPTH)
		return false;
	d = (d - 1) & (HT_ARGSTACK_DEPTH - 1); /* masked: the verifier needs a bound it can see */
	if (st->f[d].fn != fn) {
		st->depth = 0;
		return false;
	}
	a[0] = st->f[d].a[0];
	a[1] = st->f[d].a[1];
	a[2] = st->f[d].a[2];
	st->depth = d;
	return true;
}

SEC("kprobe/nf_hook_slow")
int BPF_KPROBE(kpe_nf_hook_slow, struct sk_buff *skb, struct nf_hook_state *state)
{
	args_push(HT_PROBE_NF_LAST, (__u64)skb, (__u64)state, 0);
	return 0;
}

SEC("kretprobe/nf_hook_slow")
int BPF_KRETPROBE(kr_nf_hook_slow, int ret)
{
	__u64 a[3];

	if (!args_pop(HT_PROBE_NF_LAST, a) || ret != 1)
		return 0;
	return nfs_handle((struct sk_buff *)a[0], (struct nf_hook_state *)a[1], HT_PROBE_NF_LAST,
			  false);
}

/* ---- the table and chain that decided ------------------------------------------------------
 * unsigned int ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
 *   (6.1+; ip6t_do_table the same): priv is the struct xt_table; x_tables handles jumps to
 *   user chains inside, so the chain recorded is the built-in chain of the hook.
 * unsigned int nft_do_chain(struct nft_pktinfo *pkt, void *priv)
 *   priv is the base chain (struct nft_chain); jumps and gotos run inside too (a jump stack, no
 *   call): again the base chain. The verdict is the base chain's, after its policy.
 * Only for tracked packets, and only verdicts other than ACCEPT (nf_hook_last says that for the
 * whole hook) and STOLEN (the skb may be gone): in practice DROP and QUEUE. At return the
 * packet still exists: nf_hook_slow frees a dropped one after the table returns. */
#define NF_VERDICT_MASK 0xff
#define NF_STOLEN 2

static __always_inline bool nf_worth(__u32 ret, struct sk_buff *skb)
{
	__u32 v = ret & NF_VERDICT_MASK;
	__u64 key = (__u64)skb;

	if (v == NF_ACCEPT || v == NF_STOLEN || !skb)
		return false;
	return bpf_map_lookup_elem(&tracks, &key) != NULL;
}

static __always_inline struct nf_decision *nf_decision_new(struct sk_buff *skb, __u32 ret)
{
	__u32 zero = 0;
	struct nf_decision *d = bpf_map_lookup_elem(&nf_decisions, &zero);

	if (!d)
		return NULL;
	d->skb = (__u64)skb;
	d->verdict = ret & NF_VERDICT_MASK;
	d->table[0] = 0;
	d->chain[0] = 0;
	return d;
}

/* the built-in chain of an x_tables hook (iptables' names) */
static __always_inline void xt_chain(char *dst, __u8 hook)
{
	switch (hook) {
	case 0: __builtin_memcpy(dst, "PREROUTING", 11); break;
	case 1: __builtin_memcpy(dst, "INPUT", 6); break;
	case 2: __builtin_memcpy(dst, "FORWARD", 8); break;
	case 3: __builtin_memcpy(dst, "OUTPUT", 7); break;
	case 4: __builtin_memcpy(dst, "POSTROUTING", 12); break;
	default: dst[0] = 0;
	}
}

static __always_inline int nf_decided(struct sk_buff *skb, const struct nf_hook_state *st,
				      struct nf_decision *d, __u16 probe, bool xt, const bool direct)
{
	struct hook_info hi = { .probe = probe, .nfv = d };
	__u8 pf = RD(direct, st->pf, st, pf);
	__u8 hook = RD(direct, st->hook, st, hook);

	if (pf != 2 /* NFPROTO_IPV4 */ && pf != 10 /* NFPROTO_IPV6 */)
		return 0;
	if (xt)
		xt_chain(d->chain, hook);
	d->hook = hook;
	d->pf = pf;
	hi.nf_hook = hook;
	hi.nf_pf = pf;
	hi.net = RD(direct, st->net, st, net);
	hi.dev = hook >= 3 ? RD(direct, st->out, st, out) : RD(direct, st->in, st, in);
	return handle(skb, &hi, direct);
}

static __always_inline int xt_decided(void *priv, struct sk_buff *skb,
				      const struct nf_hook_state *st, __u32 ret, __u16 probe,
				      const bool direct)
{
	struct xt_table *t = priv;
	struct nf_decision *d;

	if (!nf_worth(ret, skb))
		return 0;
	d = nf_decision_new(skb, ret);
	if (!d)
		return 0;
	BPF_CORE_READ_STR_INTO(&d->table, t, name);
	return nf_decided(skb, st, d, probe, true, direct);
}

static __always_inline int nft_decided(struct nft_pktinfo *pkt, void *priv, __u32 ret,
				       const bool direct)
{
	struct nft_chain *c = priv;
	struct sk_buff *skb = RD(direct, pkt->skb, pkt, skb);
	const struct nf_hook_state *st = RD(direct, pkt->state, pkt, state);
	struct nf_decision *d;
	const char *name;

	if (!nf_worth(ret, skb))
		return 0;
	d = nf_decision_new(skb, ret);
	if (!d)
		return 0;
	name = BPF_CORE_READ(c, table, name);
	bpf_probe_read_kernel_str(d->table, sizeof(d->table), name);
	name = BPF_CORE_READ(c, name);
	bpf_probe_read_kernel_str(d->chain, sizeof(d->chain), name);
	return nf_decided(skb, st, d, HT_PROBE_NFT_DO_CHAIN, false, direct);
}

static __always_inline void nft_enter(struct sk_buff *skb, void *chain, const void *state)
{
	__u32 zero = 0;
	struct nft_inflight *f = bpf_map_lookup_elem(&nft_inflights, &zero);

	if (!f)
		return;
	f->skb = (__u64)skb;
	f->chain = (__u64)chain;
	f->state = (__u64)state;
}

static __always_inline void nft_leave(struct sk_buff *skb)
{
	__u32 zero = 0;
	struct nft_inflight *f = bpf_map_lookup_elem(&nft_inflights, &zero);

	if (f && f->skb == (__u64)skb)
		f->skb = 0;
}

/* the decision of the nft_do_chain call that is freeing ``key`` right now, or NULL */
static __always_inline struct nf_decision *nft_inflight_decision(__u64 key)
{
	__u32 zero = 0;
	struct nft_inflight *f = bpf_map_lookup_elem(&nft_inflights, &zero);
	struct nf_decision *d;
	struct nft_chain *c;
	const struct nf_hook_state *st;
	const char *name;

	if (!f || !key || f->skb != key)
		return NULL;
	d = bpf_map_lookup_elem(&nf_decisions, &zero);
	if (!d)
		return NULL;
	c = (struct nft_chain *)f->chain;
	st = (const struct nf_hook_state *)f->state;
	f->skb = 0;
	d->skb = key;
	d->verdict = HT_NF_DROP;
	d->hook = BPF_CORE_READ(st, hook);
	d->pf = BPF_CORE_READ(st, pf);
	name = BPF_CORE_READ(c, table, name);
	bpf_probe_read_kernel_str(d->table, sizeof(d->table), name);
	name = BPF_CORE_READ(c, name);
	bpf_probe_read_kernel_str(d->chain, sizeof(d->chain), name);
	return d;
}

SEC("fentry/nft_do_chain")
int BPF_PROG(fe_nft_do_chain, struct nft_pktinfo *pkt, void *priv)
{
	nft_enter(pkt->skb, priv, pkt->state);
	return 0;
}

SEC("fexit/ipt_do_table")
int BPF_PROG(fx_ipt_do_table, void *priv, struct sk_buff *skb, const struct nf_hook_state *state,
	     unsigned int ret)
{
	return xt_decided(priv, skb, state, ret, HT_PROBE_IPT_DO_TABLE, true);
}

SEC("fexit/ip6t_do_table")
int BPF_PROG(fx_ip6t_do_table, void *priv, struct sk_buff *skb, const struct nf_hook_state *state,
	     unsigned int ret)
{
	return xt_decided(priv, skb, state, ret, HT_PROBE_IP6T_DO_TABLE, true);
}

SEC("fexit/nft_do_chain")
int BPF_PROG(fx_nft_do_chain, struct nft_pktinfo *pkt, void *priv, unsigned int ret)
{
	nft_leave(pkt->skb);
	return nft_decided(pkt, priv, ret, true);
}

/* kretprobe forms: kpe_<fn> saves the arguments, kr_<fn> decides */
#define XT_KRETPROBES(name, probe_id)                                              \
	SEC("kprobe/" #name)                                                       \
	int BPF_KPROBE(kpe_##name, void *priv, struct sk_buff *skb, void *state)   \
	{                                                                          \
		args_push(probe_id, (__u64)priv, (__u64)skb, (__u64)state);        \
		return 0;                                                          \
	}                                                                          \
	SEC("kretprobe/" #name)                                                    \
	int BPF_KRETPROBE(kr_##name, unsigned int ret)                             \
	{                                                                          \
		__u64 a[3];                                                        \
		if (!args_pop(probe_id, a))                                        \
			return 0;                                                  \
		return xt_decided((void *)a[0], (struct sk_buff *)a[1],            \
				  (const struct nf_hook_state *)a[2], ret, probe_id, false); \
	}

XT_KRETPROBES(ipt_do_table, HT_PROBE_IPT_DO_TABLE)
XT_KRETPROBES(ip6t_do_table, HT_PROBE_IP6T_DO_TABLE)

SEC("kprobe/nft_do_chain")
int BPF_KPROBE(kpe_nft_do_chain, void *pkt, void *priv)
{
	struct nft_pktinfo *p = pkt;

	args_push(HT_PROBE_NFT_DO_CHAIN, (__u64)pkt, (__u64)priv, 0);
	nft_enter(BPF_CORE_READ(p, skb), priv, BPF_CORE_READ(p, state));
	return 0;
}

SEC("kretprobe/nft_do_chain")
int BPF_KRETPROBE(kr_nft_do_chain, unsigned int ret)
{
	__u64 a[3];

	if (!args_pop(HT_PROBE_NFT_DO_CHAIN, a))
		return 0;
	nft_leave(BPF_CORE_READ((struct nft_pktinfo *)a[0], skb));
	return nft_decided((struct nft_pktinfo *)a[0], (void *)a[1], ret, false);
}

/* ---- function probes: fentry first, kprobe second (where the kernel allows them) ----------- */

/* FUNC_PROBES(name, fn, id): fe_<name> and kp_<name> on kernel function fn(struct sk_buff *, ...) */
#define FUNC_PROBES(name, fn, probe_id)                                            \
	SEC("fentry/" #fn)                                                         \
	int BPF_PROG(fe_##name, struct sk_buff *skb)                               \
	{                                                                          \
		struct hook_info hi = { .probe = probe_id };                       \
		return handle(skb, &hi, true);                                     \
	}                                                                          \
	SEC("kprobe/" #fn)                                                         \
	int BPF_KPROBE(kp_##name, struct sk_buff *skb)                             \
	{                                                                          \
		struct hook_info hi = { .probe = probe_id };                       \
		return handle(skb, &hi, false);                                    \
	}

/* The "ip_rcv" point is ip_rcv_core: ip_rcv and the list path (ip_list_rcv, taken after GRO
 * cells, e.g. by packets a VXLAN device decapsulated) both call it; ip_rcv alone misses the
 * latter (found in the VM kernel matrix, docs/kernels.md). */
FUNC_PROBES(ip_rcv, ip_rcv_core, HT_PROBE_IP_RCV)
FUNC_PROBES(br_pass_frame_up, br_pass_frame_up, HT_PROBE_BR_PASS_FRAME_UP)

/* br_forward(const struct net_bridge_port *to, struct sk_buff *skb, ...) */
SEC("fentry/br_forward")
int BPF_PROG(fe_br_forward, void *to, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_BR_FORWARD };
	return handle(skb, &hi, true);
}

SEC("kprobe/br_forward")
int BPF_KPROBE(kp_br_forward, void *to, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_BR_FORWARD };
	return handle(skb, &hi, false);
}

/* br_handle_frame(struct sk_buff **pskb): the bridge's rx_handler. 6.1 and 6.12 refuse a typed
 * ctx read of a pointer to a pointer ("arg0 type PTR is not a struct"): take the argument
 * untyped with bpf_get_func_arg (5.17+) and read the skb pointer through it. */
SEC("fentry/br_handle_frame")
int fe_br_handle_frame(void *ctx)
{
	struct hook_info hi = { .probe = HT_PROBE_BR_HANDLE_FRAME };
	struct sk_buff *skb = NULL;
	__u64 pskb = 0;

	if (bpf_get_func_arg(ctx, 0, &pskb))
		return 0;
	bpf_probe_read_kernel(&skb, sizeof(skb), (void *)pskb);
	return handle(skb, &hi, false);
}

SEC("kprobe/br_handle_frame")
int BPF_KPROBE(kp_br_handle_frame, struct sk_buff **pskb)
{
	struct hook_info hi = { .probe = HT_PROBE_BR_HANDLE_FRAME };
	struct sk_buff *skb = NULL;
	bpf_probe_read_kernel(&skb, sizeof(skb), pskb);
	return handle(skb, &hi, false);
}

/* ---- --probes all-skb: every kernel function with a struct sk_buff * argument --------------
 * pwru's design: the loader finds the functions in BTF (vmlinux and modules) and attaches the
 * program of the skb's argument position (1-5) to each, with the function's index in the trace
 * header's list as the attach cookie: one kprobe.multi link per position where the kernel has
 * kprobe.multi, else one kprobe per function. Everything after that is handle(), shared with
 * the curated points (the same filter, tracks, nomatch cache and ring buffer).
 *
 * After kfree_skb/consume_skb, the free path itself calls functions with the skb (__kfree_skb,
 * skb_release_data, sock_wfree, kfree_skbmem...). The track has ended there, so handle() would
 * evaluate the filter on the freed packet's bytes and start a phantom track. The free
 * tracepoints below remember each freed (skb, head) per CPU; until a curated point tracks that
 * skb again, the all-skb programs ignore it. */

struct allskb_freed {
	__u64 skb;
	__u64 head;
};

#define HT_ALLSKB_FREED_SLOTS 256

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_ALLSKB_FREED_SLOTS);
	__type(key, __u32);
	__type(value, struct allskb_freed);
} allskb_freed SEC(".maps");

static __always_inline struct allskb_freed *allskb_freed_slot(__u64 skb)
{
	__u32 i = (__u32)((skb >> 8) ^ (skb >> 16)) & (HT_ALLSKB_FREED_SLOTS - 1);
	return bpf_map_lookup_elem(&allskb_freed, &i);
}

static __always_inline void allskb_note_free(struct sk_buff *skb)
{
	struct allskb_freed *f = allskb_freed_slot((__u64)skb);

	if (f) {
		f->skb = (__u64)skb;
		f->head = (__u64)skb->head;
	}
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_allskb_kfree, struct sk_buff *skb)
{
	allskb_note_free(skb);
	return 0;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(tp_allskb_consume, struct sk_buff *skb)
{
	allskb_note_free(skb);
	return 0;
}

static __always_inline int allskb(struct pt_regs *ctx, struct sk_buff *skb)
{
	struct hook_info hi = { .probe = HT_PROBE_FUNC };
	struct allskb_freed *f;
	__u64 key = (__u64)skb;

	if (!skb)
		return 0;
	f = allskb_freed_slot(key);
	if (f && f->skb == key) {
		if (f->head == (__u64)BPF_CORE_READ(skb, head) && !bpf_map_lookup_elem(&tracks, &key))
			return 0; /* on the free path, or not yet seen anew by a curated point */
		f->skb = 0;
	}
	hi.func = bpf_get_attach_cookie(ctx);
	return handle(skb, &hi, false);
}

/* ALLSKB(n): for functions whose first struct sk_buff * is argument n, kp_allskb_m<n>
 * (kprobe.multi) and kp_allskb_<n> (kprobe); "kp_" and "tp_" like every hoptrace program name. */
#define ALLSKB(n)                                                                  \
	SEC("kprobe.multi")                                                        \
	int kp_allskb_m##n(struct pt_regs *ctx)                                  \
	{                                                                          \
		return allskb(ctx, (struct sk_buff *)PT_REGS_PARM##n(ctx));        \
	}                                                                          \
	SEC("kprobe")                                                              \
	int kp_allskb_##n(struct pt_regs *ctx)                                 \
	{                                                                          \
		return allskb(ctx, (struct sk_buff *)PT_REGS_PARM##n(ctx));        \
	}

ALLSKB(1)
ALLSKB(2)
ALLSKB(3)
ALLSKB(4)
ALLSKB(5)
