"""One protected interface: its state in the agent, and how it is attached
(or adopted), restored from the agent's store, configured and released.

An :class:`Interface` holds the interface's data plane (its pinned maps),
its detector, planner and harvester, its manual and automatic rules, and
what the metrics page reports about it. The rule layers put in force on it
are :mod:`controller.agent.layers`'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..dataplane import attach as dataplane
from ..dataplane import challenge, protect
from ..dataplane.pinned import MapSet
from ..detection.detector import Detector
from ..detection.harvest import Harvester
from ..detection.planner import ChallengedService, Planner
from ..detection.samples import Sample
from ..errors import BreakwaterError, InputError
from ..metrics import Histogram
from ..rules.model import Rule, RuleSet
from .config import AgentConfig, InterfaceConfig
from .state import Store

__all__ = ["Interface", "attach", "configure", "planner", "release", "restore"]

LOGGER = logging.getLogger("breakwater.agent")


@dataclass
class Interface:
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

    @property
    def name(self) -> str:
        return self.cfg.name


def attach(icfg: InterfaceConfig, config: AgentConfig, *, reason: str) -> tuple[MapSet, str]:
    """Attach (or adopt) the program on one interface; its maps and attach mode."""
    result = dataplane.attach(icfg.name, icfg.mode, config.sizes, pin_root=config.pin_root,
                              netns=icfg.netns)
    LOGGER.info("%s: %s program %d (%s)", icfg.name, result.action, result.prog_id, result.mode,
                extra={"event": "interface_ready", "interface": icfg.name,
                       "action": result.action, "mode": result.mode, "reason": reason})
    return dataplane.open_maps(icfg.name, config.pin_root), result.mode


def restore(icfg: InterfaceConfig, maps: MapSet, config: AgentConfig, store: Store,
            manual: RuleSet) -> Interface:
    """The interface as the store left it: the detector's baselines and attack
    ids, the automatic rules still in force; ``manual`` its manual rules."""
    detector = Detector(config.detect, config.protected)
    baselines = store.baselines(icfg.name)
    if baselines:
        try:
            detector.load_baselines(baselines)
        except InputError as exc:
            LOGGER.warning("%s: stored baselines ignored: %s", icfg.name, exc)
    ids = store.attack_ids(icfg.name)
    detector.restore_id_counter(ids)  # attack ids never repeat across restarts
    now = datetime.now(UTC)
    auto = tuple(r for r in store.auto_rules(icfg.name) if r.is_active(now))
    return Interface(icfg, maps, detector, planner(config), manual, auto, ids_saved=ids)


def planner(config: AgentConfig) -> Planner:
    """The planner for ``config``: its ``[mitigate]`` settings, and the
    challenged services, whose ports it leaves to the SYN challenge."""
    return Planner(config.mitigate, [ChallengedService(s.prefix, s.port) for s in config.challenge])


def configure(iface: Interface, config: AgentConfig) -> None:
    """Write the protected prefixes, the reflection ports and the challenged services."""
    with iface.maps.locked():
        protect.set_reflection_ports(iface.maps, config.mitigate.reflection_ports)
    protect.set_protected(iface.maps, config.protected)
    challenge.set_challenged(iface.maps, config.challenge)


def release(iface: Interface, config: AgentConfig) -> None:
    """Stop managing an interface removed from the configuration: detach it
    (the configuration no longer asks for its protection); its stored rules
    and history stay in the state directory for a later re-add."""
    iface.maps.close()
    try:
        dataplane.detach(iface.name, pin_root=config.pin_root, netns=iface.cfg.netns)
    except BreakwaterError as exc:
        LOGGER.error("%s: removed from the configuration but not detached: %s", iface.name, exc,
                     extra={"event": "interface_release_failed", "interface": iface.name})
        return
    LOGGER.info("%s: removed from the configuration; detached", iface.name,
                extra={"event": "interface_removed", "interface": iface.name})
