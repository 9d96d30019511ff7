"""Rules: what an operator, the detector or a feed asks the data plane to do.

A :class:`Rule` is a stable id, a :class:`Match` (which packets), a
:class:`RuleAction` (what to do with them), a priority (lower first), an
optional expiry, and bookkeeping (origin, comment, created-by). A
:class:`RuleSet` is a collection of rules with unique ids; it reads and writes
TOML and JSON (the format is in ``docs/rules.md``) and diffs against another
set by id. :mod:`controller.rules.compiler` turns a rule set into map contents.

Every class validates itself on construction, and every parser reports the
first problem as a :class:`FieldError` (an :class:`InputError`) that names the
field path and what is wrong::

    rules[3].match.dport: 70000 is out of range 0..65535
    rules[2].match.dprot: unknown key (did you mean 'dport'?); known: dport, dst, ...
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, cast

from ..addresses import Prefix, parse_prefix
from ..config import toml_value
from ..errors import FieldError, InputError
from ..validate import at, check_choice, check_int, check_keys, check_str, check_table, show
from .values import (
    PORT_PROTOCOLS,
    PROTOCOL_NAMES,
    PortRange,
    TcpFlags,
    check_range,
    format_time,
    parse_protocol,
    parse_range,
    parse_time,
    parse_ttl,
    protocol_name,
    range_value,
)

__all__ = [
    "ACTION_KINDS",
    "DEFAULT_PRIORITY",
    "FORMAT_VERSION",
    "FRAGMENT_MODES",
    "MAX_COMMENT",
    "MAX_CREATED_BY",
    "MAX_PRIORITY",
    "MAX_RATE",
    "MIN_BURST_BYTES",
    "MIN_BURST_PACKETS",
    "ORIGINS",
    "SCOPES",
    "ActionKind",
    "Fragment",
    "Match",
    "Origin",
    "Rule",
    "RuleAction",
    "RuleDiff",
    "RuleSet",
    "Scope",
]

ActionKind = Literal["drop", "rate_limit", "allow", "monitor"]
Scope = Literal["per_source", "aggregate"]
Fragment = Literal["any", "yes", "no"]
Origin = Literal["manual", "auto", "controller", "feed"]

ACTION_KINDS: Final[tuple[ActionKind, ...]] = ("drop", "rate_limit", "allow", "monitor")
SCOPES: Final[tuple[Scope, ...]] = ("per_source", "aggregate")
FRAGMENT_MODES: Final[tuple[Fragment, ...]] = ("any", "yes", "no")
ORIGINS: Final[tuple[Origin, ...]] = ("manual", "auto", "controller", "feed")

FORMAT_VERSION: Final = 1
"""Version of the rule file format (the ``version`` key); this build reads 1."""

DEFAULT_PRIORITY: Final = 1000
MAX_PRIORITY: Final = 65535

_TCP: Final = 6
# A protocol that exists in one IP family only limits the rule to that family.
_PROTOCOL_FAMILIES: Final = {1: frozenset({4}), 58: frozenset({6})}
_BOTH: Final = frozenset({4, 6})

MAX_RATE: Final = 10**12
"""Largest pps or bps a rate limit takes (1 Tpps, 1 Tbit/s)."""
MAX_BURST: Final = 2**32 - 1
"""Largest burst, in packets or bytes (the data plane keeps buckets in u32)."""
BURST_DIVISOR: Final = 10
"""Default bursts hold 1/10 s of the rate: a short spike passes, a flood does not."""
MIN_BURST_PACKETS: Final = 8
"""Floor of the default packet burst: a few back-to-back packets never trip a low limit."""
MIN_BURST_BYTES: Final = 18_000
"""Floor of the default byte burst: two 9000-byte jumbo packets, so a full
bucket always passes one full-size packet whatever the link MTU."""

MAX_COMMENT: Final = 1024
MAX_CREATED_BY: Final = 256

_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ID_HELP: Final = "use 1-63 characters a-z 0-9 . _ -, starting with a letter or digit"

_RULE_KEYS: Final = (
    "id", "priority", "match", "action", "ttl", "expires_at", "origin", "comment", "created_by",
)
_MATCH_KEYS: Final = ("src", "dst", "protocol", "sport", "dport", "tcp_flags", "length", "fragment")
_ACTION_KEYS: Final = ("kind", "pps", "bps", "burst_packets", "burst_bytes", "scope")
_RATE_FIELDS: Final = ("pps", "bps", "burst_packets", "burst_bytes")
_SET_KEYS: Final = ("version", "rules")
# Keys written in the wrong table, and the table they belong in.
_NOT_RULE_KEYS: Final = {
    **dict.fromkeys(_MATCH_KEYS, "match"), **dict.fromkeys(_ACTION_KEYS[1:], "action"),
}
_NOT_MATCH_KEYS: Final = {
    **dict.fromkeys([k for k in _RULE_KEYS if k != "match"], "the rule table"),
    **dict.fromkeys(_ACTION_KEYS[1:], "action"),
}


# --- match -------------------------------------------------------------------


def _prefix_families(prefixes: tuple[Prefix, ...]) -> frozenset[int]:
    return frozenset(p.family for p in prefixes) or _BOTH


def _family_text(families: frozenset[int]) -> str:
    return " and ".join(f"IPv{f}" for f in sorted(families))


def _check_prefixes(prefixes: object, path: str) -> None:
    if not isinstance(prefixes, tuple):
        raise FieldError(path, f"expected a tuple of prefixes, got {type(prefixes).__name__}")
    seen: dict[Prefix, int] = {}
    for i, p in enumerate(prefixes):
        if not isinstance(p, Prefix):
            raise FieldError(f"{path}[{i}]", f"expected a Prefix, got {type(p).__name__}")
        if p in seen:
            raise FieldError(f"{path}[{i}]", f"{p} repeats {path}[{seen[p]}]")
        seen[p] = i


@dataclass(frozen=True, slots=True)
class Match:
    """Which packets a rule applies to; every field set must match (AND),
    any prefix of a list may match (OR). Empty fields match everything.

    ``length`` is the IP packet length (IPv4 total length, IPv6 payload
    length + 40), independent of VLAN tags. Ports and TCP flags exist only
    in packets with a transport header: a non-first fragment never matches
    a rule that tests them.
    """

    src: tuple[Prefix, ...] = ()
    dst: tuple[Prefix, ...] = ()
    protocol: int | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    tcp_flags: TcpFlags | None = None
    length: tuple[int, int] | None = None
    fragment: Fragment = "any"

    def __post_init__(self) -> None:
        _check_prefixes(self.src, "src")
        _check_prefixes(self.dst, "dst")
        proto = self.protocol
        if proto is not None:
            check_int(proto, "protocol", 0, 255)
        shown = "not set" if proto is None else protocol_name(proto)
        for name in ("sport", "dport"):
            port = getattr(self, name)
            if port is None:
                continue
            if not isinstance(port, PortRange):
                raise FieldError(name, f"expected a PortRange, got {type(port).__name__}")
            if proto not in PORT_PROTOCOLS:
                raise FieldError(name, f"ports need protocol tcp, udp or sctp; protocol is {shown}")
        if self.tcp_flags is not None:
            if not isinstance(self.tcp_flags, TcpFlags):
                raise FieldError("tcp_flags", f"expected TcpFlags, got {type(self.tcp_flags).__name__}")
            if proto != _TCP:
                raise FieldError("tcp_flags", f"needs protocol tcp; protocol is {shown}")
        if self.length is not None:
            if not isinstance(self.length, tuple) or len(self.length) != 2:
                raise FieldError("length", "expected a (lo, hi) tuple")
            with at("length"):
                check_range(*self.length, 65535)
        check_choice(self.fragment, "fragment", FRAGMENT_MODES)
        src_f, dst_f = _prefix_families(self.src), _prefix_families(self.dst)
        if not src_f & dst_f:
            raise FieldError(
                "dst",
                f"only {_family_text(dst_f)} prefixes but src has only {_family_text(src_f)}; "
                "the rule can never match",
            )
        proto_f = _PROTOCOL_FAMILIES.get(proto, _BOTH) if proto is not None else _BOTH
        if not src_f & dst_f & proto_f:
            raise FieldError(
                "protocol",
                f"{shown} is {_family_text(proto_f)}-only but the prefixes are "
                f"{_family_text(src_f & dst_f)}; the rule can never match",
            )

    @property
    def families(self) -> frozenset[int]:
        """IP families (4, 6) the match can apply to, from its prefixes and protocol."""
        fams = _prefix_families(self.src) & _prefix_families(self.dst)
        if self.protocol is not None:
            fams &= _PROTOCOL_FAMILIES.get(self.protocol, _BOTH)
        return fams

    @property
    def is_src_only(self) -> bool:
        """Source prefixes and nothing else: fit for the allow/deny maps."""
        return (
            bool(self.src)
            and not self.dst
            and self.protocol is None
            and self.sport is None
            and self.dport is None
            and self.tcp_flags is None
            and self.length is None
            and self.fragment == "any"
        )

    @classmethod
    def from_dict(cls, data: object) -> Match:
        table = check_table(data, what="a match table, e.g. {protocol = \"udp\", sport = 53}")
        check_keys(table, _MATCH_KEYS, elsewhere=_NOT_MATCH_KEYS)
        src = _parse_prefixes(table.get("src", ()), "src")
        dst = _parse_prefixes(table.get("dst", ()), "dst")
        protocol: int | None = None
        sport: PortRange | None = None
        dport: PortRange | None = None
        flags: TcpFlags | None = None
        length: tuple[int, int] | None = None
        if "protocol" in table:
            with at("protocol"):
                protocol = parse_protocol(table["protocol"])
        if "sport" in table:
            with at("sport"):
                sport = PortRange.parse(table["sport"])
        if "dport" in table:
            with at("dport"):
                dport = PortRange.parse(table["dport"])
        if "tcp_flags" in table:
            with at("tcp_flags"):
                flags = TcpFlags.parse(table["tcp_flags"])
        if "length" in table:
            with at("length"):
                length = parse_range(table["length"], 65535)
        fragment = check_choice(table.get("fragment", "any"), "fragment", FRAGMENT_MODES)
        return cls(src, dst, protocol, sport, dport, flags, length, cast(Fragment, fragment))

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.src:
            out["src"] = [str(p) for p in self.src]
        if self.dst:
            out["dst"] = [str(p) for p in self.dst]
        if self.protocol is not None:
            out["protocol"] = PROTOCOL_NAMES.get(self.protocol, self.protocol)
        if self.sport is not None:
            out["sport"] = self.sport.to_value()
        if self.dport is not None:
            out["dport"] = self.dport.to_value()
        if self.tcp_flags is not None:
            out["tcp_flags"] = str(self.tcp_flags)
        if self.length is not None:
            out["length"] = range_value(*self.length)
        if self.fragment != "any":
            out["fragment"] = self.fragment
        return out


def _parse_prefixat(value: object, path: str) -> Prefix:
    if not isinstance(value, str):
        raise FieldError(path, f"expected an address or prefix string, got {show(value)}")
    try:
        return parse_prefix(value, field=path)
    except InputError as exc:
        text = str(exc)
        raise FieldError(path, text.removeprefix(f"{path}: ")) from None


def _parse_prefixes(value: object, path: str) -> tuple[Prefix, ...]:
    if isinstance(value, str):
        return (_parse_prefixat(value, path),)
    if not isinstance(value, list | tuple):
        raise FieldError(path, f"expected an array of prefixes, got {show(value)}")
    return tuple(_parse_prefixat(v, f"{path}[{i}]") for i, v in enumerate(value))


# --- action ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleAction:
    """What to do with matching packets.

    ``drop``, ``allow`` (pass, skipping later rules), ``monitor`` (count and
    go on to the next rule) or ``rate_limit``: a token bucket of ``pps``
    packets/s and/or ``bps`` bits/s (both: a packet needs tokens from both),
    one bucket per source address (``per_source``) or one for the rule
    (``aggregate``). Bursts left unset default to 1/10 s of the rate, at
    least :data:`MIN_BURST_PACKETS` packets and :data:`MIN_BURST_BYTES` bytes.
    Bytes are IP packet lengths, as in :attr:`Match.length`.
    """

    kind: ActionKind
    pps: int | None = None
    bps: int | None = None
    burst_packets: int | None = None
    burst_bytes: int | None = None
    scope: Scope = "aggregate"

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", ACTION_KINDS)
        check_choice(self.scope, "scope", SCOPES)
        if self.kind != "rate_limit":
            for name in _RATE_FIELDS:
                if getattr(self, name) is not None:
                    raise FieldError(name, f"only rate_limit actions take {name}; this one is {self.kind}")
            if self.scope != "aggregate":
                raise FieldError("scope", f"only rate_limit actions take a scope; this one is {self.kind}")
            return
        if self.pps is None and self.bps is None:
            raise FieldError("", "rate_limit needs pps and/or bps, e.g. {kind = \"rate_limit\", pps = 1000}")
        for name in ("pps", "bps"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1, MAX_RATE)
        for burst, rate in (("burst_packets", "pps"), ("burst_bytes", "bps")):
            if getattr(self, burst) is None:
                continue
            if getattr(self, rate) is None:
                raise FieldError(burst, f"needs {rate}: a burst without a rate limits nothing")
            check_int(getattr(self, burst), burst, 1, MAX_BURST)

    @property
    def effective_burst_packets(self) -> int | None:
        """The packet bucket size: as given, or 1/10 s of ``pps`` (at least 8)."""
        if self.pps is None:
            return None
        if self.burst_packets is not None:
            return self.burst_packets
        return min(max(self.pps // BURST_DIVISOR, MIN_BURST_PACKETS), MAX_BURST)

    @property
    def effective_burst_bytes(self) -> int | None:
        """The byte bucket size: as given, or 1/10 s of ``bps`` in bytes (at least 18000)."""
        if self.bps is None:
            return None
        if self.burst_bytes is not None:
            return self.burst_bytes
        return min(max(self.bps // 8 // BURST_DIVISOR, MIN_BURST_BYTES), MAX_BURST)

    @classmethod
    def from_dict(cls, data: object) -> RuleAction:
        """``"drop"`` or a table ``{kind = "rate_limit", pps = 1000, scope = "per_source"}``."""
        if isinstance(data, str):
            return cls(cast(ActionKind, check_choice(data, "", ACTION_KINDS)))
        table = check_table(data, what="an action name or table")
        check_keys(table, _ACTION_KEYS)
        if "kind" not in table:
            raise FieldError("kind", f"missing; one of {', '.join(ACTION_KINDS)}")
        kind = check_choice(table["kind"], "kind", ACTION_KINDS)
        if kind != "rate_limit":
            for name in (*_RATE_FIELDS, "scope"):
                if name in table:
                    raise FieldError(name, f"only rate_limit actions take {name}; this one is {kind}")
        rates: dict[str, int | None] = {}
        for name in _RATE_FIELDS:
            value = table.get(name)
            limit = MAX_RATE if name in ("pps", "bps") else MAX_BURST
            rates[name] = None if value is None else check_int(value, name, 1, limit)
        scope = check_choice(table.get("scope", "aggregate"), "scope", SCOPES)
        return cls(
            cast(ActionKind, kind),
            rates["pps"],
            rates["bps"],
            rates["burst_packets"],
            rates["burst_bytes"],
            cast(Scope, scope),
        )

    def to_value(self) -> str | dict[str, object]:
        if self.kind != "rate_limit":
            return self.kind
        out: dict[str, object] = {"kind": self.kind}
        for name in _RATE_FIELDS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["scope"] = self.scope
        return out


# --- rule --------------------------------------------------------------------


def _check_id(value: object) -> str:
    rid = check_str(value, "id")
    if not _ID_RE.fullmatch(rid):
        raise FieldError("id", f"{rid!r} is not a valid rule id; {_ID_HELP}")
    return rid


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. ``id`` is stable and human-readable; lower ``priority``
    numbers are evaluated first (ties: by id); ``expires_at`` (UTC) ends it."""

    id: str
    match: Match
    action: RuleAction
    priority: int = DEFAULT_PRIORITY
    expires_at: datetime | None = None
    origin: Origin = "manual"
    comment: str = ""
    created_by: str = ""

    def __post_init__(self) -> None:
        _check_id(self.id)
        if not isinstance(self.match, Match):
            raise FieldError("match", f"expected a Match, got {type(self.match).__name__}")
        if not isinstance(self.action, RuleAction):
            raise FieldError("action", f"expected a RuleAction, got {type(self.action).__name__}")
        check_int(self.priority, "priority", 0, MAX_PRIORITY)
        if self.expires_at is not None:
            with at("expires_at"):
                object.__setattr__(self, "expires_at", parse_time(self.expires_at))
        check_choice(self.origin, "origin", ORIGINS)
        if len(check_str(self.comment, "comment")) > MAX_COMMENT:
            raise FieldError("comment", f"{len(self.comment)} characters; at most {MAX_COMMENT}")
        if len(check_str(self.created_by, "created_by")) > MAX_CREATED_BY:
            raise FieldError("created_by", f"{len(self.created_by)} characters; at most {MAX_CREATED_BY}")

    @property
    def order(self) -> tuple[int, str]:
        """Evaluation order key: priority, then id."""
        return (self.priority, self.id)

    def is_active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    @classmethod
    def from_dict(cls, data: object, now: datetime | None = None) -> Rule:
        """Parse one rule table; ``ttl`` counts from ``now`` (default: the current time)."""
        table = check_table(data, what="a rule table")
        check_keys(table, _RULE_KEYS, elsewhere=_NOT_RULE_KEYS)
        if "id" not in table:
            raise FieldError("id", "missing; every rule needs an id")
        rid = _check_id(table["id"])
        priority = check_int(table.get("priority", DEFAULT_PRIORITY), "priority", 0, MAX_PRIORITY)
        if "match" not in table:
            raise FieldError("match", "missing; write match = {} to match every packet")
        with at("match"):
            match = Match.from_dict(table["match"])
        if "action" not in table:
            raise FieldError("action", f"missing; one of {', '.join(ACTION_KINDS)}")
        with at("action"):
            action = RuleAction.from_dict(table["action"])
        expires_at = None
        if "ttl" in table and "expires_at" in table:
            raise FieldError("ttl", "give ttl or expires_at, not both")
        if "ttl" in table:
            with at("ttl"):
                ttl = parse_ttl(table["ttl"])
            expires_at = _now(now) + ttl
        if "expires_at" in table:
            with at("expires_at"):
                expires_at = parse_time(table["expires_at"])
        origin = check_choice(table.get("origin", "manual"), "origin", ORIGINS)
        comment = check_str(table.get("comment", ""), "comment")
        created_by = check_str(table.get("created_by", ""), "created_by")
        return cls(rid, match, action, priority, expires_at, cast(Origin, origin), comment, created_by)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "priority": self.priority,
            "action": self.action.to_value(),
            "match": self.match.to_dict(),
        }
        if self.expires_at is not None:
            out["expires_at"] = format_time(self.expires_at)
        out["origin"] = self.origin
        if self.comment:
            out["comment"] = self.comment
        if self.created_by:
            out["created_by"] = self.created_by
        return out


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise InputError("now: needs a time zone (use datetime.now(UTC))")
    return now.astimezone(UTC)


