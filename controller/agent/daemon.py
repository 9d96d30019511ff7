"""``breakwater agent``: the detection and mitigation daemon of one edge host.

Start: attach (or adopt, without a gap) each configured interface, write the
protected prefixes and reflection ports, and load the local state
(:mod:`controller.agent.state`): the operator's manual rules, the automatic rules
still in force with their expiry, the detector's baselines. Then, every
``interval``, per interface::

    harvest -> Detector.observe -> Planner.plan -> (changed?) enforce.apply
            -> one SQLite transaction (auto rules, baselines, events) -> metrics

Monitor mode plans and reports ("would apply") but never applies automatic
rules. SIGHUP reloads the configuration and the manual rules and re-applies,
without detaching: kept interfaces stay attached, removed ones are detached,
added ones attached, the metrics address is rebound. SIGTERM/SIGINT exit and leave the XDP program and the
rules in force (unless ``detach_on_exit``). After ``kill -9`` a restarted
agent adopts the program and reloads its automatic rules, which keep their
expiry: nothing is lost, nothing outlives its TTL.

With ``controller`` set, a :class:`~controller.agent.sync.SyncClient` keeps
the node's rules in step with the controller: each version it receives is
handed to the loop thread (:meth:`Agent.call_in_loop`), swapped in with the
other layers on every interface (all of them, or none: an interface that
fails puts the others back) and only then ACKed. The layers, by precedence
when two share an id (:meth:`Agent._layers`): manual, the allowlist rule,
controller, automatic. The controller layer is stored in ``agent.db`` and
loaded before the first apply, so a restarted agent enforces the last set
it ACKed whether or not the controller is reachable. Every interval the
loop also builds a ``TelemetrySummary`` per interface for the controller
and for the local API (``api``: RuleService, EventService and
TelemetryService for this node, :mod:`controller.agent.localapi`).
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from breakwater.v1 import node_pb2, sync_service_pb2

from ..dataplane import abi, counters, protect
from ..dataplane import attach as dataplane
from ..dataplane.pinned import FAILURES, MapSet
from ..detection.detector import Detector
from ..detection.events import AttackEvent
from ..detection.harvest import Harvester
from ..detection.planner import AUTO_ORIGIN, Planner, PlanResult
from ..detection.samples import Sample
from ..errors import (
    BreakwaterError,
    CapacityError,
    FailedPreconditionError,
    FieldError,
    InputError,
    UnavailableError,
)
from ..metrics import Exposition, Histogram, MetricsServer
from ..rules import enforce
from ..rules.compiler import DEFAULT_MAX_SIGNATURES
from ..rules.model import Match, Rule, RuleAction, RuleSet
from . import config as agentconfig
from .config import AgentConfig, InterfaceConfig
from .state import Store
from .sync import ApplyCancelledError, ControllerLayer, SyncClient
from .telemetry import DEFAULT_TOP_SOURCES, CounterDeltas, summarize

if TYPE_CHECKING:
    from ..api.telemetry import FleetTelemetry
    from .localapi import LocalApi

__all__ = ["Agent", "RuleView", "run"]

LOGGER = logging.getLogger("breakwater.agent")

ALLOWLIST_RULE_ID: Final = "agent-allowlist"
# Recent events kept in memory (the store keeps the history).
RING_EVENTS: Final = 1000
# Events kept in the store; older ones are pruned once an hour.
KEEP_EVENTS: Final = 100_000
PRUNE_SECONDS: Final = 3600.0
# Baselines are persisted at most this often (they move slowly).
BASELINE_SECONDS: Final = 10.0
# Map fill is counted at most this often (a full read of each main map).
FILL_SECONDS: Final = 10.0
FILL_MAPS: Final = ("deny_v4", "deny_v6", "deny_pfx_v4", "deny_pfx_v6", "allow_v4", "allow_v6",
                    "src_v4", "src_v6", "rl_src", "dst_v4", "dst_v6")
CONTROLLER_ORIGIN: Final = "controller"
# Top sources per summary kept for the local API (the controller asks for its own number).
LOCAL_TOP_SOURCES: Final = 100
# How long another thread waits for the loop between checks that it still runs.
CALL_POLL_SECONDS: Final = 0.5
_T = TypeVar("_T")


def _manual_only(rules: RuleSet) -> RuleSet:
    """The operator's rules of an applied set: not automatic, not the agent's
    allowlist, not the controller's (the agent enforces those with origin controller)."""
    return RuleSet.from_rules(r for r in rules if r.origin not in (AUTO_ORIGIN, CONTROLLER_ORIGIN)
                              and r.id != ALLOWLIST_RULE_ID)



def _recorded(state_dir: Path, maps: MapSet) -> enforce.Applied | None:
    """The rule set recorded for these maps; None (logged) when the record is
    of another generation: the agent then re-applies its own set whole."""
    try:
        return enforce.load_applied(state_dir, maps)
    except enforce.StateMismatchError as exc:
        LOGGER.warning("%s", exc)
        return None


_SKIP_IF_IN_FORCE: Final = frozenset({"start", "controller", "expiry"})
"""Apply reasons after which a set the maps already hold is not swapped again."""


