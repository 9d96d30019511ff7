"""Cluster-wide detection: attacks no single node sees whole.

An edge node sees its share of a distributed attack; the controller sums
the nodes' telemetry (:class:`~controller.api.telemetry.FleetTelemetry`) and
their attack events. Every ``interval`` seconds :meth:`FleetDetector.tick`
looks at the last ``window`` seconds and runs three detections:

==================  ==========================================================
detection           what starts it (defaults)
==================  ==========================================================
heavy sources       a source whose packets, summed over the nodes that
                    counted it in their top sources, reach ``source_pps``
                    (20,000/s) or its bits ``source_bps`` (200 Mbit/s), on
                    at least ``min_nodes`` nodes (2): moderate on each node,
                    over the line across the fleet. One fleet attack holds
                    every such source: they are dropped.
signatures          a destination vector summed over the nodes reaching its
                    ``signatures`` threshold: by default ``reflection``
                    (UDP from a reflection source port, the destinations'
                    ``refl`` counter) at 10,000 packets/s; ``syn``, ``ack``,
                    ``udp``, ``icmp``, ``gre``, ``fragment`` can be added.
                    A fleet attack per victim and vector: the planner's
                    signature rule (reflection: a rate limit per reflection
                    port, escalating to a drop while it lasts).
promotion           the same attack (vector and victim) mitigated locally on
                    ``promote_nodes`` nodes (K = 3): the agents' attack
                    events that name applied rules. It becomes a global
                    mitigation of that attack, with every node's offenders;
                    and a source named as an offender by mitigated attacks
                    on K nodes is dropped everywhere.
==================  ==========================================================

A detection must hold for ``start_intervals`` evaluations in a row (2;
promotions start at once: each node's detector already confirmed its
attack) and ends once under ``end_fraction`` (0.5) of its threshold for
``end_intervals`` evaluations in a row (6). Sources being dropped are still
counted by the nodes, so a fleet attack lasts while it goes on.

**Rules.** A controller-side :class:`~controller.detection.planner.Planner` (the
agents' planner, with the ``[fleet.mitigate]`` settings) turns the active
fleet attacks into rules, so a fleet rule is what an agent would do
against the whole attack, with the same guards: allowlist and management
prefixes are never dropped or limited by a source rule; no source prefix is
broader than ``broadest_v4`` / ``broadest_v6`` (/24, /48); at most
``max_rules_total`` fleet rules (50 here), ``max_rules_per_attack`` per
attack and ``max_prefixes_per_rule`` prefixes per rule. Every rule has a
TTL (``rule_ttl``, 300 s) pushed forward while its attack lasts; once it
ended the rule goes after ``grace_ttl`` (60 s, :data:`FLEET_GRACE_TTL`,
longer than an agent's 5 s). Fleet rules apply to every node, have origin
``controller``, are created by ``breakwater-controller`` and are named
``fleet-...`` (the planner's ``auto-...`` names with ``fleet`` in front
instead). They are written through the API backend's
``apply`` when the controller passes one, so their rule events are
published like any other change. Fleet attacks are published as attack
events of the controller itself (no node).

**A promotion carries sources, not ceilings.** A promoted attack's rules
are its offenders' source rules (and signature rules that name ports); the
victim-wide limit the planner would add for a diffuse or spoofed flood
stays with the agents. Each node enforces its own ceiling anyway, and
only the agent knows which services it challenges (a SYN/ACK ceiling
leaves those ports to the challenge) and which UDP sources it knew
before the attack (they keep their share); a fleet copy of the ceiling
would hit exactly those users on every node, and linger ``grace_ttl``
after the attack. Measured in the lab before this rule: x-spaces' legitimate
UDP fell to 29-64% in the waves after a carpet UDP flood was promoted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final, cast

from breakwater.v1 import event_pb2

from ..addresses import Prefix, parse_prefix
from ..api.convert import attack_from_proto, event_to_proto
from ..api.telemetry import AddressRate, FleetTelemetry
from ..detection.config import MAX_DETECT_RATE, MitigateConfig
from ..detection.events import VECTOR_CODES, AttackEvent, Profile, SourceRate, Vector
from ..detection.planner import AUTO_ORIGIN, Planner, PlanResult
from ..errors import AlreadyExistsError, BreakwaterError, FieldError, InputError, NotFoundError
from ..metrics import Exposition
from ..rules.model import Rule
from ..rules.scope import RuleScope, ScopedRule
from ..validate import check_bool, check_int, check_keys, check_number
from .eventlog import EventLog
from .store import CONTROLLER_ACTOR, Change
from .storeapi import Store

__all__ = [
    "FLEET_GRACE_TTL",
    "FLEET_PREFIX",
    "SIGNATURE_FIELDS",
    "FleetConfig",
    "FleetDetector",
    "fleet_rule_id",
]

LOGGER = logging.getLogger("breakwater.fleet")

FLEET_PREFIX: Final = "fleet"
"""Fleet rule ids are the planner's ``auto-...`` ids with this instead of ``auto``."""
_MAX_ID: Final = 63
SIGNATURE_FIELDS: Final[Mapping[str, str]] = {
    "syn": "syn", "ack": "ack", "udp": "udp", "icmp": "icmp", "gre": "gre", "fragment": "frags",
    "reflection": "refl",
}
"""The destination counter of each signature vector (``udp`` is UDP minus its reflection share)."""

