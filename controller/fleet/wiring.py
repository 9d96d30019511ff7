"""The sync hub wired into the controller: :func:`add_sync_services`, the
hook :func:`controller.fleet.daemon.create_controller` calls with its
service registry, store, event log and configuration (and its API backend,
whose ``apply`` publishes rule events for the fleet detector's changes).
It builds the :class:`~controller.fleet.synchub.SyncHub`, the
:class:`~controller.api.telemetry.FleetTelemetry` it feeds and the
:class:`~controller.fleet.detector.FleetDetector` over both, adds
``SyncService`` and ``TelemetryService`` to the controller's one server and
returns a :class:`SyncServices` (``close()`` on stop,
``collect_metrics(exposition)`` for Prometheus), whose thread folds the
telemetry and ticks the detector: on the elected leader only
(:mod:`controller.fleet.leader`), its writes fenced by the leader's token.

The server must be grpc.aio: the controller builds it with
:func:`controller.api.aiothread.create_threaded_aio_server` (the same arguments as
``create_server``); a test or an asyncio program can use
:func:`controller.api.aio.create_aio_server`. Configuration: the controller's
``reconcile_interval`` and its ``[sync]``, ``[telemetry]`` and ``[fleet]``
tables (:mod:`controller.fleet.syncconfig`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from ..api.telemetry import FleetTelemetry
from ..api.telemetry_service import TelemetryServicer, telemetry_service
from ..errors import FailedPreconditionError
from ..metrics import Exposition
from .detector import FleetDetector
from .eventlog import EventLog
from .leader import Leadership, SoleLeader
from .storeapi import Store
from .syncconfig import sync_configs
from .synchub import SyncHub
from .syncservice import SyncServicer, sync_service

__all__ = ["SyncServices", "add_sync_services"]

LOGGER = logging.getLogger("breakwater.synchub")  # the sync hub's: its records keep their logger


class SyncServices:
    """What :func:`add_sync_services` set up: the hub, the telemetry store,
    the fleet detector and their housekeeping thread. ``close()`` after the
    server stopped; ``collect_metrics(exposition)`` for Prometheus."""

    def __init__(self, hub: SyncHub, telemetry: FleetTelemetry, fleet: FleetDetector | None, *,
                 fold_every: float, tick_every: float | None, store: Store | None = None,
                 leadership: Leadership | None = None) -> None:
        self.hub = hub
        self.store = store
        self.leadership: Leadership = leadership or SoleLeader("controller")
        self.fenced_refusals = 0
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
                    self._tick(self.fleet)
            except FailedPreconditionError as exc:  # deposed meanwhile: the fence held
                self.fenced_refusals += 1
                LOGGER.warning("fleet detection's write refused: %s", exc, extra={"event": "fleet_fenced"})
            except Exception:
                LOGGER.exception("fleet housekeeping failed")

    def _tick(self, fleet: FleetDetector) -> None:
        """Fleet detection runs on the leader only, its writes fenced by the leader's token."""
        leadership = self.leadership
        if not leadership.is_leader:
            return
        if self.store is None:
            fleet.tick()
            return
        with self.store.fenced(leadership.token):
            fleet.tick()

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
            out.add("breakwater_controller_fleet_fenced_refusals_total", "counter",
                    "Fleet detection writes refused because this controller was no longer the leader",
                    self.fenced_refusals)


def add_sync_services(registry: Any, store: Store, events: EventLog, config: object = None, *,
                      backend: Any = None, leadership: Leadership | None = None) -> SyncServices:
    """Add SyncService and TelemetryService to the controller's server.

    ``registry``: anything with ``add(Service)`` (the controller's
    ServiceRegistry), a list of services, or a grpc.aio server (the services
    are added to it directly). ``config``: the controller's configuration
    (its ``reconcile_interval`` and its ``sections``: the ``sync``,
    ``telemetry`` and ``fleet`` tables), or a mapping of those tables, or
    None for the defaults. ``backend``: the API backend; the fleet
    detector's rule changes go through its ``apply`` so their rule events
    are published (without it, straight to the store). ``leadership``: the
    controller's election (:mod:`controller.fleet.leader`): fleet detection
    ticks only on the leader, its writes fenced; None: always the leader.
    Errors in the tables
    are :class:`~controller.errors.FieldError` s with the table's name in
    front (``sync.top_sources``)."""
    sync_cfg, tel_cfg, fleet_cfg = sync_configs(config)
    telemetry = FleetTelemetry(tel_cfg)
    apply = getattr(backend, "apply", None)
    fleet = FleetDetector(fleet_cfg, telemetry, store, events, apply=apply) if fleet_cfg.enabled else None
    hub = SyncHub(store, events, sync_cfg, telemetry=telemetry,
                  on_events=fleet.observe if fleet is not None else None)
    removed = getattr(backend, "on_node_removed", None)
    if isinstance(removed, list):
        removed.append(hub.end_node)
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
                        tick_every=fleet_cfg.interval if fleet is not None else None, store=store,
                        leadership=leadership)
