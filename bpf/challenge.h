/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The SYN challenge stage: legitimate TCP users keep connecting while
 * spoofed SYN and ACK floods are dropped (docs/dataplane.md, "SYN challenge").
 *
 * For a TCP packet to a challenged service (chal_v4: port + destination
 * prefix), per destination:port:
 *   - a meter counts SYNs and non-SYN packets of unknown connections in
 *     100 ms windows; over the service's syn_pps or ack_pps the destination is
 *     "under challenge" until hold_ns after the last window over a threshold;
 *   - not under challenge, packets go on to the signatures, and the
 *     connections they open are noted in flows_v4;
 *   - under challenge, a SYN from an unverified source is answered from XDP
 *     with a SYN-ACK whose acknowledgement number is deliberately wrong: a
 *     cookie of the 4-tuple (bpf_tcp_raw_gen_syncookie_ipv4 over the tuple
 *     with sequence 0, so the client's ISN is not part of it). A real client
 *     answers with a RST whose sequence number is that cookie; the RST is
 *     checked (bpf_tcp_raw_check_syncookie_ipv4), the source goes into
 *     verified_v4 and its retransmitted SYN passes. Spoofed sources never see
 *     the SYN-ACK, so they never answer;
 *   - under challenge, packets from verified sources and of connections in
 *     flows_v4 pass (past the signatures: victim-wide ceilings do not hit
 *     them); every other non-SYN packet is dropped (the ACK-flood defence);
 *   - a FIN or RST marks its connection closing in flows_v4: it still passes
 *     while packets keep coming, and is forgotten once idle
 *     BW_FLOW_CLOSING_NS, so a closed connection's tuple is unknown again. A
 *     blind RST (the tuple guessed, sequence numbers are not tracked) thus
 *     costs a live connection nothing unless it then idles that long;
 *   - a SYN is answered only when its TCP checksum holds (full, or the
 *     pseudo-header sum a local sender leaves for offload on veth) and it
 *     carries no data: garbage is not answered.
 *
 * Only the SYN-ACK writer touches packet memory outside parsing.h, after its
 * own bounds checks.
 */
#ifndef BREAKWATER_CHALLENGE_H
#define BREAKWATER_CHALLENGE_H

#include "account.h"
#include "decide.h"
#include "maps.h"
#include "parsing.h"

#define BW_TCP_FIN 0x01
#define BW_TCP_RST 0x04
#define BW_TCPOPT_MSS 2

/* The challenge SYN-ACK after the link-layer header: IPv4, TCP, one MSS option. */
struct bw_chal_synack {
    struct iphdr ip;
    struct tcphdr tcp;
    __be32 mss;
} __attribute__((packed));

/* Fold a 32-bit one's-complement sum (bpf_csum_diff's result plus extra
 * words) to the 16-bit checksum. */
static __always_inline __u16 csum_fold(__u64 s)
{
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)~s;
}

/* The connection the cookie stands for: the 4-tuple with sequence numbers 0,
 * as headers on the stack (the helpers read only these fields). */
static __always_inline void chal_tuple(struct bw_packet *pkt, struct iphdr *ih, struct tcphdr *th)
{
    ih->version = 4;
    ih->ihl = 5;
    ih->protocol = IPPROTO_TCP;
    ih->saddr = pkt->src4;
    ih->daddr = pkt->dst4;
    th->source = bw_htons(pkt->sport);
    th->dest = bw_htons(pkt->dport);
    th->doff = 5;
}

/* The cookie of pkt's 4-tuple, or -1. Never equal to the client's ISN + 1,
 * so the SYN-ACK is never acceptable to the client by accident. */
static __always_inline long chal_cookie(struct bw_packet *pkt)
{
    struct iphdr ih = {};
    struct tcphdr th = {};
    chal_tuple(pkt, &ih, &th);
    th.syn = 1;
    __s64 c = bpf_tcp_raw_gen_syncookie_ipv4(&ih, &th, sizeof(th));
    if (c < 0)
        return -1;
    __u32 cookie = (__u32)c;
    if (cookie == pkt->tcp_seq + 1)
        cookie ^= 0x80000000;
    return cookie;
}