Apply = Callable[..., Change]


def fleet_rule_id(planner_id: str) -> str:
    """The fleet rule id of a planner rule id (``auto-src-x`` -> ``fleet-src-x``),
    shortened with a hash when it would pass 63 characters."""
    rid = FLEET_PREFIX + planner_id.removeprefix(AUTO_ORIGIN)
    if len(rid) <= _MAX_ID:
        return rid
    digest = hashlib.sha256(planner_id.encode()).hexdigest()[:8]
    return f"{rid[: _MAX_ID - 9].rstrip('-.')}-{digest}"


PROMOTED_PREFIX: Final = "fleet-k"
"""The id of a promoted fleet attack starts so (``fleet-k<vector>-<victim>-<time>``)."""
FLEET_GRACE_TTL: Final = 60.0
"""Seconds a fleet rule outlives its ended attack: longer than an agent's
(5 s), because the fleet judges on telemetry windows (15 s) that lag the
data plane, so a short grace would drop and re-create rules mid-attack."""


def _fleet_mitigation() -> MitigateConfig:
    return MitigateConfig(created_by=CONTROLLER_ACTOR, max_rules_total=50, priority=400,
                          grace_ttl=FLEET_GRACE_TTL)


@dataclass(frozen=True)
class FleetConfig:
    """Cluster-wide detection settings (the ``[fleet]`` table; ``[fleet.mitigate]``
    takes :class:`~controller.detection.config.MitigateConfig` keys)."""

    enabled: bool = True
    interval: float = 5.0
    """Seconds between evaluations."""
    window: float = 15.0
    """Seconds of telemetry each evaluation sums (a few telemetry intervals)."""
    source_pps: float = 20_000.0
    """Heavy sources: packets/s summed over the nodes ..."""
    source_bps: float = 200_000_000.0
    """... or bits/s ..."""
    min_nodes: int = 2
    """... counted by at least this many nodes (one node alone is its own detector's business)."""
    signatures: Mapping[str, float] = field(default_factory=lambda: {"reflection": 10_000.0})
    """Destination vector -> packets/s summed over the nodes that starts a fleet attack on it."""
    start_intervals: int = 2
    end_intervals: int = 6
    end_fraction: float = 0.5
    promote_nodes: int = 3
    """K: a local mitigation of the same attack on this many nodes becomes global."""
    promote_requires_mitigation: bool = True
    """Count only local attacks that name applied rules (a mitigation, not a detection)."""
    local_attack_ttl: float = 60.0
    """A node's attack with no event for this long counts as over."""
    max_offenders: int = 10_000
    """Offenders kept per fleet attack (the heaviest)."""
    mitigate: MitigateConfig = field(default_factory=_fleet_mitigation)

    def __post_init__(self) -> None:
        check_bool(self.enabled, "enabled")
        check_number(self.interval, "interval", 0.05, 3600)
        check_number(self.window, "window", 0.1, 3600)
        check_number(self.source_pps, "source_pps", 1, MAX_DETECT_RATE)
        check_number(self.source_bps, "source_bps", 1, 1e15)
        check_int(self.min_nodes, "min_nodes", 1, 100_000)
        if not isinstance(self.signatures, Mapping):
            raise FieldError("signatures", f"expected a table of vector = pps, got {self.signatures!r}")
        for vector, pps in self.signatures.items():
            if vector not in SIGNATURE_FIELDS:
                raise FieldError(f"signatures.{vector}",
                                 f"not a signature vector; one of {', '.join(SIGNATURE_FIELDS)}")
            check_number(pps, f"signatures.{vector}", 1, MAX_DETECT_RATE)
        check_int(self.start_intervals, "start_intervals", 1, 1000)
        check_int(self.end_intervals, "end_intervals", 1, 100_000)
        check_number(self.end_fraction, "end_fraction", 0.01, 1)
        check_int(self.promote_nodes, "promote_nodes", 1, 100_000)
        check_bool(self.promote_requires_mitigation, "promote_requires_mitigation")
        check_number(self.local_attack_ttl, "local_attack_ttl", 1, 86400)
        check_int(self.max_offenders, "max_offenders", 1, 10_000_000)
        if not isinstance(self.mitigate, MitigateConfig):
            raise FieldError("mitigate", "expected a [fleet.mitigate] table")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FleetConfig:
        known = [f.name for f in fields(cls)]
        check_keys(data, known)
        values: dict[str, Any] = dict(data)
        if "mitigate" in values:
            table = values["mitigate"]
            if not isinstance(table, Mapping):
                raise FieldError("mitigate", f"expected a table, got {table!r}")
            base = {"created_by": CONTROLLER_ACTOR, "max_rules_total": 50, "priority": 400}
            try:
                values["mitigate"] = MitigateConfig.from_dict({**base, **table})
            except FieldError as exc:
                raise FieldError(f"mitigate.{exc.path}" if exc.path else "mitigate", exc.what) from None
        if "signatures" in values and isinstance(values["signatures"], Mapping):
            values["signatures"] = dict(values["signatures"])
        return cls(**values)


