"""The controller's store interface (:class:`Store`): what the backend, the
sync hub, the node writer, fleet detection, the event log and the daemon
need of rules, nodes, events, audit and the rule-set version, and
:func:`open_store`, which opens the configured backend.

Two backends keep it: :class:`~controller.fleet.store.FleetStore` (one
SQLite file, the default) and :class:`~controller.fleet.etcdstore.EtcdStore`
(etcd, for several controllers). ``tests/store`` runs one suite against both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..rules.scope import ScopedRule
from .etcd import EtcdTLS
from .store import AuditAction, AuditRow, Change, EventRow, FleetStore, NodeRecord

__all__ = ["Store", "open_store"]


class Store(Protocol):
    """Rules with one growing version, nodes, events and audit records.
    Reads are served from memory; every write is committed (durable) before
    it returns. Thread-safe. See :class:`~controller.fleet.store.FleetStore`
    for each method's contract."""

    @property
    def version(self) -> int: ...

    def wait_version(self, after: int, timeout: float) -> int: ...

    def changes_since(self, after: int) -> tuple[int, list[Change]] | None: ...

    def get(self, rule_id: str) -> ScopedRule: ...

    def rules(self, *, now: datetime | None = None, include_expired: bool = False) -> list[ScopedRule]: ...

    def snapshot(self, *, include_expired: bool = False) -> tuple[int, list[ScopedRule]]: ...

    def for_node(self, node_id: str, labels: Mapping[str, str], *,
                 now: datetime | None = None) -> tuple[int, list[ScopedRule]]: ...

    def create(self, rules: Sequence[ScopedRule], *, actor: str, reason: str = "",
               now: datetime | None = None) -> Change: ...

    def update(self, rule: ScopedRule, *, etag: str = "", actor: str, reason: str = "",
               now: datetime | None = None) -> Change: ...

    def delete(self, rule_ids: Sequence[str], *, etag: str = "", actor: str, reason: str = "",
               allow_missing: bool = False, action: AuditAction = "delete",
               now: datetime | None = None) -> Change: ...

    def expire(self, now: datetime | None = None) -> Change: ...

    def audit(self, *, rule_id: str | None = None, limit: int = 100) -> list[AuditRow]: ...

    def version_time(self, version: int) -> datetime | None: ...

    def node(self, node_id: str) -> NodeRecord: ...

    def nodes(self) -> list[NodeRecord]: ...

    def register_node(self, node_id: str, labels: Mapping[str, str], doc: Mapping[str, Any], *,
                      now: datetime | None = None) -> NodeRecord: ...

    def update_node(self, node_id: str, *, now: datetime | None = None, **changes: Any) -> NodeRecord: ...

    def delete_node(self, node_id: str) -> NodeRecord: ...

    def update_nodes(self, changes: Mapping[str, Mapping[str, Any]], *,
                     now: datetime | None = None) -> list[NodeRecord]: ...

    def reset_connections(self) -> int: ...

    def fenced(self, token: int) -> AbstractContextManager[None]: ...

    def add_events(self, rows: Sequence[tuple[datetime, str, str, bytes]]) -> list[int]: ...

    def events(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
               newest_first: bool = False) -> list[EventRow]: ...

    def last_event_seq(self) -> int: ...

    def prune_events(self, keep: int) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


def open_store(spec: str, state_dir: Path, *, tls: EtcdTLS | None = None,
               prefix: str = "/breakwater/") -> Store:
    """The store ``spec`` names: ``"sqlite"`` (the file under ``state_dir``)
    or ``etcd://host:port[,host:port...]`` (with ``tls``, keys under ``prefix``)."""
    if spec == "sqlite":
        return FleetStore.open(state_dir)
    from .etcd import parse_endpoints
    from .etcdstore import EtcdStore
    return EtcdStore.connect(parse_endpoints(spec), tls=tls, prefix=prefix)
