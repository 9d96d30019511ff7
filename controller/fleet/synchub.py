"""SyncService: the controller's end of every agent's sync stream, modelled
on Envoy's xDS (``proto/breakwater/v1/sync_service.proto`` is the contract).

**A stream.** The agent sends ``Register`` first: its node id and labels are
checked (``INVALID_ARGUMENT`` naming ``register.node_id`` or
``register.labels``; anything but a Register first, or a second Register,
is ``INVALID_ARGUMENT`` at ``register``). A second live stream of the same
node id replaces the first, which ends with ``ABORTED``. The node is
recorded (:meth:`~controller.fleet.store.FleetStore.register_node`) and gets
``Registered`` (telemetry interval, top sources, reconcile interval), then
its rule set: a ``RuleSnapshot``, or a ``RuleDelta`` from
``resume_version`` when the hub still knows what it sent that node at that
version (a stream that broke during this controller's lifetime; an agent
that resumes from the version it already holds gets an empty delta, which
it ACKs). Then, for as long as the stream lasts:

* **one update in flight.** The next snapshot or delta goes only once the
  agent answered the last one. The agent applies each update whole (make
  before break: the new set is swapped in atomically, then the old rules
  go) and ACKs its version (``applied_version`` and ``applied_time``
  recorded, ``last_error`` cleared) or NACKs it (``last_error`` recorded,
  the target kept). A NACKed version is not sent again until the node's
  rule set changes or a reconciliation is due; a NACK of a delta with
  ``APPLY_ERROR_CODE_BASE_MISMATCH`` is answered with a snapshot.
* **deltas** are computed against what the node last ACKed: upserts (whole
  rules) and removed ids, from the difference of the two sets, so a rule
  that changed scope is added on the nodes it now selects and removed from
  the ones it left.
* **reconciliation.** Every ``reconcile_interval`` (the first one after a
  random share of it, so agents that connected together do not reconcile
  together) the node gets a ``RuleSnapshot`` with ``reconcile`` set, even
  when nothing changed: a lost or misapplied delta cannot leave it drifting.
* **upwards:** ``TelemetrySummary`` goes to :class:`~controller.api.telemetry.FleetTelemetry`,
  ``LocalEvents`` to the :class:`~controller.fleet.eventlog.EventLog` (with the
  node's name) and, for attacks, to cluster-wide detection.

When the stream ends the node is recorded as disconnected (unless a newer
stream replaced it).

**Versions.** A node's rule set at version N is every rule in force at N
whose scope selects it. A change that does not touch a node's rules leaves
its version where it was; a change that does gives it the store's version
of that change. Versions a node sees only grow.

**How it scales.** The servicer is asyncio (one event loop for every
stream; see :func:`controller.api.aio.create_aio_server`). One thread waits on
:meth:`FleetStore.wait_version` and wakes the loop; the loop reads only what
changed (:meth:`FleetStore.changes_since`) and updates the rule set of
each label group (the nodes with the same labels) and of each node with
rules scoped to it. Nodes of a group share one immutable view of their set,
so each snapshot and each delta is built and serialized once per group
(and pair of versions), and every stream of the group is sent the same
bytes. Node state (registrations, ACKs, NACKs, heartbeats, disconnects) is
written by one thread, in order, many nodes per transaction.

**Garbage collection.** A thousand streams are a lot of long-lived objects,
and CPython's cyclic collector rescans all of them in every full
collection: at 1000 agents those pauses reach tens to hundreds of
milliseconds, right in the propagation path. So, ``gc_settle_seconds``
after the last new stream, the hub collects once and freezes what exists
(``gc.freeze``: the collector leaves those objects alone), and redoes that
every ``gc_refreeze_seconds`` (``gc.unfreeze``, collect, freeze) so cyclic
garbage that was frozen along is reclaimed. Full collections then cost a
few milliseconds. ``[sync] gc_freeze = false`` turns it off.

**Wiring (the hook the controller calls).** ``controller.fleet.daemon``
calls :func:`add_sync_services` with its service registry, store, event
log and configuration (and its API backend, whose ``apply`` publishes rule
events for the fleet detector's changes): it adds ``SyncService`` and
``TelemetryService`` to the controller's one server and returns a
:class:`SyncServices` (``close()`` on stop, ``collect_metrics(exposition)``
for Prometheus). The server must be grpc.aio: the controller builds it with
:func:`controller.api.aiothread.create_threaded_aio_server` (the same arguments as
``create_server``); a test or an asyncio program can use
:func:`controller.api.aio.create_aio_server`. Configuration: the controller's
``reconcile_interval`` and its ``[sync]``, ``[telemetry]`` and ``[fleet]``
tables (:class:`SyncConfig`, :class:`~controller.api.telemetry.TelemetryConfig`,
:class:`~controller.fleet.detector.FleetConfig`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import json_format

from breakwater.v1 import event_pb2, rule_pb2, sync_service_pb2

from ..api.convert import node_name, rule_to_proto
from ..api.server import Service
from ..errors import BreakwaterError, FieldError, RemoteError
from ..metrics import Exposition, Histogram
from ..rules.scope import ScopedRule, check_labels, check_node_id
from ..validate import check_keys, check_number
from .eventlog import EventLog
from .store import Change, FleetStore, NodeRecord

__all__ = [
    "SYNC_SERVICE",
    "SyncConfig",
    "SyncHub",
    "SyncServicer",
    "SyncServices",
    "add_sync_services",
    "check_config",
    "sync_service",
]

LOGGER = logging.getLogger("breakwater.synchub")

SYNC_SERVICE: Final = "breakwater.v1.SyncService"
WATCH_SECONDS: Final = 0.25
"""How long the version watcher waits before it checks whether to stop."""
DELTA_CACHE: Final = 4096
"""Serialized deltas kept (by pair of views); the cache is emptied when full."""
ROUND_TRIP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BASE_MISMATCH: Final = rule_pb2.APPLY_ERROR_CODE_BASE_MISMATCH




@dataclass(frozen=True)
class SyncConfig:
    """The sync streams' settings (the ``[sync]`` table; ``reconcile_interval``
    defaults to the controller's key of that name)."""

    reconcile_interval: float = 30.0
    """Seconds between the reconciling snapshots each node gets."""
    telemetry_interval: float = 5.0
    """Seconds between a node's TelemetrySummary reports (Registered.telemetry_interval)."""
    top_sources: int = 50
    """Sources per TelemetrySummary (Registered.top_sources)."""
    controller_id: str = ""
    """Registered.controller_id; empty: the host name."""
    node_write_interval: float = 1.0
    """Node state (applied version, heartbeats, ...) is written at most this
    often (seconds), many nodes per transaction: NodeService sees an ACK up
    to this much later (well inside its max_lag). Registrations are written
    at once."""
    heartbeat_write_interval: float = 1.0
    """A node's heartbeat alone (no other change) is written at most this often."""
    gc_freeze: bool = True
    """Freeze the process's long-lived objects out of the cyclic garbage
    collector once the streams settle (see the module docstring)."""
    gc_settle_seconds: float = 3.0
    """... that long after the last new stream ..."""
    gc_refreeze_seconds: float = 600.0
    """... and again this often (unfreeze, collect, freeze), so garbage that
    was frozen with them is collected in the end."""

    def __post_init__(self) -> None:
        check_number(self.reconcile_interval, "reconcile_interval", 1, 86400)
        check_number(self.telemetry_interval, "telemetry_interval", 0.1, 3600)
        top = self.top_sources
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 100_000:
            raise FieldError("top_sources", f"{top!r} is not a whole number 0..100000")
        if not isinstance(self.controller_id, str) or len(self.controller_id) > 253:
            raise FieldError("controller_id", "expected a string of at most 253 characters")
        check_number(self.node_write_interval, "node_write_interval", 0, 10)
        check_number(self.heartbeat_write_interval, "heartbeat_write_interval", 0, 3600)
        if not isinstance(self.gc_freeze, bool):
            raise FieldError("gc_freeze", f"expected true or false, got {self.gc_freeze!r}")
        check_number(self.gc_settle_seconds, "gc_settle_seconds", 0, 3600)
        check_number(self.gc_refreeze_seconds, "gc_refreeze_seconds", 1, 86400)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], **defaults: Any) -> SyncConfig:
        known = [f.name for f in fields(cls)]
        check_keys(data, known)
        return cls(**{**defaults, **data})

    @property
    def controller_name(self) -> str:
        return self.controller_id or socket.gethostname()


