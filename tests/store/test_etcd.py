"""What only the etcd backend has: a compacted watch re-lists (no silent gap),
node liveness on leases, two controllers with a stale etag, a lost quorum.
Real etcd processes on loopback (tests/store/etcdproc.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import EtagMismatchError, UnavailableError
from controller.fleet.etcd import EtcdClient, parse_endpoints
from controller.fleet.etcdstore import EtcdStore

from .conftest import Backend
from .etcdproc import EtcdCluster
from .test_store import _rule, replace_src

REPO = Path(__file__).resolve().parents[2]


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def pair(etcd: EtcdCluster) -> Iterator[tuple[EtcdStore, EtcdStore]]:
    """Two controllers' stores over the same keys."""
    b = Backend("etcd", Path("/nonexistent"), etcd)
    a, c = b.open_etcd(), b.open_etcd()
    yield a, c
    for s in b.opened:
        s.close()


def test_a_change_on_one_controller_reaches_the_other(pair: tuple[EtcdStore, EtcdStore]) -> None:
    a, b = pair
    change = a.create([_rule("x"), _rule("y")], actor="alice", reason="INC-1")
    assert b.wait_version(0, 10) == change.version == 1
    assert b.changes_since(0) == (1, [change])  # the same feed on every controller
    assert b.get("x") == a.get("x")


def test_stale_etag_from_another_controller_is_refused(pair: tuple[EtcdStore, EtcdStore]) -> None:
    a, b = pair
    a.create([_rule("r")], actor="x")
    b.wait_version(0, 10)
    stale = b.get("r").etag
    a.update(replace_src(a.get("r"), "198.18.7.0/24"), etag=stale, actor="alice")
    # b may not have seen a's update yet: the mod_revision compare catches it either way
    with pytest.raises(EtagMismatchError, match="changed since it was read"):
        b.update(replace_src(b.get("r"), "198.18.8.0/24"), etag=stale, actor="bob")
    with pytest.raises(EtagMismatchError):
        b.delete(["r"], etag=stale, actor="bob")
    assert str(b.get("r").rule.match.src[0]) == "198.18.7.0/24" and a.version == b.version == 2
    # without an etag, concurrent writers both land, one version each, never interleaved
    a.create([_rule("s1")], actor="x")
    b.create([_rule("s2")], actor="y")
    _wait(lambda: a.version == b.version == 4)
    assert [c.version for c in (a.changes_since(2) or (0, []))[1]] == [3, 4]


def test_compacted_watch_relists(etcd: EtcdCluster) -> None:
    b = Backend("etcd", Path("/nonexistent"), etcd)
    try:
        reader = b.open_etcd()
        writer = b.open_etcd()
        writer.create([_rule("before")], actor="x")
        reader.wait_version(0, 10)
        # the reader's watch is down while the writer changes things and etcd compacts them away
        reader._closed.set()
        if reader._stream is not None:
            reader._stream.close()
        reader._watcher.join(5)
        reader._closed.clear()
        writer.create([_rule("during")], actor="x")
        writer.delete(["before"], actor="x")
        client = EtcdClient(parse_endpoints(etcd.url))
        revision, _, _ = client.range(b"/")
        client.compact(revision)
        client.close()
        reader._watcher = threading.Thread(target=reader._watch_loop, daemon=True)
        reader._watcher.start()
        _wait(lambda: reader.relists == 1 and reader.version == 3)
        assert [r.id for r in reader.rules()] == ["during"]
        assert reader.changes_since(1) is None  # the feed starts over: the sync hub sends snapshots
        writer.create([_rule("after")], actor="x")
        _wait(lambda: reader.version == 4)
        assert reader.changes_since(3) is not None
    finally:
        for s in b.opened:
            s.close()


def test_lease_expiry_disconnects_a_dead_controllers_nodes(etcd: EtcdCluster) -> None:
    b = Backend("etcd", Path("/nonexistent"), etcd)
    watcher = b.open_etcd()
    try:
        script = (f"import os, signal, sys\nsys.path.insert(0, {str(REPO)!r})\n"
                  f"from controller.fleet.etcd import parse_endpoints\n"
                  f"from controller.fleet.etcdstore import EtcdStore\n"
                  f"s = EtcdStore.connect(parse_endpoints({b.url!r}), prefix={b.prefix!r}, lease_ttl=2)\n"
                  f"s.register_node('edge-1', {{'site': 'fra1'}}, {{}})\n"
                  f"os.kill(os.getpid(), signal.SIGKILL)\n")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        assert proc.returncode == -9, proc.stderr.decode()
        _wait(lambda: "edge-1" in {n.node_id for n in watcher.nodes()})
        started = time.monotonic()
        assert watcher.node("edge-1").connected  # until its controller's lease runs out
        _wait(lambda: not watcher.node("edge-1").connected, timeout=15)
        assert time.monotonic() - started < 10
        assert watcher.node("edge-1").labels == {"site": "fra1"}  # the registration stays
    finally:
        watcher.close()


def test_quorum_loss_refuses_writes_keeps_reads(etcd3: EtcdCluster) -> None:
    store = EtcdStore.connect(parse_endpoints(etcd3.url), prefix="/bw-quorum/")
    try:
        store.create([_rule("a")], actor="x")
        etcd3.members[1].kill()
        etcd3.wait_healthy([etcd3.members[0], etcd3.members[2]])  # two left: a quorum, a leader
        # one member down: writes go on (one in flight while a new leader is elected may time out)
        _wait(lambda: "b" in {r.id for r in store.rules()} or _created(store, "b"), timeout=30)
        etcd3.members[2].kill()
        with pytest.raises(UnavailableError, match=r"quorum|unavailable|cannot reach"):
            store.create([_rule("c")], actor="x")
        assert [r.id for r in store.rules()] == ["a", "b"] and store.version == 2  # served from memory
        for m in etcd3.members[1:]:
            m.start()
        etcd3.wait_healthy()
        # a write that timed out without a quorum may still commit once it is back: read, then retry
        _wait(lambda: "c" in {r.id for r in store.rules()} or _created(store, "c"), timeout=30)
        assert store.version == 3
    finally:
        store.close()


def _created(store: EtcdStore, rid: str) -> bool:
    try:
        store.create([_rule(rid)], actor="x")
    except UnavailableError:
        return False
    return True
