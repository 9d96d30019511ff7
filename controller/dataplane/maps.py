"""The XDP program's maps: names, layouts, sizes and memory.

One :class:`MapSpec` per map in ``bpf/maps.h``. Sizes come from
:class:`MapSizes` and reach the C side as ``-DBW_MAX_*`` flags, so a build
and the pinned maps it reuses can be checked against each other
(:meth:`MapSpec.expected`).
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InputError
from . import abi
from .libbpf import possible_cpus
from .reasons import ACTION_MAX, REASON_MAX

__all__ = [
    "BPF_F_MMAPABLE",
    "BPF_F_NO_PREALLOC",
    "HTAB_BUCKET_BYTES",
    "HTAB_ELEM_OVERHEAD",
    "LPM_NODE_OVERHEAD",
    "MAP_SPECS",
    "MAX_MAP_ENTRIES",
    "MapSizes",
    "MapSpec",
    "estimate_bytes",
    "fdinfo_memlock",
    "spec",
    "total_estimate",
]

Role = Literal["config", "policy", "counters"]

# struct htab_elem overhead before the key (kernel/bpf/hashtab.c), per element.
HTAB_ELEM_OVERHEAD = 48
# One bucket (hlist_nulls_head + lock) per power-of-two slot.
HTAB_BUCKET_BYTES = 16
# struct lpm_trie_node overhead before the prefix data (kernel/bpf/lpm_trie.c).
LPM_NODE_OVERHEAD = 40
# Largest map size accepted from a config: 64M entries.
MAX_MAP_ENTRIES = 1 << 26


@dataclass(frozen=True)
class MapSizes:
    """Entries per map. Defaults fit the 512 MiB budget on a 64-CPU server
    (``breakwater dataplane attach`` prints the total for this machine)."""

    deny_v4: int = 1 << 20
    deny_v6: int = 1 << 18
    deny_pfx_v4: int = 1 << 18
    deny_pfx_v6: int = 1 << 16
    allow_v4: int = 1 << 14
    allow_v6: int = 1 << 14
    src_v4: int = 1 << 20
    src_v6: int = 1 << 18
    rules: int = 1 << 14
    sig_prefixes: int = 1 << 13
    rl_src: int = 1 << 18
    dst_v4: int = 1 << 16
    dst_v6: int = 1 << 14
    protect: int = 1 << 12
    challenge: int = 1 << 10
    chal_dst: int = 1 << 14
    verified_v4: int = 1 << 18
    flows_v4: int = 1 << 19

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"map size {f.name}: must be an integer, got {value!r}")
            if not 1 <= value <= MAX_MAP_ENTRIES:
                raise InputError(
                    f"map size {f.name}: {value} is out of range 1..{MAX_MAP_ENTRIES}"
                )

    def cflags(self) -> list[str]:
        """The ``-D`` flags that size the C maps."""
        return [f"-DBW_MAX_{f.name.upper()}={getattr(self, f.name)}" for f in dataclasses.fields(self)]

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MapSizes:
        """Build from a config table; unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise InputError(f"map size {key!r}: unknown map; known: {', '.join(sorted(known))}")
        return cls(**data)  # type: ignore[arg-type]


CType = type[ctypes.Structure] | type[ctypes.c_uint32] | type[ctypes.c_uint64]


@dataclass(frozen=True)
class MapSpec:
    """What Breakwater expects of one map."""

    name: str
    type_id: int  # enum bpf_map_type
    type_name: str
    key: CType
    value: CType
    role: Role
    purpose: str
    size_field: str | None = None  # MapSizes attribute
    fixed_entries: int = 0  # when not sized by MapSizes
    percpu: bool = False
    flags: int = 0

    @property
    def key_size(self) -> int:
        return ctypes.sizeof(self.key)

    @property
    def value_size(self) -> int:
        return ctypes.sizeof(self.value)

    def entries(self, sizes: MapSizes) -> int:
        return int(getattr(sizes, self.size_field)) if self.size_field else self.fixed_entries

    def full_value_size(self) -> int:
        """Bytes of one value as a syscall sees it (rounded, times CPUs if per-CPU)."""
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size


BPF_F_NO_PREALLOC = 1
BPF_F_MMAPABLE = 1 << 10

