"""Several controllers over one etcd (issue 13): each owns the liveness of
the streams it serves and no other; one elected leader runs the fleet's
singleton jobs, fenced by its leader key's revision; kill -9 of the leader
(a real ``breakwater controller`` process) hands its jobs to the other and
its agents fail over to it, enforcing their rules all along. Real etcd,
real controllers (``create_controller`` or processes), real gRPC sync
streams; the agents are the real sync client over a simulated data plane
(no namespaces needed: tests/cluster runs real agents on veth)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
import pytest

from breakwater.v1 import (
    node_pb2,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    sync_service_pb2,
    sync_service_pb2_grpc,
)
from controller.agent.sync import ControllerLayer, RetryPolicy, SyncClient
from controller.config import toml_document
from controller.errors import FailedPreconditionError
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import Controller, create_controller
from controller.fleet.etcdstore import EtcdStore
from controller.fleet.leader import LEADER_TTL, EtcdElection

from .conftest import Backend
from .etcdproc import EtcdCluster
from .test_store import _rule

REPO = Path(__file__).resolve().parents[2]

S = sync_service_pb2
FAST = RetryPolicy("test-fast", initial=0.05, maximum=0.5, jitter=0.01)


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Stream:
    """One agent's sync stream to one controller: registers, ACKs every update."""

    def __init__(self, address: str, node_id: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._out: queue.Queue[S.SyncRequest | None] = queue.Queue()
        self._out.put(S.SyncRequest(register=S.Register(
            node_id=node_id, agent_version="0.1.0", mode=node_pb2.AGENT_MODE_ENFORCE,
            capabilities=node_pb2.NodeCapabilities(deltas=True, max_rules=1000))))
        self.call = sync_service_pb2_grpc.SyncServiceStub(self.channel).Sync(iter(self._out.get, None))
        self.versions: list[int] = []
        self.registered = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                which = msg.WhichOneof("message")
                if which == "registered":
                    self.registered.set()
                elif which in ("snapshot", "delta"):
                    version = getattr(msg, which).version
                    self.versions.append(version)
                    self._out.put(S.SyncRequest(ack=S.Ack(version=version)))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def controllers(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Callable[[], Controller]]:
    """Start controllers over the same etcd keys (each with its own state dir)."""
    b = Backend("etcd", tmp_path, etcd)
    started: list[Controller] = []

    def start() -> Controller:
        state = tmp_path / f"c{len(started)}"
        state.mkdir()
        cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=state, metrics=None, store=b.url,
                               store_prefix=b.prefix)
        ctl = create_controller(cfg)
        started.append(ctl)
        ctl.start()
        return ctl

    yield start
    for ctl in reversed(started):
        ctl.stop(0)


def _connected(ctl: Controller, node_id: str) -> bool:
    return any(n.node_id == node_id and n.connected for n in ctl.store.nodes())


def _record_revision(ctl: Controller, node_id: str) -> int:
    """The etcd revision that last wrote the node's record."""
    store = ctl.store
    assert isinstance(store, EtcdStore)
    _, kvs, _ = store.client.range(f"{store.prefix}nodes/{node_id}".encode())
    return kvs[0].mod_revision


def test_a_second_controller_leaves_the_first_ones_agents_connected(
        controllers: Callable[[], Controller]) -> None:
    a = controllers()
    s = Stream(a.address, "edge-1")
    try:
        assert s.registered.wait(10)
        _wait(lambda: _connected(a, "edge-1") and bool(s.versions)
              and a.store.node("edge-1").applied_version == s.versions[-1])
        time.sleep(a.sync.hub.config.node_write_interval + 0.5)  # type: ignore[union-attr]  # a's ACK write
        record = _record_revision(a, "edge-1")
        b = controllers()  # starting over the same keys resets nothing of a's, writes nothing
        _wait(lambda: "edge-1" in {n.node_id for n in b.store.nodes()})
        time.sleep(1.5)  # what b would have written at its start (node writes gather 1 s) is in
        assert _connected(a, "edge-1") and _connected(b, "edge-1")
        assert _record_revision(a, "edge-1") == record
    finally:
        s.close()
    _wait(lambda: not _connected(a, "edge-1") and not _connected(b, "edge-1"))


def test_an_agent_that_moved_stays_connected_when_its_old_stream_ends(
        controllers: Callable[[], Controller]) -> None:
    a, b = controllers(), controllers()
    old = Stream(a.address, "edge-2")
    new: Stream | None = None
    try:
        assert old.registered.wait(10)
        _wait(lambda: _connected(b, "edge-2"))
        new = Stream(b.address, "edge-2")  # the agent failed over; a has not noticed yet
        assert new.registered.wait(10)
        _wait(lambda: bool(new.versions) and b.store.node("edge-2").applied_version == new.versions[-1])
        old.close()  # now a notices: it drops only its own liveness key
        hub = a.sync.hub  # type: ignore[union-attr]
        _wait(lambda: hub.streams == 0)
        time.sleep(hub.config.node_write_interval + 0.5)  # a's disconnect is written by now
        assert _connected(a, "edge-2") and _connected(b, "edge-2")
        assert a.store.node("edge-2") == b.store.node("edge-2")
    finally:
        old.close()
        if new is not None:
            new.close()
    _wait(lambda: not _connected(a, "edge-2"))


