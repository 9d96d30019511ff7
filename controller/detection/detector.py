"""Attack detection: counter samples in, attack events out.

:class:`Detector` reads one :class:`~controller.detection.samples.Sample` per interval
and reports :class:`~controller.detection.events.AttackEvent` s: ``started`` when a vector's threshold has
held for ``start_intervals`` intervals in a row, ``updated`` every later
interval the attack is active, ``ended`` when its rate, dropped packets
included, has stayed below the end threshold for ``end_intervals``
intervals. Every rate is per second, so intervals of any length (and mixed
lengths) give the same rates for the same traffic.

Vectors (``docs/detection.md`` has every threshold and default):

* per destination, from the destination counters: ``syn`` (SYN without
  ACK, with a minimum share of the destination's packets), ``ack`` (ACK
  without SYN), ``udp`` (UDP *not* from a reflection port), ``icmp``,
  ``gre``, ``fragment``, ``reflection`` (UDP from a reflection port);
  thresholds are ``max(floor, factor x baseline)``;
* ``many_source``: many distinct, individually moderate sources towards one
  destination (HTTP-proxy style), by source count and aggregate rate, of
  the traffic no other attack on the destination explains (its offenders,
  reflection's UDP from reflection ports and its UDP-only sources);
* ``source_rate``: single sources over a packet or bit rate (no victim).

**Carpet bombing**: every destination is also counted in its group (its /24
or /64, or the longer protected prefix holding it: ``carpet_v4``,
``carpet_v6``), a destination slot of its own with its own baselines; a
group's flag vector is what its members receive of it that no attack of
theirs explains, so a flood spread thinly over a prefix is an attack whose
victim is the prefix.

Each destination attack also gets a **profile** of its sources, which is
what the planner (:mod:`controller.detection.planner`) acts on: ``concentrated``
(named offenders carry most of the vector), ``diffuse`` (they do not) or
``spoofed`` (high churn: most sources are new and send one or two packets,
so blocking sources cannot work). Offenders are sources over an absolute
rate that also send like the flood's typical source (so a busy client of
the victim is not one); sources already dropped by exact deny entries,
counted without classes or destination, stay the flood's. A change towards
broader mitigation (from ``concentrated``) must hold for N intervals at
strength, none of them falling.

Baselines are a time-weighted EWMA per destination and vector class,
starting at 0 (they learn upwards at the pace of ``baseline_tau`` only),
learned only from intervals where nothing is over a threshold and no attack
is active on that destination, one interval late (the interval a flood
starts in is partly under the threshold and is never learned); thresholds
never exceed their vector's ``ceiling``. So an attack cannot teach the
detector that it is normal.

A pulsing attack (back over its threshold after an off period) is one
attack counting ``pulses``, held for ``pulse_hold`` x its longest off
period after its last interval over; :attr:`Detector.early` asks the caller
to sample again soon when a vector rises towards its threshold.

Speed: an interval costs a sort of the sources' keys and a handful of
vectorised passes over them and over the table of recently seen sources;
Python-level work is per active attack and per new offender, never per
source.

This module holds the destination side (rates, thresholds, baselines, the
start and end of every destination attack); the thresholds are
:class:`~controller.detection.config.DetectConfig`, the tables keyed by
address :mod:`controller.detection.tables`, the source side of each interval
(offenders, ``source_rate``) :mod:`controller.detection.sources`, and each
attack's state :mod:`controller.detection.attacks`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from ..addresses import Prefix
from ..errors import InputError
from ..validate import check_int, check_number
from .attacks import AttackState
from .config import MAX_DETECT_RATE, DetectConfig
from .events import DEST_VECTORS, VECTOR_CODES, VECTORS, AttackEvent, EventKind, Profile, Vector
from .known import KnownSources
from .samples import Sample, address_words
from .sources import Flood, SourceStep
from .tables import F64, AddressKeys, Destinations, SourceTable, group_words

__all__ = ["BROADEN_INTERVALS", "Detector"]

LOGGER = logging.getLogger("breakwater.detect")

# Column of each destination vector in the rate and baseline matrices; the
# baseline matrix has one more column, the number of active sources.
_FLAG_VECTORS: Final = 7  # syn .. reflection: one destination counter each
_REFL: Final = 6
_MANY: Final = 7
_SOURCES: Final = 8
_CLASSES: Final = (*DEST_VECTORS[:7], "packets", "sources")
"""Baseline classes: the flag vectors, all packets (many_source), active sources."""
# The per-source counter that names a source as an offender of each vector.
_OFFENDER_FIELD: Final[Mapping[Vector, str]] = {
    "syn": "syn", "ack": "ack", "udp": "udp", "icmp": "icmp", "gre": "gre",
    "fragment": "frags", "reflection": "udp",
}

_GROW: Final = 64  # initial capacity of the per-destination arrays
BROADEN_INTERVALS: Final = 2
"""A move from ``concentrated`` towards broader mitigation (a victim-wide limit)
holds for at least this many intervals at strength, whatever ``start_intervals``:
the one interval in which an exact deny entry starts dropping an offender splits
its packets between its classified (passed) and its unclassified (denied) counts,
so that interval alone names less of the flood than the offenders carry."""
NEAR: Final = 0.5
RISE: Final = 1.1
"""A vector at NEAR x its threshold or more, and over RISE x its rate in the
previous sample, is ramping up: :attr:`Detector.early` asks for another look
soon, so a flood that crosses its threshold gradually (or from a sender that
takes a moment to reach its rate) is seen within a quarter interval of crossing."""


def _grow(arr: npt.NDArray[Any], n: int, fill: float = 0) -> npt.NDArray[Any]:
    if len(arr) >= n:
        return arr
    size = max(n, 2 * len(arr), _GROW)
    out = np.full((size, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


# --- the detector ---------------------------------------------------------------------


class Detector:
    """Turns a sequence of samples into attack events (see the module doc).

    Not thread-safe: one detector per agent, fed by one loop. Attack ids are
    ``<code>-<victim>-<n>`` and ``heavy-<n>``, ``n`` counting up per
    detector; across restarts they stay unique when the next detector
    continues the count (:attr:`id_counter`, :meth:`restore_id_counter`).
    """

    def __init__(self, config: DetectConfig | None = None, protected: Sequence[Prefix] = ()) -> None:
        self.config = config or DetectConfig()
        cfg = self.config
        self._protected = tuple(protected)
        """The protected prefixes (the agent's): a destination's group is never broader than its own."""
        self._lengths = (cfg.carpet_v4, cfg.carpet_v6)
        self._grouped = 0
        """Destination slots below this have had their group assigned."""
        self._keys = AddressKeys()
        self._dests = Destinations(self._keys)
        self._table = SourceTable()
        self._known = KnownSources(cfg.known_sources, cfg.known_tau, cfg.known_min_seconds)
        self._floor = np.array([cfg.threshold(v).pps for v in DEST_VECTORS])
        self._factor = np.array([cfg.threshold(v).factor for v in DEST_VECTORS])
        self._ceiling = np.array([cfg.threshold(v).ceiling for v in DEST_VECTORS])
        self._share = np.array([cfg.threshold(v).min_share for v in DEST_VECTORS[:_FLAG_VECTORS]])
        n_vec, n_cls = len(DEST_VECTORS), len(_CLASSES)
        self._ewma = np.zeros((0, n_cls))
        self._weight = np.zeros(0)
        self._over = np.zeros((0, n_vec), np.int32)
        self._under = np.zeros((0, n_vec), np.int32)
        self._onset = np.zeros((0, n_vec))
        self._active = np.zeros((0, n_vec), bool)
        self._prev_rate = np.zeros((0, n_cls))
        """The previous interval's rates: learned once the interval after it is quiet too."""
        self._prev_quiet = np.zeros(0, bool)
        self._warm = np.zeros((0, n_vec), bool)
        """Vectors at ``early_fraction`` of their threshold or more in the previous interval."""
        self._early = False
        self._attacks: dict[tuple[int, int], AttackState] = {}
        self._heavy: AttackState | None = None
        self._seq = 0
        self._t: float | None = None
        self._since: float | None = None
        """Start of the first sample: what the source table knows begins here."""
        self._events: list[AttackEvent] = []

    # -- public read-outs --

    @property
    def active(self) -> tuple[AttackEvent, ...]:
        """The latest event of every attack active after the last sample."""
        return tuple(e for e in self._events if e.kind != "ended")

    @property
    def early(self) -> bool:
        """The last sample saw a destination vector rise towards its threshold
        (to ``early_fraction`` of it, from under) or over it without an attack
        starting yet, or a source rise likewise towards ``source_pps``:
        sampling again soon, rather than a whole interval later, starts a
        flood that began inside that interval within a fraction of an
        interval."""
        return self._early

    @property
    def tracked_sources(self) -> int:
        return len(self._table)

    def baseline(self, victim: str, vector: Vector | Literal["packets", "sources"]) -> float:
        """Learned baseline of a destination (0 while it has none): pps,
        or active sources for ``"sources"``."""
        col = _CLASSES.index("packets" if vector == "many_source" else vector)
        slot = self._slot(victim)
        if slot < 0:
            return 0.0
        return float(self._baselines()[slot, col])

    def threshold(self, victim: str, vector: Vector) -> float:
        """Current start threshold (pps) of a destination vector."""
        if vector not in DEST_VECTORS:
            raise InputError(f"vector: {vector!r} has no per-destination threshold")
        col = DEST_VECTORS.index(vector)
        slot = self._slot(victim)
        base = 0.0 if slot < 0 else float(self._baselines()[slot, col])
        return min(max(float(self._floor[col]), float(self._factor[col]) * base), float(self._ceiling[col]))

    def known_sources(self, victim: Prefix) -> tuple[Prefix, ...]:
        """The UDP sources ``victim`` knew in peacetime (:mod:`.known`), sorted; () for none.
        A prefix victim (a carpet) knew those of its addresses, at most
        ``known_sources`` of them (the heaviest of each address come first)."""
        if victim.is_exact:
            slot = self._dests.slot(str(victim.network.network_address))
            return () if slot < 0 else self._known.of(slot)
        out: set[Prefix] = set()
        for slot in self._known.slots():
            if slot >= len(self._dests) or self._dests.is_group[slot]:
                continue
            dest = self._dests.prefix(slot)
            if dest.family == victim.family and dest.network.subnet_of(victim.network):  # type: ignore[arg-type]
                out.update(self._known.of(slot))
        ordered = sorted(out, key=lambda p: (p.family, int(p.network.network_address)))
        return tuple(ordered[: self._known.limit])

    @property
    def id_counter(self) -> int:
        """The number of the last attack id issued (``syn-203-0-113-10-<n>``,
        ``heavy-<n>``): persist it with the events that carry the ids and
        give it to the next detector's :meth:`restore_id_counter`, so ids
        never repeat across restarts."""
        return self._seq

    def restore_id_counter(self, value: int) -> None:
        """Issue attack ids after ``value`` (a previous detector's :attr:`id_counter`); never goes back."""
        self._seq = max(self._seq, check_int(value, "id_counter", 0, 2**63 - 1))

    def baselines(self) -> dict[str, dict[str, float]]:
        """Every learned baseline by destination and class, to persist across restarts."""
        base = self._baselines()
        out: dict[str, dict[str, float]] = {}
        for slot in np.nonzero(self._weight[: len(self._dests)] > 0)[0]:
            out[str(self._dests.prefix(int(slot)))] = {
                name: float(base[slot, i]) for i, name in enumerate(_CLASSES)
            }
        return out

    def load_baselines(self, baselines: Mapping[str, Mapping[str, float]]) -> None:
        """Seed baselines (what :meth:`baselines` returned before a restart)."""
        for victim, classes in baselines.items():
            text = victim.strip() if isinstance(victim, str) else ""
            try:
                if "/" in text:  # a group (carpet bombing's prefix)
                    net = ipaddress.ip_network(text)
                    hi, lo = address_words(net.network_address)
                    slot = int(self._dests.add_groups(np.array([hi], np.uint64), np.array([lo], np.uint64),
                                                      np.array([net.prefixlen], np.int64))[0])
                else:
                    hi, lo = address_words(text)
                    slot = int(self._dests.add(np.array([hi], np.uint64), np.array([lo], np.uint64))[0])
            except ValueError:
                raise InputError(f"baselines[{victim!r}]: not an address or a network/length") from None
            self._ensure(len(self._dests))
            for name, value in classes.items():
                if name not in _CLASSES:
                    raise InputError(
                        f"baselines[{victim!r}]: unknown class {name!r}; known: {', '.join(_CLASSES)}"
                    )
                self._ewma[slot, _CLASSES.index(name)] = check_number(
                    value, f"baselines[{victim!r}].{name}", 0, MAX_DETECT_RATE
                )
            self._weight[slot] = 1.0

    # -- the interval --

    def observe(self, sample: Sample) -> list[AttackEvent]:
        """Read one interval; return an event for every attack that started,
        is active or ended in it (sorted by vector, victim, id)."""
        if not isinstance(sample, Sample):
            raise InputError(f"sample: expected a Sample, got {type(sample).__name__}")
        t, dt = sample.t, sample.dt
        if self._t is not None and t <= self._t:
            raise InputError(f"sample.t: {t} is not after the previous sample's {self._t}")
        self._t = t
        if self._since is None:
            self._since = t - dt
        cfg = self.config
        dest = sample.destinations
        slots = self._dests.add(dest["addr_hi"], dest["addr_lo"])
        self._assign_groups()
        n_dest = len(self._dests)
        self._ensure(n_dest)
        group = self._dests.group[:n_dest]
        is_group = self._dests.is_group[:n_dest]
        members = np.nonzero(group >= 0)[0]

        rate = np.zeros((n_dest, len(_CLASSES)))
        for col, name in enumerate(("syn", "ack", "udp", "icmp", "gre", "frags", "refl", "packets")):
            rate[slots, col] = dest[name] / dt
        # UDP floods are UDP *not* from reflection ports; reflection has its own vector.
        rate[slots, 2] = np.maximum(dest["udp"].astype(np.float64) - dest["refl"], 0) / dt
        bps = np.zeros(n_dest)
        bps[slots] = dest["bytes"] * 8.0 / dt
        dropped = np.zeros(n_dest)
        dropped[slots] = dest["drops"] / dt
        # a group receives what its members receive (its flag vectors: see below)
        rate[:, _MANY] += self._sum_members(rate[:, _MANY], group, members)
        bps += self._sum_members(bps, group, members)
        dropped += self._sum_members(dropped, group, members)

        src = SourceStep(cfg, self._table, self._keys, self._dests, self._since, sample, n_dest)
        rate[:, _SOURCES] = src.n_active

        base = self._baselines()
        thr = np.minimum(np.maximum(self._floor, self._factor * base[:, : len(DEST_VECTORS)]), self._ceiling)
        over = rate[:, : len(DEST_VECTORS)] >= thr
        over[:, :_FLAG_VECTORS] &= rate[:, :_FLAG_VECTORS] >= self._share * rate[:, [_MANY]]
        active = self._active[:n_dest]
        if len(members):
            # Carpet bombing: a group's flag vector is what its members receive
            # of it that no attack of theirs explains (members over their own
            # threshold or under attack in that vector are left out), so a
            # flood on one address is that address's attack, and a flood
            # spread thinly over the prefix is the prefix's.
            alone = ~(over[members, :_FLAG_VECTORS] | active[members, :_FLAG_VECTORS])
            flags = rate[members, :_FLAG_VECTORS] * alone
            for v in range(_FLAG_VECTORS):
                rate[:, v] += self._sum_members(flags[:, v], group[members], None, n_dest)
            g = is_group
            over[g] = rate[g, : len(DEST_VECTORS)] >= thr[g]
            over[g, :_FLAG_VECTORS] &= rate[g, :_FLAG_VECTORS] >= self._share * rate[g][:, [_MANY]]
            over[g, _MANY] = False  # many_source is per address

        # every flag-vector flood over its threshold or under attack, source by source
        floods: dict[tuple[int, int], Flood] = {}
        strong: dict[tuple[int, int], bool] = {}
        for d, v in zip(*np.nonzero(over[:, :_FLAG_VECTORS] | active[:, :_FLAG_VECTORS]), strict=True):
            d, v = int(d), int(v)
            attack = self._attacks.get((d, v))
            strong[(d, v)] = bool(over[d, v]) and (attack is None or not attack.falling(float(rate[d, v])))
            # the typical offender rate is held while the flood is not at strength
            hold = attack.typical_pps if attack is not None and not strong[(d, v)] else 0.0
            floods[(d, v)] = src.flood(d, _OFFENDER_FIELD[DEST_VECTORS[v]], float(rate[d, v]), hold)

        # many_source counts what no other attack on the destination explains
        # (worked out where it could matter: it only takes away)
        source_thr = np.maximum(cfg.many_min_sources, cfg.many_source_factor * base[:, _SOURCES])
        need = active[:, _MANY] | (over[:, _MANY] & (src.n_active >= source_thr) & ~is_group)
        if need.any():
            reflected = (over[:, _REFL] | active[:, _REFL]) & need
            explained = src.explain({k: f for k, f in floods.items() if need[k[0]] and k[1] != _REFL},
                                    self._attacks, reflected)
            explained += np.where(reflected, rate[:, _REFL], 0)
            rate[:, _MANY] = np.maximum(rate[:, _MANY] - explained, 0)
            over[:, _MANY] = rate[:, _MANY] >= thr[:, _MANY]
        spoofed = (src.new_tiny >= cfg.spoof_new_per_s * dt) & (src.new_tiny >= cfg.spoof_share * src.n_now)
        spoofed &= src.new_tiny > 0
        many = over[:, _MANY] & (src.n_unexplained >= source_thr) & ~spoofed & ~is_group
        if many.any():
            many &= src.moderate(many) * 2 >= src.n_unexplained
        over[:, _MANY] = many

        self._over[:n_dest] = np.where(over, self._over[:n_dest] + 1, 0)
        fresh = over & (self._over[:n_dest] == 1)
        self._onset[:n_dest] = np.where(fresh, t - dt, self._onset[:n_dest])
        under = rate[:, : len(DEST_VECTORS)] < cfg.end_fraction * thr
        self._under[:n_dest] = np.where(active & under, self._under[:n_dest] + 1, 0)
        starts = ~active & (self._over[:n_dest] >= cfg.start_intervals)
        ends = active & (self._under[:n_dest] >= cfg.end_intervals)

        # Baselines learn from quiet intervals only (nothing active or over a
        # threshold), one interval late, once the next is quiet too: the interval a
        # flood starts in is partly under its threshold and must not be learned.
        quiet = ~active.any(axis=1) & ~over.any(axis=1)
        learn = quiet & self._prev_quiet[:n_dest]
        if learn.any():
            # no bias correction: a baseline starts at 0 and rises at the pace of baseline_tau
            alpha = -math.expm1(-dt / cfg.baseline_tau)
            ewma = self._ewma[:n_dest]
            ewma[learn] += alpha * (self._prev_rate[:n_dest][learn] - ewma[learn])
            self._weight[:n_dest][learn] = 1.0
        vec = rate[:, : len(DEST_VECTORS)]
        # near its threshold and still growing since the previous sample: a ramp
        ramping = (vec >= NEAR * thr) & (vec > RISE * self._prev_rate[:n_dest, : len(DEST_VECTORS)])
        self._prev_rate[:n_dest] = rate
        self._prev_quiet[:n_dest] = quiet
        # the UDP sources of quiet destinations become known ones (one interval late, likewise);
        # an address is quiet only while its group is: a carpet's bots send each address little
        learnable = quiet.copy()
        member = group >= 0
        learnable[member] &= quiet[group[member]]
        s = sample.sources
        self._known.observe(t, src.dst, src.keys, s["addr_hi"], s["addr_lo"],
                            s["udp"].astype(np.float64), learnable)
        warm = vec >= cfg.early_fraction * thr
        # a group's packets are all its members' (many_source is per address)
        ramping[is_group, _MANY] = False
        warm[is_group, _MANY] = False

        events: list[AttackEvent] = []
        for d, v in zip(*np.nonzero(starts), strict=True):
            d, v = int(d), int(v)
            self._active[d, v] = True
            self._attacks[(d, v)] = self._start(d, DEST_VECTORS[v], t)
        for (d, v), attack in sorted(self._attacks.items()):
            attack.pulse(bool(over[d, v]), t, dt)
            # a pulsing attack is held across its off periods (hold-down learned from them)
            ending = bool(ends[d, v]) and not attack.held(t, cfg.pulse_hold, cfg.max_pulse_hold)
            kind: EventKind = "started" if starts[d, v] else "ended" if ending else "updated"
            attack.measure(float(rate[d, v]), float(bps[d]), float(dropped[d]))
            attack.over = bool(over[d, v])
            attack.sources = int(src.n_active[d])
            attack.threshold_pps = float(thr[d, v])
            attack.baseline_pps = float(base[d, v])
            if attack.vector == "many_source":
                src.suspects(attack, cfg.many_newcomer_lead)
                attack.profile = "diffuse"
            else:
                flood = floods[(d, v)]
                covered = flood.name_offenders(attack.offenders)
                if attack.over:
                    # an offender quiet while the flood goes on is not one of it (any more)
                    attack.offenders.release(cfg.offender_pps, cfg.end_intervals)
                if strong[(d, v)] and flood.typical > 0:
                    attack.typical_pps = flood.typical
                # the profile is judged while the attack is at strength, not on its tail
                if attack.over:
                    share = covered / attack.pps if attack.pps > 0 else 0.0
                    judged: Profile = (
                        "spoofed" if spoofed[d]
                        else "concentrated" if share >= cfg.concentrated_share
                        else "diffuse"
                    )
                    attack.judge(judged, started=kind == "started", strong=strong[(d, v)],
                                 sustain=max(BROADEN_INTERVALS, cfg.start_intervals))
                else:
                    attack.pending = 0
                attack.remember(attack.pps, cfg.start_intervals)
            attack.offenders.cap(cfg.max_offenders)
            events.append(attack.event(kind, t, cfg.report_sources))
            if kind == "started":
                LOGGER.info("attack %s started: %.0f pps, threshold %.0f, profile %s",
                            attack.id, attack.pps, attack.threshold_pps, attack.profile)
            if kind == "ended":
                LOGGER.info("attack %s ended after %.1f s, peak %.0f pps",
                            attack.id, t - attack.started_at, attack.peak_pps)
                del self._attacks[(d, v)]
                self._active[d, v] = False
                self._under[d, v] = 0
        calm: npt.NDArray[np.bool_] = ~self._active[:n_dest]
        # a ramp counts on a destination under no attack (an attack's own flood rises too)
        ramping &= np.all(calm, axis=1, keepdims=True)
        self._early = bool((((warm & ~self._warm[:n_dest]) | ramping | over) & calm).any() or src.early)
        self._warm[:n_dest] = warm
        self._heavy, heavy = src.heavy(self._heavy, self._next_id)
        if heavy is not None:
            events.append(heavy)
        order = {v: i for i, v in enumerate(VECTORS)}
        events.sort(key=lambda e: (order[e.vector], str(e.victim), e.id))
        self._events = events
        return events

    # -- internals --

    def _slot(self, victim: str) -> int:
        try:
            return self._dests.slot(victim)
        except ValueError:
            raise InputError(f"victim: {victim!r} is not an address or a network/length") from None

    @staticmethod
    def _sum_members(values: F64, group: npt.NDArray[np.int64], members: npt.NDArray[np.int64] | None,
                     n: int | None = None) -> F64:
        """Per slot, the sum of ``values`` over its members (0 for an address).
        ``members`` None: ``values`` and ``group`` are already the members'."""
        if members is not None:
            n, values, group = len(values), values[members], group[members]
        assert n is not None
        if not len(group):
            return np.zeros(n)
        out = np.bincount(group, weights=values, minlength=n)[:n]
        return out.astype(np.float64, copy=False)

    def _assign_groups(self) -> None:
        """Give every destination slot added since the last call its group (a slot of its own)."""
        dests = self._dests
        n = len(dests)
        if self._grouped >= n:
            return
        new = np.arange(self._grouped, n)
        new = new[~dests.is_group[new]]
        self._grouped = n
        if not len(new) or not any(self._lengths):
            return
        hi = np.array([dests.hi[i] for i in new], np.uint64)
        lo = np.array([dests.lo[i] for i in new], np.uint64)
        g_hi, g_lo, plen = group_words(hi, lo, self._lengths, self._protected)
        has = plen > 0
        if has.any():
            dests.group[new[has]] = dests.add_groups(g_hi[has], g_lo[has], plen[has])
        self._grouped = len(dests)

    def _ensure(self, n: int) -> None:
        self._ewma = _grow(self._ewma, n)
        self._weight = _grow(self._weight, n)
        self._over = _grow(self._over, n)
        self._under = _grow(self._under, n)
        self._onset = _grow(self._onset, n)
        self._active = _grow(self._active, n)
        self._prev_rate = _grow(self._prev_rate, n)
        self._prev_quiet = _grow(self._prev_quiet, n)
        self._warm = _grow(self._warm, n)

    def _baselines(self) -> F64:
        n = len(self._dests)
        out: F64 = self._ewma[:n].copy()
        return out

    def _next_id(self, *parts: str) -> str:
        self._seq += 1
        return "-".join((*parts, str(self._seq)))

    def _start(self, slot: int, vector: Vector, t: float) -> AttackState:
        victim = self._dests.prefix(slot)
        col = DEST_VECTORS.index(vector)
        return AttackState(
            id=self._next_id(VECTOR_CODES[vector], victim.slug),
            vector=vector,
            slot=slot,
            victim=victim,
            onset_at=float(self._onset[slot, col]),
            started_at=t,
        )

