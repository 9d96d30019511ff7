"""``breakwater agent``: the detection and mitigation daemon of one edge host.

Start: attach (or adopt, without a gap) each configured interface, write the
protected prefixes and reflection ports, and load the local state
(:mod:`controller.agent.state`): the operator's manual rules, the automatic rules
still in force with their expiry, the detector's baselines. Then, every
``interval``, per interface, one detection interval
(:mod:`controller.agent.interval`)::

    harvest -> Detector.observe -> Planner.plan -> (changed?) enforce.apply
            -> one SQLite transaction (auto rules, baselines, events) -> metrics

and the interval's telemetry (:mod:`controller.agent.report`). Between
intervals the loop thread runs the work other threads hand it
(:meth:`Agent.call_in_loop`) and swaps again when a controller rule expires.

Monitor mode plans and reports ("would apply") but never applies automatic
rules. SIGHUP reloads the configuration and the manual rules and re-applies,
without detaching (:mod:`controller.agent.reload`): kept interfaces stay
attached, removed ones are detached, added ones attached, the metrics
address is rebound. SIGTERM/SIGINT exit and leave the XDP program and the
rules in force (unless ``detach_on_exit``). After ``kill -9`` a restarted
agent adopts the program and reloads its automatic rules, which keep their
expiry: nothing is lost, nothing outlives its TTL.

The rule layers (manual, the allowlist rule, controller, automatic) and
their swap into each interface are :mod:`controller.agent.layers`'. With
``controller`` set, a sync client keeps the controller layer in step with
the controller (:mod:`controller.agent.link`); the controller layer is
stored in ``agent.db`` and loaded before the first apply, so a restarted
agent enforces the last set it ACKed whether or not the controller is
reachable. With ``api`` set, the agent serves RuleService, EventService and
TelemetryService for this node (:mod:`controller.agent.localapi`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

from ..api.telemetry import FleetTelemetry, TelemetryConfig
from ..dataplane import attach as dataplane
from ..errors import BreakwaterError, FailedPreconditionError, UnavailableError
from ..metrics import MetricsServer
from ..rules.model import Rule, RuleSet
from . import interface, metrics, reload
from .config import MIN_INTERVAL, AgentConfig, InterfaceConfig
from .interface import Interface
from .interval import run_interval
from .layers import RuleLayers, RuleView, manual_at_start
from .link import ControllerLink
from .localapi import LocalApi
from .report import report
from .state import Store
from .sync import ApplyCancelledError

__all__ = ["Agent", "run"]

LOGGER = logging.getLogger("breakwater.agent")

# Recent events kept in memory (the store keeps the history).
RING_EVENTS: Final = 1000
# Events kept in the store; older ones are pruned once an hour.
KEEP_EVENTS: Final = 100_000
PRUNE_SECONDS: Final = 3600.0
# How long another thread waits for the loop between checks that it still runs.
CALL_POLL_SECONDS: Final = 0.5
EARLY_LOOK: Final = 0.25
"""When the detector asks for an early look (a vector rising towards its
threshold: :attr:`controller.detection.detector.Detector.early`), the next
interval is this share of ``interval`` (at least MIN_INTERVAL): a flood that
began inside an interval starts its attack a quarter interval later, not a
whole one, while a quiet agent keeps its cadence (and its cost)."""
_T = TypeVar("_T")


class Agent:
    """The daemon. :meth:`start`, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: AgentConfig, *, config_path: Path | None = None,
                 overrides: Mapping[str, object] | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        self._ifaces: list[Interface] = []
        # Held while the interface list changes, and by a scrape rendering
        # metrics on the metrics thread (it reads every interface's maps).
        self._ifaces_lock = threading.RLock()
        self._store: Store | None = None
        self._metrics: MetricsServer | None = None
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RING_EVENTS)
        self._pruned_at = 0.0
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._loop_thread: threading.Thread | None = None
        self.layers = RuleLayers(lambda: self.config, lambda: self._ifaces)
        self._link = ControllerLink(config=lambda: self.config, interfaces=lambda: self._ifaces,
                                    put=self.layers.put_controller, call_in_loop=self.call_in_loop,
                                    on_loop=lambda: self._loop_thread is threading.current_thread())
        self._api: LocalApi | None = None
        self._telemetry: FleetTelemetry | None = None

    @property
    def view(self) -> RuleView:
        """The rules in force by layer, for the local API (replaced whole after each apply)."""
        return self.layers.view

    # -- lifecycle --

    def start(self) -> None:
        cfg = self.config
        dataplane.require_root()
        self._store = Store.open(cfg.state_dir)
        self.layers.load_controller(self._store)
        for icfg in cfg.interfaces:
            self._ifaces.append(self._bring_up(icfg, reason="start"))
        if cfg.metrics is not None:
            self._metrics = MetricsServer(*cfg.metrics, render=self.render_metrics)
            self._metrics.start()
        self.layers.update_view()
        self._start_api()
        self._link.start(self.layers.controller)
        controller = self.layers.controller
        LOGGER.info("agent ready", extra={
            "event": "agent_ready", "interfaces": [i.name for i in self._ifaces], "mode": cfg.mode,
            "interval": cfg.interval,
            "metrics": f"{self._metrics.address[0]}:{self._metrics.address[1]}" if self._metrics else "",
            "auto_rules": {i.name: [r.id for r in i.auto] for i in self._ifaces},
            "controller": ", ".join(cfg.controllers), "node_id": cfg.node_id,
            "controller_version": controller.version,
            "controller_rules": sorted(controller.rules),
            "api": self._api.where if self._api else "",
        })

    def _bring_up(self, icfg: InterfaceConfig, *, reason: str) -> Interface:
        """Attach (or adopt) one interface, configure it and put its rules in force."""
        assert self._store is not None
        cfg = self.config
        maps, mode = interface.attach(icfg, cfg, reason=reason)
        try:
            iface = interface.restore(icfg, maps, cfg, self._store,
                                      manual_at_start(icfg.name, maps, cfg, self._store))
            iface.attach_mode = mode
            interface.configure(iface, cfg)
            self.layers.apply(iface, datetime.now(UTC), reason=reason)
        except BaseException:
            maps.close()
            raise
        return iface

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def close(self) -> None:
        cfg = self.config
        self._link.stop()
        self._stop_api()
        self._cancel_calls()
        if self._metrics is not None:
            self._metrics.close()
        with self._ifaces_lock:
            for iface in self._ifaces:
                iface.maps.close()
        if cfg.detach_on_exit:
            for iface in self._ifaces:
                with contextlib.suppress(BreakwaterError):
                    dataplane.detach(iface.name, pin_root=cfg.pin_root, netns=iface.cfg.netns)
            LOGGER.info("detached on exit", extra={"event": "detached"})
        else:
            LOGGER.info("exiting; XDP program and rules stay in force", extra={"event": "agent_exit"})
        if self._store is not None:
            self._store.close()

    # -- the loop --

    def run(self) -> None:
        self._loop_thread = threading.current_thread()
        next_at = time.monotonic()
        while not self._stop:
            if self._reload:
                self._reload = False
                self._do_reload()
            for iface in self._ifaces:
                try:
                    self._interval(iface)
                except BreakwaterError as exc:
                    LOGGER.error("%s: interval failed: %s", iface.name, exc,
                                 extra={"event": "interval_failed", "interface": iface.name})
            report(self._ifaces, node_id=self.config.node_id, sync=self._link.client,
                   telemetry=self._telemetry)
            next_at += self.config.interval
            now = time.monotonic()
            if any(iface.detector.early for iface in self._ifaces):
                next_at = min(next_at, now + max(MIN_INTERVAL, EARLY_LOOK * self.config.interval))
            if next_at < now:  # overran: start the next interval now, do not catch up
                next_at = now
            self._idle_until(next_at)

    def _interval(self, iface: Interface) -> None:
        assert self._store is not None
        run_interval(iface, config=self.config, store=self._store, layers=self.layers, recent=self.recent)
        mono = time.monotonic()
        if mono - self._pruned_at >= PRUNE_SECONDS:
            self._pruned_at = mono
            self._store.prune_events(KEEP_EVENTS)

    # -- work from other threads (the sync client, the local API), run by the loop --

    def call_in_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread, between intervals, and return its
        result (or raise its error). Raises :class:`ApplyCancelledError`
        when the agent stops first."""
        if self._loop_thread is threading.current_thread():
            return fn()
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._calls.put((fn, fut))
        self._wake.set()
        while True:
            try:
                return fut.result(timeout=CALL_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if self._stop and fut.cancel():
                    raise ApplyCancelledError("the agent is stopping") from None
            except concurrent.futures.CancelledError:
                raise ApplyCancelledError("the agent is stopping") from None

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller, who raises it
                fut.set_exception(exc)

    def _cancel_calls(self) -> None:
        while True:
            try:
                _, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            fut.cancel()

    def _idle_until(self, deadline: float) -> None:
        """Wait for the next interval, running other threads' calls (and
        controller rule expiries) as they come."""
        while True:
            self._run_calls()
            self.layers.expire_controller_rules()
            left = deadline - time.monotonic()
            if left <= 0 or self._stop or self._reload:
                return
            self._wake.wait(left)
            self._wake.clear()

    # -- SIGHUP --

    def _do_reload(self) -> None:
        old = self.config
        new = reload.reloaded_config(old, self._config_path, self._overrides)
        if new is not None:
            assert self._store is not None
            self.config = new
            self._reload_interfaces(new)
            if new.metrics != old.metrics:
                self._rebind_metrics(new.metrics)
            for iface in self._ifaces:
                reload.refresh(iface, old, new, self._store, self.layers)
            LOGGER.info("configuration reloaded", extra={
                "event": "reloaded", "mode": new.mode, "interfaces": [i.name for i in self._ifaces]})
        self._reload_links(old)

    def _reload_interfaces(self, new: AgentConfig) -> None:
        """Apply the interface list of a reloaded configuration
        (:func:`~controller.agent.reload.reconcile_interfaces`); the
        interfaces that end up managed are written back to the configuration."""
        def remove(iface: Interface) -> None:
            with self._ifaces_lock:  # out of the list before its maps close
                self._ifaces.remove(iface)
                interface.release(iface, self.config)

        kept = reload.reconcile_interfaces(self._ifaces, new, remove=remove,
                                           bring_up=lambda icfg: self._bring_up(icfg, reason="reload"))
        with self._ifaces_lock:
            self._ifaces = kept
        self.config = replace(self.config, interfaces=tuple(i.cfg for i in kept))

    def _rebind_metrics(self, address: tuple[str, int] | None) -> None:
        """Serve metrics at the reloaded address (or stop serving); on a bind
        failure the old server keeps running."""
        server: MetricsServer | None = None
        if address is not None:
            try:
                server = MetricsServer(*address, render=self.render_metrics)
                server.start()
            except (OSError, BreakwaterError) as exc:
                LOGGER.error("metrics address %s:%d not bound, keeping the old one: %s", *address, exc,
                             extra={"event": "reload_partial", "key": "metrics"})
                self.config = replace(self.config, metrics=self._metrics.address if self._metrics else None)
                return
        if self._metrics is not None:
            self._metrics.close()
        self._metrics = server
        LOGGER.info("metrics now at %s", f"{server.address[0]}:{server.address[1]}" if server else "nowhere",
                    extra={"event": "metrics_rebound"})

    def _reload_links(self, old: AgentConfig) -> None:
        """After SIGHUP: re-register when who the node is or where its
        controller is changed; rebind the local API when its address did."""
        self.layers.update_view()
        self._link.reconfigure(self.layers.controller)
        if self.config.api != old.api or self.config.api_socket != old.api_socket:
            self._stop_api()
            try:
                self._start_api()
            except BreakwaterError as exc:
                LOGGER.error("local API not served at its new address: %s", exc,
                             extra={"event": "reload_partial", "key": "api"})

    # -- the local API --

    def _start_api(self) -> None:
        cfg = self.config
        if cfg.api is None and cfg.api_socket is None:
            return
        if self._telemetry is None:
            # buckets as fine as the interval allows: `breakwater top` against an agent is live
            self._telemetry = FleetTelemetry(TelemetryConfig(bucket_seconds=max(1.0, cfg.interval)))
        self._api = LocalApi(self, cfg.api, self._telemetry, cfg.api_socket)
        self._api.start()

    def _stop_api(self) -> None:
        if self._api is not None:
            self._api.stop()
            self._api = None

    def edit_manual_rules(self, edit: Callable[[RuleSet], RuleSet], *, actor: str,
                          events: Sequence[tuple[str, str, Rule]] = ()) -> RuleSet:
        """Change the node's manual rules (on every interface), store and
        apply them, on the loop thread; on any failure nothing changes.
        ``events`` are ``(kind, rule_id, rule)`` to log as rule events.
        Returns the new manual set."""
        if self.config.rules_file is not None:
            raise FailedPreconditionError(
                f"the manual rules come from {self.config.rules_file}: edit that file and send SIGHUP")

        def run() -> RuleSet:
            assert self._store is not None
            new = edit(self.view.manual)
            self.layers.put_manual(new, datetime.now(UTC))
            for iface in self._ifaces:
                self._store.set_manual_rules(iface.name, new)
            self._store.add_rule_events("", [(rid, kind, {"rule": r.to_dict(), "actor": actor})
                                             for kind, rid, r in events])
            if self._link.client is not None:
                self._link.client.notify_events()
            return new

        if not self._ifaces:
            raise UnavailableError("the agent protects no interface yet", "UNAVAILABLE")
        return self.call_in_loop(run)

    # -- metrics --

    def render_metrics(self) -> str:
        """The metrics text (:func:`controller.agent.metrics.render`), on the
        metrics server's thread."""
        with self._ifaces_lock:
            return metrics.render(self._ifaces, config=self.config, sync=self._link.client,
                                  controller=self.layers.controller)


def run(config: AgentConfig, *, config_path: Path | None = None,
        overrides: Mapping[str, object] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; the CLI's ``breakwater agent``."""
    agent = Agent(config, config_path=config_path, overrides=overrides)
    agent.install_signals()
    try:
        agent.start()
        agent.run()
    finally:
        agent.close()
    return 0
