"""The agent's side of ``SyncService``: one stream to the controller.

:class:`SyncClient` runs in a thread of its own. It opens ``Sync``, sends
``Register`` (the agent's identity from a callable, and ``resume_version``:
the version of the controller layer it holds), then, for as long as the
stream lasts:

* each ``RuleSnapshot`` / ``RuleDelta`` becomes a new :class:`ControllerLayer`
  (validated with :mod:`controller.api.convert`, so every refusal names the
  rule and the proto field). The layer goes to the ``apply`` callable (the
  agent hands it to its loop thread, which swaps it in with the other rule
  layers, atomically, and returns once it is in force or raises), is
  written to the agent's SQLite store, and is ACKed. A layer that is
  invalid, does not fit the data plane, or a delta whose ``base_version``
  is not the version held is NACKed with ``convert.apply_error`` and the
  version still in force; nothing changes on the node.
* the attack and rule events the agent logged (the ``events`` and
  ``rule_events`` tables of :class:`~controller.agent.state.Store`) go up as
  ``LocalEvents`` in the order of their shared sequence, one batch in
  flight at a time; the sequence of the last batch gRPC has handed to the
  transport is stored, so events logged while the controller is away go up
  when the stream returns, and nothing goes twice while the stream is
  healthy (a stream that breaks with a batch in flight may lose that batch
  or, if the break comes before it was handed over, send it again on the
  next stream). The first sync of a store starts the cursor at its newest
  event: history from before the agent had a controller stays local;
* :meth:`SyncClient.offer_telemetry` queues a ``TelemetrySummary`` from the
  agent's loop; while there is no stream, or the queue is full
  (:data:`TELEMETRY_BACKLOG`), summaries are dropped (counted), never
  stored up.

A stream that fails is reopened with tenacity under :data:`RECONNECT`
(exponential backoff with jitter, capped); one that lasted
:data:`HEALTHY_STREAM_SECONDS` starts the backoff over. With several
controllers (several over one etcd) a stream that ends moves the client
to the next one in the list, at once within a round of the list, with the
backoff after each whole round. Meanwhile the node
keeps enforcing the layer it holds: nothing here removes rules because the
controller is away.

Threads: the client's own (``breakwater-sync``) owns the stream, the store
connection and the held layer; a reader thread per stream turns responses
into work for it; gRPC's request thread pulls requests from an
:class:`_Outbox`. Nothing else is shared but :meth:`offer_telemetry`,
:meth:`notify_events`, :attr:`held` and :meth:`stats`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import grpc
import tenacity
from google.protobuf import json_format, timestamp_pb2

from breakwater.v1 import event_pb2, rule_pb2, sync_service_pb2, sync_service_pb2_grpc, telemetry_pb2

from ..addresses import parse_prefix
from ..api import convert
from ..api.status import from_rpc_error
from ..detection.events import AttackEvent, SourceRate
from ..errors import BreakwaterError, InputError, UnavailableError
from ..rules.model import Rule, RuleSet
from .state import RuleEventRow, Store, StoredEvent
from .telemetry import DEFAULT_TOP_SOURCES

__all__ = [
    "HEALTHY_STREAM_SECONDS",
    "RECONNECT",
    "ApplyCancelledError",
    "ControllerLayer",
    "RetryPolicy",
    "SyncClient",
    "SyncStats",
    "local_events",
]

LOGGER = logging.getLogger("breakwater.sync")

HEALTHY_STREAM_SECONDS: Final = 10.0
"""A stream that stayed up this long resets the reconnect backoff."""
REGISTER_TIMEOUT_SECONDS: Final = 15.0
"""How long to wait for ``Registered`` before giving the stream up."""
EVENT_POLL_SECONDS: Final = 1.0
"""How often the store is checked for new events without a notification."""
EVENTS_BATCH: Final = 200
"""Most events of each kind in one ``LocalEvents``."""
TELEMETRY_BACKLOG: Final = 8
"""Summaries queued for a slow stream; older ones are dropped first."""
MAX_RECEIVE_BYTES: Final = 256 << 20
"""Largest message accepted from the controller: a snapshot of 1M rules fits."""
KEEPALIVE_SECONDS: Final = 300.0
"""HTTP/2 keepalive ping period: gRPC servers refuse more frequent pings
on streams that send them nothing (5 min by default). With keepalive on,
gRPC also sets TCP_USER_TIMEOUT to the keepalive timeout, so a stream whose
telemetry is not acknowledged for that long breaks quickly."""
KEEPALIVE_TIMEOUT_SECONDS: Final = 20.0
JOIN_SECONDS: Final = 5.0

_RULE_EVENT_KINDS: Final = {
    "created": event_pb2.RULE_EVENT_KIND_CREATED,
    "updated": event_pb2.RULE_EVENT_KIND_UPDATED,
    "deleted": event_pb2.RULE_EVENT_KIND_DELETED,
    "expired": event_pb2.RULE_EVENT_KIND_EXPIRED,
}


class ApplyCancelledError(BreakwaterError):
    """The agent is stopping: the layer was not applied, and is not refused either."""


class _StreamEnded(UnavailableError):
    """The controller ended the stream, or it broke."""


# --- retry policies -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """A named reconnect policy: waits of ``initial`` seconds doubling up
    to ``maximum``, each plus a random 0..``jitter`` seconds (so a fleet
    whose controller restarts does not come back in one burst)."""

    name: str
    initial: float
    maximum: float
    jitter: float

    def wait(self, attempt: int, round_size: int = 1) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1),
        when a round tries ``round_size`` controllers: the next controller of
        a round at once (0..:data:`FAILOVER_JITTER` s), and after each whole
        round ``initial`` doubling up to ``maximum``, plus jitter."""
        if attempt % round_size:
            return random.uniform(0, FAILOVER_JITTER)
        rounds = attempt // round_size
        return min(self.maximum, self.initial * float(2 ** (rounds - 1))) + random.uniform(0, self.jitter)

    def retrying(self, stopped: threading.Event,
                 before_sleep: Callable[[tenacity.RetryCallState], None],
                 round_size: int = 1) -> tenacity.Retrying:
        """Retry any failure until ``stopped`` is set; sleeps wake up on it.
        ``round_size``: how many controllers one round tries (see :meth:`wait`)."""
        return tenacity.Retrying(
            wait=lambda state: self.wait(state.attempt_number, round_size),
            retry=tenacity.retry_if_exception_type(Exception),
            stop=tenacity.stop_when_event_set(stopped),
            sleep=lambda seconds: _wait(stopped, seconds),
            before_sleep=before_sleep,
            reraise=False,
        )


