"""Mitigation planning: attack events in, the desired set of automatic rules out.

:class:`Planner` turns the detector's events for one interval
(:meth:`controller.detection.detector.Detector.observe`) and the automatic rules now in
force into the complete set of ``origin="auto"`` rules that should be in
force, with what changed. It picks the narrowest rule that stops each attack:

=====================  ========================================================
attack                 rules
=====================  ========================================================
``source_rate``        drop the offending sources (``auto-src-heavy``)
flood, concentrated    drop the offenders (``auto-src-<vector>-<victim>``); many
                       of one /24 (/48) become the prefix
flood, diffuse         an aggregate rate limit of that vector to the victim, plus
                       dropping the offenders that can be named
flood, spoofed         the aggregate rate limit only: blocking sources cannot work
UDP flood, ceiling     also: the sources the victim knew in peacetime pass the
                       ceiling, each within a per-source limit
                       (``auto-known-udp-<victim>``, one priority before it)
``reflection``         UDP from the reflection ports to the victim: rate limit or
                       drop (:func:`controller.rules.presets.reflection_rule`)
``many_source``        a per-source rate limit on the victim, plus dropping the
                       heaviest newcomers (one list per victim, kept while its
                       many-source attacks last, across restarts)
=====================  ========================================================

SYN and ACK floods on a victim with challenged TCP services
(``[[challenge]]``, :class:`ChallengedService`) leave those ports to the
data plane's challenge: the aggregate limit covers the victim's other ports
only (one rule per range between them), since a ceiling shared by spoofed
and legitimate packets would hit the sources the challenge verified while
it is not armed. Source drop rules stay.

Source drop rules are named after what they protect, not after the attack
(attack ids change across agent restarts): one list per victim and vector
(``auto-src-syn-<victim>``, ``auto-src-many-<victim>``), one for heavy
sources (``auto-src-heavy``). A victim's flood list keeps what of it is in
force while floods of that vector on it last, so a restarted agent, whose
detector cannot name sources the data plane already drops (exact deny
entries count them without a destination), keeps them dropped.

Every rule gets a TTL, extended while its attack lasts; when no active
attack wants a rule any more it expires after the grace TTL. A rate limit
that has been in force for ``escalate_after`` intervals while its attack
stays over the threshold (rate-limited packets count) becomes a drop, where
that is safe. Guards: allowlist and management prefixes are never dropped
or limited by a source rule; rules per attack, rules in total and prefixes
per rule are capped; no source prefix is broader than ``broadest_v4`` /
``broadest_v6``. Anything a guard stops is listed in
:attr:`PlanResult.refused` with the reason.

Its settings are :class:`~controller.detection.config.MitigateConfig` (the
``[mitigate]`` table). The planner keeps a little state between calls
(which signatures each active attack has had, escalation counts);
everything else comes from the rules passed in, so a restarted planner
picks up where the last one was.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from ..addresses import Prefix
from ..errors import InputError
from ..rules.model import MAX_COMMENT, MAX_RATE, Match, Rule, RuleAction, RuleSet
from ..rules.presets import reflection_rule
from ..rules.values import PortRange, TcpFlags
from .config import KNOWN_PRIORITY_OFFSET, PER_SOURCE_PRIORITY_OFFSET, MitigateConfig
from .events import VECTOR_CODES, AttackEvent, Vector

__all__ = [
    "AUTO_ORIGIN",
    "EXTEND_BELOW",
    "ChallengedService",
    "PlanResult",
    "Planner",
    "Refusal",
]

AUTO_ORIGIN: Final = "auto"
EXTEND_BELOW: Final = 0.5
"""A rule's expiry moves forward when less than this share of ``rule_ttl``
is left, not every interval: a steady attack does not change the rule set
(and push it to every agent) each interval."""

_MAX_ID: Final = 63  # the longest rule id the rule model accepts
_TCP, _UDP, _ICMP, _GRE, _ICMPV6 = 6, 17, 1, 47, 58
_SYN_NO_ACK: Final = TcpFlags(0x12, 0x02)
_ACK_NO_SYN: Final = TcpFlags(0x12, 0x10)
_TITLES: Final[Mapping[Vector, str]] = {
    "syn": "SYN flood",
    "ack": "ACK flood",
    "udp": "UDP flood",
    "icmp": "ICMP flood",
    "gre": "GRE flood",
    "fragment": "fragment flood",
    "reflection": "reflection/amplification",
    "many_source": "many-source (HTTP proxy style) flood",
    "source_rate": "sources over the per-source rate",
}


_CHALLENGED_VECTORS: Final = frozenset({"syn", "ack"})
"""Vectors the data plane's SYN challenge answers for its services."""