/* Does this RST (no ACK flag) answer a challenge of its 4-tuple? A client
 * that rejects a SYN-ACK resets with seq = the SYN-ACK's ack, our cookie.
 * The check helper reads a cookie ACK: seq - 1 = 0 and ack_seq - 1 = cookie. */
static __always_inline int chal_answer_ok(struct bw_packet *pkt)
{
    struct iphdr ih = {};
    struct tcphdr th = {};
    chal_tuple(pkt, &ih, &th);
    th.ack = 1;
    th.seq = bw_htonl(1);
    th.ack_seq = bw_htonl(pkt->tcp_seq + 1);
    return bpf_tcp_raw_check_syncookie_ipv4(&ih, &th) == 0;
}

/* Is the SYN worth answering? Its TCP segment must be the header and
 * options only (no data: a TCP Fast Open SYN falls back to a plain SYN on
 * retransmission) and its checksum must hold: either complete, or the
 * pseudo-header sum that a sender with checksum offload leaves in place
 * (CHECKSUM_PARTIAL: a namespace or container behind a veth). */
static __always_inline int chal_syn_ok(struct xdp_md *ctx, struct bw_packet *pkt)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 l3 = pkt->l3_off;
    if (l3 > ETH_HLEN + 4 * BW_MAX_VLAN_TAGS)
        return 0;
    struct iphdr *iph = data + l3;
    if ((void *)(iph + 1) > end)
        return 0;
    __u32 ihl = iph->ihl * 4;
    if (ihl < sizeof(*iph) || ihl > 60)
        return 0;
    struct tcphdr *th = (void *)iph + ihl;
    if ((void *)(th + 1) > end)
        return 0;
    __u32 seglen = th->doff * 4;
    if (seglen < sizeof(*th) || pkt->ip_len != ihl + seglen)
        return 0;

    seglen &= 0x3c;   /* 20..60, said again for the verifier */
    __u32 words[15] = {};
    if (bpf_xdp_load_bytes(ctx, l3 + ihl, words, seglen))
        return 0;
    __u64 pseudo = (__u64)pkt->src4 + pkt->dst4 + bw_htons(IPPROTO_TCP) + bw_htons(seglen);
    __u64 sum = pseudo;
#pragma unroll
    for (int i = 0; i < 15; i++)
        sum += words[i];   /* past seglen: zeros */
    if (csum_fold(sum) == 0)
        return 1;
    return th->check == (__u16)~csum_fold(pseudo);
}

/* Turn the SYN in the frame into the challenge SYN-ACK: MACs, addresses and
 * ports swapped, seq random, ack = cookie, MSS option only; VLAN tags kept.
 * Returns 0, or -1 when the frame could not be rewritten. */
