"""The sources each destination knew in peacetime: UDP senders learned before any attack.

:class:`KnownSources` keeps, per protected destination, the UDP sources
that sent to it while it was quiet (no attack active on it and no vector
over its threshold), scored by their packets with an exponential decay of
``known_tau`` seconds, at most ``known_sources`` per destination (the
heaviest). Like the baselines, an interval is learned one interval late,
once the next is quiet too: the interval a flood starts in is partly under
its threshold and its spoofed sources are never learned. While an attack
is active on a destination nothing is learned for it, so its known set is
frozen for the attack's life; the planner then lets these sources past the
victim-wide UDP ceiling within a per-source limit
(:mod:`controller.detection.planner`).

Work is vectorised: a sort over the interval's UDP sources and the kept
sets, never a Python loop per source.
"""

from __future__ import annotations

import math

import numpy as np

from ..addresses import Prefix
from .tables import F64, I64, U64, Bools, exact_prefix

__all__ = ["KnownSources"]


class KnownSources:
    """Per destination slot, the heaviest peacetime UDP sources (see the module doc).

    ``limit`` is the most kept per destination (0: learn nothing), ``tau``
    the decay of a source's score in seconds; a source is known once its
    learned intervals span ``min_seconds`` (a few packets do not make one)."""

    def __init__(self, limit: int, tau: float, min_seconds: float = 0.0) -> None:
        self.limit = limit
        self.tau = tau
        self.min_seconds = min_seconds
        # the kept sets: parallel arrays sorted by (slot, key)
        self._slot: I64 = np.zeros(0, np.int64)
        self._key: U64 = np.zeros(0, np.uint64)
        self._hi: U64 = np.zeros(0, np.uint64)
        self._lo: U64 = np.zeros(0, np.uint64)
        self._score: F64 = np.zeros(0)
        self._first: F64 = np.zeros(0)
        """When each was first learned (the end of its interval) ..."""
        self._last: F64 = np.zeros(0)
        """... and last."""
        self._t: float | None = None
        # the previous interval's UDP sources, learned once the next interval is quiet too
        self._pending: tuple[float, I64, U64, U64, U64, F64] | None = None
        self._cache: dict[int, tuple[Prefix, ...]] = {}

    def __len__(self) -> int:
        return len(self._key)

    def observe(self, t: float, slot: I64, key: U64, hi: U64, lo: U64, udp: F64, quiet: Bools) -> None:
        """One interval ending at ``t``: each row a source with its destination
        ``slot`` (-1: not protected), key, address words and UDP packets;
        ``quiet`` per destination slot. Learns the previous interval's rows
        whose destination was quiet then and is now."""
        if self.limit <= 0:
            return
        pending, self._pending = self._pending, None
        if pending is not None:
            p_t, p_slot, p_key, p_hi, p_lo, p_udp = pending
            ok = quiet[p_slot]
            if ok.any():
                self._learn(p_t, p_slot[ok], p_key[ok], p_hi[ok], p_lo[ok], p_udp[ok])
        rows = np.nonzero((slot >= 0) & (udp > 0))[0]
        if len(rows):
            rows = rows[quiet[slot[rows]]]
            self._pending = (t, slot[rows], key[rows], hi[rows], lo[rows], udp[rows].astype(np.float64))

    def _learn(self, t: float, slot: I64, key: U64, hi: U64, lo: U64, udp: F64) -> None:
        if self._t is not None and len(self._score):
            self._score *= math.exp(-max(t - self._t, 0.0) / self.tau)
        self._t = t
        slots = np.concatenate([self._slot, slot])
        keys = np.concatenate([self._key, key])
        his = np.concatenate([self._hi, hi])
        los = np.concatenate([self._lo, lo])
        score = np.concatenate([self._score, udp])
        born = np.concatenate([self._first, np.full(len(key), t)])
        seen = np.concatenate([self._last, np.full(len(key), t)])
        order = np.lexsort((keys, slots))
        slots, keys, his, los = slots[order], keys[order], his[order], los[order]
        score, born, seen = score[order], born[order], seen[order]
        head = np.ones(len(keys), dtype=bool)
        head[1:] = (keys[1:] != keys[:-1]) | (slots[1:] != slots[:-1])
        at = np.nonzero(head)[0]
        score = np.add.reduceat(score, at)
        born, seen = np.minimum.reduceat(born, at), np.maximum.reduceat(seen, at)
        slots, keys, his, los = slots[at], keys[at], his[at], los[at]
        # at most ``limit`` per destination: the heaviest
        counts = np.bincount(slots)
        if counts.max(initial=0) > self.limit:
            rank = np.lexsort((-score, slots))  # by slot, heaviest first
            start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            place = np.arange(len(rank)) - start[slots[rank]]
            keep = np.sort(rank[place < self.limit])
            slots, keys, his, los, score = slots[keep], keys[keep], his[keep], los[keep], score[keep]
            born, seen = born[keep], seen[keep]
        self._slot, self._key, self._hi, self._lo, self._score = slots, keys, his, los, score
        self._first, self._last = born, seen
        self._cache.clear()

    def slots(self) -> tuple[int, ...]:
        """The destination slots that have learned sources."""
        return tuple(int(v) for v in np.unique(self._slot))

    def of(self, slot: int) -> tuple[Prefix, ...]:
        """The known sources of destination ``slot`` (/32 or /128 each), sorted:
        those learned over at least ``min_seconds``."""
        hit = self._cache.get(slot)
        if hit is None:
            lo_at, hi_at = np.searchsorted(self._slot, [slot, slot + 1])
            ok = np.nonzero(self._last[lo_at:hi_at] - self._first[lo_at:hi_at] >= self.min_seconds)[0] + lo_at
            hit = tuple(sorted(
                (exact_prefix(int(h), int(lo)) for h, lo in zip(self._hi[ok], self._lo[ok], strict=True)),
                key=lambda p: (p.family, int(p.network.network_address)),
            ))
            self._cache[slot] = hit
        return hit
