"""Restart safety under traffic: the loader dies, comes back, and upgrades.

The loader is the real command line (``breakwater dataplane attach
--foreground``) run as a process. While a bounded UDP stream flows from a
denied and an allowed source, the loader is SIGKILLed, restarted (it must
adopt the program it finds), SIGKILLed again and restarted with
``--reload`` (it must swap in a new program atomically). Not one denied
datagram may reach the receiver, the allowed stream must arrive, and the
counters must have survived every step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.dataplane import attach as dataplane
from controller.dataplane import counters, netlink
from controller.dataplane import entries as policy
from controller.lab import traffic

from .lab import (
    CLIENT_V4,
    EDGE_V4,
    EXTRA_V4,
    IFNAME,
    PORT,
    DaemonProc,
    Topology,
    detach_quietly,
    size_args,
)

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
ALLOWED = CLIENT_V4  # 198.18.0.2
DENIED = EXTRA_V4[0]  # 198.18.0.3
# The stream: 60k datagrams per source at 5k pps each (12 s), at most 20 s:
# it must outlast two restarts and an upgrade's compile (seconds on a busy
# 2-CPU machine, more since the challenge stage made the program larger).
STREAM_COUNT = 60_000
STREAM_PPS = 10_000.0
STREAM_MAX_SECONDS = 20.0
# How long a loader may take to report ready (it compiles on attach/reload).
READY_SECONDS = 30.0
# Pause after each SIGKILL: traffic flows with no loader at all.
DEAD_SECONDS = 0.5
DELIVERED_MIN = 0.99


@dataclass
class Loader(DaemonProc):
    """One ``breakwater dataplane attach --foreground`` process."""

    stdout: Path = Path()
    ready: dict[str, Any] = field(default_factory=dict)  # its loader_ready log line

    def wait_ready(self) -> dict[str, Any]:
        """Wait for ``loader_ready``; then its JSON report on stdout is complete."""
        return self.wait_event("loader_ready", READY_SECONDS)

    def report(self) -> dict[str, Any]:
        """The loader's one-interface ``--json`` attach report."""
        rows = json.loads(self.stdout.read_text())
        assert len(rows) == 1, rows
        row: dict[str, Any] = rows[0]
        return row


@dataclass
class Loaders:
    """Starts loaders and kills every one of them at teardown."""

    topo: Topology
    mode: str
    pin_root: Path
    workdir: Path
    started: list[Loader] = field(default_factory=list)

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "controller.cli", "--pin-root", str(self.pin_root),
                "dataplane", "attach", IFNAME, "--netns", self.topo.edge, "--mode", self.mode,
                *size_args(), "--foreground", "--json", *extra]

    def start(self, *extra: str) -> Loader:
        n = len(self.started)
        out, err = self.workdir / f"loader{n}.out", self.workdir / f"loader{n}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen(self.argv(*extra), cwd=REPO, stdout=fout, stderr=ferr,
                                    stdin=subprocess.DEVNULL)
        loader = Loader(proc, err, out)
        self.started.append(loader)
        loader.ready = loader.wait_ready()
        return loader

    def kill_all(self) -> None:
        for loader in self.started:
            with contextlib.suppress(Exception):
                loader.kill()


@pytest.fixture
def loaders(mode: str, pin_root: Path, topology: Topology, tmp_path: Path) -> Iterator[Loaders]:
    """Loader processes for bw0; at teardown every one is killed, then the
    program is detached and the pins purged."""
    started = Loaders(topology, mode, pin_root, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
        detach_quietly(topology, pin_root)


def cli(pin_root: Path, state_dir: Path, *args: str) -> Any:
    """Run ``breakwater --pin-root PIN --state-dir STATE ARGS --json`` and
    return its JSON output."""
    done = subprocess.run([sys.executable, "-m", "controller.cli", "--pin-root", str(pin_root),
                           "--state-dir", str(state_dir), *args, "--json"],
                          cwd=REPO, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def deny_hits(pin_root: Path, address: str) -> int:
    with dataplane.open_maps(IFNAME, pin_root) as maps:
        return next(e.hits for e in policy.entries(maps, "deny") if str(e.prefix) == address)


def test_kill_restart_and_upgrade_under_traffic(loaders: Loaders, topology: Topology,
                                                mode: str, pin_root: Path, state_dir: Path) -> None:
    first = loaders.start()
    assert first.report()["action"] == "attached"
    assert first.ready["actions"] == ["attached"]
    prog_id = first.report()["prog_id"]
    assert netlink.xdp_state(IFNAME, topology.edge).prog_id == prog_id
    # `deny add` puts the address into the source-only drop rule cli-deny.
    added = cli(pin_root, state_dir, "deny", "add", DENIED)
    assert [(r["added"], r["deny_exact"], r["applied"]) for r in added] == [(["cli-deny"], 1, True)]

    sink = traffic.UdpSink.start(topology.edge, EDGE_V4, PORT,
                                 max_seconds=STREAM_MAX_SECONDS + 30)
    stream: traffic.UdpStream | None = None
    try:
        stream = traffic.UdpStream.start(topology.client, [ALLOWED, DENIED], EDGE_V4, PORT,
                                         STREAM_COUNT, pps=STREAM_PPS,
                                         max_seconds=STREAM_MAX_SECONDS)
        deadline = time.monotonic() + 5
        while deny_hits(pin_root, DENIED) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert deny_hits(pin_root, DENIED) > 0, "no traffic reached the program"

        first.kill()
        time.sleep(DEAD_SECONDS)
        assert netlink.xdp_state(IFNAME, topology.edge).prog_id == prog_id  # still in force

        second = loaders.start()
        assert (second.report()["action"], second.report()["prog_id"]) == ("adopted", prog_id)
        second.kill()
        time.sleep(DEAD_SECONDS)

        third = loaders.start("--reload")
        upgraded = third.report()
        assert upgraded["action"] == "upgraded"
        assert upgraded["prog_id"] != prog_id
        state = netlink.xdp_state(IFNAME, topology.edge)
        assert (state.prog_id, state.mode) == (upgraded["prog_id"], mode)
        assert stream.running, "the stream ended before the upgrade: lengthen it"

        sent = stream.wait(STREAM_MAX_SECONDS + 10)
        got = sink.stop(settle=0.5)
    finally:
        if stream is not None:
            stream.close()
        sink.close()

    third.proc.send_signal(signal.SIGTERM)
    assert third.proc.wait(10) == 0
    assert third.event("loader_exit") is not None
    assert netlink.xdp_state(IFNAME, topology.edge).prog_id == upgraded["prog_id"]

    assert got.get(DENIED, 0) == 0, "a denied datagram got through during a restart"
    assert got.get(ALLOWED, 0) >= DELIVERED_MIN * sent[ALLOWED], (got, sent)
    with dataplane.open_maps(IFNAME, pin_root) as maps:
        # Counters carried over the kills, the adoption and the upgrade.
        assert deny_hits(pin_root, DENIED) == sent[DENIED]
        allowed = counters.read_sources(maps).lookup(ALLOWED)
        assert allowed is not None and allowed["packets"] == sent[ALLOWED]
