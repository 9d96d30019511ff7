"""Allow and deny entries: add, remove and list them in the pinned maps.

An entry is a prefix and the rule id that put it there; /32 and /128 go to
the exact-address hash maps, shorter prefixes to the LPM tries. Every add is
all or nothing across the maps it touches: a full map raises
:class:`MapFullError` after undoing what the call inserted.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from . import abi
from .addresses import Prefix
from .bpfmap import MapSet, PinnedMap
from .errors import BreakwaterError, InputError

__all__ = ["ApplyResult", "Entry", "add", "entries", "remove"]

List = Literal["allow", "deny"]


@dataclass(frozen=True)
class Entry:
    """One allow or deny entry."""

    prefix: Prefix
    rule_id: int = 0
    management: bool = False  # allow list only: reported as PASS_MGMT
    hits: int = 0  # exact deny entries: packets dropped from this source (read back only)
    hit_bytes: int = 0

    def ref(self) -> bytes:
        """The (rule id, flags) head every allow/deny value starts with."""
        return bytes(abi.RuleRef(self.rule_id, abi.ALLOW_MGMT if self.management else 0))


REF_SIZE = 8  # sizeof(struct bw_rule_ref): the head of every allow/deny value


@dataclass(frozen=True)
class ApplyResult:
    added: int
    updated: int
    unchanged: int


def _target(which: List, prefix: Prefix) -> tuple[str, bytes]:
    """Map name and key for ``prefix``."""
    fam = "v4" if prefix.family == 4 else "v6"
    if which == "allow":
        return f"allow_{fam}", prefix.lpm_key()
    if prefix.is_exact:
        return f"deny_{fam}", prefix.exact_key()
    return f"deny_pfx_{fam}", prefix.lpm_key()


def _validate(which: List, items: Sequence[Entry], maps: MapSet) -> None:
    max_rules = maps["rule_stats"].max_entries
    for i, e in enumerate(items):
        if not 0 <= e.rule_id < max_rules:
            raise InputError(
                f"entries[{i}].rule_id: {e.rule_id} is out of range 0..{max_rules - 1} "
                "(the rules map size)"
            )
        if e.management and which != "allow":
            raise InputError(f"entries[{i}].management: only allow entries can be management")


def _config(maps: MapSet) -> abi.Config:
    raw = maps["config"].lookup(bytes(4))
    return abi.Config.from_buffer_copy(raw) if raw else abi.Config()


def _set_trie_bits(maps: MapSet, names: Iterable[str]) -> None:
    """Mark tries as possibly non-empty before their first insert."""
    bits = 0
    for n in names:
        bits |= abi.TRIE_FLAGS.get(n, 0)
    cfg = _config(maps)
    if bits and cfg.flags & bits != bits:
        cfg.flags |= bits
        maps["config"].update(bytes(4), bytes(cfg))


def _clear_empty_trie_bits(maps: MapSet, names: Iterable[str]) -> None:
    cfg = _config(maps)
    flags = cfg.flags
    for n in names:
        if n in abi.TRIE_FLAGS and maps.is_empty(n):
            flags &= ~abi.TRIE_FLAGS[n]
    if flags != cfg.flags:
        cfg.flags = flags
        maps["config"].update(bytes(4), bytes(cfg))


def add(maps: MapSet, which: List, items: Iterable[Entry]) -> ApplyResult:
    """Add or update entries. Nothing is changed if any entry is invalid or
    any map would overflow. A repeated prefix keeps its last entry."""
    batch = list(items)
    _validate(which, batch, maps)
    with maps.locked():
        return _add_locked(maps, which, batch)


def _add_locked(maps: MapSet, which: List, batch: list[Entry]) -> ApplyResult:
    grouped: dict[str, dict[bytes, bytes]] = {}
    for e in batch:
        name, key = _target(which, e.prefix)
        grouped.setdefault(name, {})[key] = e.ref()

    _set_trie_bits(maps, grouped)
    inserted: list[tuple[PinnedMap, list[bytes]]] = []
    updates: list[tuple[PinnedMap, list[bytes], list[bytes]]] = []
    added = updated = unchanged = 0
    try:
        for name, kv in grouped.items():
            m = maps[name]
            # Exact deny values carry hit counters after the head: zero for a
            # new entry, kept when an existing entry changes its rule id.
            tail = bytes(m.spec.value_size - REF_SIZE)
            keys = list(kv)
            present = m.contains(keys)
            new = [k for k in keys if k not in present]
            changed, changed_values = [], []
            for k in keys:
                if k in present:
                    old = m.lookup(k) or bytes(m.spec.value_size)
                    if old[:REF_SIZE] != kv[k]:
                        changed.append(k)
                        changed_values.append(kv[k] + old[REF_SIZE:])
            m.insert_new(new, [kv[k] + tail for k in new])
            inserted.append((m, new))
            updates.append((m, changed, changed_values))
            added += len(new)
            updated += len(changed)
            unchanged += len(present) - len(changed)
    except BreakwaterError:
        for m, keys in inserted:
            m.delete_many(keys)
        _clear_empty_trie_bits(maps, grouped)
        raise
    for m, keys, values in updates:
        if keys:
            m.overwrite(keys, values)
    return ApplyResult(added, updated, unchanged)


def remove(maps: MapSet, which: List, prefixes: Iterable[Prefix]) -> int:
    """Remove entries; absent ones are ignored. Returns how many were removed."""
    grouped: dict[str, list[bytes]] = {}
    for p in prefixes:
        name, key = _target(which, p)
        grouped.setdefault(name, []).append(key)
    with maps.locked():
        removed = sum(maps[name].delete_many(keys) for name, keys in grouped.items())
        _clear_empty_trie_bits(maps, grouped)
    return removed


def entries(maps: MapSet, which: List) -> list[Entry]:
    """Every entry of the allow or deny list, sorted by prefix."""
    names = ("allow_v4", "allow_v6") if which == "allow" else (
        "deny_v4", "deny_v6", "deny_pfx_v4", "deny_pfx_v6")
    out: list[Entry] = []
    for name in names:
        m = maps[name]
        ksz, vsz = m.spec.key_size, m.spec.value_size
        keys, values, n = m.read_all()
        lpm = m.spec.type_name == "lpm_trie"
        for i in range(n):
            key = keys[i * ksz : (i + 1) * ksz]
            value = values[i * vsz : (i + 1) * vsz]
            ref = abi.RuleRef.from_buffer_copy(value[:REF_SIZE])
            prefix = Prefix.from_lpm_key(key) if lpm else Prefix.from_exact_key(key)
            hits = hit_bytes = 0
            if vsz == ctypes.sizeof(abi.DenyEntry):
                d = abi.DenyEntry.from_buffer_copy(value)
                hits, hit_bytes = d.packets, d.bytes
            out.append(Entry(prefix, ref.rule_id, bool(ref.flags & abi.ALLOW_MGMT), hits, hit_bytes))
    out.sort(key=lambda e: (e.prefix.family, e.prefix))
    return out
