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
    "COUNTER_DTYPE",
    "MAX_IPV6_EXT",
    "MAX_VLAN_TAGS",
    "SRC_COUNTERS_DTYPE",
    "SRC_COUNTER_FIELDS",
    "TRIE_FLAGS",
    "Config",
    "Counter",
    "DenyEntry",
    "In6",
    "LpmV4",
    "LpmV6",
    "RuleRef",
    "SrcCounters",
]

ABI_VERSION = 1
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


class Config(ctypes.Structure):
    """``struct bw_config``: run-time switches, single entry of ``config``."""

    _fields_ = [("flags", ctypes.c_uint32), ("abi", ctypes.c_uint32), ("build_id", ctypes.c_uint64)]


class In6(ctypes.Structure):
    """``struct bw_in6``: an IPv6 address, network byte order."""

    _fields_ = [("a", ctypes.c_uint8 * 16)]


class LpmV4(ctypes.Structure):
    """``struct bw_lpm_v4``: LPM trie key."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class LpmV6(ctypes.Structure):
    """``struct bw_lpm_v6``: LPM trie key."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class RuleRef(ctypes.Structure):
    """``struct bw_rule_ref``: value of every allow/deny entry."""

    _fields_ = [("rule_id", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class DenyEntry(ctypes.Structure):
    """``struct bw_deny_entry``: value of the exact deny maps, with hit counters."""

    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


SRC_COUNTER_FIELDS = ("packets", "bytes", "drops", "syn", "ack", "udp", "icmp", "gre", "frags")


class SrcCounters(ctypes.Structure):
    """``struct bw_src_counters``: per-source counters."""

    _fields_ = [(name, ctypes.c_uint64) for name in SRC_COUNTER_FIELDS]


class Counter(ctypes.Structure):
    """``struct bw_counter``: packets and bytes."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


SRC_COUNTERS_DTYPE = np.dtype([(name, "<u8") for name in SRC_COUNTER_FIELDS])
COUNTER_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
