"""SIGHUP: the configuration and the manual rules read again and put in
force without detaching.

Kept interfaces stay attached (a changed attach mode is logged, not
applied: switching modes means detaching, a gap in protection), removed
ones are detached, added ones attached. A kept interface gets a new
detector (keeping its baselines and attack ids) or planner when their
sections changed, its manual rules read again (the rules file, or the set
a ``breakwater rules`` command put in force since) and the rule layers
applied again. ``state_dir``, ``pin_root`` and ``sizes`` take effect at the
next restart. The daemon (:mod:`controller.agent.daemon`) runs these steps
and rebinds its metrics address, controller link and local API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ..detection.detector import Detector
from ..errors import BreakwaterError, InputError
from ..rules import enforce
from . import config as agentconfig
from .config import AgentConfig, InterfaceConfig
from .interface import Interface, configure, planner
from .layers import RuleLayers, manual_only
from .state import Store

__all__ = ["RESTART_KEYS", "reconcile_interfaces", "refresh", "reloaded_config"]

LOGGER = logging.getLogger("breakwater.agent")

RESTART_KEYS: Final = ("state_dir", "pin_root", "sizes")
"""Keys a reload leaves as they are: they change at the next restart."""


def reloaded_config(old: AgentConfig, path: Path | None,
                    overrides: Mapping[str, object]) -> AgentConfig | None:
    """The configuration to run after SIGHUP: ``path`` read again (None: the
    running configuration), with :data:`RESTART_KEYS` as they are (a change
    is logged). None when the file is refused (logged): the running
    configuration stays."""
    if path is not None:
        try:
            new = agentconfig.load(path, overrides)
        except InputError as exc:
            LOGGER.error("reload refused, keeping the running configuration: %s", exc,
                         extra={"event": "reload_failed"})
            return None
    else:
        new = old
    for key in RESTART_KEYS:
        if getattr(new, key) != getattr(old, key):
            LOGGER.warning("%s changed: takes effect at the next restart", key,
                           extra={"event": "reload_partial", "key": key})
    return replace(new, state_dir=old.state_dir, pin_root=old.pin_root, sizes=old.sizes)


def reconcile_interfaces(current: Sequence[Interface], new: AgentConfig, *,
                         remove: Callable[[Interface], None],
                         bring_up: Callable[[InterfaceConfig], Interface]) -> list[Interface]:
    """The interfaces to manage under ``new``: those kept (untouched; a
    changed attach mode is logged and the running mode kept), the others
    handed to ``remove``, the added ones brought up (one that fails is
    logged and left out)."""
    wanted = {(i.name, i.netns): i for i in new.interfaces}
    kept: list[Interface] = []
    for iface in list(current):
        icfg = wanted.get((iface.name, iface.cfg.netns))
        if icfg is None:
            remove(iface)
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
            kept.append(bring_up(icfg))
        except BreakwaterError as exc:
            LOGGER.error("%s: added in the configuration but not attached: %s", icfg.name, exc,
                         extra={"event": "interface_add_failed", "interface": icfg.name})
    return kept


def refresh(iface: Interface, old: AgentConfig, new: AgentConfig, store: Store, layers: RuleLayers) -> None:
    """Bring a kept interface to ``new`` and apply its rule layers again; a
    failure is logged (the interface keeps what it had)."""
    try:
        if new.detect != old.detect or new.protected != old.protected:
            baselines, ids = iface.detector.baselines(), iface.detector.id_counter
            iface.detector = Detector(new.detect, new.protected)
            iface.detector.load_baselines(baselines)
            iface.detector.restore_id_counter(ids)
        if new.mitigate != old.mitigate or new.challenge != old.challenge:
            iface.planner = planner(new)
        if new.rules_file is not None:
            iface.manual = enforce.load_file(new.rules_file)
        else:
            prev = enforce.recorded(new.state_dir, iface.maps)
            if prev is not None:
                iface.manual = manual_only(prev.rules)
        store.set_manual_rules(iface.name, iface.manual)
        configure(iface, new)
        layers.apply(iface, datetime.now(UTC), reason="reload")
    except BreakwaterError as exc:
        LOGGER.error("%s: reload failed: %s", iface.name, exc, extra={"event": "reload_failed"})
