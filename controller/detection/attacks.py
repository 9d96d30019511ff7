"""One attack as the detector tracks it: its named offenders and its state machine.

:class:`Offenders` is the set of sources named during an attack, with
their peak and current rates; :class:`AttackState` is the attack itself
between intervals (rates and peaks, the profile and the intervals that
must confirm a move towards broader mitigation), which turns into an
:class:`~controller.detection.events.AttackEvent` every interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from ..addresses import Prefix
from .events import AttackEvent, EventKind, Profile, SourceRate, Vector
from .tables import F64, I64, U64, Bools, exact_prefix

__all__ = ["AttackState", "Offenders"]

_FALLING: Final = 0.8
"""An interval whose rate is under this share of the highest of the attack's previous
N intervals is falling: the flood is ending, or ramping down. Its sources are
thinning out, so it neither moves the profile towards broader mitigation nor sets the
typical offender rate."""


# --- offenders of one attack -------------------------------------------------------


class Offenders:
    """The sources named in one attack, sorted by key; ``version`` changes
    when the set does."""

    def __init__(self) -> None:
        self.key = np.zeros(0, np.uint64)
        self.hi = np.zeros(0, np.uint64)
        self.lo = np.zeros(0, np.uint64)
        self.peak = np.zeros(0, np.float64)
        self.pps = np.zeros(0, np.float64)
        self.bps = np.zeros(0, np.float64)
        self.under = np.zeros(0, np.int32)
        self.version = 0
        self._prefixes: dict[int, Prefix] = {}
        self._built = -1
        self._tuple: tuple[Prefix, ...] = ()

    def __len__(self) -> int:
        return len(self.key)

    def add(self, ks: U64, hi: U64, lo: U64) -> I64:
        """Add the absent ones of sorted unique keys ``ks`` (rates 0); return
        where each of ``ks`` now is."""
        pos = np.searchsorted(self.key, ks).astype(np.int64)
        if not len(ks):
            return pos
        found = np.zeros(len(ks), dtype=bool)
        if len(self.key):
            found = self.key[np.minimum(pos, len(self.key) - 1)] == ks
        new = ~found
        if new.any():
            at, n = pos[new], int(new.sum())
            self.key = np.insert(self.key, at, ks[new])
            self.hi = np.insert(self.hi, at, hi[new])
            self.lo = np.insert(self.lo, at, lo[new])
            for name in ("peak", "pps", "bps"):
                setattr(self, name, np.insert(getattr(self, name), at, np.zeros(n)))
            self.under = np.insert(self.under, at, np.zeros(n, np.int32))
            self.version += 1
            pos = np.searchsorted(self.key, ks).astype(np.int64)
        return pos

    def merge(self, ks: U64, hi: U64, lo: U64, pps: F64, bps: F64) -> None:
        """This interval's rates of sorted unique keys ``ks``; everyone else's rate is 0."""
        self.pps[:] = 0.0
        self.bps[:] = 0.0
        at = self.add(ks, hi, lo)
        self.pps[at] = pps
        self.bps[at] = bps
        self.under[at] = 0
        self.peak[at] = np.maximum(self.peak[at], pps)

    def keep(self, mask: Bools) -> None:
        if mask.all():
            return
        for name in ("key", "hi", "lo", "peak", "pps", "bps", "under"):
            setattr(self, name, getattr(self, name)[mask])
        self.version += 1

    def release(self, min_pps: float, intervals: int) -> None:
        """Forget offenders under ``min_pps`` (dropped packets count) for
        ``intervals`` intervals in a row; call it only in intervals the flood
        is at its threshold, so a pulse's off period releases nobody."""
        self.under = np.where(self.pps >= min_pps, 0, self.under + 1).astype(np.int32)
        self.keep(self.under < intervals)

    def cap(self, n: int) -> None:
        """Keep the ``n`` heaviest by peak rate."""
        if len(self) > n:
            cut = np.partition(self.peak, len(self) - n)[len(self) - n]
            above = self.peak > cut
            ties = self.peak == cut  # as many of these as fit, by key
            ties &= np.cumsum(ties) <= n - int(above.sum())
            self.keep(above | ties)

    def _prefix(self, i: int) -> Prefix:
        key = int(self.key[i])
        p = self._prefixes.get(key)
        if p is None:
            p = self._prefixes[key] = exact_prefix(int(self.hi[i]), int(self.lo[i]))
        return p

    def prefixes(self) -> tuple[Prefix, ...]:
        """Every offender, heaviest peak first (rebuilt only when the set changed)."""
        if self._built != self.version:
            order = np.lexsort((self.key, -self.peak))
            self._tuple = tuple(self._prefix(int(i)) for i in order)
            live = {int(k) for k in self.key}
            self._prefixes = {k: p for k, p in self._prefixes.items() if k in live}
            self._built = self.version
        return self._tuple

    def top(self, n: int) -> tuple[SourceRate, ...]:
        """The ``n`` sources with the highest rate in this interval."""
        if not n or not len(self):
            return ()
        idx = np.nonzero(self.pps > 0)[0]
        if len(idx) > n:
            idx = idx[np.argpartition(-self.pps[idx], n - 1)[:n]]
        idx = idx[np.lexsort((self.key[idx], -self.pps[idx]))]
        return tuple(
            SourceRate(self._prefix(int(i)), float(self.pps[i]), float(self.bps[i])) for i in idx
        )