# --- rule sets as the nodes see them ----------------------------------------------------


class _Content:
    """An immutable map of rules by id, shared by every view that holds it."""

    __slots__ = ("rules",)

    def __init__(self, rules: dict[str, ScopedRule]) -> None:
        self.rules = rules


_EMPTY: Final = _Content({})


class _View:
    """One node set at a version: the rules its labels select (shared by the
    label group) and the rules scoped to the node itself. Immutable; its
    snapshot messages are built once."""

    __slots__ = ("_snapshots", "own", "shared", "version")

    def __init__(self, version: int, shared: _Content, own: _Content) -> None:
        self.version = version
        self.shared = shared
        self.own = own
        self._snapshots: dict[bool, bytes] = {}

    def rules(self) -> Iterator[ScopedRule]:
        yield from self.shared.rules.values()
        yield from self.own.rules.values()

    def __len__(self) -> int:
        return len(self.shared.rules) + len(self.own.rules)


def _diff(a: _Content, b: _Content) -> tuple[list[ScopedRule], list[str]]:
    """(rules of ``b`` new or changed since ``a``, ids of ``a`` gone from ``b``)."""
    if a is b:
        return [], []
    old = a.rules
    new = b.rules
    upserts = [r for rid, r in new.items() if (was := old.get(rid)) is None or was.etag != r.etag]
    removed = [rid for rid in old if rid not in new]
    return upserts, removed


LabelsKey = tuple[tuple[str, str], ...]
EventSink = Callable[[str, Sequence[event_pb2.Event]], None]
"""Gets each node's events as stored (the fleet detector's promotions)."""


def _applies(rule: ScopedRule, labels: Mapping[str, str]) -> bool:
    """Whether a rule that is not scoped to one node selects nodes with ``labels``."""
    scope = rule.scope
    return scope.node is None and all(labels.get(k) == v for k, v in scope.labels)


