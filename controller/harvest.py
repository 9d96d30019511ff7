"""From cumulative data-plane counters to per-interval samples.

Every interval the agent reads the per-source maps (merged with the exact
deny entries, whose hits are their sources' drops) and the per-destination
maps in one batch read each, subtracts the previous read key by key and
hands the deltas to the detector as a :class:`controller.samples.Sample`.
An entry the LRU evicted and re-created counts from zero: its delta is what
it has now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import abi
from .bpfmap import MapSet
from .counters import read_sources
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


@dataclass
class Snapshot:
    """Cumulative counters at one moment, keyed by 128-bit (hi, lo) words."""

    t: float
    src_hi: np.ndarray
    src_lo: np.ndarray
    src: np.ndarray  # SRC_COUNTERS_DTYPE
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    dst: np.ndarray  # DST_COUNTERS_DTYPE


def _key16(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """128-bit keys as big-endian 16-byte strings: byte order is numeric order."""
    words = np.empty((len(hi), 2), dtype=">u8")
    words[:, 0], words[:, 1] = hi, lo
    return words.view("S16").ravel()


def _sorted(hi: np.ndarray, lo: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(_key16(hi, lo), kind="stable")
    return hi[order], lo[order], rows[order]


def read_snapshot(maps: MapSet) -> Snapshot:
    src = read_sources(maps)
    parts = []
    for keys, rows in ((src.v4_keys, src.v4), (src.v6_keys, src.v6)):
        hi, lo = words_from_packed(keys)  # fixed-width S4/S16: tobytes() keeps every byte
        parts.append((hi, lo, np.asarray(rows)))
    shi = np.concatenate([p[0] for p in parts])
    slo = np.concatenate([p[1] for p in parts])
    srows = np.concatenate([p[2] for p in parts])
    dparts = []
    for name, width in (("dst_v4", 4), ("dst_v6", 16)):
        packed, values, n = maps[name].read_all()
        hi, lo = words_from_packed(np.frombuffer(packed, dtype=f"V{width}", count=n))
        dparts.append((hi, lo, np.frombuffer(values, dtype=abi.DST_COUNTERS_DTYPE, count=n)))
    dhi = np.concatenate([p[0] for p in dparts])
    dlo = np.concatenate([p[1] for p in dparts])
    drows = np.concatenate([p[2] for p in dparts])
    return Snapshot(time.monotonic(), *_sorted(shi, slo, srows), *_sorted(dhi, dlo, drows))


def _deltas(prev_hi: np.ndarray, prev_lo: np.ndarray, prev: np.ndarray, hi: np.ndarray,
            lo: np.ndarray, cur: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per-key increase of each field since ``prev`` (keys sorted by (hi, lo))."""
    out = {f: cur[f].astype(np.int64) for f in fields}
    if len(prev_hi) and len(hi):
        pkey = _key16(prev_hi, prev_lo)
        pos = np.searchsorted(pkey, _key16(hi, lo))
        clipped = np.minimum(pos, len(pkey) - 1)
        found = (prev_hi[clipped] == hi) & (prev_lo[clipped] == lo)
        for f in fields:
            before = np.where(found, prev[f][clipped].astype(np.int64), 0)
            delta = out[f] - before
            out[f] = np.where(delta < 0, out[f], delta)   # re-created by the LRU: count from zero
    return out


class Harvester:
    """Turns successive snapshots into samples."""

    def __init__(self) -> None:
        self._prev: Snapshot | None = None

    def sample(self, maps: MapSet) -> Sample | None:
        """The deltas since the previous call (None on the first call)."""
        snap = read_snapshot(maps)
        prev, self._prev = self._prev, snap
        if prev is None:
            return None
        dt = max(snap.t - prev.t, 1e-3)
        sd = _deltas(prev.src_hi, prev.src_lo, prev.src, snap.src_hi, snap.src_lo, snap.src,
                     SOURCE_FIELDS)
        moved = sd["packets"] > 0
        sources = np.zeros(int(moved.sum()), dtype=SOURCE_DTYPE)
        sources["addr_hi"], sources["addr_lo"] = snap.src_hi[moved], snap.src_lo[moved]
        for f in SOURCE_FIELDS:
            sources[f] = sd[f][moved]
        sources["dst_hi"], sources["dst_lo"] = _last_dst(
            snap.src["last_dst"][moved], snap.src_hi[moved], snap.src_lo[moved])
        dd = _deltas(prev.dst_hi, prev.dst_lo, prev.dst, snap.dst_hi, snap.dst_lo, snap.dst,
                     DESTINATION_FIELDS)
        dmoved = dd["packets"] > 0
        dests = np.zeros(int(dmoved.sum()), dtype=DESTINATION_DTYPE)
        dests["addr_hi"], dests["addr_lo"] = snap.dst_hi[dmoved], snap.dst_lo[dmoved]
        for f in DESTINATION_FIELDS:
            dests[f] = dd[f][dmoved]
        return Sample(snap.t, dt, sources, dests)


def _last_dst(last: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) of each source's latest destination: an IPv4 source's is an
    IPv4 address in the first 4 bytes of ``last_dst``."""
    raw = np.frombuffer(last.tobytes(), dtype=np.uint8).reshape(-1, 16)
    v6_hi, v6_lo = words_from_packed(np.frombuffer(raw.tobytes(), dtype="V16"))
    v4_hi, v4_lo = v4_words(np.ascontiguousarray(raw[:, :4]).view(">u4").ravel())
    src_v4 = is_v4(hi, lo)
    return np.where(src_v4, v4_hi, v6_hi), np.where(src_v4, v4_lo, v6_lo)
