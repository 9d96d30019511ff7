"""One interface's interval as a ``breakwater.v1.TelemetrySummary``.

Every interval the harvest (:mod:`controller.detection.harvest`) derives
from one read of the data plane's counters a
:class:`~controller.detection.samples.Sample` (the per-source and
per-destination deltas the detector reads) and the interval's action,
reason and rule counters (:class:`~controller.detection.harvest.IntervalCounters`);
:func:`summarize` builds from both the summary the agent streams to its
controller (:mod:`controller.agent.sync`) and keeps for its local
TelemetryService (:mod:`controller.agent.report`):

* ``top_sources``: the heaviest sources by packets, as many as the
  controller asked for (``Registered.top_sources``);
* ``destinations``: every protected destination that received packets,
  heaviest first, at most :data:`MAX_DESTINATIONS` (a bound on the message
  size: 4096 rows are about 200 KB);
* ``actions``, ``reasons``, ``rules``: the interval's increases, reasons
  and rules without packets left out.

Everything here is pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt
from google.protobuf import duration_pb2, timestamp_pb2

from breakwater.v1 import reasons_pb2, telemetry_pb2

from ..dataplane.counters import Totals
from ..dataplane.reasons import Action
from ..detection.harvest import IntervalCounters
from ..detection.samples import DESTINATION_FIELDS, SOURCE_FIELDS, Sample, address_from_words

__all__ = [
    "DEFAULT_TOP_SOURCES",
    "MAX_DESTINATIONS",
    "MAX_TOP_SOURCES",
    "summarize",
]

DEFAULT_TOP_SOURCES: Final = 20
"""Top sources per summary until a controller asks for another number."""
MAX_TOP_SOURCES: Final = 1000
"""The most top sources a summary carries, whatever the controller asks."""
MAX_DESTINATIONS: Final = 4096
"""The most destinations a summary carries (heaviest first)."""

_ACTION_FIELDS: Final = {Action.PASS: "passed", Action.DROP: "dropped", Action.MONITOR: "monitored",
                         Action.ABORTED: "aborted"}
# TrafficCounters names the per-address "drops" counter drops too; every
# samples.py field has a TrafficCounters field of the same name.
_SOURCE_COUNTERS: Final = SOURCE_FIELDS
_DESTINATION_COUNTERS: Final = DESTINATION_FIELDS


def _count(t: Totals) -> telemetry_pb2.Count:
    return telemetry_pb2.Count(packets=t.packets, bytes=t.bytes)


def _address_rows(rows: npt.NDArray[np.void], fields: tuple[str, ...],
                  limit: int) -> list[telemetry_pb2.AddressCounters]:
    if limit <= 0 or not len(rows):
        return []
    packets = rows["packets"].astype(np.uint64)
    if len(rows) > limit:
        pick = np.argpartition(-packets.astype(np.float64), limit - 1)[:limit]
    else:
        pick = np.arange(len(rows))
    # heaviest first; ties by address, so the order is stable
    order = sorted(pick.tolist(), key=lambda i: (-int(packets[i]), int(rows["addr_hi"][i]),
                                                 int(rows["addr_lo"][i])))
    out = []
    for i in order:
        row = rows[i]
        tc = telemetry_pb2.TrafficCounters(**{f: int(row[f]) for f in fields})
        out.append(telemetry_pb2.AddressCounters(
            address=str(address_from_words(row["addr_hi"], row["addr_lo"])), counters=tc))
    return out


def summarize(
    sample: Sample,
    interval: IntervalCounters,
    *,
    interface: str,
    end_time: datetime | None = None,
    top_sources: int = DEFAULT_TOP_SOURCES,
    max_destinations: int = MAX_DESTINATIONS,
) -> telemetry_pb2.TelemetrySummary:
    """One interval of ``interface`` as a summary; ``end_time`` (default:
    now) is the wall-clock end of the interval, which lasted ``sample.dt``."""
    end = (end_time or datetime.now(UTC)).astimezone(UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(end)
    dur = duration_pb2.Duration()
    dur.FromNanoseconds(round(sample.dt * 1e9))
    out = telemetry_pb2.TelemetrySummary(end_time=ts, interval=dur, interface=interface,
                                         active_sources=len(sample.sources))
    for action, name in _ACTION_FIELDS.items():
        t = interval.actions.get(action)
        if t is not None:
            getattr(out.actions, name).CopyFrom(_count(t))
    out.actions.SetInParent()
    # Reason and DropReason share their numbers (tests/unit/test_reasons.py)
    out.reasons.extend(telemetry_pb2.ReasonCount(reason=reasons_pb2.DropReason.ValueType(int(r)),
                                                 count=_count(t))
                       for r, t in sorted(interval.reasons.items()) if t.packets)
    out.top_sources.extend(_address_rows(sample.sources, _SOURCE_COUNTERS,
                                         min(max(top_sources, 0), MAX_TOP_SOURCES)))
    out.destinations.extend(_address_rows(sample.destinations, _DESTINATION_COUNTERS, max_destinations))
    out.rules.extend(telemetry_pb2.RuleCount(rule_id=rid, matched=telemetry_pb2.Count(packets=t.packets,
                                                                                      bytes=t.bytes),
                                             dropped=t.dropped, rate_limited=t.rate_limited)
                     for rid, t in sorted(interval.rules.items()))
    return out
