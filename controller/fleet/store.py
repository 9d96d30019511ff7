"""The controller's state: one SQLite file (WAL) of rules, nodes, events and
an audit log.

Tables:

* ``rules``: every cluster rule in force (or expired but not yet swept),
  with its :class:`~controller.rules.scope.RuleScope`, the rule set version in
  which it last changed, its etag, and create/update times;
* ``nodes``: every agent that ever registered: labels, what it runs, the
  version it was sent and the version it applied, its last error, its last
  heartbeat;
* ``events``: attack and rule events (serialized ``breakwater.v1.Event``),
  numbered by one growing sequence;
* ``audit``: every rule change, who made it, when and why, with the rule
  before and after.

**Versions.** The rule set has one version that only grows: every change
(a create or a batch of them, an update, a delete, an expiry sweep) bumps
it by one, in the same transaction as the change and its audit rows, so the
version, the rules and the audit log can never disagree, even after kill -9.
A node's rule set at version N is the rules in force at N whose scope
selects it.

All reads are served from memory (loaded at open, kept in step with every
commit); writes go to SQLite first and update memory only once committed.
One lock serialises everything: gRPC handlers run on a thread pool.
sqlite errors become :class:`~controller.errors.StoreError` in :mod:`controller.sqlite`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Self

from ..errors import AlreadyExistsError, EtagMismatchError, FieldError, NotFoundError
from ..rules.model import Rule
from ..rules.scope import RuleScope, ScopedRule, check_labels, check_node_id
from ..sqlite import connect, converted, write_transaction

__all__ = [
    "CONTROLLER_ACTOR",
    "DB_NAME",
    "RECENT_CHANGES",
    "AuditAction",
    "AuditRow",
    "Change",
    "EventRow",
    "FleetStore",
    "NodeRecord",
    "StoreMemory",
]

DB_NAME: Final = "controller.db"
SCHEMA_VERSION: Final = 1
# How long a writer waits for another connection's lock (a CLI reading).
# The actor of the controller's own changes (expiry, promotions).
CONTROLLER_ACTOR: Final = "breakwater-controller"
RECENT_CHANGES: Final = 1024
"""Changes kept in memory for :meth:`FleetStore.changes_since` (the sync
hub reads what changed instead of the whole rule set)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, doc TEXT NOT NULL, version INTEGER NOT NULL,
    etag TEXT NOT NULL, create_time REAL NOT NULL, update_time REAL NOT NULL, expire_time REAL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, doc TEXT NOT NULL, create_time REAL NOT NULL,
    last_heartbeat REAL, connected INTEGER NOT NULL DEFAULT 0, target_version INTEGER NOT NULL DEFAULT 0,
    applied_version INTEGER NOT NULL DEFAULT 0, applied_time REAL, last_error TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, version INTEGER NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, rule_id TEXT NOT NULL, reason TEXT NOT NULL,
    before TEXT, after TEXT);