MAP_SPECS: tuple[MapSpec, ...] = (
    MapSpec("config", 2, "array", ctypes.c_uint32, abi.Config, "config",
            "run-time switches and build id", fixed_entries=1),
    MapSpec("allow_v4", 11, "lpm_trie", abi.LpmV4, abi.RuleRef, "policy",
            "allowlist and management prefixes, IPv4", "allow_v4", flags=BPF_F_NO_PREALLOC),
    MapSpec("allow_v6", 11, "lpm_trie", abi.LpmV6, abi.RuleRef, "policy",
            "allowlist and management prefixes, IPv6", "allow_v6", flags=BPF_F_NO_PREALLOC),
    MapSpec("deny_v4", 1, "hash", ctypes.c_uint32, abi.DenyEntry, "policy",
            "denied exact IPv4 sources", "deny_v4"),
    MapSpec("deny_v6", 1, "hash", abi.In6, abi.DenyEntry, "policy",
            "denied exact IPv6 sources", "deny_v6"),
    MapSpec("deny_pfx_v4", 11, "lpm_trie", abi.LpmV4, abi.RuleRef, "policy",
            "denied IPv4 prefixes", "deny_pfx_v4", flags=BPF_F_NO_PREALLOC),
    MapSpec("deny_pfx_v6", 11, "lpm_trie", abi.LpmV6, abi.RuleRef, "policy",
            "denied IPv6 prefixes", "deny_pfx_v6", flags=BPF_F_NO_PREALLOC),
    MapSpec("src_v4", 9, "lru_hash", ctypes.c_uint32, abi.SrcCounters, "counters",
            "per-source IPv4 counters", "src_v4"),
    MapSpec("src_v6", 9, "lru_hash", abi.In6, abi.SrcCounters, "counters",
            "per-source IPv6 counters", "src_v6"),
    MapSpec("protect_v4", 11, "lpm_trie", abi.LpmV4, ctypes.c_uint32, "config",
            "protected prefixes (counted per destination), IPv4", "protect", flags=BPF_F_NO_PREALLOC),
    MapSpec("protect_v6", 11, "lpm_trie", abi.LpmV6, ctypes.c_uint32, "config",
            "protected prefixes (counted per destination), IPv6", "protect", flags=BPF_F_NO_PREALLOC),
    MapSpec("dst_v4", 9, "lru_hash", ctypes.c_uint32, abi.DstCounters, "counters",
            "per-destination counters in the protected prefixes, IPv4", "dst_v4"),
    MapSpec("dst_v6", 9, "lru_hash", abi.In6, abi.DstCounters, "counters",
            "per-destination counters in the protected prefixes, IPv6", "dst_v6"),
    MapSpec("refl_ports", 2, "array", ctypes.c_uint32, ctypes.c_uint32, "config",
            "reflection source ports (1 = amplification port)", fixed_entries=65536),
    MapSpec("rule_stats", 6, "percpu_array", ctypes.c_uint32, abi.RuleCounter, "counters",
            "per-rule counters: matched, dropped, rate-limited", "rules", percpu=True),
    MapSpec("reason_stats", 6, "percpu_array", ctypes.c_uint32, abi.Counter, "counters",
            "packets and bytes per verdict reason", fixed_entries=REASON_MAX, percpu=True),
    MapSpec("verdict_stats", 6, "percpu_array", ctypes.c_uint32, abi.Counter, "counters",
            "packets and bytes per action", fixed_entries=ACTION_MAX, percpu=True),
    MapSpec("sigs", 2, "array", ctypes.c_uint32, abi.Sig, "policy",
            "signatures in evaluation order, per slot", fixed_entries=abi.SLOTS * abi.MAX_SIGS,
            flags=BPF_F_MMAPABLE),
    MapSpec("sig_meta", 2, "array", ctypes.c_uint32, abi.SigMeta, "policy",
            "signature count and default candidates, per slot", fixed_entries=abi.SLOTS),
    MapSpec("sig_proto", 2, "array", ctypes.c_uint32, abi.Bits, "policy",
            "candidate signatures by IP protocol", fixed_entries=abi.SLOTS * 256, flags=BPF_F_MMAPABLE),
    MapSpec("sig_sport", 2, "array", ctypes.c_uint32, abi.Bits, "policy",
            "candidate signatures by source port", fixed_entries=abi.SLOTS * 65536, flags=BPF_F_MMAPABLE),
    MapSpec("sig_dport", 2, "array", ctypes.c_uint32, abi.Bits, "policy",
            "candidate signatures by destination port", fixed_entries=abi.SLOTS * 65536,
            flags=BPF_F_MMAPABLE),
    MapSpec("sig_tcpflags", 2, "array", ctypes.c_uint32, abi.Bits, "policy",
            "candidate signatures by TCP flags byte", fixed_entries=abi.SLOTS * 256,
            flags=BPF_F_MMAPABLE),
    MapSpec("sig_len", 2, "array", ctypes.c_uint32, abi.Bits, "policy",
            "candidate signatures by IP length", fixed_entries=abi.SLOTS * 65536,
            flags=BPF_F_MMAPABLE),
    MapSpec("sig_src_v4", 11, "lpm_trie", abi.LpmV4, abi.Bits, "policy",
            "candidate signatures by source prefix, IPv4", "sig_prefixes", flags=BPF_F_NO_PREALLOC),
    MapSpec("sig_src_v6", 11, "lpm_trie", abi.LpmV6, abi.Bits, "policy",
            "candidate signatures by source prefix, IPv6", "sig_prefixes", flags=BPF_F_NO_PREALLOC),
    MapSpec("sig_dst_v4", 11, "lpm_trie", abi.LpmV4, abi.Bits, "policy",
            "candidate signatures by destination prefix, IPv4", "sig_prefixes", flags=BPF_F_NO_PREALLOC),
    MapSpec("sig_dst_v6", 11, "lpm_trie", abi.LpmV6, abi.Bits, "policy",
            "candidate signatures by destination prefix, IPv6", "sig_prefixes", flags=BPF_F_NO_PREALLOC),
    MapSpec("rl_agg", 2, "array", ctypes.c_uint32, abi.RlState, "counters",
            "aggregate token buckets, one per rule slot", "rules"),
    MapSpec("rl_src", 9, "lru_hash", abi.RlKey, abi.RlState, "counters",
            "per-source token buckets", "rl_src"),
    MapSpec("chal_v4", 11, "lpm_trie", abi.ChalLpmV4, abi.ChalService, "config",
            "challenged TCP services (port + destination prefix), IPv4", "challenge",
            flags=BPF_F_NO_PREALLOC),
    MapSpec("chal_meter_v4", 9, "lru_hash", abi.ChalDstV4, abi.ChalMeter, "counters",
            "SYN-rate meter and challenge mode per destination:port", "chal_dst"),
    MapSpec("verified_v4", 9, "lru_hash", ctypes.c_uint32, ctypes.c_uint64, "counters",
            "sources verified by a challenge -> time of the answer", "verified_v4"),
    MapSpec("flows_v4", 9, "lru_hash", abi.FlowV4, ctypes.c_uint64, "counters",
            "connections to challenged services seen open -> last seen", "flows_v4"),
)


