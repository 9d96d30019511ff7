"""controller.agent.sync against a real SyncService on 127.0.0.1.

The controller side is :class:`Hub`, a small servicer of this module that
speaks the protocol (Register -> Registered, then whatever the test queues;
every request the agent sends is recorded), on a real gRPC server. The
data plane is :class:`Dataplane`, an injected apply callable that keeps the
layer it was given and can refuse one (as a full map would).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import tenacity

from breakwater.v1 import (
    event_pb2,
    node_pb2,
    rule_pb2,
    sync_service_pb2,
    sync_service_pb2_grpc,
    telemetry_pb2,
)
from controller.addresses import parse_prefix
from controller.agent.state import Store
from controller.agent.sync import RECONNECT, ControllerLayer, RetryPolicy, SyncClient
from controller.api import convert
from controller.api.server import Service, create_server
from controller.detection.events import AttackEvent
from controller.errors import MapFullError
from controller.rules.model import Match, Rule, RuleAction, RuleSet

FAST = RetryPolicy("test-fast", initial=0.05, maximum=0.8, jitter=0.01)
WAIT = 10.0
SYNC = sync_service_pb2.DESCRIPTOR.services_by_name["SyncService"]
Req = sync_service_pb2.SyncRequest
Resp = sync_service_pb2.SyncResponse


# --- the controller side ----------------------------------------------------------------


class _Break:
    """Queued in Hub.outgoing: end the stream (with UNAVAILABLE)."""


class Hub(sync_service_pb2_grpc.SyncServiceServicer):
    """A SyncService that registers every agent, then sends what the test
    queues in :attr:`outgoing`; what agents send lands in :attr:`received`."""

    def __init__(self, top_sources: int = 5) -> None:
        self.top_sources = top_sources
        self.registers: queue.Queue[sync_service_pb2.Register] = queue.Queue()
        self.received: queue.Queue[sync_service_pb2.SyncRequest] = queue.Queue()
        self.outgoing: queue.Queue[Resp | _Break] = queue.Queue()
        self.streams = 0
        self.refuse = False  # abort every stream at once (an unready controller)
        self.attempts: list[float] = []

    def Sync(self, request_iterator: Iterator[Req], context: Any) -> Iterator[Resp]:
        self.attempts.append(time.monotonic())
        if self.refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not ready")
        first = next(request_iterator)
        assert first.WhichOneof("message") == "register"
        self.registers.put(first.register)
        self.streams += 1

        def read() -> None:
            try:
                for req in request_iterator:
                    self.received.put(req)
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
        reg = sync_service_pb2.Registered(node=f"nodes/{first.register.node_id}", controller_id="hub-1",
                                          top_sources=self.top_sources)
        reg.telemetry_interval.FromSeconds(1)
        reg.reconcile_interval.FromSeconds(60)
        yield Resp(registered=reg)
        while context.is_active():
            try:
                item = self.outgoing.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, _Break):
                context.abort(grpc.StatusCode.UNAVAILABLE, "controller going away")
                return
            yield item

    def next(self, kind: str, timeout: float = WAIT) -> Req:
        """The next request of ``kind`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} within {timeout} s")
            try:
                req = self.received.get(timeout=left)
            except queue.Empty:
                continue
            if req.WhichOneof("message") == kind:
                return req

    def answer(self, response: Resp) -> Req:
        """Send one update, return the agent's ACK or NACK."""
        self.outgoing.put(response)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                req = self.received.get(timeout=0.1)
            except queue.Empty:
                continue
            if req.WhichOneof("message") in ("ack", "nack"):
                return req
        raise AssertionError("no ACK or NACK")


@dataclass
class Controller:
    hub: Hub
    port: int = 0
    server: grpc.Server | None = None

    def start(self) -> None:
        address = f"127.0.0.1:{self.port}"
        service = Service.of(SYNC, sync_service_pb2_grpc.add_SyncServiceServicer_to_server, self.hub)
        server, port = create_server(address, [service], max_workers=8)
        server.start()
        self.server, self.port = server, port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def controller() -> Iterator[Controller]:
    c = Controller(Hub())
    c.start()
    try:
        yield c
    finally:
        c.stop()


# --- the agent side -----------------------------------------------------------------------


@dataclass
class Dataplane:
    """The apply callable: holds the layer in force; refuses layers of more
    than ``capacity`` rules as a full map would."""

    capacity: int = 100
    layer: ControllerLayer = field(default_factory=ControllerLayer)
    applied: list[int] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    def __call__(self, layer: ControllerLayer) -> None:
        self.threads.add(threading.current_thread().name)
        if len(layer.ruleset) > self.capacity:
            raise MapFullError(f"deny_v4: {len(layer.ruleset)} rules do not fit ({self.capacity})")
        self.layer = layer
        self.applied.append(layer.version)

    def ids(self) -> list[str]:
        return [r.id for r in self.layer.ruleset]


def _identity() -> sync_service_pb2.Register:
    return sync_service_pb2.Register(
        node_id="edge-fra1-01", labels={"site": "fra1"}, agent_version="0.1.0",
        capabilities=node_pb2.NodeCapabilities(abi_version=2, max_signature_rules=256, max_rules=16384,
                                               max_deny_v4=65536, deltas=True),
        interfaces=[node_pb2.NodeInterface(name="bw0", netns="edge",
                                           attach_mode=node_pb2.ATTACH_MODE_GENERIC)],
        mode=node_pb2.AGENT_MODE_ENFORCE)


@dataclass
class Agent:
    state_dir: Path
    target: str
    dataplane: Dataplane = field(default_factory=Dataplane)
    clients: list[SyncClient] = field(default_factory=list)

    def start(self, held: ControllerLayer | None = None, policy: RetryPolicy = FAST,
              healthy_seconds: float = 0.5) -> SyncClient:
        if held is None:
            with Store.open(self.state_dir) as store:
                held = ControllerLayer.load(store)
        client = SyncClient(self.target, identity=_identity, apply=self.dataplane, state_dir=self.state_dir,
                            held=held, policy=policy, healthy_seconds=healthy_seconds)
        self.clients.append(client)
        client.start()
        return client


@pytest.fixture
def agent(tmp_path: Path, controller: Controller) -> Iterator[Agent]:
    a = Agent(tmp_path, controller.target)
    try:
        yield a
    finally:
        for c in a.clients:
            c.stop()


def _wait(pred: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    return pred()


def _rule(rid: str, src: str = "198.18.0.3", **kw: Any) -> rule_pb2.Rule:
    rule = Rule(rid, Match(src=(parse_prefix(src),)), RuleAction("drop"), **kw)
    return convert.rule_to_proto(rule)


def _snapshot(version: int, *rules: rule_pb2.Rule, reconcile: bool = False) -> Resp:
    return Resp(snapshot=sync_service_pb2.RuleSnapshot(version=version, rules=rules, reconcile=reconcile))


def _delta(base: int, version: int, upserts: tuple[rule_pb2.Rule, ...] = (),
           removed: tuple[str, ...] = ()) -> Resp:
    return Resp(delta=sync_service_pb2.RuleDelta(version=version, base_version=base, upserts=upserts,
                                                 removed_rule_ids=removed))


def _stored(state_dir: Path) -> ControllerLayer:
    with Store.open(state_dir) as store:
        return ControllerLayer.load(store)


# --- tests ---------------------------------------------------------------------------------


def test_register_carries_identity_and_resume_version(controller: Controller, agent: Agent) -> None:
    held = ControllerLayer.build(7, [_rule("keep")])
    agent.start(held=held)
    reg = controller.hub.registers.get(timeout=WAIT)
    assert reg.node_id == "edge-fra1-01"
    assert dict(reg.labels) == {"site": "fra1"}
    assert reg.agent_version == "0.1.0"
    assert reg.capabilities.max_rules == 16384 and reg.capabilities.deltas
    assert [(i.name, i.netns, i.attach_mode) for i in reg.interfaces] == [
        ("bw0", "edge", node_pb2.ATTACH_MODE_GENERIC)]
    assert reg.mode == node_pb2.AGENT_MODE_ENFORCE
    assert reg.resume_version == 7


def test_snapshot_applied_stored_and_acked_then_delta(controller: Controller, agent: Agent) -> None:
    client = agent.start()
    assert controller.hub.registers.get(timeout=WAIT).resume_version == 0
    answer = controller.hub.answer(_snapshot(3, _rule("a"), _rule("b", "198.18.0.4")))
    assert answer.WhichOneof("message") == "ack" and answer.ack.version == 3
    dp = agent.dataplane
    assert dp.ids() == ["a", "b"] and dp.layer.version == 3
    assert {r.origin for r in dp.layer.ruleset} == {"controller"}  # the agent tells them from its own
    assert dp.threads == {"breakwater-sync"}  # applied through the one callable, from one thread
    assert client.held.version == 3
    stored = _stored(agent.state_dir)
    assert stored.version == 3 and list(stored.rules) == ["a", "b"]

    answer = controller.hub.answer(_delta(3, 4, upserts=(_rule("c", "198.18.0.20"), _rule("a", "198.18.0.9")),
                                          removed=("b",)))
    assert answer.ack.version == 4
    assert dp.ids() == ["a", "c"]
    assert [str(p) for p in dp.layer.ruleset.get("a").match.src] == ["198.18.0.9"]  # type: ignore[union-attr]
    stored = _stored(agent.state_dir)
    assert stored.version == 4 and list(stored.rules) == ["a", "c"]
    assert stored.ruleset == dp.layer.ruleset
    stats = client.stats()
    assert (stats.connected, stats.version, stats.applied, stats.controller_id) == (True, 4, 2, "hub-1")


def test_invalid_rule_is_nacked_naming_the_field_and_keeps_the_last_good_set(
        controller: Controller, agent: Agent) -> None:
    client = agent.start()
    assert controller.hub.answer(_snapshot(3, _rule("a"))).ack.version == 3
    bad = _rule("dns")
    bad.match.dport.CopyFrom(rule_pb2.Range(lo=53, hi=53))  # ports need a protocol
    answer = controller.hub.answer(_snapshot(5, _rule("a"), bad))
    assert answer.WhichOneof("message") == "nack"
    nack = answer.nack
    assert (nack.version_rejected, nack.last_good_version) == (5, 3)
    assert nack.error.code == rule_pb2.APPLY_ERROR_CODE_INVALID_RULE
    assert [(v.rule_id, v.field) for v in nack.error.violations] == [("dns", "match.dport")]
    assert agent.dataplane.layer.version == 3 and agent.dataplane.ids() == ["a"]
    assert _stored(agent.state_dir).version == 3
    # the same in a delta: the path is upserts[i]
    answer = controller.hub.answer(_delta(3, 6, upserts=(bad,)))
    assert [(v.rule_id, v.field) for v in answer.nack.error.violations] == [("dns", "match.dport")]
    assert client.held.version == 3
    assert client.stats().nacked == {"APPLY_ERROR_CODE_INVALID_RULE": 2}
    # still serving: a good update after the refusals applies
    assert controller.hub.answer(_delta(3, 7, removed=("a",))).ack.version == 7
    assert agent.dataplane.ids() == []


def test_a_set_that_does_not_fit_is_nacked_as_capacity(controller: Controller, agent: Agent) -> None:
    agent.dataplane.capacity = 2
    agent.start()
    assert controller.hub.answer(_snapshot(1, _rule("a"))).ack.version == 1
    answer = controller.hub.answer(_snapshot(2, *(_rule(f"r{i}", f"198.18.1.{i}") for i in range(3))))
    assert answer.nack.error.code == rule_pb2.APPLY_ERROR_CODE_CAPACITY
    assert answer.nack.last_good_version == 1
    assert agent.dataplane.ids() == ["a"]


def test_base_mismatch_is_nacked_and_a_snapshot_recovers(controller: Controller, agent: Agent) -> None:
    agent.start()
    assert controller.hub.answer(_snapshot(3, _rule("a"))).ack.version == 3
    answer = controller.hub.answer(_delta(2, 4, upserts=(_rule("b", "198.18.0.4"),)))
    assert answer.nack.error.code == rule_pb2.APPLY_ERROR_CODE_BASE_MISMATCH
    assert (answer.nack.version_rejected, answer.nack.last_good_version) == (4, 3)
    assert agent.dataplane.ids() == ["a"]
    assert controller.hub.answer(_snapshot(4, _rule("a"), _rule("b", "198.18.0.4"))).ack.version == 4
    # a reconcile snapshot of what is held is applied and ACKed like any other
    assert controller.hub.answer(_snapshot(4, _rule("a"), _rule("b", "198.18.0.4"), reconcile=True)
                                 ).ack.version == 4
    assert agent.dataplane.applied == [3, 4, 4]


def test_reconnects_with_backoff_and_resumes_from_the_held_version(controller: Controller,
                                                                   agent: Agent) -> None:
    client = agent.start(healthy_seconds=60)
    hub = controller.hub
    assert hub.registers.get(timeout=WAIT).resume_version == 0
    assert hub.answer(_snapshot(3, _rule("a"))).ack.version == 3
    # the stream breaks and the controller refuses new ones for a while
    hub.refuse = True
    hub.attempts.clear()
    hub.outgoing.put(_Break())
    assert _wait(lambda: len(hub.attempts) >= 6)
    assert not client.stats().connected
    assert agent.dataplane.ids() == ["a"]  # still enforcing
    gaps = [b - a for a, b in zip(hub.attempts, hub.attempts[1:], strict=False)]
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3], gaps  # backing off
    assert max(gaps) <= FAST.maximum + FAST.jitter + 0.3, gaps  # capped
    # then it is gone altogether, and comes back
    controller.stop()
    hub.refuse = False
    time.sleep(0.5)
    controller.start()
    reg = hub.registers.get(timeout=WAIT)
    assert reg.resume_version == 3
    assert _wait(lambda: client.stats().connected)
    assert client.stats().reconnects >= 6
    assert hub.answer(_delta(3, 4, removed=("a",))).ack.version == 4


def test_a_broken_stream_reconnects_and_a_restarted_agent_resumes(controller: Controller,
                                                                   agent: Agent) -> None:
    client = agent.start()
    hub = controller.hub
    assert hub.answer(_snapshot(3, _rule("a"))).ack.version == 3
    hub.registers.get(timeout=WAIT)
    hub.outgoing.put(_Break())
    assert hub.registers.get(timeout=WAIT).resume_version == 3
    client.stop()
    # a new agent process on the same state: the stored layer, the stored version
    restarted = agent.start()
    assert restarted.held.version == 3 and list(restarted.held.rules) == ["a"]
    assert hub.registers.get(timeout=WAIT).resume_version == 3


def _attack(i: int) -> AttackEvent:
    return AttackEvent(id=f"heavy-{i}", kind="started", vector="source_rate", victim=None,
                       profile="concentrated", t=100.0 + i, onset_at=98.0 + i, started_at=99.0 + i,
                       ended_at=None, pps=20000.0, bps=1e7, peak_pps=21000.0, peak_bps=1e7, dropped_pps=0.0,
                       threshold_pps=2000.0, baseline_pps=0.0,
                       over_threshold=True, sources=1, applied=(f"auto-src-heavy-{i}",))


def _auto_rule(i: int) -> dict[str, object]:
    rule = Rule(f"auto-src-heavy-{i}", Match(src=(parse_prefix("198.18.0.3"),)), RuleAction("drop"),
                priority=500, origin="auto", expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    return {"rule": rule.to_dict(), "actor": "detector", "attack_id": f"heavy-{i}"}


def _delivered(state_dir: Path) -> int:
    with Store.open(state_dir) as store:
        return store.sync_cursor() or 0


def _events(hub: Hub, n: int, timeout: float = WAIT) -> list[event_pb2.Event]:
    out: list[event_pb2.Event] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        try:
            req = hub.received.get(timeout=0.1)
        except queue.Empty:
            continue
        if req.WhichOneof("message") == "events":
            out.extend(req.events.events)
    return out


def test_events_logged_while_disconnected_are_delivered_once(controller: Controller, agent: Agent) -> None:
    with Store.open(agent.state_dir) as store:  # history from before the agent had a controller
        store.commit_interval("bw0", events=[_attack(0)], at=1000.0)
    client = agent.start(healthy_seconds=60)
    hub = controller.hub
    hub.registers.get(timeout=WAIT)
    with Store.open(agent.state_dir) as store:
        store.commit_interval("bw0", events=[_attack(1)], rule_events=[("auto-src-heavy-1", "created",
                                                                        _auto_rule(1))], at=2000.0)
    client.notify_events()
    got = _events(hub, 2)
    assert [e.WhichOneof("payload") for e in got] == ["attack", "rule"]
    assert got[0].attack.attack_id == "heavy-1" and got[0].attack.interface == "bw0"
    assert got[0].time.seconds == 2000
    assert got[0].attack.sample_time.seconds == 2000  # the detector's clock, made wall clock
    assert got[0].attack.applied_rule_ids == ["auto-src-heavy-1"]
    rule = got[1].rule
    assert (rule.kind, rule.rule_id, rule.actor, rule.attack_id) == (
        event_pb2.RULE_EVENT_KIND_CREATED, "auto-src-heavy-1", "detector", "heavy-1")
    assert rule.rule.origin == rule_pb2.RULE_ORIGIN_AUTO
    assert _wait(lambda: _delivered(agent.state_dir) == 3)  # handed over, and recorded as such

    controller.stop()  # the controller goes away; the agent keeps logging
    assert _wait(lambda: not client.stats().connected)
    with Store.open(agent.state_dir) as store:
        store.commit_interval("bw0", events=[_attack(2), _attack(3)], at=3000.0)
        deleted = {"rule": _auto_rule(9)["rule"], "actor": "ops"}
        store.add_rule_events("bw0", [("manual-1", "deleted", deleted)],
                              at=3001.0)
    client.notify_events()
    controller.start()
    hub.registers.get(timeout=WAIT)
    got = _events(hub, 3)
    assert [(e.WhichOneof("payload"), e.attack.attack_id or e.rule.rule_id) for e in got] == [
        ("attack", "heavy-2"), ("attack", "heavy-3"), ("rule", "manual-1")]
    # nothing twice: a restarted agent on the same state sends nothing old
    assert _wait(lambda: _delivered(agent.state_dir) == 6)
    client.stop()
    agent.start(healthy_seconds=60)
    hub.registers.get(timeout=WAIT)
    assert _events(hub, 1, timeout=2.5) == []


def test_telemetry_goes_up_while_connected_and_is_dropped_otherwise(controller: Controller,
                                                                    agent: Agent) -> None:
    client = agent.start()
    summary = telemetry_pb2.TelemetrySummary(interface="bw0", active_sources=3)
    controller.hub.registers.get(timeout=WAIT)
    assert _wait(lambda: client.stats().connected)
    assert client.top_sources == 5  # as Registered asked
    assert client.offer_telemetry(summary)
    got = controller.hub.next("telemetry")
    assert got.telemetry.interface == "bw0" and got.telemetry.active_sources == 3
    controller.stop()
    assert _wait(lambda: not client.stats().connected)
    assert not client.offer_telemetry(summary)
    assert client.stats().telemetry_dropped >= 1


def test_stop_while_disconnected_returns_promptly(tmp_path: Path) -> None:
    client = SyncClient("127.0.0.1:1", identity=_identity, apply=Dataplane(), state_dir=tmp_path,
                        policy=RECONNECT)
    client.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    client.stop()
    assert time.monotonic() - t0 < 3.0
    assert client._thread is not None and not client._thread.is_alive()


def test_reconnect_policy_backs_off_exponentially_with_jitter_and_a_cap() -> None:
    stopped = threading.Event()
    retrying = RECONNECT.retrying(stopped, lambda state: None)
    waits = []
    for attempt in range(1, 12):
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        waits.append(retrying.wait(state))
    assert RECONNECT.initial <= waits[0] <= RECONNECT.initial + RECONNECT.jitter
    assert waits[3] >= 4 * RECONNECT.initial
    assert all(w <= RECONNECT.maximum + RECONNECT.jitter for w in waits)
    assert waits[-1] == pytest.approx(RECONNECT.maximum, abs=RECONNECT.jitter)


def test_layer_round_trip_and_expiry() -> None:
    soon = datetime(2030, 1, 1, tzinfo=UTC)
    layer = ControllerLayer.build(9, [_rule("b", expires_at=soon + timedelta(hours=1)),
                                      _rule("a", expires_at=soon)])
    assert list(layer.rules) == ["a", "b"]
    assert layer.next_expiry == soon
    again = ControllerLayer.from_docs(9, layer.docs())
    assert again.ruleset == layer.ruleset and again.version == 9
    assert layer.ruleset == RuleSet.from_rules(replace(r, origin="controller") for r in again.ruleset)
