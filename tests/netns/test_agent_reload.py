"""SIGHUP: the agent applies a changed interface list without a gap.

A real agent protects bw0. Its configuration then gains a second interface
(bw1, a second veth pair into the client namespace) and a new metrics
address; after SIGHUP bw1 carries Breakwater, bw0 keeps the very same
program (never detached), and metrics answer at the new address. Removing
bw0 from the configuration detaches it and leaves bw1 alone; a changed
attach mode is reported and not applied (it would need a detach); an invalid
configuration is refused whole and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.dataplane import attach as dataplane
from controller.dataplane import netlink

from .lab import IFNAME, NETNS_SIZES, DaemonProc, Topology, detach_quietly

pytestmark = pytest.mark.netns

LOGGER = logging.getLogger("breakwater.tests.netns")
REPO = Path(__file__).resolve().parents[2]
SECOND = "bw1"
SECOND_PEER = "cl1"
READY_SECONDS = 90.0  # a first start compiles the program
RELOAD_SECONDS = 90.0  # adding an interface compiles its program too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(path: Path, topo: Topology, pin_root: Path, interfaces: list[tuple[str, str]],
            metrics_port: int, api_port: int) -> None:
    ifaces = ", ".join(f'{{ name = "{name}", netns = "{topo.edge}", mode = "{mode}" }}'
                       for name, mode in interfaces)
    sizes = "\n".join(f"{k} = {v}" for k, v in NETNS_SIZES.as_dict().items())
    path.write_text(f"""
interfaces = [{ifaces}]
protected = ["198.18.0.0/24"]
interval = 0.5
state_dir = "{path.parent / 'state'}"
pin_root = "{pin_root}"
metrics = "127.0.0.1:{metrics_port}"
api = "127.0.0.1:{api_port}"
[sizes]
{sizes}
""")


def _prog_id(topo: Topology, ifname: str) -> int:
    return netlink.xdp_state(ifname, topo.edge).prog_id


def _reloads(agent: DaemonProc, after: int, timeout: float) -> dict[str, Any]:
    """The first reload outcome (reloaded or reload_failed) logged after line ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in agent.logs()[after:]:
            if e.get("event") in ("reloaded", "reload_failed"):
                return e
        if agent.proc.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no reload outcome:\n{agent.stderr.read_text()[-3000:]}")


def _metrics_up(port: int) -> bool:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return False
    return "breakwater_packets_total" in body


def test_sighup_adds_and_removes_interfaces_without_a_gap(topology: Topology, pin_root: Path,
                                                          tmp_path: Path) -> None:
    topology.lab.veth((topology.edge, SECOND, "198.18.1.1/24"),
                      (topology.client, SECOND_PEER, "198.18.1.2/24"))
    cfg = tmp_path / "agent.toml"
    port1, port2, api_port = _free_port(), _free_port(), _free_port()

    def write(interfaces: list[tuple[str, str]], port: int) -> None:
        _config(cfg, topology, pin_root, interfaces, port, api_port)

    write([(IFNAME, "generic")], port1)
    err = tmp_path / "agent.err"
    with err.open("wb") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "agent", "--config", str(cfg)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=ferr, stdin=subprocess.DEVNULL)
    agent = DaemonProc(proc, err)
    try:
        agent.wait_event("agent_ready", READY_SECONDS)
        first = _prog_id(topology, IFNAME)
        assert first and _prog_id(topology, SECOND) == 0
        assert _metrics_up(port1)

        # 1. add bw1 and move metrics: bw0 untouched, bw1 attached
        write([(IFNAME, "generic"), (SECOND, "generic")], port2)
        mark = len(agent.logs())
        agent.proc.send_signal(signal.SIGHUP)
        done = _reloads(agent, mark, RELOAD_SECONDS)
        assert done["event"] == "reloaded" and done["interfaces"] == [IFNAME, SECOND], done
        assert _prog_id(topology, IFNAME) == first, "bw0 was re-attached on reload"
        second = _prog_id(topology, SECOND)
        assert second and dataplane.status(SECOND, pin_root=pin_root, netns=topology.edge).ours
        assert _metrics_up(port2) and not _metrics_up(port1)

        # 2. a mode change is reported, not applied; an invalid file changes nothing
        write([(IFNAME, "generic"), (SECOND, "native")], port2)
        mark = len(agent.logs())
        agent.proc.send_signal(signal.SIGHUP)
        done = _reloads(agent, mark, RELOAD_SECONDS)
        assert done["event"] == "reloaded", done
        assert any(e.get("event") == "reload_partial" and e.get("interface") == SECOND
                   for e in agent.logs()[mark:])
        assert netlink.xdp_state(SECOND, topology.edge).mode == "generic"
        assert _prog_id(topology, SECOND) == second

        cfg.write_text(cfg.read_text().replace("interval = 0.5", "interval = 0.01"))
        mark = len(agent.logs())
        agent.proc.send_signal(signal.SIGHUP)
        done = _reloads(agent, mark, RELOAD_SECONDS)
        assert done["event"] == "reload_failed" and "interval" in done.get("msg", ""), done
        assert (_prog_id(topology, IFNAME), _prog_id(topology, SECOND)) == (first, second)

        # 3. remove bw0: detached; bw1 keeps its program
        write([(SECOND, "generic")], port2)
        mark = len(agent.logs())
        agent.proc.send_signal(signal.SIGHUP)
        done = _reloads(agent, mark, RELOAD_SECONDS)
        assert done["event"] == "reloaded" and done["interfaces"] == [SECOND], done
        assert _prog_id(topology, IFNAME) == 0
        assert _prog_id(topology, SECOND) == second
        assert agent.proc.poll() is None, agent.stderr.read_text()[-3000:]
        agent.kill(signal.SIGTERM)
        assert agent.proc.returncode == 0, agent.stderr.read_text()[-3000:]
    finally:
        with contextlib.suppress(Exception):
            agent.kill()
        detach_quietly(topology, pin_root)
        try:
            dataplane.detach(SECOND, pin_root=pin_root, netns=topology.edge, purge=True, force=True)
        except Exception:
            LOGGER.exception("detach %s failed", SECOND)
