"""Property-based fuzzing of every RPC the controller serves, over a real
channel: a controller (FleetStore in a real SQLite file, the SOC services,
SyncService and TelemetryService, health, reflection) on 127.0.0.1:0.

For every method of every service, taken from the descriptors (so a new
RPC is fuzzed without touching this file), hypothesis sends requests built
from the request type's descriptor (:func:`tests.fuzzing.messages`: empty
and huge strings, control characters, integer limits, unknown enum
numbers, NaN, nested messages, long repeated fields), well-shaped rule
writes with edge values, and serialized bytes that are not a message at
all (cut, flipped, random). The properties:

- the call ends ``OK`` or with a precise status (:data:`PRECISE`), never
  ``INTERNAL``/``UNKNOWN`` and never a traceback in the details; a unary
  call never hangs (deadline); a stream may run to its deadline;
- a call that fails leaves the store as it was: rule version, the rules
  themselves (etags included), the event log and the audit log;
- the server logs no error (no traceback in its log either);
- the server still serves afterwards (health answers SERVING);
- over mutual TLS, as each role (viewer, operator, admin, agent): a role
  below a method's is PERMISSION_DENIED whatever the request holds, and
  changes nothing.

``BREAKWATER_FUZZ_SCALE`` multiplies the example counts (``make fuzz``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from breakwater.v1 import (
    event_pb2,
    event_service_pb2,
    node_service_pb2,
    rule_pb2,
    rule_service_pb2,
    sync_service_pb2,
    telemetry_pb2,
    telemetry_service_pb2,
    telemetry_service_pb2_grpc,
)
from controller import pki
from controller.api.auth import METHOD_ROLES, Principal, TlsFiles, channel_credentials
from controller.api.telemetry import FleetTelemetry
from controller.api.telemetry_service import TelemetryServicer
from controller.errors import FieldError, NotFoundError
from controller.fleet.config import ControllerConfig, parse_config
from controller.fleet.daemon import Controller, create_controller

from ..fuzzing import examples, messages, text, wire_bytes

C = grpc.StatusCode
PRECISE = frozenset({C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION,
                     C.PERMISSION_DENIED, C.ABORTED, C.RESOURCE_EXHAUSTED, C.OUT_OF_RANGE,
                     C.UNIMPLEMENTED})
"""The statuses a request may end with; INTERNAL, UNKNOWN, UNAVAILABLE... are bugs."""
UNARY_TIMEOUT = 10.0
STREAM_TIMEOUT = 0.3
"""A stream that is still open after this is fine (WatchEvents waits for events)."""

SERVICES: list[Any] = [  # ServiceDescriptors (upb's and the stubs' types differ)
    *(f.services_by_name[name] for f, name in (
        (rule_service_pb2.DESCRIPTOR, "RuleService"), (node_service_pb2.DESCRIPTOR, "NodeService"),
        (event_service_pb2.DESCRIPTOR, "EventService"),
        (telemetry_service_pb2.DESCRIPTOR, "TelemetryService"),
        (sync_service_pb2.DESCRIPTOR, "SyncService"))),
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
WRITES = frozenset(p for p in METHODS if p.rsplit("/", 1)[1].startswith(("Create", "BatchCreate", "Update",
                                                                        "Delete")))
# Examples per method in CI: streams cost a deadline each, unary calls a round trip.
BUDGET = {"/grpc.health.v1.Health/Watch": 15, "/breakwater.v1.EventService/WatchEvents": 40,
          "/breakwater.v1.SyncService/Sync": 80}
UNARY_BUDGET = 75
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


class ErrorRecords(logging.Handler):
    """The ERROR records Breakwater's loggers write (a traceback in the server's log)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" if r.exc_info else r.getMessage()
               for r in self.records]
        self.records.clear()
        return out