CREATE INDEX IF NOT EXISTS audit_rule ON audit (rule_id);
CREATE INDEX IF NOT EXISTS audit_version ON audit (version);
"""

AuditAction = Literal["create", "update", "delete", "expire"]


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _scope_doc(scope: RuleScope) -> str:
    return json.dumps({"labels": dict(scope.labels), "node": scope.node}, sort_keys=True)


def _scope_from(doc: str) -> RuleScope:
    data = json.loads(doc)
    return RuleScope(labels=tuple(sorted(data.get("labels", {}).items())), node=data.get("node"))


def _etag(rule_doc: str, scope_doc: str, version: int) -> str:
    digest = hashlib.sha256(f"{version}\0{scope_doc}\0{rule_doc}".encode()).hexdigest()
    return f'W/"{digest[:16]}"'


@dataclass(frozen=True)
class Change:
    """One committed change of the rule set: the version it made, the rules
    it created or updated (as stored) and the ids it removed."""

    version: int
    upserted: tuple[ScopedRule, ...] = ()
    removed: tuple[ScopedRule, ...] = ()
    actor: str = ""
    reason: str = ""


@dataclass(frozen=True)
class NodeRecord:
    """An agent as the controller knows it. ``doc`` holds what it reported
    at registration (agent version, mode, interfaces, capabilities) as plain
    JSON data; ``last_error`` is the error of its last NACK, cleared by an ACK."""

    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    doc: Mapping[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None
    last_heartbeat: datetime | None = None
    connected: bool = False
    target_version: int = 0
    applied_version: int = 0
    applied_time: datetime | None = None
    last_error: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        object.__setattr__(self, "labels", check_labels(self.labels))


@dataclass(frozen=True)
class EventRow:
    """One stored event: its sequence, time, node, kind (``attack`` or
    ``rule``) and the serialized ``breakwater.v1.Event``."""

    seq: int
    at: datetime
    node: str
    kind: str
    payload: bytes


@dataclass(frozen=True)
class AuditRow:
    """One audited rule change."""

    seq: int
    at: datetime
    version: int
    actor: str
    action: str
    rule_id: str
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.at.isoformat(timespec="milliseconds"),
                "version": self.version, "actor": self.actor, "action": self.action,
                "rule_id": self.rule_id, "reason": self.reason, "before": self.before,
                "after": self.after}


_NODE_COLUMNS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "connected": int,
    "target_version": int,
    "applied_version": int,
    "applied_time": _ts,
    "last_heartbeat": _ts,
    "last_error": lambda v: None if v is None else json.dumps(dict(v)),
}
"""The node fields update_node(s) may change, and each one's column value."""


def _node_row(node: NodeRecord) -> tuple[Any, ...]:
    return (node.node_id, json.dumps(dict(node.labels)), json.dumps(dict(node.doc)),
            _ts(node.create_time), _ts(node.last_heartbeat), int(node.connected), node.target_version,
            node.applied_version, _ts(node.applied_time),
            None if node.last_error is None else json.dumps(dict(node.last_error)))


def _audit_doc(rule: ScopedRule | None) -> str | None:
    if rule is None:
        return None
    return json.dumps({"rule": rule.rule.to_dict(), "scope": json.loads(_scope_doc(rule.scope)),
                       "version": rule.version})


