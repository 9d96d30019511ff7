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

**Cost, and why it is built this way** (``bench/harvest.py``, issue 11).
The kernel's batch read is the floor of any exact per-source harvest:
about 330 ns per entry here (a hash bucket walk and a cache miss per
element), 0.33 s for a million sources, whatever the chunk size (1k to 1M
entries per call measured alike). Everything above that floor is this
module's, and it is kept to a few passes over memory it does not allocate
anew:

* the deltas are computed in map order, straight into the sample's array.
  A hash map's batch read walks its buckets in the same order every time,
  so in the steady state (the same sources as last time) the keys sit
  where they sat and nothing is sorted or gathered (:meth:`Table.matches`
  checks with one comparison); otherwise one sort of the new keys and a
  merge-like search find the previous rows;
* the read buffers are reused, two pairs in turn
  (:class:`~controller.dataplane.pinned.ReadBuffers`):
  at a million sources a fresh 100 MB array costs as much in page faults
  and kernel zeroing as the arithmetic on it;
* sources whose packets have not moved for :data:`IDLE_SECONDS` are
  deleted from the source maps (:func:`_prune`). The LRU only evicts under
  pressure: after one random-spoofed flood a 1M-entry map stays full, and
  every later interval would read (and diff) a million idle entries.

Measured alternatives: ``BPF_MAP_LOOKUP_AND_DELETE_BATCH`` makes the values
per-interval deltas, but it costs at least the lookup's walk per active
source, re-creates every entry on its next packet and takes away the
cumulative counters that ``top``, the deny-entry merge and restarts rely
on; it saves only the userspace diff, which is now the small part. What
would make the cost flat in the number of sources is a fixed-size summary
kept by the data plane (per-CPU count-min sketch and heavy-hitter table,
HyperLogLog registers per destination, read from mmapable arrays without
syscalls); that changes what the detector reads (every source's delta
today) and is left to the detector's side of issue 11.
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
from ..dataplane.pinned import MapSet, PinnedMap, ReadBuffers
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

__all__ = ["IDLE_SECONDS", "PRUNE_MIN", "CounterTotals", "Harvester", "IntervalCounters", "Snapshot",
           "read_snapshot"]

IDLE_SECONDS = 30.0
"""Sources whose packets have not moved for this long are deleted from the
source maps: six times the detector's default window, after which it has
forgotten them too. The LRU evicts only under pressure, so without this a
map filled once by a spoofed flood would stay full, and cost its million
entries' read every interval, for ever."""
PRUNE_MIN = 4096
"""Idle sources are deleted once there are this many (a few idle rows cost
less to read than to delete one batch at a time)."""

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
        or tuple(abi.DST_COUNTERS_DTYPE.names or ())[: len(DESTINATION_FIELDS)] != DESTINATION_FIELDS
        or abi.SRC_COUNTERS_DTYPE.descr[-1] != ("last_dst", "|V16")):
    raise ImportError("controller.detection.harvest: sample and counter layouts disagree "
                      "(see controller/detection/samples.py)")


