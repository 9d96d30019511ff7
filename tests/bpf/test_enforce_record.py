"""The record of the rule set in force (controller.rules.enforce), against the
real maps: written as pending before the flip and as current after it, so a
crash between the two leaves the set the maps hold, whether the CLI's
``rules`` commands or the agent (controller.agent.layers) made the swap;
and the agent recovers from that record as from any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agent.config import AgentConfig, InterfaceConfig
from controller.agent.interface import Interface
from controller.agent.layers import RuleLayers
from controller.dataplane.pinned import MapSet
from controller.detection.detector import Detector
from controller.detection.planner import Planner
from controller.rules import enforce
from controller.rules.model import RuleSet

from .conftest import DataPlane
from .rulesets import NOW, rule

pytestmark = pytest.mark.bpf

DNS = rule("dns", "drop", 10, protocol="udp", dport=53)
WEB = rule("web", "drop", 20, protocol="tcp", dport=80)


class Crash(BaseException):
    """The process dying between the flip and the current record."""


@pytest.fixture
def crash_after_flip(monkeypatch: pytest.MonkeyPatch) -> None:
    real = enforce.save_applied

    def save(state_dir: Path, maps: MapSet, applied: enforce.Applied, pending: bool = False) -> None:
        if not pending:
            raise Crash
        real(state_dir, maps, applied, pending)

    monkeypatch.setattr(enforce, "save_applied", save)


def test_the_cli_path_leaves_the_pending_record(dp: DataPlane, tmp_path: Path,
                                                crash_after_flip: None) -> None:
    with pytest.raises(Crash):
        enforce.apply(dp.maps, RuleSet.from_rules([DNS]), None, now=NOW, state_dir=tmp_path)
    found = enforce.load_applied(tmp_path, dp.maps)
    assert found is not None and found.gen == dp.config().gen
    assert [r.id for r in found.rules] == ["dns"]


def _agent(dp: DataPlane, state_dir: Path) -> tuple[RuleLayers, Interface]:
    cfg = AgentConfig(interfaces=(InterfaceConfig("bw-test"),), state_dir=state_dir, metrics=None, api=None)
    iface = Interface(cfg.interfaces[0], dp.maps, Detector(cfg.detect), Planner(cfg.mitigate),
                      RuleSet.from_rules([DNS, WEB]))
    return RuleLayers(lambda: cfg, lambda: [iface]), iface


def test_the_agent_path_leaves_the_same_record(dp: DataPlane, tmp_path: Path, crash_after_flip: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    layers, iface = _agent(dp, tmp_path)
    with pytest.raises(Crash):
        layers.apply(iface, NOW, reason="start")
    monkeypatch.undo()  # the crash is over
    gen = dp.config().gen
    found = enforce.load_applied(tmp_path, dp.maps)
    assert found is not None and found.gen == gen
    assert [r.id for r in found.rules] == ["dns", "web"]

    # a restarted agent finds its set in force and keeps it, slots and all
    layers, iface = _agent(dp, tmp_path)
    layers.apply(iface, NOW, reason="start")
    assert dp.config().gen == gen and iface.applies == 0
    assert iface.slot_ids == {s: rid for rid, s in found.slots.to_dict().items()}
