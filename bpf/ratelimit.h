/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rate limits of the rate-limit signatures: GCRA (virtual scheduling) on
 * token-bucket state, one bucket per rule (rl_agg) or per rule and source
 * (rl_src). within_rate() is all signatures.h calls.
 */
#ifndef BREAKWATER_RATELIMIT_H
#define BREAKWATER_RATELIMIT_H

#include "maps.h"

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

#endif
