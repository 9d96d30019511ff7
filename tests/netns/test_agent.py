"""The agent as a real process against a flood in the namespace lab.

``python -m controller.cli agent`` protects bw0 in the edge namespace. One
source floods (20k pps, bounded), another sends a legitimate low-rate
stream. The flood source must get an automatic drop rule within a few
intervals while the legitimate stream keeps arriving. The agent is then
SIGKILLed and restarted: the rule must stay in force throughout (the flood
is still dropped with no agent at all), be reloaded from SQLite, and expire
on time once the flood stops.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller import counters, dataplane, traffic
from controller.store import Store

from .lab import (
    CLIENT_V4,
    EDGE_V4,
    EXTRA_V4,
    IFNAME,
    NETNS_SIZES,
    PORT,
    DaemonProc,
    Topology,
    detach_quietly,
)

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
LEGIT = CLIENT_V4  # 198.18.0.2
FLOOD = EXTRA_V4[0]  # 198.18.0.3
INTERVAL = 0.5
SOURCE_PPS = 2000.0  # the per-source threshold; the flood is 10x, the legit stream 1/10
FLOOD_PPS = 20_000.0
FLOOD_SECONDS = 3.0
LEGIT_PPS = 200.0
LEGIT_SECONDS = 15.0  # covers detection, kill, restart and expiry
RULE_TTL = 6.0
GRACE_TTL = 2.0
END_INTERVALS = 2
READY_SECONDS = 60.0  # the first start compiles the program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProc(DaemonProc):
    def wait_ready(self) -> dict[str, Any]:
        return self.wait_event("agent_ready", READY_SECONDS)


@dataclass
class Agents:
    topo: Topology
    pin_root: Path
    workdir: Path
    metrics_port: int = field(default_factory=_free_port)
    started: list[AgentProc] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def config(self) -> Path:
        path = self.workdir / "agent.toml"
        sizes = "\n".join(f"{k} = {v}" for k, v in NETNS_SIZES.as_dict().items())
        path.write_text(f"""
interfaces = [{{ name = "{IFNAME}", netns = "{self.topo.edge}", mode = "generic" }}]
protected = ["198.18.0.0/24"]
mode = "enforce"
interval = {INTERVAL}
state_dir = "{self.state_dir}"
pin_root = "{self.pin_root}"
metrics = "127.0.0.1:{self.metrics_port}"

[sizes]
{sizes}

[detect]
source_pps = {SOURCE_PPS}
many_max_source_pps = 50.0
start_intervals = 2
end_intervals = {END_INTERVALS}