@dataclass
class _Track:
    """One fleet attack, from its first interval over the threshold."""

    key: str
    vector: Vector
    victim: Prefix | None
    threshold: float
    first_over: float
    over: int = 0
    under: int = 0
    active: bool = False
    attack_id: str = ""
    started_at: float = 0.0
    pps: float = 0.0
    bps: float = 0.0
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    dropped_pps: float = 0.0
    baseline_pps: float = 0.0
    level: float = 0.0
    sources: int = 0
    profile: Profile = "spoofed"
    offenders: dict[Prefix, float] = field(default_factory=dict)
    """Every offender named during the attack, with its peak rate."""
    top: tuple[SourceRate, ...] = ()
    nodes: int = 0


@dataclass
class _Measure:
    """What one evaluation measured for a track's key."""

    vector: Vector
    victim: Prefix | None
    threshold: float
    level: float
    """Measured over threshold: 1 is the threshold."""
    pps: float = 0.0
    bps: float = 0.0
    dropped_pps: float = 0.0
    baseline_pps: float = 0.0
    sources: int = 0
    profile: Profile = "spoofed"
    offenders: dict[Prefix, float] = field(default_factory=dict)
    top: tuple[SourceRate, ...] = ()
    nodes: int = 0
    promotion: bool = False


def _is_fleet(r: ScopedRule) -> bool:
    """A rule this detector made (and so may change or remove)."""
    return (r.rule.origin == "controller" and r.rule.created_by == CONTROLLER_ACTOR
            and r.id.startswith(FLEET_PREFIX + "-"))



