"""The source side of each detector interval: the source table, offenders, ``source_rate``.

:meth:`~controller.detection.detector.Detector.observe` makes one
:class:`SourceStep` per sample. It updates the table of recently seen
sources, counts each destination's active, new and tiny sources, and names
offenders: of each flag-vector flood (:meth:`SourceStep.flood`, a
:class:`Flood`), of each many-source attack (:meth:`SourceStep.suspects`),
and of the ``source_rate`` attack, which it advances
(:meth:`SourceStep.heavy`). Work is vectorised over the sources; Python
runs per attack and per new offender, never per source.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from .attacks import AttackState, Offenders
from .config import DetectConfig
from .events import VECTOR_CODES, AttackEvent, EventKind
from .samples import V4_MAPPED, Sample
from .tables import F64, I64, U64, AddressKeys, Bools, Destinations, SourceTable, unique_sorted

__all__ = ["Flood", "SourceStep"]

LOGGER = logging.getLogger("breakwater.detect")

_TYPICAL_SHARE: Final = 0.75
"""A flood's typical offender rate: the rate of the lightest of the heaviest candidate
offenders that together carry this share of the candidates' packets. Three quarters,
not a half: a group of slower bots that carries a quarter of the flood sets it, and
so is named; legitimate clients are a small share of a flood and never set it."""


_NEAR: Final = 0.5
_RISE: Final = 1.1
"""A source at _NEAR x ``source_pps`` or more and over _RISE x its rate so far is
ramping up (the destination vectors' NEAR and RISE)."""


def _typical(counts: F64) -> float:
    """The count of the lightest of the heaviest ``counts`` that together
    carry ``_TYPICAL_SHARE`` of their sum (0 for none)."""
    if not len(counts):
        return 0.0
    heaviest = np.sort(counts)[::-1]
    cum = np.cumsum(heaviest)
    return float(heaviest[min(int(np.searchsorted(cum, _TYPICAL_SHARE * cum[-1])), len(cum) - 1)])


@dataclass
class Flood:
    """One interval of a flag-vector flood on one destination: its offenders
    in the interval (sorted by key), and how much of the vector sources
    denied by exact entries carry."""

    step: SourceStep
    slot: int
    name: str
    """The per-source counter of the vector."""
    keys: U64
    """This interval's offenders, sorted; ``hi``, ``lo``, ``pps``, ``bps`` likewise."""
    hi: U64
    lo: U64
    pps: F64
    bps: F64
    typical: float
    """This interval's typical offender rate (0: no source over ``offender_pps``)."""
    covered_hidden: float
    """The vector's rate the denied sources carry: their packets, at most
    what no visible source of the vector explains."""

    def name_offenders(self, off: Offenders) -> float:
        """Add this interval's offenders to ``off`` and give each named one
        its rate in the interval (0 when absent; a denied one: all its
        packets); return the rate of the vector that named offenders and
        sources denied by exact entries carry."""
        off.add(self.keys, self.hi, self.lo)
        off.pps[:] = 0.0
        off.bps[:] = 0.0
        step = self.step
        at = step._present(off.key)
        if not len(at):
            return self.covered_hidden
        rows = step.order[at]
        mine = step.towards(step.dst[rows], self.slot)
        hidden = step.opaque[rows]
        counts = np.where(hidden, step.rows["packets"][rows], step.rows[self.name][rows])
        where = np.searchsorted(off.key, step.sorted_keys[at])
        keep = mine | (hidden & step.unknown[rows])
        where, counts, rows = where[keep], counts[keep], rows[keep]
        pps = counts / step.dt
        off.pps[where] = pps
        off.bps[where] = step.rows["bytes"][rows] * 8.0 / step.dt
        off.peak[where] = np.maximum(off.peak[where], pps)
        return float(pps[~step.opaque[rows]].sum()) + self.covered_hidden


class SourceStep:
    """The source side of one :meth:`~controller.detection.detector.Detector.observe`:
    updates the source table, computes the per-destination source
    statistics, names offenders and runs the ``source_rate`` vector.

    ``table``, ``keyfn`` and ``dests`` are the detector's, ``since`` the
    start of its first sample (what the source table knows begins there),
    ``n_dest`` the number of destination slots."""

    def __init__(self, config: DetectConfig, table: SourceTable, keyfn: AddressKeys, dests: Destinations,
                 since: float, sample: Sample, n_dest: int) -> None:
        self.cfg = cfg = config
        self.table = table
        self.since = since
        self.t, self.dt = t, dt = sample.t, sample.dt
        s = sample.sources
        self.rows = s
        self.keys = keys = keyfn(s["addr_hi"], s["addr_lo"])
        dst = dests.lookup(s["dst_hi"], s["dst_lo"])
        # A source denied by an exact entry is counted on the entry: packets,
        # bytes and drops only, no classes and no destination (or a stale one).
        # Its destination is the one it had when it was last seen, if it was.
        self.opaque = np.zeros(len(s), dtype=bool)
        """Rows of sources denied by exact entries: packets, bytes, drops only."""
        self.denied: I64 = np.zeros(0, np.int64)
        """The same, as row numbers."""
        self.unknown = np.zeros(len(s), dtype=bool)
        """Opaque rows whose destination nobody knows (a source seen only while denied)."""
        dropped = np.nonzero(s["drops"] > 0)[0]
        if len(dropped):
            d = s[dropped]
            classes = d["syn"] | d["ack"] | d["udp"] | d["icmp"] | d["gre"] | d["frags"]
            opaque = dropped[(classes == 0) & (d["drops"] == d["packets"])]
            self.opaque[opaque] = True
            self.denied = opaque
            o = s[opaque]
            blind = opaque[(o["dst_hi"] == 0) & ((o["dst_lo"] == 0) | (o["dst_lo"] == np.uint64(V4_MAPPED)))]
            at, known = table.positions(keys[blind])
            dst[blind[known]] = table.dst[at[known]]
            self.unknown[blind[dst[blind] < 0]] = True
        self.dst = dst
        order = np.argsort(keys)
        ks = keys[order]
        self.sorted_keys, self.order = ks, order
        pos, found = table.positions(ks)
        first = np.ones(len(ks), dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        new = ~found & first
        if new.any():
            rows = order[new]
            added = ks[new]
            table.insert(added, s["addr_hi"][rows], s["addr_lo"][rows], t - dt)
            # every key moves up by the number of new keys below it
            pos += np.searchsorted(added, ks)
        packets = s["packets"][order].astype(np.float64)
        dst_sorted = dst[order]
        # reflectors send UDP only (a denied source's row says nothing about it)
        mixed = np.nonzero((s["udp"] < s["packets"])[order] & ~self.opaque[order])[0]
        table.mixed_at[pos[mixed]] = t
        decay = np.exp(-(t - table.last[pos]) / cfg.window)
        # a source rising to early_fraction of source_pps: its rate until its
        # last interval (the EWMA corrected for its age) was under that
        warm = cfg.early_fraction * cfg.source_pps
        known = -np.expm1(-np.maximum(table.last[pos] - table.born[pos], 1e-9) / cfg.window)
        so_far = table.rate[pos] / known
        rising = (packets / dt >= warm) & (so_far < warm)
        # ... or near it and still growing (a ramp: see controller.detection.detector.NEAR)
        rising |= (packets / dt >= _NEAR * cfg.source_pps) & (packets / dt > _RISE * so_far)
        table.rate[pos] = table.rate[pos] * decay - math.expm1(-dt / cfg.window) * packets / dt
        table.last[pos] = t
        table.dst[pos] = dst_sorted

        # churn: sources seen for the first time, tiny in their first interval
        to_dest = dst_sorted >= 0
        tiny_new = ~found & (packets <= cfg.spoof_tiny_packets) & to_dest
        self.group = dests.group[:n_dest]
        """The group slot of each destination slot (-1: none): carpet bombing's prefixes."""
        self.is_group = dests.is_group[:n_dest]
        self.new_tiny = self._roll_up(np.bincount(dst_sorted[tiny_new], minlength=n_dest)[:n_dest])
        self.n_now = self._roll_up(np.bincount(dst_sorted[to_dest], minlength=n_dest)[:n_dest])
        window = max(cfg.window, dt)
        kept = np.ones(len(ks), dtype=bool)
        if table.evict(t, window, cfg.max_tracked_sources):
            pos, kept = table.positions(ks)
            pos = np.minimum(pos, max(len(table) - 1, 0))
        self.live = (table.last > t - window) & (table.dst >= 0)
        self.n_active = self._roll_up(np.bincount(table.dst[self.live], minlength=n_dest)[:n_dest])
        self.n_dest = n_dest
        self.explained = np.zeros(len(table), dtype=bool)
        """Table rows whose traffic another attack on their destination explains (:meth:`explain`)."""
        self.n_unexplained = self.n_active

        # per-source rates, for source_rate
        self.pps = packets / dt
        self.bits = s["bytes"][order] * 8.0 / dt
        over = (self.pps >= cfg.source_pps) | (self.bits >= cfg.source_bps)
        # the table may have dropped some of this interval's sources (more than
        # max_tracked_sources): their streak cannot grow
        streak = np.where(over & kept, table.streak[pos] + 1, 0).astype(np.int32)
        table.streak[:] = 0
        table.streak[pos[kept]] = streak[kept]
        self.entering = over & (streak >= cfg.start_intervals)
        self.early = bool(rising.any() or (over & ~self.entering).any())
        """A source rose towards the per-source threshold, or is over it without starting yet."""

    # -- destination floods --

    def _roll_up(self, counts: I64) -> I64:
        """Per-destination counts with each group given the sum of its members'."""
        members = np.nonzero(self.group >= 0)[0]
        if not len(members):
            return counts
        add = np.bincount(self.group[members], weights=counts[members], minlength=len(counts))
        out: I64 = counts + add[: len(counts)].astype(counts.dtype)
        return out

    def towards(self, dst: I64, slot: int) -> Bools:
        """Which of the destination slots ``dst`` are ``slot``, or for a group slot, its members."""
        if self.is_group[slot]:
            inside: Bools = (dst >= 0) & (self.group[np.maximum(dst, 0)] == slot)
            return inside
        same: Bools = dst == slot
        return same

    def moderate(self, dests: Bools) -> I64:
        """Per destination in ``dests``: active sources at most ``many_max_source_pps``
        (of those no other attack explains)."""
        table = self.table
        rows = np.nonzero(self.live & ~self.explained & dests[np.maximum(table.dst, 0)])[0]
        est = table.estimate(self.t, self.cfg.window, rows)
        calm = rows[est <= self.cfg.many_max_source_pps]
        return np.bincount(table.dst[calm], minlength=len(dests))[: len(dests)]

    def flood(self, slot: int, name: str, vector_pps: float, hold: float) -> Flood:
        """The offenders of one flag-vector flood on destination ``slot`` in this interval.

        An offender sends at least ``offender_pps`` of the vector's packets
        and at least ``offender_fraction`` of the flood's typical offender
        rate (or of ``hold``, the rate held from the flood at strength, if
        higher). Sources denied by exact entries (their packets are all
        drops, with no classes) are the flood's when their last destination
        is the victim or unknown: they count towards the typical rate and,
        up to the part of the vector no visible source explains, as covered."""
        s, dt, cfg = self.rows, self.dt, self.cfg
        floor = cfg.offender_pps * dt
        to_victim = self.towards(self.dst, slot)
        counts = s[name]
        heavy = np.nonzero(to_victim & (counts >= floor))[0]  # denied rows have no counts
        seen = float(np.add.reduce(counts, where=to_victim)) / dt
        hidden_pps = 0.0
        heavy_counts = counts[heavy].astype(np.float64)
        if len(self.denied):
            hidden = self.denied[to_victim[self.denied] | self.unknown[self.denied]]
            packets = s["packets"][hidden]
            hidden_pps = float(packets.sum()) / dt
            heavy_counts = np.concatenate([heavy_counts, packets[packets >= floor]])
        typical = _typical(heavy_counts) / dt
        cut = max(floor, cfg.offender_fraction * max(typical, hold) * dt)
        rows = heavy[counts[heavy] >= cut]
        ks, pick = unique_sorted(self.keys[rows])
        rows = rows[pick]
        return Flood(
            step=self, slot=slot, name=name, keys=ks, hi=s["addr_hi"][rows], lo=s["addr_lo"][rows],
            pps=counts[rows] / dt, bps=s["bytes"][rows] * 8.0 / dt, typical=typical,
            covered_hidden=min(hidden_pps, max(vector_pps - seen, 0.0)),
        )

    def explain(self, floods: Mapping[tuple[int, int], Flood],
                attacks: Mapping[tuple[int, int], AttackState], reflected: Bools) -> F64:
        """Mark the sources other attacks explain, for ``many_source``; return
        the packets/s they sent to each destination.

        A flag-vector flood over its threshold or under attack (``floods``,
        reflection's left out) explains its
        offenders (named so far, and this interval's); reflection (``reflected``
        destinations) explains the sources that sent only UDP, and its own
        ``refl`` packets (the caller takes those off)."""
        table = self.table
        explained = np.zeros(self.n_dest)
        named: dict[int, list[U64]] = {}
        for (d, v), fl in floods.items():
            ks = fl.keys
            attack = attacks.get((d, v))
            if attack is not None and len(attack.offenders):
                off = attack.offenders.key  # this interval's offenders are mostly named already
                at = np.minimum(np.searchsorted(off, ks), len(off) - 1)
                ks = np.concatenate([off, ks[off[at] != ks]])
            if len(ks):
                named.setdefault(d, []).append(ks)
            # sources denied by exact entries: the same for every vector of d
            explained[d] = max(explained[d], fl.covered_hidden)
        mask = np.zeros(len(table), dtype=bool)
        for d, parts in named.items():
            ks = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
            pos, found = table.positions(ks)
            at = pos[found]
            mask[at[table.dst[at] == d]] = True
            # this interval's packets of those sources, as seen (denied ones are counted above)
            rows = self.order[self._present(ks)]
            rows = rows[(self.dst[rows] == d) & ~self.opaque[rows]]
            explained[d] += float(self.rows["packets"][rows].sum()) / self.dt
        if reflected.any():
            udp_only = table.mixed_at <= self.t - max(self.cfg.window, self.dt)
            mask |= udp_only & (table.dst >= 0) & reflected[np.maximum(table.dst, 0)]
        self.explained = mask
        self.n_unexplained = np.bincount(table.dst[self.live & ~mask], minlength=self.n_dest)[: self.n_dest]
        return explained

    def _present(self, keys: U64) -> I64:
        """Sorted positions (into ``sorted_keys``) of those of ``keys`` in this sample."""
        ks = self.sorted_keys
        if not len(ks) or not len(keys):
            return np.zeros(0, np.int64)
        pos: I64 = np.minimum(np.searchsorted(ks, keys), len(ks) - 1)
        found: I64 = pos[ks[pos] == keys]
        return found

    def suspects(self, attack: AttackState, lead: float) -> None:
        """Many-source offenders: sources towards the victim that arrived
        since shortly (``lead`` seconds) before the surge, heaviest first.

        A source first seen within ``window`` of the detector's first sample
        may have been sending long before (the agent restarted during the
        flood, say): its age is unknown, so it is never named. Without this a
        restarted detector would take every established client for a newcomer.
        """
        table = self.table
        known = self.since + max(self.cfg.window, self.dt)
        arrived = (table.born >= attack.onset_at - lead) & (table.born >= known)
        rows = np.nonzero(self.live & ~self.explained & (table.dst == attack.slot) & arrived)[0]
        est = table.estimate(self.t, self.cfg.window, rows)
        n = self.cfg.max_offenders
        if len(rows) > n:
            pick = np.argpartition(-est, n - 1)[:n]
            rows, est = rows[pick], est[pick]
        order = np.argsort(table.key[rows])
        rows, est = rows[order], est[order]
        attack.offenders.merge(table.key[rows], table.hi[rows], table.lo[rows], est, np.zeros(len(rows)))

    # -- single heavy sources --

    def heavy(self, attack: AttackState | None,
              next_id: Callable[[str], str]) -> tuple[AttackState | None, AttackEvent | None]:
        """Advance the ``source_rate`` attack (None: none is active; a new
        one's id comes from ``next_id``); return it (None once it has ended)
        and its event, if it was active."""
        cfg, t = self.cfg, self.t
        if attack is None and not self.entering.any():
            return None, None
        ks = self.sorted_keys
        kind: EventKind = "updated"
        if attack is None:
            attack = AttackState(
                id=next_id(VECTOR_CODES["source_rate"]), vector="source_rate", slot=-1,
                victim=None, onset_at=t - self.dt * cfg.start_intervals, started_at=t,
                threshold_pps=cfg.source_pps,
            )
            kind = "started"
        off = attack.offenders
        # newcomers: N intervals in a row over the threshold
        entering = np.nonzero(self.entering)[0]
        if len(entering):
            rows = self.order[entering]
            off.add(ks[entering], self.rows["addr_hi"][rows], self.rows["addr_lo"][rows])
        # every member's rates in this interval (0 when absent)
        if len(ks):
            at = np.minimum(np.searchsorted(ks, off.key), len(ks) - 1)
            present = ks[at] == off.key
            pps = np.where(present, self.pps[at], 0.0)
            bits = np.where(present, self.bits[at], 0.0)
        else:
            pps = bits = np.zeros(len(off))
        off.pps, off.bps = pps, bits
        off.peak = np.maximum(off.peak, pps)
        hot = (pps >= cfg.end_fraction * cfg.source_pps) | (bits >= cfg.end_fraction * cfg.source_bps)
        off.under = np.where(hot, 0, off.under + 1).astype(np.int32)
        over = bool(((pps >= cfg.source_pps) | (bits >= cfg.source_bps)).any())
        off.keep(off.under < cfg.end_intervals)
        off.cap(cfg.max_offenders)
        attack.measure(float(off.pps.sum()), float(off.bps.sum()), self._drops(off.key))
        attack.over = over
        attack.sources = len(off)
        if not len(off):
            kind = "ended"
            LOGGER.info("attack %s ended, peak %.0f pps", attack.id, attack.peak_pps)
        return (None if kind == "ended" else attack), attack.event(kind, t, cfg.report_sources)

    def _drops(self, keys: U64) -> float:
        return float(self.rows["drops"][self.order[self._present(keys)]].sum()) / self.dt
