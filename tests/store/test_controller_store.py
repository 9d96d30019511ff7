"""``breakwater controller`` over each store: the daemon opens the configured
backend (``store = "sqlite"`` or ``"etcd://..."``), serves, writes through
it, and closes it (on etcd: its lease revoked, nothing left behind)."""

from __future__ import annotations

import grpc

from breakwater.v1 import rule_pb2, rule_service_pb2, rule_service_pb2_grpc
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import create_controller

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
