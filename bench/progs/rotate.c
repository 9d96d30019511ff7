/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Source rotator for bench/dataplane.py. BPF_PROG_TEST_RUN runs one packet
 * `repeat` times, so a program under test would see one hot source. This
 * program rewrites the IPv4 source of the test packet on every run, walking
 * BENCH_SOURCES distinct addresses from BENCH_BASE in a non-sequential order
 * (a stride coprime with the count, so every address is visited once per
 * cycle and neighbours in memory are not touched in turn), then tail-calls
 * the program under test (slot 0 of `target`). The same rotator in front of
 * the floor program measures the rotator's own cost, which the bench
 * subtracts. The IP checksum is not updated: none of the programs check it.
 */
#ifndef BENCH_SOURCES
#define BENCH_SOURCES 100000
#endif
#ifndef BENCH_BASE
#define BENCH_BASE 0xC6120000 /* 198.18.0.0 */
#endif
#ifndef BENCH_STRIDE
#define BENCH_STRIDE 7919     /* prime, coprime with BENCH_SOURCES */
#endif

BPF_PROG_ARRAY(target, 1);
BPF_PERCPU_ARRAY(cursor, __u32, 1);

int rotate_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 zero = 0;

    if (data + 14 + 20 > end)
        return XDP_ABORTED;
    __u32 *idx = cursor.lookup(&zero);
    if (!idx)
        return XDP_ABORTED;
    __u32 n = *idx + BENCH_STRIDE;
    if (n >= BENCH_SOURCES)
        n -= BENCH_SOURCES;
    *idx = n;
    *(__be32 *)(data + 14 + 12) = __builtin_bswap32(BENCH_BASE + n);
    target.call(ctx, 0);
    return XDP_ABORTED;   /* the tail call failed */
}
