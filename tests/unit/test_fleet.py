"""controller.fleet.detector: cluster-wide detection on recorded telemetry sequences
and attack events: a flood split over three nodes becomes one fleet rule,
a smaller one none; reflection towards one victim; K-node promotion; TTLs
extended while an attack lasts and the rule gone after; guards."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from breakwater.v1 import event_pb2, telemetry_pb2
from controller.addresses import parse_prefix
from controller.api.convert import event_to_proto
from controller.api.telemetry import FleetTelemetry
from controller.detection.events import AttackEvent
from controller.errors import FieldError
from controller.fleet.detector import FleetConfig, FleetDetector, fleet_rule_id
from controller.fleet.eventlog import EventLog
from controller.fleet.store import CONTROLLER_ACTOR, FleetStore
from controller.rules.scope import ScopedRule

GRACE = FleetConfig().mitigate.grace_ttl

T = 1_800_000_000.0
RECORDINGS = Path(__file__).parent / "recordings"
FLOOD = "203.0.113.66"


def load(name: str) -> list[tuple[float, str, telemetry_pb2.TelemetrySummary]]:
    """A recording: (seconds from its start, node id, summary) in order."""
    doc = json.loads((RECORDINGS / name).read_text())
    out = []
    for item in doc["summaries"]:
        s = json_format.ParseDict(item["summary"], telemetry_pb2.TelemetrySummary())
        out.append((float(item["t"]), item["node"], s))
    return out


class Fleet:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.store = FleetStore.open(tmp)
        self.events = EventLog(self.store)
        self.telemetry = FleetTelemetry()
        self.config = FleetConfig.from_dict(config)
        self.detector = FleetDetector(self.config, self.telemetry, self.store, self.events,
                                      clock=lambda: T)
        self.log: list[AttackEvent] = []

    def feed(self, t: float, node: str, s: telemetry_pb2.TelemetrySummary) -> None:
        copy = telemetry_pb2.TelemetrySummary()
        copy.CopyFrom(s)
        copy.end_time.FromNanoseconds(int((T + t) * 1e9))
        self.telemetry.offer(node, copy, now=T + t)

    def tick(self, t: float) -> list[AttackEvent]:
        got = self.detector.tick(now=T + t)
        self.log += got
        return got

    def replay(self, records: Sequence[tuple[float, str, telemetry_pb2.TelemetrySummary]],
               until: float | None = None) -> None:
        times = sorted({t for t, _n, _s in records})
        for t in times:
            for rt, node, s in records:
                if rt == t:
                    self.feed(t, node, s)
            self.tick(t)
        last = times[-1]
        while until is not None and last < until:
            last += 5
            self.tick(last)

    def rules(self) -> list[ScopedRule]:
        return [r for r in self.store.rules(include_expired=True) if r.rule.origin == "controller"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.store.close()


def summary(sources: dict[str, int] | None = None, dests: dict[str, dict[str, int]] | None = None,
            interval: float = 5) -> telemetry_pb2.TelemetrySummary:
    s = telemetry_pb2.TelemetrySummary()
    s.interval.FromNanoseconds(int(interval * 1e9))
    for addr, packets in (sources or {}).items():
        s.top_sources.append(telemetry_pb2.AddressCounters(
            address=addr, counters=telemetry_pb2.TrafficCounters(packets=packets, bytes=packets * 60)))
    for addr, counts in (dests or {}).items():
        s.destinations.append(telemetry_pb2.AddressCounters(address=addr,
                                                            counters=telemetry_pb2.TrafficCounters(**counts)))
    return s


def test_a_third_of_a_flood_on_three_nodes_is_one_fleet_rule(fleet: Fleet) -> None:
    records = load("fleet_third_of_a_flood.json")
    assert {n for _t, n, _s in records} == {"edge-1", "edge-2", "edge-3"}
    started_at: float | None = None
    rules: list[ScopedRule] = []
    at_end: list[ScopedRule] = []
    for t in sorted({t for t, _n, _s in records}):
        for rt, node, s in records:
            if rt == t:
                fleet.feed(t, node, s)
        fleet.tick(t)
        if started_at is None and fleet.rules():
            started_at, rules = t, fleet.rules()
        if not at_end and any(e.kind == "ended" for e in fleet.log):
            at_end = fleet.rules()
    assert started_at == 10  # two evaluations over the line (5 s and 10 s)
    assert [str(p) for r in rules for p in r.rule.match.src] == [FLOOD]
    (fr,) = rules
    assert fr.id == "fleet-src-heavy" and fr.scope.is_global
    assert fr.rule.action.kind == "drop" and fr.rule.created_by == CONTROLLER_ACTOR
    assert fr.rule.expires_at is not None
    kinds = [(e.kind, e.vector) for e in fleet.log if e.kind != "updated"]
    assert kinds == [("started", "source_rate"), ("ended", "source_rate")]
    ended = next(e for e in fleet.log if e.kind == "ended")
    assert ended.t == T + 100  # under half the line for six evaluations after the flood stopped
    # after the flood: released with the grace TTL, then removed
    assert fr.rule.expires_at.timestamp() == T + 10 + 300
    (released,) = at_end
    assert released.rule.expires_at is not None and released.rule.expires_at.timestamp() == T + 100 + GRACE
    for t in range(125, 175, 5):
        fleet.tick(t)
    assert fleet.rules() == []
    audit = fleet.store.audit(rule_id=fr.id)
    assert [a.action for a in audit] == ["create", "update", "delete"]
    assert {a.actor for a in audit} == {CONTROLLER_ACTOR}
    published = [e for e in fleet.events.page() if e.WhichOneof("payload") == "attack"]
    phases = [event_pb2.ATTACK_PHASE_STARTED, event_pb2.ATTACK_PHASE_ENDED]
    assert [e.attack.phase for e in published] == phases
    assert all(e.node == "" and e.attack.attack_id == published[0].attack.attack_id for e in published)


def test_below_the_fleet_line_no_rule(fleet: Fleet) -> None:
    for k in range(1, 9):
        for n in range(3):  # 3 x 5k = 15k < 20k
            fleet.feed(5 * k, f"edge-{n}", summary({FLOOD: 25_000}))
        fleet.feed(5 * k, "edge-9", summary({"198.51.100.200": 200_000}))  # 40k, one node only
        fleet.tick(5 * k)
    assert fleet.rules() == [] and fleet.log == []


def test_the_rule_lasts_while_the_attack_does(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, mitigate={"rule_ttl": 20, "grace_ttl": 10})
    expiries = []
    for k in range(1, 13):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary({FLOOD: 50_000}))
        fleet.tick(5 * k)
        expiries += [r.rule.expires_at for r in fleet.rules()]
    assert len(set(expiries)) >= 3  # pushed forward while it lasts, never let lapse
    assert all(e is not None for e in expiries)
    assert max(e.timestamp() for e in expiries if e) >= T + 60
    fleet.store.close()


def test_reflection_towards_one_victim_is_a_fleet_rate_limit(fleet: Fleet) -> None:
    victim = "198.18.0.20"
    for k in range(1, 4):
        for n in range(3):  # 3 x 4k pps of UDP from reflection ports to one victim
            fleet.feed(5 * k, f"edge-{n}", summary(dests={victim: {"packets": 20_000, "udp": 20_000,
                                                                   "refl": 20_000, "bytes": 20_000 * 1400}}))
        fleet.tick(5 * k)
    rules = fleet.rules()
    assert rules and all(r.rule.action.kind == "rate_limit" for r in rules)
    assert all([str(p) for p in r.rule.match.dst] == [victim] for r in rules)
    ports = {r.rule.match.sport.lo for r in rules if r.rule.match.sport is not None}
    assert {53, 123, 389, 11211} <= ports
    assert all(r.id.startswith("fleet-refl-198-18-0-20") for r in rules)
    assert [e.kind for e in fleet.log if e.kind != "updated"] == ["started"]


def _local(node_attack: str, vector: str = "syn", victim: str | None = "198.18.0.10",
           offenders: Sequence[str] = ("203.0.113.1", "203.0.113.2"), applied: Sequence[str] = ("auto-x",),
           kind: str = "started", profile: str = "concentrated") -> event_pb2.Event:
    where = None if victim is None else parse_prefix(victim)
    e = AttackEvent(id=node_attack, kind=kind, vector=vector, victim=where,  # type: ignore[arg-type]
                    profile=profile, t=T, onset_at=T - 3, started_at=T,  # type: ignore[arg-type]
                    ended_at=T if kind == "ended" else None, pps=40_000, bps=1e8, peak_pps=40_000,
                    peak_bps=1e8, dropped_pps=0, threshold_pps=10_000, baseline_pps=100, over_threshold=True,
                    sources=2,
                    offenders=tuple(parse_prefix(o) for o in offenders), applied=tuple(applied))
    return event_to_proto(e)


def test_k_node_promotion(fleet: Fleet) -> None:
    fleet.detector.observe("edge-1", [_local("syn-a")], now=T)
    fleet.detector.observe("edge-2", [_local("syn-b", offenders=("203.0.113.2", "203.0.113.3"))], now=T)
    fleet.tick(1)
    assert fleet.rules() == []  # two nodes: not yet
    fleet.detector.observe("edge-3", [_local("syn-c", applied=())], now=T)
    fleet.tick(2)
    assert fleet.rules() == []  # the third detected it but mitigated nothing
    fleet.detector.observe("edge-3", [_local("syn-c")], now=T)
    fleet.tick(3)
    (rule,) = fleet.rules()
    assert sorted(str(p) for p in rule.rule.match.src) == [f"203.0.113.{i}" for i in (1, 2, 3)]
    assert rule.id == "fleet-src-syn-198-18-0-10" and rule.scope.is_global
    # the local attacks end: the fleet attack ends after end_intervals and the rule is released
    for i, node in enumerate(("edge-1", "edge-2", "edge-3")):
        fleet.detector.observe(node, [_local(f"syn-{'abc'[i]}", kind="ended")], now=T)
    for t in range(4, 4 + 6):
        fleet.tick(t)
    assert [e.kind for e in fleet.log if e.kind != "updated"] == ["started", "ended"]
    (released,) = fleet.rules()
    assert released.rule.expires_at is not None and released.rule.expires_at.timestamp() == T + 9 + GRACE


def test_a_promotion_carries_sources_not_a_victim_wide_ceiling(fleet: Fleet) -> None:
    """A diffuse flood mitigated on K nodes: its offenders are dropped everywhere, but
    the victim-wide limit stays with the agents (their challenges and known sources)."""
    for i in range(3):
        fleet.detector.observe(f"edge-{i}", [_local(f"udp-{i}", vector="udp", profile="diffuse",
                                                    offenders=(f"203.0.113.{i + 1}",))], now=T)
    fleet.tick(1)
    rules = fleet.rules()
    assert rules and all(r.rule.match.src for r in rules), [r.id for r in rules]
    assert sorted(str(p) for r in rules for p in r.rule.match.src) == [f"203.0.113.{i}" for i in (1, 2, 3)]


def test_offender_on_k_nodes_is_dropped_everywhere(fleet: Fleet) -> None:
    for i in range(3):  # each node's own source-rate attack names the same source
        fleet.detector.observe(f"edge-{i}", [_local(f"heavy-{i}", vector="source_rate", victim=None,
                                                    offenders=("198.51.100.9", f"198.51.100.{20 + i}"))],
                               now=T)
    fleet.tick(1)
    (rule,) = fleet.rules()
    assert [str(p) for p in rule.rule.match.src] == ["198.51.100.9"]
    assert rule.id == "fleet-src-heavy"


def test_stale_local_attacks_stop_counting(fleet: Fleet) -> None:
    for i in range(3):
        fleet.detector.observe(f"edge-{i}", [_local(f"syn-{i}")], now=T - 120)
    fleet.tick(0)
    assert fleet.rules() == []


def test_guard_allowlist_never_dropped(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, mitigate={"allowlist": ["203.0.113.0/24"]})
    for k in range(1, 4):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary({FLOOD: 50_000}))
        fleet.tick(5 * k)
    assert fleet.rules() == []
    assert fleet.detector.refused >= 1 and "allowlist" in fleet.detector.last_refusals[0]
    fleet.store.close()


@pytest.mark.parametrize(("mitigate", "want"), [
    ({}, ["203.0.113.0/24"]),
    ({"broadest_v4": 32, "aggregate_v4": 32}, [f"203.0.113.{i}" for i in range(10, 20)]),
])
def test_guard_prefix_length(tmp_path: Path, mitigate: dict[str, Any], want: list[str]) -> None:
    fleet = Fleet(tmp_path, mitigate=mitigate)
    heavy = {f"203.0.113.{i}": 50_000 for i in range(10, 20)}
    for k in range(1, 4):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary(heavy))
        fleet.tick(5 * k)
    assert sorted(str(p) for r in fleet.rules() for p in r.rule.match.src) == sorted(want)
    fleet.store.close()


def test_guard_caps_the_number_of_fleet_rules(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, mitigate={"max_rules_total": 20})
    dests = {f"198.18.1.{i}": {"packets": 20_000, "refl": 20_000} for i in range(5)}
    for k in range(1, 4):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary(dests=dests))
        fleet.tick(5 * k)
    assert 0 < len(fleet.rules()) <= 20
    assert any("cap of 20" in r for r in fleet.detector.last_refusals)
    fleet.store.close()


def test_a_restarted_detector_takes_over_its_rules(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    for k in range(1, 4):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary({FLOOD: 50_000}))
        fleet.tick(5 * k)
    (before,) = fleet.rules()
    again = FleetDetector(fleet.config, FleetTelemetry(), fleet.store, fleet.events, clock=lambda: T)
    again.tick(now=T + 20)  # no telemetry: nothing active, its rule is released, not duplicated
    (after,) = fleet.rules()
    assert after.id == before.id and after.rule.expires_at is not None
    assert after.rule.expires_at.timestamp() == T + 20 + GRACE
    fleet.store.close()


def test_config() -> None:
    cfg = FleetConfig.from_dict({"source_pps": 5000, "signatures": {"reflection": 2000, "syn": 50_000},
                                 "mitigate": {"rule_ttl": 120, "management": ["10.0.0.0/8"]}})
    assert cfg.mitigate.created_by == CONTROLLER_ACTOR and cfg.mitigate.rule_ttl == 120
    assert cfg.mitigate.max_rules_total == 50 and str(cfg.mitigate.management[0]) == "10.0.0.0/8"
    for bad, path in (({"source_ppps": 1}, "source_ppps"), ({"signatures": {"dns": 1}}, "signatures.dns"),
                      ({"mitigate": {"rule_tll": 1}}, "mitigate.rule_tll"), ({"min_nodes": 0}, "min_nodes"),
                      ({"mitigate": {"broadest_v4": 4}}, "mitigate.broadest_v4")):
        with pytest.raises(FieldError) as info:
            FleetConfig.from_dict(bad)
        assert info.value.path == path, (bad, info.value)
    assert fleet_rule_id("auto-src-x") == "fleet-src-x"
    long = "auto-" + "a" * 58
    assert len(fleet_rule_id(long)) == 63 and fleet_rule_id(long) != fleet_rule_id(long[:-1] + "b")


def test_changes_by_others_are_seen(tmp_path: Path) -> None:
    """The detector follows the store's change feed: a fleet rule an
    operator deleted while the attack lasts is made again; other rules are
    not its business."""
    fleet = Fleet(tmp_path)
    from controller.rules.model import Match, Rule, RuleAction
    fleet.store.create([ScopedRule(Rule("manual", Match.from_dict({"src": ["192.0.2.0/24"]}),
                                        RuleAction("drop")))], actor="soc")
    for k in range(1, 4):
        for n in range(3):
            fleet.feed(5 * k, f"edge-{n}", summary({FLOOD: 50_000}))
        fleet.tick(5 * k)
    (rule,) = fleet.rules()
    fleet.store.delete([rule.id], actor="soc")
    for n in range(3):
        fleet.feed(20, f"edge-{n}", summary({FLOOD: 50_000}))
    fleet.tick(20)
    assert [r.id for r in fleet.rules()] == [rule.id]
    assert fleet.store.get("manual").rule.origin == "manual"
    fleet.store.close()
