/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Breakwater XDP entry. Compiled by bcc at load time
 * (controller/dataplane/build.py), with map sizes and the pin directory
 * passed as -D flags.
 *
 * The pipeline: parse -> always-pass -> allowlist -> denylist -> SYN
 * challenge -> signatures (rate limits) -> pass, every verdict leaving
 * through bw_out(). Allowlisted sources are never challenged, denied ones are
 * dropped before they could be. The rule-set
 * generation is read once here, so a packet is judged by one set whole.
 */
#include "verdict.h"

int breakwater_xdp(struct xdp_md *ctx)
{
    struct bw_packet pkt = {};
    struct bw_verdict v = { .action = XDP_PASS, .reason = BW_PASS_DEFAULT, .entry = 0 };
    struct bw_view view = {};
    __u32 zero = 0;
    struct bw_config *cfg = config.lookup(&zero);
    if (cfg) {
        view.flags = cfg->flags;
        view.gen = cfg->gen;
        view.slot = view.gen & 1;
    }

    int rc = parse_packet(ctx, &pkt);
    if (rc < 0) {
        decide_malformed(&v, -rc, view.flags);
        goto out;
    }
    if (check_always_pass(&pkt, &v))
        goto out;
    if (check_allow(&pkt, &v, &view))
        goto out;
    if (check_deny(&pkt, &v, &view))
        goto out;
    if (check_challenge(ctx, &pkt, &v, &view))
        goto out;
    if (check_signatures(&pkt, &v, &view))
        goto out;
out:
    return bw_out(&pkt, &v, &view);
}
