"""controller.fleet.synchub (with its rule index, streams, node writer,
servicer, configuration and wiring) over a real grpc.aio server on
127.0.0.1:0 and real client streams: register, snapshots and deltas per
scope, one update in flight, ACK/NACK bookkeeping, resume, reconciliation,
replaced streams, invalid registrations, events and telemetry upwards."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from breakwater.v1 import (
    event_pb2,
    node_pb2,
    rule_pb2,
    sync_service_pb2,
    sync_service_pb2_grpc,
    telemetry_pb2,
    telemetry_service_pb2,
    telemetry_service_pb2_grpc,
)
from controller.api.status import from_rpc_error
from controller.errors import FieldError
from controller.fleet.eventlog import EventLog
from controller.fleet.store import FleetStore
from controller.fleet.wiring import SyncServices, add_sync_services
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import RuleScope, ScopedRule

from .aioserver import LoopThread

S = sync_service_pb2
WAIT = 5.0


def rule(rid: str, scope: RuleScope | None = None, src: str = "198.51.100.0/24") -> ScopedRule:
    return ScopedRule(Rule(rid, Match.from_dict({"src": [src]}), RuleAction("drop"), created_by="test"),
                      scope or RuleScope())


class Agent:
    """A test agent: one Sync stream, requests from a queue, responses read
    by a thread into another queue."""

    def __init__(self, channel: grpc.Channel, node_id: str, labels: dict[str, str] | None = None, *,
                 resume: int = 0, deltas: bool = True, first: S.SyncRequest | None = None) -> None:
        self.node_id = node_id
        self._out: queue.Queue[S.SyncRequest | None] = queue.Queue()
        self._in: queue.Queue[S.SyncResponse | BaseException] = queue.Queue()
        self._out.put(first or S.SyncRequest(register=S.Register(
            node_id=node_id, labels=labels or {}, agent_version="0.1.0", mode=node_pb2.AGENT_MODE_ENFORCE,
            resume_version=resume, capabilities=node_pb2.NodeCapabilities(deltas=deltas, max_rules=1000))))
        self.call = sync_service_pb2_grpc.SyncServiceStub(channel).Sync(iter(self._out.get, None), timeout=60)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self._in.put(msg)
        except BaseException as exc:
            self._in.put(exc)

    def send(self, **message: Any) -> None:
        self._out.put(S.SyncRequest(**message))

    def ack(self, version: int) -> None:
        self.send(ack=S.Ack(version=version))

    def recv(self, timeout: float = WAIT) -> S.SyncResponse:
        got = self._in.get(timeout=timeout)
        if isinstance(got, BaseException):
            raise got
        return got

    def nothing(self, seconds: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self._in.get(timeout=seconds)

    def error(self, timeout: float = WAIT) -> grpc.RpcError:
        got = self._in.get(timeout=timeout)
        assert isinstance(got, grpc.RpcError), got
        return got

    def registered(self) -> S.Registered:
        msg = self.recv()
        assert msg.WhichOneof("message") == "registered", msg
        return msg.registered

    def update(self) -> S.SyncResponse:
        msg = self.recv()
        assert msg.WhichOneof("message") in ("snapshot", "delta"), msg
        return msg

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()


def ids(rules: Any) -> list[str]:
    return sorted(r.name.removeprefix("rules/") for r in rules)


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Env:
    def __init__(self, store: FleetStore, events: EventLog, services: SyncServices,
                 channel: grpc.Channel) -> None:
        self.store = store
        self.events = events
        self.services = services
        self.channel = channel
        self.agents: list[Agent] = []

    def agent(self, node_id: str, labels: dict[str, str] | None = None, **kw: Any) -> Agent:
        a = Agent(self.channel, node_id, labels, **kw)
        self.agents.append(a)
        return a

    def create(self, *rules: ScopedRule) -> int:
        return self.store.create(list(rules), actor="test").version

    def connected(self, node_id: str, **kw: Any) -> tuple[Agent, S.RuleSnapshot]:
        """An agent registered and holding its first snapshot (ACKed)."""
        a = self.agent(node_id, **kw)
        a.registered()
        snap = a.update()
        assert snap.WhichOneof("message") == "snapshot"
        a.ack(snap.snapshot.version)
        return a, snap.snapshot


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = FleetStore.open(tmp_path)
    events = EventLog(store)
    services: list[Any] = []
    hooks = add_sync_services(services, store, events, {"sync": {"reconcile_interval": 3600,
                                                                 "node_write_interval": 0.01},
                                                        "fleet": {"enabled": False}})
    with LoopThread() as lt:
        port = lt.serve(services)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            e = Env(store, events, hooks, channel)
            try:
                yield e
            finally:
                for a in e.agents:
                    a.close()
    hooks.close()
    store.close()


def test_register_then_snapshot_of_the_nodes_rules(env: Env) -> None:
    env.create(rule("all"), rule("fra", RuleScope.selecting({"site": "fra1"})),
               rule("ams", RuleScope.selecting({"site": "ams1"})), rule("mine", RuleScope.on_node("edge-1")),
               rule("other", RuleScope.on_node("edge-2")))
    a = env.agent("edge-1", {"site": "fra1", "role": "edge"})
    reg = a.registered()
    assert reg.node == "nodes/edge-1" and reg.top_sources == 50
    assert reg.telemetry_interval.ToSeconds() == 5 and reg.reconcile_interval.ToSeconds() == 3600
    assert reg.controller_id
    snap = a.update().snapshot
    assert snap.version == 1 and not snap.reconcile
    assert ids(snap.rules) == ["all", "fra", "mine"]
    node = env.store.node("edge-1")
    assert node.connected and node.labels == {"role": "edge", "site": "fra1"}
    assert node.doc["agent_version"] == "0.1.0" and node.doc["capabilities"]["deltas"] is True
    assert node.applied_version == 0
    a.ack(1)
    eventually(lambda: env.store.node("edge-1").applied_version == 1)
    assert env.store.node("edge-1").target_version == 1 and env.store.node("edge-1").applied_time is not None


def test_deltas_follow_scopes(env: Env) -> None:
    env.create(rule("all"))
    fra, _ = env.connected("fra-1", labels={"site": "fra1"})
    ams, _ = env.connected("ams-1", labels={"site": "ams1"})
    # a label-scoped rule: only fra gets it
    v2 = env.create(rule("fra", RuleScope.selecting({"site": "fra1"})))
    d = fra.update().delta
    assert (d.base_version, d.version, ids(d.upserts), list(d.removed_rule_ids)) == (1, v2, ["fra"], [])
    fra.ack(v2)
    ams.nothing()
    # moving it to ams: removed on fra, added on ams
    moved = env.store.get("fra")
    v3 = env.store.update(ScopedRule(moved.rule, RuleScope.selecting({"site": "ams1"})), actor="t").version
    d = fra.update().delta
    assert (d.base_version, d.version, ids(d.upserts), list(d.removed_rule_ids)) == (v2, v3, [], ["fra"])
    fra.ack(v3)
    d = ams.update().delta
    assert (d.base_version, d.version, ids(d.upserts), list(d.removed_rule_ids)) == (1, v3, ["fra"], [])
    ams.ack(v3)
    # a node-scoped rule, then deleted
    v4 = env.create(rule("just-ams", RuleScope.on_node("ams-1")))
    d = ams.update().delta
    assert (d.base_version, ids(d.upserts)) == (v3, ["just-ams"])
    ams.ack(v4)
    fra.nothing()
    v5 = env.store.delete(["just-ams", "all"], actor="t").version
    for agent, base in ((ams, v4), (fra, v3)):
        d = agent.update().delta
        assert d.base_version == base and d.version == v5 and not d.upserts
        assert sorted(d.removed_rule_ids) == (["all", "just-ams"] if agent is ams else ["all"])
        agent.ack(v5)
    eventually(lambda: {env.store.node(n).applied_version for n in ("ams-1", "fra-1")} == {v5})


def test_one_update_in_flight(env: Env) -> None:
    a, _ = env.connected("edge-1")
    v2 = env.create(rule("r2"))
    first = a.update().delta
    assert first.version == v2
    v3 = env.create(rule("r3"))
    v4 = env.create(rule("r4"))
    a.nothing()  # nothing more until it answers
    a.ack(v2)
    d = a.update().delta
    assert (d.base_version, d.version, ids(d.upserts)) == (v2, v4, ["r3", "r4"]) and v3 < v4
    a.ack(v4)
    a.nothing()


def test_nack_keeps_the_applied_version_and_is_not_resent(env: Env) -> None:
    a, snap = env.connected("edge-1")
    eventually(lambda: env.store.node("edge-1").applied_version == snap.version)
    v2 = env.create(rule("bad"))
    assert a.update().delta.version == v2
    error = rule_pb2.ApplyError(code=rule_pb2.APPLY_ERROR_CODE_CAPACITY, message="deny_v4 is full")
    a.send(nack=S.Nack(version_rejected=v2, last_good_version=snap.version, error=error))
    eventually(lambda: env.store.node("edge-1").last_error is not None)
    node = env.store.node("edge-1")
    assert node.applied_version == snap.version and node.target_version == v2
    assert node.last_error == {"code": "APPLY_ERROR_CODE_CAPACITY", "message": "deny_v4 is full"}
    a.nothing()  # the refused version is not sent again
    v3 = env.create(rule("next"))
    d = a.update().delta
    assert (d.base_version, d.version, ids(d.upserts)) == (snap.version, v3, ["bad", "next"])
    a.ack(v3)
    eventually(lambda: env.store.node("edge-1").last_error is None)
    assert env.store.node("edge-1").applied_version == v3


def test_base_mismatch_gets_a_snapshot(env: Env) -> None:
    a, _ = env.connected("edge-1")
    v2 = env.create(rule("r2"))
    assert a.update().delta.version == v2
    a.send(nack=S.Nack(version_rejected=v2, last_good_version=0, error=rule_pb2.ApplyError(
        code=rule_pb2.APPLY_ERROR_CODE_BASE_MISMATCH, message="holds nothing")))
    s = a.update()
    assert s.WhichOneof("message") == "snapshot" and s.snapshot.version == v2
    assert ids(s.snapshot.rules) == ["r2"]
    a.ack(v2)


def test_resume_from_a_known_version_gets_a_delta(env: Env) -> None:
    env.create(rule("r1"))
    a, snap = env.connected("edge-1")
    eventually(lambda: env.store.node("edge-1").applied_version == snap.version)
    a.close()
    eventually(lambda: not env.store.node("edge-1").connected)
    v2 = env.create(rule("r2"))
    b = env.agent("edge-1", resume=snap.version)
    b.registered()
    d = b.update()
    assert d.WhichOneof("message") == "delta"
    assert (d.delta.base_version, d.delta.version, ids(d.delta.upserts)) == (snap.version, v2, ["r2"])
    b.ack(v2)
    b.close()
    # the version it holds: an empty delta to confirm it
    c = env.agent("edge-1", resume=v2)
    c.registered()
    d = c.update()
    assert d.WhichOneof("message") == "delta" and d.delta.base_version == d.delta.version == v2
    assert not d.delta.upserts and not d.delta.removed_rule_ids
    c.ack(v2)
    c.close()
    # a version this controller never sent it: a snapshot
    e = env.agent("edge-1", resume=v2 + 40)
    e.registered()
    s = e.update()
    assert s.WhichOneof("message") == "snapshot" and ids(s.snapshot.rules) == ["r1", "r2"]


def test_agent_without_deltas_gets_snapshots(env: Env) -> None:
    a, _ = env.connected("edge-1", deltas=False)
    v2 = env.create(rule("r2"))
    s = a.update()
    assert s.WhichOneof("message") == "snapshot" and s.snapshot.version == v2
    assert ids(s.snapshot.rules) == ["r2"]


def test_second_stream_replaces_the_first(env: Env) -> None:
    a, _ = env.connected("edge-1")
    b = env.agent("edge-1")
    b.registered()
    b.ack(b.update().snapshot.version)
    err = a.error()
    assert err.code() is grpc.StatusCode.ABORTED and "replaced" in (err.details() or "")
    assert env.store.node("edge-1").connected
    v2 = env.create(rule("r2"))
    assert b.update().delta.version == v2


@pytest.mark.parametrize(("first", "field"), [
    (S.SyncRequest(register=S.Register(node_id="Bad_Node")), "register.node_id"),
    (S.SyncRequest(register=S.Register(node_id="")), "register.node_id"),
    (S.SyncRequest(register=S.Register(node_id="ok", labels={"site": "fra 1"})), "register.labels[site]"),
    (S.SyncRequest(register=S.Register(node_id="ok", labels={"-x": "1"})), "register.labels"),
    (S.SyncRequest(ack=S.Ack(version=1)), "register"),
    (S.SyncRequest(register=S.Register(node_id="ok", interfaces=[
        node_pb2.NodeInterface(name=f"e{i}") for i in range(65)])), "register.interfaces"),
    (S.SyncRequest(register=S.Register(node_id="ok", agent_version="x" * 20_000)), "register"),
])
def test_invalid_register(env: Env, first: S.SyncRequest, field: str) -> None:
    a = env.agent("x", first=first)
    err = a.error()
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    got = from_rpc_error(err)
    assert isinstance(got, FieldError) and got.path == field
    assert env.store.nodes() == []


def test_second_register_and_empty_message_end_the_stream(env: Env) -> None:
    a, _ = env.connected("edge-1")
    a.send(register=S.Register(node_id="edge-1"))
    got = from_rpc_error(a.error())
    assert isinstance(got, FieldError) and got.path == "register"
    b, _ = env.connected("edge-2")
    b.send()
    got = from_rpc_error(b.error())
    assert isinstance(got, FieldError) and got.path == "message"


def test_disconnect_is_recorded(env: Env) -> None:
    a, _ = env.connected("edge-1")
    eventually(lambda: env.store.node("edge-1").connected)
    a.close()
    eventually(lambda: not env.store.node("edge-1").connected)


def test_reconcile_snapshots(tmp_path: Path) -> None:
    store = FleetStore.open(tmp_path)
    events = EventLog(store)
    services: list[Any] = []
    hooks = add_sync_services(services, store, events, {"sync": {"reconcile_interval": 1},
                                                        "fleet": {"enabled": False}})
    try:
        with LoopThread() as lt, grpc.insecure_channel(f"127.0.0.1:{lt.serve(services)}") as channel:
            store.create([rule("r1")], actor="t")
            a = Agent(channel, "edge-1")
            a.registered()
            first = a.update().snapshot
            a.ack(first.version)
            for _ in range(2):
                s = a.recv(timeout=3)
                assert s.WhichOneof("message") == "snapshot" and s.snapshot.reconcile
                assert s.snapshot.version == first.version and ids(s.snapshot.rules) == ["r1"]
                a.ack(s.snapshot.version)
            a.close()
    finally:
        hooks.close()
        store.close()


def test_local_events_reach_the_event_log(env: Env) -> None:
    a, _ = env.connected("edge-1")
    attack = event_pb2.AttackEvent(attack_id="syn-198-18-0-10-4", phase=event_pb2.ATTACK_PHASE_STARTED,
                                   vector=event_pb2.ATTACK_VECTOR_SYN, victim="198.18.0.10", pps=50_000)
    a.send(events=S.LocalEvents(events=[event_pb2.Event(attack=attack), event_pb2.Event(attack=attack)]))
    eventually(lambda: len(env.events.page()) == 2)
    stored = env.events.page()
    assert [e.node for e in stored] == ["nodes/edge-1", "nodes/edge-1"]
    assert [e.sequence for e in stored] == [1, 2] and stored[0].name == "events/1"
    assert stored[0].attack.attack_id == "syn-198-18-0-10-4" and stored[0].HasField("time")


def test_a_node_cannot_flush_the_event_log(env: Env) -> None:
    """Each node's events pass a token bucket (node_events_per_second 50,
    node_event_burst 1000): a flood from one node is cut, counted, and the
    other nodes' events still get in."""
    a, _ = env.connected("edge-1")
    b, _ = env.connected("edge-2")
    attack = event_pb2.AttackEvent(attack_id="syn-x", phase=event_pb2.ATTACK_PHASE_STARTED,
                                   vector=event_pb2.ATTACK_VECTOR_SYN, victim="198.18.0.10", pps=1)
    for _ in range(3):
        a.send(events=S.LocalEvents(events=[event_pb2.Event(attack=attack)] * 600))
    b.send(events=S.LocalEvents(events=[event_pb2.Event(attack=attack)]))
    eventually(lambda: any(e.node == "nodes/edge-2" for e in env.events.page(limit=10_000)))
    hub = env.services.hub
    eventually(lambda: hub.counts["events_dropped"] >= 700)
    stored = env.events.page(limit=10_000)
    from_a = sum(1 for e in stored if e.node == "nodes/edge-1")
    assert 1000 <= from_a < 1100 and hub.counts["events_dropped"] == 1800 - from_a
    for _ in range(40):  # telemetry faster than 4 per interval (and a burst of 20) is dropped too
        a.send(telemetry=telemetry_pb2.TelemetrySummary())
    eventually(lambda: hub.counts["telemetry_dropped"] >= 15)


