"""The detection package's configuration: the ``[detect]`` and ``[mitigate]`` tables.

:class:`DetectConfig` (with a :class:`VectorThreshold` per destination
vector) sets the detector's thresholds, intervals and source tracking;
:class:`MitigateConfig` sets how the planner mitigates and the guards it
keeps. Both check every field on construction through
:mod:`controller.validate`, so a wrong value is a
:class:`~controller.errors.FieldError` naming the field
(``syn.pps: 0 is out of range; must be above 0 and at most 1e+13``), and
read their TOML table with ``from_dict``. ``docs/detection.md`` lists every
setting and its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, cast

from ..addresses import Prefix, parse_prefix
from ..dataplane.protect import REFLECTION_PORTS
from ..errors import FieldError, InputError
from ..rules.model import MAX_CREATED_BY, MAX_PRIORITY, MAX_RATE
from ..validate import at, check_bool, check_int, check_keys, check_number, join
from .events import DEST_VECTORS, Vector

__all__ = [
    "KNOWN_PRIORITY_OFFSET",
    "MAX_DETECT_RATE",
    "PER_SOURCE_PRIORITY_OFFSET",
    "DetectConfig",
    "MitigateConfig",
    "ReflectionAction",
    "VectorThreshold",
]

MAX_DETECT_RATE: Final = 1e13
"""The highest rate (packets or bits per second) a detector threshold or a
learned baseline may be."""
PER_SOURCE_PRIORITY_OFFSET: Final = 50
"""The many-source per-source limit matches everything to the victim and is
terminal, so it sits after the narrower vector signatures (this much after
``priority``)."""

KNOWN_PRIORITY_OFFSET: Final = 1
"""The known sources' per-source limit of a UDP flood sits this much before
the victim's UDP ceiling (at ``priority``); at priority 0 its id
(``auto-known-...``) still sorts before the ceiling's (``auto-udp-...``)."""

ReflectionAction = Literal["rate_limit", "drop"]


