"""Rule sets on the lab's Breakwater, and the counters the rate-limit and
swap tests read back (per rule slot, per CPU, per-source buckets)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from controller.addresses import parse_prefix
from controller.dataplane import abi
from controller.dataplane.pinned import MapSet
from controller.lab import traffic
from controller.rules import enforce
from controller.rules.model import ActionKind, Match, Rule, RuleAction, RuleSet
from controller.rules.values import PortRange

UDP = 17


def udp_to(dst: str, dport: int, *, src: Sequence[str] = ()) -> Match:
    """UDP to ``dst`` port ``dport`` (from ``src``, if given)."""
    return Match(src=tuple(parse_prefix(s) for s in src), dst=(parse_prefix(dst),), protocol=UDP,
                 dport=PortRange(dport, dport))


def rule(rule_id: str, match: Match, action: RuleAction | ActionKind) -> Rule:
    return Rule(rule_id, match, RuleAction(action) if isinstance(action, str) else action)


def apply(maps: MapSet, rules: Sequence[Rule], previous: enforce.Applied | None = None) -> enforce.Applied:
    """Swap ``rules`` in (``controller.rules.enforce.apply``); returns what is in force."""
    rs = RuleSet.from_rules(rules)
    out = enforce.apply(maps, rs, previous)
    assert out.swap is not None
    assert not out.compiled.warnings, out.compiled.warnings
    return enforce.Applied(rs, out.compiled.slots, out.swap.gen)


def per_cpu_packets(maps: MapSet, slot: int) -> list[int]:
    """Packets a rule slot matched, per CPU (``rule_stats`` is per-CPU)."""
    raw = maps["rule_stats"].lookup(slot.to_bytes(4, "little"))
    assert raw is not None
    return [int(p) for p in np.frombuffer(raw, dtype=abi.RULE_COUNTER_DTYPE)["packets"]]


def buckets(maps: MapSet, slot: int) -> int:
    """Per-source token buckets (``rl_src`` entries) of a rule slot."""
    keys, _, n = maps["rl_src"].read_all()
    width = ctypes.sizeof(abi.RlKey)
    rules = np.frombuffer(keys, dtype="<u4", count=n * width // 4).reshape(n, width // 4)[:, 0]
    return int((rules == slot).sum())


def udp_losses(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Receive-side UDP losses between two ``traffic.udp_counters`` reads."""
    names = ("RcvbufErrors", "InErrors", "InCsumErrors", "NoPorts", "MemErrors")
    return {k: after.get(k, 0) - before.get(k, 0) for k in names if after.get(k, 0) != before.get(k, 0)}


def window(senders: Sequence[traffic.UdpStream | traffic.RawFlood | traffic.Child]) -> float:
    """Seconds from the first sender's start to the last one's end."""
    spans = [s.window for s in senders]
    assert all(w is not None for w in spans)
    return max(w[1] for w in spans if w) - min(w[0] for w in spans if w)
