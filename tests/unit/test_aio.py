"""controller.api.aio.create_aio_server: the same error mapping, health and
reflection as create_server, for sync servicers (run on the migration pool)
and coroutine ones alike, over a real channel to 127.0.0.1:0; and
controller.api.aiothread, the same server driven from a sync program."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from breakwater.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    sync_service_pb2,
    sync_service_pb2_grpc,
)
from controller.api.aio import create_aio_server
from controller.api.server import Service
from controller.api.status import from_rpc_error
from controller.errors import FailedPreconditionError, FieldError, InputError, SetupError

from .aioserver import LoopThread
from .test_server import EVENTS, RULES, SYNC, Events, Rules, Sync
from .test_status import TABLE, _same

C = grpc.StatusCode


def _new(cls: type) -> Any:
    """An instance of a servicer that leaves some methods to the generated
    base (UNIMPLEMENTED), which the stubs call abstract."""
    return cls()


class AsyncRules(rule_service_pb2_grpc.RuleServiceServicer):
    """Coroutine methods: GetRule raises the TABLE error its id names."""

    async def GetRule(self, request: rule_service_pb2.GetRuleRequest, context: Any) -> rule_pb2.Rule:
        case = request.name.removeprefix("rules/").replace("-", " ")
        if case == "ok":
            return rule_pb2.Rule(name=request.name)
        if case == "self abort":
            await context.abort(C.PERMISSION_DENIED, "operators only")
        raise TABLE[case][0]


class AsyncSync(sync_service_pb2_grpc.SyncServiceServicer):
    async def Sync(self, request_iterator: AsyncIterator[sync_service_pb2.SyncRequest],
                   context: Any) -> AsyncIterator[sync_service_pb2.SyncResponse]:
        async for req in request_iterator:
            if req.WhichOneof("message") != "register":
                raise FieldError("register", "the first message must be register")
            yield sync_service_pb2.SyncResponse(registered=sync_service_pb2.Registered(
                node=f"nodes/{req.register.node_id}"))


class Watch(event_service_pb2_grpc.EventServiceServicer):
    """A sync generator that streams until the client goes away (is_active)."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    def WatchEvents(self, request: event_service_pb2.WatchEventsRequest, context: Any) -> Iterator[Any]:
        from breakwater.v1 import event_pb2
        seq = 0
        try:
            while context.is_active():
                seq += 1
                yield event_pb2.Event(sequence=seq)
                if seq > 10_000:
                    return
        finally:
            self.ended.set()


@pytest.fixture(scope="module", params=["sync", "async"])
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    rules: Any = _new(Rules if request.param == "sync" else AsyncRules)
    sync: Any = Sync() if request.param == "sync" else AsyncSync()
    with LoopThread() as lt:
        port = lt.serve([
            Service.of(RULES, rule_service_pb2_grpc.add_RuleServiceServicer_to_server, rules),
            Service.of(EVENTS, event_service_pb2_grpc.add_EventServiceServicer_to_server, _new(Events)),
            Service.of(SYNC, sync_service_pb2_grpc.add_SyncServiceServicer_to_server, sync),
        ], migration_workers=4)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch


