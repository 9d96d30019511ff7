"""The store suite (controller.fleet.storeapi.Store), run against each
backend: SQLite in a real file, etcd on a real member. Every change one
version, all or nothing, durable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.errors import AlreadyExistsError, EtagMismatchError, NotFoundError
from controller.fleet.storeapi import Store
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import RuleScope, ScopedRule

from .conftest import Backend

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _rule(rid: str, src: str = "198.18.5.0/24", *, ttl: float | None = None,
          scope: RuleScope | None = None) -> ScopedRule:
    rule = Rule(rid, Match.from_dict({"src": [src]}), RuleAction("drop"),
                expires_at=T0 + timedelta(seconds=ttl) if ttl else None, origin="manual",
                created_by="soc")
    return ScopedRule(rule, scope or RuleScope())


def test_versions_grow_one_per_change(store: Store) -> None:
    assert store.version == 0
    c1 = store.create([_rule("a"), _rule("b")], actor="alice", reason="ticket 1", now=T0)
    assert c1.version == 1 and {r.id for r in c1.upserted} == {"a", "b"}
    assert all(r.version == 1 and r.etag and r.create_time == T0 for r in c1.upserted)
    a = store.get("a")
    c2 = store.update(replace_src(a, "198.18.6.0/24"), etag=a.etag, actor="bob", now=T0 + timedelta(1))
    assert c2.version == 2 and store.get("a").etag != a.etag
    assert store.get("a").create_time == T0 and store.get("a").update_time == T0 + timedelta(1)
    c3 = store.delete(["b"], actor="carol", now=T0)
    assert c3.version == 3 and [r.id for r in c3.removed] == ["b"]
    assert [r.id for r in store.rules(now=T0)] == ["a"]


def replace_src(r: ScopedRule, src: str) -> ScopedRule:
    rule = Rule(r.rule.id, Match.from_dict({"src": [src]}), r.rule.action, origin=r.rule.origin)
    return ScopedRule(rule, r.scope)


def test_batch_is_all_or_nothing(store: Store) -> None:
    store.create([_rule("a")], actor="x")
    with pytest.raises(AlreadyExistsError, match="'a' exists already"):
        store.create([_rule("new"), _rule("a")], actor="x")
    with pytest.raises(AlreadyExistsError, match="'dup'"):
        store.create([_rule("dup"), _rule("dup")], actor="x")
    assert [r.id for r in store.rules()] == ["a"] and store.version == 1
    with pytest.raises(NotFoundError):
        store.delete(["a", "missing"], actor="x")
    assert [r.id for r in store.rules()] == ["a"] and store.version == 1
    assert store.delete(["missing"], actor="x", allow_missing=True).version == 1  # no change, no version


def test_etag_mismatch_changes_nothing(store: Store) -> None:
    store.create([_rule("a")], actor="x")
    stale = store.get("a").etag
    store.update(replace_src(store.get("a"), "198.18.7.0/24"), actor="x")
    with pytest.raises(EtagMismatchError, match="changed since it was read"):
        store.update(replace_src(store.get("a"), "198.18.8.0/24"), etag=stale, actor="x")
    with pytest.raises(EtagMismatchError):
        store.delete(["a"], etag=stale, actor="x")
    assert str(store.get("a").rule.match.src[0]) == "198.18.7.0/24" and store.version == 2
    with pytest.raises(NotFoundError):
        store.update(_rule("nope"), actor="x")


def test_scopes_select_nodes(store: Store) -> None:
    store.create([_rule("g"), _rule("fra", scope=RuleScope.selecting({"site": "fra1"})),
                  _rule("one", scope=RuleScope.on_node("edge-2"))], actor="x")
    _, rules = store.for_node("edge-1", {"site": "fra1"})
    assert [r.id for r in rules] == ["fra", "g"]
    _, rules = store.for_node("edge-2", {"site": "ams1"})
    assert [r.id for r in rules] == ["g", "one"]


def test_expiry_sweep_is_one_audited_version(store: Store) -> None:
    store.create([_rule("short", ttl=10), _rule("long", ttl=3600), _rule("forever")], actor="x", now=T0)
    assert store.expire(T0 + timedelta(seconds=5)).version == 1  # nothing due: no version
    change = store.expire(T0 + timedelta(seconds=11))
    assert change.version == 2 and [r.id for r in change.removed] == ["short"]
    audit = store.audit(rule_id="short")
    assert [(a.action, a.actor, a.reason) for a in audit] == [("create", "x", ""),
                                                             ("expire", "breakwater-controller", "expired")]
    assert audit[-1].before is not None and audit[-1].after is None


def test_audit_records_who_what_why(store: Store) -> None:
    store.create([_rule("a")], actor="alice", reason="INC-42", now=T0)
    store.delete(["a"], actor="bob", reason="false positive", now=T0)
    rows = [a.to_dict() for a in store.audit()]
    assert [(r["actor"], r["action"], r["reason"], r["version"]) for r in rows] == [
        ("alice", "create", "INC-42", 1), ("bob", "delete", "false positive", 2)]
    assert rows[0]["after"]["rule"]["id"] == "a" and rows[1]["before"]["rule"]["id"] == "a"


def test_survives_kill_9(backend: Backend) -> None:
    """A writer process killed right after its commits: the next open sees every
    committed change, versions included."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from controller.fleet.storeapi import Store
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import ScopedRule
{backend.open_code()}for i in range(5):
    s.create([ScopedRule(Rule(f"r{{i}}", Match.from_dict({{}}), RuleAction("drop")))], actor="x")
