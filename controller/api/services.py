"""The SOC API: RuleService, NodeService and EventService servicers.

The servicers hold no state of their own: each works on a small backend
(:class:`RuleBackend`, :class:`NodeBackend`, :class:`EventBackend`), so the
controller serves them over its store and event log
(:class:`controller.fleet.backend.ControllerBackend`), and an agent can
serve the same RuleService and EventService for its own node over its own
store. They raise Breakwater errors only; the error
boundary in :mod:`controller.api.status` turns them into statuses (a
:class:`~controller.rules.model.FieldError` is ``INVALID_ARGUMENT`` naming the
field, and nothing has been stored when one is raised).

What the protos leave to the server, decided here:

* **Pages.** ``page_size`` 0 is the documented default (rules and nodes
  100, events 50), larger than 1000 is 1000, negative is refused. A page
  token is opaque (URL-safe base64 of JSON) and carries the resource, the
  position (the last rule id or node id returned, or the sequence of the
  oldest event returned) and the fingerprint of the filter (and of
  ``show_expired``): a token offered with another filter, for another
  resource, or mangled, is ``INVALID_ARGUMENT`` at ``page_token``. Pages
  are keyed by position, not offset, so rules created or deleted between
  pages neither repeat nor skip the others; ``next_page_token`` is empty
  exactly when nothing more matches.
* **Identity.** ``created_by`` and the actor of the audit log and of rule
  events is the ``x-breakwater-actor`` metadata (at most 256 characters)
  or else the caller's peer address; the reason is ``x-breakwater-reason``
  (at most 1024).
* **Expiry.** CreateRule and UpdateRule refuse an ``expire_time`` that is
  not in the future (delete the rule instead); ``ttl`` counts from when the
  request arrives.
* **validate_only** runs every check a real request would, ALREADY_EXISTS,
  NOT_FOUND and ABORTED included, and returns the rule as it would be
  stored (version and etag as they are now).
* **Node health** (:class:`controller.fleet.backend.HealthPolicy`): UNREACHABLE when the node has no
  sync stream, or has one but sent nothing for ``heartbeat_timeout``;
  DEGRADED when connected but refusing its target version (``last_error``)
  or behind it for longer than ``max_lag``; HEALTHY otherwise. ``lag`` is
  the time since the node's target version was committed, zero once the
  node applied it.
* **Events.** ListEvents pages newest first; WatchEvents without
  ``after_sequence`` streams only new events, with it replays what is kept
  after it first (FAILED_PRECONDITION if some of those were pruned, or if
  the sequence is beyond the end of this log), and ends when the client
  cancels or the server stops.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import grpc
from google.protobuf import empty_pb2

from breakwater.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
)

from ..errors import (
    AlreadyExistsError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    InputError,
    NotFoundError,
)
from ..rules.model import MAX_COMMENT, MAX_CREATED_BY
from ..rules.scope import ScopedRule
from .convert import (
    merge_update,
    parse_node_name,
    parse_rule_name,
    rule_from_proto,
    rule_to_proto,
)
from .filtering import EVENT_FILTER, NODE_FILTER, RULE_FILTER, compile_filter
from .server import Service

__all__ = [
    "ACTOR_METADATA",
    "MAX_BATCH",
    "MAX_PAGE_SIZE",
    "REASON_METADATA",
    "EventBackend",
    "EventServicer",
    "NodeBackend",
    "NodeServicer",
    "RuleBackend",
    "RuleServicer",
    "api_services",
    "caller",
    "decode_page_token",
    "encode_page_token",
    "page_size",
]

LOGGER = logging.getLogger("breakwater.api")

ACTOR_METADATA: Final = "x-breakwater-actor"
REASON_METADATA: Final = "x-breakwater-reason"

MAX_PAGE_SIZE: Final = 1000
DEFAULT_RULE_PAGE: Final = 100
DEFAULT_NODE_PAGE: Final = 100
DEFAULT_EVENT_PAGE: Final = 50
MAX_BATCH: Final = 10_000
"""Most requests in one BatchCreateRules."""
MAX_REASON: Final = MAX_COMMENT
# Events read per step while looking for the ones a filter selects.
EVENT_SCAN_BATCH: Final = 500
_TOKEN_VERSION: Final = 1

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


# --- requests: sizes, tokens, callers ---------------------------------------------------


def page_size(value: int, default: int, path: str = "page_size") -> int:
    """A request's page size: 0 is ``default``, above :data:`MAX_PAGE_SIZE` is the maximum."""
    if value < 0:
        raise FieldError(path, f"{value} is negative; give 0 (default {default}) to {MAX_PAGE_SIZE}")
    return min(value or default, MAX_PAGE_SIZE)


