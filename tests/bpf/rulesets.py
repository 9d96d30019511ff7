"""Rule sets for the data-plane tests: build rules tersely, apply them the
way the controller does (``controller.rules.enforce.apply``), and read back what
each rule counted.

Rules are built with :meth:`controller.rules.model.Rule.from_dict`, the same
parser a rule file goes through, so a test's rule reads like the TOML an
operator writes: ``rule("dns", "drop", protocol="udp", dport=53)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.addresses import parse_prefix
from controller.dataplane import counters
from controller.dataplane.pinned import MapSet
from controller.dataplane.reasons import Action, Reason
from controller.rules import enforce
from controller.rules.model import DEFAULT_PRIORITY, Rule, RuleSet

from .conftest import XDP_DROP, XDP_PASS

__all__ = [
    "NOW",
    "Enforced",
    "RuleCount",
    "action_of",
    "enforce_rules",
    "expected_rule_totals",
    "retval_of",
    "rule",
]

NOW = datetime(2026, 1, 1, tzinfo=UTC)
"""The compile time of every rule set here: no rule expires mid-test."""

RuleCount = tuple[int, int, int]
"""What one rule counted: (packets matched, dropped, rate-limited)."""


def rule(rid: str, action: str | Mapping[str, object] = "drop", priority: int = DEFAULT_PRIORITY,
         **match: object) -> Rule:
    """One rule, parsed from its dict form (match fields as keyword arguments)."""
    return Rule.from_dict({"id": rid, "priority": priority, "action": action, "match": match}, NOW)


@dataclass(frozen=True)
class Enforced:
    """A rule set swapped in, and what the next apply needs."""

    outcome: enforce.Outcome
    applied: enforce.Applied

    def slot(self, rule_id: str) -> int:
        s = self.outcome.compiled.slots.get(rule_id)
        assert s, f"rule {rule_id!r} has no slot"
        return s

    def totals(self, maps: MapSet, rule_id: str) -> counters.RuleTotals:
        """The rule's counters, zero if it has counted nothing."""
        return counters.rule_totals(maps).get(self.slot(rule_id), counters.RuleTotals(0, 0, 0, 0))


def enforce_rules(maps: MapSet, rules: RuleSet | Iterable[Rule], previous: Enforced | None = None,
                  management: Sequence[str] = ()) -> Enforced:
    """Compile ``rules`` and swap them in with :func:`controller.rules.enforce.apply`."""
    rs = rules if isinstance(rules, RuleSet) else RuleSet.from_rules(rules)
    mgmt = tuple(parse_prefix(p) for p in management)
    outcome = enforce.apply(maps, rs, previous.applied if previous else None, now=NOW,
                            management=mgmt)
    assert outcome.swap is not None
    applied = enforce.Applied(rs, outcome.compiled.slots, outcome.swap.gen, mgmt)
    return Enforced(outcome, applied)


def expected_rule_totals(enforced: Enforced, counts: Mapping[str, RuleCount],
                         length: int) -> dict[int, counters.RuleTotals]:
    """``counters.rule_totals`` as it must read when each rule in ``counts``
    matched its packets of ``length`` bytes and no other rule matched any."""
    return {
        enforced.slot(rid): counters.RuleTotals(p, p * length, d, r)
        for rid, (p, d, r) in counts.items() if p
    }


def action_of(reason: Reason, *, monitor: bool = False, pass_malformed: bool = False) -> Action:
    """The action a packet counted under ``reason`` gets."""
    drops = reason.is_drop or (reason.is_malformed and not pass_malformed)
    if not drops:
        return Action.PASS
    return Action.MONITOR if monitor else Action.DROP


def retval_of(action: Action) -> int:
    return XDP_DROP if action == Action.DROP else XDP_PASS