s.register_node("edge-1", {{"site": "fra1"}}, {{"agent_version": "0.1"}})
s.update_node("edge-1", applied_version=5)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with backend.open() as again:
        assert again.version == 5 and [r.id for r in again.rules()] == [f"r{i}" for i in range(5)]
        assert again.node("edge-1").applied_version == 5
        assert again.node("edge-1").labels == {"site": "fra1"}
        assert len(again.audit()) == 5


def test_nodes(store: Store) -> None:
    with pytest.raises(NotFoundError, match="never registered"):
        store.node("edge-1")
    first = store.register_node("edge-1", {"site": "fra1"}, {"agent_version": "0.1"}, now=T0)
    assert first.connected and first.create_time == T0
    store.update_node("edge-1", target_version=3, applied_version=2, now=T0 + timedelta(seconds=1))
    again = store.register_node("edge-1", {"site": "fra2"}, {"agent_version": "0.2"}, now=T0 + timedelta(1))
    assert (again.create_time, again.target_version, again.applied_version) == (T0, 3, 2)
    assert again.labels == {"site": "fra2"}
    with pytest.raises(Exception, match="not a node field"):
        store.update_node("edge-1", labels={})


def test_delete_node(store: Store, reopen: Callable[[], Store]) -> None:
    store.register_node("edge-1", {}, {"certSerial": "1A"}, now=T0)
    store.register_node("edge-2", {}, {}, now=T0)
    gone = store.delete_node("edge-1")
    assert gone.doc == {"certSerial": "1A"}
    assert [n.node_id for n in store.nodes()] == ["edge-2"]
    with pytest.raises(NotFoundError):
        store.delete_node("edge-1")
    assert [n.node_id for n in reopen().nodes()] == ["edge-2"]


def test_events_page_by_sequence(store: Store) -> None:
    seqs = store.add_events([(T0, f"edge-{i % 3}", "attack", bytes([i])) for i in range(10)])
    assert seqs == list(range(1, 11)) and store.last_event_seq() == 10
    page = store.events(after_seq=0, limit=4)
    assert [e.seq for e in page] == [1, 2, 3, 4]
    assert [e.seq for e in store.events(after_seq=4, limit=4)] == [5, 6, 7, 8]
    assert [e.seq for e in store.events(newest_first=True, limit=3)] == [10, 9, 8]
    assert store.prune_events(3) == 7 and [e.seq for e in store.events()] == [8, 9, 10]