@pytest.mark.parametrize("case", TABLE, ids=str)
def test_errors_map_as_on_the_sync_server(channel: grpc.Channel, case: str) -> None:
    stub = rule_service_pb2_grpc.RuleServiceStub(channel)
    _, code, want = TABLE[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRule(rule_service_pb2.GetRuleRequest(name="rules/" + case.replace(" ", "-")), timeout=5)
    assert info.value.code() is code
    _same(from_rpc_error(info.value), want)


def test_ok_and_own_abort(channel: grpc.Channel) -> None:
    stub = rule_service_pb2_grpc.RuleServiceStub(channel)
    assert stub.GetRule(rule_service_pb2.GetRuleRequest(name="rules/ok"), timeout=5).name == "rules/ok"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRule(rule_service_pb2.GetRuleRequest(name="rules/self-abort"), timeout=5)
    assert info.value.code() is C.PERMISSION_DENIED
    assert info.value.details() == "operators only"


def test_unimplemented(channel: grpc.Channel) -> None:
    stub = rule_service_pb2_grpc.RuleServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListRules(rule_service_pb2.ListRulesRequest(), timeout=5)
    assert info.value.code() is C.UNIMPLEMENTED


def test_server_stream_error_after_items(channel: grpc.Channel) -> None:
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for e in stub.WatchEvents(event_service_pb2.WatchEventsRequest(), timeout=5):
            got.append(e.sequence)
    assert got == [1]
    _same(from_rpc_error(info.value), FailedPreconditionError("events after 1 were pruned"))


def test_bidi_stream_and_field_error(channel: grpc.Channel) -> None:
    stub = sync_service_pb2_grpc.SyncServiceStub(channel)
    reg = sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(node_id="edge-1"))
    out = list(stub.Sync(iter([reg, reg]), timeout=5))
    assert [r.registered.node for r in out] == ["nodes/edge-1", "nodes/edge-1"]
    bad = sync_service_pb2.SyncRequest(ack=sync_service_pb2.Ack(version=1))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Sync(iter([reg, bad]), timeout=5))
    _same(from_rpc_error(info.value), FieldError("register", "the first message must be register"))


def test_health_and_reflection(channel: grpc.Channel) -> None:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    for name in ("", "breakwater.v1.RuleService", "breakwater.v1.SyncService"):
        got = check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert got.status == health_pb2.HealthCheckResponse.SERVING
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # its stubs leave the method untyped
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"breakwater.v1.RuleService", "breakwater.v1.EventService", "breakwater.v1.SyncService",
            "grpc.health.v1.Health"} <= names


def test_sync_generator_sees_the_client_leave() -> None:
    """A sync server stream stops (its finally runs) once the client cancels."""
    watch: Watch = _new(Watch)
    with LoopThread() as lt:
        port = lt.serve([Service.of(EVENTS, event_service_pb2_grpc.add_EventServiceServicer_to_server,
                                    watch)])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = event_service_pb2_grpc.EventServiceStub(ch).WatchEvents(
                event_service_pb2.WatchEventsRequest(), timeout=5)
            assert next(call).sequence == 1
            call.cancel()
            assert watch.ended.wait(5)


class SlowWatch(event_service_pb2_grpc.EventServiceServicer):
    """A sync generator whose second step is still running on the pool when
    the client cancels."""

    def __init__(self) -> None:
        self.in_step = threading.Event()
        self.ended = threading.Event()
        self.steps_after_cancel = 0

    def WatchEvents(self, request: event_service_pb2.WatchEventsRequest, context: Any) -> Iterator[Any]:
        from breakwater.v1 import event_pb2
        try:
            yield event_pb2.Event(sequence=1)
            self.in_step.set()
            while context.is_active():  # the step ends once the call is cancelled
                time.sleep(0.01)
            self.steps_after_cancel += 1
            yield event_pb2.Event(sequence=2)
        finally:
            self.ended.set()


def test_a_cancel_during_a_sync_step_closes_the_generator_after_the_step(
        caplog: pytest.LogCaptureFixture) -> None:
    """Cancelled while the generator runs a step on the pool: the server waits
    for the step, then closes the generator (its finally runs), with no
    "generator already executing" error."""
    watch: SlowWatch = _new(SlowWatch)
    with LoopThread() as lt:
        port = lt.serve([Service.of(EVENTS, event_service_pb2_grpc.add_EventServiceServicer_to_server,
                                    watch)])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = event_service_pb2_grpc.EventServiceStub(ch).WatchEvents(
                event_service_pb2.WatchEventsRequest(), timeout=5)
            assert next(call).sequence == 1
            assert watch.in_step.wait(5)
            call.cancel()
            assert watch.ended.wait(5)
    assert watch.steps_after_cancel == 1
    assert "already executing" not in caplog.text


