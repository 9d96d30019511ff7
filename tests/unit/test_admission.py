"""Admission guards of rule writes (controller.rules.admission) over a real
controller on a real mTLS channel with real certificates of each role:
broad prefixes, allowlisted and management sources, reserved ids, the caps
(prefixes per rule, batch size, rules stored), overrides for admins only,
each refusal naming the field and the guard, and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from breakwater.v1 import rule_pb2, rule_service_pb2_grpc
from breakwater.v1 import rule_service_pb2 as rs
from controller import pki
from controller.addresses import parse_prefix
from controller.api.auth import TlsFiles, channel_credentials
from controller.api.status import from_rpc_error
from controller.errors import CapacityError, ConfigError, FieldError, PermissionDeniedError
from controller.fleet.config import parse_config
from controller.fleet.daemon import Controller, create_controller
from controller.rules.admission import AdmissionPolicy
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import RuleScope, ScopedRule

TIMEOUT = 10
C = grpc.StatusCode


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "tls", "controller", "ctl")
    for role in pki.ROLES:
        pki.issue(root / "ca", root / "tls", "operator", role, role=role)
    return root


def _tls(certs: Path, name: str) -> TlsFiles:
    return TlsFiles(certs / "tls" / f"{name}.crt", certs / "tls" / f"{name}.key", certs / "tls" / "ca.crt")


@pytest.fixture
def ctl(certs: Path, tmp_path: Path) -> Iterator[Controller]:
    tls = _tls(certs, "ctl")
    cfg = parse_config({"listen": "127.0.0.1:0", "state_dir": str(tmp_path), "metrics": "",
                        "tls_cert": str(tls.cert), "tls_key": str(tls.key), "tls_ca": str(tls.ca),
                        "admission": {"max_rules": 5, "max_batch": 3, "max_prefixes": 4,
                                      "management": ["192.0.2.0/28"]},
                        "fleet": {"mitigate": {"allowlist": ["203.0.113.7"]}}}, "test.toml")
    controller = create_controller(cfg, sync=False)
    controller.server.start()
    try:
        yield controller
    finally:
        controller.stop(0)


@pytest.fixture
def stubs(ctl: Controller, certs: Path) -> Iterator[dict[str, rule_service_pb2_grpc.RuleServiceStub]]:
    channels = {role: grpc.secure_channel(ctl.address, channel_credentials(_tls(certs, role)))
                for role in ("operator", "admin")}
    try:
        yield {role: rule_service_pb2_grpc.RuleServiceStub(ch) for role, ch in channels.items()}
    finally:
        for ch in channels.values():
            ch.close()


def rule(*src: str, kind: int = rule_pb2.ACTION_KIND_DROP, **match: Any) -> rule_pb2.Rule:
    r = rule_pb2.Rule(match=rule_pb2.Match(src=list(src), **match))
    r.action.kind = kind  # type: ignore[assignment]
    return r


def refused(call: Any, request: Any) -> tuple[Exception, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return from_rpc_error(info.value), info.value


def field_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


@pytest.mark.parametrize(("src", "match", "where", "words"), [
    (("10.0.0.0/8",), {}, "rule.match.src[0]", "broader than /16"),
    (("198.51.100.0/24", "0.0.0.0/0"), {}, "rule.match.src[1]", "guard broad-prefix"),
    (("2001::/16",), {}, "rule.match.src[0]", "broader than /32"),
    ((), {}, "rule.match", "of every source"),
    ((), {"protocol": 17}, "rule.match", "of every source"),
    (("192.0.2.0/24",), {}, "rule.match.src[0]", "a management prefix (guard protected)"),
    (("203.0.113.7",), {}, "rule.match.src[0]", "allowlisted"),
])
def test_guarded_rules_are_refused_naming_the_field(ctl: Controller, stubs: Any, src: tuple[str, ...],
                                                    match: dict[str, Any], where: str, words: str) -> None:
    for role in ("operator", "admin"):
        request = rs.CreateRuleRequest(rule_id="x", rule=rule(*src, **match))
        err, raw = refused(stubs[role].CreateRule, request)
        assert raw.code() is C.INVALID_ARGUMENT and isinstance(err, FieldError), err
        assert field_of(raw) == where and words in str(err), err
    assert ctl.store.version == 0


def test_narrow_and_harmless_rules_pass(ctl: Controller, stubs: Any) -> None:
    op = stubs["operator"]
    op.CreateRule(rs.CreateRuleRequest(rule_id="a", rule=rule("10.1.0.0/16")), timeout=TIMEOUT)
    op.CreateRule(rs.CreateRuleRequest(rule_id="b", rule=rule(protocol=17, dst=["198.18.0.0/24"])),
                  timeout=TIMEOUT)
    monitor = rule("0.0.0.0/0", kind=rule_pb2.ACTION_KIND_MONITOR)
    op.CreateRule(rs.CreateRuleRequest(rule_id="c", rule=monitor), timeout=TIMEOUT)
    assert ctl.store.version == 3


def test_overrides_are_for_admins_and_by_name(ctl: Controller, stubs: Any) -> None:
    broad = rs.CreateRuleRequest(rule_id="wide", rule=rule("10.0.0.0/8"), override_guards=["broad-prefix"])
    err, raw = refused(stubs["operator"].CreateRule, broad)
    assert raw.code() is C.PERMISSION_DENIED and isinstance(err, PermissionDeniedError)
    assert "needs the admin role" in str(err)
    protected = rs.CreateRuleRequest(rule_id="m", rule=rule("192.0.2.0/24"), override_guards=["protected"])
    err, raw = refused(stubs["admin"].CreateRule, protected)
    assert field_of(raw) == "override_guards[0]" and "never overridable" in str(err)
    err, raw = refused(stubs["admin"].CreateRule, rs.CreateRuleRequest(
        rule_id="m", rule=rule("10.1.0.0/16"), override_guards=["x" * 100_000]))
    assert raw.code() is C.INVALID_ARGUMENT and "is not a guard" in str(err) and len(str(err)) < 300
    assert ctl.store.version == 0
    made = stubs["admin"].CreateRule(broad, timeout=TIMEOUT)
    assert made.name == "rules/wide" and ctl.store.version == 1
    # an update must pass the guards again, as the rule would be stored
    upd = rs.UpdateRuleRequest(rule=rule_pb2.Rule(name="rules/wide", comment="c"))
    err, raw = refused(stubs["admin"].UpdateRule, upd)
    assert field_of(raw) == "rule.match.src[0]"
    upd.override_guards.append("broad-prefix")
    assert stubs["admin"].UpdateRule(upd, timeout=TIMEOUT).comment == "c"


def test_reserved_ids_are_the_systems(ctl: Controller, stubs: Any) -> None:
    for rid in ("fleet-src-heavy", "auto-x"):
        request = rs.CreateRuleRequest(rule_id=rid, rule=rule("10.1.0.0/16"))
        err, raw = refused(stubs["operator"].CreateRule, request)
        assert field_of(raw) == "rule_id" and "guard reserved-id" in str(err)
    # a fleet rule the system wrote: an operator can neither change nor delete it
    system = ScopedRule(Rule("fleet-src-1", Match(src=(parse_prefix("198.18.1.1"),)), RuleAction("drop"),
                             origin="controller"), RuleScope())
    ctl.backend.apply(lambda s: s.create([system], actor="breakwater-controller", reason="t"))
    version = ctl.store.version
    err, raw = refused(stubs["operator"].DeleteRule, rs.DeleteRuleRequest(name="rules/fleet-src-1"))
    assert field_of(raw) == "name"
    err, raw = refused(stubs["operator"].UpdateRule, rs.UpdateRuleRequest(
        rule=rule_pb2.Rule(name="rules/fleet-src-1", comment="mine")))
    assert field_of(raw) == "rule.name"
    err, raw = refused(stubs["operator"].DeleteRule, rs.DeleteRuleRequest(
        name="rules/fleet-src-1", override_guards=["reserved-id"]))
    assert raw.code() is C.PERMISSION_DENIED
    assert ctl.store.version == version
    stubs["admin"].DeleteRule(rs.DeleteRuleRequest(name="rules/fleet-src-1", override_guards=["reserved-id"]),
                              timeout=TIMEOUT)
    assert ctl.store.version == version + 1


def test_caps(ctl: Controller, stubs: Any) -> None:
    op = stubs["operator"]
    many = rule(*(f"10.{i}.0.0/16" for i in range(5)))
    err, raw = refused(op.CreateRule, rs.CreateRuleRequest(rule_id="many", rule=many))
    assert field_of(raw) == "rule.match.src" and "at most 4" in str(err)
    batch = rs.BatchCreateRulesRequest(requests=[
        rs.CreateRuleRequest(rule_id=f"b{i}", rule=rule(f"10.{i}.0.0/16")) for i in range(4)])
    err, raw = refused(op.BatchCreateRules, batch)
    assert raw.code() is C.RESOURCE_EXHAUSTED and isinstance(err, CapacityError) and "at most 3" in str(err)
    del batch.requests[3]
    op.BatchCreateRules(batch, timeout=TIMEOUT)
    op.CreateRule(rs.CreateRuleRequest(rule_id="c4", rule=rule("10.4.0.0/16")), timeout=TIMEOUT)
    op.CreateRule(rs.CreateRuleRequest(rule_id="c5", rule=rule("10.5.0.0/16")), timeout=TIMEOUT)
    assert len(ctl.store.rules()) == 5
    version = ctl.store.version
    err, raw = refused(op.CreateRule, rs.CreateRuleRequest(rule_id="c6", rule=rule("10.6.0.0/16")))
    assert raw.code() is C.RESOURCE_EXHAUSTED and "admission.max_rules" in str(err)
    assert ctl.store.version == version


def test_admission_config() -> None:
    cfg = parse_config({})
    assert (cfg.admission.min_prefix_v4, cfg.admission.min_prefix_v6) == (16, 32)
    assert cfg.to_dict()["admission"]["max_rules"] == 100_000
    for table, words in (({"min_prefix_v4": 33}, "admission.min_prefix_v4"),
                         ({"allowlist": ["nope"]}, "admission.allowlist[0]"),
                         ({"max_rule": 3}, "did you mean"), ("x", "admission")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
            parse_config({"admission": table}, "c.toml")


def test_policy_without_a_server() -> None:
    policy = AdmissionPolicy(min_prefix_v4=24)
    policy.admit(Rule("a", Match(src=(parse_prefix("10.0.0.0/24"),)), RuleAction("drop")), "rule", ())
    with pytest.raises(FieldError, match="broader than /24"):
        policy.admit(Rule("a", Match(src=(parse_prefix("10.0.0.0/23"),)), RuleAction("rate_limit", pps=10)),
                     "rule", ())
    policy.admit(Rule("a", Match(src=(parse_prefix("10.0.0.0/8"),)), RuleAction("allow")), "rule", ())