@contextlib.contextmanager
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger("breakwater")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class Server:
    ctl: Controller
    channel: grpc.Channel
    errors: ErrorRecords

    def state(self) -> tuple[Any, ...]:
        """Everything a refused request must leave alone."""
        store = self.ctl.store
        rules = sorted((r.rule.id, r.etag) for r in store.rules(include_expired=True))
        return (store.version, tuple(rules), self.ctl.events.last_sequence,
                len(store.audit(limit=10**6)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state_dir: Path = tmp_path_factory.mktemp("fuzz-ctl")
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=state_dir, metrics=None,
                                             max_workers=16))
    ctl.start()
    channel = grpc.insecure_channel(ctl.address)
    try:
        with error_records() as errors:
            yield Server(ctl, channel, errors)
    finally:
        channel.close()
        ctl.stop(0)


# -- requests --------------------------------------------------------------------------------------
PREFIXES = st.sampled_from(["198.18.0.1", "198.18.0.0/24", "198.18.0.0/15", "0.0.0.0/0", "::/0",
                            "2001:db8::/32", "2001:db8::1", "198.18.0.0/33", "1.2.3.4/8", "", "x",
                            "::ffff:198.18.0.1", "fe80::1%eth0", "198.18.0.1/32", "10.0.0.0/8"])
RULE_IDS = st.one_of(st.sampled_from(["r1", "r2", "dns-amp", "auto-x", "fleet-src-x", "", "A", "a" * 300,
                                      "r/1", "r\u202e1", "r\x001"]), text)


@st.composite
def rules(draw: st.DrawFn) -> rule_pb2.Rule:
    """A rule shaped like a real one, with edge values in its fields."""
    r = rule_pb2.Rule()
    r.match.src.extend(draw(st.lists(PREFIXES, max_size=4)))
    if draw(st.booleans()):
        r.match.dst.extend(draw(st.lists(PREFIXES, max_size=2)))
    if draw(st.booleans()):
        r.match.protocol = draw(st.sampled_from([0, 1, 6, 17, 47, 58, 255, 256, 2**32 - 1]))
    kinds: list[Any] = [v.number for v in rule_pb2.ActionKind.DESCRIPTOR.values]
    r.action.kind = draw(st.sampled_from([*kinds, 99]))
    if draw(st.booleans()):
        r.priority = draw(st.sampled_from([0, 1, 100, 2**31 - 1, 2**32 - 1]))
    if draw(st.booleans()):
        r.ttl.seconds = draw(st.sampled_from([0, 1, 60, -1, 10**11, 315_576_000_001]))
        r.ttl.nanos = draw(st.sampled_from([0, 1, -1, 999_999_999, 10**9]))
    return r


def _rule_requests(path: str) -> st.SearchStrategy[bytes]:
    name = path.rsplit("/", 1)[1]
    if name == "CreateRule":
        return st.builds(lambda i, r: rule_service_pb2.CreateRuleRequest(
            rule_id=i, rule=r).SerializeToString(), RULE_IDS, rules())
    if name == "BatchCreateRules":
        one = st.builds(lambda i, r: rule_service_pb2.CreateRuleRequest(rule_id=i, rule=r), RULE_IDS, rules())
        return st.builds(lambda rs: rule_service_pb2.BatchCreateRulesRequest(requests=rs).SerializeToString(),
                         st.lists(one, max_size=4))
    if name in ("DeleteRule", "GetRule"):
        cls = rule_service_pb2.DeleteRuleRequest if name == "DeleteRule" else rule_service_pb2.GetRuleRequest
        return st.builds(lambda n: cls(name=n).SerializeToString(),
                         st.one_of(RULE_IDS, RULE_IDS.map(lambda i: f"rules/{i}")))
    return st.nothing()


def requests(path: str) -> st.SearchStrategy[bytes]:
    method: descriptor.MethodDescriptor = METHODS[path]
    typed = messages(method.input_type).map(lambda m: m.SerializeToString())
    return st.one_of(typed, typed, _rule_requests(path), wire_bytes(typed))


def sync_streams() -> st.SearchStrategy[list[bytes]]:
    """A stream that registers properly (so the rest is read), then random messages."""
    register = st.builds(lambda node, version: sync_service_pb2.SyncRequest(
        register=sync_service_pb2.Register(node_id=node, agent_version="fuzz", resume_version=version)
    ).SerializeToString(),
        st.sampled_from(["edge-1", "edge-2", "edge-3"]), st.sampled_from([0, 1, 2**64 - 1]))
    rest = st.lists(messages(sync_service_pb2.SyncRequest.DESCRIPTOR).map(lambda m: m.SerializeToString()),
                    min_size=1, max_size=3)
    return st.builds(lambda first, more: [first, *more], register, rest)


