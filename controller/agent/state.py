"""The agent's local state: one SQLite file (``<state_dir>/agent.db``, WAL).

Tables, per interface:

* ``manual_rules``: the operator's rule set (JSON of :meth:`RuleSet.to_dict`);
* ``auto_rules``: the automatic rules in force, each with its expiry, so a
  restarted agent keeps them and lets them expire on time;
* ``baselines``: the detector's learned baselines (JSON);
* ``events``: attack event history (started / ended / rule changes);
* ``meta``: the schema version, and per interface the number of the last
  attack id issued (``attack_ids/<ifname>``, written with the events that
  carry the ids), so a restarted detector's ids never repeat.

Node-wide, for the controller sync (:mod:`controller.agent.sync`):

* ``controller_rules``: the rule layer the controller pushed, one row per
  rule (its wire form as JSON text, opaque here), with the layer's version
  in ``meta`` (``controller_version``): what a restarted agent, or one cut
  off from its controller, keeps enforcing;
* ``rule_events``: changes the agent made to its own rules (automatic rules
  created and removed, manual rules edited through the local API), each a
  JSON document. Attack and rule events share one sequence (``seq``, unique
  and increasing across both tables): the agent's event log, which its
  local EventService pages through and the sync client delivers in order;
* the sync cursor in ``meta`` (``sync_events_seq``): the sequence of the
  last event delivered to the controller.

One interval's writes go in one transaction (:meth:`Store.commit_interval`).
sqlite errors become :class:`~controller.errors.StoreError` in :mod:`controller.sqlite`.

Schema versions: 1 had no controller tables; 2 adds them. Opening a
version-1 file creates the new tables (nothing else changes), so an agent
upgraded in place keeps its state; a file of a newer version than this
build knows is refused rather than half understood.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ..detection.events import AttackEvent
from ..errors import StoreError
from ..rules.model import Rule, RuleSet
from ..sqlite import connect, converted, write_transaction

__all__ = [
    "DB_NAME",
    "ControllerLayerRows",
    "EventRow",
    "RuleEventRow",
    "Store",
    "StoredEvent",
]

DB_NAME: Final = "agent.db"
SCHEMA_VERSION: Final = 2
# meta keys of the controller sync
CONTROLLER_VERSION_KEY: Final = "controller_version"
CURSOR_KEY: Final = "sync_events_seq"
# How long a writer waits for another connection's lock (the CLI reading events).

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS manual_rules (ifname TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auto_rules (
    ifname TEXT NOT NULL, id TEXT NOT NULL, expires_at REAL, doc TEXT NOT NULL,
    PRIMARY KEY (ifname, id));
CREATE TABLE IF NOT EXISTS baselines (ifname TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, ifname TEXT NOT NULL,
    attack_id TEXT NOT NULL, kind TEXT NOT NULL, vector TEXT NOT NULL, victim TEXT,
    profile TEXT NOT NULL, pps REAL NOT NULL, peak_pps REAL NOT NULL, rules TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS controller_rules (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rule_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, ifname TEXT NOT NULL,
    rule_id TEXT NOT NULL, kind TEXT NOT NULL, doc TEXT NOT NULL);
"""




@dataclass(frozen=True)
class EventRow:
    """One stored attack event."""

    seq: int
    at: float  # wall clock, seconds since the epoch
    ifname: str
    attack_id: str
    kind: str
    vector: str
    victim: str | None
    profile: str
    pps: float
    peak_pps: float
    rules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds"),
            "interface": self.ifname, "attack_id": self.attack_id, "kind": self.kind,
            "vector": self.vector, "victim": self.victim, "profile": self.profile,
            "pps": self.pps, "peak_pps": self.peak_pps, "rules": list(self.rules),
        }


@dataclass(frozen=True)
class StoredEvent:
    """One ``events`` row in full, for delivery to the controller: ``doc``
    is the detector's :meth:`AttackEvent.to_dict`."""

    seq: int
    at: float
    ifname: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class RuleEventRow:
    """One change the agent made to its own rules. ``kind`` is created,
    updated, deleted or expired; ``doc`` holds ``rule`` (the rule's
    :meth:`Rule.to_dict`, before the change for deleted and expired),
    ``actor`` and, for a detector's rule, ``attack_id``."""

    seq: int
    at: float
    ifname: str
    rule_id: str
    kind: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class ControllerLayerRows:
    """The controller's rule layer as stored: its version and each rule's
    document by rule id (0 and empty: the agent holds none)."""

    version: int
    docs: dict[str, str]


