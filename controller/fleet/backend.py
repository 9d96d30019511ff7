"""The controller's backend of the SOC API: RuleService and NodeService
over the :class:`~controller.fleet.store.FleetStore`, every rule change
published as RuleEvents to the :class:`~controller.fleet.eventlog.EventLog`,
and each node's health judged as NodeService shows it (the policy is in
:mod:`controller.api.node_service`'s docstring, "Node health").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from google.protobuf import json_format

from breakwater.v1 import event_pb2, node_pb2

from ..api.convert import node_name, rule_to_proto
from ..pki import RevocationList, parse_serial
from ..rules.scope import ScopedRule
from .eventlog import EventLog
from .store import Change, NodeRecord
from .storeapi import Store

__all__ = ["TTL_ACTOR", "ControllerBackend", "HealthPolicy", "node_to_proto", "rule_events"]

LOGGER = logging.getLogger("breakwater.api")

TTL_ACTOR: Final = "ttl"
"""RuleEvent.actor of a rule removed at its expire_time (event.proto)."""

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


# --- rule events ------------------------------------------------------------------------


def rule_events(change: Change, *, actor: str | None = None, expired: bool = False,
                updated: bool = False) -> list[event_pb2.Event]:
    """The RuleEvents of a committed change: CREATED (UPDATED when
    ``updated``) for every rule it stored, DELETED (EXPIRED when
    ``expired``) for every rule it removed, with the change's version and
    actor (or ``actor``)."""
    who = change.actor if actor is None else actor
    up = event_pb2.RULE_EVENT_KIND_UPDATED if updated else event_pb2.RULE_EVENT_KIND_CREATED
    down = event_pb2.RULE_EVENT_KIND_EXPIRED if expired else event_pb2.RULE_EVENT_KIND_DELETED
    out = []
    for kind, rules in ((up, change.upserted), (down, change.removed)):
        for r in rules:
            out.append(event_pb2.Event(rule=event_pb2.RuleEvent(
                kind=kind, rule_id=r.id, rule=rule_to_proto(r), version=change.version, actor=who,
                reason=change.reason)))
    return out


# --- nodes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthPolicy:
    """How NodeService judges a node (see the module docstring)."""

    heartbeat_timeout: float = 90.0
    """Seconds without a message on a node's open stream before it is UNREACHABLE."""
    max_lag: float = 10.0
    """Seconds a connected node may stay behind its target version and still be HEALTHY."""


def _seconds(delta: float) -> str:
    return f"{delta:.1f}s" if delta < 10 else f"{delta:.0f}s"


_NODE_DOC_FIELDS: Final = ("agent_version", "mode", "interfaces", "capabilities")


