"""The detector's tables keyed by address: 64-bit keys, the recently seen sources, the protected destinations.

Every address becomes one 64-bit key (:class:`AddressKeys`), so a table is
a few parallel numpy arrays sorted by key and a lookup is a
``searchsorted``: :class:`SourceTable` remembers the sources seen in the
last ``window`` seconds (age, rate, destination, streak over the per-source
threshold), :class:`Destinations` gives each protected destination a slot
(its row in the detector's rate and baseline matrices), and each
destination's **group**, the prefix it is aggregated into for carpet
bombing (:func:`group_words`), a slot of its own.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from ..addresses import Prefix
from .samples import V4_MAPPED, address_words, is_v4

__all__ = [
    "F64",
    "I64",
    "U64",
    "AddressKeys",
    "Bools",
    "Destinations",
    "SourceTable",
    "exact_prefix",
    "group_words",
    "unique_sorted",
]

# The arrays the tables are made of.
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_V6_FLAG: Final = np.uint64(1 << 63)
"""Top bit of an IPv6 address's key (an IPv4 key is its mapped ``lo`` word: top bit clear)."""
# splitmix64 finaliser constants (Steele, Lea, Flood 2014).
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)


# --- keys ---------------------------------------------------------------------


def _mix(x: U64) -> U64:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return cast(U64, x ^ (x >> np.uint64(31)))


class AddressKeys:
    """One 64-bit key per address: IPv4 exactly (its mapped ``lo`` word, top
    bit clear); IPv6 a keyed hash with the top bit set. The hash key is
    random per detector, so spoofed IPv6 sources cannot be crafted to
    collide; a collision by chance (2^-64 per pair) only merges two sources'
    statistics."""

    def __init__(self) -> None:
        self._k1 = np.uint64(secrets.randbits(64))
        self._k2 = np.uint64(secrets.randbits(64))

    def __call__(self, hi: U64, lo: U64) -> U64:
        v4 = is_v4(hi, lo)
        if v4.all():
            return lo.astype(np.uint64, copy=True)
        keys = lo.astype(np.uint64, copy=True)
        v6 = ~v4
        keys[v6] = _mix(_mix(hi[v6] ^ self._k1) ^ lo[v6] ^ self._k2) | _V6_FLAG
        return keys


def exact_prefix(hi: int, lo: int) -> Prefix:
    """The /32 or /128 of an address in words (the tuple form skips string parsing)."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return Prefix(ipaddress.IPv4Network((lo & 0xFFFF_FFFF, 32)))
    return Prefix(ipaddress.IPv6Network(((hi << 64) | lo, 128)))


def unique_sorted(keys: U64) -> tuple[U64, I64]:
    """Sorted unique keys and, for each, the index of one input row holding it."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    return ks[first], order[first]


# --- the table of recently seen sources ------------------------------------------


class SourceTable:
    """Sources seen in the last ``window`` seconds, sorted by key (parallel arrays).

    ``born`` is the start of the first interval a source was seen in,
    ``rate`` an EWMA of its packet rate (time constant ``window``, decayed
    lazily from ``last``), ``dst`` the slot of its last protected
    destination (-1: none), ``streak`` its intervals in a row over the
    per-source threshold, ``mixed_at`` the end of the last interval it sent
    something other than UDP in (-inf: never; a reflector sends UDP only).
    """

    def __init__(self) -> None:
        self.key = np.zeros(0, np.uint64)
        self.hi = np.zeros(0, np.uint64)
        self.lo = np.zeros(0, np.uint64)
        self.born = np.zeros(0, np.float64)
        self.last = np.zeros(0, np.float64)
        self.rate = np.zeros(0, np.float64)
        self.dst = np.zeros(0, np.int32)
        self.streak = np.zeros(0, np.int32)
        self.mixed_at = np.zeros(0, np.float64)

    def __len__(self) -> int:
        return len(self.key)

    def positions(self, ks: U64) -> tuple[I64, Bools]:
        """Where sorted keys ``ks`` are (or would go), and which are present."""
        pos = np.searchsorted(self.key, ks).astype(np.int64)
        if not len(self.key):
            return pos, np.zeros(len(ks), dtype=bool)
        found = self.key[np.minimum(pos, len(self.key) - 1)] == ks
        return pos, found

    def insert(self, ks: U64, hi: U64, lo: U64, born: float) -> None:
        """Add sorted, unique, absent keys."""
        # one merge for all columns (np.insert would redo it per column)
        n_old, n = len(self.key), len(ks)
        new_at = np.searchsorted(self.key, ks) + np.arange(n)
        old_at = np.ones(n_old + n, dtype=bool)
        old_at[new_at] = False
        values: dict[str, npt.NDArray[Any] | float | int] = {
            "key": ks, "hi": hi, "lo": lo, "born": born, "last": born, "rate": 0.0, "dst": -1, "streak": 0,
            "mixed_at": -np.inf,
        }
        for name, value in values.items():
            old = getattr(self, name)
            merged = np.empty(n_old + n, dtype=old.dtype)
            merged[old_at] = old
            merged[new_at] = value
            setattr(self, name, merged)

    def keep(self, mask: Bools) -> None:
        for name in ("key", "hi", "lo", "born", "last", "rate", "dst", "streak", "mixed_at"):
            setattr(self, name, getattr(self, name)[mask])

    def evict(self, t: float, window: float, cap: int) -> bool:
        """Forget sources silent for ``window`` seconds (once they are a
        quarter of the table: compaction is a copy), and the least recent
        beyond ``cap``; True if rows moved."""
        moved = False
        stale = self.last <= t - window
        n_stale = int(np.count_nonzero(stale))
        if n_stale and (n_stale * 4 >= len(self) or len(self) > cap):
            self.keep(~stale)
            moved = True
        if len(self) > cap:
            mask = np.zeros(len(self), dtype=bool)
            mask[np.argpartition(self.last, len(self) - cap)[len(self) - cap :]] = True
            self.keep(mask)
            moved = True
        return moved

    def estimate(self, t: float, tau: float, rows: I64 | slice) -> F64:
        """Packet rate of ``rows`` at ``t``: the EWMA decayed to ``t`` and
        corrected for the source's age (so a new source's estimate is its
        rate so far, not a fraction of it)."""
        age = np.maximum(t - self.born[rows], 1e-9)
        decayed = self.rate[rows] * np.exp(-(t - self.last[rows]) / tau)
        est: F64 = decayed / -np.expm1(-age / tau)
        return est


