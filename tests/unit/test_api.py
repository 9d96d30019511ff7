"""The SOC API's servicers (controller.api.rule_service, node_service,
event_service) over a real channel: a controller (FleetStore in a real
SQLite file under tmp_path, EventLog, the servicers, health and reflection)
serving on 127.0.0.1:0. Every method; pagination; etags; every invalid
field named with nothing applied; node health; events listed and watched
live."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from breakwater.v1 import (
    event_pb2,
    event_service_pb2_grpc,
    node_pb2,
    node_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2_grpc,
)
from breakwater.v1 import event_service_pb2 as es
from breakwater.v1 import node_service_pb2 as ns
from breakwater.v1 import rule_service_pb2 as rs
from controller.api.callers import ACTOR_METADATA, REASON_METADATA
from controller.api.pages import encode_page_token
from controller.api.status import from_rpc_error
from controller.errors import (
    AlreadyExistsError,
    BreakwaterError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    NotFoundError,
)
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import Controller, create_controller
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import ScopedRule

C = grpc.StatusCode
ALICE = ((ACTOR_METADATA, "alice"), (REASON_METADATA, "ticket 7"))
TIMEOUT = 10


@dataclass
class Api:
    ctl: Controller
    channel: grpc.Channel
    rules: rule_service_pb2_grpc.RuleServiceStub
    nodes: node_service_pb2_grpc.NodeServiceStub
    events: event_service_pb2_grpc.EventServiceStub

    def state(self) -> tuple[int, int, int]:
        """What a refused request must leave alone: version, last event, audit rows."""
        return self.ctl.store.version, self.ctl.events.last_sequence, len(self.ctl.store.audit(limit=10**6))


@pytest.fixture
def api(tmp_path: Any) -> Iterator[Api]:
    """A controller whose server runs but whose expiry sweeper does not (tests sweep themselves)."""
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None,
                                             max_workers=16), sync=False)
    ctl.server.start()
    channel = grpc.insecure_channel(ctl.address)
    try:
        yield Api(ctl, channel, rule_service_pb2_grpc.RuleServiceStub(channel),
                  node_service_pb2_grpc.NodeServiceStub(channel),
                  event_service_pb2_grpc.EventServiceStub(channel))
    finally:
        channel.close()
        ctl.stop(0)


def drop(src: str = "198.51.100.0/24", **fields: Any) -> rule_pb2.Rule:
    r = rule_pb2.Rule(**fields)
    r.match.src.append(src)
    r.action.kind = rule_pb2.ACTION_KIND_DROP
    return r


def create(api: Api, rule_id: str, rule: rule_pb2.Rule | None = None) -> rule_pb2.Rule:
    out: rule_pb2.Rule = api.rules.CreateRule(
        rs.CreateRuleRequest(rule_id=rule_id, rule=rule or drop()), metadata=ALICE,
        timeout=TIMEOUT)
    return out


def fails(call: Callable[..., Any], request: Any, **kw: Any) -> BreakwaterError:
    """The Breakwater error a call fails with (through rpc's client side)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=TIMEOUT, metadata=ALICE, **kw)
        if isinstance(result, Iterator):  # a stream fails on its first read
            next(result)
    return from_rpc_error(info.value)


def code(call: Callable[..., Any], request: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT, metadata=ALICE)
    got: grpc.StatusCode = info.value.code()
    return got


# --- create, get, list, delete ------------------------------------------------------------


def test_create_get_list_delete(api: Api) -> None:
    made = create(api, "dns-amp", drop(comment="reflection from resolvers"))
    assert made.name == "rules/dns-amp" and made.created_by == "alice" and made.version == 1
    assert made.etag and made.HasField("create_time") and made.create_time == made.update_time
    assert api.rules.GetRule(rs.GetRuleRequest(name="rules/dns-amp"), timeout=TIMEOUT) == made
    listed = api.rules.ListRules(rs.ListRulesRequest(), timeout=TIMEOUT)
    assert list(listed.rules) == [made] and listed.version == 1 and not listed.next_page_token
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/dns-amp"), metadata=ALICE,
                         timeout=TIMEOUT)
    assert isinstance(fails(api.rules.GetRule, rs.GetRuleRequest(name="rules/dns-amp")),
                      NotFoundError)
    audit = api.ctl.store.audit()
    assert [(a.action, a.actor, a.reason, a.version) for a in audit] == [
        ("create", "alice", "ticket 7", 1), ("delete", "alice", "ticket 7", 2)]
    events = api.ctl.events.page()
    assert [(e.rule.kind, e.rule.rule_id, e.rule.version, e.rule.actor, e.rule.reason, e.node)
            for e in events] == [
        (event_pb2.RULE_EVENT_KIND_CREATED, "dns-amp", 1, "alice", "ticket 7", ""),
        (event_pb2.RULE_EVENT_KIND_DELETED, "dns-amp", 2, "alice", "ticket 7", "")]
    assert events[1].rule.rule == made  # the rule before it went


def test_actor_defaults_to_the_peer(api: Api) -> None:
    made = api.rules.CreateRule(rs.CreateRuleRequest(rule_id="a", rule=drop()), timeout=TIMEOUT)
    assert made.created_by.startswith("ipv4:127.0.0.1:")
    assert api.ctl.store.audit()[0].actor == made.created_by


def test_actor_metadata_too_long_is_refused(api: Api) -> None:
    before = api.state()
    with pytest.raises(grpc.RpcError) as info:
        api.rules.CreateRule(rs.CreateRuleRequest(rule_id="a", rule=drop()),
                             metadata=((ACTOR_METADATA, "x" * 300),), timeout=TIMEOUT)
    assert info.value.code() is C.INVALID_ARGUMENT
    assert "x-breakwater-actor" in str(from_rpc_error(info.value))
    assert api.state() == before


def test_create_ignores_output_only_fields(api: Api) -> None:
    sent = drop(name="rules/other", created_by="mallory", version=99, etag="W/\"forged\"")
    sent.create_time.FromDatetime(datetime(2000, 1, 1, tzinfo=UTC))
    made = create(api, "real", sent)
    assert (made.name, made.created_by, made.version) == ("rules/real", "alice", 1)
    assert made.etag != sent.etag and made.create_time.ToDatetime(UTC).year > 2000


