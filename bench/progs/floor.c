/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reference floor for bench/dataplane.py: drop at once, read nothing.
 * Its BPF_PROG_TEST_RUN time is the harness's own cost per packet; attached
 * to a veth it is the cheapest possible receiver.
 */
int floor_xdp(struct xdp_md *ctx)
{
    return XDP_DROP;
}