def _wait(event: threading.Event, seconds: float) -> None:
    event.wait(seconds)


RECONNECT: Final = RetryPolicy("reconnect", initial=0.5, maximum=30.0, jitter=1.0)
"""The agent's policy for its controller stream: 0.5, 1, 2, 4 ... 30 s
(per round of its controllers)."""
FAILOVER_JITTER: Final = 0.2
"""Most seconds waited before trying the next controller of a round."""


# --- the controller layer ---------------------------------------------------------------


def _rule_id(msg: rule_pb2.Rule) -> str:
    return msg.name.removeprefix("rules/")


@dataclass(frozen=True)
class ControllerLayer:
    """The rules the controller pushed, at one version: ``rules`` in their
    wire form by rule id (what the local API shows), ``ruleset`` as the
    agent enforces them (validated; origin ``controller``, so the agent can
    tell them from its own)."""

    version: int = 0
    rules: Mapping[str, rule_pb2.Rule] = field(default_factory=dict)
    ruleset: RuleSet = field(default_factory=RuleSet)

    @classmethod
    def build(cls, version: int, msgs: Sequence[rule_pb2.Rule], *, path: str = "rules") -> ControllerLayer:
        """A layer of exactly ``msgs``; invalid rules raise :class:`FieldError`
        at ``path[i].<field>``."""
        ruleset = convert.ruleset_from_proto(msgs, path=path)
        wire = {_rule_id(m): m for m in msgs}
        return cls(version, dict(sorted(wire.items())), _as_controller(ruleset.rules))

    def with_delta(self, delta: sync_service_pb2.RuleDelta) -> ControllerLayer:
        """This layer changed by ``delta`` (whose base must be this version);
        invalid upserts raise at ``upserts[i].<field>``."""
        upserts = convert.ruleset_from_proto(delta.upserts, path="upserts")
        gone = set(delta.removed_rule_ids) | {r.id for r in upserts}
        kept = [r for r in self.ruleset.rules if r.id not in gone]
        wire = {k: v for k, v in self.rules.items() if k not in gone}
        wire.update({_rule_id(m): m for m in delta.upserts})
        return ControllerLayer(delta.version, dict(sorted(wire.items())),
                               _as_controller((*kept, *upserts.rules)))

    @property
    def next_expiry(self) -> datetime | None:
        """The earliest ``expires_at`` of the layer's rules."""
        times = [r.expires_at for r in self.ruleset.rules if r.expires_at is not None]
        return min(times) if times else None

    def docs(self) -> dict[str, str]:
        """Each rule's stored form (JSON of its wire form), by rule id."""
        return {rid: json_format.MessageToJson(m, indent=None) for rid, m in self.rules.items()}

    @classmethod
    def from_docs(cls, version: int, docs: Mapping[str, str]) -> ControllerLayer:
        """A layer read back from the store (validated again)."""
        msgs = [json_format.Parse(doc, rule_pb2.Rule(), ignore_unknown_fields=True) for doc in docs.values()]
        return cls.build(version, msgs, path="controller_rules")

    @classmethod
    def load(cls, store: Store) -> ControllerLayer:
        """The layer stored in ``store``; an unreadable one is logged and
        ignored (the controller sends a snapshot to an agent holding none)."""
        rows = store.controller_layer()
        try:
            return cls.from_docs(rows.version, rows.docs)
        except (InputError, json_format.ParseError) as exc:
            LOGGER.error("stored controller rules (version %d) unreadable, ignored: %s", rows.version, exc,
                         extra={"event": "controller_rules_unreadable", "version": rows.version})
            return cls()


