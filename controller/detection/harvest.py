"""From cumulative data-plane counters to per-interval samples.

Every interval the agent reads the per-source maps (merged with the exact
deny entries, whose hits are their sources' drops) and the per-destination
maps in one batch read each, subtracts the previous read key by key and
hands the deltas to the detector as a :class:`controller.detection.samples.Sample`.
An entry the LRU evicted and re-created counts from zero: its delta is what
it has now.
"""

from __future__ import annotations

import time
from collections.abc import Container
from dataclasses import dataclass

import numpy as np

from ..dataplane import abi
from ..dataplane.counters import read_sources
from ..dataplane.pinned import MapSet
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

__all__ = ["Harvester", "Snapshot", "read_snapshot"]


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
        delta = np.take(prev.words64(), prev.order[pos], axis=0)  # the previous rows, then the deltas
        if not found.all():
            delta[~found] = 0
        went_down = cur[:, :width] < delta[:, :width]
        np.subtract(cur, delta, out=delta)
        if went_down.any():
            delta[:, :width][went_down] = cur[:, :width][went_down]
        return delta[:, :width]


@dataclass
class Snapshot:
    """Cumulative counters at one moment: sources and destinations, per family."""

    t: float
    src_v4: Table
    src_v6: Table
    dst_v4: Table
    dst_v6: Table
    deny_entries: dict[str, int]  # entries of each exact deny map read ("v4", "v6")


def read_snapshot(maps: MapSet, skip_denied: Container[str] = ()) -> Snapshot:
    """One read of the source (with the exact deny entries, except the
    families in ``skip_denied``) and destination maps."""
    src = read_sources(maps, skip_denied=skip_denied)
    dst = {}
    for fam, width in (("v4", 4), ("v6", 16)):
        packed, values, n = maps[f"dst_{fam}"].read_arrays()
        dst[fam] = Table.of(np.frombuffer(packed, dtype=f"V{width}", count=n),
                            np.frombuffer(values, dtype=abi.DST_COUNTERS_DTYPE, count=n))
    return Snapshot(time.monotonic(), Table.of(src.v4_keys, np.asarray(src.v4)),
                    Table.of(src.v6_keys, np.asarray(src.v6)), dst["v4"], dst["v6"], src.deny_entries)


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
    """Turns successive snapshots into samples.

    An exact deny map found empty is not read again while the rule-set
    generation stays the same: every write to those maps is part of a swap,
    which flips the generation (:mod:`controller.dataplane.swap`), and a batch read of
    an empty 1M-entry hash still walks its million buckets.
    """

    def __init__(self) -> None:
        self._prev: Snapshot | None = None
        self._deny_empty_at: dict[str, int] = {}  # family -> generation it was read empty at

    def sample(self, maps: MapSet) -> Sample | None:
        """The deltas since the previous call (None on the first call)."""
        gen = maps.config().gen
        skip = {fam for fam, at in self._deny_empty_at.items() if at == gen}
        snap = read_snapshot(maps, skip)
        for fam, n in snap.deny_entries.items():
            if n == 0:
                self._deny_empty_at[fam] = gen
            else:
                self._deny_empty_at.pop(fam, None)
        prev, self._prev = self._prev, snap
        if prev is None:
            return None
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
