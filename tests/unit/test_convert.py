"""controller.api.convert: rules and attack events to and from breakwater.v1,
every field both ways, and every invalid field named by its proto path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, rule_pb2
from controller.addresses import parse_prefix
from controller.api import convert
from controller.api.convert import (
    MUTABLE_FIELDS,
    apply_error,
    attack_from_proto,
    attack_to_proto,
    event_to_proto,
    merge_update,
    node_name,
    parse_node_name,
    parse_node_parent,
    parse_rule_name,
    rule_from_proto,
    rule_name,
    rule_to_proto,
    rules_to_proto,
    ruleset_from_proto,
    scoped_rules_from_proto,
)
from controller.detection import events as detect
from controller.detection.events import AttackEvent, SourceRate
from controller.errors import CapacityError, FieldError, MapError, MapFullError
from controller.rules import model as rules
from controller.rules.model import Match, Rule, RuleAction, RuleSet
from controller.rules.scope import RuleScope, ScopedRule
from controller.rules.values import PortRange, TcpFlags

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
P = parse_prefix


def full_rule() -> ScopedRule:
    """A rule with every field set, in a scope, with bookkeeping."""
    rule = Rule(
        id="full.rule-1",
        match=Match(
            src=(P("198.51.100.0/24"), P("203.0.113.7")),
            dst=(P("192.0.2.0/25"),),
            protocol=6,
            sport=PortRange(1024, 65535),
            dport=PortRange(443, 443),
            tcp_flags=TcpFlags(0x12, 0x02),
            length=(40, 60),
            fragment="no",
        ),
        action=RuleAction("rate_limit", pps=1000, bps=8_000_000, burst_packets=50, burst_bytes=30_000,
                          scope="per_source"),
        priority=7,
        expires_at=NOW + timedelta(hours=2),
        origin="feed",
        comment="a comment",
        created_by="alice",
    )
    return ScopedRule(rule, RuleScope.selecting({"site": "fra1", "role": "edge"}), version=42,
                      etag='"42"', create_time=NOW - timedelta(days=1), update_time=NOW)


def _set_fields(msg: Message) -> set[str]:
    return {fd.name for fd, _ in msg.ListFields()}


def _all_fields(msg: Message) -> set[str]:
    return {fd.name for fd in msg.DESCRIPTOR.fields}


def test_full_rule_sets_every_proto_field() -> None:
    """The round trip below covers every field: only ttl (input only) is unset."""
    msg = rule_to_proto(full_rule())
    assert _set_fields(msg) == _all_fields(msg) - {"ttl"}
    assert _set_fields(msg.match) == _all_fields(msg.match)
    assert _set_fields(msg.action) == _all_fields(msg.action)
    assert _set_fields(msg.action.rate_limit) == _all_fields(msg.action.rate_limit)
    assert _set_fields(msg.scope) == {"node_selector"}


def test_full_rule_round_trip() -> None:
    scoped = full_rule()
    msg = rule_to_proto(scoped)
    assert msg.name == "rules/full.rule-1"
    assert list(msg.match.src) == ["198.51.100.0/24", "203.0.113.7"]
    assert (msg.match.sport.lo, msg.match.sport.hi) == (1024, 65535)
    assert (msg.match.tcp_flags.mask, msg.match.tcp_flags.value) == (0x12, 0x02)
    assert msg.match.fragment == rule_pb2.FRAGMENT_MATCH_NOT_FRAGMENTS
    assert msg.action.kind == rule_pb2.ACTION_KIND_RATE_LIMIT
    assert msg.action.rate_limit.scope == rule_pb2.RATE_LIMIT_SCOPE_PER_SOURCE
    assert msg.expire_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(hours=2)
    assert dict(msg.scope.node_selector.match_labels) == {"site": "fra1", "role": "edge"}
    assert msg.origin == rule_pb2.RULE_ORIGIN_FEED
    assert (msg.version, msg.etag) == (42, '"42"')
    back = rule_from_proto(msg)
    assert back == scoped
    assert rule_to_proto(back) == msg


def test_wire_and_json_round_trip() -> None:
    """What grpcurl sends (JSON) and the wire bytes both come back equal."""
    msg = rule_to_proto(full_rule())
    assert rule_pb2.Rule.FromString(msg.SerializeToString()) == msg
    parsed = json_format.Parse(json_format.MessageToJson(msg), rule_pb2.Rule())
    assert rule_from_proto(parsed) == full_rule()


VARIANTS: dict[str, Rule] = {
    "drop everything": Rule("a", Match(), RuleAction("drop")),
    "allow source": Rule("b", Match(src=(P("2001:db8::/32"),)), RuleAction("allow"), priority=0),
    "monitor": Rule("c", Match(protocol=17, sport=PortRange(53, 53)), RuleAction("monitor")),
    "protocol 0": Rule("d", Match(protocol=0), RuleAction("drop")),
    "icmpv6 to v6": Rule("e", Match(dst=(P("2001:db8::1"),), protocol=58), RuleAction("drop")),
    "fragments only": Rule("f", Match(fragment="yes"), RuleAction("drop"), origin="auto"),
    "bps only aggregate": Rule("g", Match(protocol=47), RuleAction("rate_limit", bps=10**9)),
    "pps with burst": Rule("h", Match(), RuleAction("rate_limit", pps=5, burst_packets=1),
                           origin="controller"),
    "max priority": Rule("i", Match(length=(0, 65535)), RuleAction("drop"), priority=65535),
}


@pytest.mark.parametrize("rule", VARIANTS.values(), ids=VARIANTS.keys())
def test_rule_round_trip(rule: Rule) -> None:
    msg = rule_to_proto(rule)
    back = rule_from_proto(msg)
    assert back.rule == rule
    assert back.scope.is_global and not msg.HasField("scope")
    assert rule_to_proto(back) == msg


@pytest.mark.parametrize("scope", [RuleScope(), RuleScope.on_node("edge-fra1-01.example.net"),
                                   RuleScope.selecting({"site": "ams2"})], ids=str)
def test_scope_round_trip(scope: RuleScope) -> None:
    scoped = ScopedRule(VARIANTS["drop everything"], scope)
    msg = rule_to_proto(scoped)
    if scope.node:
        assert msg.scope.node == f"nodes/{scope.node}"
    assert rule_from_proto(msg).scope == scope


def test_unset_fields_take_rule_file_defaults() -> None:
    msg = rule_pb2.Rule(name="rules/x", match=rule_pb2.Match(),
                        action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_RATE_LIMIT,
                                               rate_limit=rule_pb2.RateLimit(pps=10)))
    scoped = rule_from_proto(msg)
    assert scoped.rule == Rule("x", Match(), RuleAction("rate_limit", pps=10))
    assert scoped.rule.priority == rules.DEFAULT_PRIORITY
    assert scoped.rule.origin == "manual" and scoped.rule.match.fragment == "any"
    assert scoped.rule.action.scope == "aggregate" and scoped.rule.expires_at is None
    assert scoped.scope.is_global and scoped.version == 0 and scoped.create_time is None


def test_ttl_counts_from_now_and_comes_back_as_expire_time() -> None:
    msg = rule_to_proto(VARIANTS["drop everything"])
    msg.ttl.FromTimedelta(timedelta(minutes=10))
    scoped = rule_from_proto(msg, now=NOW)
    assert scoped.rule.expires_at == NOW + timedelta(minutes=10)
    out = rule_to_proto(scoped)
    assert out.WhichOneof("expiration") == "expire_time"


def test_create_takes_the_id_from_rule_id() -> None:
    msg = rule_to_proto(VARIANTS["drop everything"])
    msg.name = "ignored"
    assert rule_from_proto(msg, rule_id="new-id").id == "new-id"


def test_rule_set_round_trip() -> None:
    rs = RuleSet(tuple(VARIANTS.values()))
    msgs = rules_to_proto(rs)
    assert [m.name for m in msgs] == [f"rules/{r.id}" for r in rs]
    assert ruleset_from_proto(msgs) == rs
    assert [s.rule for s in scoped_rules_from_proto(msgs)] == list(rs)
    assert ruleset_from_proto([]) == RuleSet()


# --- every invalid field names its proto path ---------------------------------------

Mutator = Callable[[rule_pb2.Rule], None]


def _rl(msg: rule_pb2.Rule) -> rule_pb2.RateLimit:
    msg.action.kind = rule_pb2.ACTION_KIND_RATE_LIMIT
    return msg.action.rate_limit


def _set(**fields: object) -> Mutator:
    """Set fields by dotted path, e.g. _set(**{"match.protocol": 300})."""
    def mutate(msg: rule_pb2.Rule) -> None:
        for path, value in fields.items():
            *parents, last = path.split(".")
            target: Message = msg
            for p in parents:
                target = getattr(target, p)
            if isinstance(value, list):
                field = getattr(target, last)
                del field[:]
                field.extend(value)
            else:
                setattr(target, last, value)
    return mutate


def _clear(name: str) -> Mutator:
    return lambda msg: msg.ClearField(name)  # type: ignore[arg-type]  # a field name of Rule


def _rate(**fields: int) -> Mutator:
    """Make the action a rate limit with these RateLimit fields."""
    def mutate(msg: rule_pb2.Rule) -> None:
        rl = _rl(msg)
        for name, value in fields.items():
            setattr(rl, name, value)
    return mutate


def _ports(name: str, lo: int, hi: int) -> Mutator:
    def mutate(msg: rule_pb2.Rule) -> None:
        msg.match.protocol = 17
        getattr(msg.match, name).CopyFrom(rule_pb2.Range(lo=lo, hi=hi))
    return mutate


def _tcp(msg: rule_pb2.Rule, mask: int, value: int, protocol: int = 6) -> None:
    msg.match.protocol = protocol
    msg.match.tcp_flags.mask = mask
    msg.match.tcp_flags.value = value


INVALID: list[tuple[str, Mutator, str, str]] = [
    ("name not a rule name", _set(name="rule/x"), "rule.name", "expected rules/{rule_id}"),
    ("name empty id", _set(name="rules/"), "rule.name", "expected rules/{rule_id}"),
    ("name bad id", _set(name="rules/Bad Id"), "rule.name", "not a valid rule id"),
    ("match missing", _clear("match"), "rule.match", "required"),
    ("src host bits", _set(**{"match.src": ["10.0.0.1/8"]}), "rule.match.src[0]", "host bits"),
    ("src not a prefix", _set(**{"match.src": ["192.0.2.1", "nonsense"]}), "rule.match.src[1]", "not an"),
    ("src repeats", _set(**{"match.src": ["192.0.2.1", "192.0.2.1"]}), "rule.match.src[1]", "repeats"),
    ("dst family", _set(**{"match.src": ["192.0.2.1"], "match.dst": ["2001:db8::/32"]}), "rule.match.dst",
     "never match"),
    ("protocol range", _set(**{"match.protocol": 300}), "rule.match.protocol", "out of range"),
    ("protocol family", _set(**{"match.protocol": 1, "match.dst": ["2001:db8::/32"]}), "rule.match.protocol",
     "IPv4-only"),
    ("sport without protocol", lambda m: m.match.sport.CopyFrom(rule_pb2.Range(lo=1, hi=2)),
     "rule.match.sport", "ports need protocol"),
    ("dport range", _ports("dport", 1, 70000), "rule.match.dport", "70000 is out of range"),
    ("dport empty", _ports("dport", 9, 8), "rule.match.dport", "empty"),
    ("sport range", _ports("sport", 65536, 65536), "rule.match.sport", "out of range"),
    ("tcp_flags mask 0", lambda m: _tcp(m, 0, 0), "rule.match.tcp_flags.mask", "tests no flag"),
    ("tcp_flags mask range", lambda m: _tcp(m, 300, 0), "rule.match.tcp_flags.mask", "out of range"),
    ("tcp_flags value outside mask", lambda m: _tcp(m, 0x02, 0x12), "rule.match.tcp_flags.value", "outside"),
    ("tcp_flags on udp", lambda m: _tcp(m, 0x02, 0x02, 17), "rule.match.tcp_flags", "needs protocol tcp"),
    ("length range", lambda m: m.match.length.CopyFrom(rule_pb2.Range(lo=0, hi=65536)), "rule.match.length",
     "out of range"),
    ("fragment value", _set(**{"match.fragment": 9}), "rule.match.fragment", "not a valid FragmentMatch"),
    ("action missing", _clear("action"), "rule.action", "required"),
    ("action kind unset", _set(**{"action.kind": 0}), "rule.action.kind", "required"),
    ("action kind value", _set(**{"action.kind": 42}), "rule.action.kind", "not a valid ActionKind"),
    ("rate limit on drop", lambda m: m.action.rate_limit.SetInParent(), "rule.action.rate_limit",
     "only ACTION_KIND_RATE_LIMIT"),
    ("rate limit missing", _set(**{"action.kind": rule_pb2.ACTION_KIND_RATE_LIMIT}), "rule.action.rate_limit",
     "required for ACTION_KIND_RATE_LIMIT"),
    ("rate limit empty", lambda m: _rl(m).SetInParent(), "rule.action.rate_limit", "needs pps and/or bps"),
    ("pps zero", _rate(pps=0), "rule.action.rate_limit.pps", "out of range"),
    ("pps too big", _rate(pps=10**13), "rule.action.rate_limit.pps", "out of range"),
    ("bps zero", _rate(bps=0), "rule.action.rate_limit.bps", "out of range"),
    ("burst without rate", _rate(bps=1000, burst_packets=5), "rule.action.rate_limit.burst_packets",
     "needs pps"),
    ("burst zero", _rate(bps=1000, burst_bytes=0), "rule.action.rate_limit.burst_bytes", "out of range"),
    ("burst bytes without bps", _rate(pps=1000, burst_bytes=9000), "rule.action.rate_limit.burst_bytes",
     "needs bps"),
    ("rate scope value", _rate(pps=1, scope=7), "rule.action.rate_limit.scope", "not a valid RateLimitScope"),
    ("priority range", _set(priority=65536), "rule.priority", "out of range"),
    ("ttl zero", lambda m: m.ttl.FromSeconds(0), "rule.ttl", "out of range"),
    ("ttl fraction", lambda m: m.ttl.FromMilliseconds(1500), "rule.ttl", "whole seconds"),
    ("ttl too long", lambda m: m.ttl.FromSeconds(3651 * 86400), "rule.ttl", "out of range"),
    ("ttl negative", lambda m: m.ttl.FromSeconds(-5), "rule.ttl", "out of range"),
    ("expire_time invalid", lambda m: setattr(m.expire_time, "seconds", 2**40), "rule.expire_time",
     "not a valid time"),
    ("origin value", _set(origin=12), "rule.origin", "not a valid RuleOrigin"),
    ("comment too long", _set(comment="x" * 1025), "rule.comment", "at most 1024"),
    ("created_by too long", _set(created_by="x" * 257), "rule.created_by", "at most 256"),
    ("scope node not a name", _set(**{"scope.node": "node/x"}), "rule.scope.node", "not a node name"),
    ("scope node wildcard", _set(**{"scope.node": "nodes/-"}), "rule.scope.node", "not a node name"),
    ("scope node bad id", _set(**{"scope.node": "nodes/Edge 1"}), "rule.scope.node", "not a valid node id"),
    ("scope selector empty", lambda m: m.scope.node_selector.SetInParent(),
     "rule.scope.node_selector.match_labels", "at least one label"),
    ("scope label key", lambda m: m.scope.node_selector.match_labels.update({"Site!": "x"}),
     "rule.scope.node_selector.match_labels", "not a valid label key"),
    ("scope label value", lambda m: m.scope.node_selector.match_labels.update({"site": "fra 1"}),
     "rule.scope.node_selector.match_labels[site]", "not a valid label value"),
    ("create_time invalid", lambda m: setattr(m.create_time, "nanos", -1), "rule.create_time",
     "not a valid time"),
    ("update_time invalid", lambda m: setattr(m.update_time, "seconds", -2**40), "rule.update_time",
     "not a valid time"),
]


def _base() -> rule_pb2.Rule:
    return rule_to_proto(VARIANTS["drop everything"])


@pytest.mark.parametrize(("mutate", "path", "text"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_field_names_its_proto_path(mutate: Mutator, path: str, text: str) -> None:
    msg = _base()
    mutate(msg)
    with pytest.raises(FieldError) as info:
        rule_from_proto(msg, now=NOW)
    assert info.value.path == path
    assert text in info.value.what
    assert str(info.value) == f"{path}: {info.value.what}"


def test_paths_take_the_caller_prefix() -> None:
    msg = _base()
    msg.priority = 70000
    with pytest.raises(FieldError) as info:
        rule_from_proto(msg, path="requests[3].rule", rule_id="ok", rule_id_path="requests[3].rule_id")
    assert info.value.path == "requests[3].rule.priority"
    with pytest.raises(FieldError) as info:
        rule_from_proto(_base(), path="requests[3].rule", rule_id="Not OK",
                        rule_id_path="requests[3].rule_id")
    assert info.value.path == "requests[3].rule_id"


def test_list_errors_name_the_item() -> None:
    good, bad = _base(), _base()
    bad.name = "rules/b"
    bad.match.protocol = 999
    with pytest.raises(FieldError) as info:
        ruleset_from_proto([good, bad], path="snapshot.rules")
    assert info.value.path == "snapshot.rules[1].match.protocol"
    with pytest.raises(FieldError) as info:
        ruleset_from_proto([good, _base()])
    assert info.value.path == "rules[1].name"
    assert "duplicate" in info.value.what and "rules[0]" in info.value.what


# --- enums mirror the Python literals --------------------------------------------------


@pytest.mark.parametrize(("table", "python", "enum"), [
    (convert.ACTION_KINDS, rules.ACTION_KINDS, rule_pb2.ActionKind),
    (convert.RATE_LIMIT_SCOPES, rules.SCOPES, rule_pb2.RateLimitScope),
    (convert.FRAGMENTS, rules.FRAGMENT_MODES, rule_pb2.FragmentMatch),
    (convert.ORIGINS, rules.ORIGINS, rule_pb2.RuleOrigin),
    (convert.ATTACK_PHASES, get_args(detect.EventKind), event_pb2.AttackPhase),
    (convert.ATTACK_VECTORS, detect.VECTORS, event_pb2.AttackVector),
    (convert.ATTACK_PROFILES, get_args(detect.Profile), event_pb2.AttackProfile),
], ids=lambda v: getattr(v, "DESCRIPTOR", None) and v.DESCRIPTOR.name)
def test_enum_tables_cover_both_sides(table: dict[str, int], python: tuple[str, ...], enum: object) -> None:
    """Every Python value has a proto value and every proto value but
    UNSPECIFIED a Python one, one to one."""
    assert set(table) == set(python)
    values = enum.values()  # type: ignore[attr-defined]
    assert sorted(table.values()) == sorted(v for v in values if v != 0)
    for name, value in table.items():
        assert enum.Name(value).endswith("_" + name.upper()) or name in ("yes", "no")  # type: ignore[attr-defined]


# --- attack events ---------------------------------------------------------------------

WALL = 1_700_000_000.0


def attack(**changes: object) -> AttackEvent:
    base: dict[str, object] = dict(
        id="syn-198-18-0-10-4", kind="ended", vector="syn", victim=P("198.18.0.10"), profile="concentrated",
        t=120.5, onset_at=100.25, started_at=103.25, ended_at=120.5, pps=1500.0, bps=1.2e6, peak_pps=90_000.0,
        peak_bps=7.5e7, dropped_pps=1400.0, threshold_pps=10_000.0, baseline_pps=12.5, over_threshold=True,
        sources=321,
        top_sources=(SourceRate(P("203.0.113.7"), 800.0, 640_000.0), SourceRate(P("2001:db8::9"), 200.0)),
        offenders=(P("203.0.113.7"), P("203.0.113.0/24")), applied=("auto-syn-1", "auto-syn-2"),
    )
    base.update(changes)
    return AttackEvent(**base)  # type: ignore[arg-type]


def test_attack_sets_every_proto_field_and_round_trips() -> None:
    event = attack()
    msg = attack_to_proto(event, wall_offset=WALL, interface="eth1")
    assert _set_fields(msg) == _all_fields(msg)
    assert msg.phase == event_pb2.ATTACK_PHASE_ENDED and msg.vector == event_pb2.ATTACK_VECTOR_SYN
    assert msg.victim == "198.18.0.10" and msg.interface == "eth1"
    assert msg.onset_time.seconds == int(WALL + 100) and msg.onset_time.nanos == 250_000_000
    assert [s.address for s in msg.top_sources] == ["203.0.113.7", "2001:db8::9"]
    assert list(msg.offenders) == ["203.0.113.7", "203.0.113.0/24"]
    assert list(msg.applied_rule_ids) == ["auto-syn-1", "auto-syn-2"]
    assert attack_from_proto(msg, wall_offset=WALL) == event


def test_attack_without_victim_or_end() -> None:
    event = attack(kind="started", vector="source_rate", victim=None, profile="diffuse", ended_at=None,
                   top_sources=(), offenders=(), applied=())
    msg = attack_to_proto(event)
    assert msg.victim == "" and not msg.HasField("end_time")
    assert attack_from_proto(msg) == event


def test_event_entry() -> None:
    msg = event_to_proto(attack(), wall_offset=WALL, node="edge-1", sequence=17)
    assert msg.WhichOneof("payload") == "attack"
    assert (msg.name, msg.sequence, msg.node) == ("events/17", 17, "nodes/edge-1")
    assert msg.time == msg.attack.sample_time
    local = event_to_proto(attack(), time=NOW)
    assert (local.name, local.sequence, local.node) == ("", 0, "")
    assert local.time.ToDatetime(tzinfo=UTC) == NOW
    with pytest.raises(FieldError, match=r"^node: "):
        event_to_proto(attack(), node="Not A Node")


@pytest.mark.parametrize(("change", "path"), [
    (lambda m: setattr(m, "phase", 0), "attack.phase"),
    (lambda m: setattr(m, "vector", 99), "attack.vector"),
    (lambda m: setattr(m, "profile", 0), "attack.profile"),
    (lambda m: setattr(m, "attack_id", ""), "attack.attack_id"),
    (lambda m: setattr(m, "victim", "198.18.0.300"), "attack.victim"),
    (lambda m: setattr(m.top_sources[1], "address", "x"), "attack.top_sources[1].address"),
    (lambda m: m.offenders.append("10.0.0.1/8"), "attack.offenders[2]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_attack_names_the_field(change: Callable[[event_pb2.AttackEvent], None], path: str) -> None:
    msg = attack_to_proto(attack())
    change(msg)
    with pytest.raises(FieldError) as info:
        attack_from_proto(msg)
    assert info.value.path == path


# --- resource names --------------------------------------------------------------------


def test_rule_names() -> None:
    assert rule_name("dns-amp") == "rules/dns-amp"
    assert parse_rule_name("rules/dns-amp") == "dns-amp"
    for bad in ("dns-amp", "rules/", "rules/DNS", "nodes/x", "rules/a/b"):
        with pytest.raises(FieldError, match=r"^name: "):
            parse_rule_name(bad)


def test_node_names() -> None:
    assert node_name("edge-1") == "nodes/edge-1"
    assert parse_node_name("nodes/edge-1.fra.example.net") == "edge-1.fra.example.net"
    assert parse_node_parent("") is None and parse_node_parent("nodes/-") is None
    assert parse_node_parent("nodes/edge-1") == "edge-1"
    for bad in ("edge-1", "nodes/", "nodes/-", "nodes/Edge", "rules/x"):
        with pytest.raises(FieldError, match=r"^name: "):
            parse_node_name(bad)
    with pytest.raises(FieldError, match=r"^parent: "):
        parse_node_parent("nodes/EDGE")


# --- UpdateRule's mask -------------------------------------------------------------------


def _stored() -> rule_pb2.Rule:
    return rule_to_proto(full_rule())


def test_mask_replaces_named_fields_only() -> None:
    patch = rule_pb2.Rule(comment="new", priority=3, action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))
    out = merge_update(_stored(), patch, FieldMask(paths=["comment", "action"]))
    assert out.comment == "new" and out.action == patch.action
    assert out.priority == 7  # not in the mask
    assert (out.version, out.etag, out.created_by) == (42, '"42"', "alice")
    assert rule_from_proto(out).rule.action == RuleAction("drop")


def test_sub_field_paths() -> None:
    patch = rule_pb2.Rule()
    patch.action.rate_limit.pps = 5
    out = merge_update(_stored(), patch, FieldMask(paths=["action.rate_limit.pps", "match.dport"]))
    assert out.action.rate_limit.pps == 5 and out.action.rate_limit.bps == 8_000_000
    assert not out.match.HasField("dport") and out.match.HasField("sport")  # masked and unset: cleared
    assert rule_from_proto(out).rule.match.dport is None


def test_masked_but_unset_is_cleared() -> None:
    mask = FieldMask(paths=["expire_time", "scope", "priority", "comment"])
    out = merge_update(_stored(), rule_pb2.Rule(), mask)
    assert out.WhichOneof("expiration") is None and not out.HasField("scope")
    assert not out.HasField("priority") and out.comment == ""
    scoped = rule_from_proto(out)
    assert scoped.rule.expires_at is None and scoped.scope.is_global
    assert scoped.rule.priority == rules.DEFAULT_PRIORITY


def test_ttl_replaces_expire_time() -> None:
    patch = rule_pb2.Rule()
    patch.ttl.FromSeconds(60)
    out = merge_update(_stored(), patch, FieldMask(paths=["ttl"]))
    assert out.WhichOneof("expiration") == "ttl"
    assert rule_from_proto(out, now=NOW).rule.expires_at == NOW + timedelta(seconds=60)


def test_no_mask_takes_what_is_set() -> None:
    patch = rule_pb2.Rule(name="rules/full.rule-1", etag="x", version=9, comment="c2",
                          scope=rule_pb2.RuleScope(node="nodes/edge-1"))
    out = merge_update(_stored(), patch, None)
    assert out.comment == "c2" and out.scope.node == "nodes/edge-1"
    assert (out.etag, out.version) == ('"42"', 42)  # output only: kept
    assert out.match == _stored().match
    assert merge_update(_stored(), patch, FieldMask()) == out


def test_star_replaces_every_mutable_field() -> None:
    patch = rule_to_proto(VARIANTS["drop everything"])
    out = merge_update(_stored(), patch, FieldMask(paths=["*"]))
    for name in MUTABLE_FIELDS:
        assert getattr(out, name) == getattr(patch, name), name
    assert out.name == "rules/full.rule-1" and out.create_time == _stored().create_time


@pytest.mark.parametrize(("paths", "where", "text"), [
    (["comment", "etag"], "update_mask.paths[1]", "set by the server"),
    (["version"], "update_mask.paths[0]", "set by the server"),
    (["colour"], "update_mask.paths[0]", "not a field of Rule"),
    (["match.colour"], "update_mask.paths[0]", "Match has no field 'colour'"),
    (["comment.x"], "update_mask.paths[0]", "no sub-fields"),
    (["match.src.x"], "update_mask.paths[0]", "no sub-fields"),
    (["*", "comment"], "update_mask.paths", "alone"),
])
def test_bad_masks(paths: list[str], where: str, text: str) -> None:
    with pytest.raises(FieldError) as info:
        merge_update(_stored(), rule_pb2.Rule(), FieldMask(paths=paths))
    assert info.value.path == where and text in info.value.what


# --- NACK details ------------------------------------------------------------------------


def test_apply_error_names_the_rule_and_field() -> None:
    good, bad = _base(), _base()
    bad.name = "rules/dns-amp"
    bad.match.dport.CopyFrom(rule_pb2.Range(lo=53, hi=53))
    msgs = [good, bad]
    with pytest.raises(FieldError) as info:
        ruleset_from_proto(msgs, path="upserts")
    err = apply_error(info.value, msgs, path="upserts")
    assert err.code == rule_pb2.APPLY_ERROR_CODE_INVALID_RULE
    assert err.message == str(info.value)
    assert [(v.rule_id, v.field) for v in err.violations] == [("dns-amp", "match.dport")]
    assert "ports need protocol" in err.violations[0].description


@pytest.mark.parametrize(("exc", "code"), [
    (FieldError("x", "bad"), rule_pb2.APPLY_ERROR_CODE_INVALID_RULE),
    (CapacityError("256 signature rules at most"), rule_pb2.APPLY_ERROR_CODE_CAPACITY),
    (MapFullError("deny_v4 full"), rule_pb2.APPLY_ERROR_CODE_CAPACITY),
    (MapError("update failed"), rule_pb2.APPLY_ERROR_CODE_DATAPLANE),
    (RuntimeError("boom"), rule_pb2.APPLY_ERROR_CODE_INTERNAL),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
def test_apply_error_codes(exc: BaseException, code: int) -> None:
    err = apply_error(exc)
    assert err.code == code and err.message == str(exc)
    assert len(err.violations) == (1 if isinstance(exc, FieldError) else 0)
