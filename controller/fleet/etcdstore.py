"""The controller's store on etcd (:class:`EtcdStore`), for several
controllers over one etcd cluster; same contract as the SQLite
:class:`~controller.fleet.store.FleetStore` (:class:`~controller.fleet.storeapi.Store`).

Keys, under a prefix (``/breakwater/`` unless configured)::

    version                 the rule set's version (decimal)
    rules/<id>              a rule: its JSON, scope, version, etag, times
    audit/<version:020d>    the audit records of one change (actor, reason, rows)
    nodes/<id>              a node's registration and versions (JSON)
    alive/<id>/<lease>      present while the node has a stream to the
                            controller holding that lease (hex), on that lease
    leader                  the elected controller's name, on its lease
                            (:mod:`controller.fleet.leader`)
    eventseq                the last event's sequence
    events/<seq:020d>       one event (JSON, the payload in base64)

**One change, one transaction.** A create, update, delete or expiry sweep
writes its rules, the version key (+1) and its audit record in one etcd
transaction that holds only if the version key's ``mod_revision`` is the one
the change was checked against (and, for an update or delete, each rule's
``mod_revision`` too): two controllers can never interleave half-changes.
A controller whose check was stale catches up and checks again, so an
etag that no longer matches is :class:`~controller.errors.EtagMismatchError`
whichever controller changed the rule.

**Memory in step with etcd.** Everything but events and audit records is
read at open and then kept in step by one watch on the prefix, resumed from
the last revision applied. A write returns once the watch has applied its
revision, so a controller reads its own writes, and every controller builds
the same :class:`~controller.fleet.store.Change` feed from the same events.
If etcd compacted the revision to resume from, the store re-lists
everything and empties the feed (:meth:`changes_since` answers None, so the
sync hub sends snapshots): never a silent gap.

**Fenced writes.** The leader's singleton jobs (expiry, pruning, fleet
detection) write inside :meth:`fenced`: their transactions also compare
the leader key's ``create_revision`` with the election's token, so a
controller that lost the leadership cannot write as if it still held it.

**Liveness on leases.** Each store holds one lease (``lease_ttl`` seconds,
kept alive by a thread); a node it registers gets ``alive/<id>/<lease>`` on
that lease, and a node is connected while it has any such key. If the
controller dies, etcd deletes its keys when the lease expires and every
controller sees its nodes disconnected. A controller only writes and
deletes the keys of its own lease: a node that moved to another controller
stays connected when the first one notices its old stream ended, and that
controller does not rewrite the node's record either (the new one owns
it). A controller that starts has nothing to reset
(:meth:`EtcdStore.reset_connections` does nothing): the streams of a
controller that died end with its lease.

Limits: etcd refuses a transaction of more than ``--max-txn-ops`` (128 by
default) operations: a change of N rules takes N + 2, so a controller on
etcd needs ``--max-txn-ops`` above its largest batch (docs/controlplane.md);
node writes are split into transactions of :data:`NODE_TXN_OPS`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from ..errors import (
    BreakwaterError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    NotFoundError,
    UnavailableError,
)
from ..rules.model import Rule
from ..rules.scope import ScopedRule
from .etcd import (
    CompactedError,
    EtcdClient,
    EtcdTLS,
    KeyValue,
    WatchBatch,
    WatchStream,
    compare_create,
    compare_mod,
    delete_op,
    prefix_end,
    put_op,
)
from .store import (
    RECENT_CHANGES,
    AuditAction,
    AuditRow,
    Change,
    EventRow,
    NodeRecord,
    StoreMemory,
    _audit_doc,
    _dt,
    _etag,
    _scope_doc,
    _scope_from,
    _ts,
)

__all__ = ["AUDIT_SEQ_STRIDE", "DEFAULT_LEASE_TTL", "DEFAULT_PREFIX", "NODE_TXN_OPS", "EtcdStore"]

LOGGER = logging.getLogger("breakwater.controller.etcdstore")

DEFAULT_PREFIX: Final = "/breakwater/"
DEFAULT_LEASE_TTL: Final = 10
"""Seconds a dead controller's nodes stay connected (its lease's TTL)."""
NODE_TXN_OPS: Final = 100
"""Node writes per transaction (below etcd's default --max-txn-ops of 128)."""
AUDIT_SEQ_STRIDE: Final = 1 << 20
"""An audit row's ``seq`` on etcd: version * stride + its place in the change."""
APPLY_TIMEOUT: Final = 15.0
"""Seconds a write waits for the watch to apply its own revision."""
COMMIT_ATTEMPTS: Final = 20
"""Times a change is checked again after another controller committed first."""
WATCH_RETRY: Final = 0.5
"""Seconds between attempts to re-open a failed watch."""

_NODE_FIELDS: Final = frozenset({"connected", "target_version", "applied_version", "applied_time",
                                 "last_error", "last_heartbeat"})


def _seq_key(n: int) -> str:
    return f"{n:020d}"


def _node_doc(node: NodeRecord) -> bytes:
    return json.dumps({"labels": dict(node.labels), "doc": dict(node.doc),
                       "create_time": _ts(node.create_time),
                       "last_heartbeat": _ts(node.last_heartbeat), "target_version": node.target_version,
                       "applied_version": node.applied_version, "applied_time": _ts(node.applied_time),
                       "last_error": None if node.last_error is None else dict(node.last_error)}).encode()


def _node_from(node_id: str, raw: bytes, connected: bool) -> NodeRecord:
    d = json.loads(raw)
    return NodeRecord(node_id, d["labels"], d["doc"], _dt(d["create_time"]), _dt(d["last_heartbeat"]),
                      connected, d["target_version"], d["applied_version"], _dt(d["applied_time"]),
                      d["last_error"])


@dataclass(frozen=True)
class _Plan:
    """A checked change, ready to commit: compares and operations."""

    version: int
    compares: list[dict[str, Any]]
    ops: list[dict[str, Any]]


class EtcdStore(StoreMemory):
    """The controller's state in etcd (see the module docstring). Thread-safe."""

    def __init__(self, client: EtcdClient, *, prefix: str = DEFAULT_PREFIX,
                 lease_ttl: int = DEFAULT_LEASE_TTL) -> None:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise FieldError("store_prefix", f"{prefix!r} must start and end with '/'")
        self.client = client
        self.prefix = prefix
        self.location = f"etcd://{','.join(client.endpoints)}{prefix}"
        p = prefix.encode()
        self._p = p
        self._version_key = p + b"version"
        self._rules_p = p + b"rules/"
        self._audit_p = p + b"audit/"
        self._nodes_p = p + b"nodes/"
        self._alive_p = p + b"alive/"
        self._eventseq_key = p + b"eventseq"
        self._events_p = p + b"events/"
        self.leader_key = p + b"leader"
        self._fence = threading.local()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._recent: deque[Change] = deque(maxlen=RECENT_CHANGES)
        self._version = 0
        self._version_mod = 0
        self._revision = 0
        self._rules: dict[str, ScopedRule] = {}
        self._rule_mod: dict[str, int] = {}
        self._node_raw: dict[str, bytes] = {}
        self._alive: dict[str, set[str]] = {}  # node -> the leases (hex) of the controllers serving it
        self._mine: set[str] = set()
        self._closed = threading.Event()
        self._watch_error: BreakwaterError | None = None
        self._stream: WatchStream | None = None
        self._relists = 0
        self._lease_ttl = lease_ttl
        self._relist()
        self._lease = client.grant(lease_ttl, what=f"{self.location}: grant the node lease")
        self._lease_hex = f"{self._lease:x}"
        self._watcher = threading.Thread(target=self._watch_loop, name="etcd-store-watch", daemon=True)
        self._keeper = threading.Thread(target=self._keepalive_loop, name="etcd-store-lease", daemon=True)
        self._watcher.start()
        self._keeper.start()

    @classmethod
    def connect(cls, endpoints: Sequence[str], *, tls: EtcdTLS | None = None, prefix: str = DEFAULT_PREFIX,
                lease_ttl: int = DEFAULT_LEASE_TTL) -> EtcdStore:
        client = EtcdClient(endpoints, tls=tls)
        try:
            return cls(client, prefix=prefix, lease_ttl=lease_ttl)
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        """Stop watching, end the lease (this store's nodes turn disconnected), close."""
        if self._closed.is_set():
            return
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        try:
            self.client.revoke(self._lease, what=f"{self.location}: revoke the node lease")
        except BreakwaterError as exc:
            LOGGER.warning("%s", exc)
        self._watcher.join(5)
        self._keeper.join(5)
        self.client.close()

    # -- fencing (the leader's singleton jobs) --

    @contextlib.contextmanager
    def fenced(self, token: int) -> Iterator[None]:
        """Writes this thread makes inside the block commit only while the
        leader key is the one created at revision ``token`` (the election's
        fencing token, :mod:`controller.fleet.leader`); else they raise
        :class:`~controller.errors.FailedPreconditionError` and change nothing."""
        before = getattr(self._fence, "token", None)
        self._fence.token = token
        try:
            yield
        finally:
            self._fence.token = before

    def _fence_compares(self) -> list[dict[str, Any]]:
        token = getattr(self._fence, "token", None)
        if token is None:
            return []
        if token <= 0:  # no leadership (it lapsed between the check and the token): no write
            raise FailedPreconditionError(f"{self.location}: refused, this controller is not the leader")
        return [compare_create(self.leader_key, token)]

    def _check_fence(self, what: str) -> None:
        """After a failed fenced transaction: FailedPreconditionError if the fence is why."""
        token = getattr(self._fence, "token", None)
        if token is None:
            return
        _, kvs, _ = self.client.range(self.leader_key, what=f"{self.location}: {what}")
        now = kvs[0].create_revision if kvs else 0
        if now != token:
            raise FailedPreconditionError(
                f"{self.location}: {what}: refused, this controller is no longer the leader "
                f"(fencing token {token}, the leader key is now "
                f"{'at revision ' + str(now) if now else 'gone'})")

    @property
    def relists(self) -> int:
        """Times the watch found its revision compacted and re-listed everything."""
        return self._relists

    # -- keeping memory in step --

    def _rule_from(self, kv: KeyValue) -> ScopedRule:
        d = json.loads(kv.value)
        return ScopedRule(Rule.from_dict(d["rule"]), _scope_from(json.dumps(d["scope"])), d["version"],
                          d["etag"], _dt(d["create_time"]), _dt(d["update_time"]))

    def _relist(self) -> None:
        """Read rules, version, nodes and liveness at one revision; the change feed starts over."""
        what = f"{self.location}: list"
        revision, kvs = self.client.range_all(self._rules_p, what=what)
        _, version_kvs, _ = self.client.range(self._version_key, revision=revision, what=what)
        _, nodes = self.client.range_all(self._nodes_p, revision=revision, what=what)
        _, alive = self.client.range_all(self._alive_p, revision=revision, what=what)
        rules = {}
        mods = {}
        for kv in kvs:
            rid = kv.key[len(self._rules_p):].decode()
            rules[rid] = self._rule_from(kv)
            mods[rid] = kv.mod_revision
        with self._lock:
            self._rules, self._rule_mod = rules, mods
            self._version = int(version_kvs[0].value) if version_kvs else 0
            self._version_mod = version_kvs[0].mod_revision if version_kvs else 0
            self._node_raw = {kv.key[len(self._nodes_p):].decode(): kv.value for kv in nodes}
            self._alive = {}
            for kv in alive:
                self._alive_event(kv.key, True)
            self._revision = revision
            self._recent.clear()
            self._changed.notify_all()

    def _watch_loop(self) -> None:
        while not self._closed.is_set():
            try:
                with self._lock:
                    start = self._revision + 1
                stream = self.client.watch(self._p, prefix_end(self._p), start,
                                           what=f"{self.location}: watch")
                self._stream = stream
                if self._closed.is_set():
                    stream.close()
                    return
                for batch in stream:
                    self._apply(batch)
                    self._watch_error = None
            except CompactedError as exc:
                LOGGER.warning("%s; re-listing everything", exc, extra={"event": "store_relist"})
                try:
                    self._relist()
                    self._relists += 1
                except BreakwaterError as again:
                    self._watch_error = again
                    self._closed.wait(WATCH_RETRY)
            except BreakwaterError as exc:
                if self._closed.is_set():
                    return
                self._watch_error = exc
                LOGGER.warning("%s; watching again", exc, extra={"event": "store_watch_failed"})
                self._closed.wait(WATCH_RETRY)
            except Exception:
                if self._closed.is_set():
                    return
                LOGGER.exception("%s: watch failed", self.location)
                self._closed.wait(WATCH_RETRY)

    def _apply(self, batch: WatchBatch) -> None:
        """Apply one watch response's events, revision by revision."""
        by_revision: dict[int, list[tuple[str, KeyValue, KeyValue | None]]] = {}
        for ev in batch.events:
            by_revision.setdefault(ev[1].mod_revision, []).append(ev)
        with self._lock:
            for revision in sorted(by_revision):
                if revision <= self._revision:
                    continue
                self._apply_revision(revision, by_revision[revision])
                self._revision = revision
            self._changed.notify_all()

    def _apply_revision(self, revision: int, events: list[tuple[str, KeyValue, KeyValue | None]]) -> None:
        upserted: list[ScopedRule] = []
        removed: list[ScopedRule] = []
        version: int | None = None
        actor = reason = ""
        for kind, kv, _prev in events:
            key = kv.key
            if key.startswith(self._rules_p):
                rid = key[len(self._rules_p):].decode()
                if kind == "DELETE":
                    old = self._rules.pop(rid, None)
                    self._rule_mod.pop(rid, None)
                    if old is not None:
                        removed.append(old)
                else:
                    rule = self._rule_from(kv)
                    self._rules[rid] = rule
                    self._rule_mod[rid] = kv.mod_revision
                    upserted.append(rule)
            elif key == self._version_key and kind == "PUT":
                version = int(kv.value)
                self._version_mod = kv.mod_revision
            elif key.startswith(self._audit_p) and kind == "PUT":
                doc = json.loads(kv.value)
                actor, reason = doc["actor"], doc["reason"]
            elif key.startswith(self._nodes_p):
                nid = key[len(self._nodes_p):].decode()
                if kind == "DELETE":
                    self._node_raw.pop(nid, None)
                else:
                    self._node_raw[nid] = kv.value
            elif key.startswith(self._alive_p):
                self._alive_event(key, kind != "DELETE")
        if version is None:
            return
        if version != self._version + 1:
            self._recent.clear()  # not one step: the feed cannot say what happened in between
        self._version = version
        self._recent.append(Change(version, tuple(upserted), tuple(removed), actor, reason))

    def _alive_event(self, key: bytes, present: bool) -> None:
        """Apply a put (``present``) or delete of ``alive/<node>/<lease>`` (the lock held)."""
        nid, _, owner = key[len(self._alive_p):].decode().rpartition("/")
        if not nid:
            return  # not a key of this layout
        if present:
            self._alive.setdefault(nid, set()).add(owner)
            return
        owners = self._alive.get(nid)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._alive[nid]

    def _alive_key(self, node_id: str) -> bytes:
        return self._alive_p + f"{node_id}/{self._lease_hex}".encode()

    def _wait_applied(self, revision: int, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._revision >= revision or self._closed.is_set(),
                                          timeout=APPLY_TIMEOUT):
                raise UnavailableError(f"{self.location}: {what}: committed at revision {revision}, but the "
                                       f"watch has not seen it in {APPLY_TIMEOUT:.0f}s "
                                       f"({self._watch_error or 'no error'})", "UNAVAILABLE")

    def _keepalive_loop(self) -> None:
        while not self._closed.wait(max(1.0, self._lease_ttl / 3)):
            try:
                if self.client.keepalive(self._lease, what=f"{self.location}: keep the node lease") > 0:
                    continue
                # expired (etcd unreachable for longer than the TTL): a new lease, our nodes again
                lease = self.client.grant(self._lease_ttl, what=f"{self.location}: grant the node lease")
                with self._lock:
                    self._lease, self._lease_hex = lease, f"{lease:x}"
                    mine = sorted(self._mine)
                for i in range(0, len(mine), NODE_TXN_OPS):
                    self.client.txn((), [put_op(self._alive_key(n), b"1", lease)
                                         for n in mine[i:i + NODE_TXN_OPS]],
                                    what=f"{self.location}: liveness")
                LOGGER.warning("%s: the node lease had expired; renewed for %d node(s)", self.location,
                               len(mine))
            except BreakwaterError as exc:
                if not self._closed.is_set():
                    LOGGER.warning("%s", exc, extra={"event": "store_lease_failed"})

    # -- rules: reads --

    # -- rules: writes --

    def _rule_op(self, rule: ScopedRule, version: int, now: datetime,
                 created: datetime | None) -> tuple[dict[str, Any], ScopedRule]:
        doc = json.dumps(rule.rule.to_dict(), sort_keys=True)
        scope = _scope_doc(rule.scope)
        etag = _etag(doc, scope, version)
        stored = ScopedRule(rule.rule, rule.scope, version, etag, created or now, now)
        value = (f'{{"rule": {doc}, "scope": {scope}, "version": {version}, "etag": {json.dumps(etag)}, '
                 f'"create_time": {(created or now).timestamp()}, "update_time": {now.timestamp()}}}')
        return put_op(self._rules_p + rule.id.encode(), value.encode()), stored

    def _audit_op(self, version: int, at: datetime, actor: str, reason: str,
                  rows: Sequence[tuple[str, str, str | None, str | None]]) -> dict[str, Any]:
        body = ", ".join(f'{{"action": {json.dumps(a)}, "rule_id": {json.dumps(r)}, '
                         f'"before": {b or "null"}, "after": {af or "null"}}}' for a, r, b, af in rows)
        value = (f'{{"at": {at.timestamp()}, "actor": {json.dumps(actor)}, "reason": {json.dumps(reason)}, '
                 f'"rows": [{body}]}}')
        return put_op(self._audit_p + _seq_key(version).encode(), value.encode())

    def _commit(self, plan_change: Callable[[], _Plan | None], what: str) -> Change:
        """Check a change against memory, commit it if nobody changed the rule
        set meanwhile, else catch up and check again."""
        for _ in range(COMMIT_ATTEMPTS):
            with self._lock:
                plan = plan_change()
                if plan is None:
                    return Change(self._version)
                version_mod = self._version_mod
            compares = [compare_mod(self._version_key, version_mod), *self._fence_compares(), *plan.compares]
            ops = [*plan.ops, put_op(self._version_key, str(plan.version).encode())]
            result = self.client.txn(compares, ops, what=f"{self.location}: {what}")
            if not result.succeeded:
                self._check_fence(what)
            if result.succeeded:
                self._wait_applied(result.revision, what)
                with self._lock:
                    for change in reversed(self._recent):
                        if change.version == plan.version:
                            return change
                    return Change(plan.version)  # re-listed meanwhile: the feed starts after it
            _, kvs, _ = self.client.range(self._version_key, what=f"{self.location}: {what}")
            if kvs:
                self._wait_applied(kvs[0].mod_revision, what)
        raise UnavailableError(f"{self.location}: {what}: other controllers kept changing the rule set; "
                               f"gave up after {COMMIT_ATTEMPTS} attempts", "UNAVAILABLE")

    def create(self, rules: Sequence[ScopedRule], *, actor: str, reason: str = "",
               now: datetime | None = None) -> Change:
        at = now or datetime.now(UTC)

        def plan() -> _Plan | None:
            self._check_new(rules)
            if not rules:
                return None
            version = self._version + 1
            ops = []
            rows: list[tuple[str, str, str | None, str | None]] = []
            for r in rules:
                op, stored = self._rule_op(r, version, at, None)
                ops.append(op)
                rows.append(("create", r.id, None, _audit_doc(stored)))
            ops.append(self._audit_op(version, at, actor, reason, rows))
            return _Plan(version, [], ops)

        return self._commit(plan, "create rules")

    def _check_etag(self, rid: str, etag: str, old: ScopedRule) -> None:
        if etag and etag != old.etag:
            raise EtagMismatchError(
                f"rule {rid!r} changed since it was read (etag {etag}, now {old.etag}); "
                "get it again and retry", f"rules/{rid}")

    def update(self, rule: ScopedRule, *, etag: str = "", actor: str, reason: str = "",
               now: datetime | None = None) -> Change:
        at = now or datetime.now(UTC)

        def plan() -> _Plan:
            old = self._rules.get(rule.id)
            if old is None:
                raise NotFoundError(f"rule {rule.id!r} does not exist", f"rules/{rule.id}")
            self._check_etag(rule.id, etag, old)
            version = self._version + 1
            op, new = self._rule_op(rule, version, at, old.create_time)
            audit = self._audit_op(version, at, actor, reason,
                                   [("update", rule.id, _audit_doc(old), _audit_doc(new))])
            key = self._rules_p + rule.id.encode()
            return _Plan(version, [compare_mod(key, self._rule_mod[rule.id])], [op, audit])

        return self._commit(plan, "update rule")

    def delete(self, rule_ids: Sequence[str], *, etag: str = "", actor: str, reason: str = "",
               allow_missing: bool = False, action: AuditAction = "delete",
               now: datetime | None = None) -> Change:
        at = now or datetime.now(UTC)

        def plan() -> _Plan | None:
            gone: list[ScopedRule] = []
            for rid in dict.fromkeys(rule_ids):
                old = self._rules.get(rid)
                if old is None:
                    if allow_missing:
                        continue
                    raise NotFoundError(f"rule {rid!r} does not exist", f"rules/{rid}")
                self._check_etag(rid, etag, old)
                gone.append(old)
            if not gone:
                return None
            version = self._version + 1
            keys = [self._rules_p + r.id.encode() for r in gone]
            compares = [compare_mod(k, self._rule_mod[r.id]) for k, r in zip(keys, gone, strict=True)]
            ops = [delete_op(k) for k in keys]
            ops.append(self._audit_op(version, at, actor, reason,
                                      [(action, r.id, _audit_doc(r), None) for r in gone]))
            return _Plan(version, compares, ops)

        return self._commit(plan, "delete rules")

    def audit(self, *, rule_id: str | None = None, limit: int = 100) -> list[AuditRow]:
        """The newest ``limit`` audit rows (of one rule if given), oldest first;
        read newest change first, a page at a time, until ``limit`` are found."""
        out: list[AuditRow] = []
        end = prefix_end(self._audit_p)
        what = f"{self.location}: read audit"
        while len(out) < limit:
            _, kvs, more = self.client.range(self._audit_p, end, limit=100, descend=True, what=what)
            for kv in kvs:
                version = int(kv.key[len(self._audit_p):])
                doc = json.loads(kv.value)
                at = datetime.fromtimestamp(doc["at"], UTC)
                for i, row in reversed(list(enumerate(doc["rows"]))):
                    if rule_id is None or row["rule_id"] == rule_id:
                        out.append(AuditRow(version * AUDIT_SEQ_STRIDE + i, at, version, doc["actor"],
                                            row["action"], row["rule_id"], doc["reason"], row["before"],
                                            row["after"]))
                        if len(out) == limit:
                            break
                if len(out) == limit:
                    break
            if not more or not kvs:
                break
            end = kvs[-1].key
        return list(reversed(out))

    def version_time(self, version: int) -> datetime | None:
        if version <= 0:
            return None
        _, kvs, _ = self.client.range(self._audit_p + _seq_key(version).encode(),
                                      what=f"{self.location}: read audit")
        return datetime.fromtimestamp(json.loads(kvs[0].value)["at"], UTC) if kvs else None

    # -- nodes --

    def node(self, node_id: str) -> NodeRecord:
        with self._lock:
            raw = self._node_raw.get(node_id)
            connected = node_id in self._alive
        if raw is None:
            raise NotFoundError(f"node {node_id!r} has never registered", f"nodes/{node_id}")
        return _node_from(node_id, raw, connected)

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            items = sorted(self._node_raw.items())
            alive = set(self._alive)
        return [_node_from(n, raw, n in alive) for n, raw in items]

    def _node_ops(self, node: NodeRecord, connected: bool | None) -> list[dict[str, Any]]:
        """A node's writes (the lock held): its record, and its liveness key
        of this store's lease. The end of a stream of a node that another
        controller serves now deletes only this store's key."""
        nid = node.node_id
        alive_key = self._alive_key(nid)
        if connected is False:
            others = self._alive.get(nid, set()) - {self._lease_hex}
            ops = [] if others else [put_op(self._nodes_p + nid.encode(), _node_doc(node))]
            return [*ops, delete_op(alive_key)] if nid in self._mine else ops
        ops = [put_op(self._nodes_p + nid.encode(), _node_doc(node))]
        if connected:
            ops.append(put_op(alive_key, b"1", self._lease))
        return ops

    def _write_nodes(self, records: Sequence[tuple[NodeRecord, bool | None]], what: str) -> None:
        with self._lock:
            ops = [op for node, connected in records for op in self._node_ops(node, connected)]
        revision = 0
        for i in range(0, len(ops), NODE_TXN_OPS):
            revision = self.client.txn((), ops[i:i + NODE_TXN_OPS], what=f"{self.location}: {what}").revision
        with self._lock:
            for node, connected in records:
                if connected:
                    self._mine.add(node.node_id)
                elif connected is False:
                    self._mine.discard(node.node_id)
        if revision:
            self._wait_applied(revision, what)

    def reset_connections(self) -> int:
        """Nothing to reset on etcd: a node is connected while a live
        controller's lease holds its liveness key, and the keys of a
        controller that died go with its lease. Returns 0."""
        return 0

    def register_node(self, node_id: str, labels: Mapping[str, str], doc: Mapping[str, Any], *,
                      now: datetime | None = None) -> NodeRecord:
        at = now or datetime.now(UTC)
        with self._lock:
            raw = self._node_raw.get(node_id)
        base = _node_from(node_id, raw, False) if raw is not None else NodeRecord(node_id, create_time=at)
        node = replace(base, labels=dict(labels), doc=dict(doc), last_heartbeat=at, connected=True)
        self._write_nodes([(node, True)], "write node")
        return node

    def update_node(self, node_id: str, *, now: datetime | None = None, **changes: Any) -> NodeRecord:
        return self.update_nodes({node_id: changes}, now=now)[0]

    def delete_node(self, node_id: str) -> NodeRecord:
        """Forget a node (its registration and liveness keys); NotFoundError if unknown."""
        old = self.node(node_id)
        what = f"{self.location}: delete node"
        key = node_id.encode()
        revision = self.client.txn((), [delete_op(self._nodes_p + key), delete_op(self._alive_p + key)],
                                   what=what).revision
        with self._lock:
            self._mine.discard(node_id)
        if revision:
            self._wait_applied(revision, what)
        return old

    def update_nodes(self, changes: Mapping[str, Mapping[str, Any]], *,
                     now: datetime | None = None) -> list[NodeRecord]:
        """Checked whole before anything is written (an unknown node or
        field writes nothing); written in transactions of :data:`NODE_TXN_OPS`."""
        at = now or datetime.now(UTC)
        records: list[tuple[NodeRecord, bool | None]] = []
        for node_id, fields_ in changes.items():
            unknown = set(fields_) - _NODE_FIELDS
            if unknown:
                raise FieldError(sorted(unknown)[0],
                                 f"not a node field; known: {', '.join(sorted(_NODE_FIELDS))}")
            old = self.node(node_id)
            new = replace(old, **{"last_heartbeat": at, **fields_})
            records.append((new, fields_.get("connected")))
        if records:
            self._write_nodes(records, "write nodes")
        return [n for n, _ in records]

    # -- events --

    def add_events(self, rows: Sequence[tuple[datetime, str, str, bytes]]) -> list[int]:
        """Store events, numbered by ``eventseq`` (one transaction per
        :data:`NODE_TXN_OPS` events, each conditioned on the counter)."""
        seqs: list[int] = []
        what = f"{self.location}: write events"
        for i in range(0, len(rows), NODE_TXN_OPS):
            chunk = rows[i:i + NODE_TXN_OPS]
            for _ in range(COMMIT_ATTEMPTS):
                _, kvs, _ = self.client.range(self._eventseq_key, what=what)
                last, mod = (int(kvs[0].value), kvs[0].mod_revision) if kvs else (0, 0)
                ops = [put_op(self._eventseq_key, str(last + len(chunk)).encode())]
                for n, (at, node, kind, payload) in enumerate(chunk, start=last + 1):
                    doc = {"at": at.timestamp(), "node": node, "kind": kind,
                           "payload": base64.b64encode(payload).decode()}
                    ops.append(put_op(self._events_p + _seq_key(n).encode(), json.dumps(doc).encode()))
                if self.client.txn([compare_mod(self._eventseq_key, mod)], ops, what=what).succeeded:
                    seqs.extend(range(last + 1, last + 1 + len(chunk)))
                    break
            else:
                raise UnavailableError(f"{what}: the event counter kept changing", "UNAVAILABLE")
        return seqs

    def events(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
               newest_first: bool = False) -> list[EventRow]:
        start = self._events_p + _seq_key(after_seq + 1).encode()
        end = (self._events_p + _seq_key(before_seq).encode() if before_seq is not None
               else prefix_end(self._events_p))
        if start >= end:
            return []
        _, kvs, _ = self.client.range(start, end, limit=limit, descend=newest_first,
                                      what=f"{self.location}: read events")
        out = []
        for kv in kvs:
            d = json.loads(kv.value)
            out.append(EventRow(int(kv.key[len(self._events_p):]), datetime.fromtimestamp(d["at"], UTC),
                                d["node"], d["kind"], base64.b64decode(d["payload"])))
        return out

    def last_event_seq(self) -> int:
        _, kvs, _ = self.client.range(self._eventseq_key, what=f"{self.location}: read events")
        return int(kvs[0].value) if kvs else 0

    def prune_events(self, keep: int) -> int:
        cut = self.last_event_seq() - keep
        if cut <= 0:
            return 0
        what = "prune events"
        result = self.client.txn(self._fence_compares(),
                                 [delete_op(self._events_p, self._events_p + _seq_key(cut + 1).encode())],
                                 what=f"{self.location}: {what}")
        if not result.succeeded:
            self._check_fence(what)
            return 0
        return int(result.responses[0].get("response_delete_range", {}).get("deleted", 0))