# --- rule sets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleDiff:
    """What turns one rule set into another, by rule id; each part sorted by id."""

    added: tuple[Rule, ...]
    removed: tuple[Rule, ...]
    changed: tuple[tuple[Rule, Rule], ...]  # (old, new)
    unchanged: tuple[Rule, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules with unique ids, in the order they were given (evaluation order
    is by priority and id, not by position)."""

    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple):
            raise FieldError("rules", f"expected a tuple of rules, got {type(self.rules).__name__}")
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Rule):
                raise FieldError(f"rules[{i}]", f"expected a Rule, got {type(rule).__name__}")
            if rule.id in seen:
                raise FieldError(
                    f"rules[{i}].id", f"duplicate id {rule.id!r}; rules[{seen[rule.id]}] has it too"
                )
            seen[rule.id] = i

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def active(self, now: datetime) -> RuleSet:
        """The rules that have not expired at ``now``."""
        when = _now(now)
        return RuleSet(tuple(r for r in self.rules if r.is_active(when)))

    def diff(self, other: RuleSet) -> RuleDiff:
        """What changes from this set (old) to ``other`` (new)."""
        old = {r.id: r for r in self.rules}
        new = {r.id: r for r in other.rules}
        added = tuple(new[i] for i in sorted(new.keys() - old.keys()))
        removed = tuple(old[i] for i in sorted(old.keys() - new.keys()))
        both = sorted(old.keys() & new.keys())
        changed = tuple((old[i], new[i]) for i in both if old[i] != new[i])
        unchanged = tuple(new[i] for i in both if old[i] == new[i])
        return RuleDiff(added, removed, changed, unchanged)

    @classmethod
    def from_rules(cls, rules: Iterable[Rule]) -> RuleSet:
        return cls(tuple(rules))

    @classmethod
    def from_dict(cls, data: object, now: datetime | None = None) -> RuleSet:
        """Parse ``{"version": 1, "rules": [...]}``; ttls count from ``now``."""
        table = check_table(data, what="a table with version and rules")
        check_keys(table, _SET_KEYS)
        version = table.get("version", FORMAT_VERSION)
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise FieldError(
                "version", f"{show(version)} is not supported; this Breakwater reads {FORMAT_VERSION}"
            )
        items = table.get("rules", [])
        if not isinstance(items, list | tuple):
            raise FieldError("rules", f"expected an array of rule tables, got {show(items)}")
        when = _now(now)
        rules = []
        for i, item in enumerate(items):
            with at(f"rules[{i}]"):
                rules.append(Rule.from_dict(item, when))
        return cls(tuple(rules))

    def to_dict(self) -> dict[str, object]:
        return {"version": FORMAT_VERSION, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def loads_toml(cls, text: str, now: datetime | None = None) -> RuleSet:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"invalid TOML: {exc}") from None
        return cls.from_dict(data, now)

    def dumps_toml(self) -> str:
        """Deterministic TOML that :meth:`loads_toml` reads back to an equal set."""
        lines = [f"version = {FORMAT_VERSION}"]
        for rule in self.rules:
            lines += ["", "[[rules]]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in rule.to_dict().items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def loads_json(cls, text: str, now: datetime | None = None) -> RuleSet:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc}") from None
        return cls.from_dict(data, now)

    def dumps_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent) + "\n"
