"""The telemetry book: the agents' ``TelemetrySummary`` reports kept per node
in time buckets, summed over nodes and windows for ``TelemetryService``
(GetStats, ListTopTalkers: :mod:`controller.api.telemetry_service`) and for
cluster-wide detection (:mod:`controller.fleet.detector`).

**Buckets.** Each node's summaries go into buckets of ``bucket_seconds``
(aligned to the Unix epoch; a summary belongs to the bucket of its
``end_time``, or of its arrival when the agent's clock is more than
``max_skew_seconds`` off). A bucket sums the interval's counters: actions,
reasons, rules, and per address (the summary's top sources, every reported
destination) the ten counters of ``TrafficCounters``. Buckets older than
``fine_seconds`` are merged into coarse buckets of ``coarse_seconds``;
coarse buckets older than ``retention_seconds`` (at least the API's longest
window, 3600 s) are dropped.

**Memory bounds.** A summary carries at most the agent's top-N sources, so
a bucket holds what its summaries named; when a bucket's addresses pass
twice ``bucket_sources`` (``bucket_destinations``) it keeps the heaviest
``bucket_sources`` by packets, and merged coarse buckets keep as many; so
for the per-rule counters (``bucket_rules``, 1024: a node reporting 40k rule
ids must not grow the controller by them in every bucket), and a bucket
keeps at most :data:`MAX_REASONS` reason codes (the codes are the agent's
word). The whole store keeps at most ``max_entries`` address and rule entries (about 250 bytes
each): past that the oldest buckets of any node go first, so under a flood
of distinct sources on every node the window shrinks rather than memory
grows. Counts of the addresses kept are exact; an address that fell out of
a bucket's top is missing from that bucket only.

**Windows.** A request's window ends now and reaches back ``window``
seconds, rounded out to whole buckets (``start_time`` says where it
starts); rates are counts over that span. ``nodes_reporting`` counts the
nodes with a bucket in it.

**Threads.** :meth:`FleetTelemetry.offer` (the sync streams, on the event
loop) only queues the summary; the queue is folded into the buckets, under
one lock, by whoever reads next (an RPC on the pool, the fleet detector's
thread, the sync hub's housekeeping every ``bucket_seconds``), so a slow
query never holds up the streams.
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from breakwater.v1 import telemetry_pb2, telemetry_service_pb2

from ..detection.samples import DESTINATION_FIELDS
from ..errors import FieldError
from ..validate import check_int, check_keys, check_number
from .convert import NODE_WILDCARD, node_name

__all__ = [
    "BYTES",
    "DROPS",
    "MAX_REASONS",
    "MAX_WINDOW",
    "PACKETS",
    "TRAFFIC_FIELDS",
    "U64_MAX",
    "AddressRate",
    "FleetTelemetry",
    "Kind",
    "TelemetryConfig",
    "saturated",
]

MAX_REASONS: Final = 256
"""Reason codes kept per bucket (there are a few dozen; more is a node inventing them)."""
U64_MAX: Final = 2**64 - 1
"""The largest counter a uint64 field holds."""


def saturated(value: int) -> int:
    """A sum of counters as a uint64 field can hold it: the nodes send uint64
    counters, and the sum of several can pass 2**64 (protobuf refuses it)."""
    return min(value, U64_MAX)


TRAFFIC_FIELDS: Final = DESTINATION_FIELDS
"""The counters of ``TrafficCounters``, in field order (samples.py's destination counters)."""
_N: Final = len(TRAFFIC_FIELDS)
PACKETS: Final = TRAFFIC_FIELDS.index("packets")
"""Where the packet count stands in a list of :data:`TRAFFIC_FIELDS` counters ..."""
BYTES: Final = TRAFFIC_FIELDS.index("bytes")
"""... the byte count ..."""
DROPS: Final = TRAFFIC_FIELDS.index("drops")
"""... and the dropped packets."""
ACTION_FIELDS: Final = ("passed", "dropped", "monitored", "aborted")
MAX_WINDOW: Final = 3600.0
"""The longest window a request may ask for (seconds): what is kept at least."""
MAX_PENDING: Final = 65536
"""Summaries queued at most between folds; past that the oldest are dropped
(counted): the sync hub folds every bucket_seconds, so this only happens
when folding cannot keep up."""
ENTRY_BYTES: Final = 250
"""About what one kept address entry costs (documented bound, for max_entries)."""

Kind = Literal["source", "destination"]
"""Which addresses of a summary: its top sources or its destinations."""



@dataclass(frozen=True)
class TelemetryConfig:
    """How much telemetry the controller keeps (the ``[telemetry]`` table)."""

    bucket_seconds: float = 10.0
    """Width of the recent buckets (rounding of windows)."""
    fine_seconds: float = 300.0
    """How long buckets keep that width before they are merged into coarse ones."""
    coarse_seconds: float = 60.0
    """Width of the older buckets."""
    retention_seconds: float = MAX_WINDOW
    """How long telemetry is kept at all (at least the longest window)."""
    bucket_sources: int = 64
    """Sources kept per bucket (the heaviest by packets)."""
    bucket_destinations: int = 256
    """Destinations kept per bucket."""
    bucket_rules: int = 1024
    """Rule counters kept per bucket (the heaviest by matched packets)."""
    max_entries: int = 1_000_000
    """Address entries kept in all (about 250 bytes each); the oldest buckets go first."""
    max_skew_seconds: float = 30.0
    """A summary whose end_time is further than this from the controller's clock is filed at arrival."""

    def __post_init__(self) -> None:
        check_number(self.bucket_seconds, "bucket_seconds", 0.1, 3600)
        check_number(self.fine_seconds, "fine_seconds", 0, 86400)
        check_number(self.coarse_seconds, "coarse_seconds", 0.1, 86400)
        check_number(self.retention_seconds, "retention_seconds", MAX_WINDOW, 7 * 86400)
        check_int(self.bucket_sources, "bucket_sources", 1, 100_000)
        check_int(self.bucket_destinations, "bucket_destinations", 1, 100_000)
        check_int(self.bucket_rules, "bucket_rules", 1, 100_000)
        check_int(self.max_entries, "max_entries", 1000, 1_000_000_000)
        check_number(self.max_skew_seconds, "max_skew_seconds", 0, 86400)
        if self.coarse_seconds < self.bucket_seconds:
            raise FieldError("coarse_seconds", f"{self.coarse_seconds:g} is below bucket_seconds "
                                               f"{self.bucket_seconds:g}; coarse buckets are the wider ones")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TelemetryConfig:
        known = [f.name for f in fields(cls)]
        check_keys(data, known)
        return cls(**data)  # type: ignore[arg-type]  # checked in __post_init__


# --- buckets ---------------------------------------------------------------------------


class _Bucket:
    """One node's counters over ``[start, start + width)``."""

    __slots__ = ("actions", "destinations", "peak_active", "reasons", "rules", "seconds", "sources",
                 "start", "summaries", "width")

    def __init__(self, start: float, width: float) -> None:
        self.start = start
        self.width = width
        self.actions = [0] * (2 * len(ACTION_FIELDS))
        self.reasons: dict[int, list[int]] = {}
        self.rules: dict[str, list[int]] = {}
        self.sources: dict[str, list[int]] = {}
        self.destinations: dict[str, list[int]] = {}
        self.peak_active = 0
        self.seconds = 0.0
        self.summaries = 0

    @property
    def end(self) -> float:
        return self.start + self.width

    @property
    def entries(self) -> int:
        return len(self.sources) + len(self.destinations) + len(self.rules)

    def merge(self, other: _Bucket) -> None:
        for i, v in enumerate(other.actions):
            self.actions[i] += v
        for reason, rc in other.reasons.items():
            _add_into(self.reasons, reason, rc)
        for rule_id, rc in other.rules.items():
            _add_into(self.rules, rule_id, rc)
        for addr, c in other.sources.items():
            _add_into(self.sources, addr, c)
        for addr, c in other.destinations.items():
            _add_into(self.destinations, addr, c)
        self.peak_active = max(self.peak_active, other.peak_active)
        self.seconds += other.seconds
        self.summaries += other.summaries


def _add_into(table: dict[Any, list[int]], key: Any, values: list[int]) -> None:
    have = table.get(key)
    if have is None:
        table[key] = list(values)
    else:
        for i, v in enumerate(values):
            have[i] += v


def _trim(table: dict[str, list[int]], keep: int) -> int:
    """Keep the ``keep`` heaviest by packets (ties by address); returns how many went."""
    if len(table) <= keep:
        return 0
    kept = heapq.nsmallest(keep, table.items(), key=lambda kv: (-kv[1][PACKETS], kv[0]))
    gone = len(table) - keep
    table.clear()
    table.update(kept)
    return gone


def _counters(c: telemetry_pb2.TrafficCounters) -> list[int]:
    return [c.packets, c.bytes, c.drops, c.syn, c.ack, c.udp, c.icmp, c.gre, c.frags, c.refl]


class _Series:
    """One node's buckets, oldest first: fine ones after coarse ones."""

    __slots__ = ("coarse", "fine")

    def __init__(self) -> None:
        self.coarse: deque[_Bucket] = deque()
        self.fine: deque[_Bucket] = deque()

    def buckets(self) -> Iterator[_Bucket]:
        yield from self.coarse
        yield from self.fine

    def oldest(self) -> _Bucket | None:
        if self.coarse:
            return self.coarse[0]
        return self.fine[0] if self.fine else None


@dataclass(frozen=True, slots=True)
class AddressRate:
    """One address summed over the nodes of a window, per second of each
    node's reported time (what cluster-wide detection compares with its
    thresholds)."""

    address: str
    rates: tuple[float, ...]
    """Per-second rate of each of :data:`TRAFFIC_FIELDS`, summed over the nodes."""
    nodes: int
    """How many nodes counted it."""
    max_node_pps: float
    """The highest packet rate one node counted."""

    def rate(self, name: str) -> float:
        return self.rates[TRAFFIC_FIELDS.index(name)]

    @property
    def pps(self) -> float:
        return self.rates[PACKETS]

    @property
    def bps(self) -> float:
        return self.rates[BYTES] * 8


# --- the store ---------------------------------------------------------------------------


class FleetTelemetry:
    """Every node's recent telemetry (see the module docstring). Thread-safe."""

    def __init__(self, config: TelemetryConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config or TelemetryConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, telemetry_pb2.TelemetrySummary, float]] = deque()
        self._series: dict[str, _Series] = {}
        self._entries = 0
        self.received = 0
        self.dropped = 0
        """Summaries dropped from a full queue (MAX_PENDING)."""
        self.evicted = 0
        """Buckets dropped early to stay under max_entries."""

    # -- writes --

    def offer(self, node_id: str, summary: telemetry_pb2.TelemetrySummary, *,
              now: float | None = None) -> None:
        """Queue one node's summary (cheap: called on the streams' loop)."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((node_id, summary, self._clock() if now is None else now))
        self.received += 1

    def fold(self, now: float | None = None) -> None:
        """Fold queued summaries into the buckets, age and bound them."""
        with self._lock:
            self._fold(self._clock() if now is None else now)

    def _fold(self, now: float) -> None:
        while self._pending:
            node_id, summary, arrival = self._pending.popleft()
            self._add(node_id, summary, arrival)
        self._age(now)

    def _add(self, node_id: str, s: telemetry_pb2.TelemetrySummary, arrival: float) -> None:
        cfg = self.config
        at = s.end_time.seconds + s.end_time.nanos / 1e9 if s.HasField("end_time") else arrival
        if abs(at - arrival) > cfg.max_skew_seconds:
            at = arrival
        width = cfg.bucket_seconds
        start = math.floor(at / width) * width
        series = self._series.setdefault(node_id, _Series())
        fine = series.fine
        bucket = fine[-1] if fine and fine[-1].start == start else None
        if bucket is None:
            starts = [b.start for b in fine]
            i = bisect.bisect_left(starts, start)
            if i < len(fine) and fine[i].start == start:
                bucket = fine[i]
            else:
                bucket = _Bucket(start, width)
                fine.insert(i, bucket)
        before = bucket.entries
        a = s.actions
        for i, name in enumerate(ACTION_FIELDS):
            count = getattr(a, name)
            bucket.actions[2 * i] += count.packets
            bucket.actions[2 * i + 1] += count.bytes
        for rc in s.reasons:
            if len(bucket.reasons) < MAX_REASONS or int(rc.reason) in bucket.reasons:
                _add_into(bucket.reasons, int(rc.reason), [rc.count.packets, rc.count.bytes])
        for rule in s.rules:
            _add_into(bucket.rules, rule.rule_id,
                      [rule.matched.packets, rule.matched.bytes, rule.dropped, rule.rate_limited])
            if len(bucket.rules) > 2 * cfg.bucket_rules:
                _trim(bucket.rules, cfg.bucket_rules)
        for ac in s.top_sources:
            _add_into(bucket.sources, ac.address, _counters(ac.counters))
        for ac in s.destinations:
            _add_into(bucket.destinations, ac.address, _counters(ac.counters))
        if len(bucket.sources) > 2 * cfg.bucket_sources:
            _trim(bucket.sources, cfg.bucket_sources)
        if len(bucket.destinations) > 2 * cfg.bucket_destinations:
            _trim(bucket.destinations, cfg.bucket_destinations)
        bucket.peak_active = max(bucket.peak_active, s.active_sources)
        bucket.seconds += s.interval.seconds + s.interval.nanos / 1e9
        bucket.summaries += 1
        self._entries += bucket.entries - before

    def _age(self, now: float) -> None:
        cfg = self.config
        fine_edge = now - cfg.fine_seconds
        keep_edge = now - cfg.retention_seconds
        for node_id in list(self._series):
            series = self._series[node_id]
            while series.fine and series.fine[0].end <= fine_edge:
                self._coarsen(series, series.fine.popleft())
            while series.coarse and series.coarse[0].end <= keep_edge:
                self._entries -= series.coarse.popleft().entries
            if not series.fine and not series.coarse:
                del self._series[node_id]
        while self._entries > cfg.max_entries and self._series:
            node_id, series = min(self._series.items(),
                                  key=lambda kv: (kv[1].oldest() or _Bucket(math.inf, 0)).start)
            victim = series.coarse if series.coarse else series.fine
            self._entries -= victim.popleft().entries
            self.evicted += 1
            if not series.fine and not series.coarse:
                del self._series[node_id]

    def _coarsen(self, series: _Series, bucket: _Bucket) -> None:
        cfg = self.config
        width = cfg.coarse_seconds
        start = math.floor(bucket.start / width) * width
        target = series.coarse[-1] if series.coarse and series.coarse[-1].start == start else None
        self._entries -= bucket.entries
        if target is None:
            target = _Bucket(start, width)
            series.coarse.append(target)
        before = target.entries
        target.merge(bucket)
        _trim(target.sources, cfg.bucket_sources)
        _trim(target.destinations, cfg.bucket_destinations)
        _trim(target.rules, cfg.bucket_rules)
        self._entries += target.entries - before

    # -- reads --

    @property
    def entries(self) -> int:
        with self._lock:
            return self._entries

    def nodes(self) -> list[str]:
        """The nodes with telemetry kept."""
        self.fold()
        with self._lock:
            return sorted(self._series)

    def _window(self, node_id: str | None, window: float, now: float
                ) -> tuple[float, list[tuple[str, list[_Bucket]]]]:
        """The start of the window (rounded out to whole buckets) and each
        reporting node's buckets in it. Call with the lock held."""
        edge = now - window
        out: list[tuple[str, list[_Bucket]]] = []
        start = edge
        items: Iterable[tuple[str, _Series]]
        if node_id is None:
            items = self._series.items()
        else:
            one = self._series.get(node_id)
            items = [] if one is None else [(node_id, one)]
        for nid, series in items:
            inside = [b for b in series.buckets() if b.end > edge and b.start <= now]
            if inside:
                out.append((nid, inside))
                start = min(start, inside[0].start)
        return start, out

    def stats(self, node_id: str | None, window: float, *, now: float | None = None
              ) -> telemetry_service_pb2.Stats:
        """GetStats' answer for one node (None: every node)."""
        at = self._clock() if now is None else now
        with self._lock:
            self._fold(at)
            start, per_node = self._window(node_id, window, at)
            actions = [0] * (2 * len(ACTION_FIELDS))
            reasons: dict[int, list[int]] = {}
            rules: dict[str, list[int]] = {}
            peak = 0
            for _nid, buckets in per_node:
                for b in buckets:
                    for i, v in enumerate(b.actions):
                        actions[i] += v
                    for reason, rc in b.reasons.items():
                        _add_into(reasons, reason, rc)
                    for rule_id, rc in b.rules.items():
                        _add_into(rules, rule_id, rc)
                    peak = max(peak, b.peak_active)
        out = telemetry_service_pb2.Stats(node=NODE_WILDCARD if node_id is None else node_name(node_id),
                                          nodes_reporting=len(per_node), peak_active_sources=peak)
        out.start_time.FromNanoseconds(int(start * 1e9))
        out.end_time.FromNanoseconds(int(at * 1e9))
        for i, name in enumerate(ACTION_FIELDS):
            getattr(out.actions, name).CopyFrom(telemetry_pb2.Count(packets=saturated(actions[2 * i]),
                                                                    bytes=saturated(actions[2 * i + 1])))
        for reason in sorted(reasons):
            packets, nbytes = reasons[reason]
            if packets:
                out.reasons.append(telemetry_pb2.ReasonCount(
                    reason=reason,  # type: ignore[arg-type]  # a DropReason number the agent sent
                    count=telemetry_pb2.Count(packets=saturated(packets), bytes=saturated(nbytes))))
        for rule_id in sorted(rules):
            mp, mb, dropped, limited = rules[rule_id]
            out.rules.append(telemetry_pb2.RuleCount(rule_id=rule_id, matched=telemetry_pb2.Count(
                packets=saturated(mp), bytes=saturated(mb)), dropped=saturated(dropped),
                rate_limited=saturated(limited)))
        return out

    def totals(self, kind: Kind, node_id: str | None, window: float, *, now: float | None = None
               ) -> tuple[float, float, int, dict[str, tuple[list[int], dict[str, list[int]]]]]:
        """Every address of ``kind`` in the window: ``(start, end,
        nodes_reporting, {address: (counters, {node_id: counters})})``."""
        at = self._clock() if now is None else now
        with self._lock:
            self._fold(at)
            start, per_node = self._window(node_id, window, at)
            out: dict[str, tuple[list[int], dict[str, list[int]]]] = {}
            for nid, buckets in per_node:
                for b in buckets:
                    table = b.sources if kind == "source" else b.destinations
                    for addr, c in table.items():
                        entry = out.get(addr)
                        if entry is None:
                            out[addr] = entry = ([0] * _N, {})
                        total, by_node = entry
                        for i, v in enumerate(c):
                            total[i] += v
                        _add_into(by_node, nid, c)
        return start, at, len(per_node), out

    def rates(self, kind: Kind, window: float, *, now: float | None = None) -> dict[str, AddressRate]:
        """Every address of ``kind`` over the window, summed over the nodes,
        each node's counts divided by the seconds it reported in the window
        (its intervals' lengths): rates that add up across nodes whatever
        their intervals."""
        at = self._clock() if now is None else now
        with self._lock:
            self._fold(at)
            _start, per_node = self._window(None, window, at)
            sums: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            peaks: dict[str, float] = {}
            for _nid, buckets in per_node:
                seconds = sum(b.seconds for b in buckets) or window
                mine: dict[str, list[int]] = {}
                for b in buckets:
                    for addr, c in (b.sources if kind == "source" else b.destinations).items():
                        _add_into(mine, addr, c)
                for addr, c in mine.items():
                    acc = sums.get(addr)
                    if acc is None:
                        sums[addr] = acc = [0.0] * _N
                    for i, v in enumerate(c):
                        acc[i] += v / seconds
                    counts[addr] = counts.get(addr, 0) + 1
                    peaks[addr] = max(peaks.get(addr, 0.0), c[PACKETS] / seconds)
        return {addr: AddressRate(addr, tuple(acc), counts[addr], peaks[addr]) for addr, acc in sums.items()}