def test_ttl_becomes_expire_time(api: Api) -> None:
    r = drop()
    r.ttl.FromSeconds(600)
    before = datetime.now(UTC)
    made = create(api, "short", r)
    assert made.WhichOneof("expiration") == "expire_time"
    expires = made.expire_time.ToDatetime(UTC)
    assert before + timedelta(seconds=599) <= expires <= datetime.now(UTC) + timedelta(seconds=601)


def test_create_existing_is_already_exists(api: Api) -> None:
    create(api, "a")
    before = api.state()
    err = fails(api.rules.CreateRule, rs.CreateRuleRequest(rule_id="a", rule=drop("10.0.0.0/16")))
    assert isinstance(err, AlreadyExistsError) and err.resource == "rules/a"
    err = fails(api.rules.CreateRule, rs.CreateRuleRequest(rule_id="a", rule=drop(),
                                                                         validate_only=True))
    assert isinstance(err, AlreadyExistsError)
    assert api.state() == before


def test_validate_only_create_changes_nothing(api: Api) -> None:
    before = api.state()
    got = api.rules.CreateRule(rs.CreateRuleRequest(rule_id="v", rule=drop(), validate_only=True),
                               metadata=ALICE, timeout=TIMEOUT)
    assert got.name == "rules/v" and got.created_by == "alice" and got.version == 0 and not got.etag
    assert api.state() == before
    assert isinstance(fails(api.rules.GetRule, rs.GetRuleRequest(name="rules/v")), NotFoundError)


# --- batches --------------------------------------------------------------------------------


def _batch(*pairs: tuple[str, rule_pb2.Rule], validate_only: bool = False
           ) -> rs.BatchCreateRulesRequest:
    return rs.BatchCreateRulesRequest(
        requests=[rs.CreateRuleRequest(rule_id=i, rule=r) for i, r in pairs],
        validate_only=validate_only)


def test_batch_is_one_version_in_request_order(api: Api) -> None:
    resp = api.rules.BatchCreateRules(_batch(("c", drop("10.0.0.3")), ("a", drop("10.0.0.1")),
                                             ("b", drop("10.0.0.2"))), metadata=ALICE, timeout=TIMEOUT)
    assert [r.name for r in resp.rules] == ["rules/c", "rules/a", "rules/b"]
    assert {r.version for r in resp.rules} == {1} and api.ctl.store.version == 1
    assert [e.rule.rule_id for e in api.ctl.events.page()] == ["c", "a", "b"]


def test_batch_is_all_or_nothing(api: Api) -> None:
    create(api, "taken")
    before = api.state()
    err = fails(api.rules.BatchCreateRules, _batch(("new", drop()), ("taken", drop())))
    assert isinstance(err, AlreadyExistsError) and "request 1" in str(err)
    err = fails(api.rules.BatchCreateRules, _batch(("new", drop()), ("taken", drop()), validate_only=True))
    assert isinstance(err, AlreadyExistsError)
    bad = drop()
    bad.match.dport.lo = bad.match.dport.hi = 53  # ports without a protocol
    err = fails(api.rules.BatchCreateRules, _batch(("new", drop()), ("bad", bad)))
    assert isinstance(err, FieldError) and err.path == "requests[1].rule.match.dport"
    assert api.state() == before
    got = api.rules.BatchCreateRules(_batch(("x", drop()), ("y", drop()), validate_only=True),
                                     timeout=TIMEOUT)
    assert [r.name for r in got.rules] == ["rules/x", "rules/y"] and api.state() == before


def test_batch_size_limits(api: Api) -> None:
    before = api.state()
    err = fails(api.rules.BatchCreateRules, rs.BatchCreateRulesRequest())
    assert isinstance(err, FieldError) and err.path == "requests"
    many = rs.BatchCreateRulesRequest(requests=[
        rs.CreateRuleRequest(rule_id=f"r{i}", rule=drop()) for i in range(10_001)])
    assert isinstance(fails(api.rules.BatchCreateRules, many), CapacityError)
    assert code(api.rules.BatchCreateRules, many) is C.RESOURCE_EXHAUSTED
    assert api.state() == before


# --- updates and etags ----------------------------------------------------------------------


def _rate_limit(pps: int = 1000) -> rule_pb2.Rule:
    r = rule_pb2.Rule(comment="limit resolvers", priority=10)
    r.match.src.append("203.0.113.0/24")
    r.match.protocol = 17
    r.match.sport.lo = r.match.sport.hi = 53
    r.action.kind = rule_pb2.ACTION_KIND_RATE_LIMIT
    r.action.rate_limit.pps = pps
    return r


def _update(api: Api, rule: rule_pb2.Rule, *paths: str, validate_only: bool = False,
            mask: bool = True) -> rule_pb2.Rule:
    request = rs.UpdateRuleRequest(rule=rule, validate_only=validate_only)
    if mask:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(paths)))
    out: rule_pb2.Rule = api.rules.UpdateRule(request, metadata=((ACTOR_METADATA, "bob"),), timeout=TIMEOUT)
    return out


