"""Read the data plane's counters: per source, per reason, per action, per rule.

Sources come back as numpy arrays straight from one batch read, so a million
active sources cost one syscall loop and no per-entry Python objects.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from . import abi
from .pinned import MapSet, ReadBuffers
from .reasons import Action, Reason

__all__ = [
    "RuleTotals",
    "Sources",
    "TopRow",
    "Totals",
    "action_totals",
    "read_sources",
    "reason_totals",
    "rule_totals",
    "top_sources",
]


@dataclass(frozen=True)
class Totals:
    packets: int
    bytes: int


@dataclass
class Sources:
    """Per-source counters of one read: packed keys plus a structured array."""

    taken_at: float  # time.monotonic()
    v4_keys: np.ndarray  # dtype S4, network order
    v4: np.ndarray  # SRC_COUNTERS_DTYPE
    v6_keys: np.ndarray  # dtype S16
    v6: np.ndarray
    # Entries in each exact deny map read ("v4", "v6"; a family not read is absent).
    deny_entries: dict[str, int] = field(default_factory=dict)
    # Per family: the rows read from the source map (the first ones; deny
    # entries' rows follow), and which of them also carry a deny entry's hits.
    map_rows: dict[str, int] = field(default_factory=dict)
    denied_rows: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def lookup(self, address: str) -> dict[str, int] | None:
        """Counters of one source, or None if it has none."""
        ip = ipaddress.ip_address(address)
        keys, rows = (self.v4_keys, self.v4) if ip.version == 4 else (self.v6_keys, self.v6)
        hit = np.nonzero(keys == np.bytes_(ip.packed))[0]
        if not len(hit):
            return None
        row = rows[hit[0]]
        return {name: int(row[name]) for name in abi.SRC_COUNTER_FIELDS}


def _denied(maps: MapSet, fam: str, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact deny entries with hits as per-source rows (every packet counted
    there was a drop), and how many entries the map holds."""
    keys, values, n = maps[f"deny_{fam}"].read_arrays()
    entries = np.frombuffer(values, dtype=abi.DENY_DTYPE, count=n)
    rows = np.zeros(n, dtype=abi.SRC_COUNTERS_DTYPE)
    rows["packets"] = entries["packets"]
    rows["bytes"] = entries["bytes"]
    rows["drops"] = entries["packets"]
    hit = entries["packets"] > 0
    return np.frombuffer(keys, dtype=f"S{width}", count=n)[hit], rows[hit], n


def _merge(keys: np.ndarray, rows: np.ndarray, more_keys: np.ndarray,
           more: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the deny entries' rows to the source rows: a key in both (a
    source seen before and after it was denied) gets the sum in its source
    row, the others are appended. The source rows keep their map order and
    only the (few) deny keys are sorted, so reading a million sources with
    a handful of denied ones costs no sort of the million. Also returns the
    source rows that got a deny entry's hits."""
    if not len(more_keys):
        return keys, rows, np.zeros(0, dtype=np.intp)
    order = np.argsort(more_keys)
    sorted_more = more_keys[order]
    pos = np.minimum(np.searchsorted(sorted_more, keys), len(sorted_more) - 1)
    in_both = np.flatnonzero(sorted_more[pos] == keys)
    extra = np.ones(len(more_keys), dtype=bool)
    if len(in_both):
        rows = rows.copy()
        hit = order[pos[in_both]]
        for name in abi.SRC_COUNTER_FIELDS:
            rows[name][in_both] += more[name][hit]
        extra[hit] = False
    return np.concatenate([keys, more_keys[extra]]), np.concatenate([rows, more[extra]]), in_both


def read_sources(maps: MapSet, include_denied: bool = True, skip_denied: Container[str] = (),
                 into: ReadBuffers | None = None) -> Sources:
    """One batch read of src_v4 and src_v6.

    Sources denied by an exact entry are counted on that entry, not in the
    LRU maps; with ``include_denied`` (the default) those entries are read
    too and merged in, so a denied source still shows its packets and drops.
    ``skip_denied`` names families ("v4", "v6") whose deny map the caller
    knows to be empty: a batch read walks every bucket of a map, so reading
    an empty 1M-entry map still costs milliseconds. ``into``: reuse those
    buffers for the source maps (:class:`~controller.dataplane.pinned.ReadBuffers`).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    deny_entries: dict[str, int] = {}
    map_rows: dict[str, int] = {}
    denied_rows: dict[str, np.ndarray] = {}
    for fam, width in (("v4", 4), ("v6", 16)):
        keys, values, n = maps[f"src_{fam}"].read_arrays(into)
        k = np.frombuffer(keys, dtype=f"S{width}", count=n)
        v = np.frombuffer(values, dtype=abi.SRC_COUNTERS_DTYPE, count=n)
        map_rows[fam] = n
        if include_denied and fam not in skip_denied:
            dk, dv, deny_entries[fam] = _denied(maps, fam, width)
            k, v, denied_rows[fam] = _merge(k, v, dk, dv)
        out[fam] = (k, v)
    return Sources(time.monotonic(), out["v4"][0], out["v4"][1], out["v6"][0], out["v6"][1], deny_entries,
                   map_rows, denied_rows)


@dataclass(frozen=True)
class TopRow:
    """One source's rates between two reads, and its totals."""

    address: str
    pps: float
    bps: float
    drops_ps: float
    packets: int
    bytes: int
    drops: int
    syn: int
    udp: int
    icmp: int


