"""The sync hub's configuration: :class:`SyncConfig` (the ``[sync]`` table)
and the reading of the controller's ``[sync]``, ``[telemetry]`` and
``[fleet]`` tables as :func:`controller.fleet.wiring.add_sync_services`
takes them (:func:`sync_configs`; :func:`check_config` checks them without
building anything). An error in a table is a
:class:`~controller.errors.FieldError` with the table's name in front
(``sync.top_sources``, ``fleet.mitigate.rule_ttl``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..api.telemetry import TelemetryConfig
from ..errors import FieldError
from ..validate import check_bool, check_keys, check_number
from .detector import FleetConfig

__all__ = ["SyncConfig", "check_config", "sync_configs"]


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
    node_events_per_second: float = 50.0
    """Events one node may send up per second on average ..."""
    node_event_burst: int = 1000
    """... and at once: past that its events are dropped (and counted), so no
    node can flush the event history or the fleet detector's evidence."""
    gc_freeze: bool = True
    """Freeze the process's long-lived objects out of the cyclic garbage
    collector once the streams settle (see :mod:`controller.fleet.synchub`)."""
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
        check_number(self.node_events_per_second, "node_events_per_second", 0.01, 100_000)
        check_number(self.node_event_burst, "node_event_burst", 1, 1_000_000)
        check_bool(self.gc_freeze, "gc_freeze")
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


def _sections(config: object) -> Mapping[str, Mapping[str, Any]]:
    if isinstance(config, Mapping):
        return config
    sections = getattr(config, "sections", None)
    return sections if isinstance(sections, Mapping) else {}


def sync_configs(config: object) -> tuple[SyncConfig, TelemetryConfig, FleetConfig]:
    """The ``[sync]``, ``[telemetry]`` and ``[fleet]`` tables of ``config``:
    the controller's configuration (its ``reconcile_interval`` and its
    ``sections``), or a mapping of those tables, or None for the defaults."""
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
    :func:`~controller.fleet.wiring.add_sync_services` reads them) without
    building anything: a :class:`~controller.errors.FieldError` names the
    first bad key (``fleet.mitigate.rule_ttl``). For ``--check-config``."""
    sync_configs(config)
