"""controller.api.filtering: the List filters' AIP-160 subset, field by field,
and every refusal naming its column."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, node_pb2, rule_pb2
from controller.api.filtering import EVENT_FILTER, NODE_FILTER, RULE_FILTER, Schema, compile_filter
from controller.errors import FieldError


def _rule() -> rule_pb2.Rule:
    r = rule_pb2.Rule(name="rules/dns-amp", origin=rule_pb2.RULE_ORIGIN_AUTO, priority=50, created_by="alice")
    r.match.src.extend(["198.51.100.0/24", "2001:db8::/32"])
    r.action.kind = rule_pb2.ACTION_KIND_RATE_LIMIT
    r.scope.node = "nodes/edge-fra1-01"
    r.create_time.FromDatetime(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    return r


def _selector_rule() -> rule_pb2.Rule:
    r = rule_pb2.Rule(name="rules/site", priority=1000)
    r.scope.node_selector.match_labels["site"] = "fra1"
    r.expire_time.FromDatetime(datetime(2026, 6, 1, tzinfo=UTC))
    return r


def _node() -> node_pb2.Node:
    n = node_pb2.Node(name="nodes/edge-fra1-01", labels={"site": "fra1"}, agent_version="0.1.0",
                      mode=node_pb2.AGENT_MODE_ENFORCE, health=node_pb2.NODE_HEALTH_DEGRADED, connected=True,
                      applied_rule_version=7)
    n.lag.FromMilliseconds(7500)
    return n


def _attack() -> event_pb2.Event:
    e = event_pb2.Event(name="events/3", sequence=3, node="nodes/edge-fra1-01",
                        attack=event_pb2.AttackEvent(attack_id="syn-1", phase=event_pb2.ATTACK_PHASE_STARTED,
                                                     vector=event_pb2.ATTACK_VECTOR_SYN, victim="192.0.2.10",
                                                     profile=event_pb2.ATTACK_PROFILE_SPOOFED))
    e.time.FromDatetime(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    return e


def _rule_event() -> event_pb2.Event:
    return event_pb2.Event(name="events/4", sequence=4, rule=event_pb2.RuleEvent(
        kind=event_pb2.RULE_EVENT_KIND_CREATED, rule_id="dns-amp", actor="alice"))


# (schema, message, filter) -> selected?
SELECTS: list[tuple[Schema[rule_pb2.Rule] | Schema[node_pb2.Node] | Schema[event_pb2.Event],
                    Callable[[], Message], str, bool]] = [
    (RULE_FILTER, _rule, "", True),
    (RULE_FILTER, _rule, "   ", True),
    (RULE_FILTER, _rule, 'origin = RULE_ORIGIN_AUTO AND scope.node = "nodes/edge-fra1-01"', True),
    (RULE_FILTER, _rule, "origin != RULE_ORIGIN_AUTO", False),
    (RULE_FILTER, _rule, "origin = RULE_ORIGIN_MANUAL", False),
    (RULE_FILTER, _selector_rule, "origin = RULE_ORIGIN_MANUAL", True),  # unset origin is manual
    (RULE_FILTER, _rule, 'name = "rules/dns-amp"', True),
    (RULE_FILTER, _rule, "name = 'rules/dns-amp'", True),
    (RULE_FILTER, _rule, 'name > "rules/a" AND name < "rules/z"', True),
    (RULE_FILTER, _rule, "action.kind = ACTION_KIND_RATE_LIMIT", True),
    (RULE_FILTER, _rule, "priority < 100 AND priority >= 50 AND priority <= 50", True),
    (RULE_FILTER, _rule, "priority > 50", False),
    (RULE_FILTER, _rule, 'created_by = "alice"', True),
    (RULE_FILTER, _selector_rule, 'scope.node = ""', True),
    (RULE_FILTER, _selector_rule, 'scope.node_selector.match_labels.site = "fra1"', True),
    (RULE_FILTER, _selector_rule, 'scope.node_selector.match_labels.role = ""', True),
    (RULE_FILTER, _rule, 'scope.node_selector.match_labels.site = "fra1"', False),
    (RULE_FILTER, _rule, 'create_time > "2026-05-01T11:59:59Z"', True),
    (RULE_FILTER, _rule, 'create_time > "2026-05-01T14:00:00+02:00"', False),  # the same instant
    (RULE_FILTER, _rule, 'create_time >= "2026-05-01T14:00:00+02:00"', True),
    (RULE_FILTER, _rule, 'expire_time > "2000-01-01T00:00:00Z"', False),  # unset: no comparison holds
    (RULE_FILTER, _rule, 'expire_time != "2000-01-01T00:00:00Z"', False),
    (RULE_FILTER, _selector_rule, 'expire_time < "2026-07-01T00:00:00Z"', True),
    (RULE_FILTER, _rule, 'match.src: "198.51.100.7"', True),
    (RULE_FILTER, _rule, 'match.src: "198.51.100.0/25"', True),
    (RULE_FILTER, _rule, 'match.src: "198.51.0.0/16"', False),  # wider than the rule's prefix
    (RULE_FILTER, _rule, 'match.src: "2001:db8::1"', True),
    (RULE_FILTER, _rule, "match.src: 203.0.113.7", False),
    (RULE_FILTER, _selector_rule, 'match.src: "198.51.100.7"', False),  # no src listed
    (NODE_FILTER, _node, 'labels.site = "fra1" AND health != NODE_HEALTH_HEALTHY', True),
    (NODE_FILTER, _node, 'labels.role != "edge"', True),  # a missing label reads as ""
    (NODE_FILTER, _node, 'name = "nodes/edge-fra1-01"', True),
    (NODE_FILTER, _node, 'agent_version = "0.1.0" AND mode = AGENT_MODE_ENFORCE', True),
    (NODE_FILTER, _node, "agent_version = 0.1.0", True),
    (NODE_FILTER, _node, "connected = true", True),
    (NODE_FILTER, _node, "connected != true", False),
    (NODE_FILTER, _node, "applied_rule_version >= 7", True),
    (NODE_FILTER, _node, "lag > 5s AND lag < 8s", True),
    (NODE_FILTER, _node, 'lag > "7.4s" AND lag < 7501ms', True),
    (NODE_FILTER, _node, "lag > 1m", False),
    (NODE_FILTER, _node, "health = NODE_HEALTH_UNREACHABLE", False),
    (EVENT_FILTER, _attack, 'node = "nodes/edge-fra1-01" AND attack.phase = ATTACK_PHASE_STARTED', True),
    (EVENT_FILTER, _attack, "attack:*", True),
    (EVENT_FILTER, _attack, "rule:*", False),
    (EVENT_FILTER, _rule_event, "rule:*", True),
    (EVENT_FILTER, _rule_event, "attack.phase != ATTACK_PHASE_STARTED", False),  # not an attack event
    (EVENT_FILTER, _attack, "attack.vector = ATTACK_VECTOR_SYN AND attack.profile = ATTACK_PROFILE_SPOOFED",
     True),
    (EVENT_FILTER, _attack, 'attack.victim = "192.0.2.10" AND attack.attack_id = "syn-1"', True),
    (EVENT_FILTER, _attack, "sequence > 2 AND sequence < 4", True),
    (EVENT_FILTER, _attack, 'time < "2026-05-01T12:00:01Z"', True),
    (EVENT_FILTER, _rule_event, 'rule.kind = RULE_EVENT_KIND_CREATED AND rule.rule_id = "dns-amp" AND '
                                'rule.actor = "alice"', True),
    (EVENT_FILTER, _attack, "rule.kind != RULE_EVENT_KIND_CREATED", False),
]


@pytest.mark.parametrize(("schema", "make", "text", "want"), SELECTS,
                         ids=[f"{s.resource}: {t or '(empty)'}" for s, _, t, _ in SELECTS])
def test_selects(schema: Schema[Message], make: Callable[[], Message], text: str, want: bool) -> None:
    assert compile_filter(text, schema)(make()) is want


# (schema, filter) -> (column, words of the message)
REFUSED: list[tuple[Schema[rule_pb2.Rule] | Schema[node_pb2.Node] | Schema[event_pb2.Event], str,
                    int, str]] = [
    (RULE_FILTER, "orign = RULE_ORIGIN_AUTO", 1, "unknown field 'orign' (did you mean 'origin'?)"),
    (RULE_FILTER, "origin = AUTO", 10, "'AUTO' is not a RuleOrigin"),
    (RULE_FILTER, "origin = RULE_ORIGIN_AUTO OR priority = 1", 27, "OR is not supported"),
    (RULE_FILTER, "NOT priority = 1", 1, "NOT is not supported"),
    (RULE_FILTER, "-priority = 1", 1, "negation ('-') is not supported"),
    (RULE_FILTER, "(priority = 1)", 1, "parentheses are not supported"),
    (RULE_FILTER, "priority = 1 AND (name = 'x')", 18, "parentheses are not supported"),
    (RULE_FILTER, "priority == 1", 10, "'==' is not an operator; use '='"),
    (RULE_FILTER, "priority = 1 priority = 2", 14, "expected AND or the end"),
    (RULE_FILTER, "priority = 1 and name = 'x'", 14, "operators are upper case (AND)"),
    (RULE_FILTER, "priority = 1 AND", 17, "expected a comparison after AND"),
    (RULE_FILTER, "AND priority = 1", 1, "expected a comparison before AND"),
    (RULE_FILTER, "priority", 9, "expected an operator"),
    (RULE_FILTER, "priority =", 11, "expected a value after priority ="),
    (RULE_FILTER, "priority = high", 12, "priority takes a whole number"),
    (RULE_FILTER, "origin < RULE_ORIGIN_AUTO", 8, "origin (enum) takes = !=, not <"),
    (RULE_FILTER, 'name = "unclosed', 8, "string not closed"),
    (RULE_FILTER, r'name = "bad \q escape"', 13, "unknown escape"),
    (RULE_FILTER, "name = x ; y", 10, "unexpected character ';'"),
    (RULE_FILTER, "create_time > 2026-05-01", 15, "RFC 3339 time with an offset in quotes"),
    (RULE_FILTER, 'create_time > "2026-05-01T12:00:00"', 15, "RFC 3339 time with an offset"),
    (RULE_FILTER, 'match.src = "198.51.100.7"', 11, 'write match.src: "198.51.100.7"'),
    (RULE_FILTER, 'match.src: "198.51.100.7/24"', 12, "takes an IPv4/IPv6 address or prefix"),
    (RULE_FILTER, "match.src:*", 11, "presence tests are not offered here"),
    (RULE_FILTER, 'name: "x"', 5, "name (string) takes"),
    (RULE_FILTER, "scope.node_selector.match_labels = x", 1, "needs a key"),
    (NODE_FILTER, "connected = yes", 13, "connected takes true or false"),
    (NODE_FILTER, "lag > 5", 7, "lag takes a duration like 5s"),
    (NODE_FILTER, "health = HEALTHY", 10, "did you mean 'NODE_HEALTH_HEALTHY'?"),
    (EVENT_FILTER, "attack = x", 8, "attack (presence) takes :, not ="),
    (EVENT_FILTER, "attack: x", 9, "attack only takes attack:*"),
    (EVENT_FILTER, "node:*", 5, "node (string) takes"),
    (EVENT_FILTER, "rule.kind = CREATED", 13, "'CREATED' is not a RuleEventKind"),
]


@pytest.mark.parametrize(("schema", "text", "column", "words"), REFUSED,
                         ids=[f"{s.resource}: {t}" for s, t, _, _ in REFUSED])
def test_refused_with_the_column(schema: Schema[Message], text: str, column: int, words: str) -> None:
    with pytest.raises(FieldError) as info:
        compile_filter(text, schema)
    assert info.value.path == "filter"
    assert info.value.what.startswith(f"column {column}: "), info.value.what
    assert words in info.value.what


def test_error_path_is_the_request_field() -> None:
    with pytest.raises(FieldError) as info:
        compile_filter("x = 1", EVENT_FILTER, path="requests[2].filter")
    assert info.value.path == "requests[2].filter"


def test_canonical_form_and_fingerprint() -> None:
    a = compile_filter("priority<5   AND  name='rules/x'", RULE_FILTER)
    b = compile_filter('priority < 5 AND name = "rules/x"', RULE_FILTER)
    assert a.canonical == b.canonical == 'priority < 5 AND name = "rules/x"'
    assert a.fingerprint == b.fingerprint
    assert compile_filter("priority < 6", RULE_FILTER).fingerprint != a.fingerprint
    # the same text for another resource is another filter
    assert compile_filter('name = "x"', RULE_FILTER).fingerprint != compile_filter('name = "x"',
                                                                                    NODE_FILTER).fingerprint
    assert compile_filter("", RULE_FILTER).empty and compile_filter("", RULE_FILTER).canonical == ""
    assert compile_filter("attack:*", EVENT_FILTER).canonical == "attack:*"
    assert compile_filter('match.src:"198.51.100.7"', RULE_FILTER).canonical == 'match.src: "198.51.100.7"'


def test_string_escapes() -> None:
    f = compile_filter(r'created_by = "a \"quoted\" name\\"', RULE_FILTER)
    assert f(rule_pb2.Rule(created_by='a "quoted" name\\'))
    assert compile_filter(f.canonical, RULE_FILTER).fingerprint == f.fingerprint
