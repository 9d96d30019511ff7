/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Accounting: the per-CPU counters (verdict, reason, rule), the class a
 * packet counts under (classify) and the per-source and per-destination
 * counters that detection harvests. bw_out() (verdict.h) and the monitor
 * signatures (signatures.h) count through here.
 */
#ifndef BREAKWATER_ACCOUNT_H
#define BREAKWATER_ACCOUNT_H

#include "maps.h"
#include "parsing.h"

#define BW_TCP_SYN 0x02
#define BW_TCP_ACK 0x10

/* One packet on a per-CPU counter (verdict_stats, reason_stats). */
static __always_inline void count(struct bw_counter *c, __u32 len)
{
    if (c) {
        c->packets += 1;   /* per-CPU value: no atomics needed */
        c->bytes += len;
    }
}

/* One packet on a rule's per-CPU counters (rule_stats). */
static __always_inline void count_rule(__u32 rule, __u32 len, int dropped, int limited)
{
    struct bw_rule_counter *c = rule_stats.lookup(&rule);
    if (c) {
        c->packets += 1;
        c->bytes += len;
        c->dropped += dropped;
        c->rate_limited += limited;
    }
}

/* Which class counter of struct bw_src_counters a packet moves. */
enum bw_class { BW_CLASS_NONE, BW_CLASS_SYN, BW_CLASS_ACK, BW_CLASS_UDP, BW_CLASS_ICMP, BW_CLASS_GRE };

static __always_inline int classify(struct bw_packet *pkt)
{
    if (!pkt->l4_seen)
        return BW_CLASS_NONE;
    if (pkt->l4 == IPPROTO_TCP) {
        __u8 f = pkt->tcp_flags & (BW_TCP_SYN | BW_TCP_ACK);
        return f == BW_TCP_SYN ? BW_CLASS_SYN : f == BW_TCP_ACK ? BW_CLASS_ACK : BW_CLASS_NONE;
    }
    if (pkt->l4 == IPPROTO_UDP)
        return BW_CLASS_UDP;
    if (pkt->l4 == IPPROTO_ICMP || pkt->l4 == BW_PROTO_ICMPV6)
        return BW_CLASS_ICMP;
    if (pkt->l4 == BW_PROTO_GRE)
        return BW_CLASS_GRE;
    return BW_CLASS_NONE;
}

/* A new source's first counters. Built only on a miss: the hit path
 * touches no stack struct. */
static __always_inline void first_counters(struct bw_src_counters *d, struct bw_packet *pkt,
                                           int cls, int dropped)
{
    d->packets = 1;
    d->bytes = pkt->len;
    d->drops = dropped;
    d->frags = pkt->frag;
    d->syn = cls == BW_CLASS_SYN;
    d->ack = cls == BW_CLASS_ACK;
    d->udp = cls == BW_CLASS_UDP;
    d->icmp = cls == BW_CLASS_ICMP;
    d->gre = cls == BW_CLASS_GRE;
    if (pkt->family == 4)
        d->last_dst.a[0] = pkt->dst4;
    else
        d->last_dst = pkt->dst6;
}

/* The drop, fragment and class counters that bw_src_counters and
 * bw_dst_counters share (same field names): one macro for both structs. */
#define BW_COUNT_CLASSES(c, pkt, cls, dropped)                    \
    do {                                                          \
        if (dropped)                                              \
            __sync_fetch_and_add(&(c)->drops, 1);                 \
        if ((pkt)->frag)                                          \
            __sync_fetch_and_add(&(c)->frags, 1);                 \
        if ((cls) == BW_CLASS_SYN)                                \
            __sync_fetch_and_add(&(c)->syn, 1);                   \
        else if ((cls) == BW_CLASS_ACK)                           \
            __sync_fetch_and_add(&(c)->ack, 1);                   \
        else if ((cls) == BW_CLASS_UDP)                           \
            __sync_fetch_and_add(&(c)->udp, 1);                   \
        else if ((cls) == BW_CLASS_ICMP)                          \
            __sync_fetch_and_add(&(c)->icmp, 1);                  \
        else if ((cls) == BW_CLASS_GRE)                           \
            __sync_fetch_and_add(&(c)->gre, 1);                   \
    } while (0)

/* Per-source counters: one shared LRU entry per source, atomic adds. */
static __always_inline void account_source(struct bw_packet *pkt, int dropped)
{
    int cls = classify(pkt);
    struct bw_src_counters *c;

    if (pkt->family == 4)
        c = src_v4.lookup(&pkt->src4);
    else
        c = src_v6.lookup(&pkt->src6);
    if (!c) {
        struct bw_src_counters d = {};
        first_counters(&d, pkt, cls, dropped);
        if (pkt->family == 4) {
            if (src_v4.insert(&pkt->src4, &d) == 0)
                return;
            c = src_v4.lookup(&pkt->src4);   /* another CPU inserted it first */
        } else {
            if (src_v6.insert(&pkt->src6, &d) == 0)
                return;
            c = src_v6.lookup(&pkt->src6);
        }
        if (!c)
            return;
    }
    __sync_fetch_and_add(&c->packets, 1);
    __sync_fetch_and_add(&c->bytes, pkt->len);
    if (pkt->family == 4)
        c->last_dst.a[0] = pkt->dst4;   /* plain stores: the latest wins */
    else
        c->last_dst = pkt->dst6;
    BW_COUNT_CLASSES(c, pkt, cls, dropped);
}

/* Per-destination counters, for destinations inside a protected prefix. */
static __always_inline void account_destination(struct bw_packet *pkt, struct bw_view *view,
                                                int dropped)
{
    struct bw_dst_counters *c;
    __u32 *hit;

    if (pkt->family == 4) {
        if (!(view->flags & BW_CFG_TRIE_PROTECT_V4))
            return;
        struct bw_lpm_v4 key = {};
        lpm_v4_key(&key, 0, pkt->dst4);
        hit = protect_v4.lookup(&key);
        if (!hit)
            return;
        c = dst_v4.lookup(&pkt->dst4);
    } else {
        if (!(view->flags & BW_CFG_TRIE_PROTECT_V6))
            return;
        struct bw_lpm_v6 key = {};
        lpm_v6_key(&key, 0, &pkt->dst6);
        hit = protect_v6.lookup(&key);
        if (!hit)
            return;
        c = dst_v6.lookup(&pkt->dst6);
    }
    int cls = classify(pkt);
    __u64 refl = 0;
    if (cls == BW_CLASS_UDP) {
        __u32 port = pkt->sport;
        __u32 *r = refl_ports.lookup(&port);
        refl = r && *r;
    }
    if (!c) {
        struct bw_dst_counters d = {
            .packets = 1, .bytes = pkt->len, .drops = dropped, .frags = pkt->frag,
            .syn = cls == BW_CLASS_SYN, .ack = cls == BW_CLASS_ACK, .udp = cls == BW_CLASS_UDP,
            .icmp = cls == BW_CLASS_ICMP, .gre = cls == BW_CLASS_GRE, .refl = refl,
        };
        if (pkt->family == 4)
            dst_v4.insert(&pkt->dst4, &d);
        else
            dst_v6.insert(&pkt->dst6, &d);
        return;   /* lost a race to another CPU: one packet uncounted at most */
    }
    __sync_fetch_and_add(&c->packets, 1);
    __sync_fetch_and_add(&c->bytes, pkt->len);
    BW_COUNT_CLASSES(c, pkt, cls, dropped);
    if (refl)
        __sync_fetch_and_add(&c->refl, 1);
}

#endif
