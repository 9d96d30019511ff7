"""The store suite, for the sync hub: the in-memory change
feed (changes_since) and batched node writes (update_nodes)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from controller.errors import FieldError, NotFoundError
from controller.fleet.store import RECENT_CHANGES
from controller.fleet.storeapi import Store

from .conftest import Backend
from .test_store import T0, _rule


def test_changes_since_lists_every_change_in_order(store: Store) -> None:
    assert store.changes_since(0) == (0, [])
    store.create([_rule("a"), _rule("b")], actor="t", now=T0)
    a = store.get("a")
    store.update(a, actor="t", now=T0)
    store.delete(["b"], actor="t", now=T0)
    version, changes = store.changes_since(0) or (0, [])
    assert version == 3
    assert [c.version for c in changes] == [1, 2, 3]
    assert [r.id for r in changes[0].upserted] == ["a", "b"]
    assert [r.id for r in changes[1].upserted] == ["a"] and changes[1].upserted[0].version == 2
    assert [r.id for r in changes[2].removed] == ["b"]
    assert store.changes_since(2) == (3, [changes[2]])
    assert store.changes_since(3) == (3, [])
    assert store.changes_since(4) is None  # not a version of this store


def test_changes_since_too_old_and_after_reopen(store: Store, reopen: Callable[[], Store]) -> None:
    for i in range(RECENT_CHANGES + 2):
        store.create([_rule(f"r{i}")], actor="t", now=T0)
    assert store.changes_since(0) is None
    got = store.changes_since(2)
    assert got is not None and len(got[1]) == RECENT_CHANGES
    store.expire(T0)  # nothing expired: no version, nothing in the feed
    assert store.changes_since(store.version) == (store.version, [])
    store.close()
    again = reopen()
    assert again.changes_since(again.version - 1) is None  # the feed is memory only


def test_expiry_is_in_the_feed(store: Store) -> None:
    store.create([_rule("t", ttl=5)], actor="t", now=T0)
    change = store.expire(T0 + timedelta(seconds=10))
    assert store.changes_since(1) == (2, [change])
    assert change.actor == "breakwater-controller"


def test_update_nodes_one_transaction(store: Store) -> None:
    store.register_node("n1", {"site": "fra1"}, {}, now=T0)
    store.register_node("n2", {}, {}, now=T0)
    later = T0 + timedelta(seconds=3)
    out = store.update_nodes({"n1": {"applied_version": 4, "applied_time": later},
                              "n2": {"connected": False}}, now=later)
    assert [n.node_id for n in out] == ["n1", "n2"]
    assert store.node("n1").applied_version == 4 and store.node("n1").last_heartbeat == later
    assert store.node("n2").connected is False and store.node("n1").connected is True
    with pytest.raises(NotFoundError):
        store.update_nodes({"n1": {"applied_version": 5}, "ghost": {"connected": False}})
    with pytest.raises(FieldError):
        store.update_nodes({"n1": {"labels": {}}})
    assert store.node("n1").applied_version == 4  # nothing written by either
    assert store.update_nodes({}) == []


def test_update_nodes_is_durable(store: Store, reopen: Callable[[], Store]) -> None:
    store.register_node("n1", {}, {}, now=T0)
    store.update_nodes({"n1": {"last_error": {"code": "APPLY_ERROR_CODE_CAPACITY", "message": "full"},
                               "target_version": 9}}, now=datetime(2026, 12, 1, 13, tzinfo=UTC))
    store.close()
    again = reopen()
    node = again.node("n1")
    assert node.target_version == 9 and node.last_error == {"code": "APPLY_ERROR_CODE_CAPACITY",
                                                            "message": "full"}


def test_reset_connections_owns_only_what_a_restart_ended(backend: Backend, store: Store) -> None:
    """SQLite (one controller per file): every node is marked disconnected,
    heartbeats kept. etcd: nothing to reset, a live controller's nodes stay
    connected (a dead one's go with its lease)."""
    store.register_node("n1", {}, {}, now=T0)
    store.register_node("n2", {}, {}, now=T0)
    store.update_nodes({"n2": {"connected": False}}, now=T0)
    other = backend.open()
    reset = other.reset_connections()
    if backend.kind == "sqlite":
        assert reset == 1
        assert [(n.node_id, n.connected, n.last_heartbeat) for n in other.nodes()] == [
            ("n1", False, T0), ("n2", False, T0)]
    else:
        assert reset == 0
        assert [(n.node_id, n.connected) for n in other.nodes()] == [("n1", True), ("n2", False)]
