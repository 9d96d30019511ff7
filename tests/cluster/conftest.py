"""Fixtures for the cluster tests (topology and processes in ``harness.py``).

``cluster`` builds the namespaces and links of a controller and three
nodes and starts nothing: a test calls ``cluster.start(settings)``.
Teardown, whatever the test did: every process it started (agents,
controller, relay) is SIGKILLed and reaped, every bw0 detached with its
pins purged, each node's pin root removed, every namespace removed (and
with them every veth and XDP attachment), the socket directory removed. A
teardown that finds a namespace or pin left behind fails the test.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from controller.lab.netns import Lab
from tests.netns.lab import BPFFS, remove_pins

from .harness import NODES, Cluster

PIN_ROOT_PREFIX = "bw-cl-"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    lab = Lab("cl")
    tag = uuid.uuid4().hex[:12]
    pin_roots = [BPFFS / f"{PIN_ROOT_PREFIX}{tag}-{i}" for i in range(len(NODES))]
    # The API socket's path must stay short (108 bytes at most): not under tmp_path.
    sockets = Path(tempfile.mkdtemp(prefix="bw-cl-"))
    built: Cluster | None = None
    try:
        built = Cluster.build(lab, tmp_path, sockets / "api.sock", pin_roots)
        yield built
    finally:
        if built is not None:
            built.kill_all()
            built.detach_all()
        for root in pin_roots:
            remove_pins(root)
        made = list(lab.namespaces)
        lab.close()
        shutil.rmtree(sockets, ignore_errors=True)
    left = set(made) & set(pyroute2_netns.listnetns())
    assert not left, f"namespaces left behind: {sorted(left)}"
    pins = [r for r in pin_roots if r.exists()]
    assert not pins, f"pins left behind: {pins}"
