"""From cumulative data-plane counters to per-interval increases.

Every interval the agent reads the data plane's counters once
(:func:`read_snapshot`): the per-source maps (merged with the exact deny
entries, whose hits are their sources' drops) and the per-destination maps
in one batch read each, and the action, reason and rule counters. The
:class:`Harvester` subtracts the previous read key by key, with one step
for every counter (:func:`_increase`: a key the previous read lacks, or a
counter that went down because the LRU evicted and re-created its entry or
its map was recreated, counts from zero), and derives from that one read:

* the :class:`~controller.detection.samples.Sample` the detector reads
  (:meth:`Harvester.sample`);
* the interval's action, reason and rule counters for the telemetry
  summary (:attr:`Harvester.counters`, :class:`IntervalCounters`);
* the cumulative counters the metrics page shows (:attr:`Harvester.totals`).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Container, Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar

import numpy as np

from ..dataplane import abi, counters
from ..dataplane.counters import RuleTotals, Totals, read_sources
from ..dataplane.pinned import MapSet
from ..dataplane.reasons import Action, Reason
from .samples import (
    DESTINATION_DTYPE,
    DESTINATION_FIELDS,
    SOURCE_DTYPE,
    SOURCE_FIELDS,
    Sample,
    is_v4,
    v4_words,
    words_from_packed,
)

__all__ = ["CounterTotals", "Harvester", "IntervalCounters", "Snapshot", "read_snapshot"]

_K = TypeVar("_K", bound=Hashable)
_C = TypeVar("_C", Totals, RuleTotals)


def _increase(cur: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The one cumulative-to-delta step: ``cur - prev`` per counter, where a
    counter that went down counts from zero (its increase is what it holds
    now). ``cur`` and ``prev`` are uint64 matrices whose rows are the same
    keys (zeros where the previous read had none); ``prev`` is overwritten
    with the result, which is returned."""
    went_down = cur < prev
    np.subtract(cur, prev, out=prev)
    if went_down.any():
        prev[went_down] = cur[went_down]
    return prev


def _columns(dtype: np.dtype[np.void]) -> tuple[str, ...]:
    """The fields of a dtype made of uint64 columns only, in order (else raise)."""
    names = tuple(dtype.names or ())
    fields = dtype.fields
    if fields is None or any(fields[n][0] != np.dtype("<u8") for n in names):
        raise TypeError(f"{dtype} is not all uint64 columns")
    return names


# The samples are built as uint64 matrices viewed as the sample dtypes:
# address words, the counters in the map structs' order, then (sources) the
# last destination's words. This layout is checked once, here.
if (_columns(SOURCE_DTYPE) != ("addr_hi", "addr_lo", *SOURCE_FIELDS, "dst_hi", "dst_lo")
        or _columns(DESTINATION_DTYPE) != ("addr_hi", "addr_lo", *DESTINATION_FIELDS)
        or tuple(abi.SRC_COUNTERS_DTYPE.names or ())[: len(SOURCE_FIELDS)] != SOURCE_FIELDS
        or tuple(abi.DST_COUNTERS_DTYPE.names or ())[: len(DESTINATION_FIELDS)] != DESTINATION_FIELDS):
    raise ImportError("controller.detection.harvest: sample and counter layouts disagree "
                      "(see controller/detection/samples.py)")