@dataclass(frozen=True, slots=True)
class ChallengedService:
    """A TCP service the data plane challenges (an ``[[challenge]]`` prefix and port)."""

    prefix: Prefix
    port: int


# --- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something the planner would have done and did not, and why."""

    attack_id: str | None
    subject: str
    """The prefix or rule id concerned."""
    reason: str

    def __str__(self) -> str:
        return f"{self.attack_id or '-'}: {self.subject}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PlanResult:
    """The complete desired set of automatic rules and how it differs from the current one.

    ``enforce`` is False in monitor mode: apply nothing, report what would be done.
    """

    rules: tuple[Rule, ...]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    extended: tuple[str, ...] = ()
    """Rules whose expiry moved forward (their attack goes on)."""
    escalated: tuple[str, ...] = ()
    """Rate limits that became drops in this plan."""
    changed: tuple[str, ...] = ()
    """Rules whose match or action changed otherwise (offenders added, say)."""
    released: tuple[str, ...] = ()
    """Rules no active attack wants any more, now expiring after the grace TTL."""
    refused: tuple[Refusal, ...] = ()
    by_attack: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Rule ids planned for each active attack (what to put in ``AttackEvent.applied``)."""
    enforce: bool = True

    @property
    def empty(self) -> bool:
        """Nothing to push: the desired set equals the current one."""
        return not (self.added or self.removed or self.extended or self.escalated or self.changed
                    or self.released)

    def rule_set(self) -> RuleSet:
        return RuleSet(self.rules)


# --- prefix lookups -------------------------------------------------------------


def _bits(family: int) -> int:
    return 32 if family == 4 else 128


def _int_of(p: Prefix) -> int:
    return int(p.network.network_address)


class _PrefixIndex:
    """Prefixes by family and length, to ask "is p inside one?" with a few dict lookups."""

    def __init__(self) -> None:
        self._by_len: dict[tuple[int, int], dict[int, tuple[str, Prefix]]] = {}

    def add(self, p: Prefix, label: str = "") -> None:
        fam, plen = p.family, p.network.prefixlen
        self._by_len.setdefault((fam, plen), {})[_int_of(p) >> (_bits(fam) - plen)] = (label, p)

    def covering(self, p: Prefix) -> tuple[str, Prefix] | None:
        """An entry that contains ``p`` (or is it)."""
        fam, plen, value = p.family, p.network.prefixlen, _int_of(p)
        for (f, length), table in self._by_len.items():
            if f == fam and length <= plen:
                hit = table.get(value >> (_bits(fam) - length))
                if hit is not None:
                    return hit
        return None

    def inside(self, p: Prefix) -> tuple[str, Prefix] | None:
        """An entry strictly inside ``p``."""
        fam, plen = p.family, p.network.prefixlen
        top = _int_of(p) >> (_bits(fam) - plen)
        for (f, length), table in self._by_len.items():
            if f == fam and length > plen:
                for label, q in table.values():
                    if _int_of(q) >> (_bits(fam) - plen) == top:
                        return label, q
        return None

    def overlapping(self, p: Prefix) -> tuple[str, Prefix] | None:
        return self.covering(p) or self.inside(p)

    @property
    def empty(self) -> bool:
        return not self._by_len


def _network(family: int, value: int, length: int) -> Prefix:
    if family == 4:
        return Prefix(ipaddress.IPv4Network((value, length)))
    return Prefix(ipaddress.IPv6Network((value, length)))


def _sort_key(p: Prefix) -> tuple[int, int, int]:
    return (p.family, _int_of(p), p.network.prefixlen)


def _rule_id(*parts: str) -> str:
    """Join ``parts`` with dashes; shorten a too-long id with a hash so it stays valid and unique."""
    rid = "-".join(parts)
    if len(rid) <= _MAX_ID:
        return rid
    digest = hashlib.sha256(rid.encode()).hexdigest()[:8]
    return f"{rid[: _MAX_ID - 9].rstrip('-.')}-{digest}"


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InputError("now: needs a time zone (use datetime.now(UTC))")
    return now.astimezone(UTC)


# --- the planner ------------------------------------------------------------------

_Planned = tuple[Rule, bool]  # a rule without expiry, and whether it may escalate


@dataclass
class _DropCache:
    """One attack's guarded, aggregated source prefixes, for the offenders tuple they came from."""

    offenders: tuple[Prefix, ...]
    profile: str
    what: str
    limit: int | None
    candidates: tuple[Prefix, ...]
    refusals: tuple[Refusal, ...]
    carried: tuple[Prefix, ...] = ()
    rules: list[_Planned] | None = None


