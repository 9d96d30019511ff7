"""Attack detection: counter samples in, attack events out.

:class:`Detector` reads one :class:`~controller.detection.samples.Sample` per interval
and reports :class:`AttackEvent` s: ``started`` when a vector's threshold has
held for ``start_intervals`` intervals in a row, ``updated`` every later
interval the attack is active, ``ended`` when its rate, dropped packets
included, has stayed below the end threshold for ``end_intervals``
intervals. Every rate is per second, so intervals of any length (and mixed
lengths) give the same rates for the same traffic.

Vectors (``docs/detection.md`` has every threshold and default):

* per destination, from the destination counters: ``syn`` (SYN without
  ACK, with a minimum share of the destination's packets), ``ack`` (ACK
  without SYN), ``udp`` (UDP *not* from a reflection port), ``icmp``,
  ``gre``, ``fragment``, ``reflection`` (UDP from a reflection port);
  thresholds are ``max(floor, factor x baseline)``;
* ``many_source``: many distinct, individually moderate sources towards one
  destination (HTTP-proxy style), by source count and aggregate rate, of
  the traffic no other attack on the destination explains (its offenders,
  reflection's UDP from reflection ports and its UDP-only sources);
* ``source_rate``: single sources over a packet or bit rate (no victim).

Each destination attack also gets a **profile** of its sources, which is
what the planner (:mod:`controller.detection.planner`) acts on: ``concentrated``
(named offenders carry most of the vector), ``diffuse`` (they do not) or
``spoofed`` (high churn: most sources are new and send one or two packets,
so blocking sources cannot work). Offenders are sources over an absolute
rate that also send like the flood's typical source (so a busy client of
the victim is not one); sources already dropped by exact deny entries,
counted without classes or destination, stay the flood's. A change towards
broader mitigation (from ``concentrated``) must hold for N intervals at
strength, none of them falling.

Baselines are a time-weighted EWMA per destination and vector class,
learned only in intervals where nothing is over a threshold and no attack
is active on that destination, so an attack cannot teach the detector that
it is normal.

Speed: an interval costs a sort of the sources' keys and a handful of
vectorised passes over them and over the table of recently seen sources;
Python-level work is per active attack and per new offender, never per
source.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from ..addresses import Prefix
from ..errors import FieldError, InputError
from ..validate import check_keys
from .samples import V4_MAPPED, Sample, address_words, is_v4

__all__ = [
    "DEST_VECTORS",
    "VECTORS",
    "VECTOR_CODES",
    "AttackEvent",
    "DetectConfig",
    "Detector",
    "EventKind",
    "Profile",
    "SourceRate",
    "Vector",
    "VectorThreshold",
]

LOGGER = logging.getLogger("breakwater.detect")

Vector = Literal[
    "syn", "ack", "udp", "icmp", "gre", "fragment", "reflection", "many_source", "source_rate"
]
EventKind = Literal["started", "updated", "ended"]
Profile = Literal["concentrated", "diffuse", "spoofed"]

VECTORS: Final[tuple[Vector, ...]] = get_args(Vector)
DEST_VECTORS: Final[tuple[Vector, ...]] = VECTORS[:8]
"""The vectors that have a victim (a destination), in column order."""

VECTOR_CODES: Final[Mapping[Vector, str]] = {
    "syn": "syn", "ack": "ack", "udp": "udp", "icmp": "icmp", "gre": "gre",
    "fragment": "frag", "reflection": "refl", "many_source": "many", "source_rate": "heavy",
}
"""Short names used in attack and rule ids (``syn-198-18-0-10-4``, ``auto-refl-...``)."""

# Column of each destination vector in the rate and baseline matrices; the
# baseline matrix has one more column, the number of active sources.
_FLAG_VECTORS: Final = 7  # syn .. reflection: one destination counter each
_REFL: Final = 6
_MANY: Final = 7
_SOURCES: Final = 8
_CLASSES: Final = (*DEST_VECTORS[:7], "packets", "sources")
"""Baseline classes: the flag vectors, all packets (many_source), active sources."""
# The per-source counter that names a source as an offender of each vector.
_OFFENDER_FIELD: Final[Mapping[Vector, str]] = {
    "syn": "syn", "ack": "ack", "udp": "udp", "icmp": "icmp", "gre": "gre",
    "fragment": "frags", "reflection": "udp",
}

_TYPICAL_SHARE: Final = 0.75
"""A flood's typical offender rate: the rate of the lightest of the heaviest candidate
offenders that together carry this share of the candidates' packets. Three quarters,
not a half: a group of slower bots that carries a quarter of the flood sets it, and
so is named; legitimate clients are a small share of a flood and never set it."""
_FALLING: Final = 0.8
"""An interval whose rate is under this share of the highest of the attack's previous
N intervals is falling: the flood is ending, or ramping down. Its sources are
thinning out, so it neither moves the profile towards broader mitigation nor sets the
typical offender rate."""
_V6_FLAG: Final = np.uint64(1 << 63)
# splitmix64 finaliser constants (Steele, Lea, Flood 2014).
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_GROW: Final = 64  # initial capacity of the per-destination arrays


# --- configuration ------------------------------------------------------------


def _number(value: object, path: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(path, f"expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise FieldError(path, f"{value} is not a finite number")
    if v < lo or (lo_open and v == lo) or v > hi:
        low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
        raise FieldError(path, f"{value:g} is out of range; must be {low} and at most {hi:g}")
    return v


def _integer(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise FieldError(path, f"{value} is out of range {lo}..{hi}")
    return value


def _table_keys(data: Mapping[str, object], known: tuple[str, ...], path: str) -> None:
    check_keys(data, known, path)


_MAX_RATE: Final = 1e13


@dataclass(frozen=True, slots=True)
class VectorThreshold:
    """Start threshold of one destination vector.

    An interval is over the threshold when the vector's rate is at least
    ``max(pps, factor x baseline)`` and at least ``min_share`` of all
    packets to the destination.
    """

    pps: float
    """Absolute floor, packets per second (what a destination with no baseline yet gets)."""
    factor: float = 3.0
    """k: how many times its learned baseline the destination may receive."""
    min_share: float = 0.0
    """The vector's minimum share of the destination's packets (0: no test)."""

    def __post_init__(self) -> None:
        _number(self.pps, "pps", 0, _MAX_RATE, lo_open=True)
        _number(self.factor, "factor", 1, 1000)
        _number(self.min_share, "min_share", 0, 1)

    @classmethod
    def from_dict(cls, data: object, path: str = "") -> VectorThreshold:
        if not isinstance(data, Mapping):
            raise FieldError(path, f"expected a table with pps, factor, min_share, got {data!r}")
        _table_keys(data, ("pps", "factor", "min_share"), path)
        if "pps" not in data:
            raise FieldError(f"{path}.pps" if path else "pps", "missing")
        try:
            return cls(**data)
        except FieldError as exc:
            raise FieldError(f"{path}.{exc.path}" if path else exc.path, exc.what) from None


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """Detector thresholds; the defaults suit an edge server with no history.

    Every rate is per second; ``*_intervals`` count samples, whatever their
    length. Floors must sit above the legitimate rate of the busiest
    protected destination until its baseline is learned (or seeded with
    :meth:`Detector.load_baselines`).
    """

    start_intervals: int = 3
    """N: intervals in a row over the threshold before an attack starts."""
    end_intervals: int = 15
    """M: intervals in a row under the end threshold before it ends."""
    end_fraction: float = 0.5
    """End threshold = this fraction of the start threshold (dropped packets count)."""
    baseline_tau: float = 600.0
    """Time constant of the baseline EWMA, seconds."""
    window: float = 5.0
    """Seconds a source stays "active" after its last packet (source counts, churn)."""

    source_pps: float = 20_000.0
    """``source_rate``: one source sending this many packets/s ..."""
    source_bps: float = 200_000_000.0
    """... or this many bits/s, to any destination."""

    syn: VectorThreshold = VectorThreshold(10_000, 4.0, 0.25)
    ack: VectorThreshold = VectorThreshold(50_000, 3.0)
    udp: VectorThreshold = VectorThreshold(50_000, 3.0)
    icmp: VectorThreshold = VectorThreshold(5_000, 4.0)
    gre: VectorThreshold = VectorThreshold(5_000, 4.0)
    fragment: VectorThreshold = VectorThreshold(5_000, 4.0)
    reflection: VectorThreshold = VectorThreshold(10_000, 4.0)
    many_source: VectorThreshold = VectorThreshold(5_000, 3.0)
    """``many_source``: packets to the destination that no other attack on it explains."""

    many_min_sources: int = 1000
    """``many_source``: at least this many active sources towards the destination ..."""
    many_source_factor: float = 3.0
    """... and this many times its baseline of active sources ..."""
    many_max_source_pps: float = 50.0
    """... at least half of them each sending at most this many packets/s."""
    many_newcomer_lead: float = 2.0
    """Sources first seen up to this many seconds before the surge are its
    newcomers: the offenders of a many-source attack (heaviest first). Never
    one first seen within ``window`` of the detector's start: its age is unknown."""

    spoof_new_per_s: float = 1000.0
    """``spoofed`` profile: at least this many new, tiny sources per second ..."""
    spoof_share: float = 0.5
    """... making up at least this share of the interval's sources to the destination."""
    spoof_tiny_packets: int = 2
    """A new source is tiny when it sent at most this many packets in its first interval."""

    offender_pps: float = 100.0
    """A source is named an offender of a destination flood from this rate of the vector's packets ..."""
    offender_fraction: float = 0.25
    """... and from this fraction of the flood's typical offender rate: the rate of the
    lightest of the heaviest sources over ``offender_pps`` that together carry three
    quarters of their packets (a legitimate client of the victim is not a bot because
    it sends more than ``offender_pps``; it is one when it sends like the flood's sources)."""
    concentrated_share: float = 0.5
    """``concentrated`` profile: named offenders carry at least this share of the vector."""
    max_offenders: int = 10_000
    """Offenders kept per attack (the heaviest by peak rate)."""
    report_sources: int = 20
    """Top sources listed in each event."""
    max_tracked_sources: int = 2_000_000
    """Sources remembered for churn and source counts; the least recent go first."""

    def __post_init__(self) -> None:
        _integer(self.start_intervals, "start_intervals", 1, 1000)
        _integer(self.end_intervals, "end_intervals", 1, 100_000)
        _number(self.end_fraction, "end_fraction", 0, 1, lo_open=True)
        _number(self.baseline_tau, "baseline_tau", 1, 30 * 86400)
        _number(self.window, "window", 0.1, 3600)
        _number(self.source_pps, "source_pps", 0, _MAX_RATE, lo_open=True)
        _number(self.source_bps, "source_bps", 0, _MAX_RATE, lo_open=True)
        for name in DEST_VECTORS:
            value = getattr(self, name)
            if not isinstance(value, VectorThreshold):
                raise FieldError(name, f"expected a VectorThreshold, got {type(value).__name__}")
        if self.many_source.min_share:
            raise FieldError("many_source.min_share", "not used by this vector; leave it 0")
        _integer(self.many_min_sources, "many_min_sources", 1, 10**9)
        _number(self.many_source_factor, "many_source_factor", 1, 1000)
        _number(self.many_max_source_pps, "many_max_source_pps", 0, _MAX_RATE, lo_open=True)
        _number(self.many_newcomer_lead, "many_newcomer_lead", 0, 3600)
        _number(self.spoof_new_per_s, "spoof_new_per_s", 0, _MAX_RATE, lo_open=True)
        _number(self.spoof_share, "spoof_share", 0, 1, lo_open=True)
        _integer(self.spoof_tiny_packets, "spoof_tiny_packets", 1, 1000)
        _number(self.offender_pps, "offender_pps", 0, _MAX_RATE, lo_open=True)
        _number(self.offender_fraction, "offender_fraction", 0, 1)
        _number(self.concentrated_share, "concentrated_share", 0, 1, lo_open=True)
        _integer(self.max_offenders, "max_offenders", 1, 10_000_000)
        _integer(self.report_sources, "report_sources", 0, 10_000)
        _integer(self.max_tracked_sources, "max_tracked_sources", 1000, 100_000_000)
        if self.many_max_source_pps >= self.source_pps:
            raise FieldError(
                "many_max_source_pps",
                f"{self.many_max_source_pps:g} is not below source_pps {self.source_pps:g}; "
                "many-source sources are the ones each under the per-source threshold",
            )

    @classmethod
    def from_dict(cls, data: object) -> DetectConfig:
        """Read a ``[detect]`` table; vector thresholds are sub-tables (``[detect.syn]``)."""
        if not isinstance(data, Mapping):
            raise FieldError("", f"expected a table, got {data!r}")
        known = tuple(f.name for f in fields(cls))
        _table_keys(data, known, "")
        values: dict[str, Any] = dict(data)
        for name in DEST_VECTORS:
            if name in values:
                values[name] = VectorThreshold.from_dict(values[name], name)
        return cls(**values)

    def threshold(self, vector: Vector) -> VectorThreshold:
        if vector == "source_rate":
            raise InputError("vector: source_rate has source_pps/source_bps, not a VectorThreshold")
        return cast(VectorThreshold, getattr(self, vector))


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRate:
    """One source of an attack and its rate in the interval."""

    address: Prefix
    pps: float
    bps: float = 0.0


