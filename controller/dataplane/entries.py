"""Allow and deny entries: add, remove and list them.

An entry is a prefix and the rule slot that put it there; /32 and /128 go to
the exact-address hash maps, shorter prefixes to the LPM tries. Every change
goes through :func:`controller.dataplane.swap.apply`: the current contents are read,
changed, and swapped in whole, so a change is all or nothing (a full map
raises :class:`MapFullError` with nothing changed) and a packet never sees
half of it. Signatures are carried over untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..addresses import Prefix
from ..errors import InputError
from . import abi, swap
from .pinned import MapSet

__all__ = ["ApplyResult", "Entry", "add", "entries", "remove"]

List = Literal["allow", "deny"]


@dataclass(frozen=True)
class Entry:
    """One allow or deny entry."""

    prefix: Prefix
    rule_id: int = 0  # rule slot the entry counts against; 0 = not attributed
    management: bool = False  # allow list only: reported as PASS_MGMT
    hits: int = 0  # exact deny entries: packets dropped from this source (read back only)
    hit_bytes: int = 0

    def ref(self) -> bytes:
        """``struct bw_rule_ref`` of a trie entry."""
        return bytes(abi.RuleRef(self.rule_id, abi.ALLOW_MGMT if self.management else 0))


@dataclass(frozen=True)
class ApplyResult:
    added: int
    updated: int
    unchanged: int


def target(which: List, prefix: Prefix) -> str:
    """The map an entry for ``prefix`` lives in."""
    fam = "v4" if prefix.family == 4 else "v6"
    if which == "allow":
        return f"allow_{fam}"
    return f"deny_{fam}" if prefix.is_exact else f"deny_pfx_{fam}"


def trie_key(prefix: Prefix) -> swap.TrieKey:
    return (prefix.network.prefixlen, prefix.network.network_address.packed)


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


def add(maps: MapSet, which: List, items: Iterable[Entry]) -> ApplyResult:
    """Add or update entries. Nothing is changed if any entry is invalid or
    any map would overflow. A repeated prefix keeps its last entry."""
    batch = list(items)
    _validate(which, batch, maps)
    last = {(target(which, e.prefix), e.prefix): e for e in batch}  # a repeat: the last wins
    with maps.locked():
        image = swap.read_image(maps)
        added = updated = unchanged = 0
        for (name, prefix), e in last.items():
            old: object
            new: object
            if name in image.exact:
                table = image.exact[name]
                key = prefix.exact_key()
                old, new = table.get(key), e.rule_id
                table[key] = e.rule_id
            else:
                tries = image.tries.setdefault(name, {})
                tk = trie_key(prefix)
                old, new = tries.get(tk), e.ref()
                tries[tk] = e.ref()
            if old is None:
                added += 1
            elif old == new:
                unchanged += 1
            else:
                updated += 1
        if added or updated:
            swap.apply(maps, image)
    return ApplyResult(added, updated, unchanged)


def remove(maps: MapSet, which: List, prefixes: Iterable[Prefix]) -> int:
    """Remove entries; absent ones are ignored. Returns how many were removed."""
    with maps.locked():
        image = swap.read_image(maps)
        removed = 0
        for p in prefixes:
            name = target(which, p)
            if name in image.exact:
                removed += image.exact[name].pop(p.exact_key(), None) is not None
            else:
                removed += image.tries.get(name, {}).pop(trie_key(p), None) is not None
        if removed:
            swap.apply(maps, image)
    return removed


def entries(maps: MapSet, which: List) -> list[Entry]:
    """Every entry of the allow or deny list in force, sorted by prefix."""
    image = swap.read_image(maps)
    out: list[Entry] = []
    names = ("allow_v4", "allow_v6") if which == "allow" else ("deny_pfx_v4", "deny_pfx_v6")
    for name in names:
        for (plen, addr), value in image.tries.get(name, {}).items():
            ref = abi.RuleRef.from_buffer_copy(value)
            prefix = Prefix.from_parts(addr, plen)
            out.append(Entry(prefix, ref.rule_id, bool(ref.flags & abi.ALLOW_MGMT)))
    if which == "deny":
        for name in swap.EXACT_MAPS:
            visible = image.exact[name]
            keys, values, n = maps[name].read_all()
            ksz = maps[name].spec.key_size
            rows = np.frombuffer(values, dtype=abi.DENY_DTYPE, count=n)
            for i in range(n):
                key = keys[i * ksz : (i + 1) * ksz]
                rule = visible.get(key)
                if rule is not None:
                    out.append(Entry(Prefix.from_exact_key(key), rule, False,
                                     int(rows[i]["packets"]), int(rows[i]["bytes"])))
    out.sort(key=lambda e: (e.prefix.family, e.prefix))
    return out