def _auto_rule_events(before: Sequence[Rule], plan: PlanResult,
                      now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """The rule events of a plan that changed the automatic rules: created,
    updated (escalated or otherwise changed), expired or deleted."""
    old = {r.id: r for r in before}
    new = {r.id: r for r in plan.rules}
    attack_of = {rid: aid for aid, rids in plan.by_attack.items() for rid in rids}
    out: list[tuple[str, str, dict[str, Any]]] = []

    def add(rid: str, kind: str, rule: Rule) -> None:
        doc: dict[str, Any] = {"rule": rule.to_dict(), "actor": "detector"}
        if rid in attack_of:
            doc["attack_id"] = attack_of[rid]
        out.append((rid, kind, doc))

    for rid in plan.added:
        if rid in new:
            add(rid, "created", new[rid])
    for rid in dict.fromkeys((*plan.escalated, *plan.changed)):
        if rid in new and rid not in plan.added:
            add(rid, "updated", new[rid])
    for rid in plan.removed:
        gone = old.get(rid)
        if gone is not None:
            expired = gone.expires_at is not None and gone.expires_at <= now
            add(rid, "expired" if expired else "deleted", gone)
    return out


@dataclass(frozen=True)
class RuleView:
    """The node's rules by layer, as the local API shows them: ``manual``
    (node-wide: every interface gets the same manual rules through the API),
    the agent's ``allowlist`` rule, the ``controller`` layer, the
    ``automatic`` rules (of every interface, by id). ``rules_file`` is set
    when the manual rules come from a file (the API cannot change them)."""

    manual: RuleSet = field(default_factory=RuleSet)
    allowlist: Rule | None = None
    controller: ControllerLayer = field(default_factory=ControllerLayer)
    automatic: RuleSet = field(default_factory=RuleSet)
    rules_file: Path | None = None


@dataclass

class _Interface:
    """One interface's data plane, detector, planner and rule state."""

    cfg: InterfaceConfig
    maps: MapSet
    detector: Detector
    planner: Planner
    manual: RuleSet
    auto: tuple[Rule, ...] = ()
    harvester: Harvester = field(default_factory=Harvester)
    stored_rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loop_hist: Histogram = field(default_factory=Histogram)
    harvest_hist: Histogram = field(default_factory=Histogram)
    last_loop: float = 0.0
    last_harvest: float = 0.0
    baselines_at: float = 0.0
    ids_saved: int = 0  # the detector's id counter as last stored
    fill: dict[str, tuple[int, int]] = field(default_factory=dict)
    fill_at: float = 0.0
    applies: int = 0
    apply_errors: int = 0
    attach_mode: str = ""
    last_sample: Sample | None = None
    slot_ids: dict[int, str] = field(default_factory=dict)
    counters: CounterDeltas = field(default_factory=CounterDeltas)

    @property
    def name(self) -> str:
        return self.cfg.name


class Agent:
    """The daemon. :meth:`start`, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: AgentConfig, *, config_path: Path | None = None,
                 overrides: Mapping[str, object] | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        self._ifaces: list[_Interface] = []
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
        self._controller = ControllerLayer()
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._loop_thread: threading.Thread | None = None
        self._sync: SyncClient | None = None
        self._sync_key: tuple[object, ...] = ()
        self._sync_generation = 0
        self._api: LocalApi | None = None
        self._telemetry: FleetTelemetry | None = None
        self.view = RuleView()
        """The rules in force by layer, for the local API (replaced whole after each apply)."""
        self._expiry_mark = datetime.now(UTC)  # controller rules expiring after it are still due
        self._expiry_cache: tuple[ControllerLayer | None, datetime | None] = (None, None)

    # -- lifecycle --

    def start(self) -> None:
        cfg = self.config
        dataplane.require_root()
        self._store = Store.open(cfg.state_dir)
        self._load_controller_layer()
        for icfg in cfg.interfaces:
            self._ifaces.append(self._bring_up(icfg, reason="start"))
        if cfg.metrics is not None:
            self._metrics = MetricsServer(*cfg.metrics, render=self.render_metrics)
            self._metrics.start()
        self._update_view()
        self._start_api()
        self._start_sync()
        LOGGER.info("agent ready", extra={
            "event": "agent_ready", "interfaces": [i.name for i in self._ifaces], "mode": cfg.mode,
            "interval": cfg.interval,
            "metrics": f"{self._metrics.address[0]}:{self._metrics.address[1]}" if self._metrics else "",
            "auto_rules": {i.name: [r.id for r in i.auto] for i in self._ifaces},
            "controller": cfg.controller or "", "node_id": cfg.node_id,
            "controller_version": self._controller.version,
            "controller_rules": sorted(self._controller.rules),
            "api": f"{self._api.address[0]}:{self._api.address[1]}" if self._api else "",
        })

    def _bring_up(self, icfg: InterfaceConfig, *, reason: str) -> _Interface:
        """Attach (or adopt) one interface, configure it and put its rules in force."""
        cfg = self.config
        result = dataplane.attach(icfg.name, icfg.mode, cfg.sizes, pin_root=cfg.pin_root,
                                  netns=icfg.netns)
        LOGGER.info("%s: %s program %d (%s)", icfg.name, result.action, result.prog_id, result.mode,
                    extra={"event": "interface_ready", "interface": icfg.name,
                           "action": result.action, "mode": result.mode, "reason": reason})
        maps = dataplane.open_maps(icfg.name, cfg.pin_root)
        try:
            iface = self._make_interface(icfg, maps)
            iface.attach_mode = result.mode
            self._configure(iface)
            self._apply(iface, datetime.now(UTC), reason=reason)
        except BaseException:
            maps.close()
            raise
        return iface

    def _release(self, iface: _Interface) -> None:
        """Stop managing an interface removed from the configuration: detach it
        (the configuration no longer asks for its protection); its stored rules
        and history stay in the state directory for a later re-add."""
        iface.maps.close()
        try:
            dataplane.detach(iface.name, pin_root=self.config.pin_root, netns=iface.cfg.netns)
        except BreakwaterError as exc:
            LOGGER.error("%s: removed from the configuration but not detached: %s", iface.name, exc,
                         extra={"event": "interface_release_failed", "interface": iface.name})
            return
        LOGGER.info("%s: removed from the configuration; detached", iface.name,
                    extra={"event": "interface_removed", "interface": iface.name})

    def _make_interface(self, icfg: InterfaceConfig, maps: MapSet) -> _Interface:
        assert self._store is not None
        detector = Detector(self.config.detect)
        baselines = self._store.baselines(icfg.name)
        if baselines:
            try:
                detector.load_baselines(baselines)
            except InputError as exc:
                LOGGER.warning("%s: stored baselines ignored: %s", icfg.name, exc)
        ids = self._store.attack_ids(icfg.name)
        detector.restore_id_counter(ids)  # attack ids never repeat across restarts
        now = datetime.now(UTC)
        auto = tuple(r for r in self._store.auto_rules(icfg.name) if r.is_active(now))
        return _Interface(icfg, maps, detector, Planner(self.config.mitigate),
                          self._manual_rules(icfg.name, maps), auto, ids_saved=ids)

    def _manual_rules(self, ifname: str, maps: MapSet) -> RuleSet:
        """The operator's rules: the rules file if configured, else the stored
        set, else (first start) the rule set a `breakwater rules` command left."""
        assert self._store is not None
        cfg = self.config
        if cfg.rules_file is not None:
            rules = enforce.load_file(cfg.rules_file)
        else:
            stored = self._store.manual_rules(ifname)
            if stored is not None:
                return stored
            prev = _recorded(cfg.state_dir, maps)
            rules = _manual_only(prev.rules if prev else RuleSet())
            if prev is not None:
                LOGGER.info("%s: imported %d manual rules from %s", ifname, len(rules), cfg.state_dir,
                            extra={"event": "manual_rules_imported", "interface": ifname})
        self._store.set_manual_rules(ifname, rules)
        return rules

    def _configure(self, iface: _Interface) -> None:
        with iface.maps.locked():
            protect.set_reflection_ports(iface.maps, self.config.mitigate.reflection_ports)
        protect.set_protected(iface.maps, self.config.protected)

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
        self._stop_sync()
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
                before = self.config
                self._do_reload()
                self._reload_links(before)
            for iface in self._ifaces:
                try:
                    self._interval(iface)
                except BreakwaterError as exc:
                    LOGGER.error("%s: interval failed: %s", iface.name, exc,
                                 extra={"event": "interval_failed", "interface": iface.name})
            self._report()
            next_at += self.config.interval
            now = time.monotonic()
            if next_at < now:  # overran: start the next interval now, do not catch up
                next_at = now
            self._idle_until(next_at)

    def _interval(self, iface: _Interface) -> None:
        assert self._store is not None
        cfg = self.config
        t0 = time.monotonic()
        sample = iface.harvester.sample(iface.maps)
        iface.last_sample = sample
        t1 = time.monotonic()
        iface.last_harvest = t1 - t0
        iface.harvest_hist.observe(iface.last_harvest)
        now = datetime.now(UTC)
        events: list[AttackEvent] = [] if sample is None else iface.detector.observe(sample)
        plan = iface.planner.plan(now, events, iface.auto)
        events = [replace(e, applied=plan.by_attack.get(e.id, ())) for e in events]
        changed = tuple(plan.rules) != tuple(sorted(iface.auto, key=lambda r: r.id))
        rule_events = _auto_rule_events(iface.auto, plan, now) if changed and plan.enforce else []
        if changed:
            iface.auto = tuple(plan.rules)
            if plan.enforce:
                self._apply(iface, now, reason="plan")
            for rid in plan.added:
                LOGGER.info("%s: %s rule %s", iface.name, "applied" if plan.enforce else "would apply", rid,
                            extra={"event": "rule_added" if plan.enforce else "rule_would_add",
                                   "interface": iface.name, "rule": rid})
            for rid in plan.removed:
                LOGGER.info("%s: removed rule %s", iface.name, rid,
                            extra={"event": "rule_removed", "interface": iface.name, "rule": rid})
        for r in plan.refused:
            LOGGER.warning("%s: refused %s", iface.name, r,
                           extra={"event": "refused", "interface": iface.name, "subject": r.subject})
        record = self._to_record(iface, events)
        mono = time.monotonic()
        baselines = None
        if mono - iface.baselines_at >= BASELINE_SECONDS:
            baselines = iface.detector.baselines()
            iface.baselines_at = mono
        ids = iface.detector.id_counter
        if changed or record or baselines is not None or ids != iface.ids_saved:
            # a new attack id is stored with the events that carry it
            self._store.commit_interval(iface.name, auto_rules=iface.auto if (changed and plan.enforce)
                                        else None, baselines=baselines, events=record,
                                        rule_events=rule_events,
                                        attack_ids=ids if ids != iface.ids_saved else None)
            iface.ids_saved = ids
        if mono - self._pruned_at >= PRUNE_SECONDS:
            self._pruned_at = mono
            self._store.prune_events(KEEP_EVENTS)
        iface.last_loop = time.monotonic() - t0
        iface.loop_hist.observe(iface.last_loop)
        if iface.last_loop > cfg.interval:
            LOGGER.warning("%s: interval took %.3f s, longer than %.3f s", iface.name, iface.last_loop,
                           cfg.interval, extra={"event": "overrun", "interface": iface.name})

    def _to_record(self, iface: _Interface, events: list[AttackEvent]) -> list[AttackEvent]:
        """Events worth a row and a log line: starts, ends, and rule changes."""
        out = []
        for e in events:
            if e.kind == "updated" and iface.stored_rules.get(e.id) == e.applied:
                continue
            iface.stored_rules[e.id] = e.applied
            if e.kind == "ended":
                iface.stored_rules.pop(e.id, None)
            out.append(e)
            doc = dict(e.to_dict(), interface=iface.name, monitor=self.config.monitor)
            self.recent.append(doc)
            LOGGER.info("%s: attack %s %s (%s, %s, %.0f pps, rules %s)", iface.name, e.id, e.kind, e.vector,
                        e.victim or "-", e.pps, ",".join(e.applied) or "-",
                        extra={"event": f"attack_{e.kind}", "interface": iface.name, "attack": doc})
        return out

    def _apply(self, iface: _Interface, now: datetime, *, reason: str) -> None:
        """Swap the rule layers in (:meth:`_layers`), unless already in force."""
        cfg = self.config
        rules, auto = self._layers(iface, now)
        with iface.maps.locked():
            prev = _recorded(cfg.state_dir, iface.maps)
            if (reason in _SKIP_IF_IN_FORCE and prev is not None and prev.rules.diff(rules).empty
                    and tuple(prev.management) == tuple(cfg.management)):
                LOGGER.info("%s: rule set already in force (generation %d)", iface.name, prev.gen)
                iface.slot_ids = {s: rid for rid, s in prev.slots.to_dict().items()}
                self._update_view()
                return
            try:
                out = enforce.apply(iface.maps, rules, prev, now=now, management=cfg.management)
            except BreakwaterError:
                iface.apply_errors += 1
                raise
            assert out.swap is not None
            applied = enforce.Applied(rules, out.compiled.slots, out.swap.gen, tuple(cfg.management))
            enforce.save_applied(cfg.state_dir, iface.maps, applied)
        iface.slot_ids = {s: rid for rid, s in out.compiled.slots.to_dict().items()}
        iface.applies += 1
        self._update_view()
        LOGGER.info("%s: generation %d in force (%d manual, %d controller (version %d), %d automatic "
                    "rules; %s)", iface.name, out.swap.gen, len(iface.manual), len(self._controller.ruleset),
                    self._controller.version, len(auto), reason,
                    extra={"event": "rules_applied", "interface": iface.name, "generation": out.swap.gen,
                           "reason": reason, "auto_rules": [r.id for r in auto],
                           "controller_version": self._controller.version})

    # -- rule layers --

    def _allowlist_rule(self) -> Rule | None:
        if not self.config.allowlist:
            return None
        return Rule(ALLOWLIST_RULE_ID, Match(src=self.config.allowlist), RuleAction("allow"), priority=0,
                    origin="manual", comment="agent allowlist", created_by="breakwater-agent")

    def _layers(self, iface: _Interface, now: datetime) -> tuple[RuleSet, list[Rule]]:
        """The rule set to enforce on ``iface`` and its active automatic rules.

        Layers, in precedence order when two share a rule id (the first
        keeps it, the clash is logged): the operator's manual rules, the
        agent's allowlist rule, the controller's rules, the automatic rules.
        Precedence only settles ids: the data plane evaluates every rule by
        priority, then id. Monitor mode leaves the automatic rules out;
        controller rules are enforced as manual ones are."""
        auto = [r for r in iface.auto if r.is_active(now)] if not self.config.monitor else []
        allow = self._allowlist_rule()
        layers: list[tuple[str, Sequence[Rule]]] = [
            ("manual", iface.manual.rules), ("allowlist", [allow] if allow else []),
            ("controller", self._controller.ruleset.rules), ("automatic", auto)]
        taken: dict[str, str] = {}
        rules: list[Rule] = []
        for layer, members in layers:
            shadowed = []
            for r in members:
                if r.id in taken:
                    shadowed.append((r.id, taken[r.id]))
                    continue
                taken[r.id] = layer
                rules.append(r)
            for rid, by in shadowed:
                LOGGER.warning("%s: %s rule %s shadowed by the %s rule of that id", iface.name, layer,
                               rid, by,
                               extra={"event": "rule_shadowed", "interface": iface.name, "rule": rid,
                                      "layer": layer, "by": by})
        return RuleSet.from_rules(rules), auto

    def _update_view(self) -> None:
        manual: dict[str, Rule] = {}
        auto: dict[str, Rule] = {}
        for iface in self._ifaces:
            for r in iface.manual:
                manual.setdefault(r.id, r)
            for r in iface.auto:
                auto.setdefault(r.id, r)
        self.view = RuleView(RuleSet.from_rules(manual.values()), self._allowlist_rule(), self._controller,
                             RuleSet.from_rules(auto.values()), self.config.rules_file)

    # -- SIGHUP --

    def _do_reload(self) -> None:
        old = self.config
        if self._config_path is not None:
            try:
                new = agentconfig.load(self._config_path, self._overrides)
            except InputError as exc:
                LOGGER.error("reload refused, keeping the running configuration: %s", exc,
                             extra={"event": "reload_failed"})
                return
        else:
            new = old
        for key in ("state_dir", "pin_root", "sizes"):
            if getattr(new, key) != getattr(old, key):
                LOGGER.warning("%s changed: takes effect at the next restart", key,
                               extra={"event": "reload_partial", "key": key})
        new = replace(new, state_dir=old.state_dir, pin_root=old.pin_root, sizes=old.sizes)
        self.config = new
        self._reload_interfaces(old, new)
        if new.metrics != old.metrics:
            self._rebind_metrics(new.metrics)
        assert self._store is not None
        for iface in self._ifaces:
            try:
                if new.detect != old.detect:
                    baselines, ids = iface.detector.baselines(), iface.detector.id_counter
                    iface.detector = Detector(new.detect)
                    iface.detector.load_baselines(baselines)
                    iface.detector.restore_id_counter(ids)
                if new.mitigate != old.mitigate:
                    iface.planner = Planner(new.mitigate)
                if new.rules_file is not None:
                    iface.manual = enforce.load_file(new.rules_file)
                else:
                    prev = _recorded(new.state_dir, iface.maps)
                    if prev is not None:
                        iface.manual = _manual_only(prev.rules)
                self._store.set_manual_rules(iface.name, iface.manual)
                self._configure(iface)
                self._apply(iface, datetime.now(UTC), reason="reload")
            except BreakwaterError as exc:
                LOGGER.error("%s: reload failed: %s", iface.name, exc, extra={"event": "reload_failed"})
        LOGGER.info("configuration reloaded", extra={
            "event": "reloaded", "mode": new.mode, "interfaces": [i.name for i in self._ifaces]})

    def _reload_interfaces(self, old: AgentConfig, new: AgentConfig) -> None:
        """Apply the interface list of a reloaded configuration: interfaces kept
        stay attached untouched, removed ones are detached, added ones are
        attached. A changed attach mode is not applied (switching modes means
        detaching, a gap in protection): it is logged and the running mode kept.
        The interfaces that end up managed are written back to the configuration."""
        wanted = {(i.name, i.netns): i for i in new.interfaces}
        kept: list[_Interface] = []
        for iface in list(self._ifaces):
            icfg = wanted.get((iface.name, iface.cfg.netns))
            if icfg is None:
                with self._ifaces_lock:  # out of the list before its maps close
                    self._ifaces.remove(iface)
                    self._release(iface)
                continue
            if icfg.mode != iface.cfg.mode:
                LOGGER.warning("%s: attach mode %s -> %s is not applied on reload (it needs a detach): "
                               "`breakwater dataplane detach %s`, then restart the agent", iface.name,
                               iface.cfg.mode, icfg.mode, iface.name,
                               extra={"event": "reload_partial", "interface": iface.name, "key": "mode"})
            kept.append(iface)
        have = {(i.name, i.cfg.netns) for i in kept}
        for key, icfg in wanted.items():
            if key in have:
                continue
            try:
                kept.append(self._bring_up(icfg, reason="reload"))
            except BreakwaterError as exc:
                LOGGER.error("%s: added in the configuration but not attached: %s", icfg.name, exc,
                             extra={"event": "interface_add_failed", "interface": icfg.name})
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
            self._expire_controller_rules()
            left = deadline - time.monotonic()
            if left <= 0 or self._stop or self._reload:
                return
            self._wake.wait(left)
            self._wake.clear()

    # -- the controller layer --

    def _load_controller_layer(self) -> None:
        assert self._store is not None
        self._controller = ControllerLayer.load(self._store)
        if self._controller.version:
            LOGGER.info("controller rule version %d loaded (%d rules)", self._controller.version,
                        len(self._controller.rules),
                        extra={"event": "controller_rules_loaded", "version": self._controller.version,
                               "rules": sorted(self._controller.rules)})

    def _put_controller(self, layer: ControllerLayer, *, reason: str = "controller") -> None:
        """Make ``layer`` the controller layer on every interface, or on none:
        when one interface refuses it, those done already get the previous
        layer back and the error is raised (the sync client NACKs it)."""
        old = self._controller
        self._controller = layer
        now = datetime.now(UTC)
        done: list[_Interface] = []
        try:
            for iface in self._ifaces:
                try:
                    self._apply(iface, now, reason=reason)
                except InputError as exc:
                    problem = None if isinstance(exc, FieldError) else self._over_capacity(iface, now)
                    if problem is not None:
                        raise CapacityError(f"{iface.name}: {problem}") from exc
                    raise
                done.append(iface)
        except BaseException:
            self._controller = old
            for iface in done:
                try:
                    self._apply(iface, now, reason="controller-rollback")
                except BreakwaterError as exc:
                    LOGGER.error("%s: previous controller rules not restored: %s", iface.name, exc,
                                 extra={"event": "controller_rollback_failed", "interface": iface.name})
            self._update_view()
            raise

    def _over_capacity(self, iface: _Interface, now: datetime) -> str | None:
        """Why the wanted set cannot fit ``iface`` (counter slots, signature
        slots), when that is why the compiler refused it; None otherwise."""
        rules, _ = self._layers(iface, now)
        active = [r for r in rules if r.is_active(now)]
        slots = iface.maps["rule_stats"].max_entries - 1
        if len(active) > slots:
            return f"{len(active)} rules need a counter slot each; the data plane has {slots}"
        sigs = sum(1 for r in active if not (r.action.kind in ("drop", "allow") and r.match.is_src_only))
        if sigs > DEFAULT_MAX_SIGNATURES:
            return f"{sigs} rules need a signature slot each; the data plane has {DEFAULT_MAX_SIGNATURES}"
        return None

    def _expire_controller_rules(self) -> None:
        """Swap again when a controller rule's expire_time passes: a node cut
        off from its controller still lets the rule go on time (the
        compiler leaves expired rules out; the controller removes them from
        the layer with its own sweep)."""
        now = datetime.now(UTC)
        layer = self._controller
        if self._expiry_cache[0] is not layer:
            later = [r.expires_at for r in layer.ruleset if r.expires_at is not None
                     and r.expires_at > self._expiry_mark]
            self._expiry_cache = (layer, min(later) if later else None)
        due = self._expiry_cache[1]
        if due is None or due > now:
            return
        self._expiry_mark = now
        self._expiry_cache = (None, None)
        for iface in self._ifaces:
            try:
                self._apply(iface, now, reason="expiry")
            except BreakwaterError as exc:
                LOGGER.error("%s: expired controller rule not removed: %s", iface.name, exc)

    # -- the sync client --

    def _identity(self) -> sync_service_pb2.Register:
        """Who this agent is, for Register (the sync client adds resume_version)."""
        from .. import __version__

        cfg = self.config
        sizes = cfg.sizes
        caps = node_pb2.NodeCapabilities(
            abi_version=abi.ABI_VERSION, max_signature_rules=DEFAULT_MAX_SIGNATURES,
            max_rules=sizes.rules - 1, max_deny_v4=sizes.deny_v4, max_deny_v6=sizes.deny_v6,
            max_deny_prefixes_v4=sizes.deny_pfx_v4, max_deny_prefixes_v6=sizes.deny_pfx_v6, deltas=True)
        modes = {"native": node_pb2.ATTACH_MODE_NATIVE, "generic": node_pb2.ATTACH_MODE_GENERIC}
        unknown = node_pb2.ATTACH_MODE_UNSPECIFIED
        interfaces = [node_pb2.NodeInterface(name=i.name, netns=i.cfg.netns or "",
                                             attach_mode=modes.get(i.attach_mode, unknown))
                      for i in list(self._ifaces)]
        return sync_service_pb2.Register(
            node_id=cfg.node_id, labels=cfg.labels, capabilities=caps, agent_version=__version__,
            interfaces=interfaces,
            mode=node_pb2.AGENT_MODE_MONITOR if cfg.monitor else node_pb2.AGENT_MODE_ENFORCE)

    def _sync_wanted(self) -> tuple[object, ...]:
        cfg = self.config
        return (cfg.controller, cfg.node_id, tuple(sorted(cfg.labels.items())), cfg.mode,
                tuple((i.name, i.netns) for i in cfg.interfaces))

    def _start_sync(self) -> None:
        cfg = self.config
        self._sync_key = self._sync_wanted()
        if cfg.controller is None:
            return
        self._sync_generation += 1
        generation = self._sync_generation

        def apply(layer: ControllerLayer) -> None:
            def put() -> None:
                if generation != self._sync_generation:  # from a client since replaced
                    raise ApplyCancelledError("the sync client was replaced")
                self._put_controller(layer)

            self.call_in_loop(put)

        self._sync = SyncClient(cfg.controller, identity=self._identity, apply=apply,
                                state_dir=cfg.state_dir, held=self._controller)
        self._sync.start()

    def _stop_sync(self) -> None:
        if self._sync is not None:
            self._sync_generation += 1
            # From the loop thread, do not wait: the client may be waiting for the loop.
            on_loop = self._loop_thread is threading.current_thread()
            self._sync.stop(timeout=0.0 if on_loop else 5.0)
            self._sync = None

    # -- the local API --

    def _start_api(self) -> None:
        from ..api.telemetry import FleetTelemetry, TelemetryConfig
        from .localapi import LocalApi

        cfg = self.config
        if cfg.api is None:
            return
        if self._telemetry is None:
            # buckets as fine as the interval allows: `breakwater top` against an agent is live
            self._telemetry = FleetTelemetry(TelemetryConfig(bucket_seconds=max(1.0, cfg.interval)))
        self._api = LocalApi(self, cfg.api, self._telemetry)
        self._api.start()

    def _stop_api(self) -> None:
        if self._api is not None:
            self._api.stop()
            self._api = None

    def _reload_links(self, old: AgentConfig) -> None:
        """After SIGHUP: re-register when who the node is or where its
        controller is changed; rebind the local API when its address did."""
        self._update_view()
        if self._sync_wanted() != self._sync_key:
            LOGGER.info("controller settings changed: re-registering",
                        extra={"event": "controller_reconfigured",
                               "controller": self.config.controller or ""})
            self._stop_sync()
            self._start_sync()
        if self.config.api != old.api:
            self._stop_api()
            try:
                self._start_api()
            except BreakwaterError as exc:
                LOGGER.error("local API not served at its new address: %s", exc,
                             extra={"event": "reload_partial", "key": "api"})

    # -- local work the API asks for --

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
            now = datetime.now(UTC)
            before = [(iface, iface.manual) for iface in self._ifaces]
            new = edit(self.view.manual)
            try:
                for iface in self._ifaces:
                    iface.manual = new
                    self._apply(iface, now, reason="api")
            except BaseException:
                for iface, manual in before:
                    iface.manual = manual
                    with contextlib.suppress(BreakwaterError):
                        self._apply(iface, now, reason="api-rollback")
                self._update_view()
                raise
            for iface in self._ifaces:
                self._store.set_manual_rules(iface.name, new)
            self._store.add_rule_events("", [(rid, kind, {"rule": r.to_dict(), "actor": actor})
                                             for kind, rid, r in events])
            if self._sync is not None:
                self._sync.notify_events()
            return new

        if not self._ifaces:
            raise UnavailableError("the agent protects no interface yet", "UNAVAILABLE")
        return self.call_in_loop(run)

    # -- telemetry --

    def _report(self) -> None:
        """This interval of each interface as a TelemetrySummary, for the
        controller (as many top sources as it asked for) and the local API."""
        if self._sync is None and self._telemetry is None:
            return
        now = datetime.now(UTC)
        wanted = self._sync.top_sources if self._sync is not None else DEFAULT_TOP_SOURCES
        for iface in self._ifaces:
            sample, iface.last_sample = iface.last_sample, None
            if sample is None:
                continue
            try:
                interval = iface.counters.read(iface.maps, iface.slot_ids)
            except BreakwaterError as exc:
                LOGGER.warning("%s: telemetry skipped: %s", iface.name, exc)
                continue
            summary = summarize(sample, interval, interface=iface.name, end_time=now,
                                top_sources=max(wanted, LOCAL_TOP_SOURCES))
            if self._telemetry is not None:
                self._telemetry.offer(self.config.node_id, summary)
            if self._sync is not None:
                if len(summary.top_sources) > wanted:
                    del summary.top_sources[wanted:]
                self._sync.offer_telemetry(summary)
        if self._telemetry is not None:
            self._telemetry.fold()
        if self._sync is not None:
            self._sync.notify_events()

    def _render_sync(self, ex: Exposition) -> None:
        if self._sync is None:
            return
        st = self._sync.stats()
        lab = {"controller": self._sync.target}
        ex.add("breakwater_controller_connected", "gauge",
               "1 while the agent has a registered sync stream to its controller.", int(st.connected), lab)
        ex.add("breakwater_controller_rule_version", "gauge",
               "The controller rule set version in force on this node.", self._controller.version, lab)
        ex.add("breakwater_controller_rules", "gauge", "Rules in the controller layer in force.",
               len(self._controller.rules), lab)
        ex.add("breakwater_sync_updates_total", "counter", "Rule updates from the controller, by result.",
               st.applied, {**lab, "result": "applied", "code": ""})
        for code, n in sorted(st.nacked.items()):
            ex.add("breakwater_sync_updates_total", "counter", "Rule updates from the controller, by result.",
                   n, {**lab, "result": "nacked", "code": code})
        ex.add("breakwater_sync_reconnects_total", "counter", "Sync streams opened after the first.",
               st.reconnects, lab)
        ex.add("breakwater_sync_telemetry_total", "counter", "Telemetry summaries, by fate.",
               st.telemetry_sent, {**lab, "result": "queued"})
        ex.add("breakwater_sync_telemetry_total", "counter", "Telemetry summaries, by fate.",
               st.telemetry_dropped, {**lab, "result": "dropped"})
        ex.add("breakwater_sync_events_sent_total", "counter", "Local events delivered to the controller.",
               st.events_sent, lab)

    # -- metrics --

    def _refresh_fill(self, iface: _Interface, mono: float) -> None:
        iface.fill_at = mono
        for name in FILL_MAPS:
            with contextlib.suppress(KeyError, BreakwaterError):
                m = iface.maps[name]
                iface.fill[name] = (m.count(), m.max_entries)

    def render_metrics(self) -> str:
        """The metrics text, collected now: a scrape calls this on the metrics
        thread, so the detection loop pays nothing for metrics. Map fill (a
        full read of each main map) is re-counted at most every FILL_SECONDS."""
        with self._ifaces_lock:
            return self._render_metrics()

    def _render_metrics(self) -> str:
        ex = Exposition()
        ex.family("breakwater_packets_total", "counter", "Packets by data-plane action.")
        mono = time.monotonic()
        for iface in self._ifaces:
            if not iface.fill or mono - iface.fill_at >= FILL_SECONDS:
                self._refresh_fill(iface, mono)
            lab = {"interface": iface.name}
            for action, t in counters.action_totals(iface.maps).items():
                ex.add("breakwater_packets_total", "counter", "Packets by data-plane action.", t.packets,
                       {**lab, "action": action.label})
                ex.add("breakwater_bytes_total", "counter", "Bytes by data-plane action.", t.bytes,
                       {**lab, "action": action.label})
            for reason, t in counters.reason_totals(iface.maps).items():
                ex.add("breakwater_reason_packets_total", "counter", "Packets by verdict reason.", t.packets,
                       {**lab, "reason": reason.label})
                ex.add("breakwater_reason_bytes_total", "counter", "Bytes by verdict reason.", t.bytes,
                       {**lab, "reason": reason.label})
            prev = _recorded(self.config.state_dir, iface.maps)
            names = {s: rid for rid, s in prev.slots.to_dict().items()} if prev else {}
            ex.family("breakwater_rule_packets_total", "counter", "Packets matched per rule.")
            for slot, rt in sorted(counters.rule_totals(iface.maps).items()):
                rl = {**lab, "rule": names.get(slot, f"slot-{slot}")}
                ex.add("breakwater_rule_packets_total", "counter", "Packets matched per rule.",
                       rt.packets, rl)
                ex.add("breakwater_rule_bytes_total", "counter", "Bytes matched per rule.", rt.bytes, rl)
                ex.add("breakwater_rule_dropped_total", "counter",
                       "Packets dropped (or would-drop in monitor mode) per rule.", rt.dropped, rl)
                ex.add("breakwater_rule_rate_limited_total", "counter",
                       "Packets dropped for exceeding the rule's rate.", rt.rate_limited, rl)
            ex.add("breakwater_active_mitigations", "gauge",
                   "Automatic rules in force (planned, in monitor mode).", len(iface.auto),
                   {**lab, "mode": self.config.mode})
            ex.add("breakwater_attacks_active", "gauge", "Attacks the detector holds active.",
                   len(iface.detector.active), lab)
            ex.add("breakwater_detection_loop_seconds", "gauge", "Duration of the last detection interval.",
                   iface.last_loop, lab)
            ex.histogram("breakwater_detection_loop_duration_seconds",
                         "Duration of detection intervals (harvest, detect, plan, apply, store).",
                         iface.loop_hist, lab)
            ex.add("breakwater_harvest_seconds", "gauge", "Duration of the last counter harvest.",
                   iface.last_harvest, lab)
            ex.histogram("breakwater_harvest_duration_seconds", "Duration of counter harvests.",
                         iface.harvest_hist, lab)
            ex.add("breakwater_rule_applies_total", "counter", "Rule sets swapped in by the agent.",
                   iface.applies, lab)
            ex.add("breakwater_rule_apply_errors_total", "counter", "Rule-set swaps that failed.",
                   iface.apply_errors, lab)
            for name, (entries, cap) in sorted(iface.fill.items()):
                ml = {**lab, "map": name}
                ex.add("breakwater_map_entries", "gauge", "Entries in a main map.", entries, ml)
                ex.add("breakwater_map_max_entries", "gauge", "Capacity of a main map.", cap, ml)
                ex.add("breakwater_map_fill_ratio", "gauge", "Entries / capacity of a main map.",
                       entries / max(cap, 1), ml)
        ex.family("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.")
        for (name, op), n in sorted(FAILURES.items()):
            ex.add("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.",
                   n, {"map": name, "op": op})
        ex.add("breakwater_agent_monitor_mode", "gauge", "1 when the agent only plans (monitor mode).",
               int(self.config.monitor))
        self._render_sync(ex)
        return ex.text()


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
