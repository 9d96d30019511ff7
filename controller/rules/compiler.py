"""Compile a rule set into what the data plane's maps hold.

:func:`compile_ruleset` sorts the active rules of a :class:`RuleSet` into:

* **allow entries**: rules whose match is source prefixes only and whose
  action is ``allow`` (plus the management prefixes), for the allow tries;
* **deny entries**: source-only ``drop`` rules, one entry per prefix: /32
  and /128 for the exact hash maps, shorter ones for the prefix tries;
* **signatures**: every other rule, at most ``max_signatures``, in
  evaluation order, for a bit-vector classifier (signature *i* is bit *i*).

The data plane evaluates a packet in this order (:meth:`CompiledSet.evaluate`
is the reference model, ``docs/rules.md`` the operator's description):

1. allow entries, longest source prefix: pass (management entries report
   ``pass_mgmt``);
2. deny entries, exact source first, then longest prefix: drop;
3. signatures by (priority, id), first match wins: ``drop`` drops,
   ``allow`` passes, ``rate_limit`` passes under its limit and drops over
   it; ``monitor`` counts and evaluation goes on;
4. nothing matched: pass.

Stages 1 and 2 win over signatures whatever the priorities say;
:attr:`CompiledSet.warnings` names rules whose priorities suggest otherwise.

Every rule has a **slot**, its index in the ``rule_stats`` counters. Slots are
stable across compiles (:class:`SlotTable`): a rule that survives keeps its
slot, so its counters survive the swap to the new set.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal, NamedTuple, TypeVar

from ..addresses import Prefix
from ..errors import InputError
from .model import ActionKind, Fragment, Rule, RuleAction, RuleSet
from .values import PortRange, TcpFlags

__all__ = [
    "DEFAULT_MAX_RULE_SLOTS",
    "DEFAULT_MAX_SIGNATURES",
    "MAX_WARNINGS",
    "AllowEntry",
    "CompiledSet",
    "DenyEntry",
    "Packet",
    "PortBits",
    "PrefixBits",
    "ProtoBits",
    "RateSpec",
    "Signature",
    "SlotTable",
    "Verdict",
    "compile_ruleset",
]

DEFAULT_MAX_SIGNATURES: Final = 256
"""Signatures the data plane's bit vectors hold (four 64-bit words)."""
DEFAULT_MAX_RULE_SLOTS: Final = 1 << 14
"""Entries of ``rule_stats`` (``MapSizes.rules``); slot 0 means "no rule"."""
MAX_WARNINGS: Final = 100
"""Warnings kept per compile; the rest are summed up in one last line."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Dimension = Literal["src", "dst"]
PortDimension = Literal["sport", "dport"]


# --- slots -------------------------------------------------------------------


@dataclass(frozen=True)
class SlotTable:
    """Rule id → counter slot (1 or more; 0 is "no rule"), immutable.

    Keep the table a compile returns and pass it to the next compile: rules
    that survive keep their slots. Persist it (:meth:`to_dict`) with the rule
    set so a restarted controller keeps the counters' meaning.
    """

    slots: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        table = dict(self.slots)
        values = list(table.values())
        if not all(type(s) is int and s >= 1 for s in values) or len(set(values)) != len(values):
            seen: dict[int, str] = {}
            for rid, s in table.items():
                if type(s) is not int or s < 1:
                    raise InputError(f"slots[{rid!r}]: {s!r} is not a slot number (1 or more)")
                if s in seen:
                    raise InputError(f"slots[{rid!r}]: slot {s} is also held by {seen[s]!r}")
                seen[s] = rid
        object.__setattr__(self, "slots", MappingProxyType(table))

    def __hash__(self) -> int:
        return hash(frozenset(self.slots.items()))

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self.slots

    def get(self, rule_id: str) -> int:
        """The rule's slot, or 0 when it has none."""
        return self.slots.get(rule_id, 0)

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.slots.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> SlotTable:
        return cls(dict(data))

    def assign(self, rule_ids: Iterable[str], max_rule_slots: int) -> tuple[SlotTable, frozenset[int]]:
        """Slots for ``rule_ids`` (in the order given): survivors keep theirs,
        new ids take the lowest free slot, and the slots of ids that are gone
        are freed. A slot freed here goes to a new id only when no other slot
        is free, so the caller has until the next compile to zero it.

        Returns the new table and the freed slots.
        """
        ids = list(rule_ids)
        old = self.slots
        kept: dict[str, int] = {}
        new_ids: list[str] = []
        for rid in ids:
            s = old.get(rid)
            if s is None:
                new_ids.append(rid)
                continue
            if s >= max_rule_slots:
                raise InputError(
                    f"slots: rule {rid!r} holds slot {s} but max_rule_slots is {max_rule_slots}; "
                    "start from an empty SlotTable after shrinking the rules map"
                )
            kept[rid] = s
        freed = frozenset(s for rid, s in old.items() if rid not in kept)
        available = max_rule_slots - 1 - len(kept)
        if len(new_ids) > available:
            raise InputError(
                f"rule slots exhausted: {len(ids)} active rules need a slot each, but there are "
                f"{max_rule_slots - 1} (max_rule_slots {max_rule_slots}, slot 0 is reserved); "
                "grow the rules map or merge src-only rules (one rule may hold many prefixes)"
            )
        used = set(kept.values())
        free = _free_slots(used, freed, max_rule_slots)
        table = dict(kept)
        table.update(zip(new_ids, free, strict=False))
        return SlotTable._trusted(table), freed

    @classmethod
    def _trusted(cls, table: dict[str, int]) -> SlotTable:
        """A table built by :meth:`assign`, valid by construction: skip the checks."""
        out = object.__new__(cls)
        object.__setattr__(out, "slots", MappingProxyType(table))
        return out


