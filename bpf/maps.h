/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map of the XDP program. Sizes are BW_MAX_* macros that user space
 * overrides with -D (controller/dataplane/maps.py: MapSizes); the defaults
 * here are the same as the Python defaults.
 *
 * With BW_PIN_DIR defined (the normal case) every map is pinned at
 * BW_PIN_DIR/<name>; a pinned map that already exists is reused, which is how
 * a restarted or upgraded program keeps its policy and counters. bcc does not
 * check a reused pin's type or sizes, so controller/dataplane/attach.py
 * does that before every build.
 *
 * Memory (printed at load by `breakwater dataplane attach`): for hash and LRU
 * maps, entries x (48 + key + value) plus 16 bytes per bucket; for per-CPU
 * arrays, entries x value x possible CPUs; LPM tries allocate per prefix
 * stored. controller/dataplane/maps.py: estimate_bytes() holds the formula.
 */
#ifndef BREAKWATER_MAPS_H
#define BREAKWATER_MAPS_H

#include "structs.h"
#include "reasons.h"
#include "consts.h"

#ifdef BW_PIN_DIR
#define BW_MAP(type, key, val, name, size, flags) \
    BPF_TABLE_PINNED(type, key, val, name, size, BW_PIN_DIR "/" #name, flags)
#else
#define BW_MAP(type, key, val, name, size, flags) \
    BPF_F_TABLE(type, key, val, name, size, flags)
#endif

#ifndef BW_MAX_DENY_V4
#define BW_MAX_DENY_V4      1048576
#endif
#ifndef BW_MAX_DENY_V6
#define BW_MAX_DENY_V6      262144
#endif
#ifndef BW_MAX_DENY_PFX_V4
#define BW_MAX_DENY_PFX_V4  262144
#endif
#ifndef BW_MAX_DENY_PFX_V6
#define BW_MAX_DENY_PFX_V6  65536
#endif
#ifndef BW_MAX_ALLOW_V4
#define BW_MAX_ALLOW_V4     16384
#endif
#ifndef BW_MAX_ALLOW_V6
#define BW_MAX_ALLOW_V6     16384
#endif
#ifndef BW_MAX_SRC_V4
#define BW_MAX_SRC_V4       1048576
#endif
#ifndef BW_MAX_SRC_V6
#define BW_MAX_SRC_V6       262144
#endif
#ifndef BW_MAX_DST_V4
#define BW_MAX_DST_V4       65536
#endif
#ifndef BW_MAX_DST_V6
#define BW_MAX_DST_V6       16384
#endif
#ifndef BW_MAX_PROTECT
#define BW_MAX_PROTECT      4096
#endif
#ifndef BW_MAX_RULES
#define BW_MAX_RULES        16384
#endif
#ifndef BW_MAX_SIG_PREFIXES
#define BW_MAX_SIG_PREFIXES 8192
#endif
#ifndef BW_MAX_RL_SRC
#define BW_MAX_RL_SRC       262144
#endif
#ifndef BW_MAX_CHALLENGE
#define BW_MAX_CHALLENGE    1024
#endif
#ifndef BW_MAX_CHAL_DST
#define BW_MAX_CHAL_DST     16384
#endif
#ifndef BW_MAX_VERIFIED_V4
#define BW_MAX_VERIFIED_V4  262144
#endif
#ifndef BW_MAX_FLOWS_V4
#define BW_MAX_FLOWS_V4     524288
#endif

// Run-time switches (monitor mode, malformed policy), the rule-set generation
// and the build id of the attached program.
BW_MAP("array", u32, struct bw_config, config, 1, 0);

// Allowlist and management prefixes, IPv4, keyed by slot byte + prefix (both
// buffers of a swap in one trie). One trie for both kinds: an entry with
// BW_ALLOW_MGMT reports BW_PASS_MGMT. Both always win, so one lookup serves both.
BW_MAP("lpm_trie", struct bw_lpm_v4, struct bw_rule_ref, allow_v4, BW_MAX_ALLOW_V4, BPF_F_NO_PREALLOC);
// Allowlist and management prefixes, IPv6.
BW_MAP("lpm_trie", struct bw_lpm_v6, struct bw_rule_ref, allow_v6, BW_MAX_ALLOW_V6, BPF_F_NO_PREALLOC);

// Denied exact IPv4 sources (/32). A hash, not the LPM trie: bench/dataplane.py
// measures a hash hit at 1M entries well below an LPM lookup, and exact
// entries are the bulk of any blocklist, so they get the cheap lookup.
// Each entry carries its own hit counters and the generations it is valid
// for (struct bw_deny_entry): a swap writes only the entries that change,
// and unchanged entries keep their counters.
BW_MAP("hash", __be32, struct bw_deny_entry, deny_v4, BW_MAX_DENY_V4, 0);
// Denied exact IPv6 sources (/128), with hit counters.
BW_MAP("hash", struct bw_in6, struct bw_deny_entry, deny_v6, BW_MAX_DENY_V6, 0);
// Denied IPv4 prefixes shorter than /32: longest match, slot byte first.
BW_MAP("lpm_trie", struct bw_lpm_v4, struct bw_rule_ref, deny_pfx_v4, BW_MAX_DENY_PFX_V4, BPF_F_NO_PREALLOC);
// Denied IPv6 prefixes shorter than /128.
BW_MAP("lpm_trie", struct bw_lpm_v6, struct bw_rule_ref, deny_pfx_v6, BW_MAX_DENY_PFX_V6, BPF_F_NO_PREALLOC);

// Per-source IPv4 counters (sources denied by an exact entry are counted on
// that entry instead). One shared LRU entry per source with atomic adds,
// not a per-CPU LRU: a per-CPU value costs 72 bytes x CPUs (4.6 KiB a source
// on 64 cores), which would cap the table near 100k sources in the memory
// budget. Contention only arises when one source lands on many CPUs at once.
BW_MAP("lru_hash", __be32, struct bw_src_counters, src_v4, BW_MAX_SRC_V4, 0);
// Per-source IPv6 counters, keyed by the full /128.
BW_MAP("lru_hash", struct bw_in6, struct bw_src_counters, src_v6, BW_MAX_SRC_V6, 0);

// Protected prefixes (the services this edge fronts), IPv4: packets to them
// are counted per destination. Configuration, not policy: not double-buffered.
BW_MAP("lpm_trie", struct bw_lpm_v4, u32, protect_v4, BW_MAX_PROTECT, BPF_F_NO_PREALLOC);
// Protected prefixes, IPv6.
BW_MAP("lpm_trie", struct bw_lpm_v6, u32, protect_v6, BW_MAX_PROTECT, BPF_F_NO_PREALLOC);
// Per-destination counters inside the protected prefixes, IPv4 (LRU).
BW_MAP("lru_hash", __be32, struct bw_dst_counters, dst_v4, BW_MAX_DST_V4, 0);
// Per-destination counters inside the protected prefixes, IPv6.
BW_MAP("lru_hash", struct bw_in6, struct bw_dst_counters, dst_v6, BW_MAX_DST_V6, 0);
// Reflection source ports (1 = amplification port), for the refl counter.
BW_MAP("array", u32, u32, refl_ports, 65536, 0);

// Per-rule counters (matched, bytes, dropped, rate-limited), indexed by rule slot.
BW_MAP("percpu_array", u32, struct bw_rule_counter, rule_stats, BW_MAX_RULES, 0);

// BPF_F_MMAPABLE arrays: user space fills the idle slot of a swap with plain
// stores through mmap (4 MiB of port bitmaps in about a millisecond, where a
// batch update takes tens); no packet reads the idle slot.
#define BW_F_MMAPABLE (1U << 10)

// Signatures in evaluation order, slot s at [s * BW_MAX_SIGS ...].
BW_MAP("array", u32, struct bw_sig, sigs, BW_SLOTS * BW_MAX_SIGS, BW_F_MMAPABLE);
// Per slot: signature count, trie use, and the default candidate sets.
BW_MAP("array", u32, struct bw_sig_meta, sig_meta, BW_SLOTS, 0);
// Candidate signatures by IP protocol, [slot * 256 + protocol].
BW_MAP("array", u32, struct bw_bits, sig_proto, BW_SLOTS * 256, BW_F_MMAPABLE);
// Candidate signatures by source port, [slot * 65536 + port]: a port range is
// one bit in many entries, so a lookup costs the same for any range.
BW_MAP("array", u32, struct bw_bits, sig_sport, BW_SLOTS * 65536, BW_F_MMAPABLE);
// Candidate signatures by destination port, [slot * 65536 + port].
BW_MAP("array", u32, struct bw_bits, sig_dport, BW_SLOTS * 65536, BW_F_MMAPABLE);
// Candidate signatures by TCP flags byte, [slot * 256 + flags].
BW_MAP("array", u32, struct bw_bits, sig_tcpflags, BW_SLOTS * 256, BW_F_MMAPABLE);
// Candidate signatures by IP length, [slot * 65536 + length].
BW_MAP("array", u32, struct bw_bits, sig_len, BW_SLOTS * 65536, BW_F_MMAPABLE);
// Candidate signatures by source prefix, IPv4: each prefix's bits include
// those of every shorter prefix containing it (one longest-match lookup
// yields the whole candidate set).
BW_MAP("lpm_trie", struct bw_lpm_v4, struct bw_bits, sig_src_v4, BW_MAX_SIG_PREFIXES, BPF_F_NO_PREALLOC);
// Candidate signatures by source prefix, IPv6.
BW_MAP("lpm_trie", struct bw_lpm_v6, struct bw_bits, sig_src_v6, BW_MAX_SIG_PREFIXES, BPF_F_NO_PREALLOC);
// Candidate signatures by destination prefix, IPv4.
BW_MAP("lpm_trie", struct bw_lpm_v4, struct bw_bits, sig_dst_v4, BW_MAX_SIG_PREFIXES, BPF_F_NO_PREALLOC);
// Candidate signatures by destination prefix, IPv6.
BW_MAP("lpm_trie", struct bw_lpm_v6, struct bw_bits, sig_dst_v6, BW_MAX_SIG_PREFIXES, BPF_F_NO_PREALLOC);
// Aggregate token buckets, one per rule slot: the whole rule shares it, so it
// holds against floods where every packet has a new (spoofed) source.
BW_MAP("array", u32, struct bw_rl_state, rl_agg, BW_MAX_RULES, 0);
// Per-source token buckets of per_source rate-limit rules (LRU: sources come and go).
BW_MAP("lru_hash", struct bw_rl_key, struct bw_rl_state, rl_src, BW_MAX_RL_SRC, 0);
// Challenged TCP services (bpf/challenge.h), IPv4: destination port and
// prefix -> thresholds. Configuration, not policy: not double-buffered;
// skipped unless BW_CFG_TRIE_CHALLENGE_V4 is set.
BW_MAP("lpm_trie", struct bw_chal_lpm_v4, struct bw_chal_service, chal_v4, BW_MAX_CHALLENGE, BPF_F_NO_PREALLOC);
// SYN-rate meter and challenge mode per destination:port of a challenged
// service (LRU: the destinations that receive SYNs).
BW_MAP("lru_hash", struct bw_chal_dst_v4, struct bw_chal_meter, chal_meter_v4, BW_MAX_CHAL_DST, 0);
// Sources that answered a challenge -> time of the answer (ktime ns). LRU: a
// flood of answers cannot grow it; the TTL is the service's verified_ttl_ns.
BW_MAP("lru_hash", __be32, u64, verified_v4, BW_MAX_VERIFIED_V4, 0);
// Connections to challenged services seen open (a SYN or packet passed while
// not under challenge, or a verified source's SYN) -> last seen (ktime ns).
// LRU, so a flood of distinct tuples cannot grow it past BW_MAX_FLOWS_V4.
BW_MAP("lru_hash", struct bw_flow_v4, u64, flows_v4, BW_MAX_FLOWS_V4, 0);
// Packets and bytes per verdict reason (BW_REASON_*).
BW_MAP("percpu_array", u32, struct bw_counter, reason_stats, BW_REASON_MAX, 0);
// Packets and bytes per action taken (BW_ACTION_*).
BW_MAP("percpu_array", u32, struct bw_counter, verdict_stats, BW_ACTION_MAX, 0);

/* LPM trie keys: the slot byte (gen & 1; 0 for the protect tries, which are
 * not double-buffered) and the address, at full length. */
static __always_inline void lpm_v4_key(struct bw_lpm_v4 *k, __u8 slot, __be32 addr)
{
    k->prefixlen = 8 + 32;
    k->slot = slot;
    __builtin_memcpy(k->addr, &addr, 4);
}

static __always_inline void lpm_v6_key(struct bw_lpm_v6 *k, __u8 slot, const struct bw_in6 *addr)
{
    k->prefixlen = 8 + 128;
    k->slot = slot;
    __builtin_memcpy(k->addr, addr, 16);
}

#endif