class Store:
    """The agent's SQLite database. One connection, used by one thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._db = connect(path, readonly=readonly)
        if not readonly:
            with converted(f"{path}: open"):
                self._migrate()

    def _migrate(self) -> None:
        """Create what is missing; refuse a file from a newer build."""
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        found = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        if found > SCHEMA_VERSION:
            self._db.close()
            raise StoreError(f"{self.path}: schema version {found} is newer than this Breakwater's "
                             f"({SCHEMA_VERSION}); upgrade Breakwater or move the file aside")
        self._db.executescript(_SCHEMA)  # every statement is IF NOT EXISTS: additive
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False) -> Store:
        return cls(state_dir / DB_NAME, readonly=readonly)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        with converted(f"{self.path}: {what}"), write_transaction(self._db) as db:
            yield db

    # -- manual rules --

    def manual_rules(self, ifname: str) -> RuleSet | None:
        with converted(f"{self.path}: read manual rules"):
            row = self._db.execute("SELECT doc FROM manual_rules WHERE ifname = ?", (ifname,)).fetchone()
        return None if row is None else RuleSet.from_dict(json.loads(row[0]))

    def set_manual_rules(self, ifname: str, rules: RuleSet) -> None:
        with self._tx("write manual rules") as db:
            db.execute("INSERT OR REPLACE INTO manual_rules VALUES (?, ?)",
                       (ifname, json.dumps(rules.to_dict())))

    # -- automatic rules, baselines, events --

    def auto_rules(self, ifname: str) -> tuple[Rule, ...]:
        with converted(f"{self.path}: read automatic rules"):
            rows = self._db.execute("SELECT doc FROM auto_rules WHERE ifname = ? ORDER BY id",
                                    (ifname,)).fetchall()
        return tuple(Rule.from_dict(json.loads(r[0])) for r in rows)

    def baselines(self, ifname: str) -> dict[str, dict[str, float]]:
        with converted(f"{self.path}: read baselines"):
            row = self._db.execute("SELECT doc FROM baselines WHERE ifname = ?", (ifname,)).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def attack_ids(self, ifname: str) -> int:
        """The number of the last attack id issued on ``ifname`` (0: none yet)."""
        with converted(f"{self.path}: read attack ids"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?",
                                   (f"attack_ids/{ifname}",)).fetchone()
        return 0 if row is None else int(row[0])

    def commit_interval(
        self,
        ifname: str,
        *,
        auto_rules: Sequence[Rule] | None = None,
        baselines: Mapping[str, Mapping[str, float]] | None = None,
        events: Sequence[AttackEvent] = (),
        rule_events: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
        attack_ids: int | None = None,
        at: float | None = None,
    ) -> None:
        """One interval's state in one transaction (None: leave that part as
        it is). ``rule_events`` are ``(rule_id, kind, doc)`` (see
        :class:`RuleEventRow`)."""
        when = time.time() if at is None else at
        with self._tx("write interval") as db:
            if attack_ids is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           (f"attack_ids/{ifname}", str(attack_ids)))
            if auto_rules is not None:
                db.execute("DELETE FROM auto_rules WHERE ifname = ?", (ifname,))
                db.executemany(
                    "INSERT INTO auto_rules VALUES (?, ?, ?, ?)",
                    [(ifname, r.id, r.expires_at.timestamp() if r.expires_at else None,
                      json.dumps(r.to_dict())) for r in auto_rules])
            if baselines is not None:
                db.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?)",
                           (ifname, json.dumps(baselines)))
            if events:
                first = _last_seq(db) + 1  # one sequence with rule_events
                db.executemany(
                    "INSERT INTO events (seq, at, ifname, attack_id, kind, vector, victim, profile, pps, "
                    "peak_pps, rules, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(first + i, when, ifname, e.id, e.kind, e.vector,
                      None if e.victim is None else str(e.victim), e.profile, e.pps, e.peak_pps,
                      json.dumps(list(e.applied)), json.dumps(e.to_dict()))
                     for i, e in enumerate(events)])
            _insert_rule_events(db, when, ifname, rule_events)

    def events(self, limit: int = 50) -> list[EventRow]:
        """The most recent ``limit`` events, oldest first."""
        with converted(f"{self.path}: read events"):
            rows = self._db.execute(
                "SELECT seq, at, ifname, attack_id, kind, vector, victim, profile, pps, peak_pps, rules "
                "FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [EventRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                         tuple(json.loads(r[10]))) for r in reversed(rows)]

    def prune_events(self, keep: int) -> int:
        """Keep the events of the newest ``keep`` sequence numbers (attack and
        rule events share them); returns how many were removed."""
        with self._tx("prune events") as db:
            last = _last_seq(db)
            removed = 0
            for table in ("events", "rule_events"):
                removed += db.execute(f"DELETE FROM {table} WHERE seq <= ?", (last - keep,)).rowcount
            return removed

    # -- the event log: attack and rule events, one sequence --

    def events_after(self, seq: int, limit: int) -> list[StoredEvent | RuleEventRow]:
        """Up to ``limit`` events of either kind with a sequence above ``seq``, oldest first."""
        return self._log("seq > ?", seq, limit, "ASC")

    def events_before(self, seq: int | None, limit: int) -> list[StoredEvent | RuleEventRow]:
        """Up to ``limit`` events of either kind with a sequence below ``seq``
        (None: the newest), newest first."""
        return self._log("seq < ?", (1 << 63) - 1 if seq is None else seq, limit, "DESC")

    def _log(self, where: str, seq: int, limit: int, order: str) -> list[StoredEvent | RuleEventRow]:
        # One statement, so both tables are read at one snapshot: a reader
        # must never see a rule event without the attack events committed
        # before it, or its cursor would pass them by.
        with converted(f"{self.path}: read events"):
            rows = self._db.execute(
                f"SELECT seq, at, ifname, NULL, NULL, doc FROM events WHERE {where} "
                f"UNION ALL SELECT seq, at, ifname, rule_id, kind, doc FROM rule_events WHERE {where} "
                f"ORDER BY seq {order} LIMIT ?", (seq, seq, limit)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], json.loads(r[5])) if r[3] is None
                else RuleEventRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def last_event_seq(self) -> int:
        """The newest sequence of either kind (0: none yet)."""
        with converted(f"{self.path}: read events"):
            return _last_seq(self._db)

    def add_rule_events(self, ifname: str, rule_events: Sequence[tuple[str, str, Mapping[str, Any]]],
                        at: float | None = None) -> None:
        """Log changes the agent made to its rules outside an interval (the local API)."""
        with self._tx("write rule events") as db:
            _insert_rule_events(db, time.time() if at is None else at, ifname, rule_events)

    # -- the controller sync --

    def sync_cursor(self) -> int | None:
        """The sequence of the last event delivered to the controller; None
        before this store was ever synced."""
        with converted(f"{self.path}: read sync cursor"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
        return None if row is None else int(row[0])

    def set_sync_cursor(self, seq: int) -> None:
        with self._tx("write sync cursor") as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CURSOR_KEY, str(int(seq))))

    def controller_layer(self) -> ControllerLayerRows:
        """The controller's rule layer as last stored."""
        with converted(f"{self.path}: read controller rules"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?",
                                   (CONTROLLER_VERSION_KEY,)).fetchone()
            docs = dict(self._db.execute("SELECT id, doc FROM controller_rules ORDER BY id").fetchall())
        return ControllerLayerRows(int(row[0]) if row else 0, docs)

    def set_controller_layer(self, version: int, upserts: Mapping[str, str], removed: Sequence[str] = (),
                             *, replace_all: bool = False) -> None:
        """Store version ``version`` of the controller's layer in one
        transaction: the whole layer (``replace_all``) or a change to the stored one."""
        with self._tx("write controller rules") as db:
            if replace_all:
                db.execute("DELETE FROM controller_rules")
            db.executemany("DELETE FROM controller_rules WHERE id = ?", [(r,) for r in removed])
            db.executemany("INSERT OR REPLACE INTO controller_rules VALUES (?, ?)", list(upserts.items()))
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       (CONTROLLER_VERSION_KEY, str(int(version))))


def _last_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), "
                     "COALESCE((SELECT MAX(seq) FROM rule_events), 0))").fetchone()
    return int(row[0])


def _insert_rule_events(db: sqlite3.Connection, when: float, ifname: str,
                        rule_events: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
    if not rule_events:
        return
    first = _last_seq(db) + 1
    db.executemany("INSERT INTO rule_events (seq, at, ifname, rule_id, kind, doc) VALUES (?, ?, ?, ?, ?, ?)",
                   [(first + i, when, ifname, rid, kind, json.dumps(dict(doc)))
                    for i, (rid, kind, doc) in enumerate(rule_events)])
