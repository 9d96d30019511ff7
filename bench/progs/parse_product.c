/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Breakwater's own parser (bpf/parsing.h) alone, then drop: separates the
 * product's parsing cost from its lookups and accounting. parsing.h reads
 * no maps, so bcc needs no map rewriting in the header.
 */
#include "../../bpf/parsing.h"

int parse_product_xdp(struct xdp_md *ctx)
{
    struct bw_packet pkt = {};
    int rc = parse_packet(ctx, &pkt);

    if (rc < 0)
        return XDP_ABORTED;
    __u32 fold = pkt.src4 ^ pkt.src6.a[0] ^ pkt.src6.a[3] ^ pkt.sport ^ pkt.dport ^ pkt.l4;
    return fold == 0x5a5a5a5a ? XDP_PASS : XDP_DROP;
}
