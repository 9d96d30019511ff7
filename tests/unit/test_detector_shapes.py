"""controller.detection: attack shapes on recorded counter sequences (issue 11).

Pulse waves, ramps, floods starting inside an interval, absolute ceilings,
offenders that stop, and the legitimate shapes that must not start anything
(a flash crowd, one client's large download). Every case runs the shipped
defaults (``DetectConfig()``, ``MitigateConfig()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from controller.detection.config import DetectConfig, MitigateConfig
from controller.detection.detector import Detector
from controller.detection.events import AttackEvent
from controller.detection.planner import Planner
from controller.detection.samples import Sample
from controller.rules.model import Rule
from tests.unit.recordings import VICTIM, WEB_MIX, Traffic, background, bots, record, v4_block

CFG = DetectConfig()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run(samples: Sequence[Sample], config: DetectConfig | None = None
        ) -> tuple[Detector, list[AttackEvent], list[tuple[float, tuple[Rule, ...]]]]:
    """Detector and planner on the defaults; the events and the rules after each sample."""
    det, planner = Detector(config), Planner(MitigateConfig())
    events: list[AttackEvent] = []
    rules: tuple[Rule, ...] = ()
    history = []
    for s in samples:
        out = det.observe(s)
        events += out
        rules = planner.plan(NOW + timedelta(seconds=s.t), out, rules).rules
        history.append((s.t, rules))
    return det, events, history


def of_kind(events: Sequence[AttackEvent], kind: str) -> list[AttackEvent]:
    return [e for e in events if e.kind == kind]


def udp_flood(pps: float, count: int = 50, start: float = 5.0, stop: float = 20.0,
              first: str = "198.18.0.1") -> Traffic:
    return Traffic(bots(count, first), VICTIM, pps / count, {"udp": 1}, size=512, start=start, stop=stop)


# --- pulse waves ------------------------------------------------------------------------------


def test_a_pulse_wave_is_one_attack_held_across_its_off_periods() -> None:
    # 60k pps, 2 s on / 3 s off, six pulses, starting inside an interval
    first = 5.4
    pulses = [udp_flood(60_000, start=first + 5 * i, stop=first + 5 * i + 2) for i in range(6)]
    last_off = first + 5 * 5 + 2
    samples = record(60.0, 1.0, [background(VICTIM), *pulses])
    _, events, history = run(samples)
    started = of_kind(events, "started")
    assert [(e.vector, e.pulses) for e in started] == [("udp", 1)]
    assert started[0].t <= first + 2  # within the first pulse
    (ended,) = of_kind(events, "ended")
    assert ended.id == started[0].id and ended.pulses == 6
    # held for twice the longest off period (3 s) after the last interval over
    assert ended.t >= last_off + CFG.pulse_hold * 3
    assert ended.t <= last_off + CFG.pulse_hold * 3 + 2
    # the drop rule is in force from the first pulse's detection to past the last pulse
    covered = [t for t, rules in history if any(r.id.startswith("auto-src-udp") for r in rules)]
    assert covered[0] == started[0].t
    assert all(t in covered for t, _ in history if started[0].t <= t <= last_off + 1)


def test_pulses_counted_on_the_events() -> None:
    pulses = [udp_flood(60_000, start=5 + 4 * i, stop=5 + 4 * i + 2) for i in range(3)]
    _, events, _ = run(record(30.0, 1.0, [background(VICTIM), *pulses]))
    assert {e.id for e in events} == {events[0].id}
    assert [e.pulses for e in events if e.kind == "updated" and e.over_threshold] == [1, 2, 2, 3, 3]
    assert events[-1].to_dict()["pulses"] == 3


# --- baselines, ramps, ceilings ------------------------------------------------------------------


def test_a_ramp_just_under_the_floor_does_not_teach_the_baseline() -> None:
    # 3 s just under the 50k UDP floor, then 120k from 50 sources (2.4k pps each)
    ramp = udp_flood(49_000, start=5, stop=8, first="198.18.5.1")
    flood = udp_flood(120_000, start=8, stop=20)
    det, events, _ = run(record(25.0, 1.0, [background(VICTIM), ramp, flood]))
    started = of_kind(events, "started")
    assert [(e.vector, e.t) for e in started] == [("udp", 9.0)]
    assert started[0].threshold_pps == CFG.udp.pps
    assert det.baseline(VICTIM, "udp") < 0.01 * CFG.udp.pps


def test_the_interval_a_flood_starts_in_is_not_learned() -> None:
    # 0.1 s of a 60k flood falls in [10, 11): 6k pps, under every threshold
    flood = udp_flood(60_000, start=10.9, stop=20)
    det = Detector()
    for s in record(11.0, 1.0, [background(VICTIM), flood]):
        det.observe(s)
    assert det.baseline(VICTIM, "udp") == 0.0
    assert det.early  # rising towards the threshold: look again soon


def test_an_early_look_starts_a_flood_a_quarter_interval_later() -> None:
    flood = udp_flood(60_000, start=10.6, stop=20)  # [10, 11) sees 24k pps: under the 50k floor
    traffic = [background(VICTIM), flood]
    det = Detector()
    events: list[AttackEvent] = []
    for s in record(11.0, 1.0, traffic):
        events += det.observe(s)
    assert not events and det.early
    events += det.observe(record(0.25, 0.25, traffic, t0=11.0)[0])
    assert [(e.kind, e.vector, e.t) for e in events] == [("started", "udp", 11.25)]
    assert not det.early


def test_no_baseline_lifts_a_threshold_over_its_ceiling() -> None:
    det = Detector()
    det.load_baselines({VICTIM: {"udp": 1e9}})
    assert det.threshold(VICTIM, "udp") == CFG.udp.ceiling == 10 * CFG.udp.pps
    flood = udp_flood(600_000, count=500)
    events = [e for s in record(8.0, 1.0, [flood]) for e in det.observe(s)]
    assert [e.vector for e in of_kind(events, "started")] == ["udp"]


def test_a_configured_ceiling() -> None:
    from controller.detection.config import VectorThreshold
    from controller.errors import FieldError

    assert VectorThreshold(1000, ceiling=5000).ceiling == 5000
    with pytest.raises(FieldError, match=r"^ceiling: 500 is below pps 1000"):
        VectorThreshold(1000, ceiling=500)
    cfg = DetectConfig.from_dict({"udp": {"pps": 20_000, "ceiling": 80_000}})
    det = Detector(cfg)
    det.load_baselines({VICTIM: {"udp": 50_000.0}})
    assert det.threshold(VICTIM, "udp") == 80_000


# --- release ------------------------------------------------------------------------------------


def test_an_offender_that_stops_is_released_while_the_flood_goes_on() -> None:
    flood = udp_flood(60_000, count=40, stop=40)
    nat = Traffic(v4_block("100.80.0.1", 1), VICTIM, 1500, {"udp": 1}, size=512, start=5, stop=12)
    _, events, history = run(record(30.0, 1.0, [background(VICTIM), flood, nat]))
    nat_src = "100.80.0.1"
    by_t = {e.t: e for e in events}
    assert nat_src in map(str, by_t[6.0].offenders)
    released = [t for t, e in sorted(by_t.items()) if nat_src not in map(str, e.offenders) and t > 6]
    assert released and released[0] <= 12 + CFG.end_intervals
    # (the planner carries a victim's drop list while its flood lasts, for restarts:
    # the rule itself lets the source go when the attack ends, after the grace TTL)
    assert any(r.id.startswith("auto-src-udp") for r in dict(history)[released[0]])


# --- legitimate shapes ----------------------------------------------------------------------------


def test_a_flash_crowd_starts_nothing() -> None:
    # 60 clients, then 600 (tenfold within 5 s), each a web client (handshakes and requests)
    before = background(VICTIM, clients=60, pps=8.0)
    crowd = [Traffic(v4_block(f"100.{64 + i}.0.1", 108), VICTIM, 8.0, WEB_MIX, size=700, start=20 + i)
             for i in range(5)]
    _, events, history = run(record(60.0, 1.0, [before, *crowd]))
    assert events == []
    assert all(rules == () for _, rules in history)


def test_one_clients_large_download_starts_nothing() -> None:
    # a 400 Mbit/s download from the victim: ~33k data packets/s out, ~17k ACKs/s in
    # from one client, and its other traffic; next to the usual clients
    acks = Traffic(v4_block("100.70.0.9", 1), VICTIM, 17_000, {"ack": 1}, size=52, start=10, stop=50)
    _, events, history = run(record(60.0, 1.0, [background(VICTIM), acks]))
    assert events == []
    assert all(rules == () for _, rules in history)


def test_a_single_heavy_source_rising_asks_for_an_early_look() -> None:
    # one source at 38k pps (over source_pps 20k) from 10.6: [10, 11) sees 15.2k
    heavy = Traffic(v4_block("100.90.0.1", 1), VICTIM, 38_000, {"udp": 1}, size=512, start=10.6)
    traffic = [background(VICTIM), heavy]
    det = Detector()
    events = [e for s in record(11.0, 1.0, traffic) for e in det.observe(s)]
    assert not events and det.early
    events = det.observe(record(0.25, 0.25, traffic, t0=11.0)[0])
    assert [(e.kind, e.vector, e.t) for e in events] == [("started", "source_rate", 11.25)]
    # a steady client at a tenth of source_pps asks once, not every interval
    steady = Traffic(v4_block("100.91.0.1", 1), VICTIM, 3000, {"ack": 1}, size=52)
    det = Detector()
    looks = []
    for s in record(10.0, 1.0, [background(VICTIM), steady]):
        det.observe(s)
        looks.append(det.early)
    assert looks[0] and not any(looks[1:])


def test_the_interval_an_exact_deny_takes_effect_in_does_not_broaden_the_mitigation() -> None:
    # 50 bots flood; exact deny entries drop them from 7.3, inside the interval [7, 8):
    # their rows then hold the passed part by class and the denied part as bare packets
    # and drops, so that interval names 30% of the flood. It must not add a victim-wide limit.
    flood = Traffic(v4_block("198.18.0.1", 50), VICTIM, 1200, {"udp": 1}, size=512, start=5.0, stop=20.0,
                    denied_from=8.0)
    samples = record(14.0, 1.0, [background(VICTIM), flood])
    rows = samples[7].sources  # [7, 8)
    bots = rows["packets"] >= 1000
    rows["udp"][bots] = (rows["packets"][bots] * 3) // 10
    rows["drops"][bots] = rows["packets"][bots] - rows["udp"][bots]
    samples[7].destinations["drops"][:] += rows["drops"][bots].sum()
    _, events, history = run(samples)
    udp = [e for e in events if e.vector == "udp"]
    assert udp and {e.profile for e in udp} == {"concentrated"}, [(e.t, e.profile) for e in udp]
    assert not any(r.id == "auto-udp-203-0-113-10" for _, rules in history for r in rules)