# --- leader election and fencing ---


@pytest.fixture
def two_stores(etcd: EtcdCluster, tmp_path: Path) -> Iterator[tuple[EtcdStore, EtcdStore]]:
    b = Backend("etcd", tmp_path, etcd)
    yield b.open_etcd(), b.open_etcd()
    for s in b.opened:
        s.close()


def _election(store: EtcdStore, name: str) -> EtcdElection:
    return EtcdElection(store.client, store.leader_key, name, ttl=2, check_every=0.1)


def test_one_leader_and_a_deposed_leaders_writes_are_refused(two_stores: tuple[EtcdStore, EtcdStore]) -> None:
    sa, sb = two_stores
    a, b = _election(sa, "a"), _election(sb, "b")
    try:
        a.start()
        _wait(lambda: a.is_leader)
        b.start()
        _wait(lambda: b.leader() == "a")
        time.sleep(0.5)
        assert a.is_leader and not b.is_leader and b.token == 0
        stale = a.token
        assert stale == b.observe()[1] > 0
        sa.create([_rule("x", ttl=1)], actor="t")
        sa.add_events([(datetime.now(UTC), "", "attack", b"x")] * 3)
        # a pauses (its thread stops, it resigns nothing) past its lease (revoked here): b takes over
        a._stop.set()
        a._thread.join()
        sa.client.revoke(a._lease)
        _wait(lambda: b.is_leader, timeout=5)
        assert b.token > stale
        version = sb.version
        with sa.fenced(stale), pytest.raises(FailedPreconditionError, match="no longer the leader"):
            sa.expire()
        with sa.fenced(stale), pytest.raises(FailedPreconditionError):
            sa.create([_rule("y")], actor="t")
        with sa.fenced(stale), pytest.raises(FailedPreconditionError):
            sa.prune_events(1)
        with sa.fenced(0), pytest.raises(FailedPreconditionError, match="not the leader"):
            sa.expire()  # a token read once the leadership lapsed
        assert sb.version == version and [r.id for r in sb.rules(include_expired=True)] == ["x"]
        assert len(sb.events()) == 3
        _wait(lambda: not a.is_leader, timeout=5)  # a stops calling itself leader once its lease may be over
        with sb.fenced(b.token):  # the new leader's token writes
            assert [r.id for r in sb.expire().removed] == ["x"]
            assert sb.prune_events(1) == 2
    finally:
        a.close()
        b.close()


def test_a_killed_leader_is_replaced_within_its_lease(two_stores: tuple[EtcdStore, EtcdStore]) -> None:
    sa, sb = two_stores
    script = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
              f"from controller.fleet.etcd import EtcdClient\n"
              f"from controller.fleet.leader import EtcdElection\n"
              f"e = EtcdElection(EtcdClient({list(sa.client.endpoints)!r}), {sa.leader_key!r}, 'doomed', "
              f"ttl=2, check_every=0.1)\n"
              f"e.start()\nwhile not e.is_leader: time.sleep(0.02)\nprint('leader', flush=True)\n"
              f"time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    b = _election(sb, "b")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"leader\n"
        b.start()
        _wait(lambda: b.leader() == "doomed")
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        _wait(lambda: b.is_leader, timeout=10)
        assert time.monotonic() - killed < 2 + 1.5  # its lease's TTL and a check or so
    finally:
        proc.kill()
        proc.wait()
        b.close()


def test_only_the_leader_controller_sweeps_and_a_stop_hands_over(
        controllers: Callable[[], Controller]) -> None:
    a = controllers()
    _wait(lambda: a.leadership.is_leader)
    b = controllers()
    time.sleep(1.5)
    assert a.leadership.is_leader and not b.leadership.is_leader
    assert "breakwater_controller_leader 1" in a.metrics_text()
    assert "breakwater_controller_leader 0" in b.metrics_text()
    b.store.create([_rule("soon", ttl=1)], actor="t")
    _wait(lambda: a.expired_total == 1)  # swept by a, the leader
    time.sleep(1.5)
    assert b.expired_total == 0 and b.store.version == a.store.version == 2
    assert [x.action for x in b.store.audit()] == ["create", "expire"]
    a.stop(0)  # resigns
    stopped = time.monotonic()
    _wait(lambda: b.leadership.is_leader, timeout=5)
    assert time.monotonic() - stopped < 3
    b.store.create([_rule("later", ttl=1)], actor="t")
    _wait(lambda: b.expired_total == 1)
    assert b.store.version == 4 and b.leadership.leader() == b.leadership.name


# --- kill -9 of the leader: two controller processes, three agents ---


