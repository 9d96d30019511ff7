"""The sync hub: the controller's end of every agent's sync stream, modelled
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
stream replaced it). A controller owns the liveness of the streams it
serves, no other: at start it resets only what its store says a previous
run of it left (:meth:`~controller.fleet.storeapi.Store.reset_connections`:
every node on SQLite, which one controller serves; nothing on etcd, where
each controller's liveness keys live on its own lease), so a second
controller starting over the same etcd leaves the first one's agents
connected.

**Versions.** A node's rule set at version N is every rule in force at N
whose scope selects it. A change that does not touch a node's rules leaves
its version where it was; a change that does gives it the store's version
of that change. Versions a node sees only grow.

**How it scales.** The servicer (:mod:`controller.fleet.syncservice`) is
asyncio (one event loop for every stream; see
:func:`controller.api.aio.create_aio_server`). One thread waits on
:meth:`FleetStore.wait_version` and wakes the loop; the loop reads only what
changed (:meth:`FleetStore.changes_since`) and updates the rule set of
each label group (the nodes with the same labels) and of each node with
rules scoped to it (:mod:`controller.fleet.ruleindex`). Nodes of a group
share one immutable view of their set, so each snapshot and each delta is
built and serialized once per group (and pair of versions), and every
stream of the group is sent the same bytes. Node state (registrations,
ACKs, NACKs, heartbeats, disconnects) is written by one thread, in order,
many nodes per transaction (:mod:`controller.fleet.nodewriter`).

**Garbage collection.** A thousand streams are a lot of long-lived objects,
and CPython's cyclic collector rescans all of them in every full
collection: at 1000 agents those pauses reach tens to hundreds of
milliseconds, right in the propagation path. So, ``gc_settle_seconds``
after the last new stream, the hub collects once and freezes what exists
(``gc.freeze``: the collector leaves those objects alone), and redoes that
every ``gc_refreeze_seconds`` (``gc.unfreeze``, collect, freeze) so cyclic
garbage that was frozen along is reclaimed. Full collections then cost a
few milliseconds. ``[sync] gc_freeze = false`` turns it off.

**Around it.** :mod:`controller.fleet.syncconfig` (the ``[sync]`` table),
:mod:`controller.fleet.syncstreams` (one agent's stream, what a node was
sent), :mod:`controller.fleet.syncservice` (the servicer) and
:mod:`controller.fleet.wiring` (:func:`~controller.fleet.wiring.add_sync_services`,
the hook the controller daemon calls).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import json_format

from breakwater.v1 import event_pb2, rule_pb2, sync_service_pb2

from ..api.convert import node_name
from ..api.handlers import decoded
from ..errors import BreakwaterError, FieldError, RemoteError
from ..metrics import Exposition, Histogram
from ..pki import serial_text
from ..rules.scope import check_labels, check_node_id
from .eventlog import EventLog, check_events
from .nodewriter import NodeWriter
from .ruleindex import EMPTY, LabelsKey, RuleIndex, RuleMessages, View
from .storeapi import Store
from .syncconfig import SyncConfig
from .syncstreams import Memory, Stream

__all__ = ["EventSink", "SyncHub"]

LOGGER = logging.getLogger("breakwater.synchub")

WATCH_SECONDS: Final = 0.25
"""How long the version watcher waits before it checks whether to stop."""
ROUND_TRIP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Bucket bounds (seconds) of the histogram from sending an update to its ACK."""
_BASE_MISMATCH: Final = rule_pb2.APPLY_ERROR_CODE_BASE_MISMATCH

EventSink = Callable[[str, Sequence[event_pb2.Event]], None]
"""Gets each node's events as stored (the fleet detector's promotions)."""