def _as_controller(rules: Sequence[Rule]) -> RuleSet:
    return RuleSet.from_rules(sorted((replace(r, origin="controller") for r in rules), key=lambda r: r.id))


# --- events up ----------------------------------------------------------------------------


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def _attack(doc: Mapping[str, Any]) -> AttackEvent:
    """An attack event from its stored :meth:`AttackEvent.to_dict` (which
    keeps the number of offenders, not their addresses)."""
    victim = doc.get("victim")
    return AttackEvent(
        id=str(doc["id"]), kind=doc["kind"], vector=doc["vector"],
        victim=parse_prefix(victim, field="victim") if victim else None, profile=doc["profile"],
        t=float(doc["t"]), onset_at=float(doc["onset_at"]), started_at=float(doc["started_at"]),
        ended_at=None if doc.get("ended_at") is None else float(doc["ended_at"]),
        pps=float(doc["pps"]), bps=float(doc["bps"]), peak_pps=float(doc["peak_pps"]),
        peak_bps=float(doc["peak_bps"]), dropped_pps=float(doc["dropped_pps"]),
        threshold_pps=float(doc["threshold_pps"]), baseline_pps=float(doc["baseline_pps"]),
        over_threshold=bool(doc["over_threshold"]), sources=int(doc["sources"]),
        top_sources=tuple(SourceRate(parse_prefix(s["address"], field="top_sources"), float(s["pps"]),
                                     float(s.get("bps", 0.0))) for s in doc.get("top_sources", ())),
        applied=tuple(doc.get("applied", ())),
    )


def _attack_event(row: StoredEvent) -> event_pb2.Event:
    attack = _attack(row.doc)
    # the detector's clock is the agent's monotonic one; the row's wall time
    # was taken when the interval of the event's sample was stored
    wall = row.at - attack.t
    out = event_pb2.Event(attack=convert.attack_to_proto(attack, wall_offset=wall, interface=row.ifname))
    out.time.CopyFrom(_timestamp(row.at))
    return out


def _rule_event(row: RuleEventRow) -> event_pb2.Event:
    rule = Rule.from_dict(row.doc["rule"])
    ev = event_pb2.RuleEvent(kind=_RULE_EVENT_KINDS[row.kind], rule_id=row.rule_id,
                             rule=convert.rule_to_proto(rule), actor=str(row.doc.get("actor", "")),
                             attack_id=str(row.doc.get("attack_id", "")))
    out = event_pb2.Event(rule=ev)
    out.time.CopyFrom(_timestamp(row.at))
    return out


def local_events(rows: Sequence[StoredEvent | RuleEventRow]) -> list[event_pb2.Event]:
    """Stored events as ``breakwater.v1.Event`` s, in the given order (rows
    that no longer parse are logged and left out)."""
    out: list[event_pb2.Event] = []
    for row in rows:
        try:
            out.append(_attack_event(row) if isinstance(row, StoredEvent) else _rule_event(row))
        except (KeyError, ValueError, TypeError, InputError) as exc:
            LOGGER.warning("event %d not delivered: unreadable (%s)", row.seq, exc)
    return out


