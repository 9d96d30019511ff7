"""The agent's local API: RuleService, EventService and TelemetryService for
its own node, for standalone use (``api = "127.0.0.1:9612"``, and/or
``api_socket = "/run/breakwater/api.sock"``: a Unix socket made 0600 in a
directory made 0700, so only root (the agent's user) can reach it, where
any local user can reach the loopback port).

The servicers are the controller's (:mod:`controller.api.rule_service`,
:mod:`controller.api.event_service`, :mod:`controller.api.telemetry_service`);
what differs is the backend:

* **RuleService** (:class:`AgentRules`) lists every rule in force on the
  node, by layer precedence (manual, the agent's allowlist, controller,
  automatic; :meth:`controller.agent.layers.RuleLayers.combine`). Only the manual rules
  (the operator's on this node, the ones ``breakwater rules apply``
  manages) can be created, changed or deleted; the change runs on the
  agent's loop (:meth:`ServedAgent.edit_manual_rules`), is
  applied to every interface and stored, or nothing changes. Controller
  rules are shown as the controller sent them, with origin
  ``RULE_ORIGIN_CONTROLLER``, and like automatic rules and the allowlist
  are read-only: changing one is ``FAILED_PRECONDITION`` saying where it
  can be changed. Manual rules carry the node's scope (``nodes/{node_id}``);
  a request may leave scope unset or name this node, nothing else. Their
  etag is a checksum of the rule; the list's version is the controller
  layer's version (0 standalone).
* **EventService** (:class:`AgentEvents`) pages and watches the agent's own
  event log (``agent.db``: attack events and rule events, one sequence),
  each event named ``events/{seq}`` with ``node`` this node.
* **TelemetryService** is :class:`~controller.api.telemetry_service.TelemetryServicer`
  over the agent's own :class:`~controller.api.telemetry.FleetTelemetry`, fed
  its summaries every interval; a node other than this one is NOT_FOUND.

Reads come from the agent's :attr:`ServedAgent.view` (replaced whole after
every apply) and, for events, a read-only connection of the calling thread,
so no call waits for the detection loop but writes. The agent is typed by
:class:`ServedAgent`, what this module needs of it: the daemon imports this
module, not the other way round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from breakwater.v1 import event_pb2

from ..api import convert
from ..api.event_service import EventServicer
from ..api.limits import StreamLimits
from ..api.rule_service import RuleServicer
from ..api.server import create_server, listen
from ..api.services import api_services
from ..api.telemetry import FleetTelemetry
from ..api.telemetry_service import TelemetryServicer, telemetry_service
from ..errors import (
    AlreadyExistsError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    NotFoundError,
    SetupError,
)
from ..rules.admission import AdmissionPolicy
from ..rules.model import Rule, RuleSet
from ..rules.scope import RuleScope, ScopedRule
from .config import AgentConfig
from .layers import RuleView
from .state import RuleEventRow, Store, StoredEvent
from .sync import local_events

__all__ = ["AgentEvents", "AgentRules", "LocalApi", "ServedAgent"]

LOGGER = logging.getLogger("breakwater.agentapi")

WATCH_POLL_SECONDS: Final = 0.25
"""How often a WatchEvents stream looks for new events in the store."""
WATCH_BATCH: Final = 500
LOCAL_WORKERS: Final = 8
"""Threads of the local API server (a watch holds one while it is open)."""
LOCAL_WATCHERS: Final = LOCAL_WORKERS // 2
"""WatchEvents streams the local API holds open at once: half its threads,
so the other calls (and health) always find one."""
STOP_GRACE_SECONDS: Final = 1.0


class ServedAgent(Protocol):
    """What the local API needs from the agent it serves
    (:class:`controller.agent.daemon.Agent`)."""

    @property
    def config(self) -> AgentConfig:
        """The configuration in force (``node_id``, ``state_dir``)."""

    @property
    def view(self) -> RuleView:
        """The rules in force by layer, replaced whole after every apply."""

    def edit_manual_rules(self, edit: Callable[[RuleSet], RuleSet], *, actor: str,
                          events: Sequence[tuple[str, str, Rule]] = ()) -> RuleSet:
        """Change the node's manual rules on every interface, on the agent's
        loop, or raise and change nothing; ``events`` are ``(kind, rule_id,
        rule)`` to store as rule events. Returns the new manual set."""


# --- rules ---------------------------------------------------------------------------


def _own(rule: Rule, node_id: str) -> ScopedRule:
    return ScopedRule(rule, RuleScope.on_node(node_id), etag=_etag(rule))


def _etag(rule: Rule) -> str:
    """A manual rule's etag: a checksum of its content."""
    return hashlib.sha256(json.dumps(rule.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class AgentRules:
    """:class:`~controller.api.backends.RuleBackend` over an agent's rule layers."""

    def __init__(self, agent: ServedAgent) -> None:
        self._agent = agent

    @property
    def _node(self) -> str:
        return self._agent.config.node_id

    def _rules(self, view: RuleView) -> dict[str, tuple[str, ScopedRule]]:
        """Every rule in force by id, with its layer (first layer wins, as in the data plane)."""
        out: dict[str, tuple[str, ScopedRule]] = {}
        for r in view.manual:
            out.setdefault(r.id, ("manual", _own(r, self._node)))
        if view.allowlist is not None:
            out.setdefault(view.allowlist.id, ("allowlist", _own(view.allowlist, self._node)))
        for rid, msg in view.controller.rules.items():
            if rid in out:
                continue
            wire = convert.rule_from_proto(msg, path="rule")
            out[rid] = ("controller", ScopedRule(replace(wire.rule, origin="controller"), wire.scope,
                                                 wire.version, wire.etag, wire.create_time, wire.update_time))
        for r in view.automatic:
            out.setdefault(r.id, ("automatic", _own(r, self._node)))
        return out

    def rule_snapshot(self, *, include_expired: bool) -> tuple[int, Sequence[ScopedRule]]:
        view = self._agent.view
        now = _now()
        rules = [sr for _, sr in self._rules(view).values() if include_expired or sr.rule.is_active(now)]
        return view.controller.version, sorted(rules, key=lambda sr: sr.id)

    def get_rule(self, rule_id: str) -> ScopedRule:
        found = self._rules(self._agent.view).get(rule_id)
        if found is None:
            raise NotFoundError(f"rule {rule_id!r} is not in force on this node", f"rules/{rule_id}")
        return found[1]

    def _manual(self, rule_id: str, etag: str) -> Rule:
        """The manual rule ``rule_id``, if ``etag`` is empty or its own."""
        found = self._rules(self._agent.view).get(rule_id)
        if found is None:
            raise NotFoundError(f"rule {rule_id!r} is not in force on this node", f"rules/{rule_id}")
        layer, sr = found
        if layer == "controller":
            raise FailedPreconditionError(f"rule {rule_id!r} comes from the controller; change it there "
                                          "(this node enforces what the controller sends)")
        if layer == "automatic":
            raise FailedPreconditionError(f"rule {rule_id!r} is an automatic rule of the detector; it ends "
                                          "with its attack or its TTL")
        if layer == "allowlist":
            raise FailedPreconditionError(f"rule {rule_id!r} is the agent's allowlist; edit allowlist in "
                                          "the agent's configuration and send SIGHUP")
        if etag and etag != sr.etag:
            raise EtagMismatchError(f"rule {rule_id!r} changed since it was read (etag {etag}, now "
                                    f"{sr.etag}); get it again and retry", f"rules/{rule_id}")
        return sr.rule

    def _check_new(self, rule: ScopedRule) -> Rule:
        scope = rule.scope
        if not (scope.is_global or scope.node == self._node):
            raise FieldError("rule.scope", f"a rule of this node applies to this node only: leave scope "
                                           f"unset or give nodes/{self._node}")
        if rule.rule.origin in ("auto", "controller"):
            raise FieldError("rule.origin", f"{rule.rule.origin} rules come from the detector or the "
                                            "controller; a rule made here is manual (or feed)")
        return rule.rule

    def create_rules(self, rules: Sequence[ScopedRule], *, actor: str, reason: str) -> Sequence[ScopedRule]:
        new = [self._check_new(r) for r in rules]

        def edit(manual: RuleSet) -> RuleSet:
            taken = self._rules(self._agent.view)  # on the loop: what is in force now
            for r in new:
                if r.id in taken:
                    raise AlreadyExistsError(f"rule {r.id!r} exists already ({taken[r.id][0]} rule); "
                                             "update it, or delete it first", f"rules/{r.id}")
            return RuleSet.from_rules([*manual, *new])

        self._agent.edit_manual_rules(edit, actor=actor, events=[("created", r.id, r) for r in new])
        return [_own(r, self._node) for r in new]

    def update_rule(self, rule: ScopedRule, *, etag: str, actor: str, reason: str) -> ScopedRule:
        self._manual(rule.id, etag)
        new = self._check_new(rule)

        def edit(manual: RuleSet) -> RuleSet:
            self._manual(new.id, etag)  # again on the loop: nobody changed it meanwhile
            return RuleSet.from_rules([new if r.id == new.id else r for r in manual])

        self._agent.edit_manual_rules(edit, actor=actor, events=[("updated", new.id, new)])
        return _own(new, self._node)

    def delete_rule(self, rule_id: str, *, etag: str, allow_missing: bool, actor: str, reason: str) -> None:
        try:
            gone = self._manual(rule_id, etag)
        except NotFoundError:
            if allow_missing:
                return
            raise

        def edit(manual: RuleSet) -> RuleSet:
            self._manual(rule_id, etag)
            return RuleSet.from_rules(r for r in manual if r.id != rule_id)

        self._agent.edit_manual_rules(edit, actor=actor, events=[("deleted", rule_id, gone)])


def _now() -> datetime:
    return datetime.now(UTC)


# --- events ----------------------------------------------------------------------------


class AgentEvents:
    """:class:`~controller.api.backends.EventBackend` over the agent's event log in
    ``agent.db`` (a read-only connection per call, on the calling thread)."""

    def __init__(self, state_dir: Path, node_id: Callable[[], str]) -> None:
        self._state_dir = state_dir
        self._node_id = node_id

    def _store(self) -> Store:
        return Store.open(self._state_dir, readonly=True)

    def _convert(self, rows: Sequence[StoredEvent | RuleEventRow]) -> list[event_pb2.Event]:
        node = convert.node_name(self._node_id())
        out = []
        for row in rows:
            converted = local_events([row])  # empty when the row no longer parses (logged)
            if not converted:
                continue
            e = converted[0]
            e.sequence = row.seq
            e.name = f"events/{row.seq}"
            e.node = node
            out.append(e)
        return out

    @property
    def last_sequence(self) -> int:
        with self._store() as store:
            return store.last_event_seq()

    def page(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
             newest_first: bool = False) -> list[event_pb2.Event]:
        with self._store() as store:
            if newest_first:
                rows = [r for r in store.events_before(before_seq, limit) if r.seq > after_seq]
            else:
                rows = [r for r in store.events_after(after_seq, limit)
                        if before_seq is None or r.seq < before_seq]
        return self._convert(rows)

    def watch(self, after_seq: int, stop: Callable[[], bool]) -> Iterator[event_pb2.Event]:
        with self._store() as store:
            last = after_seq
            while not stop():
                rows = store.events_after(last, WATCH_BATCH)
                if rows:
                    last = rows[-1].seq
                    yield from self._convert(rows)
                    continue
                time.sleep(WATCH_POLL_SECONDS)


# --- the server ------------------------------------------------------------------------


def _prepare_socket(path: Path) -> Path:
    """Make the socket's directory (0700 if new) and remove a stale socket there."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        if path.is_socket():
            path.unlink()
        elif path.exists():
            raise SetupError(f"api_socket {path}: exists and is not a socket; remove it or choose "
                             "another path")
    except OSError as exc:
        raise SetupError(f"api_socket {path}: {exc.strerror or exc}") from exc
    return path


def _private_socket(path: Path) -> None:
    """The socket 0600: only its owner (root) connects."""
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise SetupError(f"api_socket {path}: cannot chmod 0600 ({exc.strerror or exc})") from exc


class LocalApi:
    """The agent's gRPC server: RuleService, EventService, TelemetryService
    (plus health and reflection) at ``address`` and/or on the Unix socket ``socket``."""

    def __init__(self, agent: ServedAgent, address: tuple[str, int] | None, telemetry: FleetTelemetry,
                 socket: Path | None = None) -> None:
        self._agent = agent
        self._stopping = threading.Event()

        def known(node_id: str) -> None:
            if node_id != agent.config.node_id:
                raise NotFoundError(f"node {node_id!r}: this agent serves nodes/{agent.config.node_id} only",
                                    f"nodes/{node_id}")

        if address is not None:
            host, port = address
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        elif socket is not None:
            target = f"unix:{_prepare_socket(socket)}"
        else:
            raise SetupError("the local API needs an address or a socket")

        def admission() -> AdmissionPolicy:
            return AdmissionPolicy(allowlist=agent.config.allowlist, management=agent.config.management)

        services = [*api_services(rules=RuleServicer(AgentRules(agent), admission=admission),
                                  events=EventServicer(AgentEvents(agent.config.state_dir,
                                                                   lambda: agent.config.node_id),
                                                       stopping=self._stopping,
                                                       limits=StreamLimits(per_caller=LOCAL_WATCHERS,
                                                                           total=LOCAL_WATCHERS,
                                                                           what="WatchEvents streams"))),
                    telemetry_service(TelemetryServicer(telemetry, known_node=known))]
        self._server, self.port = create_server(target, services, max_workers=LOCAL_WORKERS)
        self.address = (address[0], self.port) if address is not None else None
        self.socket = socket
        if socket is not None:
            if address is not None:
                listen(self._server, f"unix:{_prepare_socket(socket)}", None)
            _private_socket(socket)

    @property
    def where(self) -> str:
        """Where it listens, as a status line shows it."""
        out = [f"{self.address[0]}:{self.address[1]}"] if self.address else []
        return ", ".join([*out, *([f"unix:{self.socket}"] if self.socket else [])])

    def start(self) -> None:
        self._server.start()
        LOGGER.info("local API at %s", self.where, extra={"event": "api_ready", "address": self.where})

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop(grace=STOP_GRACE_SECONDS).wait(STOP_GRACE_SECONDS + 1)