class _Index:
    """The rule set and its split into label groups and per-node rules, kept
    in step with the store's changes."""

    def __init__(self) -> None:
        self.version = 0
        self.rules: dict[str, ScopedRule] = {}
        self.groups: dict[LabelsKey, _Content] = {}
        self.own: dict[str, _Content] = {}

    def reload(self, version: int, rules: Iterable[ScopedRule]) -> None:
        self.version = version
        self.rules = {r.id: r for r in rules}
        groups = list(self.groups)
        self.groups = {}
        for key in groups:
            self.shared(key)
        own: dict[str, dict[str, ScopedRule]] = {}
        for r in self.rules.values():
            if r.scope.node is not None:
                own.setdefault(r.scope.node, {})[r.id] = r
        self.own = {node: _Content(dict(sorted(rs.items()))) for node, rs in own.items()}

    def shared(self, key: LabelsKey) -> _Content:
        """The rules a node with these labels gets from global and label scopes."""
        found = self.groups.get(key)
        if found is None:
            labels = dict(key)
            found = _Content({rid: r for rid, r in sorted(self.rules.items()) if _applies(r, labels)})
            self.groups[key] = found
        return found

    def own_rules(self, node_id: str) -> _Content:
        return self.own.get(node_id, _EMPTY)

    def apply(self, version: int, changes: Sequence[Change]) -> set[str]:
        """Apply committed changes; the ids of the rules they touched."""
        touched: dict[str, tuple[ScopedRule | None, ScopedRule | None]] = {}
        for change in changes:
            for new in change.upserted:
                old = self.rules.get(new.id)
                self.rules[new.id] = new
                first = touched.get(new.id, (old, None))[0]
                touched[new.id] = (first, new)
            for gone in change.removed:
                old = self.rules.pop(gone.id, None)
                first = touched.get(gone.id, (old, None))[0]
                touched[gone.id] = (first, None)
        self.version = version
        if not touched:
            return set()
        for key, content in list(self.groups.items()):
            labels = dict(key)
            patched: dict[str, ScopedRule] | None = None
            for rid, (_was, now) in touched.items():
                inside = now is not None and _applies(now, labels)
                if inside == (rid in content.rules) and (not inside or content.rules[rid] is now):
                    continue
                if patched is None:
                    patched = dict(content.rules)
                if inside and now is not None:
                    patched[rid] = now
                else:
                    patched.pop(rid, None)
            if patched is not None:
                self.groups[key] = _Content(patched)
        nodes: set[str] = set()
        for pair in touched.values():
            for r in pair:
                if r is not None and r.scope.node is not None:
                    nodes.add(r.scope.node)
        for node in nodes:
            rules = dict(self.own.get(node, _EMPTY).rules)
            for rid, (_was, now) in touched.items():
                if now is not None and now.scope.node == node:
                    rules[rid] = now
                else:
                    rules.pop(rid, None)
            if rules:
                self.own[node] = _Content(rules)
            else:
                self.own.pop(node, None)
        return set(touched)


# --- node state, written in order by one thread -------------------------------------------


class _NodeWriter:
    """Registrations and node updates, written in the order they were
    asked for; consecutive updates are merged and written many nodes per
    transaction, at most every ``interval`` seconds."""

    def __init__(self, store: FleetStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._cv = threading.Condition()
        self._ops: deque[Any] = deque()  # ("register", args, future) or dict node -> fields
        self._stop = False
        self.failures = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="breakwater-nodes", daemon=True)
        self._thread.start()

    def register(self, node_id: str, labels: Mapping[str, str], doc: Mapping[str, Any]
                 ) -> concurrent.futures.Future[NodeRecord]:
        future: concurrent.futures.Future[NodeRecord] = concurrent.futures.Future()
        with self._cv:
            self._ops.append(("register", (node_id, dict(labels), dict(doc)), future))
            self._cv.notify()
        return future

    def update(self, node_id: str, **fields_: Any) -> None:
        self.update_many({node_id: fields_})

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        with self._cv:
            tail = self._ops[-1] if self._ops else None
            if not isinstance(tail, dict):
                tail = {}
                self._ops.append(tail)
                self._cv.notify()
            for node_id, fields_ in changes.items():
                tail.setdefault(node_id, {}).update(fields_)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._stop:
                    self._cv.wait()
                if not self._ops and self._stop:
                    return
                urgent = any(isinstance(op, tuple) for op in self._ops)
            if not urgent and not self._stop and self._interval:
                time.sleep(self._interval)  # let updates of many nodes gather
            with self._cv:
                ops = list(self._ops)
                self._ops.clear()
            for op in ops:
                self._write(op)

    def _write(self, op: Any) -> None:
        try:
            if isinstance(op, tuple):
                _kind, (node_id, labels, doc), future = op
                try:
                    future.set_result(self._store.register_node(node_id, labels, doc))
                except BaseException as exc:
                    future.set_exception(exc)
                    raise
            else:
                self._store.update_nodes(op)
                self.batches += 1
        except Exception:
            self.failures += 1
            LOGGER.exception("writing node state failed")


# --- streams ----------------------------------------------------------------------------


