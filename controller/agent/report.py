"""Each interval's telemetry: one ``TelemetrySummary`` per interface
(:func:`controller.agent.telemetry.summarize` of the sample and the
counters the interval's harvest derived from its one read), streamed to the
controller (as many top sources as it asked for) and kept for the local
TelemetryService (:data:`LOCAL_TOP_SOURCES`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from ..api.telemetry import FleetTelemetry
from .interface import Interface
from .sync import SyncClient
from .telemetry import DEFAULT_TOP_SOURCES, summarize

__all__ = ["LOCAL_TOP_SOURCES", "report"]

# Top sources per summary kept for the local API (the controller asks for its own number).
LOCAL_TOP_SOURCES: Final = 100


def report(interfaces: Sequence[Interface], *, node_id: str, sync: SyncClient | None,
           telemetry: FleetTelemetry | None) -> None:
    """This interval of each interface as a TelemetrySummary, for the
    controller (``sync``) and the local API (``telemetry``)."""
    if sync is None and telemetry is None:
        return
    now = datetime.now(UTC)
    wanted = sync.top_sources if sync is not None else DEFAULT_TOP_SOURCES
    for iface in interfaces:
        sample, iface.last_sample = iface.last_sample, None
        interval = iface.harvester.counters  # of the read that made the sample
        if sample is None or interval is None:
            continue
        summary = summarize(sample, interval, interface=iface.name, end_time=now,
                            top_sources=max(wanted, LOCAL_TOP_SOURCES))
        if telemetry is not None:
            telemetry.offer(node_id, summary)
        if sync is not None:
            if len(summary.top_sources) > wanted:
                del summary.top_sources[wanted:]
            sync.offer_telemetry(summary)
    if telemetry is not None:
        telemetry.fold()
    if sync is not None:
        sync.notify_events()