def _without_promoted_ceilings(result: PlanResult, events: Sequence[AttackEvent]) -> list[Rule]:
    """The plan's rules less the victim-wide ones only promoted attacks asked
    for (see the module's docstring: promotions carry sources, not ceilings)."""
    promoted: set[str] = set()
    wanted: set[str] = set()
    for e in events:
        (promoted if e.id.startswith(PROMOTED_PREFIX) else wanted).update(result.by_attack.get(e.id, ()))
    return [r for r in result.rules if r.match.src or r.id in wanted or r.id not in promoted]

def _update(store: Store, *, rule: ScopedRule, etag: str, reason: str) -> Change:
    return store.update(rule, etag=etag, actor=CONTROLLER_ACTOR, reason=reason)


def _prefix(text: str) -> Prefix | None:
    try:
        return parse_prefix(text)
    except InputError:
        return None


class FleetDetector:
    """Sums the fleet's telemetry and attack events, keeps the fleet
    attacks and their rules (see the module docstring). :meth:`observe`
    takes the nodes' events (any thread); :meth:`tick` evaluates (one
    thread at a time)."""

    def __init__(self, config: FleetConfig, telemetry: FleetTelemetry, store: Store,
                 events: EventLog | None = None, *, apply: Apply | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._telemetry = telemetry
        self._store = store
        self._events = events
        self._apply = apply
        self._clock = clock
        self._planner = Planner(config.mitigate)
        self._tracks: dict[str, _Track] = {}
        self._local: dict[tuple[str, str], tuple[AttackEvent, float]] = {}
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._fleet_rules: dict[str, ScopedRule] = {}
        self._fleet_version = -1
        """The store version _fleet_rules is current at (-1: never read)."""
        self.ticks = 0
        self.write_failures = 0
        self.refused = 0
        self.last_refusals: tuple[str, ...] = ()

    # -- input --

    def observe(self, node_id: str, events: Sequence[event_pb2.Event], *, now: float | None = None) -> None:
        """A node's events (as the event log stored them): its attacks count
        towards promotion until they end or go quiet."""
        at = self._clock() if now is None else now
        with self._lock:
            for e in events:
                if e.WhichOneof("payload") != "attack":
                    continue
                try:
                    attack = attack_from_proto(e.attack)
                except (FieldError, InputError) as exc:
                    LOGGER.info("node %s: unreadable attack event: %s", node_id, exc)
                    continue
                key = (node_id, attack.id)
                if attack.kind == "ended":
                    self._local.pop(key, None)
                else:
                    self._local[key] = (attack, at)

    # -- evaluation --

    def tick(self, now: float | None = None) -> list[AttackEvent]:
        """One evaluation: measure, update the fleet attacks, plan and write
        their rules. Returns the fleet attack events of this evaluation."""
        at = self._clock() if now is None else now
        with self._tick_lock:
            measures = self._measure(at)
            events = self._advance(measures, at)
            self._plan(events, at)
            self.ticks += 1
            return events

    def _measure(self, now: float) -> dict[str, _Measure]:
        cfg = self.config
        out: dict[str, _Measure] = {}
        sources = self._telemetry.rates("source", cfg.window, now=now)
        heavy = _Measure("source_rate", None, cfg.source_pps, 0.0, profile="concentrated")
        named: list[AddressRate] = []
        for rate in sources.values():
            if rate.nodes < cfg.min_nodes:
                continue
            level = max(rate.pps / cfg.source_pps, rate.bps / cfg.source_bps)
            heavy.level = max(heavy.level, level)
            if level >= 1:
                p = _prefix(rate.address)
                if p is not None:
                    named.append(rate)
                    heavy.offenders[p] = rate.pps
                    heavy.pps += rate.pps
                    heavy.bps += rate.bps
                    heavy.dropped_pps += rate.rate("drops")
                    heavy.nodes = max(heavy.nodes, rate.nodes)
        named.sort(key=lambda r: -r.pps)
        heavy.sources = len(named)
        heavy.top = tuple(SourceRate(p, r.pps, r.bps) for r in named[:20]
                          if (p := _prefix(r.address)) is not None)
        out["heavy"] = heavy
        if cfg.signatures:
            dests = self._telemetry.rates("destination", cfg.window, now=now)
            for vector, threshold in cfg.signatures.items():
                name = SIGNATURE_FIELDS[vector]
                for rate in dests.values():
                    pps = rate.rate(name)
                    if vector == "udp":
                        pps -= rate.rate("refl")
                    key = f"sig:{vector}:{rate.address}"
                    if pps < threshold * cfg.end_fraction and key not in self._tracks:
                        continue
                    victim = _prefix(rate.address)
                    if victim is None or not victim.is_exact:
                        continue
                    out[key] = _Measure(
                        cast(Vector, vector), victim, threshold, pps / threshold, pps=pps, bps=rate.bps,
                        dropped_pps=rate.rate("drops"), nodes=rate.nodes)
        out.update(self._promotions(now))
        return out

    def _promotions(self, now: float) -> dict[str, _Measure]:
        cfg = self.config
        k = cfg.promote_nodes
        with self._lock:
            for local_key, (_e, seen) in list(self._local.items()):
                if seen < now - cfg.local_attack_ttl:
                    del self._local[local_key]
            local = [(node, e) for (node, _aid), (e, _seen) in self._local.items()
                     if e.applied or not cfg.promote_requires_mitigation]
        by_victim: dict[tuple[str, str], list[tuple[str, AttackEvent]]] = {}
        for node, e in local:
            if e.victim is not None:
                by_victim.setdefault((e.vector, str(e.victim)), []).append((node, e))
        out: dict[str, _Measure] = {}
        promoted: set[str] = set()  # attacks promoted whole: their offenders go with them
        for (vector, victim), items in by_victim.items():
            nodes = {n for n, _ in items}
            key = f"promo:{vector}:{victim}"
            if len(nodes) < k and key not in self._tracks:
                continue
            promoted.update(f"{n}\0{e.id}" for n, e in items)
            offenders: Counter[Prefix] = Counter()
            for _n, e in items:
                offenders.update(dict.fromkeys(e.offenders, 1))
            profiles = Counter(e.profile for _n, e in items)
            first = items[0][1]
            out[key] = _Measure(
                first.vector, first.victim, float(k), len(nodes) / k,
                pps=sum(e.pps for _n, e in items), bps=sum(e.bps for _n, e in items),
                dropped_pps=sum(e.dropped_pps for _n, e in items),
                baseline_pps=max(e.baseline_pps for _n, e in items),
                sources=sum(e.sources for _n, e in items), profile=profiles.most_common(1)[0][0],
                offenders={p: float(n) for p, n in offenders.most_common()}, nodes=len(nodes), promotion=True)
        by_offender: dict[Prefix, set[str]] = {}
        for node, e in local:
            if f"{node}\0{e.id}" not in promoted:
                for p in e.offenders:
                    by_offender.setdefault(p, set()).add(node)
        shared = {p: float(len(ns)) for p, ns in by_offender.items() if len(ns) >= k}
        if shared or "promo:offenders" in self._tracks:
            level = max(shared.values(), default=max((len(ns) for ns in by_offender.values()), default=0)) / k
            out["promo:offenders"] = _Measure("source_rate", None, float(k), level, profile="concentrated",
                                              offenders=dict(sorted(shared.items(), key=lambda kv: -kv[1])),
                                              sources=len(shared), nodes=int(max(shared.values(), default=0)),
                                              promotion=True)
        return out

    def _advance(self, measures: Mapping[str, _Measure], now: float) -> list[AttackEvent]:
        cfg = self.config
        events: list[AttackEvent] = []
        for key in set(self._tracks) | {k for k, m in measures.items() if m.level >= 1}:
            m = measures.get(key)
            track = self._tracks.get(key)
            if track is None:
                assert m is not None
                track = _Track(key, m.vector, m.victim, m.threshold, now)
                self._tracks[key] = track
            level = m.level if m is not None else 0.0
            track.level = level
            if m is not None:
                track.pps, track.bps, track.dropped_pps = m.pps, m.bps, m.dropped_pps
                track.baseline_pps = max(track.baseline_pps, m.baseline_pps)
                track.sources, track.profile, track.nodes = m.sources, m.profile, m.nodes
                track.top = m.top or track.top
                for p, rate in m.offenders.items():
                    track.offenders[p] = max(track.offenders.get(p, 0.0), rate)
                if len(track.offenders) > cfg.max_offenders:
                    heaviest = sorted(track.offenders.items(), key=lambda kv: -kv[1])[:cfg.max_offenders]
                    track.offenders = dict(heaviest)
            else:
                track.pps = track.bps = track.dropped_pps = 0.0
            track.peak_pps = max(track.peak_pps, track.pps)
            track.peak_bps = max(track.peak_bps, track.bps)
            if level >= 1:
                track.over += 1
                track.under = 0
            elif level < cfg.end_fraction:
                track.under += 1
                track.over = 0
            else:
                track.over = track.under = 0
            starts = 1 if key.startswith("promo:") else cfg.start_intervals
            if not track.active:
                if track.over >= starts:
                    track.active = True
                    track.started_at = now
                    track.attack_id = self._attack_id(track, now)
                    event = self._event(track, "started", now)
                    events.append(event)
                    self._announce(event)
                elif track.over == 0:
                    del self._tracks[key]
                continue
            if track.under >= cfg.end_intervals:
                event = self._event(track, "ended", now)
                events.append(event)
                self._announce(event)
                del self._tracks[key]
                continue
            events.append(self._event(track, "updated", now))
        return events

    def _attack_id(self, track: _Track, now: float) -> str:
        kind = track.key.split(":", 1)[0]
        stamp = str(int(now))
        if track.key == "heavy":
            return f"fleet-heavy-{stamp}"
        if track.key == "promo:offenders":
            return f"fleet-offenders-{stamp}"
        code = VECTOR_CODES[track.vector]
        where = track.victim.slug if track.victim is not None else "any"
        return f"{PROMOTED_PREFIX if kind == 'promo' else 'fleet-'}{code}-{where}-{stamp}"

    def _event(self, track: _Track, kind: str, now: float) -> AttackEvent:
        offenders = tuple(p for p, _r in sorted(track.offenders.items(), key=lambda kv: -kv[1]))
        return AttackEvent(
            id=track.attack_id, kind=kind,  # type: ignore[arg-type]  # started/updated/ended
            vector=track.vector, victim=track.victim, profile=track.profile, t=now,
            onset_at=track.first_over, started_at=track.started_at, ended_at=now if kind == "ended" else None,
            pps=track.pps, bps=track.bps, peak_pps=track.peak_pps, peak_bps=track.peak_bps,
            dropped_pps=track.dropped_pps, threshold_pps=track.threshold, baseline_pps=track.baseline_pps,
            over_threshold=track.level >= 1, sources=track.sources, top_sources=track.top,
            offenders=offenders)

    def _announce(self, event: AttackEvent) -> None:
        LOGGER.warning("fleet attack %s %s: %s on %s, %.0f pps", event.id, event.kind, event.vector,
                       event.victim or "no victim", event.pps,
                       extra={"event": f"fleet_attack_{event.kind}", "attack": event.id,
                              "vector": event.vector, "victim": str(event.victim or "")})
        if self._events is not None:
            try:
                self._events.publish([event_to_proto(event)])
            except BreakwaterError:
                LOGGER.exception("publishing fleet attack %s failed", event.id)

    # -- rules --

    def _stored(self) -> dict[str, ScopedRule]:
        """The fleet rules in the store, kept current from its change feed
        (one scan of every rule at first, or after a gap in the feed)."""
        version = self._store.version
        if version == self._fleet_version:
            return dict(self._fleet_rules)
        got = self._store.changes_since(self._fleet_version) if self._fleet_version >= 0 else None
        if got is None:
            version, rules = self._store.snapshot(include_expired=True)
            self._fleet_rules = {r.id: r for r in rules if _is_fleet(r)}
        else:
            version, changes = got
            for change in changes:
                for r in change.upserted:
                    if _is_fleet(r):
                        self._fleet_rules[r.id] = r
                    else:
                        self._fleet_rules.pop(r.id, None)
                for r in change.removed:
                    self._fleet_rules.pop(r.id, None)
        self._fleet_version = version
        return dict(self._fleet_rules)

    def _plan(self, events: Sequence[AttackEvent], now: float) -> None:
        stored = self._stored()
        current: list[Rule] = []
        for rid, r in stored.items():
            planner_id = AUTO_ORIGIN + rid.removeprefix(FLEET_PREFIX)
            if fleet_rule_id(planner_id) == rid:
                current.append(replace(r.rule, id=planner_id, origin=AUTO_ORIGIN))
        if not events and not current:
            return
        result = self._planner.plan(datetime.fromtimestamp(now, UTC), events, current)
        self.refused += len(result.refused)
        self.last_refusals = tuple(str(r) for r in result.refused)
        for refusal in result.refused:
            LOGGER.info("fleet mitigation refused: %s", refusal, extra={"event": "fleet_refused"})
        if not result.enforce:
            return
        desired = {fleet_rule_id(r.id): replace(r, id=fleet_rule_id(r.id), origin="controller")
                   for r in _without_promoted_ceilings(result, events)}
        create = [ScopedRule(rule, RuleScope()) for rid, rule in desired.items() if rid not in stored]
        update = [(ScopedRule(rule, RuleScope()), stored[rid].etag) for rid, rule in desired.items()
                  if rid in stored and (stored[rid].rule != rule or not stored[rid].scope.is_global)]
        delete = sorted(rid for rid in stored if rid not in desired
                        and fleet_rule_id(AUTO_ORIGIN + rid.removeprefix(FLEET_PREFIX)) == rid)
        reason = "cluster-wide detection: " + ", ".join(sorted({e.id for e in events})[:5])
        if create:
            self._write(lambda s: s.create(create, actor=CONTROLLER_ACTOR, reason=reason), False)
        for rule, etag in update:
            self._write(functools.partial(_update, rule=rule, etag=etag, reason=reason), True)
        if delete:
            self._write(lambda s: s.delete(delete, actor=CONTROLLER_ACTOR, reason="fleet attack over",
                                           allow_missing=True), False)

    def _write(self, change: Callable[[Store], Change], updated: bool) -> None:
        try:
            if self._apply is not None:
                self._apply(change, updated=updated)
            else:
                change(self._store)
        except (AlreadyExistsError, NotFoundError) as exc:
            self.write_failures += 1
            LOGGER.warning("fleet rule change refused: %s", exc, extra={"event": "fleet_write_refused"})
        except BreakwaterError:
            self.write_failures += 1
            LOGGER.exception("writing fleet rules failed")

    # -- the outside --

    @property
    def attacks(self) -> dict[str, str]:
        """Active fleet attacks: key -> attack id."""
        return {k: t.attack_id for k, t in self._tracks.items() if t.active}

    def collect_metrics(self, out: Exposition) -> None:
        out.add("breakwater_controller_fleet_attacks", "gauge", "Fleet attacks in progress",
                len(self.attacks))
        out.add("breakwater_controller_fleet_rules", "gauge", "Rules made by cluster-wide detection",
                len(self._stored()))
        out.add("breakwater_controller_fleet_evaluations_total", "counter", "Cluster-wide evaluations",
                self.ticks)
        out.add("breakwater_controller_fleet_refused_total", "counter",
                "Fleet mitigations a guard refused", self.refused)
        out.add("breakwater_controller_fleet_write_failures_total", "counter",
                "Fleet rule changes the store refused or failed", self.write_failures)
