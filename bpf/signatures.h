/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The signature stage: a bit-vector classifier. Every dimension (source and
 * destination prefix, protocol, ports, TCP flags, IP length, fragment) maps
 * to the set of signatures a packet may match; the AND of those sets holds
 * the candidates, the lowest terminal bit is the first match and decides,
 * monitor signatures before it are counted. Rate limits: ratelimit.h.
 */
#ifndef BREAKWATER_SIGNATURES_H
#define BREAKWATER_SIGNATURES_H

#include "account.h"
#include "decide.h"
#include "maps.h"
#include "parsing.h"
#include "ratelimit.h"

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

#endif