def test_busy_port_and_twice_given_service() -> None:
    with LoopThread() as lt:
        port = lt.serve([])
        with pytest.raises(SetupError):
            lt.run(create_aio_server(f"127.0.0.1:{port}", []))
        svc = Service.of(RULES, rule_service_pb2_grpc.add_RuleServiceServicer_to_server, _new(Rules))
        with pytest.raises(InputError):
            lt.run(create_aio_server("127.0.0.1:0", [svc, svc]))


# --- the threaded facade, sync interceptors, the sync health servicer ---------------------


class Counting(grpc.ServerInterceptor):
    """Counts calls by method and outcome, the way a metrics interceptor does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.items: list[str] = []

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        name = details.method.rsplit("/", 1)[1]
        if handler.unary_unary is not None:
            fn = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                try:
                    out = fn(request, context)
                except Exception as exc:
                    self.calls.append((name, type(exc).__name__))
                    raise
                self.calls.append((name, "ok"))
                return out

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_stream is not None:
            sfn = handler.stream_stream

            def stream(request: Any, context: Any) -> Iterator[Any]:
                outcome = "ok"
                try:
                    for item in sfn(request, context):
                        self.items.append(item.WhichOneof("message"))
                        yield item
                except GeneratorExit:
                    outcome = "cancelled"
                    raise
                except Exception as exc:
                    outcome = type(exc).__name__
                    raise
                finally:
                    self.calls.append((name, outcome))

            return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                         handler.response_serializer)
        return handler


@pytest.mark.parametrize("style", ["sync", "async"])
def test_threaded_server_with_sync_interceptor_and_health(style: str) -> None:
    from grpc_health.v1 import health

    from controller.api.aiothread import create_threaded_aio_server

    counting = Counting()
    hs = health.HealthServicer()
    rules: Any = _new(Rules if style == "sync" else AsyncRules)
    sync: Any = Sync() if style == "sync" else AsyncSync()
    server, port = create_threaded_aio_server("127.0.0.1:0", [
        Service.of(RULES, rule_service_pb2_grpc.add_RuleServiceServicer_to_server, rules),
        Service.of(SYNC, sync_service_pb2_grpc.add_SyncServiceServicer_to_server, sync),
    ], health_servicer=hs, interceptors=[counting], max_workers=4)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = rule_service_pb2_grpc.RuleServiceStub(ch)
            stub.GetRule(rule_service_pb2.GetRuleRequest(name="rules/ok"), timeout=5)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetRule(rule_service_pb2.GetRuleRequest(name="rules/field"), timeout=5)
            _same(from_rpc_error(info.value), TABLE["field"][2])
            reg = sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(node_id="edge-1"))
            assert len(list(sync_service_pb2_grpc.SyncServiceStub(ch).Sync(iter([reg, reg]), timeout=5))) == 2
            bad = sync_service_pb2.SyncRequest(ack=sync_service_pb2.Ack(version=1))
            with pytest.raises(grpc.RpcError):
                list(sync_service_pb2_grpc.SyncServiceStub(ch).Sync(iter([bad]), timeout=5))
            check = ch.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)
            assert check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as missing:
                check(health_pb2.HealthCheckRequest(service="breakwater.v1.Nothing"), timeout=5)
            assert missing.value.code() is C.NOT_FOUND
            hs.enter_graceful_shutdown()
            assert check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        assert server.stop(None).wait(10)
    assert server.wait_for_termination(0)
    assert [c for c in counting.calls if c[0] == "GetRule"] == [("GetRule", "ok"), ("GetRule", "FieldError")]
    assert [c for c in counting.calls if c[0] == "Sync"] == [("Sync", "ok"), ("Sync", "FieldError")]
    assert counting.items == ["registered", "registered"]