class _Stream:
    """One agent's open stream, as the hub drives it (loop thread only)."""

    __slots__ = ("acked", "deltas", "ended", "error", "labels", "last_touch", "nacked", "name", "node_id",
                 "outbox", "outstanding", "peer", "reconcile_due", "sent_at", "target", "timer", "waiter")

    def __init__(self, node_id: str, labels: LabelsKey, deltas: bool, peer: str) -> None:
        self.node_id = node_id
        self.name = node_name(node_id)
        self.labels = labels
        self.deltas = deltas
        self.peer = peer
        self.target: _View | None = None
        self.acked: _View | None = None
        """What the node holds, as far as the hub knows (None: unknown, send a snapshot)."""
        self.outstanding: _View | None = None
        self.nacked: _View | None = None
        self.reconcile_due = False
        self.outbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        """Set while the stream's writer waits for the outbox (cheaper than an Event)."""
        self.ended = False
        self.error: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = 0.0
        self.last_touch = 0.0

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put(self, message: bytes) -> None:
        self.outbox.append(message)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.error = error
            if self.timer is not None:
                self.timer.cancel()
            self._wake()


class _Memory:
    """What the hub sent a node id (across its streams): the view it last
    ACKed and the one it had in flight last, and the highest version it was
    given."""

    __slots__ = ("acked", "last_version", "sent")

    def __init__(self) -> None:
        self.acked: _View | None = None
        self.sent: _View | None = None
        self.last_version = 0

    def view(self, version: int) -> _View | None:
        for v in (self.acked, self.sent):
            if v is not None and v.version == version:
                return v
        return None


def _register_doc(reg: sync_service_pb2.Register) -> dict[str, Any]:
    """What NodeRecord.doc keeps of a Register (its Node fields, JSON form)."""
    doc = sync_service_pb2.Register()
    doc.CopyFrom(reg)
    for name in ("node_id", "labels", "resume_version"):
        doc.ClearField(name)
    out: dict[str, Any] = json_format.MessageToDict(doc, preserving_proto_field_name=True)
    return out


def _now() -> datetime:
    return datetime.now(UTC)


