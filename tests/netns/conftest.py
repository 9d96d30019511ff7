"""Fixtures for the real-packet tests: Breakwater on a veth, in a namespace lab
(topology in ``lab.py``).

Cleanup, whatever the test body did: ``bw`` detaches (purging the pins),
``lab`` removes both namespaces (and so the veth and any XDP attachment on
it), ``pin_root`` unlinks whatever is left under the test's own pin root
(``/sys/fs/bpf/bw-nt-<uuid>``), ``state_dir`` removes the test's own rule
state directory, ``agents`` kills every agent process it started before
bw0 is detached. A teardown that finds a leftover fails the test, so a leak
cannot go unnoticed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from pyroute2 import netns as pyroute2_netns

from controller.dataplane import attach as dataplane
from controller.lab.netns import Lab

from .agents import Agents, AgentSettings
from .lab import (
    BPFFS,
    IFNAME,
    MODES,
    NETNS_SIZES,
    PIN_ROOT_PREFIX,
    Breakwater,
    Topology,
    build_topology,
    detach_quietly,
    remove_pins,
)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test runs once per XDP mode."""
    return str(request.param)


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A pin root of this test's own, removed with everything in it."""
    root = BPFFS / f"{PIN_ROOT_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        yield root
    finally:
        remove_pins(root)
    assert not root.exists(), f"pins left behind under {root}"


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A rule state directory of this test's own (``--state-dir``), removed at
    teardown. ``BREAKWATER_STATE_DIR`` points there too, so no command a test
    runs can touch ``/var/lib/breakwater``: the state file is named by
    interface only, and every test's interface is ``bw0``."""
    root = Path(tempfile.mkdtemp(prefix="bw-nt-state-"))
    monkeypatch.setenv("BREAKWATER_STATE_DIR", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not os.path.exists(root), f"state left behind under {root}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab whose namespaces are removed at teardown (checked)."""
    lab = Lab("nt")
    try:
        yield lab
    finally:
        made = list(lab.namespaces)
        lab.close()
        left = set(made) & set(pyroute2_netns.listnetns())
        assert not left, f"namespaces left behind: {sorted(left)}"


@pytest.fixture
def topology(lab: Lab) -> Topology:
    """Edge and client namespaces, the veth, every address, static neighbours."""
    return build_topology(lab)


@pytest.fixture
def bw(mode: str, pin_root: Path, topology: Topology) -> Iterator[Breakwater]:
    """Breakwater attached to bw0 in ``mode``, with its own pin root."""
    try:
        result = dataplane.attach(IFNAME, cast("dataplane.AttachMode", mode), NETNS_SIZES,
                                  pin_root=pin_root, netns=topology.edge)
        yield Breakwater(topology, mode, pin_root, result)
    finally:
        detach_quietly(topology, pin_root)


@pytest.fixture
def agent_settings() -> AgentSettings:
    """The agent configuration's test-chosen part; a module overrides this fixture."""
    return AgentSettings()


@pytest.fixture
def agents(pin_root: Path, topology: Topology, tmp_path: Path,
           agent_settings: AgentSettings) -> Iterator[Agents]:
    """Agent processes on bw0 (``agents.py``); at teardown every one is
    SIGKILLed, then bw0 detached and the pins purged."""
    started = Agents(topology, pin_root, tmp_path, agent_settings)
    try:
        yield started
    finally:
        started.kill_all()
        detach_quietly(topology, pin_root)
