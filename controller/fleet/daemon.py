"""``breakwater controller``: the control plane daemon.

One process, one gRPC server on one port (``--listen``, default
``127.0.0.1:9610``) serving RuleService, NodeService and EventService
(:mod:`controller.api.services`), the agents' SyncService and TelemetryService
(:mod:`controller.fleet.synchub`, added by
:func:`controller.fleet.wiring.add_sync_services`), the standard
health service and server reflection, served on grpc.aio
(:func:`~controller.api.aiothread.create_threaded_aio_server`: the agents' streams on
the event loop, the API's sync servicers on its thread pool). State is one
SQLite file in WAL mode under ``--state-dir``
(:class:`~controller.fleet.storeapi.Store`: SQLite or etcd): every change is committed
before it is answered, so kill -9 loses nothing that was acknowledged. A
background thread renders the Prometheus metrics every second and, on the
leader, sweeps expired rules (each sweep one rule set version, each removed
rule a RULE_EVENT_KIND_EXPIRED event) and prunes the event log to
``events_keep``. Logs are JSON lines on stderr.
SIGTERM or SIGINT stops it: health turns NOT_SERVING, WatchEvents streams
end, in-flight calls get ``shutdown_grace`` seconds, the store is closed.

Configuration: :class:`~controller.fleet.config.ControllerConfig`
(:mod:`controller.fleet.config`: command-line flags, or a TOML file with
the same keys; flags win).

Tests and embedders call :func:`create_controller` (the server is bound
but not started; ``listen = "127.0.0.1:0"`` picks a free port) and then
:meth:`Controller.start` / :meth:`Controller.stop`; :func:`run` is the
daemon around it.

**The leader.** The expiry sweep and the event log's pruning run only on
the elected leader, fenced by its token (:mod:`controller.fleet.leader`:
on SQLite the controller is always the leader; on etcd one of the
controllers over the same keys is).

**The sync hook.** Unless ``sync=False``, :func:`create_controller` calls
its ``sync_hook`` (:func:`~controller.fleet.wiring.add_sync_services`
unless another is passed in) as ``hook(registry, store, events, config,
backend=backend, leadership=leadership)`` before the server is built: ``registry`` is a
:class:`ServiceRegistry` (call ``registry.add(Service)``, or pass it as the
server to a generated ``add_*Servicer_to_server``); ``config`` is the
:class:`~controller.fleet.config.ControllerConfig`; ``backend`` the
:class:`~controller.fleet.backend.ControllerBackend`, whose ``apply``
publishes rule events for other writers. What it returns
(:class:`SyncHandle`) is kept: its ``close()`` is called on stop, and its
``collect_metrics(exposition)`` every time the metrics are rendered.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Final, Protocol

import grpc
from grpc_health.v1 import health

from breakwater.v1 import node_pb2

from ..api.aiothread import AioServerThread, create_threaded_aio_server
from ..api.auth import Authorizer, is_loopback, server_credentials
from ..api.event_service import EventServicer
from ..api.limits import DEFAULT_STREAMS_PER_CALLER, StreamLimits
from ..api.node_service import NodeServicer
from ..api.rule_service import RuleServicer
from ..api.server import Service
from ..api.services import api_services
from ..api.status import code_of
from ..errors import (
    BreakwaterError,
    ConfigError,
    FailedPreconditionError,
    FieldError,
    NotFoundError,
    SetupError,
)
from ..metrics import Exposition, MetricsServer
from ..pki import RevocationList
from ..rules.model import ORIGINS
from .backend import ControllerBackend
from .config import ControllerConfig
from .eventlog import EventLog
from .leader import Leadership, SoleLeader, open_leadership
from .storeapi import Store, open_store
from .wiring import add_sync_services

__all__ = [
    "Controller",
    "RpcMetrics",
    "ServiceRegistry",
    "SyncHandle",
    "SyncHook",
    "create_controller",
    "run",
]

LOGGER = logging.getLogger("breakwater.controlplane")

SWEEP_SECONDS: Final = 1.0
"""How often expired rules are swept and the metrics rendered."""
PRUNE_SECONDS: Final = 60.0
"""How often the event log is pruned to ``events_keep``."""


# --- services from the sync hook -------------------------------------------------------


class ServiceRegistry:
    """The services the sync hook adds. ``add(Service)``; or pass the
    registry as the server of a generated ``add_*Servicer_to_server`` (it
    records the handlers and learns the service name from them)."""

    def __init__(self, backend: ControllerBackend) -> None:
        self.backend = backend
        self._services: list[Service] = []
        self._pending: dict[str, list[Callable[[grpc.Server], None]]] = {}

    def add(self, service: Service) -> None:
        self._services.append(service)

    # grpc.Server's two registration calls, as generated code makes them
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for h in handlers:
            name = h.service_name() if hasattr(h, "service_name") else ""
            if not name:
                raise BreakwaterError("sync hook: a generic handler without a service name")
            def add(server: grpc.Server, h: Any = h) -> None:
                server.add_generic_rpc_handlers((h,))
            self._pending.setdefault(name, []).append(add)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._pending.setdefault(service_name, []).append(
            lambda server: server.add_registered_method_handlers(service_name, method_handlers))

    @property
    def services(self) -> list[Service]:
        out = list(self._services)
        for name, adds in self._pending.items():
            def add_all(server: grpc.Server, adds: list[Callable[[grpc.Server], None]] = adds) -> None:
                for add in adds:
                    add(server)
            out.append(Service(name, add_all))
        return out


class SyncHandle(Protocol):
    """What the sync hook returns (:class:`~controller.fleet.wiring.SyncServices`)."""

    def close(self) -> None:
        """Called once the server stopped."""

    def collect_metrics(self, out: Exposition) -> None:
        """Called every time the metrics are rendered."""


class SyncHook(Protocol):
    """Adds the agents' services (:func:`~controller.fleet.wiring.add_sync_services`)."""

    def __call__(self, registry: ServiceRegistry, store: Store, events: EventLog,
                 config: ControllerConfig, *, backend: ControllerBackend,
                 leadership: Leadership) -> SyncHandle: ...