static __always_inline int chal_write_synack(struct xdp_md *ctx, struct bw_packet *pkt, __u32 cookie)
{
    struct bw_chal_synack r = {};

    r.ip.version = 4;
    r.ip.ihl = 5;
    r.ip.tot_len = bw_htons(sizeof(r));
    r.ip.frag_off = bw_htons(0x4000);   /* DF */
    r.ip.ttl = BW_CHAL_TTL;
    r.ip.protocol = IPPROTO_TCP;
    r.ip.saddr = pkt->dst4;
    r.ip.daddr = pkt->src4;
    r.tcp.source = bw_htons(pkt->dport);
    r.tcp.dest = bw_htons(pkt->sport);
    r.tcp.seq = bw_htonl(bpf_get_prandom_u32());
    r.tcp.ack_seq = bw_htonl(cookie);
    r.tcp.doff = (sizeof(r.tcp) + sizeof(r.mss)) / 4;
    r.tcp.syn = 1;
    r.tcp.ack = 1;
    r.tcp.window = bw_htons(BW_CHAL_WINDOW);
    r.mss = bw_htonl((BW_TCPOPT_MSS << 24) | (4 << 16) | BW_CHAL_MSS);

    __s64 cs = bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp) + sizeof(r.mss), 0);
    if (cs < 0)
        return -1;
    __u64 sum = (__u32)cs;
    sum += r.ip.saddr;
    sum += r.ip.daddr;
    sum += bw_htons(IPPROTO_TCP);
    sum += bw_htons(sizeof(r.tcp) + sizeof(r.mss));
    r.tcp.check = csum_fold(sum);
    cs = bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0);
    if (cs < 0)
        return -1;
    r.ip.check = csum_fold((__u32)cs);

    __u32 l3 = pkt->l3_off;
    if (l3 > ETH_HLEN + 4 * BW_MAX_VLAN_TAGS)
        return -1;
    int delta = (int)(l3 + sizeof(r)) - (int)pkt->len;
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return -1;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return -1;
    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    void *l3p = data + l3;
    if (l3p + sizeof(r) > end)
        return -1;
    __builtin_memcpy(l3p, &r, sizeof(r));
    return 0;
}

/* Count a packet on the destination's meter and say whether it is under
 * challenge now. `syn`: a SYN, else a non-SYN packet of an unknown connection. */
static __always_inline int chal_meter(struct bw_packet *pkt, struct bw_chal_service *svc,
                                      __u64 now, int syn)
{
    struct bw_chal_dst_v4 key = { .addr = pkt->dst4, .port = bw_htons(pkt->dport) };
    struct bw_chal_meter *m = chal_meter_v4.lookup(&key);
    if (!m) {
        struct bw_chal_meter fresh = { .window = now };
        chal_meter_v4.insert(&key, &fresh);
        m = chal_meter_v4.lookup(&key);
        if (!m)
            return svc->syn_pps == 0 || svc->ack_pps == 0;
    }
    if (now - m->window >= BW_CHAL_WINDOW_NS) {
        m->window = now;   /* plain stores: a racing CPU's count may be lost */
        m->syn = 0;
        m->unknown = 0;
    }
    __u64 n;
    __u32 limit;
    if (syn) {
        n = __sync_fetch_and_add(&m->syn, 1) + 1;
        limit = svc->syn_pps;
    } else {
        n = __sync_fetch_and_add(&m->unknown, 1) + 1;
        limit = svc->ack_pps;
    }
    if (n * BW_CHAL_WINDOWS_PER_S > limit) {
        if (m->armed_until < now)
            __sync_fetch_and_add(&m->armed, 1);
        m->armed_until = now + svc->hold_ns;
        return 1;
    }
    return now < m->armed_until;
}

/* Is the destination under challenge, without counting anything? */
static __always_inline int chal_armed(struct bw_packet *pkt, struct bw_chal_service *svc, __u64 now)
{
    if (svc->syn_pps == 0 || svc->ack_pps == 0)
        return 1;
    struct bw_chal_dst_v4 key = { .addr = pkt->dst4, .port = bw_htons(pkt->dport) };
    struct bw_chal_meter *m = chal_meter_v4.lookup(&key);
    return m && now < m->armed_until;
}

static __always_inline void chal_note_flow(struct bw_flow_v4 *flow, __u64 now)
{
    flows_v4.update(flow, &now);
}

/* The flow's entry, refreshed, or NULL when there is none or it was closing
 * and idle past BW_FLOW_CLOSING_NS (then it is removed). A FIN or RST marks
 * it closing. */
static __always_inline __u64 *chal_flow(struct bw_flow_v4 *flow, __u64 now, __u8 f)
{
    __u64 *seen = flows_v4.lookup(flow);
    if (!seen)
        return NULL;
    __u64 last = *seen;
    __u64 closing = last & BW_FLOW_CLOSING;
    if (closing && now - (last & ~BW_FLOW_CLOSING) > BW_FLOW_CLOSING_NS) {
        flows_v4.delete(flow);
        return NULL;
    }
    if (f & (BW_TCP_FIN | BW_TCP_RST))
        closing = BW_FLOW_CLOSING;
    *seen = now | closing;
    return seen;
}

