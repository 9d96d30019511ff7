/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The verdict a stage fills: struct bw_verdict and decide(). Both the
 * stages of verdict.h and the signature stage (signatures.h) decide through
 * it; bw_out() (verdict.h) reads it.
 */
#ifndef BREAKWATER_DECIDE_H
#define BREAKWATER_DECIDE_H

#include "structs.h"

struct bw_verdict {
    __u32 action;    /* XDP_PASS, XDP_DROP, or XDP_TX (a challenge answered, challenge.h) */
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

#endif
