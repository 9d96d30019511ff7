"""Map keys and values and shared constants, mirrored from ``bpf/structs.h``
and ``bpf/consts.h``.

``tests/unit/test_abi.py`` checks the constants against the headers and
``tests/bpf/test_abi.py`` the struct sizes against what bcc compiled.
"""

from __future__ import annotations

import ctypes

import numpy as np

__all__ = [
    "ABI_VERSION",
    "ALLOW_MGMT",
    "CFG_MONITOR",
    "CFG_PASS_MALFORMED",
    "CFG_TRIE_CHALLENGE_V4",
    "CHAL_MSS",
    "CHAL_TTL",
    "CHAL_WINDOW",
    "CHAL_WINDOWS_PER_S",
    "CHAL_WINDOW_NS",
    "COUNTER_DTYPE",
    "DENY_DTYPE",
    "DST_COUNTERS_DTYPE",
    "DST_COUNTER_FIELDS",
    "FLOW_CLOSING",
    "FLOW_CLOSING_NS",
    "GEN_INF",
    "MAX_IPV6_EXT",
    "MAX_SIGS",
    "MAX_VLAN_TAGS",
    "PROTECT_FLAGS",
    "RULE_ABSENT",
    "RULE_COUNTER_DTYPE",
    "SIG_ALLOW",
    "SIG_DROP",
    "SIG_DST_V4",
    "SIG_DST_V6",
    "SIG_MONITOR",
    "SIG_PER_SOURCE",
    "SIG_RATE_LIMIT",
    "SIG_SRC_V4",
    "SIG_SRC_V6",
    "SIG_WORDS",
    "SLOTS",
    "SRC_COUNTERS_DTYPE",
    "SRC_COUNTER_FIELDS",
    "TRIE_FLAGS",
    "Bits",
    "ChalDstV4",
    "ChalLpmV4",
    "ChalMeter",
    "ChalService",
    "Config",
    "Counter",
    "DenyEntry",
    "DstCounters",
    "FlowV4",
    "In6",
    "LpmV4",
    "LpmV6",
    "RlKey",
    "RlState",
    "RuleCounter",
    "RuleRef",
    "Sig",
    "SigMeta",
    "SrcCounters",
]

ABI_VERSION = 3
CFG_MONITOR = 1 << 0
CFG_PASS_MALFORMED = 1 << 1
# "This trie may hold entries" bits (BW_CFG_TRIE_*), by map name.
TRIE_FLAGS = {
    "allow_v4": 1 << 8,
    "allow_v6": 1 << 9,
    "deny_pfx_v4": 1 << 10,
    "deny_pfx_v6": 1 << 11,
}
ALLOW_MGMT = 1 << 0
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT = 8
RULE_ABSENT = 0xFFFFFFFF
GEN_INF = 0xFFFFFFFF
SLOTS = 2
MAX_SIGS = 256
SIG_WORDS = MAX_SIGS // 64
SIG_DROP = 1
SIG_RATE_LIMIT = 2
SIG_ALLOW = 3
SIG_MONITOR = 4
SIG_PER_SOURCE = 1 << 0
SIG_SRC_V4 = 1 << 0
SIG_SRC_V6 = 1 << 1
SIG_DST_V4 = 1 << 2
SIG_DST_V6 = 1 << 3
# SYN challenge (bpf/challenge.h): "challenged services configured" bit, the
# meter's window and the challenge SYN-ACK's fixed fields.
CFG_TRIE_CHALLENGE_V4 = 1 << 14
CHAL_WINDOW_NS = 100_000_000
CHAL_WINDOWS_PER_S = 10
CHAL_MSS = 1460
CHAL_WINDOW = 64240
CHAL_TTL = 64
# flows_v4 values: last seen (ktime ns), with this bit once a FIN or RST was
# seen; a closing flow is forgotten once idle FLOW_CLOSING_NS.
FLOW_CLOSING = 1 << 63
FLOW_CLOSING_NS = 5_000_000_000


class Config(ctypes.Structure):
    """``struct bw_config``: run-time switches, single entry of ``config``."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("abi", ctypes.c_uint32),
        ("build_id", ctypes.c_uint64),
        ("gen", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class In6(ctypes.Structure):
    """``struct bw_in6``: an IPv6 address, network byte order."""

    _fields_ = [("a", ctypes.c_uint8 * 16)]


class LpmV4(ctypes.Structure):
    """``struct bw_lpm_v4``: LPM trie key, slot byte first (prefixlen counts it)."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("slot", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 4),
        ("pad", ctypes.c_uint8 * 3),
    ]


