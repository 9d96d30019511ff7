/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Verdict stages and the single exit. Each check_* stage either decides
 * (fills the verdict, returns 1) or leaves the packet to the next stage
 * (returns 0). bw_out() is the only place an XDP action is returned.
 * The stages here: always-pass, allowlist, denylist; the SYN challenge is
 * challenge.h, the signature stage signatures.h, the counting bw_out() does
 * is account.h.
 */
#ifndef BREAKWATER_VERDICT_H
#define BREAKWATER_VERDICT_H

#include "account.h"
#include "challenge.h"
#include "decide.h"
#include "maps.h"
#include "parsing.h"
#include "signatures.h"

#define BW_ICMPV6_ND_FIRST 133  /* router solicitation */
#define BW_ICMPV6_ND_LAST  137  /* redirect */

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

/* The one exit: apply monitor mode, record the action, its reason, the rule
 * and the source, and return the action. XDP_TX (a challenge answered in
 * place of the packet) counts as a drop: the packet is not delivered. */
static __always_inline int bw_out(struct bw_packet *pkt, struct bw_verdict *v, struct bw_view *view)
{
    __u32 action = v->action;
    int dropped = action != XDP_PASS;
    __u32 slot = dropped ? BW_ACTION_DROP : BW_ACTION_PASS;

    if (action == XDP_DROP && (view->flags & BW_CFG_MONITOR)) {
        action = XDP_PASS;
        slot = BW_ACTION_MONITOR;
    }
    count(verdict_stats.lookup(&slot), pkt->len);
    __u32 reason = v->reason;
    count(reason_stats.lookup(&reason), pkt->len);
    if (v->rule_id)
        count_rule(v->rule_id, pkt->len, dropped, v->limited);
    if (v->entry) {
        __sync_fetch_and_add(&v->entry->packets, 1);
        __sync_fetch_and_add(&v->entry->bytes, pkt->len);
    } else if (pkt->family) {
        account_source(pkt, dropped);
    }
    if (pkt->family)
        account_destination(pkt, view, dropped);
    return action;
}

#endif