class Planner:
    """Plans the automatic rules for the detector's attacks (see the module doc).

    Call :meth:`plan` once per interval with that interval's events (every
    active attack has one) and the automatic rules in force.
    """

    def __init__(self, config: MitigateConfig | None = None,
                 challenged: Iterable[ChallengedService] = ()) -> None:
        self.config = config or MitigateConfig()
        self.challenged = tuple(challenged)
        self._guards = _PrefixIndex()
        for p in self.config.allowlist:
            self._guards.add(p, "allowlist")
        for p in self.config.management:
            self._guards.add(p, "management prefix")
        self._sticky: dict[str, dict[str, _Planned]] = {}  # attack id -> its signatures so far
        self._owned: dict[str, tuple[str, ...]] = {}  # attack id -> rule ids of the last plan
        self._in_force: dict[str, int] = {}  # rule id -> intervals over threshold while in force
        self._drop_cache: dict[str, _DropCache] = {}  # attack id -> its source rules
        self._known: Callable[[Prefix], Sequence[Prefix]] | None = None

    def plan(self, now: datetime, events: Iterable[AttackEvent], current: Iterable[Rule],
             known: Callable[[Prefix], Sequence[Prefix]] | None = None) -> PlanResult:
        """The desired automatic rules at ``now`` (UTC-aware), given this
        interval's events and the rules in force (rules of other origins are ignored).

        ``known`` gives a victim's known sources (the detector's
        :meth:`~controller.detection.detector.Detector.known_sources`): UDP
        floods under a victim-wide ceiling let them past it, each within
        ``known_per_source_pps``."""
        now = _utc(now)
        self._known = known
        cfg = self.config
        cur: dict[str, Rule] = {}
        for rule in current:
            if not isinstance(rule, Rule):
                raise InputError(f"current: expected Rules, got {type(rule).__name__}")
            if rule.origin == AUTO_ORIGIN:
                cur[rule.id] = rule
        active: dict[str, AttackEvent] = {}
        for event in events:
            if not isinstance(event, AttackEvent):
                raise InputError(f"events: expected AttackEvents, got {type(event).__name__}")
            if event.kind == "ended":
                active.pop(event.id, None)
            else:
                active[event.id] = event
        self._sticky = {aid: rules for aid, rules in self._sticky.items() if aid in active}
        self._drop_cache = {aid: c for aid, c in self._drop_cache.items() if aid in active}

        def in_force_first(e: AttackEvent) -> tuple[bool, float, str]:
            """Attacks whose rules are in force keep them; then the heaviest first."""
            return (not any(rid in cur for rid in self._owned.get(e.id, ())), -e.pps, e.id)

        claims = _PrefixIndex()
        desired: dict[str, Rule] = {}
        by_attack: dict[str, tuple[str, ...]] = {}
        refused: list[Refusal] = []
        escalated: list[str] = []
        for event in sorted(active.values(), key=in_force_first):
            planned = list(self._rules_for(event, claims, refused, cur, now))
            sticky = self._sticky.setdefault(event.id, {})
            ids = {r.id for r, _ in planned}
            planned += [item for rid, item in sticky.items() if rid not in ids]
            kept: list[str] = []
            for rule, may_escalate in planned:
                if not rule.match.is_src_only:
                    sticky[rule.id] = (rule, may_escalate)
                if rule.id in desired:
                    continue
                if len(kept) >= cfg.max_rules_per_attack:
                    refused.append(Refusal(event.id, rule.id,
                                           f"over the cap of {cfg.max_rules_per_attack} rules per attack"))
                    continue
                if len(desired) >= cfg.max_rules_total:
                    refused.append(Refusal(event.id, rule.id,
                                           f"over the cap of {cfg.max_rules_total} automatic rules in total"))
                    continue
                rule = self._escalate(event, rule, may_escalate, cur.get(rule.id), escalated)
                desired[rule.id] = rule
                kept.append(rule.id)
            by_attack[event.id] = tuple(kept)
        self._in_force = {rid: n for rid, n in self._in_force.items() if rid in desired}
        self._owned = by_attack
        return self._finish(now, desired, cur, by_attack, refused, escalated)

    # -- expiry, release, removal --

    def _finish(
        self,
        now: datetime,
        desired: Mapping[str, Rule],
        cur: Mapping[str, Rule],
        by_attack: Mapping[str, tuple[str, ...]],
        refused: list[Refusal],
        escalated: list[str],
    ) -> PlanResult:
        cfg = self.config
        ttl = timedelta(seconds=cfg.rule_ttl)
        grace = now + timedelta(seconds=cfg.grace_ttl)
        rules: list[Rule] = []
        added: list[str] = []
        extended: list[str] = []
        changed: list[str] = []
        for rid, rule in desired.items():
            old = cur.get(rid)
            if old is not None and old.expires_at is not None and old.expires_at - now >= ttl * EXTEND_BELOW:
                expires = old.expires_at
            else:
                expires = now + ttl
                if old is not None:
                    extended.append(rid)
            rule = replace(rule, expires_at=expires)
            if old is None:
                added.append(rid)
            elif replace(old, expires_at=None) != replace(rule, expires_at=None) and rid not in escalated:
                changed.append(rid)
            rules.append(rule)
        removed: list[str] = []
        released: list[str] = []
        budget = cfg.max_rules_total - len(rules)
        far = datetime.max.replace(tzinfo=UTC)
        leftover = sorted((r for rid, r in cur.items() if rid not in desired),
                          key=lambda r: (r.expires_at or far, r.id), reverse=True)
        for old in leftover:
            if old.expires_at is not None and old.expires_at <= now:
                removed.append(old.id)
                continue
            if budget <= 0:
                removed.append(old.id)
                refused.append(Refusal(None, old.id, f"removed before its grace TTL: over the cap of "
                                                     f"{cfg.max_rules_total} automatic rules in total"))
                continue
            if old.expires_at is None or old.expires_at > grace:
                if grace <= now:
                    removed.append(old.id)
                    continue
                old = replace(old, expires_at=grace)
                released.append(old.id)
            rules.append(old)
            budget -= 1
        rules.sort(key=lambda r: r.id)
        return PlanResult(
            rules=tuple(rules),
            added=tuple(sorted(added)),
            removed=tuple(sorted(removed)),
            extended=tuple(sorted(extended)),
            escalated=tuple(sorted(escalated)),
            changed=tuple(sorted(changed)),
            released=tuple(sorted(released)),
            refused=tuple(refused),
            by_attack=dict(by_attack),
            enforce=not cfg.monitor,
        )

    def _escalate(
        self, event: AttackEvent, rule: Rule, may_escalate: bool, old: Rule | None, escalated: list[str]
    ) -> Rule:
        """A rate limit in force for ``escalate_after`` intervals over threshold becomes a drop."""
        if rule.action.kind != "rate_limit" or not may_escalate:
            return rule
        drop = replace(rule, action=RuleAction("drop"),
                       comment=f"{rule.comment} (escalated to drop)"[:MAX_COMMENT])
        if old is not None and old.action.kind == "drop":
            return drop
        count = self._in_force.get(rule.id, 0)
        if old is not None and event.over_threshold:
            count += 1
        self._in_force[rule.id] = count
        if count >= self.config.escalate_after:
            escalated.append(rule.id)
            return drop
        return rule

    # -- the rules for one attack --

    def _rules_for(self, event: AttackEvent, claims: _PrefixIndex, refused: list[Refusal],
                   cur: Mapping[str, Rule], now: datetime) -> list[_Planned]:
        cfg = self.config
        victim = event.victim
        if victim is None:
            return self._drops(event, claims, refused, "drop the offending sources",
                               base=("auto", "src", VECTOR_CODES["source_rate"]))[0]
        if not victim.is_exact and event.vector == "many_source":
            refused.append(Refusal(event.id, str(victim), "a many-source victim is one address"))
            return []
        slug = victim.slug
        if event.vector == "reflection":
            action = RuleAction("drop") if cfg.reflection_action == "drop" else RuleAction(
                "rate_limit", pps=self._ceiling(cfg.reflection_pps, event.baseline_pps))
            what = "drop" if action.kind == "drop" else f"rate-limit to {action.pps} pps per port"
            rules = reflection_rule(
                _rule_id("auto", VECTOR_CODES["reflection"], slug), (victim,), action, cfg.priority,
                ports=cfg.reflection_ports, fragments=cfg.reflection_fragments, origin="auto",
                comment=self._comment(event, f"{what} UDP from reflection ports"), created_by=cfg.created_by,
            )
            return [(r, cfg.escalate_reflection) for r in rules]
        if event.vector == "many_source":
            limit = Rule(
                id=_rule_id("auto", VECTOR_CODES["many_source"], slug),
                match=Match(dst=(victim,)),
                action=RuleAction("rate_limit", pps=cfg.proxy_per_source_pps, scope="per_source"),
                priority=cfg.priority + PER_SOURCE_PRIORITY_OFFSET,
                origin="auto",
                comment=self._comment(event, f"each source at most {cfg.proxy_per_source_pps} pps"),
                created_by=cfg.created_by,
            )
            # One drop list per victim, kept while many-source attacks on it last:
            # newcomers are told apart by age, which a restarted detector does not
            # know, so what is in force (a previous agent's list, or a wave's that
            # returned within the grace TTL) is carried over, not planned afresh.
            base = ("auto", "src", VECTOR_CODES["many_source"], slug)
            drops, _ = self._drops(event, claims, refused, "drop the heaviest newcomers", base,
                                   limit=cfg.proxy_drop_sources,
                                   carried=self._in_force_sources(base, cur, now))
            return [(limit, cfg.escalate_aggregate), *drops]
        signatures = [(rule, cfg.escalate_aggregate) for rule in self._signatures(event, victim)]
        signatures = [*self._known_rules(event, victim, refused), *signatures]
        if event.profile == "spoofed":
            return signatures
        # One drop list per victim and vector, kept while floods of it last: a
        # restarted detector cannot name the sources exact deny entries already
        # drop, so what is in force is carried over, not planned afresh.
        base = ("auto", "src", VECTOR_CODES[event.vector], slug)
        drops, covered = self._drops(event, claims, refused, "drop the offending sources", base=base,
                                     carried=self._in_force_sources(base, cur, now))
        # A concentrated flood whose offenders no rule may drop (guards) needs the
        # victim-wide limit; one with none named is carried by sources the data
        # plane already drops (exact deny entries: the detector counts them as
        # covered), and a limit beside those drops would only hit the victim's clients.
        if event.profile == "diffuse" or (not covered and event.offenders):
            return [*signatures, *drops]
        return drops

    def _known_rules(self, event: AttackEvent, victim: Prefix, refused: list[Refusal]) -> list[_Planned]:
        """UDP floods: the victim's known sources (less the attack's offenders
        and the guarded prefixes) pass within a per-source limit, one priority
        before the ceiling (ids ``auto-known-udp-<victim>``, ``-2`` ...).
        Offenders are dropped by deny entries, which win over every signature."""
        cfg = self.config
        if event.vector != "udp" or self._known is None or not cfg.known_per_source_pps:
            return []
        offenders = set(event.offenders)
        known = [p for p in self._known(victim) if p not in offenders and self._guards.covering(p) is None]
        if not known:
            return []
        base = ("auto", "known", VECTOR_CODES["udp"], victim.slug)
        size = cfg.max_prefixes_per_rule
        rules: list[_Planned] = []
        for n, start in enumerate(range(0, len(known), size)):
            part = tuple(known[start : start + size])
            rules.append((Rule(
                id=_rule_id(*base, *(() if n == 0 else (str(n + 1),))),
                match=Match(src=part, dst=(victim,), protocol=_UDP),
                action=RuleAction("rate_limit", pps=cfg.known_per_source_pps, scope="per_source"),
                priority=max(cfg.priority - KNOWN_PRIORITY_OFFSET, 0),
                origin="auto",
                comment=self._comment(event, f"{len(part)} sources known before the attack: each at most "
                                             f"{cfg.known_per_source_pps} pps past the ceiling"),
                created_by=cfg.created_by,
            ), False))
        return rules

    def _ceiling(self, floor: int, baseline: float) -> int:
        return int(min(MAX_RATE, max(floor, math.ceil(self.config.ceiling_factor * baseline))))

    def _comment(self, event: AttackEvent, what: str) -> str:
        where = f" on {event.victim}" if event.victim is not None else ""
        return f"attack {event.id}: {_TITLES[event.vector]}{where} ({event.profile}); {what}"[:MAX_COMMENT]

    def _challenged_ports(self, victim: Prefix) -> list[int]:
        """The victim's challenged ports, sorted."""
        ports = {s.port for s in self.challenged
                 if s.prefix.family == victim.family
                 and victim.network.network_address in s.prefix.network}
        return sorted(ports)

    def _signatures(self, event: AttackEvent, victim: Prefix) -> list[Rule]:
        """The aggregate limit of the attack's vector towards the victim; for
        SYN and ACK floods, on the ports its challenged services leave (one
        rule per range between them, ids ``-2``, ``-3`` ...)."""
        rule = self._signature(event, victim)
        ports = self._challenged_ports(victim) if event.vector in _CHALLENGED_VECTORS else []
        if not ports:
            return [rule]
        ranges: list[PortRange] = []
        lo = 0
        for port in ports:
            if port > lo:
                ranges.append(PortRange(lo, port - 1))
            lo = port + 1
        if lo <= 65535:
            ranges.append(PortRange(lo, 65535))
        left = ", ".join(str(port) for port in ports)
        what = f"aggregate limit {rule.action.pps} pps; port {left} left to the SYN challenge"
        return [replace(rule, id=rule.id if i == 0 else _rule_id(rule.id, str(i + 1)),
                        match=replace(rule.match, dport=dport),
                        comment=self._comment(event, f"{what} (ports {dport})"))
                for i, dport in enumerate(ranges)]

    def _signature(self, event: AttackEvent, victim: Prefix) -> Rule:
        """An aggregate rate limit of the attack's vector towards the victim."""
        dst = (victim,)
        vector = event.vector
        if vector == "syn":
            match = Match(dst=dst, protocol=_TCP, tcp_flags=_SYN_NO_ACK)
        elif vector == "ack":
            match = Match(dst=dst, protocol=_TCP, tcp_flags=_ACK_NO_SYN)
        elif vector == "udp":
            match = Match(dst=dst, protocol=_UDP)
        elif vector == "icmp":
            match = Match(dst=dst, protocol=_ICMP if victim.family == 4 else _ICMPV6)
        elif vector == "gre":
            match = Match(dst=dst, protocol=_GRE)
        elif vector == "fragment":
            match = Match(dst=dst, fragment="yes")
        else:
            raise InputError(f"vector: {vector!r} has no victim signature")
        pps = self._ceiling(self.config.ceiling_pps, event.baseline_pps)
        return Rule(
            id=_rule_id("auto", VECTOR_CODES[vector], victim.slug),
            match=match,
            action=RuleAction("rate_limit", pps=pps),
            priority=self.config.priority,
            origin="auto",
            comment=self._comment(event, f"aggregate limit {pps} pps"),
            created_by=self.config.created_by,
        )

    def _drops(
        self,
        event: AttackEvent,
        claims: _PrefixIndex,
        refused: list[Refusal],
        what: str,
        base: tuple[str, ...],
        limit: int | None = None,
        carried: tuple[Prefix, ...] = (),
    ) -> tuple[list[_Planned], int]:
        """Source drop rules for the attack's offenders (the first ``limit``)
        plus the ``carried`` prefixes, aggregated and guarded; and how many of
        the resulting prefixes are covered (by these rules or by an earlier
        attack's). Rule ids are ``base``, then ``-2``, ``-3`` ...

        The detector hands over the same offenders tuple until the set
        changes, so the guarded, aggregated prefixes and their rules are
        computed once per change, not once per interval."""
        cache = self._drop_cache.get(event.id)
        # ``carried`` is mostly this cache's own list, as the rule in force holds it: nothing new
        if (cache is None or cache.offenders is not event.offenders or cache.profile != event.profile
                or cache.what != what or cache.limit != limit
                or (carried != cache.carried and carried != cache.candidates)):
            # the carried prefixes are mostly the offenders again: each once
            wanted = tuple(dict.fromkeys((*event.offenders[:limit], *carried))) if carried else \
                event.offenders[:limit]
            candidates, refusals = self._candidates(event, wanted)
            cache = _DropCache(event.offenders, event.profile, what, limit, candidates, refusals,
                               carried)
            self._drop_cache[event.id] = cache
        refused.extend(cache.refusals)
        chosen = cache.candidates
        if not claims.empty:
            chosen = tuple(p for p in chosen if claims.covering(p) is None)
        for p in chosen:
            claims.add(p)
        if chosen is cache.candidates:
            if cache.rules is None:
                cache.rules = self._src_rules(event, chosen, what, base)
            return cache.rules, len(chosen)
        return self._src_rules(event, chosen, what, base), len(cache.candidates)

    def _in_force_sources(self, base: tuple[str, ...], cur: Mapping[str, Rule],
                          now: datetime) -> tuple[Prefix, ...]:
        """The source prefixes of the unexpired drop rules ``base``, ``base-2`` ... in ``cur``."""
        out: list[Prefix] = []
        for n in range(1, self.config.max_rules_per_attack + 1):
            rule = cur.get(_rule_id(*base, *(() if n == 1 else (str(n),))))
            if rule is None:
                break
            if rule.action.kind == "drop" and rule.match.is_src_only and rule.is_active(now):
                out += rule.match.src
        return tuple(out)

    def _candidates(
        self, event: AttackEvent, offenders: Sequence[Prefix]
    ) -> tuple[tuple[Prefix, ...], tuple[Refusal, ...]]:
        """The prefixes to drop for ``offenders``: breadth and allowlist
        guards applied, K offenders of one /24 (/48) aggregated; sorted."""
        cfg = self.config
        broadest = {4: cfg.broadest_v4, 6: cfg.broadest_v6}
        agg_len = {4: cfg.aggregate_v4, 6: cfg.aggregate_v6}
        refused: list[Refusal] = []
        singles: dict[tuple[int, int], list[Prefix]] = {}
        chosen: list[Prefix] = []
        for p in offenders:
            plen = p.network.prefixlen
            if plen < broadest[p.family]:
                refused.append(Refusal(event.id, str(p),
                                       f"broader than the /{broadest[p.family]} limit for automatic rules"))
                continue
            guard = self._guards.overlapping(p)
            if guard is not None:
                refused.append(Refusal(event.id, str(p), f"overlaps {guard[0]} {guard[1]}; never dropped"))
                continue
            if p.is_exact and plen > agg_len[p.family]:
                key = _int_of(p) >> (_bits(p.family) - agg_len[p.family])
                singles.setdefault((p.family, key), []).append(p)
            else:
                chosen.append(p)
        for (fam, key), members in singles.items():
            if len(members) < cfg.aggregate_min_sources:
                chosen += members
                continue
            length = agg_len[fam]
            aggregate = _network(fam, key << (_bits(fam) - length), length)
            guard = self._guards.overlapping(aggregate)
            if guard is not None:
                refused.append(Refusal(event.id, str(aggregate),
                                       f"not aggregated: overlaps {guard[0]} {guard[1]}; "
                                       f"dropping its {len(members)} offenders one by one"))
                chosen += members
            else:
                chosen.append(aggregate)
        if any(not p.is_exact for p in offenders):
            # offenders given as prefixes may contain others: list each address once
            own = _PrefixIndex()
            unique: list[Prefix] = []
            for p in sorted(chosen, key=lambda q: (q.network.prefixlen, _sort_key(q))):
                if own.covering(p) is None:
                    own.add(p)
                    unique.append(p)
            chosen = unique
        chosen.sort(key=_sort_key)
        return tuple(chosen), tuple(refused)

    def _src_rules(self, event: AttackEvent, prefixes: Sequence[Prefix], what: str,
                   base: tuple[str, ...]) -> list[_Planned]:
        """Drop rules for ``prefixes``: ``base``, then ``base-2``, ``base-3`` ..."""
        cfg = self.config
        rules: list[_Planned] = []
        size = cfg.max_prefixes_per_rule
        for n, start in enumerate(range(0, len(prefixes), size)):
            part = tuple(prefixes[start : start + size])
            suffix = () if n == 0 else (str(n + 1),)
            rules.append((Rule(
                id=_rule_id(*base, *suffix),
                match=Match(src=part),
                action=RuleAction("drop"),
                priority=cfg.priority,
                origin="auto",
                comment=self._comment(event, f"{what} ({len(part)} prefixes)"),
                created_by=cfg.created_by,
            ), False))
        return rules
