"""What the demo measures: the flood and the client as the data plane
counted them, time to mitigate, and the agent's rules and attacks.

Floods are measured in the data plane: the victim's per-destination
counters (every packet, dropped or not) minus the client's per-source
counters, sampled every ``SAMPLE_SECONDS`` (:class:`Series`). A wave is
*mitigated* from the first window in which at least ``MITIGATED_SHARE`` of
its packets were dropped; time to mitigate runs from the flood's first
packet (the sender's own clock) to the start of that window
(:func:`flood_figures`). The agent's automatic rules and their drops come
from the rule state it records with each swap (:class:`RuleBook`), its
attacks from its log (:func:`attacks`).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..dataplane import abi, counters
from ..dataplane.pinned import MapSet
from ..errors import BreakwaterError
from ..rules import enforce
from ..rules.model import Rule
from .topology import CLIENT, SERVICE

__all__ = [
    "MITIGATED_SHARE",
    "SAMPLE_SECONDS",
    "FloodFigures",
    "RuleBook",
    "Series",
    "attacks",
    "flood_figures",
    "fold",
    "pct",
    "pct_text",
]

SAMPLE_SECONDS: Final = 0.1  # data-plane sampling: the resolution of time to mitigate
MITIGATED_SHARE: Final = 0.99  # a window with this share of the flood dropped is mitigated
MIN_WINDOW_PACKETS: Final = 100  # windows with fewer flood packets are not judged

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class Series:
    """The victim's and the client's data-plane counters, cumulative, one row per sample."""

    t: list[float] = field(default_factory=list)
    victim: list[tuple[int, int]] = field(default_factory=list)  # (packets, drops)
    client: list[tuple[int, int]] = field(default_factory=list)

    def sample(self, maps: MapSet) -> None:
        victim = client = (0, 0)
        key = ipaddress.IPv4Address(CLIENT).packed
        raw = maps["src_v4"].lookup(key)
        if raw is not None:
            row = np.frombuffer(raw, dtype=abi.SRC_COUNTERS_DTYPE, count=1)[0]
            client = (int(row["packets"]), int(row["drops"]))
        raw = maps["deny_v4"].lookup(key)  # an exactly denied source is counted on its entry
        if raw is not None:
            hits = int(np.frombuffer(raw, dtype=abi.DENY_DTYPE, count=1)[0]["packets"])
            client = (client[0] + hits, client[1] + hits)
        raw = maps["dst_v4"].lookup(ipaddress.IPv4Address(SERVICE).packed)
        if raw is not None:
            row = np.frombuffer(raw, dtype=abi.DST_COUNTERS_DTYPE, count=1)[0]
            victim = (int(row["packets"]), int(row["drops"]))
        self.t.append(time.monotonic())
        self.victim.append(victim)
        self.client.append(client)

    def windows(self) -> tuple[F64, F64, I64, I64]:
        """Per window between two samples: (start, end, flood packets, flood
        drops), the flood being everything to the victim but the client."""
        t = np.asarray(self.t, dtype=np.float64)
        v = np.asarray(self.victim, dtype=np.int64).reshape(-1, 2)
        c = np.asarray(self.client, dtype=np.int64).reshape(-1, 2)
        d = np.maximum(np.diff(v, axis=0) - np.diff(c, axis=0), 0)
        return t[:-1], t[1:], d[:, 0], d[:, 1]

    def rate(self, seconds: float) -> tuple[float, float]:
        """Flood packets/s seen and dropped at the edge over the last ``seconds``."""
        if len(self.t) < 2:
            return 0.0, 0.0
        i = min(max(bisect.bisect_left(self.t, self.t[-1] - seconds) - 1, 0), len(self.t) - 2)
        dt = self.t[-1] - self.t[i]
        seen = (self.victim[-1][0] - self.victim[i][0]) - (self.client[-1][0] - self.client[i][0])
        drops = (self.victim[-1][1] - self.victim[i][1]) - (self.client[-1][1] - self.client[i][1])
        return max(seen, 0) / dt, max(drops, 0) / dt


@dataclass(frozen=True)
class FloodFigures:
    """A wave as the data plane saw it, between its first packet and its end."""

    seen: int
    dropped: int
    mitigated_at: float | None  # start of the first window >= MITIGATED_SHARE dropped
    seen_after: int
    dropped_after: int


def flood_figures(series: Series, lo: float, hi: float) -> FloodFigures:
    starts, ends, seen, dropped = series.windows()
    idx = np.nonzero((ends > lo) & (starts < hi + SAMPLE_SECONDS))[0]
    mitigated_at = None
    for k in idx:
        if seen[k] >= MIN_WINDOW_PACKETS and dropped[k] >= MITIGATED_SHARE * seen[k]:
            mitigated_at = float(starts[k])
            break
    later = idx[starts[idx] >= mitigated_at] if mitigated_at is not None else idx[:0]
    return FloodFigures(int(seen[idx].sum()), int(dropped[idx].sum()), mitigated_at,
                        int(seen[later].sum()), int(dropped[later].sum()))


def pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole > 0 else None


def pct_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


# -- the agent's rules and attacks ----------------------------------------------------------

REFL_RULE: Final = "auto-refl-"  # the agent's reflection rules, one per port: folded when shown


@dataclass
class RuleBook:
    """The agent's automatic rules, read from the rule state it records
    with each swap: what each does (every action it had, so an escalation
    shows) and its data-plane counters, kept after the rule is gone."""

    state_dir: Path
    matches: dict[str, str] = field(default_factory=dict)
    actions: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, counters.RuleTotals] = field(default_factory=dict)
    in_force: tuple[str, ...] = ()

    def describe(self, rid: str) -> str:
        """E.g. ``limit 100 pps -> drop UDP sport 53 to 198.18.2.10/32``."""
        return f"{' -> '.join(self.actions.get(rid, ['?']))} {self.matches.get(rid, '')}".strip()

    def dropped(self, ids: Sequence[str]) -> int:
        return sum(self.totals[r].dropped for r in ids if r in self.totals)

    def refresh(self, maps: MapSet) -> None:
        try:
            applied = enforce.load_applied(self.state_dir, maps)
        except BreakwaterError:
            return  # read between a swap and its record: next time
        if applied is None:
            return
        slots = applied.slots.to_dict()
        by_slot = counters.rule_totals(maps)
        auto = []
        for rule in applied.rules:
            if rule.origin != "auto":
                continue
            auto.append(rule.id)
            action, self.matches[rule.id] = _describe(rule)
            had = self.actions.setdefault(rule.id, [])
            if not had or had[-1] != action:
                had.append(action)
            slot = slots.get(rule.id)
            if slot is not None and slot in by_slot:
                self.totals[rule.id] = by_slot[slot]
        self.in_force = tuple(sorted(auto))


def _describe(rule: Rule) -> tuple[str, str]:
    """(action, match), short: ("limit 50 pps", "TCP SYN to 198.18.2.10/32")."""
    act = rule.action
    action = act.kind.replace("_", " ")
    if act.kind == "rate_limit":
        action = f"limit {act.pps} pps" + (" per source" if act.scope == "per_source" else "")
    m = rule.match
    parts = []
    if m.src:
        more = f" +{len(m.src) - 2}" if len(m.src) > 2 else ""
        parts.append(f"from {', '.join(str(p) for p in m.src[:2])}{more}")
    if m.protocol == socket.IPPROTO_TCP:
        parts.append("TCP SYN" if m.tcp_flags is not None else "TCP")
    elif m.protocol == socket.IPPROTO_UDP:
        parts.append("UDP" + (f" sport {m.sport.lo}" if m.sport is not None else ""))
    if m.fragment == "yes":
        parts.append("fragments")
    if m.dst:
        parts.append(f"to {m.dst[0]}")
    return action, " ".join(parts)


def fold(ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Rule ids as (name shown, ids): a victim's per-port reflection rules
    become one ``auto-refl-<victim>-* (N rules)`` entry."""
    plain = [(rid, [rid]) for rid in ids if rid and not rid.startswith(REFL_RULE)]
    refl = [rid for rid in ids if rid.startswith(REFL_RULE)]
    if len(refl) < 2:
        return plain + [(rid, [rid]) for rid in refl]
    stem = refl[0]
    for rid in refl[1:]:
        while not rid.startswith(stem):
            stem = stem[:-1]
    stem = stem[: stem.rfind("-") + 1]
    return [*plain, (f"{stem}* ({len(refl)} rules)", refl)]


def attacks(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's attacks from its log: one record per attack id."""
    out: dict[str, dict[str, Any]] = {}
    for doc in events:
        if not str(doc.get("event", "")).startswith("attack_"):
            continue
        a = doc["attack"]
        rec = out.setdefault(a["id"], {"id": a["id"], "vector": a["vector"], "started_at": a["started_at"],
                                       "peak_pps": 0.0, "rules": []})
        rec["profile"] = a["profile"]
        rec["peak_pps"] = round(max(rec["peak_pps"], float(a["peak_pps"])), 1)
        rec["rules"] = sorted(set(rec["rules"]) | set(a["applied"]))
    return list(out.values())
