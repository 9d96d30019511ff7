"""The node's rule layers, how they combine into one rule set per interface,
and how that set is swapped into the interface's maps.

The layers, by precedence when two share an id (:meth:`RuleLayers.combine`):

* **manual**: the operator's rules of the interface: the ``rules_file`` if
  configured, else the set stored in ``agent.db`` (at first start, the set a
  ``breakwater rules`` command left; :func:`manual_at_start`); the local
  API edits them on every interface at once (:meth:`RuleLayers.put_manual`);
* **allowlist**: one allow rule for the configuration's ``allowlist``;
* **controller**: the rules the controller pushed
  (:class:`~controller.agent.sync.ControllerLayer`), on every interface or
  on none (:meth:`RuleLayers.put_controller`), swapped again when one of
  them expires while the controller is away;
* **automatic**: the planner's rules of the interface (left out in monitor
  mode).

:attr:`RuleLayers.view` is the rules in force by layer, as the local API
shows them; it is replaced whole after every apply.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ..dataplane.pinned import MapSet
from ..detection.planner import AUTO_ORIGIN
from ..errors import BreakwaterError, CapacityError, FieldError, InputError
from ..rules import enforce
from ..rules.compiler import DEFAULT_MAX_SIGNATURES
from ..rules.model import Match, Rule, RuleAction, RuleSet
from .config import AgentConfig
from .interface import Interface
from .state import Store
from .sync import ControllerLayer

__all__ = [
    "ALLOWLIST_RULE_ID",
    "CONTROLLER_ORIGIN",
    "RuleLayers",
    "RuleView",
    "manual_at_start",
    "manual_only",
]

LOGGER = logging.getLogger("breakwater.agent")

ALLOWLIST_RULE_ID: Final = "agent-allowlist"
CONTROLLER_ORIGIN: Final = "controller"

_SKIP_IF_IN_FORCE: Final = frozenset({"start", "controller", "expiry"})
"""Apply reasons after which a set the maps already hold is not swapped again."""


def manual_only(rules: RuleSet) -> RuleSet:
    """The operator's rules of an applied set: not automatic, not the agent's
    allowlist, not the controller's (the agent enforces those with origin controller)."""
    return RuleSet.from_rules(r for r in rules if r.origin not in (AUTO_ORIGIN, CONTROLLER_ORIGIN)
                              and r.id != ALLOWLIST_RULE_ID)


def manual_at_start(ifname: str, maps: MapSet, config: AgentConfig, store: Store) -> RuleSet:
    """The operator's rules: the rules file if configured, else the stored
    set, else (first start) the rule set a `breakwater rules` command left."""
    if config.rules_file is not None:
        rules = enforce.load_file(config.rules_file)
    else:
        stored = store.manual_rules(ifname)
        if stored is not None:
            return stored
        prev = enforce.recorded(config.state_dir, maps)
        rules = manual_only(prev.rules if prev else RuleSet())
        if prev is not None:
            LOGGER.info("%s: imported %d manual rules from %s", ifname, len(rules), config.state_dir,
                        extra={"event": "manual_rules_imported", "interface": ifname})
    store.set_manual_rules(ifname, rules)
    return rules


def _allowlist_rule(config: AgentConfig) -> Rule | None:
    if not config.allowlist:
        return None
    return Rule(ALLOWLIST_RULE_ID, Match(src=config.allowlist), RuleAction("allow"), priority=0,
                origin="manual", comment="agent allowlist", created_by="breakwater-agent")


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