def test_update_mask_semantics(api: Api) -> None:
    made = create(api, "amp", _rate_limit())
    # a sub-field alone
    patch = rule_pb2.Rule(name="rules/amp")
    patch.action.rate_limit.pps = 5000
    got = _update(api, patch, "action.rate_limit.pps")
    assert got.action.rate_limit.pps == 5000 and got.match == made.match and got.comment == made.comment
    assert got.version == 2 and got.etag != made.etag and got.created_by == "alice"
    assert got.create_time == made.create_time
    assert got.update_time.ToDatetime(UTC) >= made.update_time.ToDatetime(UTC)
    # in the mask but unset: cleared
    got = _update(api, rule_pb2.Rule(name="rules/amp"), "comment", "priority")
    assert got.comment == "" and got.priority == 1000  # unset priority means 1000
    # no mask: every field set in the patch
    got = _update(api, rule_pb2.Rule(name="rules/amp", comment="back", origin=rule_pb2.RULE_ORIGIN_FEED),
                  mask=False)
    assert (got.comment, got.origin, got.action.rate_limit.pps) == ("back", rule_pb2.RULE_ORIGIN_FEED, 5000)
    # ttl sets expire_time from now
    patch = rule_pb2.Rule(name="rules/amp")
    patch.ttl.FromSeconds(3600)
    got = _update(api, patch, "ttl")
    assert got.WhichOneof("expiration") == "expire_time"
    # "*": every mutable field from the patch (here: a drop rule everywhere, permanent)
    got = _update(api, drop("192.0.2.0/24", name="rules/amp"), "*")
    assert list(got.match.src) == ["192.0.2.0/24"] and got.action.kind == rule_pb2.ACTION_KIND_DROP
    assert not got.HasField("expire_time") and got.comment == "" and got.created_by == "alice"
    events = [e.rule for e in api.ctl.events.page()]
    assert [(e.kind, e.actor) for e in events[1:]] == [(event_pb2.RULE_EVENT_KIND_UPDATED, "bob")] * 5
    assert [a.action for a in api.ctl.store.audit()] == ["create"] + ["update"] * 5


def test_update_validate_only_changes_nothing(api: Api) -> None:
    made = create(api, "amp", _rate_limit())
    before = api.state()
    patch = rule_pb2.Rule(name="rules/amp")
    patch.action.rate_limit.pps = 9
    got = _update(api, patch, "action.rate_limit.pps", validate_only=True)
    assert got.action.rate_limit.pps == 9 and got.version == made.version and got.etag == made.etag
    assert api.state() == before
    assert api.rules.GetRule(rs.GetRuleRequest(name="rules/amp"), timeout=TIMEOUT) == made


def test_etag_mismatch_is_aborted_and_changes_nothing(api: Api) -> None:
    made = create(api, "amp", _rate_limit())
    patch = rule_pb2.Rule(name="rules/amp", comment="first", etag=made.etag)
    current = _update(api, patch, "comment")
    before = api.state()
    stale = rule_pb2.Rule(name="rules/amp", comment="second", etag=made.etag)
    for validate_only in (False, True):
        req = rs.UpdateRuleRequest(rule=stale, update_mask=field_mask_pb2.FieldMask(
            paths=["comment"]), validate_only=validate_only)
        err = fails(api.rules.UpdateRule, req)
        assert isinstance(err, EtagMismatchError) and err.resource == "rules/amp"
        assert code(api.rules.UpdateRule, req) is C.ABORTED
    delete = rs.DeleteRuleRequest(name="rules/amp", etag=made.etag)
    assert isinstance(fails(api.rules.DeleteRule, delete), EtagMismatchError)
    assert code(api.rules.DeleteRule, delete) is C.ABORTED
    assert api.state() == before
    assert api.rules.GetRule(rs.GetRuleRequest(name="rules/amp"), timeout=TIMEOUT) == current
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/amp", etag=current.etag),
                         timeout=TIMEOUT)
    assert api.ctl.store.rules() == []


def test_update_and_delete_missing(api: Api) -> None:
    before = api.state()
    req = rs.UpdateRuleRequest(rule=drop(name="rules/nope"))
    err = fails(api.rules.UpdateRule, req)
    assert isinstance(err, NotFoundError) and err.resource == "rules/nope"
    err = fails(api.rules.DeleteRule, rs.DeleteRuleRequest(name="rules/nope"))
    assert isinstance(err, NotFoundError)
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/nope", allow_missing=True),
                         timeout=TIMEOUT)
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/nope", allow_missing=True,
                                                            etag="W/\"any\""), timeout=TIMEOUT)
    assert api.state() == before


# --- every invalid field --------------------------------------------------------------------


def _c(mutate: Callable[[rule_pb2.Rule], Any], rule_id: str = "r") -> rs.CreateRuleRequest:
    r = drop()
    mutate(r)
    return rs.CreateRuleRequest(rule_id=rule_id, rule=r)


def _set(path: str, value: Any) -> Callable[[rule_pb2.Rule], None]:
    def mutate(r: rule_pb2.Rule) -> None:
        *parents, leaf = path.split(".")
        msg: Any = r
        for p in parents:
            msg = getattr(msg, p)
        if isinstance(value, list):
            getattr(msg, leaf).extend(value)
        else:
            setattr(msg, leaf, value)
    return mutate


def _all(*mutations: Callable[[rule_pb2.Rule], Any]) -> Callable[[rule_pb2.Rule], None]:
    def mutate(r: rule_pb2.Rule) -> None:
        for m in mutations:
            m(r)
    return mutate


def _rate(r: rule_pb2.Rule) -> None:
    r.action.kind = rule_pb2.ACTION_KIND_RATE_LIMIT


def _past(r: rule_pb2.Rule) -> None:
    r.expire_time.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))


def _ttl(seconds: int, nanos: int = 0) -> Callable[[rule_pb2.Rule], None]:
    def mutate(r: rule_pb2.Rule) -> None:
        r.ttl.seconds, r.ttl.nanos = seconds, nanos
    return mutate


def _label(key: str, value: str) -> Callable[[rule_pb2.Rule], None]:
    def mutate(r: rule_pb2.Rule) -> None:
        r.scope.node_selector.match_labels[key] = value
    return mutate


def _no(field: str) -> Callable[[rule_pb2.Rule], None]:
    return lambda r: r.ClearField(field)  # type: ignore[arg-type]