# --- RPC metrics ------------------------------------------------------------------------


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcMetrics(grpc.ServerInterceptor):
    """Counts every call by service, method and status code, and the
    streams open by method. Runs inside the error mapping, so it sees the
    Breakwater errors and counts the code each becomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.streams: Counter[tuple[str, str]] = Counter()

    def _count(self, method: str, code: grpc.StatusCode, context: grpc.ServicerContext | None) -> None:
        set_code = getattr(context, "code", None) if code is grpc.StatusCode.OK else None
        if callable(set_code) and isinstance(set_code(), grpc.StatusCode):
            code = set_code()  # a servicer that set its own status
        service, name = _split(method)
        with self._lock:
            self.calls[(service, name, code.name)] += 1

    def _unary(self, fn: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                out = fn(request, context)
            except BaseException as exc:
                self._count(method, code_of(exc), None)
                raise
            self._count(method, grpc.StatusCode.OK, context)
            return out
        return call

    def _streaming(self, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
                   method: str) -> Callable[..., Any]:
        key = _split(method)

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._lock:
                self.streams[key] += 1
            code = grpc.StatusCode.OK
            try:
                yield from fn(request, context)
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException as exc:
                code = code_of(exc)
                raise
            finally:
                with self._lock:
                    self.streams[key] -= 1
                if code is grpc.StatusCode.OK and not context.is_active():
                    code = grpc.StatusCode.CANCELLED  # it ended because the client went away
                self._count(method, code, context if code is grpc.StatusCode.OK else None)
        return call

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        codec: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                                 "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, method), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, method),
                                                        **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, method), **codec)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream, method),
                                                         **codec)
        return handler

    def collect(self, out: Exposition) -> None:
        out.family("breakwater_controller_rpcs_total", "counter", "RPCs by service, method and status code")
        out.family("breakwater_controller_streams", "gauge", "Streams open now, by service and method")
        with self._lock:
            calls = sorted(self.calls.items())
            streams = sorted(self.streams.items())
        for (service, method, code), n in calls:
            out.add("breakwater_controller_rpcs_total", "counter", "RPCs by service, method and status code",
                    n, {"service": service, "method": method, "code": code})
        for (service, method), n in streams:
            out.add("breakwater_controller_streams", "gauge", "Streams open now, by service and method",
                    n, {"service": service, "method": method})


# --- the controller ---------------------------------------------------------------------


_HEALTH_NAMES: Final = {node_pb2.NODE_HEALTH_HEALTHY: "healthy", node_pb2.NODE_HEALTH_DEGRADED: "degraded",
                        node_pb2.NODE_HEALTH_UNREACHABLE: "unreachable"}


class Controller:
    """A built controller: ``server`` bound to ``port`` (not started until
    :meth:`start`), over ``store`` and ``events``."""

    def __init__(self, config: ControllerConfig, *, store: Store, events: EventLog,
                 backend: ControllerBackend, server: AioServerThread, port: int,
                 health_servicer: health.HealthServicer, rpc_metrics: RpcMetrics,
                 stopping: threading.Event, sync: SyncHandle | None,
                 leadership: Leadership | None = None) -> None:
        self.config = config
        self.leadership: Leadership = leadership or SoleLeader(f"controller:{port}")
        self.store = store
        self.events = events
        self.backend = backend
        self.server = server
        self.port = port
        self.sync = sync
        self.rpc_metrics = rpc_metrics
        self._health = health_servicer
        self._stopping = stopping
        self._sweeper = threading.Thread(target=self._sweep_loop, name="controller-sweeper", daemon=True)
        self._metrics_server: MetricsServer | None = None
        self._stopped = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.authorizer = Authorizer(plaintext=config.tls is None)
        self.watch_limits = StreamLimits(what="WatchEvents streams")
        self.expired_total = 0
        self.sweep_errors = 0
        self.fenced_refusals = 0
        self._last_prune = 0.0
        self.started_at = time.time()

    @property
    def insecure(self) -> bool:
        """Plaintext on a non-loopback address (``insecure = true``)."""
        return self.config.tls is None and not is_loopback(self.config.listen)

    @property
    def address(self) -> str:
        """``host:port`` as a client would dial it."""
        host = self.config.listen.rpartition(":")[0]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "[::]":
            host = "[::1]"
        return f"{host}:{self.port}"

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.config.metrics is not None:
            host, port = self.config.metrics
            try:
                self._metrics_server = MetricsServer(host, port)
            except OSError as exc:
                raise SetupError(f"metrics {host}:{port}: cannot listen ({exc.strerror or exc}); "
                                 "is the port in use? (--metrics \"\" disables)") from exc
            self._metrics_server.publish(self.metrics_text())
            self._metrics_server.start()
        if self.insecure:
            LOGGER.warning("serving PLAINTEXT on %s (insecure = true): anyone who reaches the port can "
                           "change every edge's rules; configure tls_cert, tls_key and tls_ca",
                           self.config.listen, extra={"event": "controller_insecure",
                                                      "listen": self.config.listen})
        self.server.start()
        self.leadership.start()
        self._sweeper.start()
        LOGGER.info("controller %s serving on %s (rule set version %d, store %s)", self.leadership.name,
                    self.address, self.store.version, self.config.store,
                    extra={"event": "controller_ready", "address": self.address, "port": self.port,
                           "state_dir": str(self.config.state_dir), "version": self.store.version,
                           "sync": self.sync is not None, "controller": self.leadership.name,
                           "store": self.config.store})

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (health NOT_SERVING first, streams ended, calls given
        ``grace`` seconds), then close the store. Safe to call twice."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        wait = self.config.shutdown_grace if grace is None else grace
        self._health.enter_graceful_shutdown()
        self._stopping.set()
        self.server.stop(wait).wait()
        if self._sweeper.is_alive():
            self._sweeper.join(SWEEP_SECONDS * 5)
        if self.sync is not None:
            try:
                self.sync.close()
            except Exception:
                LOGGER.exception("closing the sync hub failed")
        self.leadership.close()  # after the jobs stopped: another controller takes them over
        if self._metrics_server is not None:
            self._metrics_server.close()
        version = self.store.version
        self.store.close()
        LOGGER.info("controller stopped", extra={"event": "controller_stopped", "version": version})

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` ran (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Controller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    # -- the background loop --

    def sweep_once(self, now: datetime | None = None) -> int:
        """Expire what is due (publishing its events); returns how many rules went."""
        change = self.backend.expire(now)
        if change.removed:
            self.expired_total += len(change.removed)
            LOGGER.info("expired %d rule(s) in version %d: %s", len(change.removed), change.version,
                        ", ".join(r.id for r in change.removed),
                        extra={"event": "rules_expired", "version": change.version,
                               "rules": [r.id for r in change.removed]})
        return len(change.removed)

    def _singleton_jobs(self) -> None:
        """Expiry and pruning, on the leader only, fenced by its token."""
        leadership = self.leadership
        if not leadership.is_leader:
            return
        with self.store.fenced(leadership.token):
            self.sweep_once()
            if time.monotonic() - self._last_prune >= PRUNE_SECONDS:
                self._last_prune = time.monotonic()
                pruned = self.store.prune_events(self.config.events_keep)
                if pruned:
                    LOGGER.info("pruned %d old events", pruned, extra={"event": "events_pruned",
                                                                       "count": pruned})
                self.forget_nodes()

    def forget_nodes(self, now: datetime | None = None) -> list[str]:
        """Forget the nodes disconnected and silent for ``node_retention``
        (the registry is garbage-collected); returns their ids."""
        keep = self.config.node_retention
        if keep <= 0:
            return []
        at = now or datetime.now(UTC)
        gone = []
        for node in self.store.nodes():
            last = node.last_heartbeat or node.create_time
            if node.connected or last is None or (at - last).total_seconds() < keep:
                continue
            with contextlib.suppress(NotFoundError):  # another controller forgot it first
                self.store.delete_node(node.node_id)
                gone.append(node.node_id)
        if gone:
            LOGGER.info("forgot %d node(s) silent for more than %.0f s: %s", len(gone), keep, ", ".join(gone),
                        extra={"event": "nodes_forgotten", "nodes": gone})
        return gone

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(SWEEP_SECONDS):
            try:
                self._singleton_jobs()
            except FailedPreconditionError as exc:  # deposed meanwhile: the fence held
                self.fenced_refusals += 1
                LOGGER.warning("expiry sweep refused: %s", exc, extra={"event": "sweep_fenced"})
            except BreakwaterError as exc:
                self.sweep_errors += 1
                LOGGER.error("expiry sweep failed: %s", exc, extra={"event": "sweep_failed"})
            except Exception:
                self.sweep_errors += 1
                LOGGER.exception("expiry sweep failed", extra={"event": "sweep_failed"})
            if self._metrics_server is not None:
                try:
                    self._metrics_server.publish(self.metrics_text())
                except Exception:
                    LOGGER.exception("rendering metrics failed")

    # -- metrics --

    def metrics_text(self) -> str:
        out = Exposition()
        version, rules = self.store.snapshot()
        by_origin = Counter(r.rule.origin for r in rules)
        help_rules = "Rules in force, by origin"
        out.family("breakwater_controller_rules", "gauge", help_rules)
        for origin in ORIGINS:
            out.add("breakwater_controller_rules", "gauge", help_rules, by_origin.get(origin, 0),
                    {"origin": origin})
        out.add("breakwater_controller_rule_version", "gauge", "The rule set's current version", version)
        help_nodes = "Registered nodes, by health"
        nodes = self.backend.list_nodes()
        by_health = Counter(_HEALTH_NAMES.get(n.health, "unknown") for n in nodes)
        for name in _HEALTH_NAMES.values():
            out.add("breakwater_controller_nodes", "gauge", help_nodes, by_health.get(name, 0),
                    {"health": name})
        behind = [n for n in nodes if n.applied_rule_version < n.target_rule_version]
        out.add("breakwater_controller_nodes_behind", "gauge",
                "Nodes whose applied rule version is behind their target", len(behind))
        out.add("breakwater_controller_max_lag_seconds", "gauge", "The largest lag of any node",
                max((n.lag.seconds + n.lag.nanos / 1e9 for n in nodes), default=0.0))
        out.add("breakwater_controller_events_last_sequence", "gauge", "The newest event's sequence",
                self.events.last_sequence)
        out.add("breakwater_controller_rules_expired_total", "counter",
                "Rules removed at their expire_time by this process", self.expired_total)
        out.add("breakwater_controller_sweep_errors_total", "counter", "Expiry sweeps that failed",
                self.sweep_errors)
        out.add("breakwater_controller_fenced_refusals_total", "counter",
                "Singleton job writes refused because this controller was no longer the leader",
                self.fenced_refusals)
        self.leadership.collect_metrics(out)
        out.add("breakwater_controller_start_time_seconds", "gauge", "When this process started (Unix time)",
                self.started_at)
        out.add("breakwater_controller_tls", "gauge", "1 when the port serves mutual TLS",
                int(self.config.tls is not None))
        out.add("breakwater_controller_insecure", "gauge",
                "1 when the port serves plaintext beyond loopback (insecure = true)", int(self.insecure))
        out.add("breakwater_controller_rpc_unauthenticated_total", "counter",
                "Calls refused for want of an identity", self.authorizer.unauthenticated)
        out.add("breakwater_controller_rpc_permission_denied_total", "counter",
                "Calls refused for the caller's role", self.authorizer.denied)
        out.add("breakwater_controller_watch_streams", "gauge", "WatchEvents streams open",
                self.watch_limits.open)
        out.add("breakwater_controller_watch_streams_refused_total", "counter",
                "WatchEvents refused past the per-caller or total bound", self.watch_limits.refused)
        self.rpc_metrics.collect(out)
        if self.sync is not None:
            self.sync.collect_metrics(out)
        return out.text()


def create_controller(config: ControllerConfig, *, sync: bool = True,
                      sync_hook: SyncHook = add_sync_services,
                      clock: Callable[[], datetime] | None = None) -> Controller:
    """Open the store under ``config.state_dir`` and build the server
    (bound, not started). ``sync=False`` leaves the sync hub out;
    ``sync_hook`` adds it (see the module docstring)."""
    store = open_store(config.store, config.state_dir, tls=config.etcd_tls, prefix=config.store_prefix)
    try:
        events = EventLog(store)
        revoked = RevocationList(config.revocation_path) if config.tls is not None else None
        backend = ControllerBackend(store, events, health=config.health, revoked=revoked,
                                    **({"clock": clock} if clock else {}))
        stopping = threading.Event()
        watch_limits = StreamLimits(per_caller=DEFAULT_STREAMS_PER_CALLER,
                                    total=max(1, config.max_workers // 2), what="WatchEvents streams")
        services = api_services(RuleServicer(backend, admission=config.admission,
                                             **({"clock": clock} if clock else {})),
                                NodeServicer(backend),
                                EventServicer(events, stopping=stopping, limits=watch_limits))
        leadership = open_leadership(store, socket.gethostname())
        hub: SyncHandle | None = None
        if sync:
            registry = ServiceRegistry(backend)
            try:
                hub = sync_hook(registry, store, events, config, backend=backend, leadership=leadership)
            except FieldError as exc:  # a bad [sync]/[telemetry]/[fleet] key: name the file too
                raise ConfigError(config.source, exc.path, exc.what) from None
            services += registry.services
        health_servicer = health.HealthServicer()
        rpc_metrics = RpcMetrics()
        authorizer = Authorizer(plaintext=config.tls is None, revoked=revoked)
        credentials = server_credentials(config.tls) if config.tls is not None else None
        server, port = create_threaded_aio_server(config.listen, services, health_servicer=health_servicer,
                                                  interceptors=[rpc_metrics], max_workers=config.max_workers,
                                                  credentials=credentials, authorizer=authorizer)
    except BaseException:
        store.close()
        raise
    leadership.name = f"{socket.gethostname()}:{port}"  # before it starts: the name the leader key holds
    controller = Controller(config, store=store, events=events, backend=backend, server=server, port=port,
                            health_servicer=health_servicer, rpc_metrics=rpc_metrics, stopping=stopping,
                            sync=hub, leadership=leadership)
    controller.authorizer = authorizer
    controller.watch_limits = watch_limits
    return controller


def run(config: ControllerConfig) -> int:
    """The daemon: build, start, serve until SIGTERM/SIGINT, stop cleanly."""
    controller = create_controller(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        LOGGER.info("got %s; stopping", signal.Signals(signum).name, extra={"event": "controller_stopping"})
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        controller.start()
        while not stop.wait(1.0):
            pass
    finally:
        controller.stop()
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
    return 0