class SyncHub:
    """Every agent's stream and what each was sent (see the module
    docstring). Stream work runs on the server's event loop; the hub binds
    to it on the first stream."""

    def __init__(self, store: FleetStore, events: EventLog, config: SyncConfig | None = None, *,
                 telemetry: Any = None, on_events: EventSink | None = None) -> None:
        self.config = config or SyncConfig()
        self._store = store
        self._events = events
        self._telemetry = telemetry
        self._on_events = on_events
        self._index = _Index()
        self._streams: dict[str, _Stream] = {}
        self._memory: dict[str, _Memory] = {}
        self._group_views: dict[LabelsKey, _View] = {}
        self._node_views: dict[str, _View] = {}
        self._protos: dict[str, tuple[str, rule_pb2.Rule]] = {}
        self._deltas: dict[tuple[_View, _View], bytes] = {}
        self._notes: dict[str, dict[str, Any]] = {}
        self._notes_scheduled = False
        self._gc_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._event_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                 thread_name_prefix="breakwater-events")
        self._writer = _NodeWriter(store, self.config.node_write_interval)
        self._registered = self._registered_template()
        self.counts: dict[str, int] = {k: 0 for k in (
            "snapshots", "deltas", "reconciles", "acks", "nacks", "stale_answers", "telemetry", "events",
            "streams_opened", "streams_replaced", "refreshes", "reloads")}
        self.round_trip = Histogram(ROUND_TRIP_BUCKETS)
        version, rules = store.snapshot(include_expired=True)
        self._index.reload(version, rules)
        for node in store.nodes():  # streams of a previous run are gone
            if node.connected:
                self._writer.update(node.node_id, connected=False, last_heartbeat=node.last_heartbeat)

    def _registered_template(self) -> sync_service_pb2.Registered:
        cfg = self.config
        out = sync_service_pb2.Registered(controller_id=cfg.controller_name, top_sources=cfg.top_sources)
        out.telemetry_interval.FromNanoseconds(int(cfg.telemetry_interval * 1e9))
        out.reconcile_interval.FromNanoseconds(int(cfg.reconcile_interval * 1e9))
        return out

    # -- binding to the loop, following the store --

    def bind(self) -> asyncio.AbstractEventLoop:
        """The loop the streams run on (the first caller's); starts the version watcher."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._refresh()
            self._watcher = threading.Thread(target=self._watch, name="breakwater-sync-watch", daemon=True)
            self._watcher.start()
        elif self._loop is not loop:
            raise BreakwaterError("the sync hub serves one event loop; this call came from another")
        return loop

    def _watch(self) -> None:
        seen = self._store.version
        loop = self._loop
        assert loop is not None
        while not self._closed.is_set():
            try:
                version = self._store.wait_version(seen, WATCH_SECONDS)
            except Exception:  # a closed store: the controller is stopping
                if not self._closed.wait(WATCH_SECONDS):
                    LOGGER.exception("waiting for rule set changes failed")
                continue
            if version != seen:
                seen = version
                try:
                    loop.call_soon_threadsafe(self._refresh)
                except RuntimeError:  # the loop is closed
                    return

    def _refresh(self) -> None:
        """Catch up with the store and retarget every stream (loop thread)."""
        index = self._index
        got = self._store.changes_since(index.version)
        if got is None:
            version, rules = self._store.snapshot(include_expired=True)
            index.reload(version, rules)
            self.counts["reloads"] += 1
            gone: Iterable[str] = [rid for rid in self._protos if rid not in index.rules]
        else:
            version, changes = got
            if version == index.version:
                return
            gone = [rid for rid in index.apply(version, changes) if rid not in index.rules]
        self.counts["refreshes"] += 1
        for rid in gone:
            self._protos.pop(rid, None)
        targets: dict[str, dict[str, Any]] = {}
        for st in list(self._streams.values()):
            view = self._target_for(st)
            if view is not st.target:
                st.target = view
                targets[st.node_id] = {"target_version": view.version}
                self._pump(st)
        if targets:
            self._writer.update_many(targets)

    # -- targets and messages --

    def _target_for(self, st: _Stream) -> _View:
        index = self._index
        shared = index.shared(st.labels)
        own = index.own_rules(st.node_id)
        current = st.target
        if current is not None and current.shared is shared and current.own is own:
            return current
        memory = self._memory.get(st.node_id)
        floor = max(current.version if current is not None else 0, memory.last_version if memory else 0)
        if own is _EMPTY:
            view = self._group_views.get(st.labels)
            if view is None or view.shared is not shared or view.version <= floor:
                view = _View(index.version, shared, _EMPTY)
                self._group_views[st.labels] = view
        else:
            view = self._node_views.get(st.node_id)
            if view is None or view.shared is not shared or view.own is not own or view.version <= floor:
                view = _View(index.version, shared, own)
                self._node_views[st.node_id] = view
        if memory is not None and view.version > memory.last_version:
            memory.last_version = view.version
        return view

    def _proto(self, rule: ScopedRule) -> rule_pb2.Rule:
        found = self._protos.get(rule.id)
        if found is not None and found[0] == rule.etag:
            return found[1]
        proto = rule_to_proto(rule)
        self._protos[rule.id] = (rule.etag, proto)
        return proto

    def _snapshot(self, view: _View, reconcile: bool) -> bytes:
        found = view._snapshots.get(reconcile)
        if found is None:
            rules = sorted(view.rules(), key=lambda r: r.id)
            msg = sync_service_pb2.SyncResponse(snapshot=sync_service_pb2.RuleSnapshot(
                version=view.version, rules=[self._proto(r) for r in rules], reconcile=reconcile))
            found = view._snapshots[reconcile] = msg.SerializeToString()
        return found

    def _delta(self, base: _View, view: _View) -> bytes:
        key = (base, view)
        found = self._deltas.get(key)
        if found is None:
            up_shared, rm_shared = _diff(base.shared, view.shared)
            up_own, rm_own = _diff(base.own, view.own)
            upserts = sorted(up_shared + up_own, key=lambda r: r.id)
            kept = {r.id for r in upserts}
            removed = sorted(rid for rid in rm_shared + rm_own if rid not in kept)
            msg = sync_service_pb2.SyncResponse(delta=sync_service_pb2.RuleDelta(
                version=view.version, base_version=base.version,
                upserts=[self._proto(r) for r in upserts], removed_rule_ids=removed))
            if len(self._deltas) >= DELTA_CACHE:
                self._deltas.clear()
            found = self._deltas[key] = msg.SerializeToString()
        return found

    def _pump(self, st: _Stream) -> None:
        """Send the node its next update, if it has none in flight and needs one."""
        if st.ended or st.outstanding is not None or st.target is None:
            return
        view = st.target
        if st.reconcile_due:
            st.reconcile_due = False
            self._send(st, view, self._snapshot(view, True), "reconciles")
            self._schedule_reconcile(st, self.config.reconcile_interval)
            return
        if view is st.acked or view is st.nacked:
            return
        if st.acked is None or not st.deltas:
            self._send(st, view, self._snapshot(view, False), "snapshots")
        else:
            self._send(st, view, self._delta(st.acked, view), "deltas")

    def _send(self, st: _Stream, view: _View, message: bytes, kind: str) -> None:
        st.outstanding = view
        st.sent_at = time.monotonic()
        memory = self._memory.get(st.node_id)
        if memory is None:
            memory = self._memory[st.node_id] = _Memory()
        memory.acked, memory.sent = st.acked, view
        if view.version > memory.last_version:
            memory.last_version = view.version
        self.counts[kind] += 1
        st.put(message)

    def _settled(self) -> None:
        """Streams opened a while ago: freeze the long-lived objects (see the module docstring)."""
        if not self.config.gc_freeze or self._closed.is_set() or self._loop is None:
            return
        if self._gc_timer is not None:
            self._gc_timer.cancel()
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        LOGGER.debug("gc: %d objects frozen (%.1f ms)", gc.get_freeze_count(),
                     (time.perf_counter() - started) * 1e3)
        self._gc_timer = self._loop.call_later(self.config.gc_refreeze_seconds, self._settled)

    def _schedule_reconcile(self, st: _Stream, delay: float) -> None:
        loop = self._loop
        if loop is None or st.ended:
            return
        st.timer = loop.call_later(delay, self._reconcile, st)

    def _reconcile(self, st: _Stream) -> None:
        st.timer = None
        if not st.ended:
            st.reconcile_due = True
            self._pump(st)

    def _note(self, node_id: str, **fields_: Any) -> None:
        """Queue a node state change; handed to the writer once per loop turn."""
        pending = self._notes.get(node_id)
        if pending is None:
            self._notes[node_id] = fields_
        else:
            pending.update(fields_)
        if not self._notes_scheduled and self._loop is not None:
            self._notes_scheduled = True
            self._loop.call_soon(self._flush_notes)

    def _flush_notes(self) -> None:
        self._notes_scheduled = False
        notes, self._notes = self._notes, {}
        if notes:
            self._writer.update_many(notes)

    # -- a stream's life --

    async def open(self, reg: sync_service_pb2.Register, peer: str = "") -> _Stream:
        """Check and record a Register; the new stream with Registered and
        its first update queued."""
        node_id = check_node_id(reg.node_id, "register.node_id")
        labels = check_labels(dict(reg.labels), "register.labels")
        self.bind()
        old = self._streams.get(node_id)
        st = _Stream(node_id, tuple(labels.items()), reg.capabilities.deltas, peer)
        self._streams[node_id] = st
        self.counts["streams_opened"] += 1
        if old is not None:
            self.counts["streams_replaced"] += 1
            LOGGER.info("node %s: a new stream (%s) replaces the open one (%s)", node_id, peer, old.peer,
                        extra={"event": "sync_stream_replaced", "node": node_id})
            old.end(RemoteError(f"{st.name}: replaced by a newer stream of the same node", "ABORTED"))
        await asyncio.wrap_future(self._writer.register(node_id, labels, _register_doc(reg)))
        if st.ended:
            return st
        registered = sync_service_pb2.Registered()
        registered.CopyFrom(self._registered)
        registered.node = st.name
        st.put(sync_service_pb2.SyncResponse(registered=registered).SerializeToString())
        memory = self._memory.get(node_id)
        if reg.resume_version and memory is not None:
            st.acked = memory.view(reg.resume_version)
        st.target = self._target_for(st)
        self._writer.update(node_id, target_version=st.target.version)
        self._pump(st)
        interval = self.config.reconcile_interval
        self._schedule_reconcile(st, interval * random.uniform(0.5, 1.0))
        if self.config.gc_freeze and self._loop is not None:
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            self._gc_timer = self._loop.call_later(self.config.gc_settle_seconds, self._settled)
        LOGGER.info("node %s registered from %s (labels %s, resume from %d, sent %s %d)", node_id, peer,
                    labels, reg.resume_version, "delta" if st.acked else "snapshot", st.target.version,
                    extra={"event": "sync_registered", "node": node_id, "resume_version": reg.resume_version,
                           "version": st.target.version})
        return st

    def close_stream(self, st: _Stream) -> None:
        st.end()
        if self._streams.get(st.node_id) is st:
            del self._streams[st.node_id]
            self._writer.update(st.node_id, connected=False)
            LOGGER.info("node %s: sync stream closed", st.node_id,
                        extra={"event": "sync_stream_closed", "node": st.node_id})

    async def read(self, st: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Handle the agent's messages until its side ends; a bad message
        ends the stream with its error."""
        try:
            while not st.ended:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                self.handle(st, req)
        except asyncio.CancelledError:
            raise
        except BreakwaterError as exc:
            st.end(exc)
            return
        except Exception as exc:  # the transport: the agent went away
            LOGGER.debug("node %s: reading the stream failed: %s", st.node_id, exc)
        st.end()

    def handle(self, st: _Stream, req: sync_service_pb2.SyncRequest) -> None:
        which = req.WhichOneof("message")
        now = time.monotonic()
        if which == "ack":
            self._on_ack(st, req.ack.version, now)
        elif which == "nack":
            self._on_nack(st, req.nack, now)
        elif which == "telemetry":
            self.counts["telemetry"] += 1
            if self._telemetry is not None:
                self._telemetry.offer(st.node_id, req.telemetry)
        elif which == "events":
            self.counts["events"] += len(req.events.events)
            if req.events.events:
                self._event_pool.submit(self._publish, st.node_id, list(req.events.events))
        elif which == "register":
            raise FieldError("register", "sent twice on one stream; a new Register needs a new stream")
        else:
            raise FieldError("message", "an empty SyncRequest; set one of register, ack, nack, telemetry, "
                                        "events")
        if now - st.last_touch >= self.config.heartbeat_write_interval and which not in ("ack", "nack"):
            st.last_touch = now
            self._note(st.node_id)

    def _on_ack(self, st: _Stream, version: int, now: float) -> None:
        view = st.outstanding
        if view is None or version != view.version:
            self.counts["stale_answers"] += 1
            LOGGER.debug("node %s: ACK of %d, but %s is in flight", st.node_id, version,
                         "nothing" if view is None else view.version)
            return
        st.outstanding = None
        st.acked = view
        st.nacked = None
        st.last_touch = now
        memory = self._memory.get(st.node_id)
        if memory is not None:
            memory.acked = view
        self.counts["acks"] += 1
        self.round_trip.observe(now - st.sent_at)
        self._note(st.node_id, applied_version=view.version, applied_time=_now(), last_error=None)
        self._pump(st)

    def _on_nack(self, st: _Stream, nack: sync_service_pb2.Nack, now: float) -> None:
        view = st.outstanding
        if view is None or nack.version_rejected != view.version:
            self.counts["stale_answers"] += 1
            return
        st.outstanding = None
        st.last_touch = now
        self.counts["nacks"] += 1
        if nack.error.code == _BASE_MISMATCH:
            LOGGER.info("node %s holds another version than %s: sending a snapshot", st.node_id,
                        st.acked.version if st.acked else "known",
                        extra={"event": "sync_base_mismatch", "node": st.node_id})
            st.acked = None
            self._pump(st)
            return
        st.nacked = view
        error = json_format.MessageToDict(nack.error, preserving_proto_field_name=True)
        LOGGER.warning("node %s refused version %d (keeps %d): %s", st.node_id, view.version,
                       nack.last_good_version, nack.error.message or "no reason given",
                       extra={"event": "sync_nack", "node": st.node_id, "version": view.version,
                              "last_good_version": nack.last_good_version, "error": error})
        self._note(st.node_id, last_error=error)
        self._pump(st)

    def _publish(self, node_id: str, events: list[event_pb2.Event]) -> None:
        try:
            stored = self._events.publish(events, node=node_name(node_id))
            if self._on_events is not None:
                self._on_events(node_id, stored)
        except Exception:
            LOGGER.exception("storing node %s's events failed", node_id)

    # -- the outside --

    @property
    def streams(self) -> int:
        return len(self._streams)

    def node_state(self, node_id: str) -> dict[str, Any] | None:
        """What the hub knows of a connected node's stream (tests, debugging)."""
        st = self._streams.get(node_id)
        if st is None:
            return None
        return {"target": st.target.version if st.target else None,
                "acked": st.acked.version if st.acked else None,
                "outstanding": st.outstanding.version if st.outstanding else None,
                "nacked": st.nacked.version if st.nacked else None}

    def close(self) -> None:
        """Stop the watcher, write what is pending (call after the server stopped)."""
        self._closed.set()
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            if self.config.gc_freeze:
                gc.unfreeze()
        if self._watcher is not None:
            self._watcher.join(WATCH_SECONDS * 4)
        self._event_pool.shutdown(wait=True)
        self._writer.close()

    def collect_metrics(self, out: Exposition) -> None:
        c = self.counts
        out.add("breakwater_controller_sync_streams", "gauge", "Agents with a sync stream open", self.streams)
        help_updates = "Rule set updates sent to agents, by kind"
        out.family("breakwater_controller_sync_updates_total", "counter", help_updates)
        for kind, key in (("snapshot", "snapshots"), ("delta", "deltas"), ("reconcile", "reconciles")):
            out.add("breakwater_controller_sync_updates_total", "counter", help_updates, c[key],
                    {"kind": kind})
        help_answers = "Agents' answers to updates, by kind (stale: of no update in flight)"
        out.family("breakwater_controller_sync_answers_total", "counter", help_answers)
        for kind, key in (("ack", "acks"), ("nack", "nacks"), ("stale", "stale_answers")):
            out.add("breakwater_controller_sync_answers_total", "counter", help_answers, c[key],
                    {"kind": kind})
        out.add("breakwater_controller_sync_telemetry_total", "counter", "TelemetrySummary messages received",
                c["telemetry"])
        out.add("breakwater_controller_sync_events_total", "counter", "Events agents sent up", c["events"])
        out.add("breakwater_controller_sync_node_write_failures_total", "counter",
                "Node state writes that failed", self._writer.failures)
        out.histogram("breakwater_controller_sync_round_trip_seconds",
                      "From sending an update to the agent's ACK", self.round_trip)


