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

One interval's writes go in one transaction (:meth:`Store.commit_interval`).
sqlite errors are converted here, once, into :class:`StoreError`.
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

from .detect import AttackEvent
from .errors import BreakwaterError
from .rules import Rule, RuleSet

__all__ = ["DB_NAME", "EventRow", "Store", "StoreError"]

DB_NAME: Final = "agent.db"
SCHEMA_VERSION: Final = 1
# How long a writer waits for another connection's lock (the CLI reading events).
BUSY_TIMEOUT_SECONDS: Final = 5.0

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
"""


class StoreError(BreakwaterError):
    """The state database could not be read or written."""


@contextlib.contextmanager
def _converted(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


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


class Store:
    """The agent's SQLite database. One connection, used by one thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        with _converted(f"{path}: open"):
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                           timeout=BUSY_TIMEOUT_SECONDS)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

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
        with _converted(f"{self.path}: {what}"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- manual rules --

    def manual_rules(self, ifname: str) -> RuleSet | None:
        with _converted(f"{self.path}: read manual rules"):
            row = self._db.execute("SELECT doc FROM manual_rules WHERE ifname = ?", (ifname,)).fetchone()
        return None if row is None else RuleSet.from_dict(json.loads(row[0]))

    def set_manual_rules(self, ifname: str, rules: RuleSet) -> None:
        with self._tx("write manual rules") as db:
            db.execute("INSERT OR REPLACE INTO manual_rules VALUES (?, ?)",
                       (ifname, json.dumps(rules.to_dict())))

    # -- automatic rules, baselines, events --

    def auto_rules(self, ifname: str) -> tuple[Rule, ...]:
        with _converted(f"{self.path}: read automatic rules"):
            rows = self._db.execute("SELECT doc FROM auto_rules WHERE ifname = ? ORDER BY id",
                                    (ifname,)).fetchall()
        return tuple(Rule.from_dict(json.loads(r[0])) for r in rows)

    def baselines(self, ifname: str) -> dict[str, dict[str, float]]:
        with _converted(f"{self.path}: read baselines"):
            row = self._db.execute("SELECT doc FROM baselines WHERE ifname = ?", (ifname,)).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def attack_ids(self, ifname: str) -> int:
        """The number of the last attack id issued on ``ifname`` (0: none yet)."""
        with _converted(f"{self.path}: read attack ids"):
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
        attack_ids: int | None = None,
        at: float | None = None,
    ) -> None:
        """One interval's state in one transaction (None: leave that part as it is)."""
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
            db.executemany(
                "INSERT INTO events (at, ifname, attack_id, kind, vector, victim, profile, pps, "
                "peak_pps, rules, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(when, ifname, e.id, e.kind, e.vector, None if e.victim is None else str(e.victim),
                  e.profile, e.pps, e.peak_pps, json.dumps(list(e.applied)), json.dumps(e.to_dict()))
                 for e in events])

    def events(self, limit: int = 50) -> list[EventRow]:
        """The most recent ``limit`` events, oldest first."""
        with _converted(f"{self.path}: read events"):
            rows = self._db.execute(
                "SELECT seq, at, ifname, attack_id, kind, vector, victim, profile, pps, peak_pps, rules "
                "FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [EventRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                         tuple(json.loads(r[10]))) for r in reversed(rows)]

    def prune_events(self, keep: int) -> int:
        """Keep the newest ``keep`` events; returns how many were removed."""
        with self._tx("prune events") as db:
            cur = db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (keep,))
            return cur.rowcount
