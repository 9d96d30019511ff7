"""The agent's metrics page: per interface, the data plane's counters by
action, reason and rule, the detection loop's durations, the rule swaps and
the main maps' fill; the map write failures; the controller link's state.

Rendered on each scrape, on the metrics server's thread. The data plane's
counters are those of the last interval's read (the harvest reads them once
per interval, :attr:`controller.detection.harvest.Harvester.totals`), so a
scrape reads no counter map; only the map fill is counted on scrape, at
most every :data:`FILL_SECONDS`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Final

from ..dataplane.pinned import FAILURES
from ..detection.harvest import CounterTotals
from ..errors import BreakwaterError
from ..metrics import Exposition
from .config import AgentConfig
from .interface import Interface
from .sync import ControllerLayer, SyncClient

__all__ = ["FILL_MAPS", "FILL_SECONDS", "render"]

# Map fill is counted at most this often (a full read of each main map).
FILL_SECONDS: Final = 10.0
FILL_MAPS: Final = ("deny_v4", "deny_v6", "deny_pfx_v4", "deny_pfx_v6", "allow_v4", "allow_v6",
                    "src_v4", "src_v6", "rl_src", "dst_v4", "dst_v6")


def _refresh_fill(iface: Interface, mono: float) -> None:
    iface.fill_at = mono
    for name in FILL_MAPS:
        with contextlib.suppress(KeyError, BreakwaterError):
            m = iface.maps[name]
            iface.fill[name] = (m.count(), m.max_entries)


def render(interfaces: Sequence[Interface], *, config: AgentConfig, sync: SyncClient | None,
           controller: ControllerLayer) -> str:
    """The metrics text. Map fill (a full read of each main map) is
    re-counted at most every FILL_SECONDS."""
    ex = Exposition()
    ex.family("breakwater_packets_total", "counter", "Packets by data-plane action.")
    mono = time.monotonic()
    for iface in interfaces:
        if not iface.fill or mono - iface.fill_at >= FILL_SECONDS:
            _refresh_fill(iface, mono)
        lab = {"interface": iface.name}
        totals = iface.harvester.totals or CounterTotals()  # none before the first interval
        for action, t in totals.actions.items():
            ex.add("breakwater_packets_total", "counter", "Packets by data-plane action.", t.packets,
                   {**lab, "action": action.label})
            ex.add("breakwater_bytes_total", "counter", "Bytes by data-plane action.", t.bytes,
                   {**lab, "action": action.label})
        for reason, t in totals.reasons.items():
            ex.add("breakwater_reason_packets_total", "counter", "Packets by verdict reason.", t.packets,
                   {**lab, "reason": reason.label})
            ex.add("breakwater_reason_bytes_total", "counter", "Bytes by verdict reason.", t.bytes,
                   {**lab, "reason": reason.label})
        ex.family("breakwater_rule_packets_total", "counter", "Packets matched per rule.")
        for slot, rt in sorted(totals.rules.items()):
            rl = {**lab, "rule": totals.slot_ids.get(slot, f"slot-{slot}")}
            ex.add("breakwater_rule_packets_total", "counter", "Packets matched per rule.",
                   rt.packets, rl)
            ex.add("breakwater_rule_bytes_total", "counter", "Bytes matched per rule.", rt.bytes, rl)
            ex.add("breakwater_rule_dropped_total", "counter",
                   "Packets dropped (or would-drop in monitor mode) per rule.", rt.dropped, rl)
            ex.add("breakwater_rule_rate_limited_total", "counter",
                   "Packets dropped for exceeding the rule's rate.", rt.rate_limited, rl)
        ex.add("breakwater_active_mitigations", "gauge",
               "Automatic rules in force (planned, in monitor mode).", len(iface.auto),
               {**lab, "mode": config.mode})
        ex.add("breakwater_attacks_active", "gauge", "Attacks the detector holds active.",
               len(iface.detector.active), lab)
        ex.add("breakwater_detection_loop_seconds", "gauge", "Duration of the last detection interval.",
               iface.last_loop, lab)
        ex.histogram("breakwater_detection_loop_duration_seconds",
                     "Duration of detection intervals (harvest, detect, plan, apply, store).",
                     iface.loop_hist, lab)
        ex.add("breakwater_harvest_seconds", "gauge", "Duration of the last counter harvest.",
               iface.last_harvest, lab)
        ex.histogram("breakwater_harvest_duration_seconds", "Duration of counter harvests.",
                     iface.harvest_hist, lab)
        ex.add("breakwater_sources_pruned_total", "counter",
               "Idle sources deleted from the source maps by the harvest.", iface.harvester.pruned, lab)
        ex.add("breakwater_rule_applies_total", "counter", "Rule sets swapped in by the agent.",
               iface.applies, lab)
        ex.add("breakwater_rule_apply_errors_total", "counter", "Rule-set swaps that failed.",
               iface.apply_errors, lab)
        for name, (entries, cap) in sorted(iface.fill.items()):
            ml = {**lab, "map": name}
            ex.add("breakwater_map_entries", "gauge", "Entries in a main map.", entries, ml)
            ex.add("breakwater_map_max_entries", "gauge", "Capacity of a main map.", cap, ml)
            ex.add("breakwater_map_fill_ratio", "gauge", "Entries / capacity of a main map.",
                   entries / max(cap, 1), ml)
    ex.family("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.")
    for (name, op), n in sorted(FAILURES.items()):
        ex.add("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.",
               n, {"map": name, "op": op})
    ex.add("breakwater_agent_monitor_mode", "gauge", "1 when the agent only plans (monitor mode).",
           int(config.monitor))
    _render_sync(ex, sync, controller)
    return ex.text()


def _render_sync(ex: Exposition, sync: SyncClient | None, controller: ControllerLayer) -> None:
    if sync is None:
        return
    st = sync.stats()
    lab = {"controller": sync.target}
    ex.add("breakwater_controller_connected", "gauge",
           "1 while the agent has a registered sync stream to its controller.", int(st.connected), lab)
    ex.add("breakwater_controller_rule_version", "gauge",
           "The controller rule set version in force on this node.", controller.version, lab)
    ex.add("breakwater_controller_rules", "gauge", "Rules in the controller layer in force.",
           len(controller.rules), lab)
    ex.add("breakwater_sync_updates_total", "counter", "Rule updates from the controller, by result.",
           st.applied, {**lab, "result": "applied", "code": ""})
    for code, n in sorted(st.nacked.items()):
        ex.add("breakwater_sync_updates_total", "counter", "Rule updates from the controller, by result.",
               n, {**lab, "result": "nacked", "code": code})
    ex.add("breakwater_sync_reconnects_total", "counter", "Sync streams opened after the first.",
           st.reconnects, lab)
    ex.add("breakwater_sync_failovers_total", "counter",
           "Times the agent moved on to the next of its controllers.", st.failovers, lab)
    ex.add("breakwater_sync_telemetry_total", "counter", "Telemetry summaries, by fate.",
           st.telemetry_sent, {**lab, "result": "queued"})
    ex.add("breakwater_sync_telemetry_total", "counter", "Telemetry summaries, by fate.",
           st.telemetry_dropped, {**lab, "result": "dropped"})
    ex.add("breakwater_sync_events_sent_total", "counter", "Local events delivered to the controller.",
           st.events_sent, lab)