# --- [detect] ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VectorThreshold:
    """Start threshold of one destination vector.

    An interval is over the threshold when the vector's rate is at least
    ``min(max(pps, factor x baseline), ceiling)`` and at least ``min_share``
    of all packets to the destination: no baseline, however high it was
    learned, lifts the threshold above ``ceiling``.
    """

    pps: float
    """Absolute floor, packets per second (what a destination with no baseline yet gets)."""
    factor: float = 3.0
    """k: how many times its learned baseline the destination may receive."""
    min_share: float = 0.0
    """The vector's minimum share of the destination's packets (0: no test)."""
    ceiling: float = 0.0
    """Absolute ceiling, packets per second: the threshold is never above it,
    whatever the baseline (the service's or the link's capacity). 0: ten
    times ``pps``."""

    def __post_init__(self) -> None:
        check_number(self.pps, "pps", 0, MAX_DETECT_RATE, above=True)
        check_number(self.factor, "factor", 1, 1000)
        check_number(self.min_share, "min_share", 0, 1)
        check_number(self.ceiling, "ceiling", 0, MAX_DETECT_RATE)
        if not self.ceiling:
            object.__setattr__(self, "ceiling", min(MAX_DETECT_RATE, 10.0 * self.pps))
        elif self.ceiling < self.pps:
            raise FieldError("ceiling", f"{self.ceiling:g} is below pps {self.pps:g}; "
                                        "the ceiling caps what the baseline adds to the floor")

    @classmethod
    def from_dict(cls, data: object, path: str = "") -> VectorThreshold:
        """Read a vector's table (``[detect.syn]``); ``path`` names it in errors."""
        if not isinstance(data, Mapping):
            raise FieldError(path, f"expected a table with pps, factor, min_share, ceiling, got {data!r}")
        check_keys(data, ("pps", "factor", "min_share", "ceiling"), path)
        if "pps" not in data:
            raise FieldError(join(path, "pps"), "missing")
        with at(path):
            threshold = cls(**data)
        return threshold


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """Detector thresholds; the defaults suit an edge server with no history.

    Every rate is per second; ``*_intervals`` count samples, whatever their
    length. Floors must sit above the legitimate rate of the busiest
    protected destination until its baseline is learned (or seeded with
    :meth:`~controller.detection.detector.Detector.load_baselines`).
    """

    start_intervals: int = 1
    """N: intervals in a row over the threshold before an attack starts
    (floors sit above any legitimate rate, and nothing suspicious is learned
    into a baseline, so one interval over is already a flood)."""
    end_intervals: int = 5
    """M: intervals in a row under the end threshold before it ends (and
    before a named offender that stopped sending while the flood goes on is
    released); a pulsing attack is also held for its learned hold-down."""
    end_fraction: float = 0.5
    """End threshold = this fraction of the start threshold (dropped packets count)."""
    baseline_tau: float = 600.0
    """Time constant of the baseline EWMA, seconds. A baseline starts at 0
    and learns at this pace (no bias correction: a few seconds just under a
    floor teach it next to nothing), only from intervals where nothing of
    the destination was over a threshold or under attack, and neither was
    the next interval (the one a flood starts in is never learned)."""
    early_fraction: float = 0.1
    """A destination vector rising to this share of its threshold (from
    under it) asks for an early look: :attr:`Detector.early` is True and the
    agent samples again after a quarter interval instead of a whole one."""
    pulse_hold: float = 2.0
    """A pulsing attack (back over its threshold after an off period) is
    held at least this many times its longest off period after its last
    interval over the threshold ..."""
    max_pulse_hold: float = 300.0
    """... at most this many seconds."""
    window: float = 5.0
    """Seconds a source stays "active" after its last packet (source counts, churn)."""

    carpet_v4: int = 24
    """Carpet bombing: every IPv4 destination is also counted in its /24 (or in
    the protected prefix holding it, when that is longer), and a flood the
    prefix receives, of what no attack on one of its addresses explains, is an
    attack on the prefix, with the per-destination thresholds. 0: off."""
    carpet_v6: int = 64
    """... and every IPv6 destination in its /64. 0: off."""

    source_pps: float = 20_000.0
    """``source_rate``: one source sending this many packets/s ..."""
    source_bps: float = 200_000_000.0
    """... or this many bits/s, to any destination."""

    syn: VectorThreshold = VectorThreshold(10_000, 4.0, 0.25)
    ack: VectorThreshold = VectorThreshold(50_000, 3.0)
    udp: VectorThreshold = VectorThreshold(50_000, 3.0)
    icmp: VectorThreshold = VectorThreshold(5_000, 4.0)
    gre: VectorThreshold = VectorThreshold(5_000, 4.0)
    fragment: VectorThreshold = VectorThreshold(5_000, 4.0)
    reflection: VectorThreshold = VectorThreshold(10_000, 4.0)
    many_source: VectorThreshold = VectorThreshold(5_000, 3.0)
    """``many_source``: packets to the destination that no other attack on it explains."""

    many_min_sources: int = 1000
    """``many_source``: at least this many active sources towards the destination ..."""
    many_source_factor: float = 3.0
    """... and this many times its baseline of active sources ..."""
    many_max_source_pps: float = 50.0
    """... at least half of them each sending at most this many packets/s."""
    many_newcomer_lead: float = 2.0
    """Sources first seen up to this many seconds before the surge are its
    newcomers: the offenders of a many-source attack (heaviest first). Never
    one first seen within ``window`` of the detector's start: its age is unknown."""

    spoof_new_per_s: float = 1000.0
    """``spoofed`` profile: at least this many new, tiny sources per second ..."""
    spoof_share: float = 0.5
    """... making up at least this share of the interval's sources to the destination."""
    spoof_tiny_packets: int = 2
    """A new source is tiny when it sent at most this many packets in its first interval."""

    offender_pps: float = 100.0
    """A source is named an offender of a destination flood from this rate of the vector's packets ..."""
    offender_fraction: float = 0.25
    """... and from this fraction of the flood's typical offender rate: the rate of the
    lightest of the heaviest sources over ``offender_pps`` that together carry three
    quarters of their packets (a legitimate client of the victim is not a bot because
    it sends more than ``offender_pps``; it is one when it sends like the flood's sources)."""
    concentrated_share: float = 0.5
    """``concentrated`` profile: named offenders carry at least this share of the vector."""
    max_offenders: int = 10_000
    """Offenders kept per attack (the heaviest by peak rate)."""
    report_sources: int = 20
    """Top sources listed in each event."""
    max_tracked_sources: int = 2_000_000
    """Sources remembered for churn and source counts; the least recent go first."""
    known_sources: int = 1024
    """Peacetime UDP sources learned per destination (the heaviest, scored by
    packets): during a UDP flood they pass the victim-wide ceiling within
    ``[mitigate] known_per_source_pps``. 0 learns none."""
    known_tau: float = 3600.0
    """Seconds over which a known source's score decays (a source that left is
    displaced by current ones)."""
    known_min_seconds: float = 10.0
    """A source is known once the quiet intervals it sent UDP in span this
    many seconds: a few packets (a bot's probe before its flood) do not make one."""

    def __post_init__(self) -> None:
        check_int(self.start_intervals, "start_intervals", 1, 1000)
        check_int(self.end_intervals, "end_intervals", 1, 100_000)
        check_number(self.end_fraction, "end_fraction", 0, 1, above=True)
        check_number(self.baseline_tau, "baseline_tau", 1, 30 * 86400)
        check_number(self.early_fraction, "early_fraction", 0, 1, above=True)
        check_number(self.pulse_hold, "pulse_hold", 0, 100)
        check_number(self.max_pulse_hold, "max_pulse_hold", 0, 86400)
        check_number(self.window, "window", 0.1, 3600)
        check_int(self.carpet_v4, "carpet_v4", 0, 31)
        check_int(self.carpet_v6, "carpet_v6", 0, 127)
        check_number(self.source_pps, "source_pps", 0, MAX_DETECT_RATE, above=True)
        check_number(self.source_bps, "source_bps", 0, MAX_DETECT_RATE, above=True)
        for name in DEST_VECTORS:
            value = getattr(self, name)
            if not isinstance(value, VectorThreshold):
                raise FieldError(name, f"expected a VectorThreshold, got {type(value).__name__}")
        if self.many_source.min_share:
            raise FieldError("many_source.min_share", "not used by this vector; leave it 0")
        check_int(self.many_min_sources, "many_min_sources", 1, 10**9)
        check_number(self.many_source_factor, "many_source_factor", 1, 1000)
        check_number(self.many_max_source_pps, "many_max_source_pps", 0, MAX_DETECT_RATE, above=True)
        check_number(self.many_newcomer_lead, "many_newcomer_lead", 0, 3600)
        check_number(self.spoof_new_per_s, "spoof_new_per_s", 0, MAX_DETECT_RATE, above=True)
        check_number(self.spoof_share, "spoof_share", 0, 1, above=True)
        check_int(self.spoof_tiny_packets, "spoof_tiny_packets", 1, 1000)
        check_number(self.offender_pps, "offender_pps", 0, MAX_DETECT_RATE, above=True)
        check_number(self.offender_fraction, "offender_fraction", 0, 1)
        check_number(self.concentrated_share, "concentrated_share", 0, 1, above=True)
        check_int(self.max_offenders, "max_offenders", 1, 10_000_000)
        check_int(self.report_sources, "report_sources", 0, 10_000)
        check_int(self.max_tracked_sources, "max_tracked_sources", 1000, 100_000_000)
        check_int(self.known_sources, "known_sources", 0, 65536)
        check_number(self.known_tau, "known_tau", 1, 30 * 86400)
        check_number(self.known_min_seconds, "known_min_seconds", 0, 86400)
        if self.many_max_source_pps >= self.source_pps:
            raise FieldError(
                "many_max_source_pps",
                f"{self.many_max_source_pps:g} is not below source_pps {self.source_pps:g}; "
                "many-source sources are the ones each under the per-source threshold",
            )

    @classmethod
    def from_dict(cls, data: object) -> DetectConfig:
        """Read a ``[detect]`` table; vector thresholds are sub-tables (``[detect.syn]``)."""
        if not isinstance(data, Mapping):
            raise FieldError("", f"expected a table, got {data!r}")
        known = tuple(f.name for f in fields(cls))
        check_keys(data, known)
        values: dict[str, Any] = dict(data)
        for name in DEST_VECTORS:
            if name in values:
                values[name] = VectorThreshold.from_dict(values[name], name)
        return cls(**values)

    def threshold(self, vector: Vector) -> VectorThreshold:
        if vector == "source_rate":
            raise InputError("vector: source_rate has source_pps/source_bps, not a VectorThreshold")
        return cast(VectorThreshold, getattr(self, vector))