CREATE_INVALID: dict[str, tuple[rs.CreateRuleRequest, str]] = {
    "no rule_id": (rs.CreateRuleRequest(rule=drop()), "rule_id"),
    "bad rule_id": (_c(lambda r: None, "Bad!"), "rule_id"),
    "long rule_id": (_c(lambda r: None, "a" * 64), "rule_id"),
    "no rule": (rs.CreateRuleRequest(rule_id="r"), "rule"),
    "no match": (_c(_no("match")), "rule.match"),
    "bad src": (_c(_set("match.src", ["300.1.1.1"])), "rule.match.src[1]"),
    "host bits": (_c(_set("match.src", ["10.0.0.1/24"])), "rule.match.src[1]"),
    "repeated src": (_c(_set("match.src", ["198.51.100.0/24"])), "rule.match.src[1]"),
    "bad dst": (_c(_set("match.dst", ["nope"])), "rule.match.dst[0]"),
    "protocol": (_c(_set("match.protocol", 300)), "rule.match.protocol"),
    "ports without protocol": (_c(_all(_set("match.dport.lo", 80), _set("match.dport.hi", 80))),
                               "rule.match.dport"),
    "port range": (_c(_all(_set("match.protocol", 6), _set("match.dport.lo", 80),
                           _set("match.dport.hi", 70000))),
                   "rule.match.dport"),
    "sport on icmp": (_c(_all(_set("match.protocol", 1), _set("match.sport.lo", 1),
                              _set("match.sport.hi", 2))),
                      "rule.match.sport"),
    "tcp flags mask 0": (_c(_all(_set("match.protocol", 6), _set("match.tcp_flags.value", 0),
                                 lambda r: r.match.tcp_flags.SetInParent())), "rule.match.tcp_flags.mask"),
    "tcp flags outside mask": (_c(_all(_set("match.protocol", 6), _set("match.tcp_flags.mask", 1),
                                       _set("match.tcp_flags.value", 2))), "rule.match.tcp_flags.value"),
    "tcp flags without tcp": (_c(_all(_set("match.tcp_flags.mask", 2), _set("match.tcp_flags.value", 2))),
                              "rule.match.tcp_flags"),
    "length": (_c(_all(_set("match.length.lo", 100), _set("match.length.hi", 50))), "rule.match.length"),
    "fragment": (_c(_set("match.fragment", 9)), "rule.match.fragment"),
    "no action": (_c(_no("action")), "rule.action"),
    "no action kind": (_c(_set("action.kind", 0)), "rule.action.kind"),
    "bad action kind": (_c(_set("action.kind", 99)), "rule.action.kind"),
    "rate limit missing": (_c(_rate), "rule.action.rate_limit"),
    "rate limit empty": (_c(_all(_rate, lambda r: r.action.rate_limit.SetInParent())),
                         "rule.action.rate_limit"),
    "pps 0": (_c(_all(_rate, _set("action.rate_limit.pps", 0))), "rule.action.rate_limit.pps"),
    "bps too big": (_c(_all(_rate, _set("action.rate_limit.bps", 10**13))), "rule.action.rate_limit.bps"),
    "burst without rate": (_c(_all(_rate, _set("action.rate_limit.bps", 1000),
                                   _set("action.rate_limit.burst_packets", 5))),
                           "rule.action.rate_limit.burst_packets"),
    "rate limit scope": (_c(_all(_rate, _set("action.rate_limit.pps", 10),
                                 _set("action.rate_limit.scope", 9))),
                         "rule.action.rate_limit.scope"),
    "rate limit on drop": (_c(_set("action.rate_limit.pps", 10)), "rule.action.rate_limit"),
    "priority": (_c(_set("priority", 70000)), "rule.priority"),
    "ttl 0": (_c(_all(_ttl(0), lambda r: r.ttl.SetInParent())), "rule.ttl"),
    "ttl fraction": (_c(_ttl(1, 5)), "rule.ttl"),
    "ttl too long": (_c(_ttl(3651 * 86400)), "rule.ttl"),
    "expire in the past": (_c(_past), "rule.expire_time"),
    "expire out of range": (_c(_set("expire_time.seconds", 253402300810)), "rule.expire_time"),
    "origin": (_c(_set("origin", 9)), "rule.origin"),
    "comment": (_c(_set("comment", "x" * 1025)), "rule.comment"),
    "scope node not a name": (_c(_set("scope.node", "edge-1")), "rule.scope.node"),
    "scope node id": (_c(_set("scope.node", "nodes/Edge!")), "rule.scope.node"),
    "scope node wildcard": (_c(_set("scope.node", "nodes/-")), "rule.scope.node"),
    "empty selector": (_c(lambda r: r.scope.node_selector.SetInParent()),
                       "rule.scope.node_selector.match_labels"),
    "selector key": (_c(_label("Bad Key", "x")), "rule.scope.node_selector.match_labels"),
    "selector value": (_c(_label("site", "bad value!")), "rule.scope.node_selector.match_labels[site]"),
}


@pytest.mark.parametrize("case", CREATE_INVALID, ids=str)
def test_create_invalid_field(api: Api, case: str) -> None:
    request, field = CREATE_INVALID[case]
    before = api.state()
    for validate_only in (False, True):
        req = rs.CreateRuleRequest()
        req.CopyFrom(request)
        req.validate_only = validate_only
        assert code(api.rules.CreateRule, req) is C.INVALID_ARGUMENT
        err = fails(api.rules.CreateRule, req)
        assert isinstance(err, FieldError) and err.path == field, (err, field)
        # the same rule as request 2 of a batch: the path says which request
        batch = rs.BatchCreateRulesRequest(
            requests=[rs.CreateRuleRequest(rule_id="ok1", rule=drop()),
                      rs.CreateRuleRequest(rule_id="ok2", rule=drop()), request],
            validate_only=validate_only)
        err = fails(api.rules.BatchCreateRules, batch)
        assert isinstance(err, FieldError) and err.path == f"requests[2].{field}"
    assert api.state() == before and api.ctl.store.rules() == []


def test_batch_duplicate_ids(api: Api) -> None:
    err = fails(api.rules.BatchCreateRules, _batch(("a", drop()), ("b", drop()), ("a", drop())))
    assert isinstance(err, FieldError) and err.path == "requests[2].rule_id" and "requests[0]" in err.what


def _u(mutate: Callable[[rule_pb2.Rule], Any], *paths: str, name: str = "rules/amp"
       ) -> rs.UpdateRuleRequest:
    r = rule_pb2.Rule(name=name)
    mutate(r)
    return rs.UpdateRuleRequest(rule=r, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))