# -- calling ---------------------------------------------------------------------------------------
def call(channel: grpc.Channel, path: str, chunks: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send ``chunks`` (one for a unary request) as raw bytes; the status and details it ends with."""
    method = METHODS[path]
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    try:
        if method.server_streaming:
            if method.client_streaming:
                it = channel.stream_stream(path, **raw)(iter(chunks), timeout=STREAM_TIMEOUT)
            else:
                it = channel.unary_stream(path, **raw)(chunks[0], timeout=STREAM_TIMEOUT)
            for _ in it:
                pass
        elif method.client_streaming:
            channel.stream_unary(path, **raw)(iter(chunks), timeout=UNARY_TIMEOUT)
        else:
            channel.unary_unary(path, **raw)(chunks[0], timeout=UNARY_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def check(server: Server, path: str, chunks: list[bytes],
          channel: grpc.Channel | None = None) -> grpc.StatusCode:
    """One call's properties (on ``channel``, else the server's own); its status."""
    before = server.state()
    code, details = call(channel or server.channel, path, chunks)
    streaming = METHODS[path].server_streaming
    ok = code in PRECISE or (streaming and code is C.DEADLINE_EXCEEDED)
    shown = [c[:200].hex() for c in chunks]
    assert ok, f"{path} answered {code.name}: {details[:500]!r}; request {shown}"
    assert "Traceback" not in details, f"{path}: a traceback reached the client: {details[:500]!r}"
    logged = server.errors.take()
    assert not logged, f"{path} answered {code.name} but the server logged errors: {logged}; request {shown}"
    if code is not C.OK and (path in WRITES or not streaming):
        after = server.state()
        assert after == before, f"{path} failed with {code.name} ({details[:200]!r}) but changed the store"
    return code


@pytest.mark.parametrize("path", sorted(METHODS))
def test_every_rpc_answers_precisely(server: Server, path: str) -> None:
    method = METHODS[path]
    n = BUDGET.get(path, UNARY_BUDGET)
    if method.client_streaming:
        strategy: st.SearchStrategy[list[bytes]] = st.lists(requests(path), min_size=1, max_size=3)
        if path.endswith("/Sync"):
            strategy = st.one_of(strategy, sync_streams())
    else:
        strategy = requests(path).map(lambda b: [b])

    @settings(max_examples=examples(n))
    @given(chunks=strategy)
    def run(chunks: list[bytes]) -> None:
        check(server, path, chunks)

    run()
    time.sleep(0.2)  # what a pool thread still had in hand (events being stored)
    assert not server.errors.take(), "the server logged errors"
    stub: Any = health_pb2_grpc.HealthStub(server.channel)
    health = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- every role, over mutual TLS ---------------------------------------------------------------------
CALLERS = {"viewer": "viewer", "operator": "operator", "admin": "admin", "agent": "edge-1"}
"""Role -> the certificate that carries it."""


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, grpc.Channel]]]:
    """A controller on mutual TLS and a channel per role."""
    root = tmp_path_factory.mktemp("fuzz-pki")
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "tls", "controller", "ctl")
    for role in pki.ROLES:
        pki.issue(root / "ca", root / "tls", "operator", role, role=role)
    pki.issue(root / "ca", root / "tls", "node", "edge-1")

    def tls(name: str) -> TlsFiles:
        return TlsFiles(root / "tls" / f"{name}.crt", root / "tls" / f"{name}.key", root / "tls" / "ca.crt")

    ctl_tls = tls("ctl")
    cfg = parse_config({"listen": "127.0.0.1:0", "state_dir": str(tmp_path_factory.mktemp("fuzz-tls")),
                        "metrics": "", "tls_cert": str(ctl_tls.cert), "tls_key": str(ctl_tls.key),
                        "tls_ca": str(ctl_tls.ca)})
    ctl = create_controller(cfg)
    ctl.start()
    channels = {role: grpc.secure_channel(ctl.address, channel_credentials(tls(name)))
                for role, name in CALLERS.items()}
    try:
        with error_records() as errors:
            yield Server(ctl, channels["admin"], errors), channels
    finally:
        for channel in channels.values():
            channel.close()
        ctl.stop(0)


UNARY_PATHS = sorted(p for p, m in METHODS.items() if not m.server_streaming)


@st.composite
def role_calls(draw: st.DrawFn) -> tuple[str, str, list[bytes]]:
    path = draw(st.sampled_from(UNARY_PATHS))
    return draw(st.sampled_from(sorted(CALLERS))), path, [draw(requests(path))]


def test_every_role_gets_its_methods_and_only_those(secure: tuple[Server, dict[str, grpc.Channel]]) -> None:
    """Random requests to every unary method as each role: a role below the
    method's is PERMISSION_DENIED whatever the request holds, with nothing
    changed; a role that may call it gets the properties above."""
    server, channels = secure

    @settings(max_examples=examples(200))
    @given(call_=role_calls())
    def run(call_: tuple[str, str, list[bytes]]) -> None:
        role, path, chunks = call_
        code = check(server, path, chunks, channels[role])
        if not Principal("p", role).may(METHOD_ROLES[path]):
            assert code is C.PERMISSION_DENIED, f"{path} as {role} answered {code.name}"

    run()


# -- what the nodes send: telemetry -----------------------------------------------------------------
@st.composite
def node_summaries(draw: st.DrawFn) -> list[tuple[str, telemetry_pb2.TelemetrySummary]]:
    summary = messages(telemetry_pb2.TelemetrySummary.DESCRIPTOR)
    return draw(st.lists(st.tuples(st.sampled_from(["edge-1", "edge-2"]), summary), min_size=1, max_size=2))


@settings(max_examples=examples(60), phases=NO_SHRINK)  # shrinking summaries this big takes minutes
@given(sent=node_summaries(), kind=st.sampled_from(list(telemetry_service_pb2.TalkerKind.values())),
       order=st.sampled_from(list(telemetry_service_pb2.TalkerOrder.values())))
def test_any_telemetry_a_node_sends_is_folded_and_read(
        sent: list[tuple[str, telemetry_pb2.TelemetrySummary]], kind: Any, order: Any) -> None:
    """Summaries built from the descriptor (counters at the uint64 limit, any
    times, addresses, reasons, rule ids) as nodes send them on Sync: the
    controller's FleetTelemetry folds them, and GetStats and ListTopTalkers
    (the servicer itself, without a channel: hundreds of examples a second)
    answer or refuse precisely, never another exception."""
    now = 1_700_000_000.0
    telemetry = FleetTelemetry(clock=lambda: now)
    servicer = TelemetryServicer(telemetry, clock=lambda: now)
    for node, summary in sent:
        telemetry.offer(node, summary, now=now)
    telemetry.fold(now)
    context: Any = None
    for node in ("", "nodes/edge-1"):
        with contextlib.suppress(FieldError, NotFoundError):
            servicer.GetStats(telemetry_service_pb2.GetStatsRequest(node=node), context)
        with contextlib.suppress(FieldError, NotFoundError):
            servicer.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(
                parent=node, kind=kind, order_by=order, page_size=1000), context)


# -- what the fuzzing found (regressions) ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/breakwater.v1.RuleService/CreateRule",
                                  "/breakwater.v1.EventService/WatchEvents",
                                  "/breakwater.v1.SyncService/Sync",
                                  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                  "/grpc.health.v1.Health/Check"])
def test_bytes_that_are_no_message_are_invalid_argument(server: Server, path: str) -> None:
    """Found by the fuzzing: grpc answered UNKNOWN with the parser's text (unary requests,
    reflection) or INTERNAL (a corrupt message read from the Sync stream)."""
    before = server.state()
    code, details = call(server.channel, path, [b"\x0a\xff\xff\xff\x0f\x78"])
    assert code is C.INVALID_ARGUMENT, (code, details)
    assert details.startswith("request: not a valid") and "Unexpected" not in details
    assert server.state() == before


def test_a_ttl_with_negative_nanos_is_invalid_argument(server: Server) -> None:
    """Found by the fuzzing: a Duration of 1 s and -1 ns (signs that disagree) made
    the refusal's own message raise (Duration.ToJsonString), and the call INTERNAL."""
    rule = rule_pb2.Rule()
    rule.match.src.append("198.18.0.1")
    rule.action.kind = rule_pb2.ACTION_KIND_DROP
    rule.ttl.seconds, rule.ttl.nanos = 1, -1
    before = server.state()
    create = rule_service_pb2.CreateRuleRequest(rule_id="neg", rule=rule)
    for path, request in (
        ("/breakwater.v1.RuleService/CreateRule", create),
        ("/breakwater.v1.RuleService/BatchCreateRules",
         rule_service_pb2.BatchCreateRulesRequest(requests=[create])),
    ):
        code, details = call(server.channel, path, [request.SerializeToString()])
        assert code is C.INVALID_ARGUMENT, (path, code, details)
        assert "rule.ttl" in details, details
    assert server.state() == before