def spec(name: str) -> MapSpec:
    for s in MAP_SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _r8(n: int) -> int:
    return (n + 7) // 8 * 8


def estimate_bytes(s: MapSpec, entries: int, cpus: int | None = None) -> int:
    """Upper-bound memory of a map: the formula documented in ``bpf/maps.h``.

    hash/LRU: entries x (48 + key + value) + 16 x buckets;
    per-CPU array: entries x value x CPUs; array: entries x value;
    LPM trie: entries x (40 + prefix bytes + value), allocated as prefixes are stored.
    """
    ncpu = cpus if cpus is not None else possible_cpus()
    if s.type_name in ("hash", "lru_hash"):
        return entries * (HTAB_ELEM_OVERHEAD + _r8(s.key_size) + _r8(s.value_size)) + (
            HTAB_BUCKET_BYTES * _pow2(entries)
        )
    if s.type_name == "percpu_array":
        return entries * _r8(s.value_size) * ncpu
    if s.type_name == "array":
        return entries * _r8(s.value_size)
    if s.type_name == "lpm_trie":
        return entries * (LPM_NODE_OVERHEAD + (s.key_size - 4) + _r8(s.value_size))
    raise ValueError(s.type_name)


def fdinfo_memlock(fd: int) -> int | None:
    """The kernel's own accounting of a map's memory (``memlock`` in fdinfo)."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return None


def total_estimate(sizes: MapSizes, cpus: int | None = None) -> int:
    """Sum of :func:`estimate_bytes` over every map."""
    return sum(estimate_bytes(s, s.entries(sizes), cpus) for s in MAP_SPECS)