UPDATE_INVALID: dict[str, tuple[rs.UpdateRuleRequest, str]] = {
    "no rule": (rs.UpdateRuleRequest(), "rule"),
    "no name": (_u(lambda r: None, "comment", name=""), "rule.name"),
    "not a rule name": (_u(lambda r: None, "comment", name="amp"), "rule.name"),
    "bad rule id": (_u(lambda r: None, "comment", name="rules/Bad!"), "rule.name"),
    "output-only path": (_u(lambda r: None, "comment", "created_by"), "update_mask.paths[1]"),
    "unknown path": (_u(lambda r: None, "bogus"), "update_mask.paths[0]"),
    "unknown sub-field": (_u(lambda r: None, "match.nope"), "update_mask.paths[0]"),
    "sub-field of a scalar": (_u(lambda r: None, "priority.x"), "update_mask.paths[0]"),
    "star with others": (_u(lambda r: None, "*", "comment"), "update_mask.paths"),
    "port on a protocol without ports": (_u(_all(_set("match.protocol", 1)), "match.protocol"),
                                         "rule.match.sport"),
    "action cleared": (_u(lambda r: None, "action"), "rule.action"),
    "pps 0": (_u(_set("action.rate_limit.pps", 0), "action.rate_limit.pps"), "rule.action.rate_limit.pps"),
    "kind drop keeps the rate limit": (_u(_set("action.kind", rule_pb2.ACTION_KIND_DROP), "action.kind"),
                                       "rule.action.rate_limit"),
    "ttl fraction": (_u(_ttl(1, 5), "ttl"), "rule.ttl"),
    "expire in the past": (_u(_past, "expire_time"), "rule.expire_time"),
    "priority": (_u(_set("priority", 70000), "priority"), "rule.priority"),
    "comment": (_u(_set("comment", "x" * 1025), "comment"), "rule.comment"),
    "scope node": (_u(_set("scope.node", "edge"), "scope"), "rule.scope.node"),
    "selector value": (_u(_label("site", "a b"), "scope"), "rule.scope.node_selector.match_labels[site]"),
    "src": (_u(_set("match.src", ["198.51.100.1/24"]), "match.src"), "rule.match.src[0]"),
}


@pytest.mark.parametrize("case", UPDATE_INVALID, ids=str)
def test_update_invalid_field(api: Api, case: str) -> None:
    made = create(api, "amp", _rate_limit())
    request, field = UPDATE_INVALID[case]
    before = api.state()
    for validate_only in (False, True):
        req = rs.UpdateRuleRequest()
        req.CopyFrom(request)
        req.validate_only = validate_only
        assert code(api.rules.UpdateRule, req) is C.INVALID_ARGUMENT
        err = fails(api.rules.UpdateRule, req)
        assert isinstance(err, FieldError) and err.path == field, (err, field)
    assert api.state() == before
    assert api.rules.GetRule(rs.GetRuleRequest(name="rules/amp"), timeout=TIMEOUT) == made


# (stub attribute, method, request, field)
OTHER_INVALID: list[tuple[str, str, Any, str]] = [
    ("rules", "GetRule", rs.GetRuleRequest(), "name"),
    ("rules", "GetRule", rs.GetRuleRequest(name="amp"), "name"),
    ("rules", "GetRule", rs.GetRuleRequest(name="rules/"), "name"),
    ("rules", "DeleteRule", rs.DeleteRuleRequest(name=""), "name"),
    ("rules", "DeleteRule", rs.DeleteRuleRequest(name="nodes/amp"), "name"),
    ("rules", "DeleteRule", rs.DeleteRuleRequest(name="rules/Bad!", allow_missing=True), "name"),
    ("rules", "ListRules", rs.ListRulesRequest(page_size=-1), "page_size"),
    ("rules", "ListRules", rs.ListRulesRequest(page_token="garbage"), "page_token"),
    ("rules", "ListRules", rs.ListRulesRequest(filter="origin = AUTO"), "filter"),
    ("nodes", "ListNodes", ns.ListNodesRequest(page_size=-5), "page_size"),
    ("nodes", "ListNodes", ns.ListNodesRequest(page_token="e30"), "page_token"),
    ("nodes", "ListNodes", ns.ListNodesRequest(filter="health = 3"), "filter"),
    ("nodes", "GetNode", ns.GetNodeRequest(name="nodes/-"), "name"),
    ("nodes", "GetNode", ns.GetNodeRequest(name="edge-1"), "name"),
    ("nodes", "GetNode", ns.GetNodeRequest(name="nodes/Edge 1"), "name"),
    ("events", "ListEvents", es.ListEventsRequest(page_size=-1), "page_size"),
    ("events", "ListEvents", es.ListEventsRequest(page_token="!!"), "page_token"),
    ("events", "ListEvents", es.ListEventsRequest(filter="kind = attack"), "filter"),
    ("events", "WatchEvents", es.WatchEventsRequest(filter="attack.phase = STARTED"), "filter"),
]


@pytest.mark.parametrize(("stub", "method", "request_", "field"), OTHER_INVALID,
                         ids=[f"{m} {f}: {r}".strip() for _, m, r, f in OTHER_INVALID])
def test_other_invalid_field(api: Api, stub: str, method: str, request_: Any, field: str) -> None:
    create(api, "amp")
    before = api.state()
    err = fails(getattr(getattr(api, stub), method), request_)
    assert isinstance(err, FieldError) and err.path == field, (err, field)
    assert api.state() == before


# --- pagination -----------------------------------------------------------------------------


def _ids(resp: rs.ListRulesResponse) -> list[str]:
    return [r.name.removeprefix("rules/") for r in resp.rules]


def _list(api: Api, **kw: Any) -> rs.ListRulesResponse:
    out: rs.ListRulesResponse = api.rules.ListRules(rs.ListRulesRequest(**kw),
                                                                  timeout=TIMEOUT)
    return out


def test_rule_pages(api: Api) -> None:
    ids = [f"r{i:03d}" for i in range(25)]
    api.rules.BatchCreateRules(_batch(*((i, drop(f"10.0.{n}.0/24")) for n, i in enumerate(reversed(ids)))),
                               timeout=TIMEOUT)
    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        resp = _list(api, page_size=10, page_token=token)
        sizes.append(len(resp.rules))
        seen += _ids(resp)
        assert resp.version == 1
        token = resp.next_page_token
        if not token:
            break
    assert sizes == [10, 10, 5] and seen == ids  # rule-id order
    # exactly a page's worth left: the token is empty on the last full page
    first = _list(api, page_size=20)
    assert len(_list(api, page_size=5, page_token=first.next_page_token).rules) == 5
    assert not _list(api, page_size=5, page_token=first.next_page_token).next_page_token
    assert len(_list(api).rules) == 25 and not _list(api).next_page_token  # default 100


