"""Known sources first: peacetime UDP sources learned by the detector, let past a UDP flood's ceiling."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from controller.addresses import Prefix, parse_prefix
from controller.detection.config import DetectConfig, MitigateConfig
from controller.detection.detector import Detector
from controller.detection.events import AttackEvent, Profile, Vector
from controller.detection.known import KnownSources
from controller.detection.planner import Planner
from controller.detection.samples import address_words
from controller.errors import InputError
from controller.rules.compiler import Packet, compile_ruleset
from tests.unit.recordings import VICTIM, VICTIM2, Spoofed, Traffic, background, record, v4_block

NOW = datetime(2024, 8, 12, 23, 0, tzinfo=UTC)
UDP = {"udp": 1.0}


def p(text: str) -> Prefix:
    return parse_prefix(text)


def hosts(first: str, count: int) -> list[Prefix]:
    start = ipaddress.ip_address(first)
    return [p(str(start + i)) for i in range(count)]


# --- learning -------------------------------------------------------------------


def test_detector_learns_peacetime_udp_clients_and_freezes_them_under_attack() -> None:
    clients = Traffic(v4_block("172.20.0.1", 20), VICTIM, 50, UDP, size=200)
    late = Traffic(v4_block("172.21.0.1", 5), VICTIM, 50, UDP, size=200, start=15)
    other = Traffic(v4_block("172.22.0.1", 3), VICTIM2, 20, UDP, size=200)
    flood = Spoofed(VICTIM, 200_000, UDP, start=10, stop=25)
    det = Detector(DetectConfig(known_min_seconds=2.0))
    known_at: dict[float, tuple[Prefix, ...]] = {}
    started: list[AttackEvent] = []
    for sample in record(30.0, 1.0, [background(VICTIM), clients, late, other, flood]):
        events = det.observe(sample)
        started += [e for e in events if e.kind == "started"]
        known_at[sample.t] = det.known_sources(p(VICTIM))
    assert [(e.vector, e.profile) for e in started] == [("udp", "spoofed")]
    # the web clients send no UDP: only the UDP clients are known, no spoofed source
    assert set(known_at[10.0]) == set(hosts("172.20.0.1", 20))
    # frozen while the attack lasts: no spoofed source, no newcomer (``late``) enters
    for t in range(11, 26):
        assert known_at[float(t)] == known_at[10.0]
    assert set(det.known_sources(p(VICTIM2))) == set(hosts("172.22.0.1", 3))
    assert det.known_sources(p("198.51.100.1")) == ()  # never seen


def test_a_prefix_victim_knows_the_sources_of_its_addresses() -> None:
    """A carpet's victim is a prefix: its known sources are those of its
    addresses (another prefix's are not), for the known rule beside its limit."""
    a = Traffic(v4_block("172.20.0.1", 4), VICTIM, 50, UDP, size=200)
    b = Traffic(v4_block("172.22.0.1", 3), VICTIM2, 20, UDP, size=200)
    det = Detector(DetectConfig(known_min_seconds=2.0))
    for sample in record(8.0, 1.0, [background(VICTIM), a, b]):
        det.observe(sample)
    assert set(det.known_sources(p("203.0.113.0/24"))) == set(hosts("172.20.0.1", 4)) | set(
        hosts("172.22.0.1", 3))
    assert det.known_sources(p("198.51.100.0/24")) == ()
    assert det.known_sources(p("2001:db8::/64")) == ()


def test_the_interval_a_flood_starts_in_is_not_learned() -> None:
    # the flood starts half-way through an interval under its threshold:
    # the spoofed sources of that interval never become known
    flood = Spoofed(VICTIM, 120_000, UDP, start=9.5, stop=20)
    clients = Traffic(v4_block("172.20.0.1", 4), VICTIM, 50, UDP)
    det = Detector(DetectConfig(known_min_seconds=2.0))
    for sample in record(15.0, 1.0, [clients, flood]):
        det.observe(sample)
    assert set(det.known_sources(p(VICTIM))) == set(hosts("172.20.0.1", 4))


def test_a_probe_of_a_few_packets_does_not_make_a_source_known() -> None:
    # bots that sent a few packets once in peacetime (a probe), then flood
    probe = Traffic(v4_block("198.18.16.1", 8), VICTIM, 5, UDP, start=3, stop=4)
    clients = Traffic(v4_block("172.20.0.1", 4), VICTIM, 20, UDP)
    det = Detector(DetectConfig(known_min_seconds=2.0))
    for sample in record(9.0, 1.0, [clients, probe]):
        det.observe(sample)
    assert set(det.known_sources(p(VICTIM))) == set(hosts("172.20.0.1", 4))


def _words(first: str, count: int) -> tuple[Any, Any]:
    hi, lo = zip(*(address_words(str(ipaddress.ip_address(first) + i)) for i in range(count)), strict=True)
    return np.array(hi, np.uint64), np.array(lo, np.uint64)


def _feed(known: KnownSources, t: float, first: str, counts: list[float], slot: int = 0) -> None:
    hi, lo = _words(first, len(counts))
    keys = lo ^ hi  # any distinct keys
    quiet = np.ones(slot + 1, bool)
    known.observe(t, np.full(len(counts), slot, np.int64), keys, hi, lo, np.array(counts), quiet)


def test_known_sources_are_bounded_to_the_heaviest_per_destination() -> None:
    known = KnownSources(limit=3, tau=3600, min_seconds=0)
    _feed(known, 1.0, "10.0.0.1", [5, 50, 1, 40, 30, 2])
    _feed(known, 2.0, "10.0.1.1", [1])  # commits the first interval
    _feed(known, 3.0, "10.0.2.1", [1], slot=1)  # another destination, its own bound
    _feed(known, 4.0, "10.0.3.1", [1], slot=1)
    assert known.of(0) == tuple(p(a) for a in ("10.0.0.2", "10.0.0.4", "10.0.0.5"))
    assert known.of(1) == (p("10.0.2.1"),)
    assert len(known) <= 2 * 3


def test_known_sources_decay_so_sources_that_left_are_displaced() -> None:
    known = KnownSources(limit=1, tau=10)
    _feed(known, 1.0, "10.0.0.1", [100])
    _feed(known, 2.0, "10.9.0.1", [0])
    _feed(known, 100.0, "10.0.0.2", [20])  # 98 s later: the first's score has decayed under 1
    _feed(known, 101.0, "10.9.0.1", [0])
    assert known.of(0) == (p("10.0.0.2"),)


def test_a_destination_under_attack_learns_nothing() -> None:
    known = KnownSources(limit=10, tau=3600)
    hi, lo = _words("10.0.0.1", 2)
    slots = np.zeros(2, np.int64)
    busy = np.zeros(1, bool)
    known.observe(1.0, slots, lo, hi, lo, np.array([10.0, 10.0]), busy)
    known.observe(2.0, slots, lo, hi, lo, np.array([10.0, 10.0]), np.ones(1, bool))
    known.observe(3.0, slots, lo, hi, lo, np.array([10.0, 10.0]), busy)  # the quiet interval is dropped
    assert known.of(0) == ()
    assert KnownSources(limit=0, tau=1).of(0) == ()


# --- planning -------------------------------------------------------------------


def event(vector: Vector = "udp", profile: Profile = "spoofed",
          offenders: tuple[Prefix, ...] = ()) -> AttackEvent:
    return AttackEvent(
        id=f"{vector}-203-0-113-10-1", kind="updated", vector=vector, victim=p(VICTIM), profile=profile,
        t=10.0, onset_at=5.0, started_at=8.0, ended_at=None, pps=2e5, bps=1e8, peak_pps=2e5, peak_bps=1e8,
        dropped_pps=0.0, threshold_pps=50_000.0, baseline_pps=0.0, over_threshold=True,
        sources=len(offenders), offenders=offenders,
    )


KNOWN = tuple(hosts("172.20.0.1", 10))


def known_of(victim: Prefix) -> tuple[Prefix, ...]:
    return KNOWN if victim == p(VICTIM) else ()


def test_udp_ceiling_lets_the_known_sources_past_each_within_its_limit() -> None:
    cfg = MitigateConfig(max_prefixes_per_rule=4, allowlist=(p("172.20.0.10/32"),))
    offender = p("172.20.0.3")
    result = Planner(cfg).plan(NOW, [event(profile="diffuse", offenders=(offender,))], (), known=known_of)
    rules = {r.id: r for r in result.rules}
    known_ids = ["auto-known-udp-203-0-113-10", "auto-known-udp-203-0-113-10-2"]
    assert sorted(rules) == sorted([*known_ids, "auto-udp-203-0-113-10", "auto-src-udp-203-0-113-10"])
    listed = [q for rid in known_ids for q in rules[rid].match.src]
    # the offender and the allowlisted source are left out (8 of 10), 4 per rule
    assert listed == [q for q in KNOWN if q not in (offender, p("172.20.0.10"))]
    first = rules[known_ids[0]]
    assert first.match.dst == (p(VICTIM),) and first.match.protocol == 17
    assert (first.action.kind, first.action.pps, first.action.scope) == ("rate_limit", 1000, "per_source")
    assert first.priority == cfg.priority - 1
    # the data plane's order: offender dropped by its deny entry, known sources by
    # their own bucket, everyone else by the ceiling
    compiled = compile_ruleset(result.rule_set(), NOW)

    def verdict(src: str) -> tuple[str, str]:
        v = compiled.evaluate(Packet(ipaddress.ip_address(src), ipaddress.ip_address(VICTIM), 17, 4000, 9000))
        return v.action, v.rule_id

    assert verdict("172.20.0.1") == ("rate_limit", known_ids[0])
    assert verdict("172.20.0.3") == ("drop", "auto-src-udp-203-0-113-10")
    assert verdict("198.18.7.7") == ("rate_limit", "auto-udp-203-0-113-10")
    assert verdict("172.20.0.10")[1] != known_ids[0]


def test_no_known_rule_where_it_does_not_apply() -> None:
    planner = Planner(MitigateConfig())
    for e in (event("syn"), event("icmp"), event(profile="concentrated", offenders=(p("198.18.0.9"),))):
        ids = [r.id for r in planner.plan(NOW, [e], (), known=known_of).rules]
        assert not any(rid.startswith("auto-known") for rid in ids), ids
    assert [r.id for r in Planner().plan(NOW, [event()], ()).rules] == ["auto-udp-203-0-113-10"]
    off = Planner(MitigateConfig(known_per_source_pps=0)).plan(NOW, [event()], (), known=known_of)
    assert [r.id for r in off.rules] == ["auto-udp-203-0-113-10"]
    # the set is frozen while the attack lasts: the plan is steady
    planner = Planner()
    first = planner.plan(NOW, [event()], (), known=known_of)
    again = planner.plan(NOW, [event()], first.rules, known=known_of)
    assert again.empty


def test_known_settings_are_checked_with_their_field() -> None:
    with pytest.raises(InputError, match=r"^known_per_source_pps: -1 is out of range"):
        MitigateConfig(known_per_source_pps=-1)
    with pytest.raises(InputError, match=r"^known_sources: 70000 is out of range 0..65536"):
        DetectConfig(known_sources=70000)
    with pytest.raises(InputError, match=r"^known_min_seconds: -1 is out of range"):
        DetectConfig(known_min_seconds=-1)
    with pytest.raises(InputError, match=r"^known_tau: 0 is out of range"):
        DetectConfig.from_dict({"known_tau": 0})
    assert MitigateConfig.from_dict({"known_per_source_pps": 200}).known_per_source_pps == 200
