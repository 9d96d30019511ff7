/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reference for the cold-cache cases of bench/dataplane.py: the least a
 * filter with a large exact-source set must do per packet. Ethernet + IPv4
 * (bounds checked), one lookup of the source in a hash of LF_ENTRIES
 * entries with the same value layout as Breakwater's deny_v4 (struct
 * bw_deny_entry, 32 bytes), and on a hit one atomic packet count, then
 * drop; a miss passes. It reads no generation: the product's generation
 * check is part of what the comparison charges to the product. Run behind
 * rotate.c it shows what one cold hash lookup costs on this machine, so the
 * product's cold-cache figures can be read against it.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#ifndef LF_ENTRIES
#define LF_ENTRIES 1048576
#endif

struct lf_value {          /* struct bw_deny_entry (bpf/structs.h) */
    __u32 rule_id;
    __u32 prev_rule_id;
    __u32 since;
    __u32 until;
    __u64 packets;
    __u64 bytes;
};

BPF_HASH(lookup_set, __be32, struct lf_value, LF_ENTRIES);

int lookup_floor_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *iph = data + sizeof(*eth);

    if ((void *)(iph + 1) > end || eth->h_proto != 0x0008 /* htons(ETH_P_IP) */)
        return XDP_ABORTED;
    __be32 src = iph->saddr;
    struct lf_value *v = lookup_set.lookup(&src);
    if (!v)
        return XDP_PASS;
    __sync_fetch_and_add(&v->packets, 1);
    return XDP_DROP;
}