def test_page_size_default_and_maximum(api: Api) -> None:
    api.rules.BatchCreateRules(_batch(*((f"r{i:04d}", drop(f"10.{i // 256}.{i % 256}.0/24"))
                                        for i in range(1001))), timeout=TIMEOUT)
    assert len(_list(api).rules) == 100
    big = _list(api, page_size=5000)
    assert len(big.rules) == 1000 and big.next_page_token
    rest = _list(api, page_size=5000, page_token=big.next_page_token)
    assert _ids(rest) == ["r1000"] and not rest.next_page_token


def test_pages_are_keyed_by_position(api: Api) -> None:
    api.rules.BatchCreateRules(_batch(*((f"r{i}", drop()) for i in range(6))), timeout=TIMEOUT)
    first = _list(api, page_size=3)
    assert _ids(first) == ["r0", "r1", "r2"]
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/r1"), timeout=TIMEOUT)  # already seen
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/r3"), timeout=TIMEOUT)  # not yet seen
    create(api, "r00")  # sorts before the position: not repeated
    rest = _list(api, page_size=3, page_token=first.next_page_token)
    assert _ids(rest) == ["r4", "r5"] and not rest.next_page_token
    assert rest.version == 4


def test_filtered_pages(api: Api) -> None:
    api.rules.BatchCreateRules(_batch(*((f"r{i:02d}", drop(priority=i % 3)) for i in range(20))),
                               timeout=TIMEOUT)
    seen: list[str] = []
    token = ""
    while True:
        resp = _list(api, page_size=2, page_token=token, filter="priority = 0")
        seen += _ids(resp)
        token = resp.next_page_token
        if not token:
            break
    assert seen == [f"r{i:02d}" for i in range(0, 20, 3)]


def test_page_token_is_bound_to_the_filter(api: Api) -> None:
    api.rules.BatchCreateRules(_batch(*((f"r{i}", drop()) for i in range(4))), timeout=TIMEOUT)
    token = _list(api, page_size=1, filter="priority = 1000").next_page_token
    assert token
    # the same filter written otherwise is the same filter
    assert _ids(_list(api, page_size=1, page_token=token, filter="priority=1000")) == ["r1"]
    for other in ({"filter": "priority = 999"}, {"filter": ""},
                  {"filter": "priority = 1000", "show_expired": True}):
        err = fails(api.rules.ListRules, rs.ListRulesRequest(page_size=1, page_token=token,
                                                                           **other))
        assert isinstance(err, FieldError) and err.path == "page_token" and "another filter" in err.what
    # a token of another listing
    node_token = encode_page_token("node", "x", "nodes/a")
    err = fails(api.rules.ListRules, rs.ListRulesRequest(page_token=node_token))
    assert isinstance(err, FieldError) and err.path == "page_token" and "node listings" in err.what
    err = fails(api.nodes.ListNodes, ns.ListNodesRequest(page_token=token))
    assert isinstance(err, FieldError) and err.path == "page_token"


def test_show_expired(api: Api) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    api.ctl.store.create([ScopedRule(Rule("gone", Match(), RuleAction("drop"), expires_at=past))], actor="t",
                         now=past - timedelta(seconds=60))
    create(api, "kept")
    assert _ids(_list(api)) == ["kept"]
    assert _ids(_list(api, show_expired=True)) == ["gone", "kept"]
    assert _list(api, show_expired=True, filter='expire_time < "2100-01-01T00:00:00Z"').rules[0].name == \
        "rules/gone"
    # the sweep removes it (one version, an EXPIRED event by "ttl", audited as the controller's)
    assert api.ctl.sweep_once() == 1
    assert _ids(_list(api, show_expired=True)) == ["kept"]
    last = api.ctl.events.page(newest_first=True, limit=1)[0]
    assert (last.rule.kind, last.rule.rule_id, last.rule.actor) == (event_pb2.RULE_EVENT_KIND_EXPIRED, "gone",
                                                                     "ttl")
    assert (api.ctl.store.audit()[-1].action, api.ctl.store.audit()[-1].actor) == ("expire",
                                                                                   "breakwater-controller")
    assert api.ctl.sweep_once() == 0


def test_list_filters(api: Api) -> None:
    site = drop()
    site.scope.node_selector.match_labels["site"] = "fra1"
    one = drop("203.0.113.0/24", origin=rule_pb2.RULE_ORIGIN_AUTO)
    one.scope.node = "nodes/edge-fra1-01"
    api.rules.BatchCreateRules(_batch(("site", site), ("one", one), ("all", drop("192.0.2.7"))),
                               timeout=TIMEOUT)
    one_node = 'origin = RULE_ORIGIN_AUTO AND scope.node = "nodes/edge-fra1-01"'
    assert _ids(_list(api, filter=one_node)) == ["one"]
    assert _ids(_list(api, filter='scope.node_selector.match_labels.site = "fra1"')) == ["site"]
    assert _ids(_list(api, filter='match.src: "203.0.113.9"')) == ["one"]
    assert _ids(_list(api, filter='match.src: "192.0.2.7"')) == ["all"]
    assert _ids(_list(api, filter='created_by = "alice"')) == []
    drops = "action.kind = ACTION_KIND_DROP AND priority >= 1000"
    assert _ids(_list(api, filter=drops)) == ["all", "one", "site"]


# --- nodes ----------------------------------------------------------------------------------


def _register(api: Api, node_id: str, **changes: Any) -> None:
    doc = {"agent_version": "0.1.0", "mode": "AGENT_MODE_ENFORCE",
           "interfaces": [{"name": "eth1", "attach_mode": "ATTACH_MODE_NATIVE"}],
           "capabilities": {"abi_version": 2, "max_rules": 4096, "deltas": True}}
    labels = changes.pop("labels", {"site": "fra1"})
    api.ctl.store.register_node(node_id, labels, doc)
    if changes:
        api.ctl.store.update_node(node_id, **changes)


