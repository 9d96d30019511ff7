/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing.
 *
 * The contract every helper keeps: it takes a cursor and data_end, reads
 * nothing before checking it lies inside the packet, advances the cursor past
 * the header it parsed, and returns the next protocol (>= 0) or a negative
 * BW_MALFORMED_* reason. This is the one place to audit against malformed
 * packets; nothing else in the program reads packet memory.
 */
#ifndef BREAKWATER_PARSING_H
#define BREAKWATER_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "consts.h"
#include "reasons.h"
#include "structs.h"

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bw_htons(x) ((__be16)__builtin_bswap16(x))
#define bw_ntohs(x) ((__u16)__builtin_bswap16(x))
#define bw_htonl(x) ((__be32)__builtin_bswap32(x))
#define bw_ntohl(x) ((__u32)__builtin_bswap32(x))
#else
#define bw_htons(x) ((__be16)(x))
#define bw_ntohs(x) ((__u16)(x))
#define bw_htonl(x) ((__be32)(x))
#define bw_ntohl(x) ((__u32)(x))
#endif

#define BW_ETH_P_8021Q   0x8100
#define BW_ETH_P_8021AD  0x88A8
#define BW_IP_MF         0x2000
#define BW_IP_OFFSET     0x1FFF
#define BW_IP6_OFFSET    0xFFF8
#define BW_PROTO_GRE     47
#define BW_PROTO_ICMPV6  58
#define BW_PROTO_MH      135   /* IPv6 mobility header: an extension header */
#define BW_PROTO_SCTP    132

struct bw_cursor {
    void *pos;
};

struct bw_vlan_hdr {
    __be16 tci;
    __be16 proto;
};

struct bw_ipv6_opt_hdr {
    __u8 nexthdr;
    __u8 hdrlen;
};

struct bw_ipv6_frag_hdr {
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off;
    __be32 id;
};

struct bw_gre_hdr {
    __be16 flags;
    __be16 proto;
};

struct bw_sctp_hdr {     /* common header */
    __be16 source;
    __be16 dest;
    __be32 vtag;
    __be32 csum;
};

struct bw_icmp_hdr {     /* type, code, checksum and the 4-byte rest-of-header */
    __u8 type;
    __u8 code;
    __be16 csum;
    __be32 rest;
};

/* Ethernet header. Returns the ethertype, network order. */
static __always_inline int parse_ethhdr(struct bw_cursor *c, void *end)
{
    struct ethhdr *eth = c->pos;

    if ((void *)(eth + 1) > end)
        return -BW_MALFORMED_ETH;
    c->pos = eth + 1;
    return eth->h_proto;
}

/* Up to BW_MAX_VLAN_TAGS 802.1Q/802.1ad tags. Returns the inner ethertype,
 * network order. A third tag is refused: no edge link carries one, and a
 * parser that gave up silently would let it skip the policy. */
static __always_inline int parse_vlans(struct bw_cursor *c, void *end, __be16 proto,
                                       struct bw_packet *pkt)
{
#pragma unroll
    for (int i = 0; i < BW_MAX_VLAN_TAGS; i++) {
        if (proto != bw_htons(BW_ETH_P_8021Q) && proto != bw_htons(BW_ETH_P_8021AD))
            return proto;
        struct bw_vlan_hdr *vh = c->pos;
        if ((void *)(vh + 1) > end)
            return -BW_MALFORMED_VLAN;
        proto = vh->proto;
        c->pos = vh + 1;
        pkt->vlans++;
    }
    if (proto == bw_htons(BW_ETH_P_8021Q) || proto == bw_htons(BW_ETH_P_8021AD))
        return -BW_MALFORMED_VLAN;
    return proto;
}

/* IPv4 header with options. Returns the IP protocol. */
static __always_inline int parse_ipv4(struct bw_cursor *c, void *end, struct bw_packet *pkt)
{
    struct iphdr *iph = c->pos;

    if ((void *)(iph + 1) > end)
        return -BW_MALFORMED_IPV4;
    if (iph->version != 4 || iph->ihl < 5)
        return -BW_MALFORMED_IPV4;
    __u32 hdrsize = iph->ihl * 4;
    if (c->pos + hdrsize > end)
        return -BW_MALFORMED_IPV4_OPTIONS;
    c->pos += hdrsize;

    pkt->family = 4;
    pkt->ip_len = bw_ntohs(iph->tot_len);
    pkt->src4 = iph->saddr;
    pkt->dst4 = iph->daddr;
    pkt->hop_limit = iph->ttl;
    __u16 frag = bw_ntohs(iph->frag_off);
    if (frag & (BW_IP_MF | BW_IP_OFFSET)) {
        pkt->frag = 1;
        if (frag & BW_IP_OFFSET)
            pkt->later_frag = 1;
    }
    return iph->protocol;
}

static __always_inline int ipv6_is_ext(__u8 nexthdr)
{
    return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
           nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT ||
           nexthdr == IPPROTO_AH || nexthdr == BW_PROTO_MH;
}