def _node_doc(record: NodeRecord, out: node_pb2.Node) -> None:
    """Fill what the agent reported at registration (``NodeRecord.doc``:
    Node/Register fields in their JSON form)."""
    doc = {k: v for k, v in record.doc.items()
           if k in _NODE_DOC_FIELDS or k in ("agentVersion",)}
    try:
        json_format.ParseDict(doc, out, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        LOGGER.warning("node %s: unreadable registration record: %s", record.node_id, exc)


def node_to_proto(record: NodeRecord, *, now: datetime, target_time: datetime | None,
                  policy: HealthPolicy) -> node_pb2.Node:
    """A node as NodeService shows it, with its lag and health judged at
    ``now``; ``target_time`` is when its target version was committed."""
    out = node_pb2.Node(name=node_name(record.node_id), labels=dict(record.labels),
                        target_rule_version=record.target_version,
                        applied_rule_version=record.applied_version, connected=record.connected)
    _node_doc(record, out)
    if record.create_time is not None:
        out.create_time.FromDatetime(record.create_time)
    if record.last_heartbeat is not None:
        out.last_heartbeat_time.FromDatetime(record.last_heartbeat)
    behind = record.applied_version < record.target_version
    lag = 0.0
    if behind:
        since = target_time or record.applied_time or record.create_time
        lag = max(0.0, (now - since).total_seconds()) if since is not None else 0.0
        out.lag.FromNanoseconds(int(lag * 1e9))
    else:
        out.lag.SetInParent()
    if behind and record.last_error:
        try:
            json_format.ParseDict(dict(record.last_error), out.last_error, ignore_unknown_fields=True)
        except json_format.ParseError:
            out.last_error.message = str(record.last_error.get("message", record.last_error))
    silent = None if record.last_heartbeat is None else (now - record.last_heartbeat).total_seconds()
    if not record.connected:
        out.health = node_pb2.NODE_HEALTH_UNREACHABLE
        out.health_detail = ("no sync stream" + ("" if silent is None else
                                                 f"; last heard from {_seconds(silent)} ago"))
    elif silent is None or silent > policy.heartbeat_timeout:
        out.health = node_pb2.NODE_HEALTH_UNREACHABLE
        out.health_detail = (f"stream open but silent for {_seconds(silent or 0)} "
                             f"(heartbeat timeout {_seconds(policy.heartbeat_timeout)})")
    elif behind and out.HasField("last_error"):
        out.health = node_pb2.NODE_HEALTH_DEGRADED
        out.health_detail = (f"refusing version {record.target_version} (keeps {record.applied_version}): "
                             f"{out.last_error.message or 'no reason given'}")
    elif behind and lag > policy.max_lag:
        out.health = node_pb2.NODE_HEALTH_DEGRADED
        out.health_detail = (f"{_seconds(lag)} behind: applied version {record.applied_version} of "
                             f"{record.target_version} (more than {_seconds(policy.max_lag)})")
    else:
        out.health = node_pb2.NODE_HEALTH_HEALTHY
    return out


# --- the controller's backend ------------------------------------------------------------


class ControllerBackend:
    """RuleBackend and NodeBackend over the controller's FleetStore; every
    rule change also publishes its RuleEvents to the EventLog (in version
    order: one lock around the change and its publication)."""

    VERSION_TIMES_KEPT: Final = 4096

    def __init__(self, store: Store, events: EventLog, *, health: HealthPolicy | None = None,
                 clock: Clock = _now, revoked: RevocationList | None = None) -> None:
        self.store = store
        self.revoked = revoked
        """The controller's revocation list (None: plaintext, nothing to revoke)."""
        self.on_node_removed: list[Callable[[str, str], None]] = []
        """Called with (node id, why) when a node is removed (the sync hub ends its stream)."""
        self.events = events
        self.health = health or HealthPolicy()
        self._clock = clock
        self._write = threading.Lock()
        self._version_times: dict[int, datetime] = {}

    # -- rules --

    def rule_snapshot(self, *, include_expired: bool) -> tuple[int, Sequence[ScopedRule]]:
        return self.store.snapshot(include_expired=include_expired)

    def get_rule(self, rule_id: str) -> ScopedRule:
        return self.store.get(rule_id)

    def create_rules(self, rules: Sequence[ScopedRule], *, actor: str, reason: str) -> Sequence[ScopedRule]:
        with self._write:
            change = self.store.create(rules, actor=actor, reason=reason, now=self._clock())
            self.events.publish(rule_events(change))
        return change.upserted

    def update_rule(self, rule: ScopedRule, *, etag: str, actor: str, reason: str) -> ScopedRule:
        with self._write:
            change = self.store.update(rule, etag=etag, actor=actor, reason=reason, now=self._clock())
            self.events.publish(rule_events(change, updated=True))
        return change.upserted[0]

    def delete_rule(self, rule_id: str, *, etag: str, allow_missing: bool, actor: str, reason: str) -> None:
        with self._write:
            change = self.store.delete([rule_id], etag=etag, allow_missing=allow_missing, actor=actor,
                                       reason=reason, now=self._clock())
            self.events.publish(rule_events(change))

    def expire(self, now: datetime | None = None) -> Change:
        """Sweep the rules whose expire_time has passed (one version, audited
        as the controller's), publishing a RULE_EVENT_KIND_EXPIRED for each."""
        with self._write:
            change = self.store.expire(now or self._clock())
            if change.removed:
                self.events.publish(rule_events(change, actor=TTL_ACTOR, expired=True))
        return change

    def apply(self, change: Callable[[Store], Change], *, updated: bool = False) -> Change:
        """Run another writer's change of the store (say, cluster-wide
        detection creating a rule) under this backend's lock and publish its
        RuleEvents, so events stay in version order."""
        with self._write:
            done = change(self.store)
            self.events.publish(rule_events(done, updated=updated))
        return done

    # -- nodes --

    def _version_time(self, version: int) -> datetime | None:
        found = self._version_times.get(version)
        if found is None:
            found = self.store.version_time(version)
            if found is not None:
                if len(self._version_times) >= self.VERSION_TIMES_KEPT:
                    self._version_times.clear()
                self._version_times[version] = found
        return found

    def _node(self, record: NodeRecord, now: datetime) -> node_pb2.Node:
        target = self._version_time(record.target_version) if record.applied_version < record.target_version \
            else None
        return node_to_proto(record, now=now, target_time=target, policy=self.health)

    def list_nodes(self) -> Sequence[node_pb2.Node]:
        now = self._clock()
        return [self._node(r, now) for r in self.store.nodes()]

    def get_node(self, node_id: str) -> node_pb2.Node:
        return self._node(self.store.node(node_id), self._clock())

    def delete_node(self, node_id: str, *, actor: str) -> None:
        """Remove a node: revoke the certificate serial it synced with (when
        the controller has a revocation list), end its stream, forget it."""
        record = self.store.node(node_id)
        serial = str(record.doc.get("certSerial", ""))
        if serial and self.revoked is not None:
            self.revoked.add(parse_serial(serial), f"node {node_id} removed by {actor}")
        why = f"node {node_id} was removed from the fleet by {actor}"
        for hook in self.on_node_removed:
            hook(node_id, why)
        self.store.delete_node(node_id)
        revoked = f"; certificate serial {serial} revoked" if serial and self.revoked else ""
        LOGGER.warning("%s%s", why, revoked,
                       extra={"event": "node_removed", "node": node_id, "actor": actor, "serial": serial})
