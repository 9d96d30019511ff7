"""``breakwater agent``: the detection and mitigation daemon of one edge host.

Start: attach (or adopt, without a gap) each configured interface, write the
protected prefixes and reflection ports, and load the local state
(:mod:`controller.store`): the operator's manual rules, the automatic rules
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
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from . import agentconfig, counters, dataplane, enforce, protect
from .agentconfig import AgentConfig, InterfaceConfig
from .bpfmap import FAILURES, MapSet
from .detect import AttackEvent, Detector
from .errors import BreakwaterError, InputError
from .harvest import Harvester
from .metrics import Exposition, Histogram, MetricsServer
from .mitigate import AUTO_ORIGIN, Planner
from .rules import Match, Rule, RuleAction, RuleSet
from .store import Store

__all__ = ["Agent", "run"]

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


def _manual_only(rules: RuleSet) -> RuleSet:
    """The operator's rules of an applied set: not automatic, not the agent's allowlist."""
    return RuleSet.from_rules(r for r in rules if r.origin != AUTO_ORIGIN and r.id != ALLOWLIST_RULE_ID)



def _recorded(state_dir: Path, maps: MapSet) -> enforce.Applied | None:
    """The rule set recorded for these maps; None (logged) when the record is
    of another generation: the agent then re-applies its own set whole."""
    try:
        return enforce.load_applied(state_dir, maps)
    except enforce.StateMismatchError as exc:
        LOGGER.warning("%s", exc)
        return None


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
    fill: dict[str, tuple[int, int]] = field(default_factory=dict)
    fill_at: float = 0.0
    applies: int = 0
    apply_errors: int = 0

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
        self._store: Store | None = None
        self._metrics: MetricsServer | None = None
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RING_EVENTS)
        self._pruned_at = 0.0

    # -- lifecycle --

    def start(self) -> None:
        cfg = self.config
        dataplane.require_root()
        self._store = Store.open(cfg.state_dir)
        for icfg in cfg.interfaces:
            self._ifaces.append(self._bring_up(icfg, reason="start"))
        if cfg.metrics is not None:
            self._metrics = MetricsServer(*cfg.metrics)
            self._metrics.start()
        for iface in self._ifaces:
            self._refresh_fill(iface, time.monotonic())
        self._publish()
        LOGGER.info("agent ready", extra={
            "event": "agent_ready", "interfaces": [i.name for i in self._ifaces], "mode": cfg.mode,
            "interval": cfg.interval,
            "metrics": f"{self._metrics.address[0]}:{self._metrics.address[1]}" if self._metrics else "",
            "auto_rules": {i.name: [r.id for r in i.auto] for i in self._ifaces},
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
        now = datetime.now(UTC)
        auto = tuple(r for r in self._store.auto_rules(icfg.name) if r.is_active(now))
        return _Interface(icfg, maps, detector, Planner(self.config.mitigate),
                          self._manual_rules(icfg.name, maps), auto)

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
        if self._metrics is not None:
            self._metrics.close()
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
            self._publish()
            next_at += self.config.interval
            now = time.monotonic()
            if next_at < now:  # overran: start the next interval now, do not catch up
                next_at = now
            self._wake.wait(max(0.0, next_at - now))
            self._wake.clear()

    def _interval(self, iface: _Interface) -> None:
        assert self._store is not None
        cfg = self.config
        t0 = time.monotonic()
        sample = iface.harvester.sample(iface.maps)
        t1 = time.monotonic()
        iface.last_harvest = t1 - t0
        iface.harvest_hist.observe(iface.last_harvest)
        now = datetime.now(UTC)
        events: list[AttackEvent] = [] if sample is None else iface.detector.observe(sample)
        plan = iface.planner.plan(now, events, iface.auto)
        events = [replace(e, applied=plan.by_attack.get(e.id, ())) for e in events]
        changed = tuple(plan.rules) != tuple(sorted(iface.auto, key=lambda r: r.id))
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
        if changed or record or baselines is not None:
            self._store.commit_interval(iface.name, auto_rules=iface.auto if (changed and plan.enforce)
                                        else None, baselines=baselines, events=record)
        if mono - self._pruned_at >= PRUNE_SECONDS:
            self._pruned_at = mono
            self._store.prune_events(KEEP_EVENTS)
        if mono - iface.fill_at >= FILL_SECONDS:
            self._refresh_fill(iface, mono)
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
        """Swap manual + allowlist + automatic rules in, unless already in force."""
        cfg = self.config
        auto = [r for r in iface.auto if r.is_active(now)] if not cfg.monitor else []
        manual_ids = {r.id for r in iface.manual}
        clashes = [r.id for r in auto if r.id in manual_ids]
        if clashes:
            LOGGER.warning("%s: manual rules shadow automatic ones: %s", iface.name, ", ".join(clashes))
        extra: list[Rule] = []
        if cfg.allowlist:
            extra.append(Rule(ALLOWLIST_RULE_ID, Match(src=cfg.allowlist), RuleAction("allow"),
                              priority=0, origin="manual", comment="agent allowlist",
                              created_by="breakwater-agent"))
        rules = RuleSet.from_rules([*iface.manual, *(r for r in extra if r.id not in manual_ids),
                                    *(r for r in auto if r.id not in manual_ids)])
        with iface.maps.locked():
            prev = _recorded(cfg.state_dir, iface.maps)
            if (reason == "start" and prev is not None and prev.rules.diff(rules).empty
                    and tuple(prev.management) == tuple(cfg.management)):
                LOGGER.info("%s: rule set already in force (generation %d)", iface.name, prev.gen)
                return
            try:
                out = enforce.apply(iface.maps, rules, prev, now=now, management=cfg.management)
            except BreakwaterError:
                iface.apply_errors += 1
                raise
            assert out.swap is not None
            applied = enforce.Applied(rules, out.compiled.slots, out.swap.gen, tuple(cfg.management))
            enforce.save_applied(cfg.state_dir, iface.maps, applied)
        iface.applies += 1
        LOGGER.info("%s: generation %d in force (%d manual, %d automatic rules; %s)", iface.name,
                    out.swap.gen, len(iface.manual), len(auto), reason,
                    extra={"event": "rules_applied", "interface": iface.name, "generation": out.swap.gen,
                           "reason": reason, "auto_rules": [r.id for r in auto]})

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
                    baselines = iface.detector.baselines()
                    iface.detector = Detector(new.detect)
                    iface.detector.load_baselines(baselines)
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
        for iface in self._ifaces:
            icfg = wanted.get((iface.name, iface.cfg.netns))
            if icfg is None:
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
        self._ifaces = kept
        self.config = replace(self.config, interfaces=tuple(i.cfg for i in kept))

    def _rebind_metrics(self, address: tuple[str, int] | None) -> None:
        """Serve metrics at the reloaded address (or stop serving); on a bind
        failure the old server keeps running."""
        server: MetricsServer | None = None
        if address is not None:
            try:
                server = MetricsServer(*address)
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

    # -- metrics --

    def _refresh_fill(self, iface: _Interface, mono: float) -> None:
        iface.fill_at = mono
        for name in FILL_MAPS:
            with contextlib.suppress(KeyError, BreakwaterError):
                m = iface.maps[name]
                iface.fill[name] = (m.count(), m.max_entries)

    def _publish(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.publish(self.render_metrics())
        except BreakwaterError as exc:
            LOGGER.warning("metrics not updated: %s", exc)

    def render_metrics(self) -> str:
        ex = Exposition()
        ex.family("breakwater_packets_total", "counter", "Packets by data-plane action.")
        for iface in self._ifaces:
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