class LpmV6(ctypes.Structure):
    """``struct bw_lpm_v6``: LPM trie key, slot byte first (prefixlen counts it)."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("slot", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
        ("pad", ctypes.c_uint8 * 3),
    ]


class RuleRef(ctypes.Structure):
    """``struct bw_rule_ref``: value of every allow/deny entry."""

    _fields_ = [("rule_id", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class DenyEntry(ctypes.Structure):
    """``struct bw_deny_entry``: value of the exact deny maps: the rule slot,
    the generations it is valid for, and hit counters."""

    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("prev_rule_id", ctypes.c_uint32),
        ("since", ctypes.c_uint32),
        ("until", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]

    def rule_at(self, gen: int) -> int | None:
        """The rule slot generation ``gen`` sees, or None (as ``deny_rule_at``)."""
        if gen >= self.until:
            return None
        rule = self.rule_id if gen >= self.since else self.prev_rule_id
        return None if rule == RULE_ABSENT else int(rule)


SRC_COUNTER_FIELDS = ("packets", "bytes", "drops", "syn", "ack", "udp", "icmp", "gre", "frags")
DST_COUNTER_FIELDS = (*SRC_COUNTER_FIELDS, "refl")
# "Protected prefixes are configured" bits (BW_CFG_TRIE_PROTECT_*), by map name.
PROTECT_FLAGS = {"protect_v4": 1 << 12, "protect_v6": 1 << 13}


class SrcCounters(ctypes.Structure):
    """``struct bw_src_counters``: per-source counters and the latest destination."""

    _fields_ = [*((name, ctypes.c_uint64) for name in SRC_COUNTER_FIELDS),
                ("last_dst", ctypes.c_uint8 * 16)]


class DstCounters(ctypes.Structure):
    """``struct bw_dst_counters``: per-destination counters (protected prefixes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in DST_COUNTER_FIELDS]


class Counter(ctypes.Structure):
    """``struct bw_counter``: packets and bytes."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class RuleCounter(ctypes.Structure):
    """``struct bw_rule_counter``: per-rule counters."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("dropped", ctypes.c_uint64),
        ("rate_limited", ctypes.c_uint64),
    ]


class Bits(ctypes.Structure):
    """``struct bw_bits``: a set of signatures (bit i = signature i)."""

    _fields_ = [("w", ctypes.c_uint64 * SIG_WORDS)]

    @classmethod
    def of(cls, mask: int) -> Bits:
        b = cls()
        for i in range(SIG_WORDS):
            b.w[i] = (mask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF
        return b


class Sig(ctypes.Structure):
    """``struct bw_sig``: one signature rule."""

    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("action", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("pkt_cost", ctypes.c_uint64),
        ("pkt_tol", ctypes.c_uint64),
        ("byte_cost", ctypes.c_uint64),
        ("byte_tol", ctypes.c_uint64),
    ]


class SigMeta(ctypes.Structure):
    """``struct bw_sig_meta``: per-slot signature count and default candidate sets."""

    _fields_ = [
        ("count", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("src_any", Bits * 2),
        ("dst_any", Bits * 2),
        ("noport", Bits),
        ("notcp", Bits),
        ("frag_yes", Bits),
        ("frag_no", Bits),
        ("monitor", Bits),
    ]


class RlKey(ctypes.Structure):
    """``struct bw_rl_key``: per-source token bucket key."""

    _fields_ = [("rule_id", ctypes.c_uint32), ("family", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class RlState(ctypes.Structure):
    """``struct bw_rl_state``: GCRA schedules, ns."""

    _fields_ = [("tat_pkt", ctypes.c_uint64), ("tat_byte", ctypes.c_uint64)]


class ChalLpmV4(ctypes.Structure):
    """``struct bw_chal_lpm_v4``: key of ``chal_v4``, port (network order) then
    prefix; prefixlen counts the 16 port bits."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("port", ctypes.c_uint8 * 2),
        ("addr", ctypes.c_uint8 * 4),
        ("pad", ctypes.c_uint8 * 2),
    ]


class ChalService(ctypes.Structure):
    """``struct bw_chal_service``: a challenged service's thresholds."""

    _fields_ = [
        ("syn_pps", ctypes.c_uint32),
        ("ack_pps", ctypes.c_uint32),
        ("hold_ns", ctypes.c_uint64),
        ("verified_ttl_ns", ctypes.c_uint64),
    ]


class ChalDstV4(ctypes.Structure):
    """``struct bw_chal_dst_v4``: key of ``chal_meter_v4`` (network order)."""

    _fields_ = [("addr", ctypes.c_uint8 * 4), ("port", ctypes.c_uint8 * 2), ("pad", ctypes.c_uint16)]


class ChalMeter(ctypes.Structure):
    """``struct bw_chal_meter``: one destination:port's meter and challenge mode."""

    _fields_ = [
        ("window", ctypes.c_uint64),
        ("syn", ctypes.c_uint64),
        ("unknown", ctypes.c_uint64),
        ("armed_until", ctypes.c_uint64),
        ("armed", ctypes.c_uint64),
    ]


class FlowV4(ctypes.Structure):
    """``struct bw_flow_v4``: key of ``flows_v4``, client side first (network order)."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 4),
        ("daddr", ctypes.c_uint8 * 4),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
    ]


SRC_COUNTERS_DTYPE = np.dtype([*((name, "<u8") for name in SRC_COUNTER_FIELDS), ("last_dst", "V16")])
DST_COUNTERS_DTYPE = np.dtype([(name, "<u8") for name in DST_COUNTER_FIELDS])
COUNTER_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
RULE_COUNTER_DTYPE = np.dtype(
    [("packets", "<u8"), ("bytes", "<u8"), ("dropped", "<u8"), ("rate_limited", "<u8")]
)
DENY_DTYPE = np.dtype(
    [("rule_id", "<u4"), ("prev_rule_id", "<u4"), ("since", "<u4"), ("until", "<u4"),
     ("packets", "<u8"), ("bytes", "<u8")]
)
