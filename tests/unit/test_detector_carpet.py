"""controller.detection: carpet bombing, a flood spread over a protected prefix (issue 11).

No single address of the prefix crosses a threshold; the prefix does. The
detector counts every destination in its group (its /24 or /64, or the
protected prefix holding it when that is longer), reports the attack on the
prefix, and the planner drops the sources when it can name them, limiting
the vector to the prefix only when it cannot. Every case runs the shipped
defaults (``DetectConfig()``, ``MitigateConfig()``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np
import pytest

from controller.addresses import parse_prefix
from controller.detection.config import DetectConfig
from controller.detection.detector import Detector
from controller.detection.events import AttackEvent
from controller.detection.samples import address_from_words, address_words
from controller.detection.tables import group_words
from controller.errors import FieldError
from tests.unit.recordings import VICTIM, Traffic, background, record, v4_block
from tests.unit.test_detector_shapes import of_kind, run

PREFIX = "203.0.113.0/24"
HOSTS = [str(a) for a in ipaddress.IPv4Network(PREFIX).hosts()]  # 254 addresses


def carpet(total_pps: float, bots_per_host: int, start: float = 5.0, stop: float = 20.0,
           first_bot: int = int(ipaddress.IPv4Address("198.18.0.1")), mix: dict[str, float] | None = None,
           hosts: Sequence[str] = HOSTS) -> list[Traffic]:
    """``total_pps`` spread evenly over ``hosts``, each hit by its own ``bots_per_host`` bots."""
    out = []
    each = total_pps / len(hosts) / bots_per_host
    for i, host in enumerate(hosts):
        first = str(ipaddress.IPv4Address(first_bot + i * bots_per_host))
        out.append(Traffic(v4_block(first, bots_per_host), host, each, mix or {"udp": 1}, size=512,
                           start=start, stop=stop))
    return out


def by_victim(events: Sequence[AttackEvent]) -> set[tuple[str, str]]:
    return {(e.vector, str(e.victim)) for e in events}


def test_a_carpet_from_nameable_sources_is_the_prefix_attack_and_its_sources_are_dropped() -> None:
    # 61k pps over 254 addresses (240 pps each, the UDP floor is 50k per address), one bot each
    samples = record(30.0, 1.0, [background(VICTIM), *carpet(61_000, 1)])
    _, events, history = run(samples)
    (started,) = of_kind(events, "started")
    assert (started.vector, str(started.victim)) == ("udp", PREFIX)
    assert started.t == 6.0  # the first interval of the flood
    assert by_victim(events) == {("udp", PREFIX)}  # no address was attacked on its own
    assert started.profile == "concentrated"
    rules = {r.id: r for r in history[6][1]}
    # the bots, 198.18.0.1-254, are dropped as their /24; no limit on the victim prefix
    assert set(rules) == {"auto-src-udp-203-0-113-0-24"}
    assert [str(p) for p in rules["auto-src-udp-203-0-113-0-24"].match.src] == ["198.18.0.0/24"]
    (ended,) = of_kind(events, "ended")
    assert 20 + CFG.end_intervals <= ended.t <= 21 + CFG.end_intervals


def test_a_carpet_from_sources_too_light_to_name_is_limited_on_the_prefix() -> None:
    # 8 bots per address at 30 pps each: under offender_pps, nobody can be named
    samples = record(12.0, 1.0, [background(VICTIM), *carpet(61_000, 8)])
    _, events, history = run(samples)
    (started,) = of_kind(events, "started")
    assert (started.vector, str(started.victim), started.profile) == ("udp", PREFIX, "diffuse")
    rules = {r.id: r for r in history[6][1]}
    assert set(rules) == {"auto-udp-203-0-113-0-24"}
    limit = rules["auto-udp-203-0-113-0-24"]
    assert [str(p) for p in limit.match.dst] == [PREFIX] and limit.match.protocol == 17
    assert limit.action.kind == "rate_limit"


def test_a_syn_carpet() -> None:
    samples = record(10.0, 1.0, [background(VICTIM), *carpet(20_000, 1, mix={"syn": 1})])
    _, events, _ = run(samples)
    assert by_victim(of_kind(events, "started")) == {("syn", PREFIX)}


def test_a_flood_on_one_address_is_that_address_attack_not_the_prefix() -> None:
    flood = Traffic(v4_block("198.18.0.1", 50), VICTIM, 1_200, {"udp": 1}, size=512, start=5, stop=20)
    # and a little UDP everywhere else: the prefix counts only what no address attack explains
    samples = record(12.0, 1.0, [background(VICTIM), flood, *carpet(5_000, 1, first_bot=0xC6130001)])
    _, events, _ = run(samples)
    assert by_victim(of_kind(events, "started")) == {("udp", VICTIM)}


def test_traffic_under_the_floor_spread_over_the_prefix_starts_nothing() -> None:
    samples = record(12.0, 1.0, [background(VICTIM), *carpet(30_000, 1)])
    _, events, _ = run(samples)
    assert events == []


def test_a_prefix_baseline_is_learned_persisted_and_thresholded() -> None:
    det = Detector()
    for s in record(30.0, 1.0, [background(h, clients=2, first=f"172.16.{i}.1") for i, h in
                                enumerate(HOSTS[:40])]):
        det.observe(s)
    assert det.baseline(PREFIX, "ack") > 0
    assert det.baseline(PREFIX, "ack") > det.baseline(HOSTS[0], "ack")
    saved = det.baselines()
    assert PREFIX in saved
    again = Detector()
    again.load_baselines(saved)
    assert again.baseline(PREFIX, "ack") == pytest.approx(det.baseline(PREFIX, "ack"))
    assert again.threshold(PREFIX, "udp") == CFG.udp.pps


def test_groups_follow_the_protected_prefix_when_it_is_longer() -> None:
    hi = np.array([address_words(a)[0] for a in ("203.0.113.7", "203.0.113.200", "2001:db8:d::10",
                                                    "198.51.100.1")], np.uint64)
    lo = np.array([address_words(a)[1] for a in ("203.0.113.7", "203.0.113.200", "2001:db8:d::10",
                                                    "198.51.100.1")], np.uint64)
    protected = (parse_prefix("203.0.113.128/25"), parse_prefix("2001:db8:d::/48"))
    g_hi, g_lo, plen = group_words(hi, lo, (24, 64), protected)
    assert plen.tolist() == [24, 25, 64, 24]
    nets = [f"{address_from_words(h, lw)}/{n}" for h, lw, n in zip(g_hi, g_lo, plen, strict=True)]
    assert nets == ["203.0.113.0/24", "203.0.113.128/25", "2001:db8:d::/64", "198.51.100.0/24"]
    # off for a family: no group
    assert group_words(hi, lo, (0, 64))[2].tolist() == [0, 0, 64, 0]


def test_an_edge_protecting_half_a_24_reports_its_half() -> None:
    half = HOSTS[127:]  # 203.0.113.128 - .254
    samples = record(10.0, 1.0, [*carpet(60_000, 1, hosts=half)])
    det = Detector(protected=(parse_prefix("203.0.113.128/25"),))
    events: list[AttackEvent] = []
    for s in samples:
        events += det.observe(s)
    assert by_victim(of_kind(events, "started")) == {("udp", "203.0.113.128/25")}


def test_carpet_lengths_are_checked() -> None:
    with pytest.raises(FieldError, match="carpet_v4"):
        DetectConfig(carpet_v4=32)
    assert DetectConfig.from_dict({"carpet_v6": 0}).carpet_v6 == 0


def test_carpet_detection_can_be_turned_off() -> None:
    samples = record(10.0, 1.0, [*carpet(61_000, 1)])
    _, events, _ = run(samples, DetectConfig(carpet_v4=0))
    assert events == []


CFG = DetectConfig()


def test_a_carpets_bots_never_become_known_sources() -> None:
    """Each address of a carpet gets little, but its group is attacked: no
    address learns a bot, so the prefix's known rule cannot let the bots past."""
    clients = Traffic(v4_block("172.20.0.1", 4), VICTIM, 50, {"udp": 1}, size=200)
    det = Detector(DetectConfig(known_min_seconds=2.0, carpet_v4=24))
    for sample in record(25.0, 1.0, [background(VICTIM), clients, *carpet(61_000, 8, start=8.0, stop=24.0)]):
        det.observe(sample)
    known = {str(p) for p in det.known_sources(parse_prefix(PREFIX))}
    assert known == {f"172.20.0.{i}" for i in range(1, 5)}
