/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map keys and values. Every layout here has a ctypes twin in
 * controller/dataplane/abi.py; tests/bpf/test_abi.py compares sizes with what
 * bcc built.
 */
#ifndef BREAKWATER_STRUCTS_H
#define BREAKWATER_STRUCTS_H

#include "consts.h"

/* Run-time switches; single entry of the config map. */
struct bw_config {
    __u32 flags;      /* BW_CFG_* */
    __u32 abi;        /* BW_ABI_VERSION of the program that wrote it */
    __u64 build_id;   /* hash of the sources and sizes the running program was built from */
    __u32 gen;        /* rule-set generation packets are judged by */
    __u32 pad;
};

struct bw_in6 {
    __u32 a[4];       /* network byte order */
};

/* LPM keys start with the slot byte (gen & 1), so one trie holds both
 * buffers of a swap: prefixlen counts those 8 bits too. */
struct bw_lpm_v4 {
    __u32 prefixlen;  /* 8 + prefix length */
    __u8 slot;
    __u8 addr[4];     /* network byte order */
    __u8 pad[3];
};

struct bw_lpm_v6 {
    __u32 prefixlen;  /* 8 + prefix length */
    __u8 slot;
    __u8 addr[16];
    __u8 pad[3];
};

/* Value of every allow/deny entry: which rule put it there. */
struct bw_rule_ref {
    __u32 rule_id;    /* index into rule_stats; 0 = not attributed */
    __u32 flags;      /* BW_ALLOW_* */
};

/* Value of the exact-address deny maps: the rule and the entry's own hit
 * counters. A source denied here is counted on this entry (atomic adds) and
 * not in src_v4/src_v6: one map lookup on the drop path instead of two. */
struct bw_deny_entry {
    __u32 rule_id;       /* rule slot from generation `since` on; 0 = not attributed */
    __u32 prev_rule_id;  /* rule slot before `since`, or BW_RULE_ABSENT */
    __u32 since;         /* first generation that sees rule_id */
    __u32 until;         /* first generation that no longer sees the entry (BW_GEN_INF) */
    __u64 packets;       /* dropped (or would-drop) packets from this source */
    __u64 bytes;
};

/* Per-source counters (src_v4, src_v6). Shared across CPUs, updated with
 * atomic adds: see the comment on src_v4 in maps.h. */
struct bw_src_counters {
    __u64 packets;
    __u64 bytes;
    __u64 drops;      /* dropped, or would-drop in monitor mode */
    __u64 syn;        /* TCP SYN without ACK */
    __u64 ack;        /* TCP ACK without SYN */
    __u64 udp;
    __u64 icmp;       /* ICMP and ICMPv6 */
    __u64 gre;
    __u64 frags;      /* any IPv4/IPv6 fragment, first or not */
    struct bw_in6 last_dst;   /* destination of the source's latest packet (IPv4 in a[0]) */
};

/* Per-destination counters for the protected prefixes (dst_v4, dst_v6). */
struct bw_dst_counters {
    __u64 packets;
    __u64 bytes;
    __u64 drops;      /* dropped, or would-drop in monitor mode */
    __u64 syn;
    __u64 ack;
    __u64 udp;
    __u64 icmp;
    __u64 gre;
    __u64 frags;
    __u64 refl;       /* UDP from a reflection source port (refl_ports) */
};

/* Packets and bytes; per-CPU values of reason_stats and verdict_stats. */
struct bw_counter {
    __u64 packets;
    __u64 bytes;
};

/* Per-CPU value of rule_stats. */
struct bw_rule_counter {
    __u64 packets;       /* matched */
    __u64 bytes;
    __u64 dropped;       /* dropped (or would-drop in monitor mode) */
    __u64 rate_limited;  /* dropped for exceeding the rule's rate */
};

/* A set of signatures: bit i is signature i of a slot. */
struct bw_bits {
    __u64 w[BW_SIG_WORDS];
};

/* One signature rule. Rates are GCRA (virtual scheduling): a packet costs
 * pkt_cost ns of the rule's schedule and is within the limit when the
 * schedule runs at most pkt_tol ns ahead of now; bytes likewise, with a
 * 32.32 fixed-point cost per byte. */
struct bw_sig {
    __u32 rule_id;       /* rule slot (rule_stats, rl_agg) */
    __u32 action;        /* BW_SIG_* */
    __u32 flags;         /* BW_SIG_PER_SOURCE */
    __u32 pad;
    __u64 pkt_cost;      /* ns per packet; 0 = no packet rate */
    __u64 pkt_tol;       /* burst tolerance, ns */
    __u64 byte_cost;     /* ns per byte, 32.32 fixed point; 0 = no bit rate */
    __u64 byte_tol;      /* burst tolerance, ns */
};