# --- protected destinations ---------------------------------------------------------

_ONES: Final = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _high_mask(bits: npt.NDArray[np.int64]) -> U64:
    """Per row, a 64-bit word with its top ``bits`` bits set (0 to 64)."""
    b = np.clip(bits, 0, 64)
    shift = (64 - np.minimum(b, 63)).astype(np.uint64)  # never shift by 64 (undefined)
    mask: U64 = np.where(b == 0, np.uint64(0), _ONES << (shift - np.uint64(1)) << np.uint64(1))
    return np.where(b == 64, _ONES, mask).astype(np.uint64)


def _inside(hi: U64, lo: U64, v4: Bools, p: Prefix) -> Bools:
    """Which of the addresses are inside ``p``."""
    net = int(p.network.network_address)
    plen = p.network.prefixlen
    if p.family == 4:
        hi_n, lo_n, bits = 0, V4_MAPPED | net, 96 + plen
        fam = v4
    else:
        hi_n, lo_n, bits = net >> 64, net & 0xFFFF_FFFF_FFFF_FFFF, plen
        fam = ~v4
    n = np.full(len(hi), bits, np.int64)
    mh, ml = _high_mask(n), _high_mask(n - 64)
    inside: Bools = fam & ((hi & mh) == (np.uint64(hi_n) & mh)) & ((lo & ml) == (np.uint64(lo_n) & ml))
    return inside


def group_words(hi: U64, lo: U64, lengths: tuple[int, int],
                protected: tuple[Prefix, ...] = ()) -> tuple[U64, U64, I64]:
    """The group of each destination address: the prefix carpet bombing is
    counted over. Its length is ``lengths`` (IPv4, IPv6; 0: no groups of that
    family), or the length of the protected prefix holding the address when
    that is longer (an edge protecting a /25 counts its /25, not a /24 it
    only partly sees). Returns the group's network words and length (0: no
    group; so is a group as long as the address itself)."""
    v4 = is_v4(hi, lo)
    plen = np.where(v4, lengths[0], lengths[1]).astype(np.int64)
    on = plen > 0
    for p in protected:
        inside = _inside(hi, lo, v4, p)
        plen = np.where(inside & on, np.maximum(plen, p.network.prefixlen), plen)
    bits = np.where(v4, 96 + plen, plen)
    whole = np.where(v4, 32, 128)
    plen = np.where(on & (plen < whole), plen, 0)
    g_hi = hi & _high_mask(bits)
    g_lo = lo & _high_mask(bits - 64)
    return np.where(plen > 0, g_hi, 0).astype(np.uint64), np.where(plen > 0, g_lo, 0).astype(np.uint64), plen


