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