def _rates(prev_keys: np.ndarray, prev: np.ndarray, keys: np.ndarray, cur: np.ndarray,
           field: str) -> np.ndarray:
    """Per-key increase of ``field`` since the previous read (new keys: all of it)."""
    delta = cur[field].astype(np.int64)
    if len(prev_keys):
        order = np.argsort(prev_keys)
        sorted_keys = prev_keys[order]
        pos = np.searchsorted(sorted_keys, keys)
        pos_clipped = np.minimum(pos, len(sorted_keys) - 1)
        found = sorted_keys[pos_clipped] == keys
        before = np.where(found, prev[field][order][pos_clipped].astype(np.int64), 0)
        delta = delta - before
    return np.maximum(delta, 0)


def top_sources(prev: Sources, cur: Sources, n: int = 20, by: str = "packets") -> list[TopRow]:
    """The ``n`` sources with the highest rate of ``by`` (packets, bytes or drops)."""
    if by not in ("packets", "bytes", "drops"):
        raise ValueError(f"by: {by!r}; expected packets, bytes or drops")
    dt = max(cur.taken_at - prev.taken_at, 1e-6)
    rows: list[TopRow] = []
    for keys, arr, pkeys, parr in ((cur.v4_keys, cur.v4, prev.v4_keys, prev.v4),
                                    (cur.v6_keys, cur.v6, prev.v6_keys, prev.v6)):
        if not len(keys):
            continue
        d = {f: _rates(pkeys, parr, keys, arr, f) for f in ("packets", "bytes", "drops")}
        idx = np.argsort(-d[by], kind="stable")[:n]
        for i in idx:
            if d["packets"][i] == 0 and by != "drops":
                continue
            row = arr[i]
            rows.append(TopRow(
                str(ipaddress.ip_address(bytes(keys[i]).ljust(keys.dtype.itemsize, b"\0"))),
                float(d["packets"][i]) / dt, float(d["bytes"][i]) * 8 / dt,
                float(d["drops"][i]) / dt,
                int(row["packets"]), int(row["bytes"]), int(row["drops"]), int(row["syn"]),
                int(row["udp"]), int(row["icmp"]),
            ))
    key = {"packets": "pps", "bytes": "bps", "drops": "drops_ps"}[by]
    rows.sort(key=lambda r: -float(getattr(r, key)))
    return rows[:n]


def _percpu_totals(maps: MapSet, name: str) -> np.ndarray:
    return maps[name].percpu_sum(abi.COUNTER_DTYPE)


def reason_totals(maps: MapSet) -> dict[Reason, Totals]:
    """Packets and bytes per reason, summed over CPUs (known reasons only)."""
    arr = _percpu_totals(maps, "reason_stats")
    return {r: Totals(int(arr[r.value]["packets"]), int(arr[r.value]["bytes"]))
            for r in Reason if r.value < len(arr)}


def action_totals(maps: MapSet) -> dict[Action, Totals]:
    arr = _percpu_totals(maps, "verdict_stats")
    return {a: Totals(int(arr[a.value]["packets"]), int(arr[a.value]["bytes"])) for a in Action}


@dataclass(frozen=True)
class RuleTotals:
    """One rule slot's counters, summed over CPUs."""

    packets: int  # matched
    bytes: int
    dropped: int  # dropped, or would-drop in monitor mode
    rate_limited: int  # dropped for exceeding the rule's rate


def rule_totals(maps: MapSet) -> dict[int, RuleTotals]:
    """Counters of every rule slot with at least one match."""
    arr = maps["rule_stats"].percpu_sum(abi.RULE_COUNTER_DTYPE)
    hit = np.nonzero(arr["packets"])[0]
    return {int(i): RuleTotals(int(arr[i]["packets"]), int(arr[i]["bytes"]), int(arr[i]["dropped"]),
                               int(arr[i]["rate_limited"])) for i in hit}
