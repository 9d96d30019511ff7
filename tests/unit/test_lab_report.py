"""The lab report's attribution of attacks to waves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.lab import report, scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _attack(vector: str, started: float, ended: float | None = None,
            victim: str = "198.18.2.10") -> dict[str, Any]:
    a: dict[str, Any] = {"edge": 0, "id": f"{vector}-{started}", "vector": vector, "victim": victim,
                         "started_s": started}
    if ended is not None:
        a["ended_s"] = ended
    return a


def _wave(name: str) -> scenario.Wave:
    return next(w for w in scenario.load(SCENARIOS / "every-vector.toml").waves if w.name == name)


def test_an_attack_started_in_the_wave_answers_it() -> None:
    http = _wave("http")
    det = report._detected(http, [_attack("many_source", http.start + 0.3)])
    assert det is not None and det["at_s"] == http.start + 0.3 and not det["ongoing"]


def test_an_attack_still_open_from_an_earlier_wave_answers_it_as_ongoing() -> None:
    http = _wave("http")
    det = report._detected(http, [_attack("many_source", 9.3)])
    assert det is not None and det["ongoing"] and det["at_s"] == http.start


def test_an_ended_other_vector_or_other_victim_attack_does_not() -> None:
    http = _wave("http")
    assert report._detected(http, [_attack("many_source", 9.3, ended=http.start - 2)]) is None
    assert report._detected(http, [_attack("gre", http.start + 0.3)]) is None
    assert report._detected(http, [_attack("many_source", http.start + 0.3, victim="198.18.2.200")]) is None


def _xwave(name: str) -> scenario.Wave:
    return next(w for w in scenario.load(SCENARIOS / "x-spaces.toml").waves if w.name == name)


def test_a_carpet_is_answered_by_an_attack_on_a_prefix_only() -> None:
    carpet = _xwave("ca1-udp-08")
    assert carpet.carpet
    one_host = _attack("many_source", carpet.start + 0.4, victim="198.18.2.10")
    assert report._detected(carpet, [one_host]) is None
    det = report._detected(carpet, [_attack("udp", carpet.start + 0.4, victim="198.18.2.0/25")])
    assert det is not None and det["vector"] == "udp"


def test_fleet_attacks_from_the_controller_log() -> None:
    t0 = 100.0
    events = [
        (105.2, {"event": "fleet_attack_started", "attack": "fleet-a1", "vector": "reflection",
                 "victim": "198.18.2.10"}),
        (106.0, {"event": "fleet_attack_updated", "attack": "fleet-a1", "vector": "reflection",
                 "victim": "198.18.2.10"}),
        (109.5, {"event": "fleet_attack_ended", "attack": "fleet-a1", "vector": "reflection",
                 "victim": "198.18.2.10"}),
        (110.0, {"event": "fleet_attack_started", "attack": "fleet-b2", "vector": "source_rate",
                 "victim": ""}),
    ]
    got = report.fleet_attacks(events, t0)
    assert got == [
        {"id": "fleet-a1", "vector": "reflection", "victim": "198.18.2.10", "started_s": 5.2, "ended_s": 9.5},
        {"id": "fleet-b2", "vector": "source_rate", "victim": None, "started_s": 10.0},
    ]


def test_probe_frames_one_batch_per_crafted_vector_with_its_own_ident() -> None:
    from controller.lab import attack, audience

    s = scenario.load(SCENARIOS / "every-vector.toml")
    macs = ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    batches = attack.probe_frames(s.waves, s.topology, "02:00:00:00:00:09", macs, audience.PROBE_IDENT)
    assert set(batches) == {w.vector for w in s.waves} - {"http"}
    for vector, frames in batches.items():
        assert len(frames) == attack.PROBE_PACKETS
        assert len({f[26:30] for f in frames}) <= attack.PROBE_SOURCES  # too few to look like a flood
        idents = {int.from_bytes(f[18:20], "big") for f in frames}
        assert idents == {audience.PROBE_IDENT + scenario.VECTORS.index(vector)}