@dataclass(frozen=True, slots=True)
class AttackEvent:
    """An attack as the detector sees it after one interval.

    ``pps`` is the vector's rate in this interval, dropped packets
    included; ``bps`` is the victim's total bit rate (the data plane counts
    bytes per destination, not per vector; for ``source_rate``: the
    offenders' bit rate). ``offenders`` are every source named during the
    attack (heaviest peak first, at most ``max_offenders``): what the
    planner blocks. ``applied`` is for the caller: the rule ids the
    planner put in place (:attr:`controller.detection.planner.PlanResult.by_attack`).
    """

    id: str
    kind: EventKind
    vector: Vector
    victim: Prefix | None
    profile: Profile
    t: float
    """Time of the sample that produced this event."""
    onset_at: float
    """Start of the first interval over the threshold."""
    started_at: float
    """When the attack was declared (the end of the N-th interval over)."""
    ended_at: float | None
    pps: float
    bps: float
    peak_pps: float
    peak_bps: float
    dropped_pps: float
    threshold_pps: float
    baseline_pps: float
    over_threshold: bool
    """This interval was still over the start threshold (escalation counts these)."""
    sources: int
    """Active sources towards the victim (``source_rate``: offenders)."""
    top_sources: tuple[SourceRate, ...] = ()
    offenders: tuple[Prefix, ...] = ()
    applied: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (the API's attack event)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "vector": self.vector,
            "victim": None if self.victim is None else str(self.victim),
            "profile": self.profile,
            "t": self.t,
            "onset_at": self.onset_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pps": self.pps,
            "bps": self.bps,
            "peak_pps": self.peak_pps,
            "peak_bps": self.peak_bps,
            "dropped_pps": self.dropped_pps,
            "threshold_pps": self.threshold_pps,
            "baseline_pps": self.baseline_pps,
            "over_threshold": self.over_threshold,
            "sources": self.sources,
            "top_sources": [
                {"address": str(s.address), "pps": s.pps, "bps": s.bps} for s in self.top_sources
            ],
            "offenders": len(self.offenders),
            "applied": list(self.applied),
        }