# --- the request stream ---------------------------------------------------------------------


class _Outbox:
    """What the agent sends on one stream, as gRPC pulls it: control
    messages and event batches in order, then telemetry (newest
    :data:`TELEMETRY_BACKLOG` kept). ``on_sent`` callbacks run once gRPC
    has handed the message to the transport (it pulls the next one only then)."""

    def __init__(self, backlog: int = TELEMETRY_BACKLOG) -> None:
        self._cond = threading.Condition()
        self._control: deque[tuple[sync_service_pb2.SyncRequest, Callable[[], None] | None]] = deque()
        self._telemetry: deque[sync_service_pb2.SyncRequest] = deque(maxlen=backlog)
        self._closed = False
        self.dropped = 0

    def put(self, request: sync_service_pb2.SyncRequest, on_sent: Callable[[], None] | None = None) -> None:
        with self._cond:
            if not self._closed:
                self._control.append((request, on_sent))
                self._cond.notify()

    def put_telemetry(self, summary: telemetry_pb2.TelemetrySummary) -> bool:
        """Queue a summary; False when that dropped an older one (or the stream is closed)."""
        with self._cond:
            if self._closed:
                return False
            full = len(self._telemetry) == self._telemetry.maxlen
            if full:
                self.dropped += 1
            self._telemetry.append(sync_service_pb2.SyncRequest(telemetry=summary))
            self._cond.notify()
            return not full

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def requests(self) -> Iterator[sync_service_pb2.SyncRequest]:
        while True:
            with self._cond:
                while not self._closed and not self._control and not self._telemetry:
                    self._cond.wait()
                if self._closed:
                    return
                if self._control:
                    request, on_sent = self._control.popleft()
                else:
                    request, on_sent = self._telemetry.popleft(), None
            yield request
            if on_sent is not None:
                on_sent()


# --- work items for the client's thread --------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    session: int
    message: sync_service_pb2.SyncResponse


@dataclass(frozen=True)
class _Ended:
    session: int
    error: BaseException | None


@dataclass(frozen=True)
class _Sent:
    session: int
    cursor: int


class _Wake:
    pass


@dataclass
class SyncStats:
    """Counters for the agent's metrics."""

    connected: bool = False
    controller_id: str = ""
    version: int = 0
    applied: int = 0
    nacked: dict[str, int] = field(default_factory=dict)
    """By ApplyErrorCode name."""
    reconnects: int = 0
    failovers: int = 0
    """Times the client moved on to the next of its controllers."""
    telemetry_sent: int = 0
    telemetry_dropped: int = 0
    events_sent: int = 0


# --- the client ------------------------------------------------------------------------------