# --- the servicer -----------------------------------------------------------------------


class SyncServicer:
    """``breakwater.v1.SyncService`` over a :class:`SyncHub` (coroutine
    methods: serve it on grpc.aio). Responses are yielded serialized, so
    every stream of a group sends the same bytes; :func:`sync_service`
    registers it with a serializer that passes bytes through."""

    def __init__(self, hub: SyncHub) -> None:
        self.hub = hub

    async def Sync(self, request_iterator: AsyncIterator[sync_service_pb2.SyncRequest],
                   context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        hub = self.hub
        first = await context.read()  # the request iterator wraps read(): skip a layer per message
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("message") != "register":
            raise FieldError("register", "the first message of a stream must be register (got "
                                         f"{first.WhichOneof('message') or 'an empty message'})")
        st = await hub.open(first.register, context.peer())
        loop = asyncio.get_running_loop()
        reader = loop.create_task(hub.read(st, context))
        try:
            while True:
                while st.outbox:
                    yield st.outbox.popleft()
                if st.ended:
                    break
                st.waiter = loop.create_future()
                await st.waiter
                st.waiter = None
            if st.error is not None:
                raise st.error
        finally:
            reader.cancel()
            hub.close_stream(st)


def _serialize(message: bytes | Any) -> bytes:
    if isinstance(message, bytes):
        return message
    out: bytes = message.SerializeToString()
    return out


def sync_service(servicer: SyncServicer) -> Service:
    """The servicer as a :class:`~controller.api.server.Service` (for any grpc.aio server)."""
    def add(server: grpc.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.Sync, request_deserializer=sync_service_pb2.SyncRequest.FromString,
            response_serializer=_serialize)
        generic = grpc.method_handlers_generic_handler(SYNC_SERVICE, {"Sync": handler})
        server.add_generic_rpc_handlers((generic,))

    return Service(SYNC_SERVICE, add)


# --- the hook ---------------------------------------------------------------------------


class SyncServices:
    """What :func:`add_sync_services` set up: the hub, the telemetry store,
    the fleet detector and their housekeeping thread. ``close()`` after the
    server stopped; ``collect_metrics(exposition)`` for Prometheus."""

    def __init__(self, hub: SyncHub, telemetry: Any, fleet: Any, *, fold_every: float,
                 tick_every: float | None) -> None:
        self.hub = hub
        self.telemetry = telemetry
        self.fleet = fleet
        self._fold_every = fold_every
        self._tick_every = tick_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._housekeeping, name="breakwater-fleet", daemon=True)
        self._thread.start()

    def _housekeeping(self) -> None:
        next_tick = time.monotonic() + (self._tick_every or 0)
        step = min(self._fold_every, self._tick_every or self._fold_every)
        while not self._stop.wait(step):
            try:
                self.telemetry.fold()
                if self.fleet is not None and self._tick_every is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self._tick_every
                    self.fleet.tick()
            except Exception:
                LOGGER.exception("fleet housekeeping failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.hub.close()

    def collect_metrics(self, out: Exposition) -> None:
        self.hub.collect_metrics(out)
        out.add("breakwater_controller_telemetry_entries", "gauge", "Address entries of telemetry kept",
                self.telemetry.entries)
        out.add("breakwater_controller_telemetry_dropped_total", "counter",
                "Telemetry summaries dropped because folding fell behind", self.telemetry.dropped)
        if self.fleet is not None:
            self.fleet.collect_metrics(out)


def _sections(config: object) -> Mapping[str, Mapping[str, Any]]:
    if isinstance(config, Mapping):
        return config
    sections = getattr(config, "sections", None)
    return sections if isinstance(sections, Mapping) else {}


def _configs(config: object) -> tuple[SyncConfig, Any, Any]:
    from ..api.telemetry import TelemetryConfig
    from .detector import FleetConfig

    tables = _sections(config)
    defaults: dict[str, Any] = {}
    reconcile = getattr(config, "reconcile_interval", None)
    if isinstance(reconcile, int | float) and not isinstance(reconcile, bool):
        defaults["reconcile_interval"] = float(reconcile)

    def parsed(name: str, parse: Callable[[Mapping[str, object]], Any]) -> Any:
        try:
            return parse(tables.get(name, {}))
        except FieldError as exc:
            raise FieldError(f"{name}.{exc.path}" if exc.path else name, exc.what) from None

    return (parsed("sync", lambda t: SyncConfig.from_dict(t, **defaults)),
            parsed("telemetry", TelemetryConfig.from_dict), parsed("fleet", FleetConfig.from_dict))


def check_config(config: object) -> None:
    """Check the ``[sync]``, ``[telemetry]`` and ``[fleet]`` tables (as
    :func:`add_sync_services` reads them) without building anything: a
    :class:`~controller.rules.model.FieldError` names the first bad key
    (``fleet.mitigate.rule_ttl``). For ``--check-config``."""
    _configs(config)


def add_sync_services(registry: Any, store: FleetStore, events: EventLog, config: object = None, *,
                      backend: Any = None) -> SyncServices:
    """Add SyncService and TelemetryService to the controller's server.

    ``registry``: anything with ``add(Service)`` (the controller's
    ServiceRegistry), a list of services, or a grpc.aio server (the services
    are added to it directly). ``config``: the controller's configuration
    (its ``reconcile_interval`` and its ``sections``: the ``sync``,
    ``telemetry`` and ``fleet`` tables), or a mapping of those tables, or
    None for the defaults. ``backend``: the API backend; the fleet
    detector's rule changes go through its ``apply`` so their rule events
    are published (without it, straight to the store). Errors in the tables
    are :class:`~controller.rules.model.FieldError` s with the table's name in
    front (``sync.top_sources``)."""
    from ..api.telemetry import FleetTelemetry
    from ..api.telemetry_service import TelemetryServicer, telemetry_service
    from .detector import FleetDetector

    sync_cfg, tel_cfg, fleet_cfg = _configs(config)
    telemetry = FleetTelemetry(tel_cfg)
    apply = getattr(backend, "apply", None)
    fleet = FleetDetector(fleet_cfg, telemetry, store, events, apply=apply) if fleet_cfg.enabled else None
    hub = SyncHub(store, events, sync_cfg, telemetry=telemetry,
                  on_events=fleet.observe if fleet is not None else None)
    services = [sync_service(SyncServicer(hub)),
                telemetry_service(TelemetryServicer(telemetry, known_node=store.node))]
    if isinstance(registry, list):
        registry.extend(services)
    elif hasattr(registry, "add") and not isinstance(registry, grpc.aio.Server):
        for service in services:
            registry.add(service)
    else:
        for service in services:
            service.add(registry)
    return SyncServices(hub, telemetry, fleet, fold_every=tel_cfg.bucket_seconds,
                        tick_every=fleet_cfg.interval if fleet is not None else None)
