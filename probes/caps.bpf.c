// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * caps.bpf.c - empty programs, one per attach mechanism, that tracer/capabilities.py loads and
 * attaches (and detaches at once) to learn what the running kernel allows, with its error.
 * The attach target of each is set at run time.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("fentry/ip_rcv")
int caps_fentry(void *ctx)
{
	return 0;
}

SEC("fexit/ip_rcv")
int caps_fexit(void *ctx)
{
	return 0;
}

SEC("kprobe/ip_rcv")
int caps_kprobe(void *ctx)
{
	return 0;
}

SEC("kprobe.multi")
int caps_kprobe_multi(void *ctx)
{
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int caps_tp_btf(void *ctx)
{
	return 0;
}

SEC("netfilter")
int caps_netfilter(void *ctx)
{
	return 1; /* NF_ACCEPT */
}
