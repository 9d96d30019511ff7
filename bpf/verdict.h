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
    __u32 rule_id;   /* rule slot that decided, 0 if none */
    __u32 limited;   /* dropped for exceeding a rate */
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

static __always_inline void lpm_v4_key(struct bw_lpm_v4 *k, __u8 slot, __be32 addr)
{
    k->prefixlen = 8 + 32;
    k->slot = slot;
    __builtin_memcpy(k->addr, &addr, 4);
}

static __always_inline void lpm_v6_key(struct bw_lpm_v6 *k, __u8 slot, const struct bw_in6 *addr)
{
    k->prefixlen = 8 + 128;
    k->slot = slot;
    __builtin_memcpy(k->addr, addr, 16);
}

/* Allowlist and management prefixes: checked before any drop, always win. */
static __always_inline int check_allow(struct bw_packet *pkt, struct bw_verdict *v,
                                       struct bw_view *view)
{
    struct bw_rule_ref *ref = 0;

    if (pkt->family == 4) {
        if (!(view->flags & BW_CFG_TRIE_ALLOW_V4))
            return 0;
        struct bw_lpm_v4 key = {};
        lpm_v4_key(&key, view->slot, pkt->src4);
        ref = allow_v4.lookup(&key);
    } else {
        if (!(view->flags & BW_CFG_TRIE_ALLOW_V6))
            return 0;
        struct bw_lpm_v6 key = {};
        lpm_v6_key(&key, view->slot, &pkt->src6);
        ref = allow_v6.lookup(&key);
    }
    if (!ref)
        return 0;
    return decide(v, XDP_PASS, (ref->flags & BW_ALLOW_MGMT) ? BW_PASS_MGMT : BW_PASS_ALLOW,
                  ref->rule_id);
}

/* An exact deny entry as generation `gen` sees it: the rule slot, or -1. */
static __always_inline long deny_rule_at(struct bw_deny_entry *e, __u32 gen)
{
    if (gen >= e->until)
        return -1;
    __u32 rule = gen >= e->since ? e->rule_id : e->prev_rule_id;
    return rule == BW_RULE_ABSENT ? -1 : (long)rule;
}

static __always_inline int deny_exact(struct bw_verdict *v, struct bw_deny_entry *e, long rule)
{
    v->entry = e;
    return decide(v, XDP_DROP, BW_DROP_DENY_SRC, (__u32)rule);
}

/* Denylist: the exact-address hash first (the bulk of entries, one cheap
 * lookup), then the prefix trie. */
static __always_inline int check_deny(struct bw_packet *pkt, struct bw_verdict *v,
                                      struct bw_view *view)
{
    struct bw_deny_entry *e;
    struct bw_rule_ref *ref;
    long rule;

    if (pkt->family == 4) {
        e = deny_v4.lookup(&pkt->src4);
        if (e && (rule = deny_rule_at(e, view->gen)) >= 0)
            return deny_exact(v, e, rule);
        if (!(view->flags & BW_CFG_TRIE_DENY_PFX_V4))
            return 0;
        struct bw_lpm_v4 key = {};
        lpm_v4_key(&key, view->slot, pkt->src4);
        ref = deny_pfx_v4.lookup(&key);
    } else {
        e = deny_v6.lookup(&pkt->src6);
        if (e && (rule = deny_rule_at(e, view->gen)) >= 0)
            return deny_exact(v, e, rule);
        if (!(view->flags & BW_CFG_TRIE_DENY_PFX_V6))
            return 0;
        struct bw_lpm_v6 key = {};
        lpm_v6_key(&key, view->slot, &pkt->src6);
        ref = deny_pfx_v6.lookup(&key);
    }
    if (!ref)
        return 0;
    return decide(v, XDP_DROP, BW_DROP_DENY_PREFIX, ref->rule_id);
}

/* -- signatures ------------------------------------------------------------ */