static __always_inline int check_challenge(struct xdp_md *ctx, struct bw_packet *pkt,
                                           struct bw_verdict *v, struct bw_view *view)
{
    if (!(view->flags & BW_CFG_TRIE_CHALLENGE_V4))
        return 0;
    if (pkt->family != 4 || pkt->l4 != IPPROTO_TCP || !pkt->l4_seen)
        return 0;
    struct bw_chal_lpm_v4 key = { .prefixlen = 16 + 32 };
    __be16 port = bw_htons(pkt->dport);
    __builtin_memcpy(key.port, &port, 2);
    __builtin_memcpy(key.addr, &pkt->dst4, 4);
    struct bw_chal_service *svc = chal_v4.lookup(&key);
    if (!svc)
        return 0;

    __u64 now = bpf_ktime_get_ns();
    __u8 f = pkt->tcp_flags & (BW_TCP_SYN | BW_TCP_ACK | BW_TCP_RST | BW_TCP_FIN);
    __u64 *at = verified_v4.lookup(&pkt->src4);
    int verified = at && now - *at < svc->verified_ttl_ns;
    struct bw_flow_v4 flow = {
        .saddr = pkt->src4, .daddr = pkt->dst4,
        .sport = bw_htons(pkt->sport), .dport = port,
    };

    if (f == BW_TCP_SYN) {
        int armed = chal_meter(pkt, svc, now, 1);
        if (verified || !armed) {
            chal_note_flow(&flow, now);
            return armed ? decide(v, XDP_PASS, BW_PASS_VERIFIED, 0) : 0;
        }
        if (!chal_syn_ok(ctx, pkt))
            return decide(v, XDP_DROP, BW_DROP_CHALLENGE_BAD_SYN, 0);
        if (view->flags & BW_CFG_MONITOR)   /* count it, rewrite nothing: bw_out passes it */
            return decide(v, XDP_DROP, BW_DROP_CHALLENGE_SYN, 0);
        long cookie = chal_cookie(pkt);
        if (cookie < 0 || chal_write_synack(ctx, pkt, (__u32)cookie) < 0)
            return decide(v, XDP_DROP, BW_DROP_CHALLENGE_SYN, 0);
        return decide(v, XDP_TX, BW_DROP_CHALLENGE_SYN, 0);
    }

    if (verified) {
        if (f & (BW_TCP_FIN | BW_TCP_RST))
            chal_flow(&flow, now, f);   /* a verified source's connection closing */
        return chal_armed(pkt, svc, now) ? decide(v, XDP_PASS, BW_PASS_VERIFIED, 0) : 0;
    }
    if (chal_flow(&flow, now, f))
        return chal_armed(pkt, svc, now) ? decide(v, XDP_PASS, BW_PASS_FLOW, 0) : 0;
    if (f == BW_TCP_RST) {
        /* Perhaps the answer to a challenge, armed or not (the challenge may
         * have ended since): checking costs one hash, no map. */
        if (chal_answer_ok(pkt)) {
            verified_v4.update(&pkt->src4, &now);
            return decide(v, XDP_DROP, BW_DROP_CHALLENGE_ANSWER, 0);
        }
        if (!chal_armed(pkt, svc, now))
            return 0;
        return decide(v, XDP_DROP, BW_DROP_CHALLENGE_FORGED, 0);
    }
    if (!chal_meter(pkt, svc, now, 0)) {
        /* a connection seen open while all was calm (closing, if this ends it) */
        chal_note_flow(&flow, now | ((f & (BW_TCP_FIN | BW_TCP_RST)) ? BW_FLOW_CLOSING : 0));
        return 0;
    }
    return decide(v, XDP_DROP, BW_DROP_UNVERIFIED, 0);
}

#endif
