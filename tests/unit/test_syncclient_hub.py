"""controller.agent.sync against the controller's real SyncService
(:mod:`controller.fleet.synchub` over a :class:`~controller.fleet.store.FleetStore`),
served as ``breakwater controller`` serves it (a threaded grpc.aio server).

Rules go in through the store, as RuleService puts them there; what the
agent did comes back through the store (the node's applied version and last
error), the event log and the fleet telemetry. The protocol's corner cases
that a correct controller never produces (an invalid rule, a delta from a
base the agent does not hold) are in ``test_syncclient.py``, against a
scripted controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from breakwater.v1 import node_pb2, rule_pb2, sync_service_pb2, telemetry_pb2
from controller.addresses import parse_prefix
from controller.agent.state import Store
from controller.agent.sync import ControllerLayer, RetryPolicy, SyncClient
from controller.api.aiothread import AioServerThread, create_threaded_aio_server
from controller.detection.events import AttackEvent
from controller.errors import MapFullError, NotFoundError
from controller.fleet.eventlog import EventLog
from controller.fleet.store import FleetStore
from controller.fleet.wiring import SyncServices, add_sync_services
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import RuleScope, ScopedRule

FAST = RetryPolicy("test-fast", initial=0.05, maximum=0.5, jitter=0.01)
WAIT = 10.0
NODE = "edge-fra1-01"


def _wait(pred: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    return pred()


@dataclass
class Controller:
    """FleetStore + EventLog + the sync hub on a real server; stop/start keeps the store."""

    state_dir: Path
    port: int = 0
    store: FleetStore | None = None
    events: EventLog | None = None
    hooks: SyncServices | None = None
    server: AioServerThread | None = None

    def start(self) -> None:
        self.store = FleetStore.open(self.state_dir)
        self.events = EventLog(self.store)
        services: list[Any] = []
        self.hooks = add_sync_services(services, self.store, self.events,
                                       {"sync": {"reconcile_interval": 3600, "node_write_interval": 0.01,
                                                 "top_sources": 7},
                                        "fleet": {"enabled": False}})
        self.server, self.port = create_threaded_aio_server(f"127.0.0.1:{self.port}", services)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(None).wait(10)
            self.server = None
        if self.hooks is not None:
            self.hooks.close()
            self.hooks = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def create(self, *rules: ScopedRule) -> int:
        assert self.store is not None
        return self.store.create(list(rules), actor="test").version

    def node(self) -> Any:
        """The agent's node record; None until it registered."""
        assert self.store is not None
        try:
            return self.store.node(NODE)
        except NotFoundError:
            return None

    def applied(self) -> int:
        node = self.node()
        return 0 if node is None else int(node.applied_version)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    c = Controller(tmp_path / "controller")
    c.start()
    try:
        yield c
    finally:
        c.stop()


@dataclass
class Dataplane:
    capacity: int = 100
    layer: ControllerLayer = field(default_factory=ControllerLayer)

    def __call__(self, layer: ControllerLayer) -> None:
        if len(layer.ruleset) > self.capacity:
            raise MapFullError(f"{len(layer.ruleset)} rules do not fit ({self.capacity})")
        self.layer = layer

    def ids(self) -> list[str]:
        return [r.id for r in self.layer.ruleset]


def _identity() -> sync_service_pb2.Register:
    return sync_service_pb2.Register(
        node_id=NODE, labels={"site": "fra1"}, agent_version="0.1.0",
        capabilities=node_pb2.NodeCapabilities(abi_version=2, max_rules=16383, deltas=True),
        interfaces=[node_pb2.NodeInterface(name="bw0", attach_mode=node_pb2.ATTACH_MODE_NATIVE)],
        mode=node_pb2.AGENT_MODE_ENFORCE)


@dataclass
class Agent:
    state_dir: Path
    dataplane: Dataplane = field(default_factory=Dataplane)
    clients: list[SyncClient] = field(default_factory=list)

    def start(self, port: int) -> SyncClient:
        with Store.open(self.state_dir) as store:
            held = ControllerLayer.load(store)
        client = SyncClient(f"127.0.0.1:{port}", identity=_identity, apply=self.dataplane,
                            state_dir=self.state_dir, held=held, policy=FAST, healthy_seconds=0.5)
        self.clients.append(client)
        client.start()
        return client


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "agent")
    try:
        yield a
    finally:
        for c in a.clients:
            c.stop()


def _rule(rid: str, src: str = "198.18.0.3", scope: RuleScope | None = None) -> ScopedRule:
    return ScopedRule(Rule(rid, Match(src=(parse_prefix(src),)), RuleAction("drop")), scope or RuleScope())


def test_registered_node_gets_its_rules_and_acks(controller: Controller, agent: Agent) -> None:
    v1 = controller.create(_rule("all"), _rule("fra", "198.18.0.4", RuleScope.selecting({"site": "fra1"})),
                           _rule("ams", "198.18.0.5", RuleScope.selecting({"site": "ams1"})))
    client = agent.start(controller.port)
    assert _wait(lambda: agent.dataplane.layer.version == v1)
    assert agent.dataplane.ids() == ["all", "fra"]  # the scopes selecting this node
    assert _wait(lambda: controller.applied() == v1)
    node = controller.node()
    assert node.connected and node.labels == {"site": "fra1"}
    assert node.doc["agent_version"] == "0.1.0" and node.doc["capabilities"]["deltas"] is True
    assert client.top_sources == 7
    v2 = controller.create(_rule("mine", "198.18.0.6", RuleScope.on_node(NODE)))
    assert _wait(lambda: agent.dataplane.layer.version == v2)
    assert agent.dataplane.ids() == ["all", "fra", "mine"]
    assert _wait(lambda: controller.applied() == v2)
    assert client.stats().applied == 2


