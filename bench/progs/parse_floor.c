/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reference parser for bench/dataplane.py: the least any filter must do
 * before it can look a source up. Ethernet, up to two VLAN tags, IPv4 (with
 * options) or IPv6 (fixed header only), TCP/UDP ports, every read bounds
 * checked, then drop. The parsed fields are folded into one value that
 * decides the return code, so the compiler cannot drop the reads.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#define PF_ETH_P_8021Q  0x0081 /* htons(0x8100) on little endian */
#define PF_ETH_P_8021AD 0xA888 /* htons(0x88A8) */
#define PF_ETH_P_IP     0x0008 /* htons(ETH_P_IP) */
#define PF_ETH_P_IPV6   0xDD86 /* htons(ETH_P_IPV6) */

struct pf_vlan {
    __be16 tci;
    __be16 proto;
};

int parse_floor_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    void *pos;
    __u32 fold = 0;
    __u8 proto;

    if ((void *)(eth + 1) > end)
        return XDP_ABORTED;
    pos = eth + 1;
    __be16 type = eth->h_proto;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (type != PF_ETH_P_8021Q && type != PF_ETH_P_8021AD)
            break;
        struct pf_vlan *vh = pos;
        if ((void *)(vh + 1) > end)
            return XDP_ABORTED;
        type = vh->proto;
        pos = vh + 1;
    }
    if (type == PF_ETH_P_IP) {
        struct iphdr *iph = pos;
        if ((void *)(iph + 1) > end || iph->ihl < 5)
            return XDP_ABORTED;
        __u32 hl = iph->ihl * 4;
        if (pos + hl > end)
            return XDP_ABORTED;
        pos += hl;
        fold = iph->saddr ^ iph->daddr;
        proto = iph->protocol;
    } else if (type == PF_ETH_P_IPV6) {
        struct ipv6hdr *ip6 = pos;
        if ((void *)(ip6 + 1) > end)
            return XDP_ABORTED;
        pos = ip6 + 1;
        fold = ip6->saddr.in6_u.u6_addr32[0] ^ ip6->saddr.in6_u.u6_addr32[1] ^
               ip6->saddr.in6_u.u6_addr32[2] ^ ip6->saddr.in6_u.u6_addr32[3];
        proto = ip6->nexthdr;
    } else {
        return XDP_PASS;
    }
    if (proto == IPPROTO_UDP) {
        struct udphdr *uh = pos;
        if ((void *)(uh + 1) > end)
            return XDP_ABORTED;
        fold ^= uh->source ^ uh->dest;
    } else if (proto == IPPROTO_TCP) {
        struct tcphdr *th = pos;
        if ((void *)(th + 1) > end)
            return XDP_ABORTED;
        fold ^= th->source ^ th->dest ^ ((__u8 *)th)[13];
    }
    /* Never true for the bench's packets; keeps every read above live. */
    return fold == 0x5a5a5a5a ? XDP_PASS : XDP_DROP;
}