static __always_inline void bits_and(struct bw_bits *a, const struct bw_bits *b)
{
#pragma unroll
    for (int i = 0; i < BW_SIG_WORDS; i++)
        a->w[i] &= b->w[i];
}

static __always_inline void bits_and_or_clear(struct bw_bits *a, const struct bw_bits *b)
{
    if (b) {
        bits_and(a, b);
    } else {
#pragma unroll
        for (int i = 0; i < BW_SIG_WORDS; i++)
            a->w[i] = 0;
    }
}

/* Index of the highest set bit of v (v has one bit set here). Branch-free:
 * a branchy binary search gives the verifier 64 distinct paths per call. */
static __always_inline __u32 bit_index(__u64 v)
{
    __u64 n = 0, t;
    t = ((v >> 32) | (~(v >> 32) + 1)) >> 63; n += t << 5; v >>= t << 5;
    t = ((v >> 16) | (~(v >> 16) + 1)) >> 63; n += t << 4; v >>= t << 4;
    t = ((v >> 8) | (~(v >> 8) + 1)) >> 63;   n += t << 3; v >>= t << 3;
    t = ((v >> 4) | (~(v >> 4) + 1)) >> 63;   n += t << 2; v >>= t << 2;
    t = ((v >> 2) | (~(v >> 2) + 1)) >> 63;   n += t << 1; v >>= t << 1;
    t = ((v >> 1) | (~(v >> 1) + 1)) >> 63;   n += t;
    return (__u32)(n & 63);
}

/* The signatures a packet matches: the AND over every dimension's bitmap
 * (protocol, ports, prefixes, TCP flags, IP length, fragment). No signature
 * is checked one by one: the lowest set bit left is the first match. */
static __always_inline int sig_candidates(struct bw_packet *pkt, struct bw_view *view,
                                          struct bw_sig_meta *meta, struct bw_bits *cand)
{
    int v6 = pkt->family == 6;
    struct bw_bits *b;

    /* source */
    b = 0;
    if (!v6 && (meta->flags & BW_SIG_SRC_V4)) {
        struct bw_lpm_v4 key = {};
        lpm_v4_key(&key, view->slot, pkt->src4);
        b = sig_src_v4.lookup(&key);
    } else if (v6 && (meta->flags & BW_SIG_SRC_V6)) {
        struct bw_lpm_v6 key = {};
        lpm_v6_key(&key, view->slot, &pkt->src6);
        b = sig_src_v6.lookup(&key);
    }
    *cand = b ? *b : meta->src_any[v6];

    /* destination */
    b = 0;
    if (!v6 && (meta->flags & BW_SIG_DST_V4)) {
        struct bw_lpm_v4 key = {};
        lpm_v4_key(&key, view->slot, pkt->dst4);
        b = sig_dst_v4.lookup(&key);
    } else if (v6 && (meta->flags & BW_SIG_DST_V6)) {
        struct bw_lpm_v6 key = {};
        lpm_v6_key(&key, view->slot, &pkt->dst6);
        b = sig_dst_v6.lookup(&key);
    }
    bits_and(cand, b ? b : &meta->dst_any[v6]);

    /* protocol */
    __u32 idx = (__u32)view->slot * 256 + pkt->l4;
    bits_and_or_clear(cand, sig_proto.lookup(&idx));

    /* ports: only a parsed TCP/UDP/SCTP header has them */
    if (pkt->l4_seen && (pkt->l4 == IPPROTO_TCP || pkt->l4 == IPPROTO_UDP ||
                         pkt->l4 == BW_PROTO_SCTP)) {
        idx = (__u32)view->slot * 65536 + pkt->sport;
        bits_and_or_clear(cand, sig_sport.lookup(&idx));
        idx = (__u32)view->slot * 65536 + pkt->dport;
        bits_and_or_clear(cand, sig_dport.lookup(&idx));
    } else {
        bits_and(cand, &meta->noport);
    }