def _sync(server: Server, node: str, *messages: sync_service_pb2.SyncRequest) -> tuple[grpc.StatusCode, str]:
    """Register as ``node``, send ``messages``, stay a moment (so they are handled), hang up."""
    def requests() -> Iterator[bytes]:
        yield sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(
            node_id=node, agent_version="fuzz")).SerializeToString()
        for m in messages:
            yield m.SerializeToString()
        time.sleep(0.5)

    stream: Any = server.channel.stream_stream("/breakwater.v1.SyncService/Sync", request_serializer=None,
                                               response_deserializer=None)
    try:
        for _ in stream(requests(), timeout=5):
            pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def test_an_event_time_out_of_range_is_refused(server: Server) -> None:
    """Found by the fuzzing: an agent's event with a time no datetime holds was
    taken, then failed in the event pool with a traceback in the controller's
    log (the stream carried on; the agent never knew)."""
    bad = event_pb2.Event()
    bad.time.seconds = -10**13
    before = server.state()
    code, details = _sync(server, "edge-bad-time", sync_service_pb2.SyncRequest(
        events=sync_service_pb2.LocalEvents(events=[event_pb2.Event(), bad])))
    assert code is C.INVALID_ARGUMENT, (code, details)
    assert details.startswith("events.events[1].time: not a valid time"), details
    assert server.state() == before  # neither event stored
    assert not server.errors.take()