/* Per slot: how many signatures, and the candidate sets for packets that
 * miss a dimension's map. */
struct bw_sig_meta {
    __u32 count;         /* signatures in this slot; 0 skips the stage */
    __u32 flags;         /* BW_SIG_SRC_V4 ... which prefix tries are in use */
    struct bw_bits src_any[2];   /* [0] IPv4, [1] IPv6: no source constraint */
    struct bw_bits dst_any[2];
    struct bw_bits noport;       /* no port constraint: for packets without ports */
    struct bw_bits notcp;        /* no TCP-flags constraint: for packets without a TCP header */
    struct bw_bits frag_yes;     /* may match a fragment */
    struct bw_bits frag_no;      /* may match a packet that is not a fragment */
    struct bw_bits monitor;      /* monitor signatures: counted, never deciding */
};

/* Key of a per-source token bucket. */
struct bw_rl_key {
    __u32 rule_id;
    __u32 family;
    struct bw_in6 addr;  /* IPv4 in a[0] */
};

/* Token-bucket state (GCRA theoretical arrival times, ns). */
struct bw_rl_state {
    __u64 tat_pkt;
    __u64 tat_byte;
};

/* SYN challenge (bpf/challenge.h). Key of chal_v4: a TCP service, the
 * destination port (network order) first, then the destination prefix, so
 * one longest-prefix lookup finds the service for an address and port;
 * prefixlen counts the 16 port bits too. */
struct bw_chal_lpm_v4 {
    __u32 prefixlen;  /* 16 + prefix length */
    __u8 port[2];     /* network byte order */
    __u8 addr[4];     /* network byte order */
    __u8 pad[2];
};

/* A challenged service: the rates above which a destination:port of it is
 * under challenge, how long that lasts and how long a verification holds. */
struct bw_chal_service {
    __u32 syn_pps;          /* SYNs/s to one destination:port that arm it; 0 = always armed */
    __u32 ack_pps;          /* packets/s of unknown connections that arm it; 0 = always armed */
    __u64 hold_ns;          /* armed this long after the last window over a threshold */
    __u64 verified_ttl_ns;  /* a source verified by a challenge stays verified this long */
};

/* Key of chal_meter_v4: one destination and port. */
struct bw_chal_dst_v4 {
    __be32 addr;
    __be16 port;
    __u16 pad;
};

/* Per destination:port SYN-rate meter (fixed windows of BW_CHAL_WINDOW_NS)
 * and the challenge mode it switches. Updated without locks by every CPU:
 * a window roll that races with a count loses at most a few packets. */
struct bw_chal_meter {
    __u64 window;       /* start of the current window, ns */
    __u64 syn;          /* SYNs in the current window */
    __u64 unknown;      /* non-SYN packets of unknown connections in the current window */
    __u64 armed_until;  /* under challenge until this time, ns (0: never armed) */
    __u64 armed;        /* windows that (re)armed the challenge: how often it fired */
};

/* Key of flows_v4: a TCP connection seen open, client side first. */
struct bw_flow_v4 {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
};

/* What the parser learned; everything later reads only this. */
struct bw_packet {
    __u32 len;           /* frame length */
    __u16 l3;            /* ethertype after VLAN tags, host order */
    __u8 family;         /* 4 or 6 once a valid IP header was read, else 0 */
    __u8 l4;             /* IP protocol of the transport header (after IPv6 extensions) */
    __u8 l4_seen;        /* the transport header was present and parsed */
    __u8 frag;           /* any fragment (first or later) */
    __u8 later_frag;     /* non-first fragment: carries no transport header */
    __u8 tcp_flags;
    __u8 icmp_type;
    __u8 hop_limit;      /* IPv6 hop limit / IPv4 TTL */
    __u8 vlans;          /* VLAN tags seen */
    __u8 l3_off;         /* offset of the IP header in the frame */
    __u16 ip_len;        /* IP length from the header: IPv4 total length, IPv6 payload + 40 */
    __u16 sport;         /* host order; 0 when no transport header */
    __u16 dport;
    __u32 tcp_seq;       /* TCP sequence number, host order */
    __be32 src4;
    __be32 dst4;
    struct bw_in6 src6;
    struct bw_in6 dst6;
};

/* What a packet is judged by: read once from config at entry. */
struct bw_view {
    __u32 flags;     /* BW_CFG_* */
    __u32 gen;       /* rule-set generation */
    __u8 slot;       /* gen & 1: the double-buffered maps' half */
};

#endif