class SyncClient:
    """The agent's stream to its controller: one of ``targets`` (``host:port``
    each, or one as a string), the first to begin with. The client sticks to
    its controller while the stream lasts; when the stream ends or cannot
    be opened it moves on to the next (:attr:`target` is the current one),
    at once within a round of the list and with :data:`RECONNECT`'s backoff
    after each whole round, and resumes from the version it holds (the
    versions mean the same on every controller over one store).

    ``identity`` returns the ``Register`` to send (``resume_version`` is set
    here); ``apply`` puts a layer in force or raises (a
    :class:`~controller.errors.BreakwaterError` is NACKed with its
    ``apply_error``; :class:`ApplyCancelledError` ends the stream instead).
    ``held`` is the layer the agent enforces at start (from its store).
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        identity: Callable[[], sync_service_pb2.Register],
        apply: Callable[[ControllerLayer], None],
        state_dir: Path,
        held: ControllerLayer | None = None,
        policy: RetryPolicy = RECONNECT,
        credentials: grpc.ChannelCredentials | None = None,
        healthy_seconds: float = HEALTHY_STREAM_SECONDS,
    ) -> None:
        self.targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not self.targets:
            raise ValueError("SyncClient needs at least one controller")
        self.target = self.targets[0]
        """The controller this client streams with (or tries next)."""
        self._last_target = self.target
        self._identity = identity
        self._apply = apply
        self._state_dir = state_dir
        self._held = held or ControllerLayer()
        self._policy = policy
        self._credentials = credentials
        self._healthy_seconds = healthy_seconds
        self._stopping = threading.Event()
        self._work: queue.Queue[_Response | _Ended | _Sent | _Wake] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats = SyncStats(version=self._held.version)
        self._outbox: _Outbox | None = None  # of the registered stream, for telemetry
        self._call: Any = None  # the stream's call (a grpc.Call and an iterator)
        self._cursor = 0  # the sequence of the last event delivered (as stored)
        self._session = 0
        self._sessions = 0
        self.top_sources = DEFAULT_TOP_SOURCES
        """How many top sources the controller wants per summary."""

    # -- what the agent calls --

    @property
    def held(self) -> ControllerLayer:
        """The layer in force (last ACKed, or loaded at start)."""
        return self._held

    def stats(self) -> SyncStats:
        with self._lock:
            return replace(self._stats, nacked=dict(self._stats.nacked))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="breakwater-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = JOIN_SECONDS) -> None:
        """End the stream and the thread (the held layer stays in force)."""
        self._stopping.set()
        self._work.put(_Wake())
        with self._lock:
            call, outbox = self._call, self._outbox
        if outbox is not None:
            outbox.close()
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def offer_telemetry(self, summary: telemetry_pb2.TelemetrySummary) -> bool:
        """Queue a summary for the stream; False when it (or an older one) was dropped."""
        with self._lock:
            outbox = self._outbox
            if outbox is None:
                self._stats.telemetry_dropped += 1
                return False
        kept = outbox.put_telemetry(summary)
        with self._lock:
            self._stats.telemetry_sent += 1
            if not kept:
                self._stats.telemetry_dropped += 1
        return kept

    def notify_events(self) -> None:
        """The agent stored events: look now rather than at the next poll."""
        self._work.put(_Wake())

    # -- the thread --

    def _run(self) -> None:
        store = Store.open(self._state_dir)
        try:
            cursor = store.sync_cursor()
            if cursor is None:  # first sync from this store: the history before it stays local
                cursor = store.last_event_seq()
                store.set_sync_cursor(cursor)
            self._cursor = cursor
            while not self._stopping.is_set():
                try:
                    self._policy.retrying(self._stopping, self._before_sleep,
                                          len(self.targets))(self._stream, store)
                except tenacity.RetryError:
                    break
        except Exception:
            LOGGER.exception("controller sync stopped", extra={"event": "sync_failed"})
        finally:
            store.close()

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if exc is not None and not isinstance(exc, BreakwaterError):
            LOGGER.error("controller stream failed", exc_info=exc)
        failed = self._last_target
        LOGGER.warning("controller %s: %s; retrying%s in %.1f s (%s, attempt %d)", failed, exc,
                       f" with {self.target}" if self.target != failed else "", wait,
                       self._policy.name, state.attempt_number,
                       extra={"event": "controller_retry", "controller": failed, "next": self.target,
                              "error": str(exc), "retry_in": round(wait, 3), "attempt": state.attempt_number})

    def _stream(self, store: Store) -> None:
        """One stream, from connect to its end. Returns when the stream was
        healthy (or the client stops), raises when it failed early."""
        self._last_target = self.target
        with self._lock:
            self._session += 1
            sid = self._session
            self._sessions += 1
            if self._sessions > 1:
                self._stats.reconnects += 1
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                   ("grpc.keepalive_time_ms", int(KEEPALIVE_SECONDS * 1000)),
                   ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000))]
        channel = (grpc.secure_channel(self.target, self._credentials, options) if self._credentials
                   else grpc.insecure_channel(self.target, options))
        outbox = _Outbox()
        register = self._register()
        outbox.put(sync_service_pb2.SyncRequest(register=register))
        call = sync_service_pb2_grpc.SyncServiceStub(channel).Sync(outbox.requests())
        with self._lock:
            self._call = call
        reader = threading.Thread(target=self._read, args=(sid, call), name="breakwater-sync-recv",
                                  daemon=True)
        reader.start()
        registered_at: float | None = None
        try:
            registered_at = self._serve(sid, call, outbox, store)
        finally:
            with self._lock:
                self._outbox = None
                self._call = None
                was = self._stats.connected
                self._stats.connected = False
            outbox.close()
            call.cancel()
            reader.join(JOIN_SECONDS)
            channel.close()
            self._drain_sent(store)
            if was:
                LOGGER.warning("controller %s: disconnected; keeping rule version %d", self.target,
                               self._held.version, extra={"event": "controller_disconnected",
                                                          "controller": self.target,
                                                          "version": self._held.version})
        if self._stopping.is_set():
            return
        self._fail_over()
        if registered_at is not None and time.monotonic() - registered_at >= self._healthy_seconds:
            return  # a healthy stream ended: reconnect at once, backoff from the start
        raise _StreamEnded(f"stream ended {'after' if registered_at else 'before'} registering",
                           "UNAVAILABLE")

    def _fail_over(self) -> None:
        """The stream ended: the next attempt goes to the next controller."""
        if len(self.targets) < 2:
            return
        old = self.target
        with self._lock:
            self.target = self.targets[(self.targets.index(old) + 1) % len(self.targets)]
            self._stats.failovers += 1
        LOGGER.warning("controller %s: stream lost; failing over to %s (keeping rule version %d)", old,
                       self.target, self._held.version,
                       extra={"event": "controller_failover", "controller": old, "next": self.target,
                              "version": self._held.version})

    def _drain_sent(self, store: Store) -> None:
        """Record the batches handed over that the stream's end left
        unrecorded; the rest of the work of a finished stream is moot."""
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Sent) and item.cursor > self._cursor:
                self._cursor = item.cursor
                store.set_sync_cursor(item.cursor)

    def _read(self, sid: int, call: Any) -> None:
        try:
            for message in call:
                self._work.put(_Response(sid, message))
            self._work.put(_Ended(sid, None))
        except grpc.RpcError as exc:
            self._work.put(_Ended(sid, exc))

    def _register(self) -> sync_service_pb2.Register:
        out = sync_service_pb2.Register()
        out.CopyFrom(self._identity())
        out.resume_version = self._held.version
        return out

    def _serve(self, sid: int, call: Any, outbox: _Outbox, store: Store) -> float | None:
        """Handle the stream's work until it ends; returns when it registered
        (monotonic), raising on a failure before that."""
        started = time.monotonic()
        registered_at: float | None = None
        in_flight = False
        queued = [self._cursor]  # the last sequence queued on this stream
        while not self._stopping.is_set():
            if registered_at is None and time.monotonic() - started > REGISTER_TIMEOUT_SECONDS:
                raise UnavailableError(f"no Registered within {REGISTER_TIMEOUT_SECONDS:g} s",
                                       "DEADLINE_EXCEEDED")
            try:
                item = self._work.get(timeout=EVENT_POLL_SECONDS)
            except queue.Empty:
                item = _Wake()
            if isinstance(item, _Ended) and item.session == sid:
                if item.error is None:
                    LOGGER.info("controller %s ended the stream", self.target)
                    return registered_at
                err = from_rpc_error(item.error) if isinstance(item.error, grpc.RpcError) else item.error
                if registered_at is not None:
                    LOGGER.info("controller stream broke: %s", err)
                    return registered_at
                raise err
            if isinstance(item, _Response) and item.session == sid:
                kind = item.message.WhichOneof("message")
                if registered_at is None:
                    if kind != "registered":
                        raise UnavailableError(f"the controller sent {kind} before Registered", "INTERNAL")
                    registered_at = time.monotonic()
                    self._registered(item.message.registered, outbox)
                elif kind == "registered":
                    LOGGER.warning("controller sent Registered twice; ignored")
                else:
                    self._update(item.message, outbox, store)
            elif isinstance(item, _Sent):
                # handed to the transport, on this stream or a previous one
                if item.session == sid:
                    in_flight = False
                if item.cursor > self._cursor:
                    self._cursor = item.cursor
                    store.set_sync_cursor(item.cursor)
            if registered_at is not None and not in_flight:
                in_flight = self._send_events(sid, outbox, store, queued)
        return registered_at

    def _registered(self, msg: sync_service_pb2.Registered, outbox: _Outbox) -> None:
        self.top_sources = msg.top_sources or DEFAULT_TOP_SOURCES
        with self._lock:
            self._outbox = outbox
            self._stats.connected = True
            self._stats.controller_id = msg.controller_id
        LOGGER.info("controller %s: connected as %s (controller %s), holding rule version %d", self.target,
                    msg.node, msg.controller_id or "-", self._held.version,
                    extra={"event": "controller_connected", "controller": self.target, "node": msg.node,
                           "controller_id": msg.controller_id, "resume_version": self._held.version,
                           "telemetry_interval": msg.telemetry_interval.ToTimedelta().total_seconds(),
                           "top_sources": self.top_sources})

    def _send_events(self, sid: int, outbox: _Outbox, store: Store, queued: list[int]) -> bool:
        """Queue the next batch of stored events; whether one is now in flight."""
        rows = store.events_after(queued[0], EVENTS_BATCH)
        if not rows:
            return False
        queued[0] = rows[-1].seq
        events = local_events(rows)
        after = queued[0]
        request = sync_service_pb2.SyncRequest(events=sync_service_pb2.LocalEvents(events=events))

        def sent() -> None:
            with self._lock:
                self._stats.events_sent += len(events)
            self._work.put(_Sent(sid, after))

        outbox.put(request, on_sent=sent)
        return True

    # -- rule updates --

    def _update(self, msg: sync_service_pb2.SyncResponse, outbox: _Outbox, store: Store) -> None:
        kind = msg.WhichOneof("message")
        held = self._held
        t0 = time.monotonic()
        if kind == "snapshot":
            version = msg.snapshot.version
            wire: Sequence[rule_pb2.Rule] = msg.snapshot.rules
            path = "rules"
            what = "reconcile" if msg.snapshot.reconcile else "snapshot"
        elif kind == "delta":
            version = msg.delta.version
            wire = msg.delta.upserts
            path = "upserts"
            what = "delta"
            if msg.delta.base_version != held.version:
                error = rule_pb2.ApplyError(
                    code=rule_pb2.APPLY_ERROR_CODE_BASE_MISMATCH,
                    message=f"delta {msg.delta.base_version} -> {version}: this node holds version "
                            f"{held.version}")
                self._nack(outbox, version, error)
                return
        else:
            LOGGER.warning("controller sent an unknown message (%s); ignored", kind)
            return
        try:
            layer = (ControllerLayer.build(version, wire) if kind == "snapshot"
                     else held.with_delta(msg.delta))
            self._apply(layer)
        except ApplyCancelledError:
            raise
        except BreakwaterError as exc:
            self._nack(outbox, version, convert.apply_error(exc, wire, path=path))
            return
        except Exception as exc:  # a bug: refuse the update, keep the stream
            LOGGER.exception("applying rule version %d failed", version)
            self._nack(outbox, version, convert.apply_error(exc))
            return
        try:
            if kind == "snapshot":
                store.set_controller_layer(version, layer.docs(), replace_all=True)
            else:
                docs = layer.docs()
                store.set_controller_layer(
                    version, {_rule_id(m): docs[_rule_id(m)] for m in msg.delta.upserts},
                    list(msg.delta.removed_rule_ids))
        except BreakwaterError as exc:
            # In force but not stored: a restart would go back to the stored
            # version and resume from it, which the controller handles.
            LOGGER.error("rule version %d in force but not stored: %s", version, exc,
                         extra={"event": "controller_rules_not_stored", "version": version})
        self._held = layer
        with self._lock:
            self._stats.applied += 1
            self._stats.version = version
        outbox.put(sync_service_pb2.SyncRequest(ack=sync_service_pb2.Ack(version=version)))
        LOGGER.info("controller rule version %d in force (%s, %d rules, %.3f s)", version, what,
                    len(layer.rules), time.monotonic() - t0,
                    extra={"event": "controller_rules_applied", "version": version, "kind": what,
                           "previous_version": held.version, "rules": len(layer.rules),
                           "seconds": round(time.monotonic() - t0, 6)})

    def _nack(self, outbox: _Outbox, version: int, error: rule_pb2.ApplyError) -> None:
        held = self._held.version
        code = rule_pb2.ApplyErrorCode.Name(error.code)
        with self._lock:
            self._stats.nacked[code] = self._stats.nacked.get(code, 0) + 1
        outbox.put(sync_service_pb2.SyncRequest(nack=sync_service_pb2.Nack(
            version_rejected=version, last_good_version=held, error=error)))
        LOGGER.warning("controller rule version %d refused, keeping %d: %s", version, held, error.message,
                       extra={"event": "controller_rules_nacked", "version": version,
                              "last_good_version": held, "code": code, "error": error.message,
                              "violations": [{"rule_id": v.rule_id, "field": v.field}
                                             for v in error.violations]})

