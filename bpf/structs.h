/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map keys and values. Every layout here has a ctypes twin in
 * controller/abi.py; tests/bpf/test_abi.py compares sizes with what bcc built.
 */
#ifndef BREAKWATER_STRUCTS_H
#define BREAKWATER_STRUCTS_H

/* Run-time switches; single entry of the config map. */
struct bw_config {
    __u32 flags;      /* BW_CFG_* */
    __u32 abi;        /* BW_ABI_VERSION of the program that wrote it */
    __u64 build_id;   /* hash of the sources and sizes the running program was built from */
};

struct bw_in6 {
    __u32 a[4];       /* network byte order */
};

struct bw_lpm_v4 {
    __u32 prefixlen;
    __u32 addr;       /* network byte order */
};

struct bw_lpm_v6 {
    __u32 prefixlen;
    struct bw_in6 addr;
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
    __u32 rule_id;    /* index into rule_stats; 0 = not attributed */
    __u32 flags;
    __u64 packets;    /* dropped (or would-drop) packets from this source */
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
};

/* Packets and bytes; per-CPU values of reason_stats, verdict_stats, rule_stats. */
struct bw_counter {
    __u64 packets;
    __u64 bytes;
};

#endif
