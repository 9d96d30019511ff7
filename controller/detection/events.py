"""The attack event model: the vectors, and what the detector reports about an attack.

A :class:`~controller.detection.detector.Detector` reports one
:class:`AttackEvent` per active attack per interval (``started``,
``updated``, ``ended``); the planner (:mod:`controller.detection.planner`),
the agent's store and API, and the fleet read them. :data:`VECTOR_CODES` are
the short names attack and rule ids are built from, on the agent and the
fleet alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

from ..addresses import Prefix

__all__ = [
    "DEST_VECTORS",
    "VECTORS",
    "VECTOR_CODES",
    "AttackEvent",
    "EventKind",
    "Profile",
    "SourceRate",
    "Vector",
]

Vector = Literal[
    "syn", "ack", "udp", "icmp", "gre", "fragment", "reflection", "many_source", "source_rate"
]
EventKind = Literal["started", "updated", "ended"]
Profile = Literal["concentrated", "diffuse", "spoofed"]

VECTORS: Final[tuple[Vector, ...]] = get_args(Vector)
DEST_VECTORS: Final[tuple[Vector, ...]] = VECTORS[:8]
"""The vectors that have a victim (a destination), in column order."""

VECTOR_CODES: Final[Mapping[Vector, str]] = {
    "syn": "syn", "ack": "ack", "udp": "udp", "icmp": "icmp", "gre": "gre",
    "fragment": "frag", "reflection": "refl", "many_source": "many", "source_rate": "heavy",
}
"""Short names used in attack and rule ids (``syn-198-18-0-10-4``, ``auto-refl-...``)."""


@dataclass(frozen=True, slots=True)
class SourceRate:
    """One source of an attack and its rate in the interval."""

    address: Prefix
    pps: float
    bps: float = 0.0


@dataclass(frozen=True, slots=True)
class AttackEvent:
    """An attack as the detector sees it after one interval.

    ``pps`` is the vector's rate in this interval, dropped packets
    included; ``bps`` is the victim's total bit rate (the data plane counts
    bytes per destination, not per vector; for ``source_rate``: the
    offenders' bit rate). ``offenders`` are every source named during the
    attack (heaviest peak first, at most ``max_offenders``): what the
    planner blocks. ``applied`` is for the caller: the rule ids the
    planner put in place (:attr:`controller.detection.planner.PlanResult.by_attack`).
    """

    id: str
    kind: EventKind
    vector: Vector
    victim: Prefix | None
    profile: Profile
    t: float
    """Time of the sample that produced this event."""
    onset_at: float
    """Start of the first interval over the threshold."""
    started_at: float
    """When the attack was declared (the end of the N-th interval over)."""
    ended_at: float | None
    pps: float
    bps: float
    peak_pps: float
    peak_bps: float
    dropped_pps: float
    threshold_pps: float
    baseline_pps: float
    over_threshold: bool
    """This interval was still over the start threshold (escalation counts these)."""
    sources: int
    """Active sources towards the victim (``source_rate``: offenders)."""
    pulses: int = 1
    """Times the attack came over its threshold: a pulse wave is one attack
    whose pulses count up (its rules held across the off periods)."""
    top_sources: tuple[SourceRate, ...] = ()
    offenders: tuple[Prefix, ...] = ()
    applied: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (the API's attack event)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "vector": self.vector,
            "victim": None if self.victim is None else str(self.victim),
            "profile": self.profile,
            "t": self.t,
            "onset_at": self.onset_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pps": self.pps,
            "bps": self.bps,
            "peak_pps": self.peak_pps,
            "peak_bps": self.peak_bps,
            "dropped_pps": self.dropped_pps,
            "threshold_pps": self.threshold_pps,
            "baseline_pps": self.baseline_pps,
            "over_threshold": self.over_threshold,
            "sources": self.sources,
            "pulses": self.pulses,
            "top_sources": [
                {"address": str(s.address), "pps": s.pps, "bps": s.bps} for s in self.top_sources
            ],
            "offenders": len(self.offenders),
            "applied": list(self.applied),
        }