# --- [mitigate] ----------------------------------------------------------------


def _prefixes(value: object, path: str) -> tuple[Prefix, ...]:
    if isinstance(value, str | Prefix):
        value = (value,)
    if not isinstance(value, list | tuple):
        raise FieldError(path, f"expected a list of prefixes, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            try:
                item = parse_prefix(item, field=f"{path}[{i}]")
            except InputError as exc:
                raise FieldError(f"{path}[{i}]", str(exc).removeprefix(f"{path}[{i}]: ")) from None
        if not isinstance(item, Prefix):
            raise FieldError(f"{path}[{i}]", f"expected a prefix, got {item!r}")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MitigateConfig:
    """How the planner mitigates, and the guards it keeps.

    Times are seconds. ``allowlist`` and ``management`` take
    :class:`~controller.addresses.Prefix` objects or strings.
    """

    allowlist: tuple[Prefix, ...] = ()
    """Sources never dropped or limited by a source rule (the data plane's allow entries)."""
    management: tuple[Prefix, ...] = ()
    """Management prefixes: the same guarantee (the data plane always passes them)."""
    monitor: bool = False
    """Plan, but mark the result not to be enforced: the caller reports "would do"."""
    rule_ttl: float = 300.0
    """TTL of an automatic rule, extended while its attack lasts."""
    grace_ttl: float = 5.0
    """How long a rule stays after no active attack wants it any more (a
    pulsing attack is held by the detector itself, for its learned hold-down)."""
    aggregate_min_sources: int = 8
    """K: this many offenders in one /24 (v4) or /48 (v6) are dropped as the prefix."""
    aggregate_v4: int = 24
    aggregate_v6: int = 48
    broadest_v4: int = 24
    """No automatic source rule is broader than this (IPv4) ..."""
    broadest_v6: int = 48
    """... or this (IPv6)."""
    max_prefixes_per_rule: int = 4096
    max_rules_per_attack: int = 32
    max_rules_total: int = 200
    reflection_action: ReflectionAction = "rate_limit"
    reflection_pps: int = 1000
    """Reflection rate limit per port (one bucket per port rule), at least; or
    ``ceiling_factor`` x the victim's reflection baseline if higher."""
    reflection_ports: tuple[int, ...] = tuple(sorted(REFLECTION_PORTS))
    reflection_fragments: bool = True
    """Also limit UDP fragments to the victim (amplified answers are often fragmented)."""
    ceiling_pps: int = 1000
    """Aggregate limit of a vector to a victim (diffuse/spoofed floods), at least ..."""
    ceiling_factor: float = 2.0
    """... or this many times the victim's baseline of that vector."""
    proxy_per_source_pps: int = 1000
    """Many-source floods: packets/s each source may send to the victim. Every
    client of the victim gets this limit, so it sits above what one legitimate
    client (a download's ACKs, a NAT gateway) sends; the moderate proxies
    themselves are stopped by the newcomer drops, not by this limit."""
    proxy_drop_sources: int = 1000
    """Many-source floods: the heaviest newcomers dropped outright."""
    known_per_source_pps: int = 1000
    """UDP floods with a victim-wide ceiling: packets/s each source the victim
    knew in peacetime (``[detect] known_sources``) may send past the ceiling,
    one rule before it; 0 turns this off (everyone shares the ceiling)."""
    escalate_after: int = 10
    """E: intervals over threshold with a rate limit in force before it becomes a drop."""
    escalate_reflection: bool = True
    """Reflection limits escalate (UDP from those ports to the victim is rarely wanted)."""
    escalate_aggregate: bool = False
    """Victim-wide limits (vector ceilings, many-source per-source) escalate too:
    that drops the vector to the victim for everyone, so off by default."""
    priority: int = 500
    created_by: str = "breakwater-agent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowlist", _prefixes(self.allowlist, "allowlist"))
        object.__setattr__(self, "management", _prefixes(self.management, "management"))
        check_bool(self.monitor, "monitor")
        check_number(self.rule_ttl, "rule_ttl", 1, 86400)
        check_number(self.grace_ttl, "grace_ttl", 0, 86400)
        check_int(self.aggregate_min_sources, "aggregate_min_sources", 2, 1 << 20)
        check_int(self.broadest_v4, "broadest_v4", 8, 32)
        check_int(self.broadest_v6, "broadest_v6", 16, 128)
        for fam, top in (("v4", 32), ("v6", 128)):
            agg = check_int(getattr(self, f"aggregate_{fam}"), f"aggregate_{fam}", 1, top)
            broadest = getattr(self, f"broadest_{fam}")
            if agg < broadest:
                raise FieldError(
                    f"aggregate_{fam}",
                    f"/{agg} is broader than broadest_{fam} /{broadest}; "
                    "the guard would refuse every aggregate",
                )
        check_int(self.max_prefixes_per_rule, "max_prefixes_per_rule", 1, 1 << 20)
        check_int(self.max_rules_per_attack, "max_rules_per_attack", 1, 1000)
        check_int(self.max_rules_total, "max_rules_total", 1, 16383)
        if self.reflection_action not in ("rate_limit", "drop"):
            raise FieldError(
                "reflection_action", f"{self.reflection_action!r} is not one of rate_limit, drop"
            )
        check_int(self.reflection_pps, "reflection_pps", 1, MAX_RATE)
        ports = self.reflection_ports
        if isinstance(ports, list):
            ports = tuple(ports)
            object.__setattr__(self, "reflection_ports", ports)
        if not isinstance(ports, tuple) or not ports:
            raise FieldError("reflection_ports", "expected a non-empty list of UDP ports")
        for i, port in enumerate(ports):
            check_int(port, f"reflection_ports[{i}]", 0, 65535)
        check_bool(self.reflection_fragments, "reflection_fragments")
        check_int(self.ceiling_pps, "ceiling_pps", 1, MAX_RATE)
        check_number(self.ceiling_factor, "ceiling_factor", 1, 1000)
        check_int(self.proxy_per_source_pps, "proxy_per_source_pps", 1, MAX_RATE)
        check_int(self.proxy_drop_sources, "proxy_drop_sources", 0, 10_000_000)
        check_int(self.known_per_source_pps, "known_per_source_pps", 0, MAX_RATE)
        check_int(self.escalate_after, "escalate_after", 1, 1_000_000)
        check_bool(self.escalate_reflection, "escalate_reflection")
        check_bool(self.escalate_aggregate, "escalate_aggregate")
        check_int(self.priority, "priority", 0, MAX_PRIORITY - PER_SOURCE_PRIORITY_OFFSET)
        if not isinstance(self.created_by, str) or len(self.created_by) > MAX_CREATED_BY:
            raise FieldError("created_by", f"expected a string of at most {MAX_CREATED_BY} characters")

    @classmethod
    def from_dict(cls, data: object) -> MitigateConfig:
        """Read a ``[mitigate]`` table (prefixes as strings)."""
        if not isinstance(data, Mapping):
            raise FieldError("", f"expected a table, got {data!r}")
        known = [f.name for f in fields(cls)]
        check_keys(data, known)
        return cls(**cast(dict[str, Any], dict(data)))