class StoreMemory:
    """What both controller stores keep in memory and serve reads from: the
    rules by id, the rule-set version, the recent changes (the sync hub's
    delta feed) and the nodes, under one lock. :class:`FleetStore` (SQLite)
    and :class:`~controller.fleet.etcdstore.EtcdStore` set these attributes in
    their ``__init__``, keep them current with their writes, and implement
    ``close`` and ``delete``."""

    _lock: threading.RLock
    _changed: threading.Condition
    _version: int
    _recent: deque[Change]
    _rules: dict[str, ScopedRule]
    _nodes: dict[str, NodeRecord]

    def close(self) -> None:
        raise NotImplementedError

    def _check_new(self, rules: Sequence[ScopedRule]) -> None:
        """AlreadyExistsError for the first rule id that is stored already or
        repeats in ``rules`` (the caller holds the lock)."""
        seen: set[str] = set()
        for i, r in enumerate(rules):
            if r.id in self._rules or r.id in seen:
                raise AlreadyExistsError(
                    f"rule {r.id!r} exists already" + (f" (request {i})" if len(rules) > 1 else "")
                    + "; update it, or delete it first", f"rules/{r.id}")
            seen.add(r.id)

    def delete(self, rule_ids: Sequence[str], *, etag: str = "", actor: str, reason: str = "",
               allow_missing: bool = False, action: AuditAction = "delete",
               now: datetime | None = None) -> Change:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        """The rule set's current version (0: nothing ever changed)."""
        with self._lock:
            return self._version

    def wait_version(self, after: int, timeout: float) -> int:
        """Block until the version exceeds ``after`` or ``timeout`` seconds
        pass; returns the version then (the sync streams wait here)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version > after, timeout=timeout)
            return self._version

    def changes_since(self, after: int) -> tuple[int, list[Change]] | None:
        """The changes committed after version ``after``, oldest first, and
        the version they reach, read together; from memory (the last
        :data:`RECENT_CHANGES`). None when they are not all there (``after``
        is too old, or not a version of this store): read a snapshot."""
        with self._lock:
            version = self._version
            if after == version:
                return version, []
            if after > version:
                return None
            recent = [c for c in self._recent if c.version > after]
        if not recent or recent[0].version != after + 1:
            return None
        return version, recent

    def get(self, rule_id: str) -> ScopedRule:
        with self._lock:
            found = self._rules.get(rule_id)
        if found is None:
            raise NotFoundError(f"rule {rule_id!r} does not exist", f"rules/{rule_id}")
        return found

    def rules(self, *, now: datetime | None = None, include_expired: bool = False) -> list[ScopedRule]:
        """Every stored rule, sorted by id; expired ones only if asked."""
        with self._lock:
            out = sorted(self._rules.values(), key=lambda r: r.id)
        if include_expired:
            return out
        at = now or datetime.now(UTC)
        return [r for r in out if r.rule.is_active(at)]

    def snapshot(self, *, include_expired: bool = False) -> tuple[int, list[ScopedRule]]:
        """The version and the rules in force at it (sorted by id; with the
        expired but unswept ones if asked), read together."""
        with self._lock:
            version = self._version
            rules = sorted(self._rules.values(), key=lambda r: r.id)
        if include_expired:
            return version, rules
        now = datetime.now(UTC)
        return version, [r for r in rules if r.rule.is_active(now)]

    def for_node(self, node_id: str, labels: Mapping[str, str], *,
                 now: datetime | None = None) -> tuple[int, list[ScopedRule]]:
        """(version, the rules in force at it whose scope selects the node)."""
        version, rules = self.snapshot()
        at = now or datetime.now(UTC)
        return version, [r for r in rules if r.scope.applies_to(node_id, labels) and r.rule.is_active(at)]

    def expire(self, now: datetime | None = None) -> Change:
        """Remove every rule whose expiry has passed, as one version (audited
        as ``expire`` by the controller). No expired rule: no new version."""
        at = now or datetime.now(UTC)
        with self._lock:
            due = [r.id for r in self._rules.values() if not r.rule.is_active(at)]
        return self.delete(due, actor=CONTROLLER_ACTOR, reason="expired", allow_missing=True,
                           action="expire", now=at)


class FleetStore(StoreMemory):
    """The controller's SQLite database. Thread-safe (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._recent: deque[Change] = deque(maxlen=RECENT_CHANGES)
        self._db = connect(path, shared=True)
        with converted(f"{path}: open"):
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            self._version = int(row[0])
            self._rules: dict[str, ScopedRule] = {}
            for rid, scope, doc, version, etag, created, updated, _exp in self._db.execute(
                    "SELECT id, scope, doc, version, etag, create_time, update_time, expire_time FROM rules"):
                self._rules[rid] = ScopedRule(Rule.from_dict(json.loads(doc)), _scope_from(scope), version,
                                              etag, _dt(created), _dt(updated))
            self._nodes: dict[str, NodeRecord] = {}
            for r in self._db.execute(
                    "SELECT id, labels, doc, create_time, last_heartbeat, connected, target_version, "
                    "applied_version, applied_time, last_error FROM nodes"):
                self._nodes[r[0]] = NodeRecord(r[0], json.loads(r[1]), json.loads(r[2]), _dt(r[3]), _dt(r[4]),
                                               bool(r[5]), r[6], r[7], _dt(r[8]),
                                               None if r[9] is None else json.loads(r[9]))

    @classmethod
    def open(cls, state_dir: Path) -> FleetStore:
        return cls(state_dir / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        with converted(f"{self.path}: {what}"), write_transaction(self._db) as db:
            yield db

    # -- rules: reads --

    # -- rules: writes --

    def _stored(self, rule: ScopedRule, version: int, now: datetime,
                created: datetime | None) -> tuple[ScopedRule, tuple[Any, ...]]:
        doc = json.dumps(rule.rule.to_dict(), sort_keys=True)
        scope = _scope_doc(rule.scope)
        etag = _etag(doc, scope, version)
        out = ScopedRule(rule.rule, rule.scope, version, etag, created or now, now)
        row = (rule.id, scope, doc, version, etag, (created or now).timestamp(), now.timestamp(),
               _ts(rule.rule.expires_at))
        return out, row

    def _bump(self, db: sqlite3.Connection) -> int:
        version = self._version + 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
        return version

    def _audit(self, db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        db.executemany("INSERT INTO audit (at, version, actor, action, rule_id, reason, before, after) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def create(self, rules: Sequence[ScopedRule], *, actor: str, reason: str = "",
               now: datetime | None = None) -> Change:
        """Store new rules, all or none, as one version. A rule id that
        exists (or repeats in ``rules``) is :class:`AlreadyExistsError`."""
        at = now or datetime.now(UTC)
        with self._lock:
            self._check_new(rules)
            if not rules:
                return Change(self._version)
            with self._tx("create rules") as db:
                version = self._bump(db)
                stored = [self._stored(r, version, at, None) for r in rules]
                db.executemany("INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               [row for _, row in stored])
                # the audit's "after" from the row's own JSON: no second to_dict/dumps per rule
                self._audit(db, [(at.timestamp(), version, actor, "create", s.id, reason, None,
                                  f'{{"rule": {row[2]}, "scope": {row[1]}, "version": {version}}}')
                                 for s, row in stored])
            self._version = version
            for s, _ in stored:
                self._rules[s.id] = s
            change = Change(version, tuple(s for s, _ in stored), (), actor, reason)
            self._changed.notify_all()
            self._recent.append(change)
            return change

    def update(self, rule: ScopedRule, *, etag: str = "", actor: str, reason: str = "",
               now: datetime | None = None) -> Change:
        """Replace a rule whole (the caller applied any update mask). A
        non-empty ``etag`` must be the stored one (:class:`EtagMismatchError`)."""
        at = now or datetime.now(UTC)
        with self._lock:
            old = self._rules.get(rule.id)
            if old is None:
                raise NotFoundError(f"rule {rule.id!r} does not exist", f"rules/{rule.id}")
            if etag and etag != old.etag:
                raise EtagMismatchError(
                    f"rule {rule.id!r} changed since it was read (etag {etag}, now {old.etag}); "
                    "get it again and retry", f"rules/{rule.id}")
            with self._tx("update rule") as db:
                version = self._bump(db)
                new, row = self._stored(rule, version, at, old.create_time)
                db.execute("INSERT OR REPLACE INTO rules VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._audit(db, [(at.timestamp(), version, actor, "update", rule.id, reason, _audit_doc(old),
                                  _audit_doc(new))])
            self._version = version
            self._rules[rule.id] = new
            change = Change(version, (new,), (), actor, reason)
            self._changed.notify_all()
            self._recent.append(change)
            return change

    def delete(self, rule_ids: Sequence[str], *, etag: str = "", actor: str, reason: str = "",
               allow_missing: bool = False, action: AuditAction = "delete",
               now: datetime | None = None) -> Change:
        """Remove rules, all or none, as one version. A missing id is
        :class:`NotFoundError` unless ``allow_missing``; ``etag`` (one id
        only) must match."""
        at = now or datetime.now(UTC)
        with self._lock:
            gone: list[ScopedRule] = []
            for rid in dict.fromkeys(rule_ids):
                old = self._rules.get(rid)
                if old is None:
                    if allow_missing:
                        continue
                    raise NotFoundError(f"rule {rid!r} does not exist", f"rules/{rid}")
                if etag and etag != old.etag:
                    raise EtagMismatchError(
                        f"rule {rid!r} changed since it was read (etag {etag}, now {old.etag}); "
                        "get it again and retry", f"rules/{rid}")
                gone.append(old)
            if not gone:
                return Change(self._version)
            with self._tx("delete rules") as db:
                version = self._bump(db)
                db.executemany("DELETE FROM rules WHERE id = ?", [(r.id,) for r in gone])
                self._audit(db, [(at.timestamp(), version, actor, action, r.id, reason, _audit_doc(r), None)
                                 for r in gone])
            self._version = version
            for r in gone:
                del self._rules[r.id]
            change = Change(version, (), tuple(gone), actor, reason)
            self._changed.notify_all()
            self._recent.append(change)
            return change

    def audit(self, *, rule_id: str | None = None, limit: int = 100) -> list[AuditRow]:
        """The newest ``limit`` audit rows (of one rule if given), oldest first."""
        sql = "SELECT seq, at, version, actor, action, rule_id, reason, before, after FROM audit"
        args: tuple[Any, ...] = ()
        if rule_id is not None:
            sql += " WHERE rule_id = ?"
            args = (rule_id,)
        with self._lock, converted(f"{self.path}: read audit"):
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [AuditRow(r[0], datetime.fromtimestamp(r[1], UTC), r[2], r[3], r[4], r[5], r[6],
                         None if r[7] is None else json.loads(r[7]),
                         None if r[8] is None else json.loads(r[8])) for r in reversed(rows)]

    def version_time(self, version: int) -> datetime | None:
        """When ``version`` was committed (its audit rows' time); None for 0 or
        a version not in the audit log. NodeService measures lag from it."""
        if version <= 0:
            return None
        with self._lock, converted(f"{self.path}: read audit"):
            row = self._db.execute("SELECT MIN(at) FROM audit WHERE version = ?", (version,)).fetchone()
        return None if row is None or row[0] is None else datetime.fromtimestamp(row[0], UTC)

    # -- nodes --

    def node(self, node_id: str) -> NodeRecord:
        with self._lock:
            found = self._nodes.get(node_id)
        if found is None:
            raise NotFoundError(f"node {node_id!r} has never registered", f"nodes/{node_id}")
        return found

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.node_id)

    def _put_node(self, node: NodeRecord) -> NodeRecord:
        with self._lock, self._tx("write node") as db:
            db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _node_row(node))
            self._nodes[node.node_id] = node
        return node

    def register_node(self, node_id: str, labels: Mapping[str, str], doc: Mapping[str, Any], *,
                      now: datetime | None = None) -> NodeRecord:
        """Record a registration: labels and report replaced, connected,
        heartbeat now; versions and the first-seen time kept."""
        at = now or datetime.now(UTC)
        with self._lock:
            old = self._nodes.get(node_id)
            base = old or NodeRecord(node_id, create_time=at)
            return self._put_node(replace(base, labels=dict(labels), doc=dict(doc), last_heartbeat=at,
                                          connected=True))

    def delete_node(self, node_id: str) -> NodeRecord:
        """Forget a node; NotFoundError if unknown. Returns it as it was."""
        with self._lock:
            old = self.node(node_id)
            with self._tx("delete node") as db:
                db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            self._nodes.pop(node_id, None)
        return old

    def update_node(self, node_id: str, *, now: datetime | None = None, **changes: Any) -> NodeRecord:
        """Change some fields of a node (``connected``, ``target_version``,
        ``applied_version``, ``last_error``, ...); ``last_heartbeat`` is set
        to now unless given."""
        at = now or datetime.now(UTC)
        allowed = {"connected", "target_version", "applied_version", "applied_time", "last_error",
                   "last_heartbeat"}
        unknown = set(changes) - allowed
        if unknown:
            raise FieldError(sorted(unknown)[0], f"not a node field; known: {', '.join(sorted(allowed))}")
        with self._lock:
            old = self.node(node_id)
            changes.setdefault("last_heartbeat", at)
            return self._put_node(replace(old, **changes))

    def update_nodes(self, changes: Mapping[str, Mapping[str, Any]], *,
                     now: datetime | None = None) -> list[NodeRecord]:
        """:meth:`update_node` for many nodes in one transaction, all or none
        (the sync hub writes every node's state this way, in batches): only
        the changed columns are written. An unknown node or field is refused
        before anything is written."""
        at = now or datetime.now(UTC)
        with self._lock:
            new: list[NodeRecord] = []
            by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for node_id, fields_ in changes.items():
                unknown = set(fields_) - _NODE_COLUMNS.keys()
                if unknown:
                    raise FieldError(sorted(unknown)[0],
                                     f"not a node field; known: {', '.join(sorted(_NODE_COLUMNS))}")
                values = {"last_heartbeat": at, **fields_}
                old = self.node(node_id)
                record = object.__new__(NodeRecord)  # the store's own fields: no re-validation
                record.__dict__.update(old.__dict__)
                record.__dict__.update(values)
                new.append(record)
                names = tuple(sorted(values))
                by_columns.setdefault(names, []).append(
                    (*(_NODE_COLUMNS[n](values[n]) for n in names), node_id))
            if not new:
                return []
            with self._tx("write nodes") as db:
                for names, rows in by_columns.items():
                    sets = ", ".join(f"{n} = ?" for n in names)
                    db.executemany(f"UPDATE nodes SET {sets} WHERE id = ?", rows)
            for n in new:
                self._nodes[n.node_id] = n
        return new

    @contextlib.contextmanager
    def fenced(self, token: int) -> Iterator[None]:
        """The leader's writes: nothing to fence, one controller serves the file."""
        yield

    def reset_connections(self) -> int:
        """Mark every node disconnected (heartbeats kept): one controller
        serves an SQLite file, so at its start no stream is open. Returns how
        many nodes were marked."""
        with self._lock:
            stale = {n.node_id: {"connected": False, "last_heartbeat": n.last_heartbeat}
                     for n in self._nodes.values() if n.connected}
            self.update_nodes(stale)
        return len(stale)

    # -- events --

    def add_events(self, rows: Sequence[tuple[datetime, str, str, bytes]]) -> list[int]:
        """Store events ``(time, node, kind, payload)``; returns their sequences."""
        with self._lock, self._tx("write events") as db:
            seqs = []
            for at, node, kind, payload in rows:
                cur = db.execute("INSERT INTO events (at, node, kind, payload) VALUES (?, ?, ?, ?)",
                                 (at.timestamp(), node, kind, payload))
                seqs.append(int(cur.lastrowid or 0))
            return seqs

    def events(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
               newest_first: bool = False) -> list[EventRow]:
        """Events with ``after_seq < seq < before_seq``: the oldest ``limit``
        (or the newest, ``newest_first``)."""
        sql = "SELECT seq, at, node, kind, payload FROM events WHERE seq > ?"
        args: list[Any] = [after_seq]
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        with self._lock, converted(f"{self.path}: read events"):
            rows = self._db.execute(sql, args).fetchall()
        return [EventRow(r[0], datetime.fromtimestamp(r[1], UTC), r[2], r[3], bytes(r[4])) for r in rows]

    def last_event_seq(self) -> int:
        with self._lock, converted(f"{self.path}: read events"):
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def prune_events(self, keep: int) -> int:
        """Keep the newest ``keep`` events; returns how many were removed."""
        with self._lock, self._tx("prune events") as db:
            cur = db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (keep,))
            return cur.rowcount