class RuleLayers:
    """The layers of the node's interfaces (the agent's configuration and
    interface list, as they are now) and the controller layer, combined and
    swapped in. Runs on the agent's loop thread; :attr:`view` may be read
    from any thread."""

    def __init__(self, config: Callable[[], AgentConfig],
                 interfaces: Callable[[], Sequence[Interface]]) -> None:
        self._config = config
        self._interfaces = interfaces
        self.controller = ControllerLayer()
        """The controller layer in force (last ACKed, or loaded at start)."""
        self.view = RuleView()
        """The rules in force by layer, for the local API (replaced whole after each apply)."""
        self._expiry_mark = datetime.now(UTC)  # controller rules expiring after it are still due
        self._expiry_cache: tuple[ControllerLayer | None, datetime | None] = (None, None)

    def combine(self, iface: Interface, now: datetime) -> tuple[RuleSet, list[Rule]]:
        """The rule set to enforce on ``iface`` and its active automatic rules.

        Layers, in precedence order when two share a rule id (the first
        keeps it, the clash is logged): the operator's manual rules, the
        agent's allowlist rule, the controller's rules, the automatic rules.
        Precedence only settles ids: the data plane evaluates every rule by
        priority, then id. Monitor mode leaves the automatic rules out;
        controller rules are enforced as manual ones are."""
        cfg = self._config()
        auto = [r for r in iface.auto if r.is_active(now)] if not cfg.monitor else []
        allow = _allowlist_rule(cfg)
        layers: list[tuple[str, Sequence[Rule]]] = [
            ("manual", iface.manual.rules), ("allowlist", [allow] if allow else []),
            ("controller", self.controller.ruleset.rules), ("automatic", auto)]
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

    def apply(self, iface: Interface, now: datetime, *, reason: str) -> None:
        """Swap the rule layers in (:meth:`combine`), unless already in force,
        recording the set as the CLI's ``rules`` commands do
        (:mod:`controller.rules.enforce`: pending before the flip, current
        after), so a crash mid-swap leaves the same record and the same
        recovery. A record of another generation (logged) is replaced whole."""
        cfg = self._config()
        rules, auto = self.combine(iface, now)
        with iface.maps.locked():
            prev = enforce.recorded(cfg.state_dir, iface.maps)
            if (reason in _SKIP_IF_IN_FORCE and prev is not None and prev.rules.diff(rules).empty
                    and tuple(prev.management) == tuple(cfg.management)):
                LOGGER.info("%s: rule set already in force (generation %d)", iface.name, prev.gen)
                iface.slot_ids = {s: rid for rid, s in prev.slots.to_dict().items()}
                self.update_view()
                return
            try:
                out = enforce.apply(iface.maps, rules, prev, now=now, management=cfg.management,
                                    state_dir=cfg.state_dir)
            except BreakwaterError:
                iface.apply_errors += 1
                raise
            assert out.swap is not None
        iface.slot_ids = {s: rid for rid, s in out.compiled.slots.to_dict().items()}
        iface.applies += 1
        self.update_view()
        LOGGER.info("%s: generation %d in force (%d manual, %d controller (version %d), %d automatic "
                    "rules; %s)", iface.name, out.swap.gen, len(iface.manual), len(self.controller.ruleset),
                    self.controller.version, len(auto), reason,
                    extra={"event": "rules_applied", "interface": iface.name, "generation": out.swap.gen,
                           "reason": reason, "auto_rules": [r.id for r in auto],
                           "controller_version": self.controller.version})

    def update_view(self) -> None:
        manual: dict[str, Rule] = {}
        auto: dict[str, Rule] = {}
        for iface in self._interfaces():
            for r in iface.manual:
                manual.setdefault(r.id, r)
            for r in iface.auto:
                auto.setdefault(r.id, r)
        cfg = self._config()
        self.view = RuleView(RuleSet.from_rules(manual.values()), _allowlist_rule(cfg), self.controller,
                             RuleSet.from_rules(auto.values()), cfg.rules_file)

    # -- the manual layer --

    def put_manual(self, rules: RuleSet, now: datetime) -> None:
        """Make ``rules`` the manual layer of every interface, or of none: on
        any failure every interface gets its previous manual rules back and
        the error is raised."""
        before = [(iface, iface.manual) for iface in self._interfaces()]
        try:
            for iface in self._interfaces():
                iface.manual = rules
                self.apply(iface, now, reason="api")
        except BaseException:
            for iface, manual in before:
                iface.manual = manual
                with contextlib.suppress(BreakwaterError):
                    self.apply(iface, now, reason="api-rollback")
            self.update_view()
            raise

    # -- the controller layer --

    def load_controller(self, store: Store) -> None:
        """The controller layer ``store`` holds: the last one ACKed."""
        self.controller = ControllerLayer.load(store)
        if self.controller.version:
            LOGGER.info("controller rule version %d loaded (%d rules)", self.controller.version,
                        len(self.controller.rules),
                        extra={"event": "controller_rules_loaded", "version": self.controller.version,
                               "rules": sorted(self.controller.rules)})

    def put_controller(self, layer: ControllerLayer, *, reason: str = "controller") -> None:
        """Make ``layer`` the controller layer on every interface, or on none:
        when one interface refuses it, those done already get the previous
        layer back and the error is raised (the sync client NACKs it)."""
        old = self.controller
        self.controller = layer
        now = datetime.now(UTC)
        done: list[Interface] = []
        try:
            for iface in self._interfaces():
                try:
                    self.apply(iface, now, reason=reason)
                except InputError as exc:
                    problem = None if isinstance(exc, FieldError) else self._over_capacity(iface, now)
                    if problem is not None:
                        raise CapacityError(f"{iface.name}: {problem}") from exc
                    raise
                done.append(iface)
        except BaseException:
            self.controller = old
            for iface in done:
                try:
                    self.apply(iface, now, reason="controller-rollback")
                except BreakwaterError as exc:
                    LOGGER.error("%s: previous controller rules not restored: %s", iface.name, exc,
                                 extra={"event": "controller_rollback_failed", "interface": iface.name})
            self.update_view()
            raise

    def _over_capacity(self, iface: Interface, now: datetime) -> str | None:
        """Why the wanted set cannot fit ``iface`` (counter slots, signature
        slots), when that is why the compiler refused it; None otherwise."""
        rules, _ = self.combine(iface, now)
        active = [r for r in rules if r.is_active(now)]
        slots = iface.maps["rule_stats"].max_entries - 1
        if len(active) > slots:
            return f"{len(active)} rules need a counter slot each; the data plane has {slots}"
        sigs = sum(1 for r in active if not (r.action.kind in ("drop", "allow") and r.match.is_src_only))
        if sigs > DEFAULT_MAX_SIGNATURES:
            return f"{sigs} rules need a signature slot each; the data plane has {DEFAULT_MAX_SIGNATURES}"
        return None

    def expire_controller_rules(self) -> None:
        """Swap again when a controller rule's expire_time passes: a node cut
        off from its controller still lets the rule go on time (the
        compiler leaves expired rules out; the controller removes them from
        the layer with its own sweep)."""
        now = datetime.now(UTC)
        layer = self.controller
        if self._expiry_cache[0] is not layer:
            later = [r.expires_at for r in layer.ruleset if r.expires_at is not None
                     and r.expires_at > self._expiry_mark]
            self._expiry_cache = (layer, min(later) if later else None)
        due = self._expiry_cache[1]
        if due is None or due > now:
            return
        self._expiry_mark = now
        self._expiry_cache = (None, None)
        for iface in self._interfaces():
            try:
                self.apply(iface, now, reason="expiry")
            except BreakwaterError as exc:
                LOGGER.error("%s: expired controller rule not removed: %s", iface.name, exc)
