"""controller.detection: time to detect, flood by flood, at every phase of the interval (issue 11).

The agent samples every ``interval`` and, when :attr:`Detector.early` asks,
once more a quarter interval later (at least 100 ms:
``controller.agent.daemon.EARLY_LOOK``, ``MIN_INTERVAL``). This replays that
cadence on recorded traffic, on the shipped defaults, for floods of every
vector (and a carpet over a /24) starting at ten phases of an interval, and
checks the bound ``docs/detection.md`` states: an attack starts at the end
of the interval the flood began in, or one early look later, or (its first
slice too thin to ask for one) one interval later; never more than one
interval plus one early look after its first packet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from controller.detection.detector import Detector
from controller.detection.samples import Sample
from tests.unit.recordings import VICTIM, Spoofed, Traffic, background, record, v4_block
from tests.unit.test_detector_carpet import carpet

EARLY_LOOK = 0.25  # controller.agent.daemon.EARLY_LOOK
MIN_INTERVAL = 0.1
Shape = Callable[[float], list[Traffic | Spoofed]]


def _flood(pps: float, count: int, mix: dict[str, float]) -> Shape:
    return lambda start: [background(VICTIM), Traffic(v4_block("198.18.0.1", count), VICTIM, pps / count,
                                                      mix, size=100, start=start, stop=start + 10)]


SHAPES: dict[str, Shape] = {
    "source_rate": _flood(40_000, 1, {"udp": 1}),  # 2x source_pps
    "udp": _flood(60_000, 50, {"udp": 1}),  # 1.2x the floor
    "syn": _flood(20_000, 100, {"syn": 1}),
    "ack": _flood(100_000, 100, {"ack": 1}),
    "icmp": _flood(10_000, 20, {"icmp": 1}),
    "syn_spoofed": lambda start: [background(VICTIM), Spoofed(VICTIM, 30_000, {"syn": 1}, start=start,
                                                               stop=start + 10)],
    "carpet": lambda start: [background(VICTIM), *carpet(61_000, 1, start=start, stop=start + 10)],
}


def _cadence(traffic: Sequence[Traffic | Spoofed], interval: float, until: float) -> list[tuple[float, bool]]:
    """The agent's sample times up to ``until`` and whether each was an early look,
    and the detector's attack starts."""
    det = Detector()
    t, out = 0.0, []
    while t < until:
        dt = max(MIN_INTERVAL, EARLY_LOOK * interval) if det.early else interval
        sample: Sample = record(dt, dt, traffic, t0=t)[0]
        t = round(t + dt, 9)
        started = any(e.kind == "started" for e in det.observe(sample))
        out.append((t, started))
        if started:
            break
    return out


def time_to_detect(shape: Shape, phase: float, interval: float) -> float:
    """Seconds from the flood's first packet to the sample that starts its attack."""
    # the cadence before the flood (background only) fixes the interval boundaries
    quiet = [t for t, _ in _cadence(shape(1e9), interval, 3.0)]
    boundary = quiet[-1]
    start = round(boundary + phase * interval, 9)
    times = _cadence(shape(start), interval, start + 5 * interval)
    assert times[-1][1], f"not detected within 5 intervals (phase {phase})"
    return times[-1][0] - start


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("interval", [1.0, 0.25])
def test_every_flood_starts_within_an_interval_and_a_thin_slice(name: str, interval: float) -> None:
    times = [time_to_detect(SHAPES[name], phase / 10, interval) for phase in range(10)]
    early = max(MIN_INTERVAL, EARLY_LOOK * interval)
    for phase, took in zip(range(10), times, strict=True):
        rest = (1 - phase / 10) * interval
        # detected at the end of its first interval, or one early look later,
        # or (its first slice too thin to ask) one interval later
        assert took <= rest + early + 1e-6 or took <= rest + interval + 1e-6, (phase, times)
    assert max(times) <= interval + early + 1e-6, times
    # a flood near its threshold fills its first, partial interval too thinly to cross it
    # and waits for the early look: the median is within one interval
    assert sorted(times)[len(times) // 2] <= interval + 1e-6, times


def test_a_flood_ramping_up_is_looked_at_again_while_it_rises() -> None:
    # 30k pps of UDP from 5.0, 15k more from 5.6 and from 6.3: 36k, 45k, then over the 50k floor.
    # Each look finds it near its threshold and still rising, so the agent looks again a
    # quarter interval later: the attack starts at the first look past the crossing (6.5),
    # not one whole interval after the last early look (7.25).
    traffic = [background("203.0.113.10")]
    for i, start in enumerate((5.0, 5.6, 6.3)):
        pps = (30_000 if i == 0 else 15_000) / 50
        traffic.append(Traffic(v4_block(f"198.18.{i}.1", 50), "203.0.113.10", pps, {"udp": 1}, size=100,
                               start=start, stop=20))
    quiet = [t for t, _ in _cadence([background("203.0.113.10")], 1.0, 3.0)]
    shift = quiet[-1] - round(quiet[-1])  # the cadence's phase, from the first sample's early look
    times = _cadence([Traffic(tr.sources, tr.dst, tr.pps, tr.mix, tr.size, tr.start + shift, tr.stop)
                      for tr in traffic], 1.0, 10.0)
    assert times[-1][1]
    assert times[-1][0] == pytest.approx(6.5 + shift)