# --- keys ---------------------------------------------------------------------

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def _mix(x: U64) -> U64:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return cast(U64, x ^ (x >> np.uint64(31)))


class _Keys:
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


def _exact(hi: int, lo: int) -> Prefix:
    """The /32 or /128 of an address in words (the tuple form skips string parsing)."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return Prefix(ipaddress.IPv4Network((lo & 0xFFFF_FFFF, 32)))
    return Prefix(ipaddress.IPv6Network(((hi << 64) | lo, 128)))



def _unique_sorted(keys: U64) -> tuple[U64, I64]:
    """Sorted unique keys and, for each, the index of one input row holding it."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    return ks[first], order[first]


# --- the table of recently seen sources ------------------------------------------


class _SourceTable:
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


# --- offenders of one attack -------------------------------------------------------


class _Offenders:
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
            p = self._prefixes[key] = _exact(int(self.hi[i]), int(self.lo[i]))
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


def _typical(counts: F64) -> float:
    """The count of the lightest of the heaviest ``counts`` that together
    carry ``_TYPICAL_SHARE`` of their sum (0 for none)."""
    if not len(counts):
        return 0.0
    heaviest = np.sort(counts)[::-1]
    cum = np.cumsum(heaviest)
    return float(heaviest[min(int(np.searchsorted(cum, _TYPICAL_SHARE * cum[-1])), len(cum) - 1)])