[mitigate]
rule_ttl = {RULE_TTL}
grace_ttl = {GRACE_TTL}
""")
        return path

    def start(self) -> AgentProc:
        err = self.workdir / f"agent{len(self.started)}.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "agent", "--config",
                                     str(self.config)], cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=ferr, stdin=subprocess.DEVNULL)
        agent = AgentProc(proc, err)
        self.started.append(agent)
        agent.wait_ready()
        return agent

    def kill_all(self) -> None:
        for a in self.started:
            with contextlib.suppress(Exception):
                a.kill()

    def auto_rules(self) -> list[Any]:
        with Store.open(self.state_dir) as store:
            return list(store.auto_rules(IFNAME))

    def events(self) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "controller.cli", "events", "--json", "--state-dir",
                              str(self.state_dir)], cwd=REPO, capture_output=True, check=True, timeout=30)
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows

    def flood_drops(self) -> int:
        with dataplane.open_maps(IFNAME, self.pin_root) as maps:
            row = counters.read_sources(maps).lookup(FLOOD)
        return row["drops"] if row else 0


@pytest.fixture
def agents(pin_root: Path, topology: Topology, tmp_path: Path) -> Iterator[Agents]:
    """Agent processes; at teardown every one is killed, then bw0 detached and pins purged."""
    started = Agents(topology, pin_root, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
        detach_quietly(topology, pin_root)


def _covers(rules: list[Any], address: str) -> list[str]:
    return [r.id for r in rules if r.action.kind == "drop" and any(str(p.network) == f"{address}/32"
                                                                   for p in r.match.src)]


def _wait(pred: Any, timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def test_flood_gets_dropped_survives_kill_and_expires(agents: Agents, topology: Topology) -> None:
    agent = agents.start()
    sink = traffic.UdpSink.start(topology.edge, EDGE_V4, PORT, max_seconds=90)
    legit = traffic.UdpStream.start(topology.client, [LEGIT], EDGE_V4, PORT,
                                    count=int(LEGIT_PPS * LEGIT_SECONDS), pps=LEGIT_PPS,
                                    max_seconds=LEGIT_SECONDS + 5)
    flood = traffic.UdpStream.start(topology.client, [FLOOD], EDGE_V4, PORT,
                                    count=int(FLOOD_PPS * FLOOD_SECONDS), pps=FLOOD_PPS,
                                    max_seconds=FLOOD_SECONDS + 2)
    try:
        # 1. an automatic drop rule for the flood source within a few intervals
        t0 = time.monotonic()
        ids = _wait(lambda: _covers(agents.auto_rules(), FLOOD), timeout=8 * INTERVAL + 2)
        assert ids, f"no automatic rule for {FLOOD}:\n{agent.stderr.read_text()[-3000:]}"
        detect_seconds = time.monotonic() - t0
        assert not _covers(agents.auto_rules(), LEGIT)
        assert flood.running, "flood ended before the rule came: the test proves nothing"
        events = agents.events()
        assert any(e["kind"] == "started" and e["vector"] == "source_rate" and e["rules"]
                   for e in events), events

        # 2. SIGKILL: the rule stays in force with no agent at all
        agent.kill()
        before = agents.flood_drops()
        time.sleep(0.5)
        assert agents.flood_drops() > before, "flood not dropped while the agent was dead"

        # 3. restart: the rule is reloaded from SQLite and still in force
        agent = agents.start()
        ready = agent.logs()
        start_rules = next(e for e in ready if e.get("event") == "agent_ready")["auto_rules"][IFNAME]
        assert set(ids) & set(start_rules), f"rules {ids} not reloaded: {start_rules}"
        flood_sent = flood.wait(FLOOD_SECONDS + 10)[FLOOD]
        flood_end = time.monotonic()

        # 4. metrics name the rule and count drops
        text = urllib.request.urlopen(f"http://127.0.0.1:{agents.metrics_port}/metrics", timeout=5).read()
        body = text.decode()
        assert "# TYPE breakwater_packets_total counter" in body
        assert 'breakwater_active_mitigations{interface="bw0",mode="enforce"}' in body
        assert "breakwater_detection_loop_duration_seconds_bucket" in body

        # SIGHUP reloads without detaching or dropping the rule
        agent.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: any(e.get("event") == "reloaded" for e in agent.logs()), timeout=5), \
            agent.stderr.read_text()[-2000:]

        # 5. expiry on time after the flood stops
        rules = agents.auto_rules()
        assert _covers(rules, FLOOD), "rule gone right after the flood"
        latest = RULE_TTL + 1.0 + END_INTERVALS * INTERVAL + GRACE_TTL + 2 * INTERVAL + 1.0
        gone = _wait(lambda: not _covers(agents.auto_rules(), FLOOD), timeout=latest)
        gone_after = time.monotonic() - flood_end
        assert gone, f"rule still in force {gone_after:.1f} s after the flood:\n{agents.auto_rules()}"
        # on time: the attack ends after END_INTERVALS quiet intervals, then the grace TTL
        assert gone_after <= END_INTERVALS * INTERVAL + GRACE_TTL + 4 * INTERVAL + 1.0, gone_after
        with Store.open(agents.state_dir) as store:
            assert not _covers(list(store.auto_rules(IFNAME)), FLOOD)
        # the data plane lets the former flooder through again
        probe = traffic.send_udp(topology.client, [FLOOD], EDGE_V4, PORT, 200, pps=1000)
        legit_sent = legit.wait(40)[LEGIT]
        received = sink.stop(settle=0.5)
    finally:
        flood.close()
        legit.close()
        sink.close()
    flood_received = received.get(FLOOD, 0) - probe[FLOOD]
    assert flood_received < 0.6 * flood_sent, (flood_received, flood_sent, detect_seconds)
    assert received.get(LEGIT, 0) >= 0.95 * legit_sent, (received, legit_sent)
    assert agent.proc.poll() is None, agent.stderr.read_text()[-2000:]
    agent.kill(signal.SIGTERM)
    assert agent.proc.returncode == 0, agent.stderr.read_text()[-2000:]
    assert any(e.get("event") == "agent_exit" for e in agent.logs())
    assert dataplane.status(IFNAME, pin_root=agents.pin_root, netns=topology.edge).ours
