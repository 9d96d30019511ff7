"""controller.api.server: a real server on 127.0.0.1:0 answering health
checks, reflection and errors (controller.api.status's table) over a channel."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from breakwater.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    sync_service_pb2,
    sync_service_pb2_grpc,
)
from controller.api.server import Service, create_server
from controller.api.status import from_rpc_error, rpc_errors
from controller.errors import (
    BreakwaterError,
    FailedPreconditionError,
    FieldError,
    InputError,
    SetupError,
    UnavailableError,
)

from .test_status import TABLE, _same

RULES = rule_service_pb2.DESCRIPTOR.services_by_name["RuleService"]
EVENTS = event_service_pb2.DESCRIPTOR.services_by_name["EventService"]
SYNC = sync_service_pb2.DESCRIPTOR.services_by_name["SyncService"]
C = grpc.StatusCode


# --- a real server -------------------------------------------------------------------


class Rules(rule_service_pb2_grpc.RuleServiceServicer):
    """GetRule raises the TABLE error named by the rule id ("rules/not-found").
    The other methods are left to the base class (UNIMPLEMENTED), which the
    generated stubs call abstract: hence the ignores where it is made."""

    def GetRule(self, request: rule_service_pb2.GetRuleRequest, context: Any) -> rule_pb2.Rule:
        case = request.name.removeprefix("rules/").replace("-", " ")
        if case == "ok":
            return rule_pb2.Rule(name=request.name)
        if case == "self abort":
            context.abort(C.PERMISSION_DENIED, "operators only")
        raise TABLE[case][0]

    def DeleteRule(self, request: rule_service_pb2.DeleteRuleRequest, context: Any) -> empty_pb2.Empty:
        return empty_pb2.Empty()


class Events(event_service_pb2_grpc.EventServiceServicer):
    def WatchEvents(self, request: event_service_pb2.WatchEventsRequest,
                    context: Any) -> Iterator[event_pb2.Event]:
        yield event_pb2.Event(name="events/1", sequence=1)
        raise FailedPreconditionError("events after 1 were pruned")


class Sync(sync_service_pb2_grpc.SyncServiceServicer):
    def Sync(self, request_iterator: Iterator[sync_service_pb2.SyncRequest],
             context: Any) -> Iterator[sync_service_pb2.SyncResponse]:
        for req in request_iterator:
            if req.WhichOneof("message") != "register":
                raise FieldError("register", "the first message must be register")
            yield sync_service_pb2.SyncResponse(registered=sync_service_pb2.Registered(
                node=f"nodes/{req.register.node_id}"))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[grpc.Channel, health.HealthServicer, int]]:
    hs = health.HealthServicer()
    srv, port = create_server("127.0.0.1:0", [
        Service.of(RULES, rule_service_pb2_grpc.add_RuleServiceServicer_to_server, Rules()),  # type: ignore[abstract]
        Service.of(EVENTS, event_service_pb2_grpc.add_EventServiceServicer_to_server, Events()),  # type: ignore[abstract]
        Service.of(SYNC, sync_service_pb2_grpc.add_SyncServiceServicer_to_server, Sync()),
    ], health_servicer=hs, max_workers=4)
    assert port > 0
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, hs, port
    finally:
        channel.close()
        srv.stop(grace=None).wait(5)


def test_health_check(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    channel, hs, _ = server
    # what `grpcurl -plaintext HOST:PORT grpc.health.v1.Health/Check` calls (the
    # health stubs' HealthStub declares no methods, so call the method directly)
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "breakwater.v1.RuleService", "breakwater.v1.EventService", "breakwater.v1.SyncService"):
        assert check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == serving
    with pytest.raises(grpc.RpcError) as info:
        check(health_pb2.HealthCheckRequest(service="breakwater.v1.NoSuchService"), timeout=5)
    assert info.value.code() is C.NOT_FOUND
    hs.set("breakwater.v1.SyncService", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        status = check(health_pb2.HealthCheckRequest(service="breakwater.v1.SyncService"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        hs.set("breakwater.v1.SyncService", serving)


def _reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest
             ) -> reflection_pb2.ServerReflectionResponse:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # its stubs leave the method untyped
    responses: list[reflection_pb2.ServerReflectionResponse] = list(
        stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert len(responses) == 1
    return responses[0]


def test_reflection_lists_every_service(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    """What `grpcurl -plaintext HOST:PORT list` asks."""
    response = _reflect(server[0], reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert names == {"breakwater.v1.RuleService", "breakwater.v1.EventService", "breakwater.v1.SyncService",
                     "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_reflection_describes_a_service(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    """What `grpcurl describe breakwater.v1.RuleService` asks."""
    from google.protobuf import descriptor_pb2
    response = _reflect(server[0], reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="breakwater.v1.RuleService"))
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in response.file_descriptor_response.file_descriptor_proto]
    assert "breakwater/v1/rule_service.proto" in {f.name for f in files}


def _get(channel: grpc.Channel, rule_id: str) -> rule_pb2.Rule:
    stub = rule_service_pb2_grpc.RuleServiceStub(channel)
    return stub.GetRule(rule_service_pb2.GetRuleRequest(name=f"rules/{rule_id}"), timeout=5)


def test_a_call_that_succeeds(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    assert _get(server[0], "ok").name == "rules/ok"
    stub = rule_service_pb2_grpc.RuleServiceStub(server[0])
    assert stub.DeleteRule(rule_service_pb2.DeleteRuleRequest(name="rules/x"), timeout=5) == empty_pb2.Empty()


@pytest.mark.parametrize("case", TABLE, ids=str)
def test_errors_round_trip_over_a_channel(server: tuple[grpc.Channel, health.HealthServicer, int],
                                          case: str, caplog: pytest.LogCaptureFixture) -> None:
    _, code, want = TABLE[case]
    with caplog.at_level(logging.INFO, "breakwater.rpc"), pytest.raises(grpc.RpcError) as info:
        _get(server[0], case.replace(" ", "-"))
    assert info.value.code() is code
    _same(from_rpc_error(info.value), want)
    with pytest.raises(BreakwaterError) as converted, rpc_errors():
        _get(server[0], case.replace(" ", "-"))
    _same(converted.value, want)
    assert isinstance(converted.value.__cause__, grpc.RpcError)
    if code is C.INTERNAL:
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_field_violation_survives_the_wire(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _get(server[0], "field")
    assert isinstance(info.value, grpc.Call)
    status = rpc_status.from_call(info.value)
    assert status is not None and len(status.details) == 1


def test_servicer_abort_passes_through(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _get(server[0], "self-abort")
    assert info.value.code() is C.PERMISSION_DENIED
    assert info.value.details() == "operators only"


def test_unimplemented_method(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    stub = rule_service_pb2_grpc.RuleServiceStub(server[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.ListRules(rule_service_pb2.ListRulesRequest(), timeout=5)
    assert info.value.code() is C.UNIMPLEMENTED


def test_error_in_a_response_stream(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    stub = event_service_pb2_grpc.EventServiceStub(server[0])
    got = []
    with pytest.raises(FailedPreconditionError, match="pruned"), rpc_errors():
        for event in stub.WatchEvents(event_service_pb2.WatchEventsRequest(), timeout=5):
            got.append(event.sequence)
    assert got == [1]


def test_bidi_stream_and_its_errors(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    stub = sync_service_pb2_grpc.SyncServiceStub(server[0])
    register = sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(node_id="edge-1"))
    [answer] = list(stub.Sync(iter([register]), timeout=5))
    assert answer.registered.node == "nodes/edge-1"
    ack = sync_service_pb2.SyncRequest(ack=sync_service_pb2.Ack(version=3))
    with pytest.raises(FieldError) as info, rpc_errors():
        list(stub.Sync(iter([ack]), timeout=5))
    assert info.value.path == "register"


def test_unreachable_server_is_unavailable() -> None:
    srv, port = create_server("127.0.0.1:0", [])
    srv.start()
    srv.stop(grace=None).wait(5)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, \
            pytest.raises(UnavailableError) as info, rpc_errors():
        _get(channel, "ok")
    assert info.value.code == "UNAVAILABLE"


def test_busy_port_is_refused(server: tuple[grpc.Channel, health.HealthServicer, int]) -> None:
    with pytest.raises(SetupError, match="cannot listen"):
        create_server(f"127.0.0.1:{server[2]}", [])


def test_a_service_given_twice_is_refused() -> None:
    service = Service.of(RULES, rule_service_pb2_grpc.add_RuleServiceServicer_to_server,
                         Rules())  # type: ignore[abstract]
    with pytest.raises(InputError, match="twice"):
        create_server("127.0.0.1:0", [service, service])


@pytest.mark.parametrize(("path", "kind"), [("/breakwater.v1.RuleService/GetRule", "unary_unary"),
                                            ("/breakwater.v1.EventService/WatchEvents", "unary_stream"),
                                            ("/breakwater.v1.SyncService/Sync", "stream_stream")])
def test_bytes_that_are_no_message_are_invalid_argument(
        server: tuple[grpc.Channel, health.HealthServicer, int], path: str, kind: str) -> None:
    """As on the controller's aio server (tests/unit/test_fuzz_api.py): a
    request that does not parse is INVALID_ARGUMENT naming ``request``, not
    INTERNAL ("Exception deserializing request") on this thread-pool server."""
    raw = b"\x0a\xff\xff\xff\x0f\x78"  # a length that runs past the end
    call: Any = getattr(server[0], kind)(path, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        result = call(iter([raw]) if kind.startswith("stream") else raw, timeout=5)
        if kind.endswith("stream"):
            list(result)
    assert info.value.code() is C.INVALID_ARGUMENT, info.value
    assert (info.value.details() or "").startswith("request: not a valid")