@dataclass
class _Flood:
    """One interval of a flag-vector flood on one destination: its offenders
    in the interval (sorted by key), and how much of the vector sources
    denied by exact entries carry."""

    step: _SourceStep
    slot: int
    name: str
    """The per-source counter of the vector."""
    keys: U64
    """This interval's offenders, sorted; ``hi``, ``lo``, ``pps``, ``bps`` likewise."""
    hi: U64
    lo: U64
    pps: F64
    bps: F64
    typical: float
    """This interval's typical offender rate (0: no source over ``offender_pps``)."""
    covered_hidden: float
    """The vector's rate the denied sources carry: their packets, at most
    what no visible source of the vector explains."""

    def name_offenders(self, off: _Offenders) -> float:
        """Add this interval's offenders to ``off`` and give each named one
        its rate in the interval (0 when absent; a denied one: all its
        packets); return the rate of the vector that named offenders and
        sources denied by exact entries carry."""
        off.add(self.keys, self.hi, self.lo)
        off.pps[:] = 0.0
        off.bps[:] = 0.0
        step = self.step
        at = step._present(off.key)
        if not len(at):
            return self.covered_hidden
        rows = step.order[at]
        mine = step.dst[rows] == self.slot
        hidden = step.opaque[rows]
        counts = np.where(hidden, step.rows["packets"][rows], step.rows[self.name][rows])
        where = np.searchsorted(off.key, step.sorted_keys[at])
        keep = mine | (hidden & step.unknown[rows])
        where, counts, rows = where[keep], counts[keep], rows[keep]
        pps = counts / step.dt
        off.pps[where] = pps
        off.bps[where] = step.rows["bytes"][rows] * 8.0 / step.dt
        off.peak[where] = np.maximum(off.peak[where], pps)
        return float(pps[~step.opaque[rows]].sum()) + self.covered_hidden


# --- attacks ---------------------------------------------------------------------


@dataclass
class _Attack:
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
    offenders: _Offenders = field(default_factory=_Offenders)
    typical_pps: float = 0.0
    """The flood's typical offender rate in its last interval at strength."""
    recent: list[float] = field(default_factory=list)
    """The vector's rate in the previous N intervals (newest last)."""
    pending: int = 0
    """Intervals in a row, at strength, judged a broader profile than ``profile``."""

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
            top_sources=self.offenders.top(report),
            offenders=self.offenders.prefixes(),
        )


# --- per-destination state ----------------------------------------------------------


class _Destinations:
    """Protected destinations seen so far: a slot each, found by key."""

    def __init__(self, keys: _Keys) -> None:
        self._keyfn = keys
        self._sorted = np.zeros(0, np.uint64)
        self._slots = np.zeros(0, np.int64)
        self.hi: list[int] = []
        self.lo: list[int] = []
        self._prefixes: list[Prefix | None] = []

    def __len__(self) -> int:
        return len(self.hi)

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
            uniq, rows = _unique_sorted(keys)
            first = len(self.hi)
            new_slots = np.arange(first, first + len(uniq), dtype=np.int64)
            at = np.searchsorted(self._sorted, uniq)
            self._sorted = np.insert(self._sorted, at, uniq)
            self._slots = np.insert(self._slots, at, new_slots)
            self.hi.extend(int(v) for v in hi[new][rows])
            self.lo.extend(int(v) for v in lo[new][rows])
            self._prefixes.extend([None] * len(uniq))
            slots = self.lookup(hi, lo)
        return slots

    def slot(self, address: str) -> int:
        hi, lo = address_words(address.strip())
        return int(self.lookup(np.array([hi], np.uint64), np.array([lo], np.uint64))[0])

    def prefix(self, slot: int) -> Prefix:
        p = self._prefixes[slot]
        if p is None:
            p = self._prefixes[slot] = _exact(self.hi[slot], self.lo[slot])
        return p