def test_counters_summed_past_uint64_saturate(server: Server) -> None:
    """Found by the fuzzing: two summaries of uint64-max counters (from one node
    or several) made GetStats and ListTopTalkers fail INTERNAL for every caller:
    their sums passed 2**64, which no uint64 field holds."""
    top = 2**64 - 1
    summary = telemetry_pb2.TelemetrySummary(active_sources=1)
    summary.actions.dropped.packets = summary.actions.dropped.bytes = top
    both = telemetry_pb2.Count(packets=top, bytes=top)
    summary.reasons.append(telemetry_pb2.ReasonCount(reason=34, count=both))  # type: ignore[arg-type]
    summary.rules.append(telemetry_pb2.RuleCount(rule_id="r", matched=both, dropped=top, rate_limited=top))
    summary.top_sources.append(telemetry_pb2.AddressCounters(
        address="198.18.0.1", counters=telemetry_pb2.TrafficCounters(packets=top, bytes=top, drops=top)))
    message = sync_service_pb2.SyncRequest(telemetry=summary)
    for node in ("edge-big-1", "edge-big-2"):
        assert _sync(server, node, message, message)[0] is C.OK
    stats = telemetry_service_pb2_grpc.TelemetryServiceStub(server.channel)
    got: Any = stats.GetStats(telemetry_service_pb2.GetStatsRequest(), timeout=UNARY_TIMEOUT)
    assert got.actions.dropped.packets == top
    assert {r.rule_id: r.dropped for r in got.rules}["r"] == top  # other tests' nodes report too
    talkers: Any = stats.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(page_size=1000),
                                        timeout=UNARY_TIMEOUT)
    assert {t.address: t.counters.packets for t in talkers.top_talkers}["198.18.0.1"] == top
    assert not server.errors.take()
