"""``breakwater controller`` over each store: the daemon opens the configured
backend (``store = "sqlite"`` or ``"etcd://..."``), serves, writes through
it, and closes it (on etcd: its lease revoked, nothing left behind)."""

from __future__ import annotations

import grpc
import pytest

from breakwater.v1 import rule_pb2, rule_service_pb2, rule_service_pb2_grpc
from controller.addresses import parse_prefix
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import create_controller
from controller.rules.admission import AdmissionPolicy

from .conftest import Backend


def test_controller_serves_over_the_configured_store(backend: Backend) -> None:
    cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=backend.tmp_path, metrics=None,
                           store=backend.url, store_prefix=backend.prefix)
    with create_controller(cfg) as ctl, grpc.insecure_channel(ctl.address) as channel:
        stub = rule_service_pb2_grpc.RuleServiceStub(channel)
        rule = rule_pb2.Rule(match=rule_pb2.Match(src=["198.18.9.0/24"]),
                             action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))
        stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="c1", rule=rule), timeout=20)
        assert ctl.store.version == 1
    again = backend.open()
    assert again.version == 1 and [r.id for r in again.rules()] == ["c1"]
    assert [a.action for a in again.audit()] == ["create"]


def test_admission_guards_hold_on_every_store(backend: Backend) -> None:
    """The guards live in the servicer, above the store: the same refusals,
    and nothing written, on SQLite and on etcd."""
    cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=backend.tmp_path, metrics=None,
                           store=backend.url, store_prefix=backend.prefix,
                           admission=AdmissionPolicy(max_rules=1,
                                                     management=(parse_prefix("198.18.5.0/24"),)))
    with create_controller(cfg) as ctl, grpc.insecure_channel(ctl.address) as channel:
        stub = rule_service_pb2_grpc.RuleServiceStub(channel)
        drop = rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP)
        for rule_id, src, code in (("wide", "0.0.0.0/0", grpc.StatusCode.INVALID_ARGUMENT),
                                   ("mgmt", "198.18.5.9", grpc.StatusCode.INVALID_ARGUMENT),
                                   ("fleet-x", "198.18.9.0/24", grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateRule(rule_service_pb2.CreateRuleRequest(
                    rule_id=rule_id, rule=rule_pb2.Rule(match=rule_pb2.Match(src=[src]), action=drop)),
                    timeout=20)
            assert info.value.code() is code, rule_id
        ok = rule_pb2.Rule(match=rule_pb2.Match(src=["198.18.9.0/24"]), action=drop)
        stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="c1", rule=ok), timeout=20)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="c2", rule=ok), timeout=20)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ctl.store.version == 1
    again = backend.open()
    assert [r.id for r in again.rules()] == ["c1"] and [a.action for a in again.audit()] == ["create"]