class ControllerProc:
    """``breakwater controller`` over etcd as a child process; its JSON log lines are collected."""

    def __init__(self, workdir: Path, url: str, prefix: str) -> None:
        workdir.mkdir()
        config = workdir / "controller.toml"
        config.write_text(toml_document({"listen": "127.0.0.1:0", "state_dir": str(workdir), "metrics": "",
                                         "store": url, "store_prefix": prefix}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "controller", "--config",
                                      str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        self.lines: list[dict[str, Any]] = []
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        ready = self.wait_event("controller_ready", 30)
        self.address: str = ready["address"]
        self.name: str = ready["controller"]

    def _read(self, stream: TextIO) -> None:
        for raw in stream:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"raw": raw.rstrip()}
            self.lines.append(doc)

    def event(self, name: str) -> dict[str, Any] | None:
        return next((line for line in self.lines if line.get("event") == name), None)

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        _wait(lambda: self.event(name) is not None or self.proc.poll() is not None, timeout)
        found = self.event(name)
        assert found is not None, f"no {name}: {self.lines[-20:]}"
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Dataplane:
    """An agent's data plane, simulated: the layer in force, and every rule set it ever held."""

    def __init__(self) -> None:
        self.layer = ControllerLayer()
        self.held: list[set[str]] = []

    def __call__(self, layer: ControllerLayer) -> None:
        self.layer = layer
        self.held.append({r.id for r in layer.ruleset})


def _identity(node_id: str) -> Callable[[], S.Register]:
    return lambda: S.Register(node_id=node_id, agent_version="0.1.0", mode=node_pb2.AGENT_MODE_ENFORCE,
                              capabilities=node_pb2.NodeCapabilities(deltas=True, max_rules=1000))


def _create(address: str, rid: str, src: str, ttl: int = 0) -> None:
    rule = rule_pb2.Rule(match=rule_pb2.Match(src=[src]),
                         action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))
    if ttl:
        rule.ttl.FromSeconds(ttl)
    with grpc.insecure_channel(address) as channel:
        rule_service_pb2_grpc.RuleServiceStub(channel).CreateRule(
            rule_service_pb2.CreateRuleRequest(rule_id=rid, rule=rule), timeout=20)


def test_kill9_of_the_leader_hands_over_jobs_and_agents(etcd: EtcdCluster, tmp_path: Path) -> None:
    b = Backend("etcd", tmp_path, etcd)
    procs: list[ControllerProc] = []
    clients: list[SyncClient] = []
    watcher = b.open_etcd()
    try:
        leader = ControllerProc(tmp_path / "a", b.url, b.prefix)
        procs.append(leader)
        leader.wait_event("leader_elected")
        other = ControllerProc(tmp_path / "b", b.url, b.prefix)
        procs.append(other)
        _create(other.address, "keep", "198.18.0.3")  # on the follower: reaches the leader's agents too
        planes = {f"edge-{i}": Dataplane() for i in range(3)}
        for i, (node, plane) in enumerate(planes.items()):
            order = [leader.address, other.address] if i < 2 else [other.address, leader.address]
            client = SyncClient(order, identity=_identity(node), apply=plane, state_dir=tmp_path / node,
                                policy=FAST, healthy_seconds=0.5)
            clients.append(client)
            client.start()
        _wait(lambda: all(c.stats().connected and c.held.version == watcher.version for c in clients))
        assert all(p.layer.version == 1 and {r.id for r in p.layer.ruleset} == {"keep"}
                   for p in planes.values())
        _create(other.address, "brief", "198.18.0.4", ttl=8)  # expires after the leader is gone
        _wait(lambda: all({r.id for r in p.layer.ruleset} == {"keep", "brief"} for p in planes.values()))

        leader.kill()  # kill -9: no resignation, its leases run out
        killed, killed_at = time.monotonic(), datetime.now(UTC)
        _wait(lambda: all(c.stats().connected and c.target == other.address for c in clients), 15)
        failover = time.monotonic() - killed
        elected = other.wait_event("leader_elected", 15)
        handover = (datetime.fromisoformat(elected["ts"].replace("Z", "+00:00")) - killed_at).total_seconds()
        _wait(lambda: all({r.id for r in p.layer.ruleset} == {"keep"} for p in planes.values()), 20)
        assert [a.action for a in watcher.audit()] == ["create", "create", "expire"]  # expired once, by b
        _create(other.address, "after", "198.18.0.5")
        _wait(lambda: all(c.held.version == watcher.version for c in clients))
        assert all({r.id for r in p.layer.ruleset} == {"keep", "after"} for p in planes.values())
        # never a moment without the rule every node was given first
        assert all("keep" in held for p in planes.values() for held in p.held)
        assert [c.stats().failovers for c in clients] == [1, 1, 0]
        _wait(lambda: {n.node_id for n in watcher.nodes() if n.connected} == set(planes), 15)
        print(f"\nHA figures: leader handover {handover:.2f} s, agents failed over {failover:.2f} s "
              f"after kill -9 (leader lease TTL {LEADER_TTL} s)")
    finally:
        for c in clients:
            c.stop()
        for p in procs:
            p.kill()
        watcher.close()