def _free_slots(used: set[int], freed: frozenset[int], limit: int) -> Iterator[int]:
    for s in range(1, limit):
        if s not in used and s not in freed:
            yield s
    yield from sorted(freed)


# --- compiled objects --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateSpec:
    """A rate limit as the data plane applies it: bursts resolved, bps in bits/s."""

    pps: int | None
    bps: int | None
    burst_packets: int | None
    burst_bytes: int | None
    per_source: bool

    @classmethod
    def of(cls, action: RuleAction) -> RateSpec:
        return cls(
            action.pps,
            action.bps,
            action.effective_burst_packets,
            action.effective_burst_bytes,
            action.scope == "per_source",
        )


@dataclass(frozen=True, slots=True)
class DenyEntry:
    """A denied source prefix and the slot of the rule it came from."""

    prefix: Prefix
    slot: int
    rule_id: str = ""

    @property
    def kind(self) -> Literal["exact", "prefix"]:
        """``exact`` (/32, /128: the hash maps) or ``prefix`` (the tries)."""
        return "exact" if self.prefix.is_exact else "prefix"


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """An allowed source prefix; ``management`` entries come from the
    management prefixes, not from a rule (slot 0)."""

    prefix: Prefix
    slot: int
    rule_id: str = ""
    management: bool = False


@dataclass(frozen=True, slots=True)
class Packet:
    """What the data plane knows about a packet, for :meth:`CompiledSet.evaluate`.

    ``sport``/``dport``/``tcp_flags`` are None when the packet has no such
    header (other protocols, non-first fragments); ``length`` is the IP length.
    """

    src: Address
    dst: Address
    protocol: int
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    length: int = 0
    fragment: bool = False

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise InputError(f"packet: src {self.src} and dst {self.dst} are different IP families")

    @property
    def family(self) -> int:
        return self.src.version


