"""File modes of what holds rules, keys and the audit log: the controller's
database and the agent's state database are 0600 (their WAL files too) in
a 0700 directory the daemon creates; an existing looser file is tightened;
``breakwater pki`` writes keys 0600 in 0700 directories."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from controller import pki
from controller.agent.state import Store as AgentStore
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import create_controller
from controller.fleet.store import FleetStore
from controller.rules.model import RuleSet


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_controller_database_is_private(tmp_path: Path) -> None:
    state = tmp_path / "new" / "controller"
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=state, metrics=None), sync=False)
    try:
        ctl.store.register_node("edge-1", {}, {})
        files = sorted(p.name for p in state.iterdir())
        assert "controller.db" in files and "controller.db-wal" in files, files
        for name in files:
            assert mode(state / name) == 0o600, name
        assert mode(state) == 0o700
    finally:
        ctl.stop(0)


def test_agent_state_is_private(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    with AgentStore.open(state) as db:
        db.set_manual_rules("eth0", RuleSet.from_rules([]))
        files = sorted(p.name for p in state.iterdir())
        assert files and all(mode(state / n) == 0o600 for n in files), files
    assert mode(state) == 0o700


def test_an_existing_loose_database_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tmp_path.chmod(0o755)
    db = tmp_path / "controller.db"
    db.touch()
    db.chmod(0o644)
    with caplog.at_level(logging.WARNING, "breakwater.sqlite"):
        FleetStore.open(tmp_path).close()
    assert mode(db) == 0o600
    assert "others may read this state directory" in caplog.text
    assert mode(tmp_path) == 0o755  # an existing directory is the operator's: warned, not changed


def test_pki_keys_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        pki.init_ca(tmp_path / "ca")
        pki.issue(tmp_path / "ca", tmp_path / "out", "node", "edge-1")
    finally:
        os.umask(old)
    for d in (tmp_path / "ca", tmp_path / "out"):
        assert mode(d) == 0o700
        for f in d.iterdir():
            assert mode(f) == 0o600, f
