"""Breakwater's objects to and from their ``breakwater.v1`` wire form.

* :func:`rule_to_proto` / :func:`rule_from_proto`: a
  :class:`~controller.rules.model.Rule` (or a :class:`~controller.rules.scope.ScopedRule`,
  with its scope and bookkeeping) and ``breakwater.v1.Rule``;
* :func:`rules_to_proto` / :func:`scoped_rules_from_proto` /
  :func:`ruleset_from_proto`: lists of them, e.g. a sync snapshot;
* :func:`attack_to_proto`, :func:`attack_from_proto`, :func:`event_to_proto`:
  a detector's :class:`~controller.detection.events.AttackEvent`;
* :func:`merge_update`: UpdateRule's ``update_mask`` applied to a stored rule;
* :func:`apply_error`: the NACK detail of an update an agent refused;
* resource names: ``rules/{rule_id}``, ``nodes/{node_id}``.

Nothing is validated twice: a proto rule becomes the rule-file form that
:meth:`Rule.from_dict <controller.rules.model.Rule.from_dict>` reads, so the API
accepts exactly what rule files accept, with the same messages. What changes
is the path: every :class:`~controller.rules.model.FieldError` names the proto
field (``rule.match.dport``, ``rule.action.rate_limit.pps``,
``rule.expire_time``, ``requests[3].rule.name``), which
:mod:`controller.api.status` turns into a ``google.rpc.BadRequest`` field violation.

Proto times are UTC :class:`~datetime.datetime` here. Attack events carry
the detector's clock (the agent's ``time.monotonic()``), so their
converters take ``wall_offset``: the Unix time at that clock's zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final, TypeVar

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, rule_pb2

from ..addresses import Prefix, parse_prefix
from ..detection.events import AttackEvent, EventKind, Profile, SourceRate, Vector
from ..errors import CapacityError, FieldError, InputError, MapError, MapFullError
from ..rules.model import ActionKind, Fragment, Origin, Rule, RuleSet, Scope
from ..rules.scope import RuleScope, ScopedRule, check_labels, check_node_id
from ..validate import join

__all__ = [
    "ACTION_KINDS",
    "ATTACK_PHASES",
    "ATTACK_PROFILES",
    "ATTACK_VECTORS",
    "FRAGMENTS",
    "MAX_DURATION_SECONDS",
    "MUTABLE_FIELDS",
    "NODE_WILDCARD",
    "ORIGINS",
    "RATE_LIMIT_SCOPES",
    "apply_error",
    "attack_from_proto",
    "attack_to_proto",
    "check_duration",
    "event_to_proto",
    "merge_update",
    "node_name",
    "parse_node_name",
    "parse_node_parent",
    "parse_rule_name",
    "rule_from_proto",
    "rule_name",
    "rule_to_proto",
    "rules_to_proto",
    "ruleset_from_proto",
    "scoped_rules_from_proto",
]

RULES: Final = "rules/"
NODES: Final = "nodes/"
NODE_WILDCARD: Final = "nodes/-"
"""The parent that means every node (AIP-159)."""

_V = TypeVar("_V")

# --- enums: Python literal <-> proto value ---------------------------------------------

ACTION_KINDS: Final[Mapping[ActionKind, rule_pb2.ActionKind.ValueType]] = {
    "drop": rule_pb2.ACTION_KIND_DROP,
    "rate_limit": rule_pb2.ACTION_KIND_RATE_LIMIT,
    "allow": rule_pb2.ACTION_KIND_ALLOW,
    "monitor": rule_pb2.ACTION_KIND_MONITOR,
}
RATE_LIMIT_SCOPES: Final[Mapping[Scope, rule_pb2.RateLimitScope.ValueType]] = {
    "aggregate": rule_pb2.RATE_LIMIT_SCOPE_AGGREGATE,
    "per_source": rule_pb2.RATE_LIMIT_SCOPE_PER_SOURCE,
}
FRAGMENTS: Final[Mapping[Fragment, rule_pb2.FragmentMatch.ValueType]] = {
    "any": rule_pb2.FRAGMENT_MATCH_ANY,
    "yes": rule_pb2.FRAGMENT_MATCH_FRAGMENTS,
    "no": rule_pb2.FRAGMENT_MATCH_NOT_FRAGMENTS,
}
ORIGINS: Final[Mapping[Origin, rule_pb2.RuleOrigin.ValueType]] = {
    "manual": rule_pb2.RULE_ORIGIN_MANUAL,
    "auto": rule_pb2.RULE_ORIGIN_AUTO,
    "controller": rule_pb2.RULE_ORIGIN_CONTROLLER,
    "feed": rule_pb2.RULE_ORIGIN_FEED,
}
ATTACK_PHASES: Final[Mapping[EventKind, event_pb2.AttackPhase.ValueType]] = {
    "started": event_pb2.ATTACK_PHASE_STARTED,
    "updated": event_pb2.ATTACK_PHASE_UPDATED,
    "ended": event_pb2.ATTACK_PHASE_ENDED,
}
ATTACK_VECTORS: Final[Mapping[Vector, event_pb2.AttackVector.ValueType]] = {
    "syn": event_pb2.ATTACK_VECTOR_SYN,
    "ack": event_pb2.ATTACK_VECTOR_ACK,
    "udp": event_pb2.ATTACK_VECTOR_UDP,
    "icmp": event_pb2.ATTACK_VECTOR_ICMP,
    "gre": event_pb2.ATTACK_VECTOR_GRE,
    "fragment": event_pb2.ATTACK_VECTOR_FRAGMENT,
    "reflection": event_pb2.ATTACK_VECTOR_REFLECTION,
    "many_source": event_pb2.ATTACK_VECTOR_MANY_SOURCE,
    "source_rate": event_pb2.ATTACK_VECTOR_SOURCE_RATE,
}
ATTACK_PROFILES: Final[Mapping[Profile, event_pb2.AttackProfile.ValueType]] = {
    "concentrated": event_pb2.ATTACK_PROFILE_CONCENTRATED,
    "diffuse": event_pb2.ATTACK_PROFILE_DIFFUSE,
    "spoofed": event_pb2.ATTACK_PROFILE_SPOOFED,
}

# Proto value -> Python literal, with UNSPECIFIED (0) meaning the rule-file default.
_KIND_IN: Final = {int(v): k for k, v in ACTION_KINDS.items()}
_SCOPE_IN: Final = {0: "aggregate", **{int(v): k for k, v in RATE_LIMIT_SCOPES.items()}}
_FRAGMENT_IN: Final = {0: "any", **{int(v): k for k, v in FRAGMENTS.items()}}
_ORIGIN_IN: Final = {0: "manual", **{int(v): k for k, v in ORIGINS.items()}}
_PHASE_IN: Final = {int(v): k for k, v in ATTACK_PHASES.items()}
_VECTOR_IN: Final = {int(v): k for k, v in ATTACK_VECTORS.items()}
_PROFILE_IN: Final = {int(v): k for k, v in ATTACK_PROFILES.items()}

MUTABLE_FIELDS: Final = ("match", "action", "priority", "scope", "expire_time", "ttl", "origin", "comment")
"""The Rule fields an update_mask may name (and their sub-fields)."""
_OUTPUT_ONLY: Final = frozenset({"name", "created_by", "create_time", "update_time", "version", "etag"})

# rules.py paths that are named differently in the proto (relative to the rule).
_RENAMED: Final = {"id": "name", "expires_at": "expire_time"}
# RuleAction fields that live in Action.rate_limit in the proto.
_RATE_FIELDS: Final = frozenset({"pps", "bps", "burst_packets", "burst_bytes", "scope"})


# --- paths ---------------------------------------------------------------------------




@contextmanager
def _at(path: str) -> Iterator[None]:
    """Prefix the path of a :class:`FieldError` raised inside with ``path``."""
    try:
        yield
    except FieldError as exc:
        raise FieldError(join(path, exc.path), exc.what) from None


def _proto_path(py_path: str, *, rate_limit: bool) -> str:
    """A path inside a rule as rules.py names it, as the proto names it:
    ``action.pps`` -> ``action.rate_limit.pps``, ``expires_at`` -> ``expire_time``."""
    head, dot, rest = py_path.partition(".")
    if head == "action":
        if rest.split(".", 1)[0] in _RATE_FIELDS or (not rest and rate_limit):
            return join("action.rate_limit", rest)
        return py_path
    return _RENAMED.get(head, head) + dot + rest


def _enum(value: int, table: Mapping[int, _V], path: str, enum: str) -> _V:
    if value not in table:
        raise FieldError(path, f"{value} is not a valid {enum}")
    return table[value]


# --- resource names --------------------------------------------------------------------


def rule_name(rule_id: str) -> str:
    """``rules/{rule_id}``."""
    return RULES + rule_id


def parse_rule_name(name: str, path: str = "name") -> str:
    """The rule id of ``rules/{rule_id}``, or a :class:`FieldError` at ``path``."""
    if not name.startswith(RULES) or not name[len(RULES):]:
        raise FieldError(path, f"{name!r} is not a rule name; expected rules/{{rule_id}}")
    rule_id = name[len(RULES):]
    try:
        Rule.from_dict({"id": rule_id, "match": {}, "action": "drop"})
    except FieldError as exc:
        raise FieldError(path, exc.what) from None
    return rule_id


def node_name(node_id: str) -> str:
    """``nodes/{node_id}``."""
    return NODES + node_id


def parse_node_name(name: str, path: str = "name") -> str:
    """The node id of ``nodes/{node_id}``, or a :class:`FieldError` at ``path``."""
    if not name.startswith(NODES) or name == NODE_WILDCARD:
        raise FieldError(path, f"{name!r} is not a node name; expected nodes/{{node_id}}")
    return check_node_id(name[len(NODES):], path)


def parse_node_parent(name: str, path: str = "parent") -> str | None:
    """``nodes/{node_id}`` as its node id; ``nodes/-`` or empty (every node) as None."""
    if name in ("", NODE_WILDCARD):
        return None
    return parse_node_name(name, path)


# --- times -----------------------------------------------------------------------------


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def _datetime(ts: timestamp_pb2.Timestamp, path: str) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise FieldError(path, f"not a valid time ({exc})") from None


def _seconds_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    whole = math.floor(seconds)
    out.seconds = whole
    out.nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return out


def _timestamp_seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _ttl_seconds(ttl: duration_pb2.Duration, path: str) -> int:
    check_duration(ttl, path)
    if ttl.nanos:
        # not ToJsonString(): it raises on the invalid durations a client can send
        raise FieldError(path, f"{ttl.seconds} s {ttl.nanos} ns is not whole seconds; "
                               "ttl takes whole seconds")
    return ttl.seconds


MAX_DURATION_SECONDS: Final = 315_576_000_000
"""The largest Duration the protobuf spec allows (10,000 years)."""


def check_duration(value: duration_pb2.Duration, path: str) -> None:
    """FieldError unless ``value`` is a valid google.protobuf.Duration: nanos
    within +-999,999,999 and of the seconds' sign, seconds within +-10,000
    years (protobuf's own check raises a ValueError, which would be INTERNAL)."""
    seconds, nanos = value.seconds, value.nanos
    if not -999_999_999 <= nanos <= 999_999_999:
        raise FieldError(path, f"nanos {nanos} is out of range -999999999..999999999")
    if (seconds < 0 < nanos) or (nanos < 0 < seconds):
        raise FieldError(path, f"seconds {seconds} and nanos {nanos} differ in sign")
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        raise FieldError(path, f"seconds {seconds} is out of range (at most 10,000 years either way)")


# --- rules -----------------------------------------------------------------------------


def rule_to_proto(rule: Rule | ScopedRule) -> rule_pb2.Rule:
    """The wire form of a rule; a plain :class:`Rule` applies to every node."""
    scoped = rule if isinstance(rule, ScopedRule) else ScopedRule(rule)
    r = scoped.rule
    out = rule_pb2.Rule(name=rule_name(r.id), priority=r.priority, origin=ORIGINS[r.origin],
                        comment=r.comment, created_by=r.created_by, version=scoped.version,
                        etag=scoped.etag)
    m = out.match
    m.SetInParent()  # present even when empty: an empty match is every packet
    m.src.extend(str(p) for p in r.match.src)
    m.dst.extend(str(p) for p in r.match.dst)
    if r.match.protocol is not None:
        m.protocol = r.match.protocol
    for name in ("sport", "dport"):
        port = getattr(r.match, name)
        if port is not None:
            getattr(m, name).CopyFrom(rule_pb2.Range(lo=port.lo, hi=port.hi))
    if r.match.tcp_flags is not None:
        m.tcp_flags.CopyFrom(rule_pb2.TcpFlags(mask=r.match.tcp_flags.mask, value=r.match.tcp_flags.value))
    if r.match.length is not None:
        m.length.CopyFrom(rule_pb2.Range(lo=r.match.length[0], hi=r.match.length[1]))
    m.fragment = FRAGMENTS[r.match.fragment]
    a = r.action
    out.action.kind = ACTION_KINDS[a.kind]
    if a.kind == "rate_limit":
        rl = out.action.rate_limit
        rl.scope = RATE_LIMIT_SCOPES[a.scope]
        if a.pps is not None:
            rl.pps = a.pps
        if a.bps is not None:
            rl.bps = a.bps
        if a.burst_packets is not None:
            rl.burst_packets = a.burst_packets
        if a.burst_bytes is not None:
            rl.burst_bytes = a.burst_bytes
    _scope_to_proto(scoped.scope, out)
    if r.expires_at is not None:
        out.expire_time.CopyFrom(_timestamp(r.expires_at))
    if scoped.create_time is not None:
        out.create_time.CopyFrom(_timestamp(scoped.create_time))
    if scoped.update_time is not None:
        out.update_time.CopyFrom(_timestamp(scoped.update_time))
    return out


def _scope_to_proto(scope: RuleScope, out: rule_pb2.Rule) -> None:
    if scope.node is not None:
        out.scope.node = node_name(scope.node)
    elif scope.labels:
        out.scope.node_selector.match_labels.update(scope.labels)


def rule_from_proto(
    msg: rule_pb2.Rule,
    *,
    path: str = "rule",
    rule_id: str | None = None,
    rule_id_path: str = "rule_id",
    now: datetime | None = None,
) -> ScopedRule:
    """Validate a wire rule and return it as a :class:`ScopedRule`.

    The id comes from ``msg.name`` (``rules/{rule_id}``) unless ``rule_id``
    is given (CreateRule: ``CreateRuleRequest.rule_id``, errors at
    ``rule_id_path``). A ``ttl`` counts from ``now`` (default: the current
    time). Every error is a :class:`FieldError` whose path starts with
    ``path`` and names proto fields.
    """
    id_path = rule_id_path if rule_id is not None else join(path, "name")
    if rule_id is None:
        if not msg.name.startswith(RULES) or not msg.name[len(RULES):]:
            raise FieldError(id_path, f"{msg.name!r} is not a rule name; expected rules/{{rule_id}}")
        rule_id = msg.name[len(RULES):]
    table: dict[str, object] = {"id": rule_id}
    if not msg.HasField("match"):
        raise FieldError(join(path, "match"), "required; an empty match matches every packet")
    table["match"] = _match_table(msg.match, join(path, "match"))
    if not msg.HasField("action"):
        raise FieldError(join(path, "action"), f"required; kind one of {', '.join(_kind_names())}")
    table["action"] = _action_table(msg.action, join(path, "action"))
    rate_limit = msg.action.kind == rule_pb2.ACTION_KIND_RATE_LIMIT
    if msg.HasField("priority"):
        table["priority"] = msg.priority
    which = msg.WhichOneof("expiration")
    if which == "ttl":
        table["ttl"] = _ttl_seconds(msg.ttl, join(path, "ttl"))
    elif which == "expire_time":
        table["expires_at"] = _datetime(msg.expire_time, join(path, "expire_time"))
    table["origin"] = _enum(msg.origin, _ORIGIN_IN, join(path, "origin"), "RuleOrigin")
    table["comment"] = msg.comment
    table["created_by"] = msg.created_by
    try:
        rule = Rule.from_dict(table, now)
    except FieldError as exc:
        inner = _proto_path(exc.path, rate_limit=rate_limit)
        where = id_path if inner == "name" else join(path, inner)
        raise FieldError(where, exc.what) from None
    scope = _scope_from_proto(msg.scope, join(path, "scope")) if msg.HasField("scope") else RuleScope()
    with _at(path):
        return ScopedRule(
            rule, scope, version=msg.version, etag=msg.etag,
            create_time=_datetime(msg.create_time, "create_time") if msg.HasField("create_time") else None,
            update_time=_datetime(msg.update_time, "update_time") if msg.HasField("update_time") else None,
        )


def _kind_names() -> list[str]:
    return [rule_pb2.ActionKind.Name(v) for v in ACTION_KINDS.values()]


def _match_table(m: rule_pb2.Match, path: str) -> dict[str, object]:
    """A proto Match in the rule-file form Match.from_dict reads."""
    table: dict[str, object] = {}
    if m.src:
        table["src"] = list(m.src)
    if m.dst:
        table["dst"] = list(m.dst)
    if m.HasField("protocol"):
        table["protocol"] = m.protocol
    for name, present, r in (("sport", m.HasField("sport"), m.sport), ("dport", m.HasField("dport"), m.dport),
                             ("length", m.HasField("length"), m.length)):
        if present:
            table[name] = [r.lo, r.hi]
    if m.HasField("tcp_flags"):
        table["tcp_flags"] = {"mask": m.tcp_flags.mask, "value": m.tcp_flags.value}
    table["fragment"] = _enum(m.fragment, _FRAGMENT_IN, join(path, "fragment"), "FragmentMatch")
    return table


def _action_table(a: rule_pb2.Action, path: str) -> dict[str, object]:
    """A proto Action in the rule-file form RuleAction.from_dict reads."""
    if a.kind == rule_pb2.ACTION_KIND_UNSPECIFIED:
        raise FieldError(join(path, "kind"), f"required; one of {', '.join(_kind_names())}")
    kind = _enum(a.kind, _KIND_IN, join(path, "kind"), "ActionKind")
    if kind != "rate_limit":
        if a.HasField("rate_limit"):
            shown = rule_pb2.ActionKind.Name(a.kind)
            raise FieldError(join(path, "rate_limit"),
                             f"only ACTION_KIND_RATE_LIMIT takes a rate limit; this one is {shown}")
        return {"kind": kind}
    if not a.HasField("rate_limit"):
        raise FieldError(join(path, "rate_limit"),
                         "required for ACTION_KIND_RATE_LIMIT: give pps and/or bps")
    rl = a.rate_limit
    table: dict[str, object] = {"kind": kind}
    for name, present, value in (("pps", rl.HasField("pps"), rl.pps), ("bps", rl.HasField("bps"), rl.bps),
                                 ("burst_packets", rl.HasField("burst_packets"), rl.burst_packets),
                                 ("burst_bytes", rl.HasField("burst_bytes"), rl.burst_bytes)):
        if present:
            table[name] = value
    table["scope"] = _enum(rl.scope, _SCOPE_IN, join(path, "rate_limit.scope"), "RateLimitScope")
    return table


def _scope_from_proto(s: rule_pb2.RuleScope, path: str) -> RuleScope:
    which = s.WhichOneof("target")
    if which == "node":
        return RuleScope(node=parse_node_name(s.node, join(path, "node")))
    if which == "node_selector":
        where = join(path, "node_selector.match_labels")
        labels = dict(s.node_selector.match_labels)
        if not labels:
            raise FieldError(where, "empty; select at least one label, or leave scope unset for every node")
        return RuleScope(labels=tuple(check_labels(labels, where).items()))
    return RuleScope()


def rules_to_proto(rules: Iterable[Rule | ScopedRule]) -> list[rule_pb2.Rule]:
    """The wire form of every rule, in order (a :class:`RuleSet` is iterable)."""
    return [rule_to_proto(r) for r in rules]


def scoped_rules_from_proto(
    msgs: Sequence[rule_pb2.Rule], *, path: str = "rules", now: datetime | None = None
) -> list[ScopedRule]:
    """Validate wire rules with unique names; errors at ``path[i]...``."""
    seen: dict[str, int] = {}
    out = []
    for i, msg in enumerate(msgs):
        item = f"{path}[{i}]"
        rule = rule_from_proto(msg, path=item, now=now)
        if rule.id in seen:
            first = f"{path}[{seen[rule.id]}]"
            raise FieldError(f"{item}.name", f"duplicate name {msg.name!r}; {first} has it too")
        seen[rule.id] = i
        out.append(rule)
    return out


def ruleset_from_proto(
    msgs: Sequence[rule_pb2.Rule], *, path: str = "rules", now: datetime | None = None
) -> RuleSet:
    """Wire rules as a :class:`RuleSet` (what an agent enforces; scopes dropped)."""
    return RuleSet(tuple(r.rule for r in scoped_rules_from_proto(msgs, path=path, now=now)))


# --- attack events ---------------------------------------------------------------------


def attack_to_proto(
    event: AttackEvent, *, wall_offset: float = 0.0, interface: str = ""
) -> event_pb2.AttackEvent:
    """The wire form of an attack event; its times are ``wall_offset`` +
    the detector's clock."""
    out = event_pb2.AttackEvent(
        attack_id=event.id,
        phase=ATTACK_PHASES[event.kind],
        vector=ATTACK_VECTORS[event.vector],
        victim="" if event.victim is None else str(event.victim),
        profile=ATTACK_PROFILES[event.profile],
        interface=interface,
        sample_time=_seconds_timestamp(event.t + wall_offset),
        onset_time=_seconds_timestamp(event.onset_at + wall_offset),
        start_time=_seconds_timestamp(event.started_at + wall_offset),
        pps=event.pps, bps=event.bps, peak_pps=event.peak_pps, peak_bps=event.peak_bps,
        dropped_pps=event.dropped_pps, threshold_pps=event.threshold_pps,
        baseline_pps=event.baseline_pps, over_threshold=event.over_threshold,
        sources=event.sources, pulses=event.pulses,
        top_sources=[event_pb2.AttackSource(address=str(s.address), pps=s.pps, bps=s.bps)
                     for s in event.top_sources],
        offenders=[str(p) for p in event.offenders],
        applied_rule_ids=list(event.applied),
    )
    if event.ended_at is not None:
        out.end_time.CopyFrom(_seconds_timestamp(event.ended_at + wall_offset))
    return out


def _prefix(text: str, path: str) -> Prefix:
    try:
        return parse_prefix(text, field=path)
    except InputError as exc:
        raise FieldError(path, str(exc).removeprefix(f"{path}: ")) from None


def _time_or_zero(msg: event_pb2.AttackEvent, name: str, wall_offset: float) -> float:
    ts = getattr(msg, name)
    return _timestamp_seconds(ts) - wall_offset


def attack_from_proto(
    msg: event_pb2.AttackEvent, *, wall_offset: float = 0.0, path: str = "attack"
) -> AttackEvent:
    """A wire attack event (from an agent) as an :class:`AttackEvent` on the
    clock whose zero is Unix time ``wall_offset``."""
    def at(name: str) -> str:
        return join(path, name)

    kind = _enum(msg.phase, _PHASE_IN, at("phase"), "AttackPhase")
    vector = _enum(msg.vector, _VECTOR_IN, at("vector"), "AttackVector")
    profile = _enum(msg.profile, _PROFILE_IN, at("profile"), "AttackProfile")
    if not msg.attack_id:
        raise FieldError(at("attack_id"), "required")
    victim = _prefix(msg.victim, at("victim")) if msg.victim else None
    top = tuple(SourceRate(_prefix(s.address, at(f"top_sources[{i}].address")), s.pps, s.bps)
                for i, s in enumerate(msg.top_sources))
    offenders = tuple(_prefix(p, at(f"offenders[{i}]")) for i, p in enumerate(msg.offenders))
    return AttackEvent(
        id=msg.attack_id, kind=kind, vector=vector, victim=victim, profile=profile,
        t=_time_or_zero(msg, "sample_time", wall_offset),
        onset_at=_time_or_zero(msg, "onset_time", wall_offset),
        started_at=_time_or_zero(msg, "start_time", wall_offset),
        ended_at=_time_or_zero(msg, "end_time", wall_offset) if msg.HasField("end_time") else None,
        pps=msg.pps, bps=msg.bps, peak_pps=msg.peak_pps, peak_bps=msg.peak_bps,
        dropped_pps=msg.dropped_pps, threshold_pps=msg.threshold_pps, baseline_pps=msg.baseline_pps,
        over_threshold=msg.over_threshold, sources=msg.sources, pulses=max(1, msg.pulses),
        top_sources=top, offenders=offenders, applied=tuple(msg.applied_rule_ids),
    )


def event_to_proto(
    event: AttackEvent,
    *,
    wall_offset: float = 0.0,
    interface: str = "",
    node: str = "",
    sequence: int = 0,
    time: datetime | None = None,
) -> event_pb2.Event:
    """An attack event as an entry of the event log. ``node`` is a node id
    (empty: the controller's own); ``sequence`` 0 leaves name and sequence
    for the controller to set; ``time`` defaults to the event's sample time."""
    out = event_pb2.Event(attack=attack_to_proto(event, wall_offset=wall_offset, interface=interface))
    if sequence:
        out.sequence = sequence
        out.name = f"events/{sequence}"
    if node:
        out.node = node_name(check_node_id(node, "node"))
    if time is not None:
        out.time.CopyFrom(_timestamp(time))
    else:
        out.time.CopyFrom(out.attack.sample_time)
    return out


# --- updates -------------------------------------------------------------------------


def _mask_paths(patch: rule_pb2.Rule, mask: field_mask_pb2.FieldMask | None, path: str) -> list[str]:
    paths = list(mask.paths) if mask is not None else []
    if not paths:
        return [fd.name for fd, _ in patch.ListFields() if fd.name in MUTABLE_FIELDS]
    if "*" in paths:
        if len(paths) > 1:
            raise FieldError(f"{path}.paths", '"*" replaces every field; give it alone')
        return list(MUTABLE_FIELDS)
    for i, p in enumerate(paths):
        where = f"{path}.paths[{i}]"
        head = p.split(".", 1)[0]
        if head in _OUTPUT_ONLY:
            raise FieldError(where, f"{p!r}: {head} is set by the server and cannot be updated")
        if head not in MUTABLE_FIELDS:
            raise FieldError(where, f"{p!r} is not a field of Rule; fields: {', '.join(MUTABLE_FIELDS)}")
        descriptor = rule_pb2.Rule.DESCRIPTOR
        parts = p.split(".")
        for j, name in enumerate(parts):
            fd = descriptor.fields_by_name.get(name)
            if fd is None:
                raise FieldError(where, f"{p!r}: {descriptor.name} has no field {name!r}")
            if j < len(parts) - 1:
                if fd.message_type is None or fd.is_repeated:
                    raise FieldError(where, f"{p!r}: {name} has no sub-fields")
                descriptor = fd.message_type
    return paths


def _copy_path(source: Message | None, target: Message, parts: list[str]) -> None:
    """Copy the field at ``parts`` from ``source`` to ``target``; a field
    unset in ``source`` (or under an unset parent) is cleared in ``target``."""
    *parents, leaf = parts
    for name in parents:
        source = getattr(source, name) if source is not None and source.HasField(name) else None
        target = getattr(target, name)
    fd = target.DESCRIPTOR.fields_by_name[leaf]
    present = source is not None and (fd.is_repeated or not fd.has_presence or source.HasField(leaf))
    target.ClearField(leaf)
    if not present or source is None:
        return
    value = getattr(source, leaf)
    if fd.is_repeated or fd.message_type is not None:
        getattr(target, leaf).MergeFrom(value)
    else:
        setattr(target, leaf, value)


def merge_update(
    current: rule_pb2.Rule,
    patch: rule_pb2.Rule,
    mask: field_mask_pb2.FieldMask | None = None,
    *,
    path: str = "update_mask",
) -> rule_pb2.Rule:
    """``current`` with the fields of ``update_mask`` taken from ``patch``
    (UpdateRuleRequest.rule), as rule_service.proto says: a masked field
    unset in ``patch`` is cleared; no mask means every field set in
    ``patch``; ``"*"`` means every mutable field. Output-only fields stay
    as in ``current``. The result still needs :func:`rule_from_proto`
    (which also turns a new ttl into expire_time); mask errors are at
    ``path.paths[i]``."""
    out = rule_pb2.Rule()
    out.CopyFrom(current)
    for p in _mask_paths(patch, mask, path):
        _copy_path(patch, out, p.split("."))
    return out


# --- NACKs ---------------------------------------------------------------------------


def apply_error(
    exc: BaseException, rules: Sequence[rule_pb2.Rule] = (), *, path: str = "rules"
) -> rule_pb2.ApplyError:
    """The NACK detail of an update an agent refused with ``exc``. A
    :class:`FieldError` at ``path[i].<field>`` (from
    :func:`ruleset_from_proto` of ``rules`` with that ``path``) becomes a
    violation naming rule ``i``'s id and ``<field>``."""
    if isinstance(exc, InputError):
        code = rule_pb2.APPLY_ERROR_CODE_INVALID_RULE
    elif isinstance(exc, CapacityError | MapFullError):
        code = rule_pb2.APPLY_ERROR_CODE_CAPACITY
    elif isinstance(exc, MapError):
        code = rule_pb2.APPLY_ERROR_CODE_DATAPLANE
    else:
        code = rule_pb2.APPLY_ERROR_CODE_INTERNAL
    out = rule_pb2.ApplyError(code=code, message=str(exc) or type(exc).__name__)
    if isinstance(exc, FieldError):
        rule_id, field = "", exc.path
        head, sep, rest = exc.path.partition("].")
        if sep and head.startswith(f"{path}[") and head[len(path) + 1:].isdigit():
            i = int(head[len(path) + 1:])
            if i < len(rules):
                rule_id = rules[i].name.removeprefix(RULES)
                field = rest
        out.violations.append(rule_pb2.RuleViolation(rule_id=rule_id, field=field, description=exc.what))
    return out