@dataclass(frozen=True, slots=True)
class Signature:
    """A rule the bit-vector classifier evaluates; ``index`` is its position
    in evaluation order and its bit in every bitmap."""

    index: int
    slot: int
    rule_id: str
    action: ActionKind
    src: tuple[Prefix, ...]
    dst: tuple[Prefix, ...]
    protocol: int | None
    sport: PortRange | None
    dport: PortRange | None
    tcp_flags: TcpFlags | None
    length: tuple[int, int] | None
    fragment: Fragment
    families: frozenset[int]
    rate: RateSpec | None
    priority: int = 0

    @property
    def bit(self) -> int:
        return 1 << self.index

    @property
    def terminal(self) -> bool:
        """Whether a match ends evaluation (everything but monitor)."""
        return self.action != "monitor"

    def matches(self, pkt: Packet) -> bool:
        """The reference match: what the bitmaps plus the per-signature
        checks (flags, length, fragment) must decide."""
        if pkt.family not in self.families:
            return False
        if self.src and not any(pkt.src in p.network for p in self.src):
            return False
        if self.dst and not any(pkt.dst in p.network for p in self.dst):
            return False
        if self.protocol is not None and pkt.protocol != self.protocol:
            return False
        if self.sport is not None and (pkt.sport is None or pkt.sport not in self.sport):
            return False
        if self.dport is not None and (pkt.dport is None or pkt.dport not in self.dport):
            return False
        if self.tcp_flags is not None and (
            pkt.tcp_flags is None or not self.tcp_flags.matches(pkt.tcp_flags)
        ):
            return False
        if self.length is not None and not self.length[0] <= pkt.length <= self.length[1]:
            return False
        if self.fragment == "yes":
            return pkt.fragment
        if self.fragment == "no":
            return not pkt.fragment
        return True


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`CompiledSet.evaluate` decided, and which rule decided it.
    ``rate_limit`` means "pass if the rule's bucket has tokens, else drop"."""

    action: Literal["pass", "drop", "rate_limit"]
    stage: Literal["allow", "deny", "signature", "default"]
    rule_id: str = ""
    slot: int = 0
    management: bool = False
    monitored: tuple[str, ...] = ()


class ProtoBits(NamedTuple):
    """Signatures a packet of protocol *p* may match: ``per_proto.get(p,
    any_bits)``. ``per_proto`` lists the protocols some signature names
    (each value includes ``any_bits``, the signatures without a protocol)."""

    per_proto: dict[int, int]
    any_bits: int


class PortBits(NamedTuple):
    """Signatures a packet with port *n* may match: ``per_port.get(n,
    default_bits)`` (``per_port`` lists only ports that differ from the
    default); a packet without ports (not TCP/UDP/SCTP, or a non-first
    fragment) may match only ``noport_bits``, the signatures without a
    constraint on this port. ``default_bits`` also holds signatures whose
    range is the full 0-65535, which still need a port."""

    per_port: dict[int, int]
    default_bits: int
    noport_bits: int


class PrefixBits(NamedTuple):
    """Prefixes of one dimension and family, flattened for one longest-prefix
    lookup: the longest entry containing the address gives every signature
    that may match it (its own, its enclosing prefixes' and ``any_bits``);
    no entry gives ``any_bits``, the signatures without a constraint here."""

    entries: list[tuple[Prefix, int]]
    any_bits: int


@dataclass(frozen=True)
class CompiledSet:
    """Map contents for one rule set, plus the slot table for the next compile.

    After applying the set, zero the ``rule_stats`` counters of every slot in
    ``freed_slots``: those rules are gone and their slots will be reused.
    Recompile at ``next_expiry`` (if set) to drop rules whose ttl ends.
    """

    deny: tuple[DenyEntry, ...]
    allow: tuple[AllowEntry, ...]
    signatures: tuple[Signature, ...]
    slots: SlotTable
    freed_slots: frozenset[int]
    warnings: tuple[str, ...] = ()
    next_expiry: datetime | None = None

    # -- bitmap views for the classifier --

    def proto_bits(self) -> ProtoBits:
        any_bits = 0
        for s in self.signatures:
            if s.protocol is None:
                any_bits |= s.bit
        per: dict[int, int] = {}
        for s in self.signatures:
            if s.protocol is not None:
                per[s.protocol] = per.get(s.protocol, any_bits) | s.bit
        return ProtoBits(per, any_bits)

    def port_bits(self, which: PortDimension) -> PortBits:
        if which not in ("sport", "dport"):
            raise InputError(f"port_bits: {which!r} is not sport or dport")
        noport = 0
        default = 0
        partial: list[tuple[int, int, int]] = []
        for s in self.signatures:
            rng: PortRange | None = getattr(s, which)
            if rng is None:
                noport |= s.bit
            elif rng.is_full:
                default |= s.bit
            else:
                partial.append((rng.lo, rng.hi, s.bit))
        default |= noport
        bounds = sorted({b for lo, hi, _ in partial for b in (lo, hi + 1)})
        per: dict[int, int] = {}
        for start, end in itertools.pairwise(bounds):
            bits = default
            for lo, hi, bit in partial:
                if lo <= start <= hi:
                    bits |= bit
            if bits != default:
                per.update(dict.fromkeys(range(start, end), bits))
        return PortBits(per, default, noport)

    def prefix_bits(self, which: Dimension, family: int) -> PrefixBits:
        if which not in ("src", "dst"):
            raise InputError(f"prefix_bits: {which!r} is not src or dst")
        if family not in (4, 6):
            raise InputError(f"prefix_bits: family {family!r} is not 4 or 6")
        any_bits = 0
        own: dict[Prefix, int] = {}
        for s in self.signatures:
            if family not in s.families:
                continue
            prefixes: tuple[Prefix, ...] = getattr(s, which)
            if not prefixes:
                any_bits |= s.bit
                continue
            for p in prefixes:
                if p.family == family:
                    own[p] = own.get(p, 0) | s.bit
        rows = sorted(
            ((int(p.network.network_address), p.network.prefixlen, p, bits) for p, bits in own.items()),
            key=lambda r: (r[0], r[1]),
        )
        out: list[tuple[Prefix, int]] = []
        stack: list[tuple[int, int]] = []  # (last address, flattened bits) of the enclosing prefixes
        for start, _, p, bits in rows:
            while stack and stack[-1][0] < start:
                stack.pop()
            total = bits | (stack[-1][1] if stack else any_bits)
            out.append((p, total))
            stack.append((int(p.network.broadcast_address), total))
        return PrefixBits(out, any_bits)

    # -- the reference model --

    def evaluate(self, pkt: Packet) -> Verdict:
        """What the data plane must decide for ``pkt`` (a slow reference:
        linear in the number of entries; for tests and explanations)."""
        allow = _longest(self.allow, pkt.src)
        if allow is not None:
            return Verdict("pass", "allow", allow.rule_id, allow.slot, allow.management)
        exact = next((e for e in self.deny if e.prefix.is_exact and pkt.src in e.prefix.network), None)
        deny = exact or _longest(self.deny, pkt.src)
        if deny is not None:
            return Verdict("drop", "deny", deny.rule_id, deny.slot)
        monitored: list[str] = []
        for s in self.signatures:
            if not s.matches(pkt):
                continue
            if s.action == "monitor":
                monitored.append(s.rule_id)
                continue
            action: Literal["pass", "drop", "rate_limit"] = (
                "pass" if s.action == "allow" else "drop" if s.action == "drop" else "rate_limit"
            )
            return Verdict(action, "signature", s.rule_id, s.slot, monitored=tuple(monitored))
        return Verdict("pass", "default", monitored=tuple(monitored))


_E = TypeVar("_E", DenyEntry, AllowEntry)


def _longest(entries: Sequence[_E], addr: Address) -> _E | None:
    best: _E | None = None
    for e in entries:
        plen = e.prefix.network.prefixlen
        if addr in e.prefix.network and (best is None or plen > best.prefix.network.prefixlen):
            best = e
    return best


# --- the compiler ------------------------------------------------------------


class _Warnings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_WARNINGS:
            self.items.append(text)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        tail = [f"... and {self.dropped} more warnings"] if self.dropped else []
        return tuple(self.items + tail)


def compile_ruleset(
    rs: RuleSet,
    now: datetime,
    slots: SlotTable | None = None,
    max_signatures: int = DEFAULT_MAX_SIGNATURES,
    max_rule_slots: int = DEFAULT_MAX_RULE_SLOTS,
    management: Sequence[Prefix] = (),
) -> CompiledSet:
    """Compile the rules of ``rs`` active at ``now`` (see the module doc).

    ``slots`` is the table the previous compile returned (None: no rule has a
    slot yet). ``management`` prefixes become allow entries flagged as
    management. Raises :class:`InputError` when the signatures or the slots
    do not fit; nothing is half-compiled.
    """
    if type(max_signatures) is not int or max_signatures < 0:
        raise InputError(f"max_signatures: {max_signatures!r} is not a count (0 or more)")
    if type(max_rule_slots) is not int or max_rule_slots < 1:
        raise InputError(f"max_rule_slots: {max_rule_slots!r} is not a map size (1 or more)")
    if now.tzinfo is None or now.utcoffset() is None:
        raise InputError("now: needs a time zone (use datetime.now(UTC))")
    active = [r for r in rs.rules if r.expires_at is None or r.expires_at > now]
    active.sort(key=_ORDER)
    table, freed = (slots or SlotTable()).assign((r.id for r in active), max_rule_slots)
    slot_of = table.slots
    warn = _Warnings()

    # Keyed by the network: hashing it directly is cheaper than hashing the Prefix.
    allow: dict[Network, AllowEntry] = {}
    for p in management:
        if not isinstance(p, Prefix):
            raise InputError(f"management: expected a Prefix, got {type(p).__name__}")
        allow.setdefault(p.network, AllowEntry(p, 0, "", True))
    deny: dict[Network, DenyEntry] = {}
    sig_rules: list[Rule] = []
    for rule in active:
        m = rule.match
        kind = rule.action.kind
        if kind == "drop" and m.is_src_only:
            slot = slot_of[rule.id]
            for p in m.src:
                entry = DenyEntry(p, slot, rule.id)
                old = deny.setdefault(p.network, entry)
                if old is not entry:
                    warn.add(
                        f"rule {rule.id!r}: source {p} is already denied by rule {old.rule_id!r} "
                        f"(earlier in priority order); the entry counts for {old.rule_id!r}"
                    )
        elif kind == "allow" and m.is_src_only:
            slot = slot_of[rule.id]
            for p in m.src:
                prev = allow.get(p.network)
                if prev is None:
                    allow[p.network] = AllowEntry(p, slot, rule.id)
                else:
                    owner = "a management prefix" if prev.management else f"allowed by rule {prev.rule_id!r}"
                    warn.add(f"rule {rule.id!r}: source {p} is already {owner}; the entry counts there")
        else:
            sig_rules.append(rule)

    if len(sig_rules) > max_signatures:
        raise InputError(
            f"{len(sig_rules)} rules compile to signatures but the limit is {max_signatures} "
            f"(max_signatures); only src-only drop/allow rules need no signature "
            f"(first over the limit: {sig_rules[max_signatures].id!r})"
        )
    signatures = tuple(_signature(i, r, slot_of[r.id]) for i, r in enumerate(sig_rules))
    _shadowing(tuple(deny.values()), tuple(allow.values()), signatures, active, warn)
    expiries = [r.expires_at for r in active if r.expires_at is not None]
    return CompiledSet(
        deny=tuple(deny.values()),
        allow=tuple(allow.values()),
        signatures=signatures,
        slots=table,
        freed_slots=freed,
        warnings=warn.result(),
        next_expiry=min(expiries) if expiries else None,
    )


_ORDER: Final = operator.attrgetter("priority", "id")


def _signature(index: int, rule: Rule, slot: int) -> Signature:
    m = rule.match
    return Signature(
        index=index,
        slot=slot,
        rule_id=rule.id,
        action=rule.action.kind,
        src=m.src,
        dst=m.dst,
        protocol=m.protocol,
        sport=m.sport,
        dport=m.dport,
        tcp_flags=m.tcp_flags,
        length=m.length,
        fragment=m.fragment,
        families=m.families,
        rate=RateSpec.of(rule.action) if rule.action.kind == "rate_limit" else None,
        priority=rule.priority,
    )


# --- shadowing warnings ------------------------------------------------------

# (first address, prefix length, priority, rule id, prefix)
_Row = tuple[int, int, int, str, Prefix]


class _Index:
    """Entries by family, to find those overlapping a prefix; each view is
    built on first use, so a compile pays only for the questions it asks."""

    def __init__(self, entries: Sequence[DenyEntry | AllowEntry], priority: Mapping[str, int]) -> None:
        self._entries = entries
        self._priority = priority

    @functools.cached_property
    def _rows(self) -> dict[int, list[_Row]]:
        rows: dict[int, list[_Row]] = {4: [], 6: []}
        for e in self._entries:
            net = e.prefix.network
            row = (int(net.network_address), net.prefixlen, self._priority[e.rule_id], e.rule_id, e.prefix)
            rows[net.version].append(row)
        for rs in rows.values():
            rs.sort(key=lambda x: (x[0], x[1]))
        return rows

    @functools.cached_property
    def _starts(self) -> dict[int, list[int]]:
        return {f: [r[0] for r in rs] for f, rs in self._rows.items()}

    @functools.cached_property
    def _by_len(self) -> dict[int, list[tuple[int, dict[int, list[_Row]]]]]:
        out: dict[int, list[tuple[int, dict[int, list[_Row]]]]] = {}
        for f, rs in self._rows.items():
            tables: dict[int, dict[int, list[_Row]]] = {}
            for row in rs:
                tables.setdefault(row[1], {}).setdefault(row[0], []).append(row)
            out[f] = sorted(tables.items())
        return out

    @functools.cached_property
    def _by_priority(self) -> dict[int, tuple[list[int], list[_Row]]]:
        out: dict[int, tuple[list[int], list[_Row]]] = {}
        for f, rs in self._rows.items():
            ordered = sorted(rs, key=lambda x: (x[2], x[3]))
            out[f] = ([r[2] for r in ordered], ordered)
        return out

    def overlapping(self, p: Prefix) -> Iterator[_Row]:
        """Entries inside ``p`` (or equal), then entries containing ``p``."""
        net = p.network
        f, plen = net.version, net.prefixlen
        start, end = int(net.network_address), int(net.broadcast_address)
        lo = bisect.bisect_left(self._starts[f], start)
        hi = bisect.bisect_right(self._starts[f], end)
        for row in self._rows[f][lo:hi]:
            if row[1] >= plen:
                yield row
        bits = net.max_prefixlen
        for length, table in self._by_len[f]:
            if length >= plen:
                break
            mask = ((1 << length) - 1) << (bits - length)
            yield from table.get(start & mask, ())

    def later(self, family: int, priority: int) -> list[_Row]:
        """Entries of ``family`` with a priority number above ``priority``."""
        priorities, rows = self._by_priority[family]
        return rows[bisect.bisect_right(priorities, priority) :]


def _later_overlaps(index: _Index, sig: Signature) -> list[_Row]:
    """Entries with a later priority than ``sig`` that share some of its sources."""
    found: list[_Row] = []
    for fam in sorted(sig.families):
        if not sig.src:
            found += index.later(fam, sig.priority)
            continue
        for p in sig.src:
            if p.family == fam:
                found += [r for r in index.overlapping(p) if r[2] > sig.priority]
    return found


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _shadowing(
    deny: tuple[DenyEntry, ...],
    allow: tuple[AllowEntry, ...],
    signatures: tuple[Signature, ...],
    active: Sequence[Rule],
    warn: _Warnings,
) -> None:
    """Warn where allow/deny entries override what the priorities say, in
    the cases that let through traffic or block it against the operator's
    apparent intent:

    * an ``allow`` signature before (lower priority number) src-only drop
      rules that share its sources: the deny entries still drop;
    * a ``drop``/``rate_limit`` signature with source prefixes before
      src-only allow rules that share them: the allow entries still pass;
    * a src-only allow rule after src-only drop rules it overlaps: allow wins.

    Not warned: rate-limit or drop signatures without source prefixes (the
    reflection preset, say) ahead of deny entries or allow entries; the
    entries being stricter there, or the allowlist winning, is the design.
    Best effort: overlaps are judged on source prefixes only, so a warning
    means "some traffic may be handled differently than the priorities suggest".
    """
    rule_allow = [a for a in allow if not a.management]
    if not rule_allow and not (deny and any(s.action == "allow" for s in signatures)):
        return  # nothing to compare: the common case of many denies and no allow rules
    priority = {r.id: r.priority for r in active}
    deny_index = _Index(deny, priority) if deny else None
    allow_index = _Index(rule_allow, priority) if rule_allow else None
    for s in signatures:
        if deny_index is not None and s.action == "allow":
            rows = _later_overlaps(deny_index, s)
            if rows:
                ex = rows[0]
                warn.add(
                    f"rule {s.rule_id!r} ({s.action}, priority {s.priority}) is a signature, but "
                    f"{_entries(len(rows))} of src-only drop rules with later priorities overlap its "
                    f"sources (e.g. {ex[3]!r} {ex[4]}, priority {ex[2]}); deny entries are checked "
                    "before signatures, so that traffic is dropped"
                )
        if allow_index is not None and s.action in ("drop", "rate_limit") and s.src:
            rows = _later_overlaps(allow_index, s)
            if rows:
                ex = rows[0]
                warn.add(
                    f"rule {s.rule_id!r} ({s.action}, priority {s.priority}) is a signature, but "
                    f"{_entries(len(rows))} of src-only allow rules with later priorities overlap its "
                    f"sources (e.g. {ex[3]!r} {ex[4]}, priority {ex[2]}); allow entries are checked "
                    "first, so that traffic is passed"
                )
    if deny_index is None:
        return
    by_rule: dict[str, list[AllowEntry]] = {}
    for a in rule_allow:
        by_rule.setdefault(a.rule_id, []).append(a)
    for rid, entries in by_rule.items():
        prio = priority[rid]
        rows = [r for a in entries for r in deny_index.overlapping(a.prefix) if r[2] < prio]
        if rows:
            ex = rows[0]
            warn.add(
                f"src-only allow rule {rid!r} (priority {prio}) overlaps {_entries(len(rows))} of "
                f"drop rules with earlier priorities (e.g. {ex[3]!r} {ex[4]}, priority {ex[2]}); "
                "allow entries always win, so that traffic is passed"
            )
