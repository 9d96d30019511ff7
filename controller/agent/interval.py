"""One detection interval of one interface::

    harvest -> Detector.observe -> Planner.plan -> (changed?) apply the layers
            -> one SQLite transaction (auto rules, baselines, events)

Monitor mode plans and reports ("would apply") but never applies automatic
rules. Attack starts, ends and rule changes are logged, kept in the agent's
ring of recent events and stored; the automatic rules' changes are stored as
rule events.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from ..detection.events import AttackEvent
from ..detection.planner import PlanResult
from ..rules.model import Rule
from .config import AgentConfig
from .interface import Interface
from .layers import RuleLayers
from .state import Store

__all__ = ["BASELINE_SECONDS", "auto_rule_events", "run_interval"]

LOGGER = logging.getLogger("breakwater.agent")

# Baselines are persisted at most this often (they move slowly).
BASELINE_SECONDS: Final = 10.0


def auto_rule_events(before: Sequence[Rule], plan: PlanResult,
                     now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """The rule events of a plan that changed the automatic rules: created,
    updated (escalated or otherwise changed), expired or deleted."""
    old = {r.id: r for r in before}
    new = {r.id: r for r in plan.rules}
    attack_of = {rid: aid for aid, rids in plan.by_attack.items() for rid in rids}
    out: list[tuple[str, str, dict[str, Any]]] = []

    def add(rid: str, kind: str, rule: Rule) -> None:
        doc: dict[str, Any] = {"rule": rule.to_dict(), "actor": "detector"}
        if rid in attack_of:
            doc["attack_id"] = attack_of[rid]
        out.append((rid, kind, doc))

    for rid in plan.added:
        if rid in new:
            add(rid, "created", new[rid])
    for rid in dict.fromkeys((*plan.escalated, *plan.changed)):
        if rid in new and rid not in plan.added:
            add(rid, "updated", new[rid])
    for rid in plan.removed:
        gone = old.get(rid)
        if gone is not None:
            expired = gone.expires_at is not None and gone.expires_at <= now
            add(rid, "expired" if expired else "deleted", gone)
    return out


def run_interval(iface: Interface, *, config: AgentConfig, store: Store, layers: RuleLayers,
                 recent: collections.deque[dict[str, Any]]) -> None:
    """One interval of ``iface``; its events worth a record go to ``recent`` too."""
    t0 = time.monotonic()
    sample = iface.harvester.sample(iface.maps, iface.slot_ids)
    iface.last_sample = sample
    t1 = time.monotonic()
    iface.last_harvest = t1 - t0
    iface.harvest_hist.observe(iface.last_harvest)
    now = datetime.now(UTC)
    events: list[AttackEvent] = [] if sample is None else iface.detector.observe(sample)
    plan = iface.planner.plan(now, events, iface.auto, known=iface.detector.known_sources)
    t2 = time.monotonic()
    events = [replace(e, applied=plan.by_attack.get(e.id, ())) for e in events]
    changed = tuple(plan.rules) != tuple(sorted(iface.auto, key=lambda r: r.id))
    rule_events = auto_rule_events(iface.auto, plan, now) if changed and plan.enforce else []
    if changed:
        iface.auto = tuple(plan.rules)
        if plan.enforce:
            layers.apply(iface, now, reason="plan")
        # how long the sample took to become rules in force: harvest, detect and plan, apply
        took = {"harvest_s": round(t1 - t0, 4), "detect_s": round(t2 - t1, 4),
                "apply_s": round(time.monotonic() - t2, 4)}
        for rid in plan.added:
            LOGGER.info("%s: %s rule %s", iface.name, "applied" if plan.enforce else "would apply", rid,
                        extra={"event": "rule_added" if plan.enforce else "rule_would_add",
                               "interface": iface.name, "rule": rid, **took})
        for rid in plan.removed:
            LOGGER.info("%s: removed rule %s", iface.name, rid,
                        extra={"event": "rule_removed", "interface": iface.name, "rule": rid})
    for r in plan.refused:
        LOGGER.warning("%s: refused %s", iface.name, r,
                       extra={"event": "refused", "interface": iface.name, "subject": r.subject})
    record = _to_record(iface, events, monitor=config.monitor, recent=recent)
    mono = time.monotonic()
    baselines = None
    if mono - iface.baselines_at >= BASELINE_SECONDS:
        baselines = iface.detector.baselines()
        iface.baselines_at = mono
    ids = iface.detector.id_counter
    if changed or record or baselines is not None or ids != iface.ids_saved:
        # a new attack id is stored with the events that carry it
        store.commit_interval(iface.name, auto_rules=iface.auto if (changed and plan.enforce)
                              else None, baselines=baselines, events=record,
                              rule_events=rule_events,
                              attack_ids=ids if ids != iface.ids_saved else None)
        iface.ids_saved = ids
    iface.last_loop = time.monotonic() - t0
    iface.loop_hist.observe(iface.last_loop)
    if iface.last_loop > config.interval:
        LOGGER.warning("%s: interval took %.3f s, longer than %.3f s", iface.name, iface.last_loop,
                       config.interval, extra={"event": "overrun", "interface": iface.name})


def _to_record(iface: Interface, events: list[AttackEvent], *, monitor: bool,
               recent: collections.deque[dict[str, Any]]) -> list[AttackEvent]:
    """Events worth a row and a log line: starts, ends, and rule changes."""
    out = []
    for e in events:
        if e.kind == "updated" and iface.stored_rules.get(e.id) == e.applied:
            continue
        iface.stored_rules[e.id] = e.applied
        if e.kind == "ended":
            iface.stored_rules.pop(e.id, None)
        out.append(e)
        doc = dict(e.to_dict(), interface=iface.name, monitor=monitor)
        recent.append(doc)
        LOGGER.info("%s: attack %s %s (%s, %s, %.0f pps, rules %s)", iface.name, e.id, e.kind, e.vector,
                    e.victim or "-", e.pps, ",".join(e.applied) or "-",
                    extra={"event": f"attack_{e.kind}", "interface": iface.name, "attack": doc})
    return out
