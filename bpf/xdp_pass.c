/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Passes every packet. Not part of Breakwater's pipeline: the lab puts it
 * on the far end of each edge's veth (controller/dataplane/build.py,
 * attach_pass), because veth hands frames sent back with XDP_TX (the SYN
 * challenge's SYN-ACKs) only to a peer that runs NAPI, and an XDP program
 * switches NAPI on. A real NIC needs nothing of the kind.
 */
int xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}