MAX_REGISTER_BYTES: Final = 16 * 1024
"""Largest Register a node may send: its record is shown by NodeService, and a
page of 1000 nodes must stay under the 4 MiB message limit."""
MAX_REGISTER_INTERFACES: Final = 64
"""Interfaces a Register may list."""
TELEMETRY_ALLOWANCE: Final = 4.0
"""A node may send up to this many TelemetrySummary per telemetry_interval on average ..."""
TELEMETRY_BURST: Final = 20.0
"""... and this many at once; more are dropped (counted): one node cannot push the others'
summaries out of the telemetry queue."""

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

    def __init__(self, store: Store, events: EventLog, config: SyncConfig | None = None, *,
                 telemetry: Any = None, on_events: EventSink | None = None) -> None:
        self.config = config or SyncConfig()
        self._store = store
        self._events = events
        self._telemetry = telemetry
        self._on_events = on_events
        self._index = RuleIndex()
        self._streams: dict[str, Stream] = {}
        self._memory: dict[str, Memory] = {}
        self._group_views: dict[LabelsKey, View] = {}
        self._node_views: dict[str, View] = {}
        self._messages = RuleMessages()
        self._notes: dict[str, dict[str, Any]] = {}
        self._notes_scheduled = False
        self._gc_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._event_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                 thread_name_prefix="breakwater-events")
        self._writer = NodeWriter(store, self.config.node_write_interval)
        self._registered = self._registered_template()
        self.counts: dict[str, int] = {k: 0 for k in (
            "snapshots", "deltas", "reconciles", "acks", "nacks", "stale_answers", "telemetry", "events",
            "streams_opened", "streams_replaced", "refreshes", "reloads", "events_dropped",
            "telemetry_dropped")}
        self._budgets: dict[tuple[str, str], tuple[float, float]] = {}  # (node, kind) -> (tokens, at)
        self.round_trip = Histogram(ROUND_TRIP_BUCKETS)
        version, rules = store.snapshot(include_expired=True)
        self._index.reload(version, rules)
        store.reset_connections()  # this controller's streams of a previous run are gone

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
            self._messages.prune(index.rules)
        else:
            version, changes = got
            if version == index.version:
                return
            self._messages.prune(index.rules, index.apply(version, changes))
        self.counts["refreshes"] += 1
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

    def _target_for(self, st: Stream) -> View:
        index = self._index
        shared = index.shared(st.labels)
        own = index.own_rules(st.node_id)
        current = st.target
        if current is not None and current.shared is shared and current.own is own:
            return current
        memory = self._memory.get(st.node_id)
        floor = max(current.version if current is not None else 0, memory.last_version if memory else 0)
        if own is EMPTY:
            view = self._group_views.get(st.labels)
            if view is None or view.shared is not shared or view.version <= floor:
                view = View(index.version, shared, EMPTY)
                self._group_views[st.labels] = view
        else:
            view = self._node_views.get(st.node_id)
            if view is None or view.shared is not shared or view.own is not own or view.version <= floor:
                view = View(index.version, shared, own)
                self._node_views[st.node_id] = view
        if memory is not None and view.version > memory.last_version:
            memory.last_version = view.version
        return view

    def _pump(self, st: Stream) -> None:
        """Send the node its next update, if it has none in flight and needs one."""
        if st.ended or st.outstanding is not None or st.target is None:
            return
        view = st.target
        if st.reconcile_due:
            st.reconcile_due = False
            self._send(st, view, self._messages.snapshot(view, True), "reconciles")
            self._schedule_reconcile(st, self.config.reconcile_interval)
            return
        if view is st.acked or view is st.nacked:
            return
        if st.acked is None or not st.deltas:
            self._send(st, view, self._messages.snapshot(view, False), "snapshots")
        else:
            self._send(st, view, self._messages.delta(st.acked, view), "deltas")

    def _send(self, st: Stream, view: View, message: bytes, kind: str) -> None:
        st.outstanding = view
        st.sent_at = time.monotonic()
        memory = self._memory.get(st.node_id)
        if memory is None:
            memory = self._memory[st.node_id] = Memory()
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

    def _schedule_reconcile(self, st: Stream, delay: float) -> None:
        loop = self._loop
        if loop is None or st.ended:
            return
        st.timer = loop.call_later(delay, self._reconcile, st)

    def _reconcile(self, st: Stream) -> None:
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

    async def open(self, reg: sync_service_pb2.Register, peer: str = "", serial: int = 0) -> Stream:
        """Check and record a Register; the new stream with Registered and
        its first update queued. ``serial``: the node certificate's, kept in
        the node's record (``certSerial``) so removing the node revokes it."""
        node_id = check_node_id(reg.node_id, "register.node_id")
        labels = check_labels(dict(reg.labels), "register.labels")
        if len(reg.interfaces) > MAX_REGISTER_INTERFACES:
            raise FieldError("register.interfaces", f"{len(reg.interfaces)} interfaces; at most "
                                                    f"{MAX_REGISTER_INTERFACES}")
        if reg.ByteSize() > MAX_REGISTER_BYTES:
            raise FieldError("register", f"{reg.ByteSize()} bytes; at most {MAX_REGISTER_BYTES} (a node's "
                                         "record must fit many to a ListNodes page)")
        self.bind()
        old = self._streams.get(node_id)
        st = Stream(node_id, tuple(labels.items()), reg.capabilities.deltas, peer)
        self._streams[node_id] = st
        self.counts["streams_opened"] += 1
        if old is not None:
            self.counts["streams_replaced"] += 1
            LOGGER.info("node %s: a new stream (%s) replaces the open one (%s)", node_id, peer, old.peer,
                        extra={"event": "sync_stream_replaced", "node": node_id})
            old.end(RemoteError(f"{st.name}: replaced by a newer stream of the same node", "ABORTED"))
        doc = _register_doc(reg)
        if serial:
            doc["certSerial"] = serial_text(serial)
        await asyncio.wrap_future(self._writer.register(node_id, labels, doc))
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

    def end_node(self, node_id: str, why: str) -> None:
        """End ``node_id``'s open stream, if any (from any thread): the node was removed."""
        loop = self._loop
        if loop is None:
            return

        def end() -> None:
            st = self._streams.get(node_id)
            if st is not None:
                st.end(RemoteError(why, "UNAUTHENTICATED"))

        loop.call_soon_threadsafe(end)

    def close_stream(self, st: Stream) -> None:
        st.end()
        if self._streams.get(st.node_id) is st:
            del self._streams[st.node_id]
            self._writer.update(st.node_id, connected=False)
            LOGGER.info("node %s: sync stream closed", st.node_id,
                        extra={"event": "sync_stream_closed", "node": st.node_id})

    async def read(self, st: Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Handle the agent's messages until its side ends; a bad message
        ends the stream with its error."""
        try:
            while not st.ended:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                self.handle(st, decoded(req))
        except asyncio.CancelledError:
            raise
        except BreakwaterError as exc:
            st.end(exc)
            return
        except Exception as exc:  # the transport: the agent went away
            LOGGER.debug("node %s: reading the stream failed: %s", st.node_id, exc)
        st.end()

    def handle(self, st: Stream, req: sync_service_pb2.SyncRequest) -> None:
        which = req.WhichOneof("message")
        now = time.monotonic()
        if which == "ack":
            self._on_ack(st, req.ack.version, now)
        elif which == "nack":
            self._on_nack(st, req.nack, now)
        elif which == "telemetry":
            self.counts["telemetry"] += 1
            per_second = TELEMETRY_ALLOWANCE / self.config.telemetry_interval
            if not self._take(st.node_id, "telemetry", 1, per_second, TELEMETRY_BURST, now):
                self.counts["telemetry_dropped"] += 1
            elif self._telemetry is not None:
                self._telemetry.offer(st.node_id, req.telemetry)
        elif which == "events":
            events = list(req.events.events)
            self.counts["events"] += len(events)
            if events:
                check_events(events, "events.events")  # refused here, not a traceback later
            allowed = self._allowance(st.node_id, len(events), now)
            if allowed < len(events):
                self.counts["events_dropped"] += len(events) - allowed
                events = events[:allowed]
            if events:
                self._event_pool.submit(self._publish, st.node_id, events)
        elif which == "register":
            raise FieldError("register", "sent twice on one stream; a new Register needs a new stream")
        else:
            raise FieldError("message", "an empty SyncRequest; set one of register, ack, nack, telemetry, "
                                        "events")
        if now - st.last_touch >= self.config.heartbeat_write_interval and which not in ("ack", "nack"):
            st.last_touch = now
            self._note(st.node_id)

    def _take(self, node_id: str, kind: str, n: int, rate: float, burst: float, now: float) -> bool:
        """Take ``n`` tokens of the node's ``kind`` budget (a token bucket); False if short."""
        tokens, at = self._budgets.get((node_id, kind), (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        ok = tokens >= n
        self._budgets[(node_id, kind)] = (tokens - n if ok else tokens, now)
        return ok

    def _allowance(self, node_id: str, n: int, now: float) -> int:
        """How many of ``n`` events the node may send now (its event budget)."""
        cfg = self.config
        tokens, at = self._budgets.get((node_id, "events"), (float(cfg.node_event_burst), now))
        tokens = min(float(cfg.node_event_burst), tokens + (now - at) * cfg.node_events_per_second)
        allowed = min(n, int(tokens))
        self._budgets[(node_id, "events")] = (tokens - allowed, now)
        return allowed

    def _on_ack(self, st: Stream, version: int, now: float) -> None:
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

    def _on_nack(self, st: Stream, nack: sync_service_pb2.Nack, now: float) -> None:
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
        out.add("breakwater_controller_sync_events_dropped_total", "counter",
                "Events dropped past a node's event budget (node_events_per_second, node_event_burst)",
                c["events_dropped"])
        out.add("breakwater_controller_sync_telemetry_dropped_total", "counter",
                "TelemetrySummary messages dropped: a node sent them faster than its interval allows",
                c["telemetry_dropped"])
        out.add("breakwater_controller_sync_node_write_failures_total", "counter",
                "Node state writes that failed", self._writer.failures)
        out.histogram("breakwater_controller_sync_round_trip_seconds",
                      "From sending an update to the agent's ACK", self.round_trip)
