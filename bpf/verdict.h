/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Verdict stages and the single exit. Each check_* stage either decides
 * (fills the verdict, returns 1) or leaves the packet to the next stage
 * (returns 0). bw_out() is the only place an XDP action is returned.
 */
#ifndef BREAKWATER_VERDICT_H
#define BREAKWATER_VERDICT_H

#include "maps.h"
#include "parsing.h"

#define BW_ICMPV6_ND_FIRST 133  /* router solicitation */
#define BW_ICMPV6_ND_LAST  137  /* redirect */
#define BW_TCP_SYN 0x02
#define BW_TCP_ACK 0x10

struct bw_verdict {
    __u32 action;    /* XDP_PASS or XDP_DROP */
    __u32 reason;    /* BW_REASON_* */
    __u32 rule_id;   /* rule that decided, 0 if none */
    struct bw_deny_entry *entry;   /* exact deny entry that decided: counts the source */
};

static __always_inline int decide(struct bw_verdict *v, __u32 action, __u32 reason, __u32 rule_id)
{
    v->action = action;
    v->reason = reason;
    v->rule_id = rule_id;
    return 1;
}

/* Malformed packets: dropped unless BW_CFG_PASS_MALFORMED is set. The stack
 * would discard most of them anyway; an attacker gains nothing either way. */
static __always_inline int decide_malformed(struct bw_verdict *v, int reason, __u32 flags)
{
    return decide(v, (flags & BW_CFG_PASS_MALFORMED) ? XDP_PASS : XDP_DROP, reason, 0);
}

/* ARP, IPv6 neighbour discovery and non-IP frames are never dropped: a deny
 * rule that covers everything must not cut the host off its link. ND must
 * carry hop limit 255, so routed traffic cannot dress up as ND. */
static __always_inline int check_always_pass(struct bw_packet *pkt, struct bw_verdict *v)
{
    if (pkt->l3 == ETH_P_ARP)
        return decide(v, XDP_PASS, BW_PASS_ARP, 0);
    if (pkt->family == 0)
        return decide(v, XDP_PASS, BW_PASS_NON_IP, 0);
    if (pkt->family == 6 && pkt->l4 == BW_PROTO_ICMPV6 && pkt->l4_seen &&
        pkt->icmp_type >= BW_ICMPV6_ND_FIRST && pkt->icmp_type <= BW_ICMPV6_ND_LAST &&
        pkt->hop_limit == BW_ND_HOP_LIMIT)
        return decide(v, XDP_PASS, BW_PASS_ND, 0);
    return 0;
}

/* Allowlist and management prefixes: checked before any drop, always win. */
static __always_inline int check_allow(struct bw_packet *pkt, struct bw_verdict *v, __u32 flags)
{
    struct bw_rule_ref *ref = 0;

    if (pkt->family == 4) {
        if (!(flags & BW_CFG_TRIE_ALLOW_V4))
            return 0;
        struct bw_lpm_v4 key = { .prefixlen = 32, .addr = pkt->src4 };
        ref = allow_v4.lookup(&key);
    } else {
        if (!(flags & BW_CFG_TRIE_ALLOW_V6))
            return 0;
        struct bw_lpm_v6 key = { .prefixlen = 128, .addr = pkt->src6 };
        ref = allow_v6.lookup(&key);
    }
    if (!ref)
        return 0;
    return decide(v, XDP_PASS, (ref->flags & BW_ALLOW_MGMT) ? BW_PASS_MGMT : BW_PASS_ALLOW,
                  ref->rule_id);
}

/* Denylist: the exact-address hash first (the bulk of entries, one cheap
 * lookup), then the prefix trie. */
static __always_inline int deny_exact(struct bw_verdict *v, struct bw_deny_entry *e)
{
    v->entry = e;
    return decide(v, XDP_DROP, BW_DROP_DENY_SRC, e->rule_id);
}

static __always_inline int check_deny(struct bw_packet *pkt, struct bw_verdict *v, __u32 flags)
{
    struct bw_deny_entry *e;
    struct bw_rule_ref *ref;

    if (pkt->family == 4) {
        e = deny_v4.lookup(&pkt->src4);
        if (e)
            return deny_exact(v, e);
        if (!(flags & BW_CFG_TRIE_DENY_PFX_V4))
            return 0;
        struct bw_lpm_v4 key = { .prefixlen = 32, .addr = pkt->src4 };
        ref = deny_pfx_v4.lookup(&key);
    } else {
        e = deny_v6.lookup(&pkt->src6);
        if (e)
            return deny_exact(v, e);
        if (!(flags & BW_CFG_TRIE_DENY_PFX_V6))
            return 0;
        struct bw_lpm_v6 key = { .prefixlen = 128, .addr = pkt->src6 };
        ref = deny_pfx_v6.lookup(&key);
    }
    if (!ref)
        return 0;
    return decide(v, XDP_DROP, BW_DROP_DENY_PREFIX, ref->rule_id);
}

static __always_inline void count(struct bw_counter *c, __u32 len)
{
    if (c) {
        c->packets += 1;   /* per-CPU value: no atomics needed */
        c->bytes += len;
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
}

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
    if (dropped)
        __sync_fetch_and_add(&c->drops, 1);
    if (pkt->frag)
        __sync_fetch_and_add(&c->frags, 1);
    if (cls == BW_CLASS_SYN)
        __sync_fetch_and_add(&c->syn, 1);
    else if (cls == BW_CLASS_ACK)
        __sync_fetch_and_add(&c->ack, 1);
    else if (cls == BW_CLASS_UDP)
        __sync_fetch_and_add(&c->udp, 1);
    else if (cls == BW_CLASS_ICMP)
        __sync_fetch_and_add(&c->icmp, 1);
    else if (cls == BW_CLASS_GRE)
        __sync_fetch_and_add(&c->gre, 1);
}

/* The one exit: apply monitor mode, record the action, its reason, the rule
 * and the source, and return the action. */
static __always_inline int bw_out(struct bw_packet *pkt, struct bw_verdict *v, __u32 flags)
{
    __u32 action = v->action;
    __u32 slot = action == XDP_DROP ? BW_ACTION_DROP : BW_ACTION_PASS;

    if (action == XDP_DROP && (flags & BW_CFG_MONITOR)) {
        action = XDP_PASS;
        slot = BW_ACTION_MONITOR;
    }
    count(verdict_stats.lookup(&slot), pkt->len);
    __u32 reason = v->reason;
    count(reason_stats.lookup(&reason), pkt->len);
    if (v->rule_id) {
        __u32 rule = v->rule_id;
        count(rule_stats.lookup(&rule), pkt->len);
    }
    if (v->entry) {
        __sync_fetch_and_add(&v->entry->packets, 1);
        __sync_fetch_and_add(&v->entry->bytes, pkt->len);
    } else if (pkt->family) {
        account_source(pkt, v->action == XDP_DROP);
    }
    return action;
}

#endif
