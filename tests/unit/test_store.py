"""The agent's SQLite store: round trips, one transaction per interval, reopen."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.addresses import parse_prefix
from controller.agent.state import ControllerLayerRows, RuleEventRow, Store
from controller.detection.events import AttackEvent
from controller.errors import StoreError
from controller.rules.model import Match, Rule, RuleAction, RuleSet

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _rule(rid: str, expires: datetime | None = None, origin: str = "auto") -> Rule:
    return Rule(rid, Match(src=(parse_prefix("198.18.0.3"),)), RuleAction("drop"), priority=500,
                expires_at=expires, origin=origin)  # type: ignore[arg-type]


def _event(kind: str = "started", applied: tuple[str, ...] = ("auto-src-heavy-1",)) -> AttackEvent:
    return AttackEvent(id="heavy-1", kind=kind, vector="source_rate", victim=None,  # type: ignore[arg-type]
                       profile="concentrated", t=1.0, onset_at=0.0, started_at=1.0, ended_at=None,
                       pps=20000.0, bps=1e7, peak_pps=21000.0, peak_bps=1e7, dropped_pps=0.0,
                       threshold_pps=2000.0, baseline_pps=0.0, over_threshold=True, sources=1,
                       applied=applied)


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    manual = RuleSet.from_rules([_rule("keep-out", origin="manual")])
    auto = [_rule("auto-src-heavy-1", NOW + timedelta(seconds=30))]
    with Store.open(tmp_path) as store:
        store.set_manual_rules("bw0", manual)
        store.commit_interval("bw0", auto_rules=auto, baselines={"198.18.0.1": {"udp": 12.5}},
                              events=[_event()], at=NOW.timestamp())
    assert (tmp_path / "agent.db").exists()
    with Store.open(tmp_path) as store:
        assert store.manual_rules("bw0") == manual
        assert store.manual_rules("eth9") is None
        assert store.auto_rules("bw0") == tuple(auto)
        assert store.auto_rules("bw0")[0].expires_at == NOW + timedelta(seconds=30)
        assert store.baselines("bw0") == {"198.18.0.1": {"udp": 12.5}}
        rows = store.events(10)
        assert len(rows) == 1
        row = rows[0]
        assert (row.kind, row.vector, row.victim, row.peak_pps, row.rules) == (
            "started", "source_rate", None, 21000.0, ("auto-src-heavy-1",))
        assert row.to_dict()["time"].startswith("2026-01-01T12:00:00")
    mode = sqlite3.connect(tmp_path / "agent.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_partial_commits_and_replacement(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.commit_interval("bw0", auto_rules=[_rule("a"), _rule("b")])
        store.commit_interval("bw0", baselines={"198.18.0.1": {"packets": 1.0}})  # rules untouched
        assert [r.id for r in store.auto_rules("bw0")] == ["a", "b"]
        store.commit_interval("bw0", auto_rules=[_rule("b")])
        assert [r.id for r in store.auto_rules("bw0")] == ["b"]
        store.commit_interval("eth1", auto_rules=[_rule("c")])
        assert [r.id for r in store.auto_rules("bw0")] == ["b"]
        store.commit_interval("bw0", auto_rules=[])
        assert store.auto_rules("bw0") == ()


def test_events_order_limit_and_prune(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        for i in range(5):
            store.commit_interval("bw0", events=[replace(_event(), pps=float(i))], at=float(i))
        assert [r.pps for r in store.events(3)] == [2.0, 3.0, 4.0]
        assert store.prune_events(2) == 3
        assert [r.pps for r in store.events(10)] == [3.0, 4.0]


def test_attack_ids_are_stored_with_their_events_per_interface(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.attack_ids("bw0") == 0
        store.commit_interval("bw0", events=[_event()], attack_ids=7)
        store.commit_interval("bw0", baselines={})  # None: left as it is
        store.commit_interval("eth1", attack_ids=2)
    with Store.open(tmp_path) as store:
        assert (store.attack_ids("bw0"), store.attack_ids("eth1")) == (7, 2)


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.commit_interval("bw0", auto_rules=[_rule("a")])
        with pytest.raises(StoreError):
            # the same id twice violates the primary key: nothing of this interval is written
            store.commit_interval("bw0", auto_rules=[_rule("x"), _rule("x")], events=[_event()])
        assert [r.id for r in store.auto_rules("bw0")] == ["a"]
        assert store.events() == []


def test_readonly_missing_is_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store.open(tmp_path / "nowhere", readonly=True).events()


# --- schema 2: the controller layer, rule events, one event sequence ---------------------


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "agent.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE manual_rules (ifname TEXT PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE auto_rules (ifname TEXT NOT NULL, id TEXT NOT NULL, expires_at REAL,
                                 doc TEXT NOT NULL, PRIMARY KEY (ifname, id));
        CREATE TABLE baselines (ifname TEXT PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, ifname TEXT NOT NULL,
            attack_id TEXT NOT NULL, kind TEXT NOT NULL, vector TEXT NOT NULL, victim TEXT,
            profile TEXT NOT NULL, pps REAL NOT NULL, peak_pps REAL NOT NULL, rules TEXT NOT NULL,
            doc TEXT NOT NULL);
    """)
    db.execute("INSERT INTO manual_rules VALUES ('bw0', ?)",
               (RuleSet.from_rules([_rule("keep-out", origin="manual")]).dumps_json(),))
    db.commit()
    db.close()
    with Store.open(tmp_path) as store:
        assert [r.id for r in store.manual_rules("bw0") or ()] == ["keep-out"]  # kept
        assert store.controller_layer().version == 0 and store.sync_cursor() is None  # added
        store.commit_interval("bw0", events=[_event()])
        assert store.last_event_seq() == 1
    version = sqlite3.connect(tmp_path / "agent.db").execute(
        "SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert version == "2"


def test_a_file_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / "agent.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store.open(tmp_path)


def test_attack_and_rule_events_share_one_sequence(tmp_path: Path) -> None:
    doc = {"rule": _rule("auto-src-heavy-1").to_dict(), "actor": "detector", "attack_id": "heavy-1"}
    with Store.open(tmp_path) as store:
        store.commit_interval("bw0", events=[_event()], rule_events=[("auto-src-heavy-1", "created", doc)],
                              at=10.0)
        store.add_rule_events("bw0", [("manual-1", "deleted", {"rule": doc["rule"], "actor": "ops"})],
                              at=11.0)
        store.commit_interval("bw0", events=[_event("ended"), _event("ended")], at=12.0)
        rows = store.events_after(0, 10)
        assert [(r.seq, type(r).__name__) for r in rows] == [
            (1, "StoredEvent"), (2, "RuleEventRow"), (3, "RuleEventRow"), (4, "StoredEvent"),
            (5, "StoredEvent")]
        assert [r.seq for r in store.events_after(2, 2)] == [3, 4]
        assert [r.seq for r in store.events_before(None, 2)] == [5, 4]
        assert [r.seq for r in store.events_before(4, 10)] == [3, 2, 1]
        rule = rows[1]
        assert isinstance(rule, RuleEventRow)
        assert (rule.rule_id, rule.kind, rule.doc["attack_id"], rule.at) == (
            "auto-src-heavy-1", "created", "heavy-1", 10.0)
        assert store.last_event_seq() == 5
        assert [r.kind for r in store.events(10)] == ["started", "ended", "ended"]  # attack events only
        assert store.prune_events(2) == 3
        assert [r.seq for r in store.events_after(0, 10)] == [4, 5]


def test_controller_layer_and_sync_cursor(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.controller_layer() == ControllerLayerRows(0, {})
        store.set_controller_layer(3, {"a": "{A}", "b": "{B}"}, replace_all=True)
        store.set_controller_layer(4, {"c": "{C}", "a": "{A2}"}, ["b"])
        store.set_sync_cursor(17)
    with Store.open(tmp_path) as store:
        assert store.controller_layer() == ControllerLayerRows(4, {"a": "{A2}", "c": "{C}"})
        store.set_controller_layer(5, {"z": "{Z}"}, replace_all=True)
        assert store.controller_layer() == ControllerLayerRows(5, {"z": "{Z}"})
        assert store.sync_cursor() == 17
