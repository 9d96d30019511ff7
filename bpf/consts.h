/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Constants shared by the XDP program and user space.
 * Mirrored by controller/dataplane/abi.py; tests/unit/test_abi_consts.py checks
 * they agree.
 */
#ifndef BREAKWATER_CONSTS_H
#define BREAKWATER_CONSTS_H

/* Bumped whenever a map's key or value layout changes. */
#define BW_ABI_VERSION              3

/* struct bw_config.flags */
#define BW_CFG_MONITOR              (1U << 0) /* count would-drop, drop nothing */
#define BW_CFG_PASS_MALFORMED       (1U << 1) /* pass malformed packets instead of dropping */
/* "This trie may hold entries": an empty LPM trie still costs ~15-20 ns a
 * lookup (bench/dataplane.py), so the program skips tries whose bit is clear.
 * User space sets the bit before the first insert and clears it only after
 * seeing the trie empty, both under the pin directory's lock
 * (controller/dataplane/swap.py, controller/dataplane/protect.py), so a bit
 * is never clear while its trie holds an entry. */
#define BW_CFG_TRIE_ALLOW_V4        (1U << 8)
#define BW_CFG_TRIE_ALLOW_V6        (1U << 9)
#define BW_CFG_TRIE_DENY_PFX_V4     (1U << 10)
#define BW_CFG_TRIE_DENY_PFX_V6     (1U << 11)
/* Protected prefixes are configured: count per destination (dst_v4/dst_v6). */
#define BW_CFG_TRIE_PROTECT_V4      (1U << 12)
#define BW_CFG_TRIE_PROTECT_V6      (1U << 13)
/* Challenged TCP services are configured (chal_v4): run the challenge stage. */
#define BW_CFG_TRIE_CHALLENGE_V4    (1U << 14)

/* struct bw_rule_ref.flags (allow_v4/allow_v6 values) */
#define BW_ALLOW_MGMT               (1U << 0) /* management prefix: reason BW_PASS_MGMT */

/* Rule slots and generations (atomic rule-set swaps, controller/dataplane/swap.py).
 * config.gen is the generation packets are judged by; it is read once per
 * packet, so a packet sees one rule set whole. Double-buffered maps use slot
 * gen & 1; exact deny entries carry the generations they are valid for. */
#define BW_RULE_ABSENT              0xFFFFFFFFU /* bw_deny_entry.prev_rule_id: not present before `since` */
#define BW_GEN_INF                  0xFFFFFFFFU /* bw_deny_entry.until: never removed */
#define BW_SLOTS                    2

/* Signature table (bit-vector classifier: signature i is bit i). */
#ifndef BW_MAX_SIGS
#define BW_MAX_SIGS                 256
#endif
#define BW_SIG_WORDS                (BW_MAX_SIGS / 64)

/* struct bw_sig.action */
#define BW_SIG_DROP                 1
#define BW_SIG_RATE_LIMIT           2
#define BW_SIG_ALLOW                3
#define BW_SIG_MONITOR              4 /* count and go on: not a verdict */

/* struct bw_sig.flags */
#define BW_SIG_PER_SOURCE           (1U << 0) /* one token bucket per source */

/* struct bw_sig_meta.flags: which signature tries hold entries in this slot */
#define BW_SIG_SRC_V4               (1U << 0)
#define BW_SIG_SRC_V6               (1U << 1)
#define BW_SIG_DST_V4               (1U << 2)
#define BW_SIG_DST_V6               (1U << 3)

/* SYN challenge (bpf/challenge.h). The meter counts in fixed windows;
 * a rate of R per second crosses when a window holds more than R / (windows
 * per second) packets. */
#define BW_CHAL_WINDOW_NS           100000000ULL   /* 100 ms */
#define BW_CHAL_WINDOWS_PER_S       10
#define BW_CHAL_MSS                 1460           /* MSS option of the challenge SYN-ACK */
#define BW_CHAL_WINDOW              64240          /* its TCP window */
#define BW_CHAL_TTL                 64             /* its IP TTL */
/* flows_v4 values: last seen (ktime ns); this bit marks a connection that
 * sent a FIN or RST. A closing flow is forgotten once idle this long. */
#define BW_FLOW_CLOSING             (1ULL << 63)
#define BW_FLOW_CLOSING_NS          5000000000ULL  /* 5 s */

/* Parser bounds. */
#define BW_MAX_VLAN_TAGS            2  /* 802.1Q and 802.1ad (QinQ) */
#ifndef BW_MAX_IPV6_EXT
#define BW_MAX_IPV6_EXT             8  /* extension headers walked before giving up */
#endif

/* IPv6 ND hop limit (RFC 4861 7.1): on-link only, so it cannot be used to
 * smuggle routed traffic past the denylist. */
#define BW_ND_HOP_LIMIT             255

/* verdict_stats index: the XDP action taken, plus one slot for would-drop. */
#define BW_ACTION_ABORTED           0
#define BW_ACTION_DROP              1
#define BW_ACTION_PASS              2
#define BW_ACTION_MONITOR           3 /* would have dropped; passed in monitor mode */
#define BW_ACTION_MAX               4

#endif