# --- attacks ---------------------------------------------------------------------


@dataclass
class AttackState:
    id: str
    vector: Vector
    slot: int  # destination slot, -1 for source_rate
    victim: Prefix | None
    onset_at: float
    started_at: float
    profile: Profile = "concentrated"
    pps: float = 0.0
    bps: float = 0.0
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    dropped_pps: float = 0.0
    threshold_pps: float = 0.0
    baseline_pps: float = 0.0
    over: bool = True
    sources: int = 0
    offenders: Offenders = field(default_factory=Offenders)
    typical_pps: float = 0.0
    """The flood's typical offender rate in its last interval at strength."""
    recent: list[float] = field(default_factory=list)
    """The vector's rate in the previous N intervals (newest last)."""
    pending: int = 0
    """Intervals in a row, at strength, judged a broader profile than ``profile``."""
    pulses: int = 1
    """Times the attack came over its threshold: 1, plus one per return after an off period."""
    last_over_at: float | None = None
    """End of its last interval over the threshold."""
    longest_off: float = 0.0
    """Its longest off period between two pulses, seconds."""

    def pulse(self, over: bool, t: float, dt: float) -> None:
        """Count a return over the threshold after an off period (a pulse)."""
        if not over:
            return
        if self.last_over_at is not None and t - dt > self.last_over_at + 1e-9:
            self.pulses += 1
            self.longest_off = max(self.longest_off, t - dt - self.last_over_at)
        self.last_over_at = t

    def held(self, t: float, factor: float, cap: float) -> bool:
        """A pulsing attack is held for ``factor`` x its longest off period
        (at most ``cap`` seconds) after its last interval over the threshold."""
        if self.last_over_at is None:
            return False
        return t - self.last_over_at < min(cap, factor * self.longest_off)

    def measure(self, pps: float, bps: float, dropped: float) -> None:
        self.pps, self.bps, self.dropped_pps = pps, bps, dropped
        self.peak_pps = max(self.peak_pps, pps)
        self.peak_bps = max(self.peak_bps, bps)

    def falling(self, pps: float) -> bool:
        """This interval's rate is well under the highest of the previous N intervals'."""
        return bool(self.recent) and pps < _FALLING * max(self.recent)

    def remember(self, pps: float, n: int) -> None:
        self.recent.append(pps)
        del self.recent[:-n]

    def judge(self, judged: Profile, *, started: bool, strong: bool, sustain: int) -> None:
        """Move to the profile ``judged`` on an interval over the threshold.

        At the start, and towards narrower mitigation (a signature the
        attack has had stays anyway), at once; from ``concentrated``
        towards ``diffuse`` or ``spoofed`` (adding a victim-wide limit) only
        after ``sustain`` intervals in a row judged so, none of them falling:
        the interval a flood ends in, or a ramp-down, thins its sources out
        without the attack becoming another one."""
        if started or judged == self.profile or self.profile != "concentrated":
            self.profile, self.pending = judged, 0
        elif not strong:
            self.pending = 0
        else:
            self.pending += 1
            if self.pending >= sustain:
                self.profile, self.pending = judged, 0

    def event(self, kind: EventKind, t: float, report: int) -> AttackEvent:
        return AttackEvent(
            id=self.id,
            kind=kind,
            vector=self.vector,
            victim=self.victim,
            profile=self.profile,
            t=t,
            onset_at=self.onset_at,
            started_at=self.started_at,
            ended_at=t if kind == "ended" else None,
            pps=self.pps,
            bps=self.bps,
            peak_pps=self.peak_pps,
            peak_bps=self.peak_bps,
            dropped_pps=self.dropped_pps,
            threshold_pps=self.threshold_pps,
            baseline_pps=self.baseline_pps,
            over_threshold=self.over,
            sources=self.sources,
            pulses=self.pulses,
            top_sources=self.offenders.top(report),
            offenders=self.offenders.prefixes(),
        )