@dataclass
class Table:
    """One address family's cumulative counters at one moment.

    ``keys`` are as the map returns them, in map order; ``rows`` likewise.
    ``sorted_keys`` / ``order`` index them: ``rows[order[i]]`` belongs to
    ``sorted_keys[i]``. Keys are integers where they fit (IPv4: the address
    as uint32), else 16-byte big-endian strings (IPv6; byte order is numeric
    order), so the one sort per read is an integer sort in the common case,
    and rows are never reordered, only the counters a delta needs are read.
    """

    keys: np.ndarray
    rows: np.ndarray
    sorted_keys: np.ndarray
    order: np.ndarray

    @classmethod
    def of(cls, packed: np.ndarray, rows: np.ndarray) -> Table:
        if packed.dtype.itemsize == 4:
            keys = np.frombuffer(np.ascontiguousarray(packed).tobytes(), dtype=">u4").astype(np.uint32)
        else:
            keys = np.frombuffer(np.ascontiguousarray(packed).tobytes(), dtype="S16")
        order = np.argsort(keys)  # keys are unique: no stability needed
        return cls(keys, rows, keys[order], order)

    def words(self, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hi, lo) address words of the keys at sorted positions ``which``."""
        keys = self.sorted_keys[which]
        if keys.dtype == np.uint32:
            return v4_words(keys)
        return words_from_packed(keys)

    def words64(self) -> np.ndarray:
        """The rows (map order) as an (n, itemsize/8) uint64 matrix: every
        counter struct is a run of uint64 counters (plus, for sources, the
        16 bytes of the last destination)."""
        rows = np.ascontiguousarray(self.rows)
        return rows.view(np.uint64).reshape(len(rows), rows.dtype.itemsize // 8)

    def deltas(self, prev: Table, width: int) -> np.ndarray:
        """(n, width) increase of the first ``width`` counters since
        ``prev``, in sorted key order; a key ``prev`` lacks, or a counter
        that went down (the LRU evicted and re-created the entry), counts
        from zero. Sorted needles make the search a near-linear merge, and
        whole contiguous rows are gathered (a strided gather is 10x slower)."""
        cur = np.take(self.words64(), self.order, axis=0)
        if not len(prev.keys) or not len(self.keys):
            return cur[:, :width]
        pos = np.minimum(np.searchsorted(prev.sorted_keys, self.sorted_keys), len(prev.keys) - 1)
        found = prev.sorted_keys[pos] == self.sorted_keys
        before = np.take(prev.words64(), prev.order[pos], axis=0)  # the previous rows, then the deltas
        if not found.all():
            before[~found] = 0
        return _increase(cur[:, :width], before[:, :width])


@dataclass(frozen=True)
class IntervalCounters:
    """The data plane's counters of one interval: increases, not totals."""

    actions: Mapping[Action, Totals]
    reasons: Mapping[Reason, Totals]
    rules: Mapping[str, RuleTotals]
    """By rule id."""


def _increases(cur: Mapping[_K, _C], prev: Mapping[_K, _C], kind: type[_C]) -> dict[_K, _C]:
    """``cur`` less ``prev``, key by key (:func:`_increase`)."""
    names = tuple(f.name for f in fields(kind))
    row = operator.attrgetter(*names)
    keys = list(cur)
    zero = (0,) * len(names)
    now = np.array([row(cur[k]) for k in keys], dtype=np.uint64).reshape(len(keys), len(names))
    before = np.array([row(prev[k]) if k in prev else zero for k in keys],
                      dtype=np.uint64).reshape(len(keys), len(names))
    return {k: kind(*(int(v) for v in d)) for k, d in zip(keys, _increase(now, before), strict=True)}


@dataclass(frozen=True)
class CounterTotals:
    """The data plane's cumulative action, reason and rule counters at one
    read, and the rule of each counter slot then (``slot_ids``)."""

    actions: Mapping[Action, Totals] = field(default_factory=dict)
    reasons: Mapping[Reason, Totals] = field(default_factory=dict)
    rules: Mapping[int, RuleTotals] = field(default_factory=dict)
    """By slot: the slots that matched a packet."""
    slot_ids: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, maps: MapSet, slot_ids: Mapping[int, str]) -> CounterTotals:
        return cls(counters.action_totals(maps), counters.reason_totals(maps), counters.rule_totals(maps),
                   dict(slot_ids))

    def _by_rule(self) -> dict[tuple[str, int], RuleTotals]:
        return {(self.slot_ids[s], s): t for s, t in self.rules.items() if s in self.slot_ids}

    def since(self, prev: CounterTotals) -> IntervalCounters:
        """The increases since ``prev``. Rule counters are by rule id, keyed
        by (rule id, slot) between the reads, so a slot freed by one rule and
        given to another does not carry its old counts over; slots without a
        rule and rules without packets are left out."""
        rules = {rid: d for (rid, _), d in _increases(self._by_rule(), prev._by_rule(), RuleTotals).items()
                 if d.packets}
        return IntervalCounters(_increases(self.actions, prev.actions, Totals),
                                _increases(self.reasons, prev.reasons, Totals), rules)


@dataclass
class Snapshot:
    """Cumulative counters at one moment: sources and destinations, per family."""

    t: float
    src_v4: Table
    src_v6: Table
    dst_v4: Table
    dst_v6: Table
    deny_entries: dict[str, int]  # entries of each exact deny map read ("v4", "v6")
    counters: CounterTotals