    /* TCP flags: only a parsed TCP header has them */
    if (pkt->l4_seen && pkt->l4 == IPPROTO_TCP) {
        idx = (__u32)view->slot * 256 + pkt->tcp_flags;
        bits_and_or_clear(cand, sig_tcpflags.lookup(&idx));
    } else {
        bits_and(cand, &meta->notcp);
    }

    /* IP length */
    idx = (__u32)view->slot * 65536 + pkt->ip_len;
    bits_and_or_clear(cand, sig_len.lookup(&idx));

    /* fragments */
    bits_and(cand, pkt->frag ? &meta->frag_yes : &meta->frag_no);

    __u64 any = 0;
#pragma unroll
    for (int i = 0; i < BW_SIG_WORDS; i++)
        any |= cand->w[i];
    return any != 0;
}

/* One GCRA step on *tat: the packet is within the limit if, with its cost
 * added, the schedule runs at most `tol` ahead of now (so a packet larger
 * than the whole burst never fits). Lock-free (compare-and-swap), so every
 * CPU shares one exact schedule. */
static __always_inline int gcra(__u64 *tat, __u64 now, __u64 cost, __u64 tol)
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __u64 old = *(volatile __u64 *)tat;
        __u64 t = old > now ? old : now;
        if (t + cost - now > tol)
            return 0;
        if (__sync_val_compare_and_swap(tat, old, t + cost) == old)
            return 1;
    }
    return 0;   /* lost four races in a row: the bucket is under heavy load */
}

static __always_inline struct bw_rl_state *bucket(struct bw_sig *s, struct bw_packet *pkt)
{
    __u32 rule = s->rule_id;
    if (!(s->flags & BW_SIG_PER_SOURCE))
        return rl_agg.lookup(&rule);
    struct bw_rl_key key = { .rule_id = rule, .family = pkt->family };
    if (pkt->family == 4)
        key.addr.a[0] = pkt->src4;
    else
        key.addr = pkt->src6;
    struct bw_rl_state *st = rl_src.lookup(&key);
    if (st)
        return st;
    struct bw_rl_state fresh = {};
    rl_src.insert(&key, &fresh);
    return rl_src.lookup(&key);
}

static __always_inline int within_rate(struct bw_sig *s, struct bw_packet *pkt)
{
    struct bw_rl_state *st = bucket(s, pkt);
    if (!st)
        return 1;   /* no bucket could be made (map full): fail open, counted as passed */
    __u64 now = bpf_ktime_get_ns();
    if (s->pkt_cost && !gcra(&st->tat_pkt, now, s->pkt_cost, s->pkt_tol))
        return 0;
    if (s->byte_cost) {
        __u64 len = pkt->ip_len;   /* rates count IP bytes, like Match.length */
        __u64 cost = len * (s->byte_cost >> 32) + ((len * (s->byte_cost & 0xFFFFFFFF)) >> 32);
        if (!gcra(&st->tat_byte, now, cost, s->byte_tol)) {
            if (s->pkt_cost)   /* give back the packet's share: it was not sent */
                __sync_fetch_and_add(&st->tat_pkt, -s->pkt_cost);
            return 0;
        }
    }
    return 1;
}

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

/* Lowest set bit of a bitmap, as an index; -1 if empty. */
static __always_inline int first_bit(struct bw_bits *b)
{
#pragma unroll
    for (int w = 0; w < BW_SIG_WORDS; w++) {
        __u64 v = b->w[w];
        if (v)
            return w * 64 + bit_index(v & (~v + 1));
    }
    return -1;
}

/* Count the monitor signatures that match before the deciding one (the
 * lowest terminal bit): up to BW_MONITOR_PER_WORD of them in each 64-bit
 * word of the bitmap. Branch-free masks keep the verifier's walk linear. */