def _get_node(api: Api, node_id: str) -> node_pb2.Node:
    out: node_pb2.Node = api.nodes.GetNode(ns.GetNodeRequest(name=f"nodes/{node_id}"),
                                           timeout=TIMEOUT)
    return out


def test_nodes_health_and_lag(api: Api) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(seconds=40)
    # version 1 committed 40 s ago, version 2 just now
    api.ctl.store.create([ScopedRule(Rule("a", Match(), RuleAction("drop")))], actor="t", now=old)
    create(api, "b")
    _register(api, "healthy", target_version=2, applied_version=2, labels={"site": "fra1", "role": "edge"})
    _register(api, "catching-up", target_version=2, applied_version=1)
    _register(api, "lagging", target_version=1, applied_version=0)
    _register(api, "refusing", target_version=2, applied_version=1, last_error={
        "code": "APPLY_ERROR_CODE_INVALID_RULE", "message": "rules/b: match.dport: no",
        "violations": [{"rule_id": "b", "field": "match.dport", "description": "no"}]},
              labels={"site": "ams1"})
    _register(api, "gone", connected=False, target_version=2, applied_version=2,
              last_heartbeat=now - timedelta(seconds=5))
    _register(api, "silent", target_version=2, applied_version=2, last_heartbeat=now - timedelta(seconds=300))
    H = node_pb2
    healthy = _get_node(api, "healthy")
    assert (healthy.health, healthy.health_detail, healthy.connected) == (H.NODE_HEALTH_HEALTHY, "", True)
    assert healthy.lag.ToTimedelta() == timedelta(0) and not healthy.HasField("last_error")
    iface = healthy.interfaces[0]
    assert (healthy.agent_version, healthy.mode, iface.name, iface.attach_mode,
            healthy.capabilities.max_rules, healthy.capabilities.deltas) == (
        "0.1.0", H.AGENT_MODE_ENFORCE, "eth1", H.ATTACH_MODE_NATIVE, 4096, True)
    assert dict(healthy.labels) == {"role": "edge", "site": "fra1"} and healthy.HasField("create_time")
    catching = _get_node(api, "catching-up")
    assert catching.health == H.NODE_HEALTH_HEALTHY and catching.lag.ToTimedelta() < timedelta(seconds=10)
    lagging = _get_node(api, "lagging")
    assert lagging.health == H.NODE_HEALTH_DEGRADED and "behind" in lagging.health_detail
    assert timedelta(seconds=39) < lagging.lag.ToTimedelta() < timedelta(seconds=60)
    refusing = _get_node(api, "refusing")
    assert refusing.health == H.NODE_HEALTH_DEGRADED and "refusing version 2" in refusing.health_detail
    assert refusing.last_error.code == rule_pb2.APPLY_ERROR_CODE_INVALID_RULE
    assert refusing.last_error.violations[0].field == "match.dport"
    gone = _get_node(api, "gone")
    assert (gone.health, gone.connected) == (H.NODE_HEALTH_UNREACHABLE, False)
    assert "no sync stream" in gone.health_detail
    silent = _get_node(api, "silent")
    assert silent.health == H.NODE_HEALTH_UNREACHABLE and "silent" in silent.health_detail
    # listing, filters, pages
    resp = api.nodes.ListNodes(ns.ListNodesRequest(), timeout=TIMEOUT)
    every = ("catching-up", "gone", "healthy", "lagging", "refusing", "silent")
    assert [n.name for n in resp.nodes] == [f"nodes/{i}" for i in every]
    flt = 'labels.site = "fra1" AND health != NODE_HEALTH_HEALTHY'
    resp = api.nodes.ListNodes(ns.ListNodesRequest(filter=flt), timeout=TIMEOUT)
    assert [n.name for n in resp.nodes] == ["nodes/gone", "nodes/lagging", "nodes/silent"]
    resp = api.nodes.ListNodes(ns.ListNodesRequest(filter="lag > 30s"), timeout=TIMEOUT)
    assert [n.name for n in resp.nodes] == ["nodes/lagging"]
    resp = api.nodes.ListNodes(ns.ListNodesRequest(filter="connected = false"), timeout=TIMEOUT)
    assert [n.name for n in resp.nodes] == ["nodes/gone"]
    names: list[str] = []
    token = ""
    while True:
        page = api.nodes.ListNodes(ns.ListNodesRequest(page_size=2, page_token=token),
                                   timeout=TIMEOUT)
        names += [n.name for n in page.nodes]
        token = page.next_page_token
        if not token:
            break
    assert len(names) == 6 and names == sorted(names)
    err = fails(api.nodes.GetNode, ns.GetNodeRequest(name="nodes/never"))
    assert isinstance(err, NotFoundError) and err.resource == "nodes/never"


# --- events ---------------------------------------------------------------------------------


def _attacks(api: Api, n: int) -> None:
    api.ctl.events.publish([event_pb2.Event(attack=event_pb2.AttackEvent(
        attack_id=f"a{i}", phase=event_pb2.ATTACK_PHASE_STARTED if i % 2 else event_pb2.ATTACK_PHASE_ENDED))
        for i in range(n)], node="nodes/edge-1")


def test_list_events_newest_first_in_pages(api: Api) -> None:
    _attacks(api, 120)
    resp = api.events.ListEvents(es.ListEventsRequest(), timeout=TIMEOUT)
    assert [e.sequence for e in resp.events] == list(range(120, 70, -1))  # default 50
    seqs: list[int] = []
    token = ""
    while True:
        resp = api.events.ListEvents(es.ListEventsRequest(page_size=7, page_token=token,
                                                          filter="attack.phase = ATTACK_PHASE_STARTED"),
                                     timeout=TIMEOUT)
        seqs += [e.sequence for e in resp.events]
        token = resp.next_page_token
        if not token:
            break
    assert seqs == list(range(120, 0, -2))  # a{odd} are sequences 2, 4, ...
    all_ = api.events.ListEvents(es.ListEventsRequest(page_size=5000), timeout=TIMEOUT)
    assert len(all_.events) == 120 and not all_.next_page_token
    token = api.events.ListEvents(es.ListEventsRequest(page_size=3), timeout=TIMEOUT).next_page_token
    err = fails(api.events.ListEvents, es.ListEventsRequest(page_token=token, filter="rule:*"))
    assert isinstance(err, FieldError) and err.path == "page_token"
    create(api, "r")
    rules = api.events.ListEvents(es.ListEventsRequest(filter="rule:*"), timeout=TIMEOUT)
    assert [e.rule.rule_id for e in rules.events] == ["r"] and not rules.next_page_token
    attacks = api.events.ListEvents(es.ListEventsRequest(filter='attack:* AND node = "nodes/edge-1"',
                                                                        page_size=1000), timeout=TIMEOUT)
    assert len(attacks.events) == 120