/* One IPv6 extension header. Returns the header that follows it. */
static __always_inline int parse_ipv6_ext(struct bw_cursor *c, void *end, __u8 nexthdr,
                                          struct bw_packet *pkt)
{
    if (nexthdr == IPPROTO_FRAGMENT) {
        struct bw_ipv6_frag_hdr *fh = c->pos;
        if ((void *)(fh + 1) > end)
            return -BW_MALFORMED_IPV6_EXT;
        c->pos = fh + 1;
        pkt->frag = 1;
        if (bw_ntohs(fh->frag_off) & BW_IP6_OFFSET)
            pkt->later_frag = 1;
        return fh->nexthdr;
    }
    struct bw_ipv6_opt_hdr *oh = c->pos;
    if ((void *)(oh + 1) > end)
        return -BW_MALFORMED_IPV6_EXT;
    /* AH counts its length in 4-byte units minus 2, the others in 8-byte units minus 1. */
    __u32 len = nexthdr == IPPROTO_AH ? ((__u32)oh->hdrlen + 2) * 4 : ((__u32)oh->hdrlen + 1) * 8;
    if (c->pos + len > end)
        return -BW_MALFORMED_IPV6_EXT;
    c->pos += len;
    return oh->nexthdr;
}

/* Word by word: a struct copy of packet memory may become a memcpy call,
 * which BPF does not have. */
static __always_inline void copy_in6(struct bw_in6 *dst, const struct in6_addr *src)
{
    dst->a[0] = src->in6_u.u6_addr32[0];
    dst->a[1] = src->in6_u.u6_addr32[1];
    dst->a[2] = src->in6_u.u6_addr32[2];
    dst->a[3] = src->in6_u.u6_addr32[3];
}

/* IPv6 header and its extension chain, at most BW_MAX_IPV6_EXT headers.
 * Returns the transport protocol. */
static __always_inline int parse_ipv6(struct bw_cursor *c, void *end, struct bw_packet *pkt)
{
    struct ipv6hdr *ip6 = c->pos;

    if ((void *)(ip6 + 1) > end)
        return -BW_MALFORMED_IPV6;
    if (ip6->version != 6)
        return -BW_MALFORMED_IPV6;
    c->pos = ip6 + 1;

    pkt->family = 6;
    pkt->ip_len = bw_ntohs(ip6->payload_len) + sizeof(*ip6);
    copy_in6(&pkt->src6, &ip6->saddr);
    copy_in6(&pkt->dst6, &ip6->daddr);
    pkt->hop_limit = ip6->hop_limit;

    int next = ip6->nexthdr;
#pragma unroll
    for (int i = 0; i < BW_MAX_IPV6_EXT; i++) {
        if (!ipv6_is_ext(next) || pkt->later_frag)
            return next;
        next = parse_ipv6_ext(c, end, next, pkt);
        if (next < 0)
            return next;
    }
    if (ipv6_is_ext(next) && !pkt->later_frag)
        return -BW_MALFORMED_IPV6_CHAIN;
    return next;
}

/* Transport header: TCP, UDP, SCTP, ICMP, ICMPv6 or GRE. Other protocols are
 * accepted unparsed. Returns the protocol. */
static __always_inline int parse_l4(struct bw_cursor *c, void *end, int proto,
                                    struct bw_packet *pkt)
{
    pkt->l4 = proto;
    if (pkt->later_frag)
        return proto;   /* a non-first fragment has no transport header to read */

    if (proto == IPPROTO_TCP) {
        struct tcphdr *th = c->pos;
        if ((void *)(th + 1) > end)
            return -BW_MALFORMED_L4;
        pkt->sport = bw_ntohs(th->source);
        pkt->dport = bw_ntohs(th->dest);
        pkt->tcp_flags = ((__u8 *)th)[13];
        pkt->tcp_seq = bw_ntohl(th->seq);
        c->pos = th + 1;
    } else if (proto == IPPROTO_UDP) {
        struct udphdr *uh = c->pos;
        if ((void *)(uh + 1) > end)
            return -BW_MALFORMED_L4;
        pkt->sport = bw_ntohs(uh->source);
        pkt->dport = bw_ntohs(uh->dest);
        c->pos = uh + 1;
    } else if (proto == BW_PROTO_SCTP) {
        struct bw_sctp_hdr *sh = c->pos;
        if ((void *)(sh + 1) > end)
            return -BW_MALFORMED_L4;
        pkt->sport = bw_ntohs(sh->source);
        pkt->dport = bw_ntohs(sh->dest);
        c->pos = sh + 1;
    } else if (proto == IPPROTO_ICMP || proto == BW_PROTO_ICMPV6) {
        struct bw_icmp_hdr *ih = c->pos;
        if ((void *)(ih + 1) > end)
            return -BW_MALFORMED_L4;
        pkt->icmp_type = ih->type;
        c->pos = ih + 1;
    } else if (proto == BW_PROTO_GRE) {
        struct bw_gre_hdr *gh = c->pos;
        if ((void *)(gh + 1) > end)
            return -BW_MALFORMED_L4;
        c->pos = gh + 1;
    } else {
        return proto;
    }
    pkt->l4_seen = 1;
    return proto;
}

/* The whole packet: Ethernet, VLANs, IPv4/IPv6, transport.
 * Returns 0, or a negative BW_MALFORMED_* reason. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct bw_packet *pkt)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct bw_cursor c = { .pos = data };

    pkt->len = end - data;
    int proto = parse_ethhdr(&c, end);
    if (proto < 0)
        return proto;
    proto = parse_vlans(&c, end, proto, pkt);
    if (proto < 0)
        return proto;
    pkt->l3 = bw_ntohs(proto);
    pkt->l3_off = c.pos - data;

    int next;
    if (pkt->l3 == ETH_P_IP)
        next = parse_ipv4(&c, end, pkt);
    else if (pkt->l3 == ETH_P_IPV6)
        next = parse_ipv6(&c, end, pkt);
    else
        return 0;       /* ARP and other non-IP frames: nothing more to parse */
    if (next < 0)
        return next;
    next = parse_l4(&c, end, next, pkt);
    return next < 0 ? next : 0;
}

#endif
