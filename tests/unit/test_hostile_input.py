"""Hostile input over a real channel gets INVALID_ARGUMENT naming what is
wrong, never INTERNAL or UNKNOWN, on both server kinds (the controller's
grpc.aio server with the sync hub, and the thread-pool server an agent
serves its local API on): Durations with out-of-range or mismatched nanos,
requests that do not parse (invalid UTF-8 in a string, a corrupt wire
format; also inside the Sync stream), a 1 MiB etag, filter, page token or
name (whose refusal must still fit in a trailer), overlong ids. Nothing is
stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from breakwater.v1 import rule_pb2, telemetry_service_pb2
from breakwater.v1 import rule_service_pb2 as rs
from controller.api.rule_service import RuleServicer
from controller.api.server import create_server
from controller.api.services import api_services
from controller.api.status import MAX_STATUS_TEXT
from controller.fleet.backend import ControllerBackend
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import create_controller
from controller.fleet.eventlog import EventLog
from controller.fleet.store import FleetStore

TIMEOUT = 10
INVALID = grpc.StatusCode.INVALID_ARGUMENT
RAW = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}


def _rule(**fields: object) -> rule_pb2.Rule:
    r = rule_pb2.Rule(**fields)  # type: ignore[arg-type]
    r.match.src.append("198.51.100.0/24")
    r.action.kind = rule_pb2.ACTION_KIND_DROP
    return r


@pytest.fixture(params=["aio", "threads"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FleetStore]]:
    """``(address, store)`` of a controller (aio, with sync) or a thread-pool RuleService."""
    if request.param == "aio":
        ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None))
        ctl.start()
        try:
            assert isinstance(ctl.store, FleetStore)
            yield ctl.address, ctl.store
        finally:
            ctl.stop(0)
        return
    store = FleetStore.open(tmp_path)
    srv, port = create_server("127.0.0.1:0",
                              api_services(rules=RuleServicer(ControllerBackend(store, EventLog(store)))),
                              max_workers=4)
    srv.start()
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        srv.stop(0)
        store.close()


def _fails(channel: grpc.Channel, method: str, request: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method, **RAW)(request, timeout=TIMEOUT)
    return info.value


def test_requests_that_do_not_parse(server: tuple[str, FleetStore]) -> None:
    address, store = server
    rule = _rule().SerializeToString()
    bad_utf8 = b"\x0a\x03\xff\xfeA" + b"\x12" + bytes([len(rule)]) + rule  # rule_id: 3 bytes, not UTF-8
    with grpc.insecure_channel(address) as ch:
        for method, body in (("/breakwater.v1.RuleService/CreateRule", bad_utf8),
                             ("/breakwater.v1.RuleService/GetRule", b"\x0a\x02\xc3\x28"),
                             ("/breakwater.v1.RuleService/ListRules", b"\xff\xff\xff")):
            err = _fails(ch, method, body)
            assert err.code() is INVALID, (method, err)
            assert "request: not a valid breakwater.v1." in (err.details() or "")
    assert store.version == 0


def test_durations_with_bad_nanos(server: tuple[str, FleetStore]) -> None:
    address, store = server
    cases = [((100, -5), "differ in sign"), ((-1, 5), "differ in sign"),
             ((100, 2_000_000_000), "nanos 2000000000 is out of range"),
             ((2**62, 0), "out of range")]
    with grpc.insecure_channel(address) as ch:
        for (seconds, nanos), words in cases:
            rule = _rule()
            rule.ttl.seconds, rule.ttl.nanos = seconds, nanos
            err = _fails(ch, "/breakwater.v1.RuleService/CreateRule",
                         rs.CreateRuleRequest(rule_id="a", rule=rule).SerializeToString())
            assert err.code() is INVALID and "rule.ttl" in (err.details() or ""), err
            assert words in (err.details() or ""), err
        rule = _rule()
        rule.expire_time.seconds, rule.expire_time.nanos = 4_102_444_800, -1
        err = _fails(ch, "/breakwater.v1.RuleService/CreateRule",
                     rs.CreateRuleRequest(rule_id="a", rule=rule).SerializeToString())
        assert err.code() is INVALID and "rule.expire_time" in (err.details() or "")
    assert store.version == 0


def test_huge_fields_are_refused_in_a_trailer_that_fits(server: tuple[str, FleetStore]) -> None:
    address, store = server
    huge = "x" * (1 << 20)
    with grpc.insecure_channel(address) as ch:
        ch.unary_unary("/breakwater.v1.RuleService/CreateRule", **RAW)(
            rs.CreateRuleRequest(rule_id="e", rule=_rule()).SerializeToString(), timeout=TIMEOUT)
        version = store.version
        for request, method, field in (
            (rs.DeleteRuleRequest(name="rules/e", etag=huge), "DeleteRule", "etag"),
            (rs.UpdateRuleRequest(rule=rule_pb2.Rule(name="rules/e", etag=huge, comment="c")), "UpdateRule",
             "rule.etag"),
            (rs.ListRulesRequest(filter=huge), "ListRules", "filter"),
            (rs.ListRulesRequest(filter=" AND ".join(["priority > 1"] * 17)), "ListRules", "filter"),
            (rs.ListRulesRequest(page_token=huge), "ListRules", "page_token"),
            (rs.GetRuleRequest(name="rules/" + huge), "GetRule", "name"),
            (rs.CreateRuleRequest(rule_id=huge, rule=_rule()), "CreateRule", "rule_id"),
        ):
            err = _fails(ch, f"/breakwater.v1.RuleService/{method}", request.SerializeToString())
            assert err.code() is INVALID, (method, field, err.code(), (err.details() or "")[:200])
            details = err.details() or ""
            assert details.startswith(f"{field}: ") and len(details) < MAX_STATUS_TEXT + 100, details[:200]
    assert store.version == version


def test_controller_only_services(tmp_path: Path) -> None:
    """The Sync stream and TelemetryService on the controller's aio server."""
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None))
    ctl.start()
    try:
        with grpc.insecure_channel(ctl.address) as ch:
            sync = ch.stream_stream("/breakwater.v1.SyncService/Sync", **RAW)
            with pytest.raises(grpc.RpcError) as info:
                list(sync(iter([b"\x0a\x02\xc3\x28"]), timeout=TIMEOUT))
            assert info.value.code() is INVALID, info.value
            stats = telemetry_service_pb2.GetStatsRequest()
            stats.window.seconds, stats.window.nanos = 5, -3
            err = _fails(ch, "/breakwater.v1.TelemetryService/GetStats", stats.SerializeToString())
            assert err.code() is INVALID and "window" in (err.details() or ""), err
    finally:
        ctl.stop(0)