@contextlib.contextmanager
def _watching(api: Api, request: es.WatchEventsRequest
              ) -> Iterator[queue.Queue[event_pb2.Event | BaseException]]:
    """Consume a WatchEvents stream on a thread into a queue; cancel it at the end."""
    got: queue.Queue[event_pb2.Event | BaseException] = queue.Queue()
    call = api.events.WatchEvents(request)

    def consume() -> None:
        try:
            for e in call:
                got.put(e)
        except grpc.RpcError as exc:
            if exc.code() is not C.CANCELLED:
                got.put(from_rpc_error(exc))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        yield got
    finally:
        call.cancel()
        t.join(10)
        assert not t.is_alive()


def _next(got: queue.Queue[event_pb2.Event | BaseException]) -> event_pb2.Event:
    item = got.get(timeout=10)
    assert isinstance(item, event_pb2.Event), item
    return item


def _streams(api: Api) -> int:
    return sum(n for (svc, m), n in api.ctl.rpc_metrics.streams.items() if m == "WatchEvents")


def test_watch_sees_rule_events_live(api: Api) -> None:
    create(api, "before")
    with _watching(api, es.WatchEventsRequest()) as got:
        deadline = time.monotonic() + 10
        while _streams(api) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        create(api, "live")
        e = _next(got)
        assert (e.rule.kind, e.rule.rule_id, e.rule.actor, e.name) == (
            event_pb2.RULE_EVENT_KIND_CREATED, "live", "alice", f"events/{e.sequence}")
        api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/live"), metadata=ALICE,
                             timeout=TIMEOUT)
        assert _next(got).rule.kind == event_pb2.RULE_EVENT_KIND_DELETED
        assert got.empty()  # "before" was logged before the watch began: not replayed
    deadline = time.monotonic() + 10
    while _streams(api) and time.monotonic() < deadline:  # the client cancelled: the stream ended
        time.sleep(0.05)
    assert _streams(api) == 0
    assert api.ctl.rpc_metrics.calls[("breakwater.v1.EventService", "WatchEvents", "CANCELLED")] == 1


def test_watch_replays_after_a_sequence_with_a_filter(api: Api) -> None:
    _attacks(api, 3)
    create(api, "r1")
    api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/r1"), timeout=TIMEOUT)
    request = es.WatchEventsRequest(filter="rule.kind = RULE_EVENT_KIND_DELETED", after_sequence=0)
    with _watching(api, request) as got:
        assert _next(got).rule.rule_id == "r1"
        create(api, "r2")
        api.rules.DeleteRule(rs.DeleteRuleRequest(name="rules/r2"), timeout=TIMEOUT)
        assert _next(got).rule.rule_id == "r2"  # the CREATED of r2 was filtered out
    with _watching(api, es.WatchEventsRequest(after_sequence=2)) as got:
        assert [_next(got).sequence for _ in range(5)] == [3, 4, 5, 6, 7]


def test_watch_refuses_a_lost_position(api: Api) -> None:
    _attacks(api, 10)
    api.ctl.store.prune_events(keep=4)  # events 1..6 are gone
    err = fails(api.events.WatchEvents, es.WatchEventsRequest(after_sequence=3))
    assert isinstance(err, FailedPreconditionError) and "4..6 have been pruned" in str(err)
    err = fails(api.events.WatchEvents, es.WatchEventsRequest(after_sequence=99))
    assert isinstance(err, FailedPreconditionError) and "beyond the end" in str(err)
    with _watching(api, es.WatchEventsRequest(after_sequence=6)) as got:
        assert _next(got).sequence == 7


def test_watch_ends_when_the_server_stops(tmp_path: Any) -> None:
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None,
                                             shutdown_grace=30), sync=False)
    ctl.start()
    channel = grpc.insecure_channel(ctl.address)
    call = event_service_pb2_grpc.EventServiceStub(channel).WatchEvents(es.WatchEventsRequest())
    done = threading.Event()
    ended: list[Any] = []

    def consume() -> None:
        try:
            ended.extend(call)
        except grpc.RpcError as exc:
            ended.append(exc.code())
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(0.3)
    started = time.monotonic()
    ctl.stop()  # 30 s of grace, but the stream ends at once, cleanly
    assert done.wait(10) and time.monotonic() - started < 5
    assert ended == []  # ended with OK, no error
    channel.close()


# --- reflection and health ------------------------------------------------------------------


def test_reflection_lists_every_service(api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    replies = list(stub.ServerReflectionInfo(iter([  # type: ignore[operator]
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="breakwater.v1.RuleService")]),
        timeout=TIMEOUT))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"breakwater.v1.RuleService", "breakwater.v1.NodeService", "breakwater.v1.EventService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto  # what grpcurl describe reads


def test_every_method_is_implemented() -> None:
    """No method of the three services is left to the generated base (UNIMPLEMENTED)."""
    from controller.api.event_service import EventServicer
    from controller.api.node_service import NodeServicer
    from controller.api.rule_service import RuleServicer

    for cls, base in ((RuleServicer, rule_service_pb2_grpc.RuleServiceServicer),
                      (NodeServicer, node_service_pb2_grpc.NodeServiceServicer),
                      (EventServicer, event_service_pb2_grpc.EventServiceServicer)):
        methods = [m for m in vars(base) if m[0].isupper()]
        assert methods and all(getattr(cls, m) is not getattr(base, m) for m in methods), cls

