"""What the API's servicers work on: the backends behind RuleService,
NodeService and EventService, as Protocols.

The servicers hold no state of their own. The controller serves them over
its store and event log (:class:`controller.fleet.backend.ControllerBackend`
is all three backends); an agent serves RuleService and EventService for
its own node over its own store (:mod:`controller.agent.localapi`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from breakwater.v1 import event_pb2, node_pb2

from ..rules.scope import ScopedRule

__all__ = ["EventBackend", "NodeBackend", "RuleBackend"]


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

    def delete_node(self, node_id: str, *, actor: str) -> None:
        """Remove a node from the fleet (see NodeService.DeleteNode); NotFoundError if unknown."""
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