def read_snapshot(maps: MapSet, skip_denied: Container[str] = (),
                  slot_ids: Mapping[int, str] | None = None) -> Snapshot:
    """One read of the source (with the exact deny entries, except the
    families in ``skip_denied``) and destination maps, and of the action,
    reason and rule counters (``slot_ids``: each slot's rule)."""
    src = read_sources(maps, skip_denied=skip_denied)
    dst = {}
    for fam, width in (("v4", 4), ("v6", 16)):
        packed, values, n = maps[f"dst_{fam}"].read_arrays()
        dst[fam] = Table.of(np.frombuffer(packed, dtype=f"V{width}", count=n),
                            np.frombuffer(values, dtype=abi.DST_COUNTERS_DTYPE, count=n))
    totals = CounterTotals.read(maps, slot_ids or {})
    return Snapshot(time.monotonic(), Table.of(src.v4_keys, np.asarray(src.v4)),
                    Table.of(src.v6_keys, np.asarray(src.v6)), dst["v4"], dst["v6"], src.deny_entries,
                    totals)


def _moved(cur: Table, prev: Table, fields: tuple[str, ...], dtype: np.dtype[np.void],
           extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a uint64 matrix of the sample's columns — address words, the counter
    deltas, ``extra`` columns left for the caller — for the keys whose
    packets moved, in key order; which rows of ``cur.rows`` they are)."""
    d = cur.deltas(prev, len(fields))
    moved = np.flatnonzero(d[:, 0] > 0)  # column 0 is packets
    out = np.empty((len(moved), 2 + len(fields) + extra), dtype=np.uint64)
    out[:, 0], out[:, 1] = cur.words(moved)
    out[:, 2 : 2 + len(fields)] = d[moved]
    return out, cur.order[moved]


class Harvester:
    """Turns successive snapshots into samples and interval counters.

    An exact deny map found empty is not read again while the rule-set
    generation stays the same: every write to those maps is part of a swap,
    which flips the generation (:mod:`controller.dataplane.swap`), and a batch read of
    an empty 1M-entry hash still walks its million buckets.
    """

    def __init__(self) -> None:
        self._prev: Snapshot | None = None
        self._deny_empty_at: dict[str, int] = {}  # family -> generation it was read empty at
        self.counters: IntervalCounters | None = None
        """The action, reason and rule counters between the last two reads
        (None until there are two)."""

    @property
    def totals(self) -> CounterTotals | None:
        """The cumulative counters of the last read (None before the first)."""
        return self._prev.counters if self._prev is not None else None

    def sample(self, maps: MapSet, slot_ids: Mapping[int, str] | None = None) -> Sample | None:
        """Read the counters; the per-source and per-destination deltas since
        the previous call (None on the first call). ``slot_ids`` names the
        rule of each counter slot now, for :attr:`counters`."""
        gen = maps.config().gen
        skip = {fam for fam, at in self._deny_empty_at.items() if at == gen}
        snap = read_snapshot(maps, skip, slot_ids)
        for fam, n in snap.deny_entries.items():
            if n == 0:
                self._deny_empty_at[fam] = gen
            else:
                self._deny_empty_at.pop(fam, None)
        prev, self._prev = self._prev, snap
        if prev is None:
            self.counters = None
            return None
        self.counters = snap.counters.since(prev.counters)
        dt = max(snap.t - prev.t, 1e-3)
        sources = []
        for cur, old in ((snap.src_v4, prev.src_v4), (snap.src_v6, prev.src_v6)):
            m, moved = _moved(cur, old, SOURCE_FIELDS, SOURCE_DTYPE, extra=2)
            m[:, -2], m[:, -1] = _last_dst(cur.rows["last_dst"][moved], m[:, 0], m[:, 1])
            sources.append(m.view(SOURCE_DTYPE).ravel())
        dests = [_moved(cur, old, DESTINATION_FIELDS, DESTINATION_DTYPE)[0].view(DESTINATION_DTYPE).ravel()
                 for cur, old in ((snap.dst_v4, prev.dst_v4), (snap.dst_v6, prev.dst_v6))]
        return Sample(snap.t, dt, np.concatenate(sources), np.concatenate(dests))


def _last_dst(last: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) of each source's latest destination: an IPv4 source's is an
    IPv4 address in the first 4 bytes of ``last_dst``."""
    raw = np.frombuffer(last.tobytes(), dtype=np.uint8).reshape(-1, 16)
    v6_hi, v6_lo = words_from_packed(np.frombuffer(raw.tobytes(), dtype="V16"))
    v4_hi, v4_lo = v4_words(np.ascontiguousarray(raw[:, :4]).view(">u4").ravel())
    src_v4 = is_v4(hi, lo)
    return np.where(src_v4, v4_hi, v6_hi), np.where(src_v4, v4_lo, v6_lo)