@dataclass
class Table:
    """One address family's cumulative counters at one moment.

    ``keys`` and ``rows`` are in map order, as the batch read returned them.
    Keys are integers where they fit (IPv4: the address as uint32), else
    16-byte big-endian strings (IPv6; byte order is numeric order).
    ``sorted_keys`` / ``order`` (``rows[order[i]]`` belongs to
    ``sorted_keys[i]``) are computed only when a read must be matched to
    the previous one by key (:meth:`matches`).
    """

    keys: np.ndarray
    rows: np.ndarray
    v4: bool
    map_rows: int = 0
    """Rows read from the source map: the first ones (deny entries' rows follow)."""
    denied: np.ndarray | None = None
    """Which of those also carry a deny entry's hits."""
    seen: np.ndarray | None = None
    """Sources: time.monotonic() at which each row's packets last moved."""
    _sorted: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, packed: np.ndarray, rows: np.ndarray, map_rows: int | None = None,
           denied: np.ndarray | None = None) -> Table:
        width = packed.dtype.itemsize
        if width == 4:
            keys = np.ascontiguousarray(packed).view(">u4").astype(np.uint32)
        else:
            keys = np.ascontiguousarray(packed).view("S16")
        return cls(keys.ravel(), rows, width == 4, len(rows) if map_rows is None else map_rows, denied)

    def packed(self, which: np.ndarray) -> bytes:
        """The keys at rows ``which``, packed as the map keys them."""
        keys = self.keys[which]
        return bytes(keys.astype(">u4").tobytes() if self.v4 else keys.tobytes())

    def drop(self, which: np.ndarray) -> None:
        """Forget the source-map rows ``which`` (sorted; deleted from the map)."""
        keep = np.ones(len(self.keys), dtype=bool)
        keep[which] = False
        self.keys, self.rows = self.keys[keep], self.rows[keep]
        if self.seen is not None:
            self.seen = self.seen[keep]
        self.map_rows -= len(which)
        self.denied, self._sorted = None, None

    @property
    def sorted_keys(self) -> np.ndarray:
        return self._index()[0]

    @property
    def order(self) -> np.ndarray:
        return self._index()[1]

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            order = np.argsort(self.keys)  # keys are unique: no stability needed
            self._sorted = (self.keys[order], order)
        return self._sorted

    def words64(self) -> np.ndarray:
        """The rows (map order) as an (n, itemsize/8) uint64 matrix: every
        counter struct is a run of uint64 counters (plus, for sources, the
        16 bytes of the last destination)."""
        rows = np.ascontiguousarray(self.rows)
        return rows.view(np.uint64).reshape(len(rows), rows.dtype.itemsize // 8)

    def address_words(self, which: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """(hi, lo) address words of the keys at map positions ``which``."""
        keys = self.keys[which]
        if self.v4:
            return v4_words(keys)
        return words_from_packed(keys)

    def matches(self, prev: Table) -> np.ndarray | None:
        """For each row (map order), the row of ``prev`` with the same key,
        -1 where ``prev`` has none; None when both reads hold the same keys
        at the same positions (the steady state: a hash map's batch read
        walks its buckets in the same order every time)."""
        if len(self.keys) == len(prev.keys) and np.array_equal(self.keys, prev.keys):
            return None
        where = np.full(len(self.keys), -1, dtype=np.intp)
        if not len(prev.keys) or not len(self.keys):
            return where
        ks, order = self._index()
        pks, porder = prev._index()
        # sorted needles: the search is a near-linear merge
        pos = np.minimum(np.searchsorted(pks, ks), len(pks) - 1)
        found = pks[pos] == ks
        where[order[found]] = porder[pos[found]]
        return where


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
                  slot_ids: Mapping[int, str] | None = None, into: ReadBuffers | None = None) -> Snapshot:
    """One read of the source (with the exact deny entries, except the
    families in ``skip_denied``) and destination maps, and of the action,
    reason and rule counters (``slot_ids``: each slot's rule)."""
    src = read_sources(maps, skip_denied=skip_denied, into=into)
    dst = {}
    for fam, width in (("v4", 4), ("v6", 16)):
        packed, values, n = maps[f"dst_{fam}"].read_arrays(into)
        dst[fam] = Table.of(np.frombuffer(packed, dtype=f"V{width}", count=n),
                            np.frombuffer(values, dtype=abi.DST_COUNTERS_DTYPE, count=n))
    totals = CounterTotals.read(maps, slot_ids or {})
    v4, v6 = (Table.of(keys, np.asarray(rows), src.map_rows.get(fam), src.denied_rows.get(fam))
              for fam, keys, rows in (("v4", src.v4_keys, src.v4), ("v6", src.v6_keys, src.v6)))
    return Snapshot(time.monotonic(), v4, v6, dst["v4"], dst["v6"], src.deny_entries, totals)


def _moved(cur: Table, prev: Table, fields: tuple[str, ...], extra: int = 0,
           seen_at: float | None = None) -> tuple[np.ndarray, np.ndarray | slice]:
    """(a uint64 matrix of the sample's columns — address words, the
    increase of the first ``len(fields)`` counters since ``prev``, ``extra``
    columns left for the caller — for the keys whose packets moved, in map
    order; which rows of ``cur.rows`` they are: a slice of all of them when
    every key moved, so nothing is gathered).

    A key ``prev`` lacks, or a counter that went down (the LRU evicted and
    re-created the entry), counts from zero (:func:`_increase`'s rule). The
    increases are written straight into the result (one allocation of the
    sample's size: first-touch page faults of fresh arrays cost as much as
    the arithmetic at a million rows); when the keys sit where they sat in
    ``prev`` (:meth:`Table.matches`), nothing is gathered or sorted at all,
    else whole contiguous rows of ``prev`` are (a strided gather is 10x
    slower). With ``seen_at``, ``cur.seen`` is carried over from ``prev``
    and set to ``seen_at`` where packets moved.
    """
    width, n = len(fields), len(cur.keys)
    out = np.empty((n, 2 + width + extra), dtype=np.uint64)
    now = cur.words64()[:, :width]
    where = cur.matches(prev)
    if where is None:
        before = prev.words64()[:, :width]
    elif len(prev.keys):
        before = np.take(prev.words64(), np.maximum(where, 0), axis=0)[:, :width]
        before[where < 0] = 0
    else:
        before = np.zeros((n, width), dtype=np.uint64)
    d = out[:, 2 : 2 + width]
    np.subtract(now, before, out=d)
    went_down = now < before
    if went_down.any():
        np.copyto(d, now, where=went_down)
    moved = np.flatnonzero(d[:, 0] > 0)  # column 0 is packets
    if seen_at is not None:
        if where is None and prev.seen is not None:
            seen = prev.seen.copy()
        else:
            seen = np.full(n, seen_at)
            if where is not None and prev.seen is not None and len(prev.seen):
                known = where >= 0
                seen[known] = prev.seen[where[known]]
        seen[moved] = seen_at
        cur.seen = seen
    which: np.ndarray | slice = slice(None)
    if len(moved) < n:
        out, which = out[moved], moved
    out[:, 0], out[:, 1] = cur.address_words(which)
    return out, which


class Harvester:
    """Turns successive snapshots into samples and interval counters.

    An exact deny map found empty is not read again while the rule-set
    generation stays the same: every write to those maps is part of a swap,
    which flips the generation (:mod:`controller.dataplane.swap`), and a batch read of
    an empty 1M-entry hash still walks its million buckets.
    """

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        """Sources idle this long are deleted from the source maps (:func:`_prune`)."""
        self.pruned = 0
        """Sources deleted so far (a metric)."""
        self._prev: Snapshot | None = None
        self._buffers = ReadBuffers()  # the previous read's tables live in the other pair
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
        try:
            snap = read_snapshot(maps, skip, slot_ids, self._buffers)
        except BaseException:
            self._buffers = ReadBuffers()  # a failed read may have used the previous read's turn
            raise
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
        for fam, cur, old in (("v4", snap.src_v4, prev.src_v4), ("v6", snap.src_v6, prev.src_v6)):
            m, moved = _moved(cur, old, SOURCE_FIELDS, extra=2, seen_at=snap.t)
            m[:, -2], m[:, -1] = _last_dst(cur, moved, m[:, 0], m[:, 1])
            sources.append(m.view(SOURCE_DTYPE).ravel())
            self.pruned += _prune(maps[f"src_{fam}"], cur, snap.t - self.idle_seconds)
        dests = [_moved(cur, old, DESTINATION_FIELDS)[0].view(DESTINATION_DTYPE).ravel()
                 for cur, old in ((snap.dst_v4, prev.dst_v4), (snap.dst_v6, prev.dst_v6))]
        return Sample(snap.t, dt, _joined(sources), _joined(dests))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The IPv4 and IPv6 rows as one array: no copy when one family is empty."""
    full = [p for p in parts if len(p)]
    return full[0] if len(full) == 1 else np.concatenate(parts)


def _prune(src_map: PinnedMap, table: Table, idle_since: float) -> int:
    """Delete the sources whose packets have not moved since ``idle_since``
    from ``src_map`` (and from ``table``, so the next read, without them,
    still matches it in place), once there are :data:`PRUNE_MIN` of them.
    Sources that also carry a deny entry's hits stay: their row and the
    entry's are one source's total. Returns how many were deleted."""
    if table.seen is None:
        return 0
    idle = table.seen[: table.map_rows] < idle_since
    if table.denied is not None and len(table.denied):
        idle[table.denied] = False
    rows = np.flatnonzero(idle)
    if len(rows) < PRUNE_MIN:
        return 0
    deleted = src_map.delete_packed(table.packed(rows), len(rows))
    table.drop(rows)
    return deleted


_LAST_DST_WORD = abi.SRC_COUNTERS_DTYPE.itemsize // 8 - 2  # last_dst: the struct's last 16 bytes
"""Column of ``last_dst``'s first 8 bytes in a source row read as uint64 words."""


def _last_dst(table: Table, which: np.ndarray | slice, hi: np.ndarray,
              lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) of the latest destination of the sources at rows ``which``
    (addresses ``hi``, ``lo``): an IPv4 source's is an IPv4 address in the
    first 4 bytes of ``last_dst``, an IPv6 source's all 16 bytes."""
    words = table.words64()
    if table.v4:  # every source of the IPv4 map is IPv4: one column, no bytes copied
        first = words[which, _LAST_DST_WORD] & np.uint64(0xFFFF_FFFF)
        return v4_words(first.astype(np.uint32).byteswap())
    raw = np.ascontiguousarray(words[which, _LAST_DST_WORD : _LAST_DST_WORD + 2])
    v6_hi, v6_lo = words_from_packed(raw.view("V16").ravel())
    v4_hi, v4_lo = v4_words(raw[:, 0].astype(np.uint32).byteswap()) if len(raw) else (v6_hi, v6_lo)
    src_v4 = is_v4(hi, lo)
    return np.where(src_v4, v4_hi, v6_hi), np.where(src_v4, v4_lo, v6_lo)