def encode_page_token(resource: str, fingerprint: str, position: str | int) -> str:
    """An opaque token for the page after ``position`` of ``resource`` listed with a filter of
    this ``fingerprint``."""
    doc = json.dumps({"v": _TOKEN_VERSION, "r": resource, "f": fingerprint, "p": position},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def decode_page_token(token: str, resource: str, fingerprint: str, path: str = "page_token") -> Any:
    """The position a token of :func:`encode_page_token` holds; None for an empty token."""
    if not token:
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("v") != _TOKEN_VERSION or "p" not in doc:
        raise FieldError(path, "not a page token of this server; pass the next_page_token of a "
                               "previous response, or none for the first page")
    if doc.get("r") != resource:
        raise FieldError(path, f"a page token of {doc.get('r')} listings, not of {resource} listings")
    if doc.get("f") != fingerprint:
        raise FieldError(path, "issued for another filter (or show_expired); a token only works with "
                               "the request it came from; start again without page_token")
    return doc["p"]


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def caller(context: grpc.ServicerContext) -> tuple[str, str]:
    """``(actor, reason)`` of a call: the ``x-breakwater-actor`` metadata, else
    the peer, else "unknown"; and the ``x-breakwater-reason`` metadata."""
    md = _metadata(context)
    actor = md.get(ACTOR_METADATA, "").strip() or (context.peer() or "").strip() or "unknown"
    reason = md.get(REASON_METADATA, "").strip()
    if len(actor) > MAX_CREATED_BY:
        raise InputError(f"{ACTOR_METADATA}: {len(actor)} characters; at most {MAX_CREATED_BY}")
    if len(reason) > MAX_REASON:
        raise InputError(f"{REASON_METADATA}: {len(reason)} characters; at most {MAX_REASON}")
    return actor, reason


# --- backends ---------------------------------------------------------------------------


class RuleBackend(Protocol):
    """Where RuleService keeps rules. Every write is all or nothing and
    raises NotFoundError / AlreadyExistsError / EtagMismatchError itself
    (under its own lock: the servicer's early checks are only early)."""

    def rule_snapshot(self, *, include_expired: bool) -> tuple[int, Sequence[ScopedRule]]:
        """The rule set version and its rules, sorted by id, read together."""
        ...

    def get_rule(self, rule_id: str) -> ScopedRule:
        """One rule (expired but unswept ones too); NotFoundError if absent."""
        ...

    def create_rules(self, rules: Sequence[ScopedRule], *, actor: str, reason: str) -> Sequence[ScopedRule]:
        """Store new rules as one change; returns them as stored, in order."""
        ...

    def update_rule(self, rule: ScopedRule, *, etag: str, actor: str, reason: str) -> ScopedRule:
        """Replace a rule whole if ``etag`` is empty or current; returns it as stored."""
        ...

    def delete_rule(self, rule_id: str, *, etag: str, allow_missing: bool, actor: str, reason: str) -> None:
        """Remove a rule (if ``etag`` is empty or current)."""
        ...


class NodeBackend(Protocol):
    """Where NodeService reads nodes, already as ``breakwater.v1.Node``."""

    def list_nodes(self) -> Sequence[node_pb2.Node]:
        """Every node, sorted by name."""
        ...

    def get_node(self, node_id: str) -> node_pb2.Node:
        """One node; NotFoundError if it never registered."""
        ...


class EventBackend(Protocol):
    """Where EventService reads events (:class:`~controller.fleet.eventlog.EventLog` is one)."""

    @property
    def last_sequence(self) -> int:
        """The newest sequence logged (0: none yet)."""
        ...

    def page(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
             newest_first: bool = False) -> list[event_pb2.Event]:
        """Kept events with ``after_seq < sequence < before_seq``."""
        ...

    def watch(self, after_seq: int, stop: Callable[[], bool]) -> Iterator[event_pb2.Event]:
        """Events after ``after_seq``: kept ones, then live ones, until ``stop()``."""
        ...


# --- RuleService ------------------------------------------------------------------------

_OUTPUT_ONLY: Final = ("name", "created_by", "create_time", "update_time", "version", "etag")


def _check_expiry(rule: ScopedRule, now: datetime, path: str) -> None:
    at = rule.rule.expires_at
    if at is not None and at <= now:
        raise FieldError(path, f"{at.isoformat().replace('+00:00', 'Z')} is not in the future; "
                               "to end a rule now, delete it")


class RuleServicer(rule_service_pb2_grpc.RuleServiceServicer):
    """breakwater.v1.RuleService over a :class:`RuleBackend`."""

    def __init__(self, backend: RuleBackend, *, clock: Clock = _now) -> None:
        self._backend = backend
        self._clock = clock
        self._protos: dict[str, tuple[tuple[object, ...], rule_pb2.Rule]] = {}
        self._protos_lock = threading.Lock()

    def _proto(self, rule: ScopedRule) -> rule_pb2.Rule:
        """The wire form of a stored rule, converted once per version of it
        (a listing with a filter looks at every rule). The messages are
        shared: never change one."""
        key = (rule.etag, rule.version, rule.create_time, rule.update_time, rule.scope)
        with self._protos_lock:
            found = self._protos.get(rule.id)
        if found is not None and found[0] == key and rule.etag:
            return found[1]
        msg = rule_to_proto(rule)
        with self._protos_lock:
            self._protos[rule.id] = (key, msg)
        return msg

    def _forget_gone(self, rules: Sequence[ScopedRule]) -> None:
        """Drop the cached forms of rules no longer stored (when the cache outgrows the set)."""
        with self._protos_lock:
            if len(self._protos) > 2 * len(rules) + 1024:
                live = {r.id for r in rules}
                self._protos = {k: v for k, v in self._protos.items() if k in live}

    def ListRules(self, request: rule_service_pb2.ListRulesRequest,
                  context: grpc.ServicerContext) -> rule_service_pb2.ListRulesResponse:
        size = page_size(request.page_size, DEFAULT_RULE_PAGE)
        selected = compile_filter(request.filter, RULE_FILTER)
        fingerprint = f"{selected.fingerprint}{'+expired' if request.show_expired else ''}"
        after = decode_page_token(request.page_token, "rule", fingerprint)
        if after is not None and not isinstance(after, str):
            raise FieldError("page_token", "not a page token of rule listings")
        version, rules = self._backend.rule_snapshot(include_expired=request.show_expired)
        self._forget_gone(rules)
        start = 0 if after is None else bisect.bisect_right([r.id for r in rules], after)
        page: list[rule_pb2.Rule] = []
        more = False
        for r in rules[start:]:
            msg = self._proto(r)
            if not selected(msg):
                continue
            if len(page) == size:
                more = True
                break
            page.append(msg)
        token = encode_page_token("rule", fingerprint, page[-1].name.removeprefix("rules/")) if more else ""
        return rule_service_pb2.ListRulesResponse(rules=page, next_page_token=token, version=version)

    def GetRule(self, request: rule_service_pb2.GetRuleRequest,
                context: grpc.ServicerContext) -> rule_pb2.Rule:
        return self._proto(self._backend.get_rule(parse_rule_name(request.name, "name")))

    def _new_rule(self, request: rule_service_pb2.CreateRuleRequest, prefix: str, now: datetime,
                  actor: str) -> ScopedRule:
        """The rule a CreateRuleRequest asks for, validated; errors at ``prefix`` + proto path."""
        if not request.rule_id:
            raise FieldError(f"{prefix}rule_id", "required; the new rule's id, 1-63 characters a-z 0-9 . _ -")
        if not request.HasField("rule"):
            raise FieldError(f"{prefix}rule", "required; the rule to create (match and action at least)")
        msg = rule_pb2.Rule()
        msg.CopyFrom(request.rule)
        for name in _OUTPUT_ONLY:
            msg.ClearField(name)
        msg.created_by = actor
        rule = rule_from_proto(msg, path=f"{prefix}rule", rule_id=request.rule_id,
                               rule_id_path=f"{prefix}rule_id", now=now)
        _check_expiry(rule, now, f"{prefix}rule.expire_time")
        return rule

    def _would_be(self, rules: Sequence[ScopedRule], now: datetime) -> list[rule_pb2.Rule]:
        """validate_only: the rules as CreateRule would store them, if none exists already."""
        for i, r in enumerate(rules):
            try:
                self._backend.get_rule(r.id)
            except NotFoundError:
                continue  # the id is free
            where = f" (request {i})" if len(rules) > 1 else ""
            raise AlreadyExistsError(f"rule {r.id!r} exists already{where}; update it, or delete it first",
                                     f"rules/{r.id}")
        return [rule_to_proto(ScopedRule(r.rule, r.scope, create_time=now, update_time=now)) for r in rules]

    def CreateRule(self, request: rule_service_pb2.CreateRuleRequest,
                   context: grpc.ServicerContext) -> rule_pb2.Rule:
        actor, reason = caller(context)
        now = self._clock()
        rule = self._new_rule(request, "", now, actor)
        if request.validate_only:
            return self._would_be([rule], now)[0]
        return rule_to_proto(self._backend.create_rules([rule], actor=actor, reason=reason)[0])

    def BatchCreateRules(self, request: rule_service_pb2.BatchCreateRulesRequest,
                         context: grpc.ServicerContext) -> rule_service_pb2.BatchCreateRulesResponse:
        actor, reason = caller(context)
        n = len(request.requests)
        if n == 0:
            raise FieldError("requests", f"empty; give 1 to {MAX_BATCH} CreateRuleRequests")
        if n > MAX_BATCH:
            raise CapacityError(f"requests: {n} rules in one batch; at most {MAX_BATCH} (split it)")
        now = self._clock()
        rules: list[ScopedRule] = []
        first: dict[str, int] = {}
        for i, req in enumerate(request.requests):
            rule = self._new_rule(req, f"requests[{i}].", now, actor)
            if rule.id in first:
                raise FieldError(f"requests[{i}].rule_id",
                                 f"duplicate rule id {rule.id!r}; requests[{first[rule.id]}] has it too")
            first[rule.id] = i
            rules.append(rule)
        if request.validate_only:
            return rule_service_pb2.BatchCreateRulesResponse(rules=self._would_be(rules, now))
        stored = self._backend.create_rules(rules, actor=actor, reason=reason)
        return rule_service_pb2.BatchCreateRulesResponse(rules=[rule_to_proto(r) for r in stored])

    def UpdateRule(self, request: rule_service_pb2.UpdateRuleRequest,
                   context: grpc.ServicerContext) -> rule_pb2.Rule:
        actor, reason = caller(context)
        if not request.HasField("rule"):
            raise FieldError("rule", "required; rule.name names the rule, the mask its fields to change")
        rule_id = parse_rule_name(request.rule.name, "rule.name")
        current = self._backend.get_rule(rule_id)
        etag = request.rule.etag
        if etag and etag != current.etag:
            raise EtagMismatchError(f"rule {rule_id!r} changed since it was read (etag {etag}, now "
                                    f"{current.etag}); get it again and retry", f"rules/{rule_id}")
        now = self._clock()
        merged = merge_update(rule_to_proto(current), request.rule,
                              request.update_mask if request.HasField("update_mask") else None)
        new = rule_from_proto(merged, path="rule", now=now)
        if new.rule.expires_at != current.rule.expires_at:
            which = merged.WhichOneof("expiration") or "expire_time"
            _check_expiry(new, now, f"rule.{which}")
        if request.validate_only:
            return rule_to_proto(ScopedRule(new.rule, new.scope, current.version, current.etag,
                                            current.create_time, now))
        return rule_to_proto(self._backend.update_rule(
            ScopedRule(new.rule, new.scope), etag=etag, actor=actor, reason=reason))

    def DeleteRule(self, request: rule_service_pb2.DeleteRuleRequest,
                   context: grpc.ServicerContext) -> empty_pb2.Empty:
        actor, reason = caller(context)
        rule_id = parse_rule_name(request.name, "name")
        self._backend.delete_rule(rule_id, etag=request.etag, allow_missing=request.allow_missing,
                                  actor=actor, reason=reason)
        return empty_pb2.Empty()


# --- NodeService ------------------------------------------------------------------------


class NodeServicer(node_service_pb2_grpc.NodeServiceServicer):
    """breakwater.v1.NodeService over a :class:`NodeBackend`."""

    def __init__(self, backend: NodeBackend) -> None:
        self._backend = backend

    def ListNodes(self, request: node_service_pb2.ListNodesRequest,
                  context: grpc.ServicerContext) -> node_service_pb2.ListNodesResponse:
        size = page_size(request.page_size, DEFAULT_NODE_PAGE)
        selected = compile_filter(request.filter, NODE_FILTER)
        after = decode_page_token(request.page_token, "node", selected.fingerprint)
        if after is not None and not isinstance(after, str):
            raise FieldError("page_token", "not a page token of node listings")
        nodes = self._backend.list_nodes()
        start = 0 if after is None else bisect.bisect_right([n.name for n in nodes], after)
        page: list[node_pb2.Node] = []
        more = False
        for n in nodes[start:]:
            if not selected(n):
                continue
            if len(page) == size:
                more = True
                break
            page.append(n)
        token = encode_page_token("node", selected.fingerprint, page[-1].name) if more else ""
        return node_service_pb2.ListNodesResponse(nodes=page, next_page_token=token)

    def GetNode(self, request: node_service_pb2.GetNodeRequest,
                context: grpc.ServicerContext) -> node_pb2.Node:
        return self._backend.get_node(parse_node_name(request.name, "name"))


# --- EventService -----------------------------------------------------------------------


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    """breakwater.v1.EventService over an :class:`EventBackend`. Setting
    ``stopping`` ends every WatchEvents stream (cleanly) within the
    event log's poll interval: a server about to stop sets it."""

    def __init__(self, events: EventBackend, *, stopping: threading.Event | None = None) -> None:
        self._events = events
        self._stopping = stopping or threading.Event()

    def ListEvents(self, request: event_service_pb2.ListEventsRequest,
                   context: grpc.ServicerContext) -> event_service_pb2.ListEventsResponse:
        size = page_size(request.page_size, DEFAULT_EVENT_PAGE)
        selected = compile_filter(request.filter, EVENT_FILTER)
        before = decode_page_token(request.page_token, "event", selected.fingerprint)
        if before is not None and (not isinstance(before, int) or isinstance(before, bool) or before < 1):
            raise FieldError("page_token", "not a page token of event listings")
        page: list[event_pb2.Event] = []
        more = False
        step = size + 1 if selected.empty else max(EVENT_SCAN_BATCH, size + 1)
        while not more:
            batch = self._events.page(before_seq=before, limit=step, newest_first=True)
            for e in batch:
                if not selected(e):
                    continue
                if len(page) == size:
                    more = True
                    break
                page.append(e)
            if len(batch) < step or not batch:
                break
            before = batch[-1].sequence
        token = encode_page_token("event", selected.fingerprint, page[-1].sequence) if more else ""
        return event_service_pb2.ListEventsResponse(events=page, next_page_token=token)

    def _start(self, request: event_service_pb2.WatchEventsRequest) -> int:
        last = self._events.last_sequence
        if not request.HasField("after_sequence"):
            return last
        after = request.after_sequence
        if after > last:
            raise FailedPreconditionError(
                f"after_sequence {after} is beyond the end of this event log ({last}); "
                "it comes from another log: watch without after_sequence, or from 0")
        oldest = self._events.page(limit=1)
        first = oldest[0].sequence if oldest else last + 1
        if after + 1 < first:
            raise FailedPreconditionError(
                f"events {after + 1}..{first - 1} have been pruned from the log; the oldest kept is "
                f"{first}: watch from after_sequence {first - 1} (or list what is kept with ListEvents)")
        return after

    def WatchEvents(self, request: event_service_pb2.WatchEventsRequest,
                    context: grpc.ServicerContext) -> Iterator[event_pb2.Event]:
        selected = compile_filter(request.filter, EVENT_FILTER)
        after = self._start(request)
        for e in self._events.watch(after, lambda: self._stopping.is_set() or not context.is_active()):
            if selected(e):
                yield e


# --- wiring -----------------------------------------------------------------------------


def api_services(rules: RuleServicer | None = None, nodes: NodeServicer | None = None,
                 events: EventServicer | None = None) -> list[Service]:
    """The given servicers as :class:`~controller.api.server.Service` s for
    :func:`~controller.api.server.create_server`."""
    out: list[Service] = []
    if rules is not None:
        out.append(Service.of(rule_service_pb2.DESCRIPTOR.services_by_name["RuleService"],
                              rule_service_pb2_grpc.add_RuleServiceServicer_to_server, rules))
    if nodes is not None:
        out.append(Service.of(node_service_pb2.DESCRIPTOR.services_by_name["NodeService"],
                              node_service_pb2_grpc.add_NodeServiceServicer_to_server, nodes))
    if events is not None:
        out.append(Service.of(event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
                              event_service_pb2_grpc.add_EventServiceServicer_to_server, events))
    return out