def _summary(end: float, sources: dict[str, int], passed: int) -> telemetry_pb2.TelemetrySummary:
    s = telemetry_pb2.TelemetrySummary(active_sources=len(sources))
    s.end_time.FromNanoseconds(int(end * 1e9))
    s.interval.FromSeconds(5)
    s.actions.passed.packets = passed
    s.actions.passed.bytes = passed * 64
    for addr, n in sources.items():
        s.top_sources.append(telemetry_pb2.AddressCounters(
            address=addr, counters=telemetry_pb2.TrafficCounters(packets=n, bytes=n * 64, udp=n)))
    return s


def test_telemetry_sums_over_the_api(env: Env) -> None:
    now = time.time()
    agents = [env.connected(f"edge-{i}")[0] for i in range(3)]
    for i, a in enumerate(agents):
        a.send(telemetry=_summary(now - 1, {"203.0.113.9": 1000 * (i + 1), f"192.0.2.{i}": 10}, 5000))
        a.send(telemetry=_summary(now, {"203.0.113.9": 100}, 700))
    stub = telemetry_service_pb2_grpc.TelemetryServiceStub(env.channel)

    def reporting() -> bool:
        return stub.GetStats(telemetry_service_pb2.GetStatsRequest(), timeout=5).nodes_reporting == 3

    eventually(reporting)
    stats = stub.GetStats(telemetry_service_pb2.GetStatsRequest(window=duration_pb2.Duration(seconds=120)),
                          timeout=5)
    assert stats.actions.passed.packets == 3 * 5700 and stats.actions.passed.bytes == 3 * 5700 * 64
    one = stub.GetStats(telemetry_service_pb2.GetStatsRequest(node="nodes/edge-1"), timeout=5)
    assert one.node == "nodes/edge-1" and one.actions.passed.packets == 5700
    top = stub.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(parent="nodes/-", page_size=2),
                              timeout=5)
    first = top.top_talkers[0]
    assert first.address == "203.0.113.9" and first.counters.packets == 6000 + 300
    assert first.node_count == 3 and first.nodes[0] == "nodes/edge-2"
    assert top.next_page_token and top.nodes_reporting == 3
    rest = stub.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(
        parent="nodes/-", page_size=2, page_token=top.next_page_token), timeout=5)
    assert sorted(t.address for t in [*top.top_talkers[1:], *rest.top_talkers]) == [
        "192.0.2.0", "192.0.2.1", "192.0.2.2"]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetStats(telemetry_service_pb2.GetStatsRequest(node="nodes/ghost"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(window=duration_pb2.Duration(
            seconds=4000)), timeout=5)
    got = from_rpc_error(info.value)
    assert isinstance(got, FieldError) and got.path == "window"


def test_many_agents_one_change(env: Env) -> None:
    agents = [env.connected(f"edge-{i:02d}", labels={"site": "fra1" if i % 2 else "ams1"})[0]
              for i in range(20)]
    v = env.create(rule("fra", RuleScope.selecting({"site": "fra1"})), rule("all"))
    for i, a in enumerate(agents):
        d = a.update().delta
        assert ids(d.upserts) == (["all", "fra"] if i % 2 else ["all"]) and d.version == v
        a.ack(v)
    eventually(lambda: all(n.applied_version == v for n in env.store.nodes()))
    counts = env.services.hub.counts
    assert counts["deltas"] == 20 and counts["acks"] == 40


def test_config_tables_are_checked(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from controller.fleet.syncconfig import check_config

    check_config({"sync": {"top_sources": 10}, "fleet": {"mitigate": {"rule_ttl": 60}}})
    for tables, path in (({"sync": {"bogus": 1}}, "sync.bogus"),
                         ({"telemetry": {"bucket_seconds": 0}}, "telemetry.bucket_seconds"),
                         ({"fleet": {"mitigate": {"rule_ttl": 0}}}, "fleet.mitigate.rule_ttl"),
                         ({"fleet": {"signatures": {"dns": 5}}}, "fleet.signatures.dns")):
        with pytest.raises(FieldError) as info:
            check_config(tables)
        assert info.value.path == path, tables
    store = FleetStore.open(tmp_path)
    try:
        config = SimpleNamespace(reconcile_interval=12.0, sections={"sync": {"top_sources": 7}})
        services: list[Any] = []
        hooks = add_sync_services(services, store, EventLog(store), config)
        assert hooks.hub.config.reconcile_interval == 12.0 and hooks.hub.config.top_sources == 7
        names = sorted(s.name for s in services)
        assert names == ["breakwater.v1.SyncService", "breakwater.v1.TelemetryService"]
        assert hooks.fleet is not None
        hooks.close()
    finally:
        store.close()


def test_a_registration_whose_stream_left_is_not_a_failure(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Found by fuzzing (test_fuzz_api): a stream that registered and ended at
    once (its next message refused) cancelled the registration's future while
    the node writer was writing it; setting its result then raised, and the
    writer logged a failure with a traceback at every such stream."""
    from controller.fleet.nodewriter import NodeWriter

    store = FleetStore.open(tmp_path)
    go = threading.Event()

    class Slow:
        def register_node(self, *args: Any, **kwargs: Any) -> Any:
            go.wait(5)
            return store.register_node(*args, **kwargs)

    writer = NodeWriter(Slow(), 0)  # type: ignore[arg-type]
    try:
        future = writer.register("edge-1", {}, {})
        time.sleep(0.1)  # the writer is inside register_node
        assert future.cancel() or future.done()
        go.set()
    finally:
        writer.close()
    try:
        assert writer.failures == 0
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        assert store.node("edge-1").node_id == "edge-1"  # written all the same
    finally:
        store.close()