class Destinations:
    """Protected destinations seen so far, and their groups: a slot each, found by key.

    An address's slot is found by its key (:meth:`lookup`); a group's by the
    key of its network and length in an index of its own (:meth:`add_groups`),
    so no address ever finds a group's slot. ``group[slot]`` is the group
    slot of an address (-1: none, and for a group itself)."""

    def __init__(self, keys: AddressKeys) -> None:
        self._keyfn = keys
        self._sorted = np.zeros(0, np.uint64)
        self._slots = np.zeros(0, np.int64)
        self._g_sorted = np.zeros(0, np.uint64)
        self._g_slots = np.zeros(0, np.int64)
        self.hi: list[int] = []
        self.lo: list[int] = []
        self._prefixes: list[Prefix | None] = []
        self.group = np.zeros(0, np.int64)
        self.is_group = np.zeros(0, bool)

    def __len__(self) -> int:
        return len(self.hi)

    def _new_slots(self, n: int, group: bool) -> None:
        self.group = np.concatenate([self.group, np.full(n, -1, np.int64)])
        self.is_group = np.concatenate([self.is_group, np.full(n, group)])

    def _group_keys(self, hi: U64, lo: U64, plen: I64) -> U64:
        keys: U64 = self._keyfn(hi, lo) ^ (plen.astype(np.uint64) << np.uint64(56))
        return keys

    def lookup_groups(self, hi: U64, lo: U64, plen: I64) -> I64:
        """Slots of the groups (network words and length); -1 for unknown ones."""
        keys = self._group_keys(hi, lo, plen)
        if not len(self._g_sorted):
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._g_sorted, keys), len(self._g_sorted) - 1)
        return np.where(self._g_sorted[pos] == keys, self._g_slots[pos], -1)

    def add_groups(self, hi: U64, lo: U64, plen: I64) -> I64:
        """Slots of the groups, giving new ones the next slots."""
        slots = self.lookup_groups(hi, lo, plen)
        new = slots < 0
        if new.any():
            keys = self._group_keys(hi[new], lo[new], plen[new])
            uniq, rows = unique_sorted(keys)
            first = len(self.hi)
            new_slots = np.arange(first, first + len(uniq), dtype=np.int64)
            at = np.searchsorted(self._g_sorted, uniq)
            self._g_sorted = np.insert(self._g_sorted, at, uniq)
            self._g_slots = np.insert(self._g_slots, at, new_slots)
            for h, lw, n in zip(hi[new][rows], lo[new][rows], plen[new][rows], strict=True):
                self.hi.append(int(h))
                self.lo.append(int(lw))
                base = exact_prefix(int(h), int(lw)).network
                self._prefixes.append(Prefix(base.supernet(new_prefix=int(n))))
            self._new_slots(len(uniq), True)
            slots = self.lookup_groups(hi, lo, plen)
        return slots

    def lookup(self, hi: U64, lo: U64) -> I64:
        """Slots of the addresses; -1 for unknown ones."""
        keys = self._keyfn(hi, lo)
        if not len(self._sorted):
            return np.full(len(keys), -1, np.int64)
        # binary search is much faster with sorted queries (cache), even counting the sort
        order = np.argsort(keys)
        ks = keys[order]
        pos = np.minimum(np.searchsorted(self._sorted, ks), len(self._sorted) - 1)
        out = np.empty(len(keys), np.int64)
        out[order] = np.where(self._sorted[pos] == ks, self._slots[pos], -1)
        return out

    def add(self, hi: U64, lo: U64) -> I64:
        """Slots of the addresses, giving new ones the next slots."""
        slots = self.lookup(hi, lo)
        new = slots < 0
        if new.any():
            keys = self._keyfn(hi[new], lo[new])
            uniq, rows = unique_sorted(keys)
            first = len(self.hi)
            new_slots = np.arange(first, first + len(uniq), dtype=np.int64)
            at = np.searchsorted(self._sorted, uniq)
            self._sorted = np.insert(self._sorted, at, uniq)
            self._slots = np.insert(self._slots, at, new_slots)
            self.hi.extend(int(v) for v in hi[new][rows])
            self.lo.extend(int(v) for v in lo[new][rows])
            self._prefixes.extend([None] * len(uniq))
            self._new_slots(len(uniq), False)
            slots = self.lookup(hi, lo)
        return slots

    def slot(self, victim: str) -> int:
        """The slot of an address, or of a group given as ``network/length``; -1 if unknown."""
        text = victim.strip()
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            hi, lo = address_words(net.network_address)
            return int(self.lookup_groups(np.array([hi], np.uint64), np.array([lo], np.uint64),
                                          np.array([net.prefixlen], np.int64))[0])
        hi, lo = address_words(text)
        return int(self.lookup(np.array([hi], np.uint64), np.array([lo], np.uint64))[0])

    def prefix(self, slot: int) -> Prefix:
        p = self._prefixes[slot]
        if p is None:
            p = self._prefixes[slot] = exact_prefix(self.hi[slot], self.lo[slot])
        return p