def _grow(arr: npt.NDArray[Any], n: int, fill: float = 0) -> npt.NDArray[Any]:
    if len(arr) >= n:
        return arr
    size = max(n, 2 * len(arr), _GROW)
    out = np.full((size, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


# --- the detector ---------------------------------------------------------------------


class Detector:
    """Turns a sequence of samples into attack events (see the module doc).

    Not thread-safe: one detector per agent, fed by one loop. Attack ids are
    ``<code>-<victim>-<n>`` and ``heavy-<n>``, ``n`` counting up per
    detector; across restarts they stay unique when the next detector
    continues the count (:attr:`id_counter`, :meth:`restore_id_counter`).
    """

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.config = config or DetectConfig()
        cfg = self.config
        self._keys = _Keys()
        self._dests = _Destinations(self._keys)
        self._table = _SourceTable()
        self._floor = np.array([cfg.threshold(v).pps for v in DEST_VECTORS])
        self._factor = np.array([cfg.threshold(v).factor for v in DEST_VECTORS])
        self._share = np.array([cfg.threshold(v).min_share for v in DEST_VECTORS[:_FLAG_VECTORS]])
        n_vec, n_cls = len(DEST_VECTORS), len(_CLASSES)
        self._ewma = np.zeros((0, n_cls))
        self._weight = np.zeros(0)
        self._over = np.zeros((0, n_vec), np.int32)
        self._under = np.zeros((0, n_vec), np.int32)
        self._onset = np.zeros((0, n_vec))
        self._active = np.zeros((0, n_vec), bool)
        self._attacks: dict[tuple[int, int], _Attack] = {}
        self._heavy: _Attack | None = None
        self._seq = 0
        self._t: float | None = None
        self._since: float | None = None
        """Start of the first sample: what the source table knows begins here."""
        self._events: list[AttackEvent] = []

    # -- public read-outs --

    @property
    def active(self) -> tuple[AttackEvent, ...]:
        """The latest event of every attack active after the last sample."""
        return tuple(e for e in self._events if e.kind != "ended")

    @property
    def tracked_sources(self) -> int:
        return len(self._table)

    def baseline(self, victim: str, vector: Vector | Literal["packets", "sources"]) -> float:
        """Learned baseline of a destination (0 while it has none): pps,
        or active sources for ``"sources"``."""
        col = _CLASSES.index("packets" if vector == "many_source" else vector)
        slot = self._dests.slot(victim)
        if slot < 0:
            return 0.0
        return float(self._baselines()[slot, col])

    def threshold(self, victim: str, vector: Vector) -> float:
        """Current start threshold (pps) of a destination vector."""
        if vector not in DEST_VECTORS:
            raise InputError(f"vector: {vector!r} has no per-destination threshold")
        col = DEST_VECTORS.index(vector)
        slot = self._dests.slot(victim)
        base = 0.0 if slot < 0 else float(self._baselines()[slot, col])
        return max(float(self._floor[col]), float(self._factor[col]) * base)

    @property
    def id_counter(self) -> int:
        """The number of the last attack id issued (``syn-203-0-113-10-<n>``,
        ``heavy-<n>``): persist it with the events that carry the ids and
        give it to the next detector's :meth:`restore_id_counter`, so ids
        never repeat across restarts."""
        return self._seq

    def restore_id_counter(self, value: int) -> None:
        """Issue attack ids after ``value`` (a previous detector's :attr:`id_counter`); never goes back."""
        self._seq = max(self._seq, _integer(value, "id_counter", 0, 2**63 - 1))

    def baselines(self) -> dict[str, dict[str, float]]:
        """Every learned baseline by destination and class, to persist across restarts."""
        base = self._baselines()
        out: dict[str, dict[str, float]] = {}
        for slot in np.nonzero(self._weight[: len(self._dests)] > 0)[0]:
            out[str(self._dests.prefix(int(slot)))] = {
                name: float(base[slot, i]) for i, name in enumerate(_CLASSES)
            }
        return out

    def load_baselines(self, baselines: Mapping[str, Mapping[str, float]]) -> None:
        """Seed baselines (what :meth:`baselines` returned before a restart)."""
        for victim, classes in baselines.items():
            try:
                hi, lo = address_words(victim.strip())
            except ValueError:
                raise InputError(f"baselines[{victim!r}]: not an address") from None
            slot = int(self._dests.add(np.array([hi], np.uint64), np.array([lo], np.uint64))[0])
            self._ensure(len(self._dests))
            for name, value in classes.items():
                if name not in _CLASSES:
                    raise InputError(
                        f"baselines[{victim!r}]: unknown class {name!r}; known: {', '.join(_CLASSES)}"
                    )
                self._ewma[slot, _CLASSES.index(name)] = _number(
                    value, f"baselines[{victim!r}].{name}", 0, _MAX_RATE
                )
            self._weight[slot] = 1.0

    # -- the interval --

    def observe(self, sample: Sample) -> list[AttackEvent]:
        """Read one interval; return an event for every attack that started,
        is active or ended in it (sorted by vector, victim, id)."""
        if not isinstance(sample, Sample):
            raise InputError(f"sample: expected a Sample, got {type(sample).__name__}")
        t, dt = sample.t, sample.dt
        if self._t is not None and t <= self._t:
            raise InputError(f"sample.t: {t} is not after the previous sample's {self._t}")
        self._t = t
        if self._since is None:
            self._since = t - dt
        cfg = self.config
        dest = sample.destinations
        slots = self._dests.add(dest["addr_hi"], dest["addr_lo"])
        n_dest = len(self._dests)
        self._ensure(n_dest)

        rate = np.zeros((n_dest, len(_CLASSES)))
        for col, name in enumerate(("syn", "ack", "udp", "icmp", "gre", "frags", "refl", "packets")):
            rate[slots, col] = dest[name] / dt
        # UDP floods are UDP *not* from reflection ports; reflection has its own vector.
        rate[slots, 2] = np.maximum(dest["udp"].astype(np.float64) - dest["refl"], 0) / dt
        bps = np.zeros(n_dest)
        bps[slots] = dest["bytes"] * 8.0 / dt
        dropped = np.zeros(n_dest)
        dropped[slots] = dest["drops"] / dt

        src = _SourceStep(self, sample, n_dest)
        rate[:, _SOURCES] = src.n_active

        base = self._baselines()
        thr = np.maximum(self._floor, self._factor * base[:, : len(DEST_VECTORS)])
        over = rate[:, : len(DEST_VECTORS)] >= thr
        over[:, :_FLAG_VECTORS] &= rate[:, :_FLAG_VECTORS] >= self._share * rate[:, [_MANY]]
        active = self._active[:n_dest]

        # every flag-vector flood over its threshold or under attack, source by source
        floods: dict[tuple[int, int], _Flood] = {}
        strong: dict[tuple[int, int], bool] = {}
        for d, v in zip(*np.nonzero(over[:, :_FLAG_VECTORS] | active[:, :_FLAG_VECTORS]), strict=True):
            d, v = int(d), int(v)
            attack = self._attacks.get((d, v))
            strong[(d, v)] = bool(over[d, v]) and (attack is None or not attack.falling(float(rate[d, v])))
            # the typical offender rate is held while the flood is not at strength
            hold = attack.typical_pps if attack is not None and not strong[(d, v)] else 0.0
            floods[(d, v)] = src.flood(d, _OFFENDER_FIELD[DEST_VECTORS[v]], float(rate[d, v]), hold)

        # many_source counts what no other attack on the destination explains
        # (worked out where it could matter: it only takes away)
        source_thr = np.maximum(cfg.many_min_sources, cfg.many_source_factor * base[:, _SOURCES])
        need = active[:, _MANY] | (over[:, _MANY] & (src.n_active >= source_thr))
        if need.any():
            reflected = (over[:, _REFL] | active[:, _REFL]) & need
            explained = src.explain({k: f for k, f in floods.items() if need[k[0]]}, self._attacks, reflected)
            explained += np.where(reflected, rate[:, _REFL], 0)
            rate[:, _MANY] = np.maximum(rate[:, _MANY] - explained, 0)
            over[:, _MANY] = rate[:, _MANY] >= thr[:, _MANY]
        spoofed = (src.new_tiny >= cfg.spoof_new_per_s * dt) & (src.new_tiny >= cfg.spoof_share * src.n_now)
        spoofed &= src.new_tiny > 0
        many = over[:, _MANY] & (src.n_unexplained >= source_thr) & ~spoofed
        if many.any():
            many &= src.moderate(many) * 2 >= src.n_unexplained
        over[:, _MANY] = many

        self._over[:n_dest] = np.where(over, self._over[:n_dest] + 1, 0)
        fresh = over & (self._over[:n_dest] == 1)
        self._onset[:n_dest] = np.where(fresh, t - dt, self._onset[:n_dest])
        under = rate[:, : len(DEST_VECTORS)] < cfg.end_fraction * thr
        self._under[:n_dest] = np.where(active & under, self._under[:n_dest] + 1, 0)
        starts = ~active & (self._over[:n_dest] >= cfg.start_intervals)
        ends = active & (self._under[:n_dest] >= cfg.end_intervals)

        learn = ~active.any(axis=1) & ~over.any(axis=1)
        if learn.any():
            alpha = -math.expm1(-dt / cfg.baseline_tau)
            self._ewma[:n_dest][learn] += alpha * (rate[learn] - self._ewma[:n_dest][learn])
            self._weight[:n_dest][learn] += alpha * (1.0 - self._weight[:n_dest][learn])

        events: list[AttackEvent] = []
        for d, v in zip(*np.nonzero(starts), strict=True):
            d, v = int(d), int(v)
            self._active[d, v] = True
            self._attacks[(d, v)] = self._start(d, DEST_VECTORS[v], t)
        for (d, v), attack in sorted(self._attacks.items()):
            kind: EventKind = "started" if starts[d, v] else "ended" if ends[d, v] else "updated"
            attack.measure(float(rate[d, v]), float(bps[d]), float(dropped[d]))
            attack.over = bool(over[d, v])
            attack.sources = int(src.n_active[d])
            attack.threshold_pps = float(thr[d, v])
            attack.baseline_pps = float(base[d, v])
            if attack.vector == "many_source":
                src.suspects(attack, cfg.many_newcomer_lead)
                attack.profile = "diffuse"
            else:
                flood = floods[(d, v)]
                covered = flood.name_offenders(attack.offenders)
                if strong[(d, v)] and flood.typical > 0:
                    attack.typical_pps = flood.typical
                # the profile is judged while the attack is at strength, not on its tail
                if attack.over:
                    share = covered / attack.pps if attack.pps > 0 else 0.0
                    judged: Profile = (
                        "spoofed" if spoofed[d]
                        else "concentrated" if share >= cfg.concentrated_share
                        else "diffuse"
                    )
                    attack.judge(judged, started=kind == "started", strong=strong[(d, v)],
                                 sustain=cfg.start_intervals)
                else:
                    attack.pending = 0
                attack.remember(attack.pps, cfg.start_intervals)
            attack.offenders.cap(cfg.max_offenders)
            events.append(attack.event(kind, t, cfg.report_sources))
            if kind == "started":
                LOGGER.info("attack %s started: %.0f pps, threshold %.0f, profile %s",
                            attack.id, attack.pps, attack.threshold_pps, attack.profile)
            if kind == "ended":
                LOGGER.info("attack %s ended after %.1f s, peak %.0f pps",
                            attack.id, t - attack.started_at, attack.peak_pps)
                del self._attacks[(d, v)]
                self._active[d, v] = False
                self._under[d, v] = 0
        heavy = src.heavy()
        if heavy is not None:
            events.append(heavy)
        order = {v: i for i, v in enumerate(VECTORS)}
        events.sort(key=lambda e: (order[e.vector], str(e.victim), e.id))
        self._events = events
        return events

    # -- internals --

    def _ensure(self, n: int) -> None:
        self._ewma = _grow(self._ewma, n)
        self._weight = _grow(self._weight, n)
        self._over = _grow(self._over, n)
        self._under = _grow(self._under, n)
        self._onset = _grow(self._onset, n)
        self._active = _grow(self._active, n)

    def _baselines(self) -> F64:
        n = len(self._dests)
        w = self._weight[:n, None]
        return cast(F64, np.divide(self._ewma[:n], w, out=np.zeros_like(self._ewma[:n]), where=w > 0))

    def _next_id(self, *parts: str) -> str:
        self._seq += 1
        return "-".join((*parts, str(self._seq)))

    def _start(self, slot: int, vector: Vector, t: float) -> _Attack:
        victim = self._dests.prefix(slot)
        col = DEST_VECTORS.index(vector)
        return _Attack(
            id=self._next_id(VECTOR_CODES[vector], victim.slug),
            vector=vector,
            slot=slot,
            victim=victim,
            onset_at=float(self._onset[slot, col]),
            started_at=t,
        )


class _SourceStep:
    """The source side of one :meth:`Detector.observe`: updates the source
    table, computes the per-destination source statistics, names offenders
    and runs the ``source_rate`` vector."""

    def __init__(self, det: Detector, sample: Sample, n_dest: int) -> None:
        self.det = det
        self.cfg = cfg = det.config
        self.t, self.dt = t, dt = sample.t, sample.dt
        s = sample.sources
        self.rows = s
        table = det._table
        self.keys = keys = det._keys(s["addr_hi"], s["addr_lo"])
        dst = det._dests.lookup(s["dst_hi"], s["dst_lo"])
        # A source denied by an exact entry is counted on the entry: packets,
        # bytes and drops only, no classes and no destination (or a stale one).
        # Its destination is the one it had when it was last seen, if it was.
        self.opaque = np.zeros(len(s), dtype=bool)
        """Rows of sources denied by exact entries: packets, bytes, drops only."""
        self.denied: I64 = np.zeros(0, np.int64)
        """The same, as row numbers."""
        self.unknown = np.zeros(len(s), dtype=bool)
        """Opaque rows whose destination nobody knows (a source seen only while denied)."""
        dropped = np.nonzero(s["drops"] > 0)[0]
        if len(dropped):
            d = s[dropped]
            classes = d["syn"] | d["ack"] | d["udp"] | d["icmp"] | d["gre"] | d["frags"]
            opaque = dropped[(classes == 0) & (d["drops"] == d["packets"])]
            self.opaque[opaque] = True
            self.denied = opaque
            o = s[opaque]
            blind = opaque[(o["dst_hi"] == 0) & ((o["dst_lo"] == 0) | (o["dst_lo"] == np.uint64(V4_MAPPED)))]
            at, known = table.positions(keys[blind])
            dst[blind[known]] = table.dst[at[known]]
            self.unknown[blind[dst[blind] < 0]] = True
        self.dst = dst
        order = np.argsort(keys)
        ks = keys[order]
        self.sorted_keys, self.order = ks, order
        pos, found = table.positions(ks)
        first = np.ones(len(ks), dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        new = ~found & first
        if new.any():
            rows = order[new]
            added = ks[new]
            table.insert(added, s["addr_hi"][rows], s["addr_lo"][rows], t - dt)
            # every key moves up by the number of new keys below it
            pos += np.searchsorted(added, ks)
        packets = s["packets"][order].astype(np.float64)
        dst_sorted = dst[order]
        # reflectors send UDP only (a denied source's row says nothing about it)
        mixed = np.nonzero((s["udp"] < s["packets"])[order] & ~self.opaque[order])[0]
        table.mixed_at[pos[mixed]] = t
        decay = np.exp(-(t - table.last[pos]) / cfg.window)
        table.rate[pos] = table.rate[pos] * decay - math.expm1(-dt / cfg.window) * packets / dt
        table.last[pos] = t
        table.dst[pos] = dst_sorted

        # churn: sources seen for the first time, tiny in their first interval
        to_dest = dst_sorted >= 0
        tiny_new = ~found & (packets <= cfg.spoof_tiny_packets) & to_dest
        self.new_tiny = np.bincount(dst_sorted[tiny_new], minlength=n_dest)[:n_dest]
        self.n_now = np.bincount(dst_sorted[to_dest], minlength=n_dest)[:n_dest]
        window = max(cfg.window, dt)
        kept = np.ones(len(ks), dtype=bool)
        if table.evict(t, window, cfg.max_tracked_sources):
            pos, kept = table.positions(ks)
            pos = np.minimum(pos, max(len(table) - 1, 0))
        self.live = (table.last > t - window) & (table.dst >= 0)
        self.n_active = np.bincount(table.dst[self.live], minlength=n_dest)[:n_dest]
        self.n_dest = n_dest
        self.explained = np.zeros(len(table), dtype=bool)
        """Table rows whose traffic another attack on their destination explains (:meth:`explain`)."""
        self.n_unexplained = self.n_active

        # per-source rates, for source_rate
        self.pps = packets / dt
        self.bits = s["bytes"][order] * 8.0 / dt
        over = (self.pps >= cfg.source_pps) | (self.bits >= cfg.source_bps)
        # the table may have dropped some of this interval's sources (more than
        # max_tracked_sources): their streak cannot grow
        streak = np.where(over & kept, table.streak[pos] + 1, 0).astype(np.int32)
        table.streak[:] = 0
        table.streak[pos[kept]] = streak[kept]
        self.entering = over & (streak >= cfg.start_intervals)

    # -- destination floods --

    def moderate(self, dests: Bools) -> I64:
        """Per destination in ``dests``: active sources at most ``many_max_source_pps``
        (of those no other attack explains)."""
        table = self.det._table
        rows = np.nonzero(self.live & ~self.explained & dests[np.maximum(table.dst, 0)])[0]
        est = table.estimate(self.t, self.cfg.window, rows)
        calm = rows[est <= self.cfg.many_max_source_pps]
        return np.bincount(table.dst[calm], minlength=len(dests))[: len(dests)]

    def flood(self, slot: int, name: str, vector_pps: float, hold: float) -> _Flood:
        """The offenders of one flag-vector flood on destination ``slot`` in this interval.

        An offender sends at least ``offender_pps`` of the vector's packets
        and at least ``offender_fraction`` of the flood's typical offender
        rate (or of ``hold``, the rate held from the flood at strength, if
        higher). Sources denied by exact entries (their packets are all
        drops, with no classes) are the flood's when their last destination
        is the victim or unknown: they count towards the typical rate and,
        up to the part of the vector no visible source explains, as covered."""
        s, dt, cfg = self.rows, self.dt, self.cfg
        floor = cfg.offender_pps * dt
        to_victim = self.dst == slot
        counts = s[name]
        heavy = np.nonzero(to_victim & (counts >= floor))[0]  # denied rows have no counts
        seen = float(np.add.reduce(counts, where=to_victim)) / dt
        hidden_pps = 0.0
        heavy_counts = counts[heavy].astype(np.float64)
        if len(self.denied):
            hidden = self.denied[to_victim[self.denied] | self.unknown[self.denied]]
            packets = s["packets"][hidden]
            hidden_pps = float(packets.sum()) / dt
            heavy_counts = np.concatenate([heavy_counts, packets[packets >= floor]])
        typical = _typical(heavy_counts) / dt
        cut = max(floor, cfg.offender_fraction * max(typical, hold) * dt)
        rows = heavy[counts[heavy] >= cut]
        ks, pick = _unique_sorted(self.keys[rows])
        rows = rows[pick]
        return _Flood(
            step=self, slot=slot, name=name, keys=ks, hi=s["addr_hi"][rows], lo=s["addr_lo"][rows],
            pps=counts[rows] / dt, bps=s["bytes"][rows] * 8.0 / dt, typical=typical,
            covered_hidden=min(hidden_pps, max(vector_pps - seen, 0.0)),
        )

    def explain(self, floods: Mapping[tuple[int, int], _Flood],
                attacks: Mapping[tuple[int, int], _Attack], reflected: Bools) -> F64:
        """Mark the sources other attacks explain, for ``many_source``; return
        the packets/s they sent to each destination.

        A flag-vector flood over its threshold or under attack explains its
        offenders (named so far, and this interval's); reflection (``reflected``
        destinations) explains the sources that sent only UDP, and its own
        ``refl`` packets (the caller takes those off)."""
        table = self.det._table
        explained = np.zeros(self.n_dest)
        named: dict[int, list[U64]] = {}
        for (d, v), fl in floods.items():
            if v == _REFL:
                continue
            ks = fl.keys
            attack = attacks.get((d, v))
            if attack is not None and len(attack.offenders):
                off = attack.offenders.key  # this interval's offenders are mostly named already
                at = np.minimum(np.searchsorted(off, ks), len(off) - 1)
                ks = np.concatenate([off, ks[off[at] != ks]])
            if len(ks):
                named.setdefault(d, []).append(ks)
            # sources denied by exact entries: the same for every vector of d
            explained[d] = max(explained[d], fl.covered_hidden)
        mask = np.zeros(len(table), dtype=bool)
        for d, parts in named.items():
            ks = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
            pos, found = table.positions(ks)
            at = pos[found]
            mask[at[table.dst[at] == d]] = True
            # this interval's packets of those sources, as seen (denied ones are counted above)
            rows = self.order[self._present(ks)]
            rows = rows[(self.dst[rows] == d) & ~self.opaque[rows]]
            explained[d] += float(self.rows["packets"][rows].sum()) / self.dt
        if reflected.any():
            udp_only = table.mixed_at <= self.t - max(self.cfg.window, self.dt)
            mask |= udp_only & (table.dst >= 0) & reflected[np.maximum(table.dst, 0)]
        self.explained = mask
        self.n_unexplained = np.bincount(table.dst[self.live & ~mask], minlength=self.n_dest)[: self.n_dest]
        return explained

    def _present(self, keys: U64) -> I64:
        """Sorted positions (into ``sorted_keys``) of those of ``keys`` in this sample."""
        ks = self.sorted_keys
        if not len(ks) or not len(keys):
            return np.zeros(0, np.int64)
        pos: I64 = np.minimum(np.searchsorted(ks, keys), len(ks) - 1)
        found: I64 = pos[ks[pos] == keys]
        return found

    def suspects(self, attack: _Attack, lead: float) -> None:
        """Many-source offenders: sources towards the victim that arrived
        since shortly (``lead`` seconds) before the surge, heaviest first.

        A source first seen within ``window`` of the detector's first sample
        may have been sending long before (the agent restarted during the
        flood, say): its age is unknown, so it is never named. Without this a
        restarted detector would take every established client for a newcomer.
        """
        table = self.det._table
        since = self.det._since
        assert since is not None  # set by the first observe()
        known = since + max(self.cfg.window, self.dt)
        arrived = (table.born >= attack.onset_at - lead) & (table.born >= known)
        rows = np.nonzero(self.live & ~self.explained & (table.dst == attack.slot) & arrived)[0]
        est = table.estimate(self.t, self.cfg.window, rows)
        n = self.cfg.max_offenders
        if len(rows) > n:
            pick = np.argpartition(-est, n - 1)[:n]
            rows, est = rows[pick], est[pick]
        order = np.argsort(table.key[rows])
        rows, est = rows[order], est[order]
        attack.offenders.merge(table.key[rows], table.hi[rows], table.lo[rows], est, np.zeros(len(rows)))

    # -- single heavy sources --

    def heavy(self) -> AttackEvent | None:
        """Advance the ``source_rate`` attack; its event, if it is active."""
        det, cfg, t = self.det, self.cfg, self.t
        attack = det._heavy
        if attack is None and not self.entering.any():
            return None
        ks = self.sorted_keys
        kind: EventKind = "updated"
        if attack is None:
            attack = det._heavy = _Attack(
                id=det._next_id(VECTOR_CODES["source_rate"]), vector="source_rate", slot=-1,
                victim=None, onset_at=t - self.dt * cfg.start_intervals, started_at=t,
                threshold_pps=cfg.source_pps,
            )
            kind = "started"
        off = attack.offenders
        # newcomers: N intervals in a row over the threshold
        entering = np.nonzero(self.entering)[0]
        if len(entering):
            rows = self.order[entering]
            off.add(ks[entering], self.rows["addr_hi"][rows], self.rows["addr_lo"][rows])
        # every member's rates in this interval (0 when absent)
        if len(ks):
            at = np.minimum(np.searchsorted(ks, off.key), len(ks) - 1)
            present = ks[at] == off.key
            pps = np.where(present, self.pps[at], 0.0)
            bits = np.where(present, self.bits[at], 0.0)
        else:
            pps = bits = np.zeros(len(off))
        off.pps, off.bps = pps, bits
        off.peak = np.maximum(off.peak, pps)
        hot = (pps >= cfg.end_fraction * cfg.source_pps) | (bits >= cfg.end_fraction * cfg.source_bps)
        off.under = np.where(hot, 0, off.under + 1).astype(np.int32)
        over = bool(((pps >= cfg.source_pps) | (bits >= cfg.source_bps)).any())
        off.keep(off.under < cfg.end_intervals)
        off.cap(cfg.max_offenders)
        attack.measure(float(off.pps.sum()), float(off.bps.sum()), self._drops(off.key))
        attack.over = over
        attack.sources = len(off)
        if not len(off):
            kind = "ended"
            det._heavy = None
            LOGGER.info("attack %s ended, peak %.0f pps", attack.id, attack.peak_pps)
        return attack.event(kind, t, cfg.report_sources)

    def _drops(self, keys: U64) -> float:
        return float(self.rows["drops"][self.order[self._present(keys)]].sum()) / self.dt