def test_a_set_too_big_is_refused_and_the_last_good_one_kept(controller: Controller, agent: Agent) -> None:
    agent.dataplane.capacity = 2
    v1 = controller.create(_rule("a"))
    agent.start(controller.port)
    assert _wait(lambda: controller.applied() == v1)
    v2 = controller.create(_rule("b", "198.18.0.4"), _rule("c", "198.18.0.5"))
    assert _wait(lambda: controller.node() is not None and controller.node().last_error)
    node = controller.node()
    assert node.applied_version == v1 and node.target_version == v2
    assert node.last_error["code"] == rule_pb2.ApplyErrorCode.Name(rule_pb2.APPLY_ERROR_CODE_CAPACITY)
    assert agent.dataplane.ids() == ["a"]
    assert controller.store is not None
    v3 = controller.store.delete(["c"], actor="test").version
    assert _wait(lambda: controller.applied() == v3)
    assert agent.dataplane.ids() == ["a", "b"] and not controller.node().last_error


def test_a_restarted_controller_gets_the_resumed_node_back(controller: Controller, agent: Agent) -> None:
    v1 = controller.create(_rule("a"))
    client = agent.start(controller.port)
    assert _wait(lambda: controller.applied() == v1)
    controller.stop()
    assert _wait(lambda: not client.stats().connected)
    assert agent.dataplane.ids() == ["a"]  # enforcing meanwhile
    controller.start()
    assert _wait(lambda: client.stats().connected, timeout=15)
    assert client.held.version == v1
    v2 = controller.create(_rule("b", "198.18.0.4"))
    assert _wait(lambda: agent.dataplane.layer.version == v2)
    assert _wait(lambda: controller.applied() == v2)
    assert client.stats().reconnects >= 1


def test_events_and_telemetry_reach_the_controller(controller: Controller, agent: Agent) -> None:
    client = agent.start(controller.port)
    assert _wait(lambda: client.stats().connected)
    attack = AttackEvent(id="heavy-1", kind="started", vector="source_rate", victim=None,
                         profile="concentrated", t=50.0, onset_at=49.0, started_at=50.0, ended_at=None,
                         pps=20000.0, bps=1e7,
                         peak_pps=20000.0, peak_bps=1e7, dropped_pps=0.0, threshold_pps=2000.0,
                         baseline_pps=0.0, over_threshold=True, sources=1, applied=("auto-1",))
    with Store.open(agent.state_dir) as store:
        store.commit_interval("bw0", events=[attack])
    client.notify_events()
    assert controller.events is not None
    events = _wait(lambda: controller.events.page(limit=10) if controller.events else [])
    assert [e.attack.attack_id for e in events] == ["heavy-1"]
    assert events[0].node == f"nodes/{NODE}" and events[0].sequence >= 1

    summary = telemetry_pb2.TelemetrySummary(interface="bw0", active_sources=1)
    summary.end_time.GetCurrentTime()
    summary.interval.FromSeconds(1)
    summary.actions.passed.packets = 1234
    summary.top_sources.add(address="198.18.0.3", counters=telemetry_pb2.TrafficCounters(packets=1234))
    assert client.offer_telemetry(summary)
    assert controller.hooks is not None
    telemetry = controller.hooks.telemetry
    assert _wait(lambda: telemetry.stats(NODE, 60).actions.passed.packets == 1234)


def test_a_lost_stream_fails_over_to_the_next_controller(tmp_path: Path, agent: Agent) -> None:
    """Two controllers over one store (SQLite file here; etcd in tests/store/test_ha.py):
    the agent sticks to the first, moves to the second when it goes, resumes
    from the version it holds, and enforces its rules all along."""
    first, second = Controller(tmp_path / "ctl"), Controller(tmp_path / "ctl")
    first.start()
    v1 = first.create(_rule("a"))
    second.start()  # reads the same file: the same version 1
    applied: list[list[str]] = []
    dataplane = agent.dataplane

    def apply(layer: ControllerLayer) -> None:
        dataplane(layer)
        applied.append(dataplane.ids())

    client = SyncClient([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], identity=_identity,
                        apply=apply, state_dir=agent.state_dir, policy=FAST, healthy_seconds=0.5)
    agent.clients.append(client)
    try:
        client.start()
        assert _wait(lambda: client.stats().connected and client.held.version == v1)
        assert client.target == f"127.0.0.1:{first.port}"
        first.stop()
        assert _wait(lambda: client.stats().connected and client.target == f"127.0.0.1:{second.port}")
        assert client.stats().failovers == 1 and client.held.version == v1
        assert _wait(lambda: second.applied() == v1)  # resumed: no new set needed
        assert applied == [["a"]] * len(applied) and dataplane.ids() == ["a"]
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize(("round_size", "expected"), [
    (1, [0.05, 0.1, 0.2, 0.4, 0.5]),                          # one controller: the backoff as before
    (2, [0.0, 0.05, 0.0, 0.1, 0.0, 0.2, 0.0, 0.4]),           # the next controller at once, backoff per round
])
def test_backoff_is_per_round_of_controllers(round_size: int, expected: list[float]) -> None:
    got = [FAST.wait(n, round_size) for n in range(1, len(expected) + 1)]
    jitter = max(FAST.jitter, 0.2)
    assert all(e <= g <= e + jitter for g, e in zip(got, expected, strict=True)), got