#define BW_MONITOR_PER_WORD 4
static __always_inline void count_monitors(struct bw_packet *pkt, struct bw_view *view,
                                           struct bw_bits *mon, struct bw_bits *term)
{
    __u64 alive = ~0ULL;   /* all ones until the word holding the deciding signature */
#pragma unroll
    for (int w = 0; w < BW_SIG_WORDS; w++) {
        __u64 t = term->w[w];
        __u64 below = (t & (~t + 1)) - 1;   /* bits under the lowest terminal; all if none */
        __u64 m = mon->w[w] & below & alive;
        alive &= ~((((t | (~t + 1)) >> 63) ^ 1) - 1);   /* cleared once a terminal is seen */
#pragma unroll
        for (int i = 0; i < BW_MONITOR_PER_WORD; i++) {
            if (!m)
                break;
            __u64 low = m & (~m + 1);
            m &= m - 1;
            __u32 idx = (__u32)view->slot * BW_MAX_SIGS + w * 64 + bit_index(low);
            struct bw_sig *s = sigs.lookup(&idx);
            if (s)
                count_rule(s->rule_id, pkt->len, 0, 0);
        }
    }
}

/* Signatures in order, first match wins; monitor signatures count and go on. */
static __always_inline int check_signatures(struct bw_packet *pkt, struct bw_verdict *v,
                                            struct bw_view *view)
{
    __u32 mslot = view->slot;
    struct bw_sig_meta *meta = sig_meta.lookup(&mslot);
    if (!meta || !meta->count)
        return 0;
    struct bw_bits cand;
    if (!sig_candidates(pkt, view, meta, &cand))
        return 0;
    struct bw_bits mon, term;
#pragma unroll
    for (int i = 0; i < BW_SIG_WORDS; i++) {
        mon.w[i] = cand.w[i] & meta->monitor.w[i];
        term.w[i] = cand.w[i] & ~meta->monitor.w[i];
    }
    count_monitors(pkt, view, &mon, &term);
    int first = first_bit(&term);
    if (first < 0)
        return 0;
    __u32 idx = (__u32)view->slot * BW_MAX_SIGS + first;
    struct bw_sig *s = sigs.lookup(&idx);
    if (!s)
        return 0;
    if (s->action == BW_SIG_DROP)
        return decide(v, XDP_DROP, BW_DROP_SIGNATURE, s->rule_id);
    if (s->action == BW_SIG_ALLOW)
        return decide(v, XDP_PASS, BW_PASS_SIGNATURE, s->rule_id);
    if (within_rate(s, pkt))
        return decide(v, XDP_PASS, BW_PASS_RATE_LIMIT, s->rule_id);
    v->limited = 1;
    return decide(v, XDP_DROP, BW_DROP_RATE_LIMIT, s->rule_id);
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

/* The one exit: apply monitor mode, record the action, its reason, the rule
 * and the source, and return the action. */
static __always_inline int bw_out(struct bw_packet *pkt, struct bw_verdict *v, struct bw_view *view)
{
    __u32 action = v->action;
    __u32 slot = action == XDP_DROP ? BW_ACTION_DROP : BW_ACTION_PASS;

    if (action == XDP_DROP && (view->flags & BW_CFG_MONITOR)) {
        action = XDP_PASS;
        slot = BW_ACTION_MONITOR;
    }
    count(verdict_stats.lookup(&slot), pkt->len);
    __u32 reason = v->reason;
    count(reason_stats.lookup(&reason), pkt->len);
    if (v->rule_id)
        count_rule(v->rule_id, pkt->len, v->action == XDP_DROP, v->limited);
    if (v->entry) {
        __sync_fetch_and_add(&v->entry->packets, 1);
        __sync_fetch_and_add(&v->entry->bytes, pkt->len);
    } else if (pkt->family) {
        account_source(pkt, v->action == XDP_DROP);
    }
    if (pkt->family)
        account_destination(pkt, view, v->action == XDP_DROP);
    return action;
}

#endif
