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

import signal
import time
import urllib.request
from typing import Any

import pytest

from controller.agent.state import Store
from controller.dataplane import attach as dataplane
from controller.lab import traffic

from .agents import Agents, AgentSettings, wait_for
from .lab import CLIENT_V4, EDGE_V4, EXTRA_V4, IFNAME, PORT, Topology

pytestmark = pytest.mark.netns

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


@pytest.fixture
def agent_settings() -> AgentSettings:
    return AgentSettings(
        interval=INTERVAL,
        detect={"source_pps": SOURCE_PPS, "many_max_source_pps": 50.0, "start_intervals": 2,
                "end_intervals": END_INTERVALS},
        mitigate={"rule_ttl": RULE_TTL, "grace_ttl": GRACE_TTL},
    )


def _covers(rules: list[Any], address: str) -> list[str]:
    return [r.id for r in rules if r.action.kind == "drop" and any(str(p.network) == f"{address}/32"
                                                                   for p in r.match.src)]


def _flood_drops(agents: Agents) -> int:
    row = agents.source_counters(FLOOD)
    return row["drops"] if row else 0


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
        ids = wait_for(lambda: _covers(agents.auto_rules(), FLOOD), timeout=8 * INTERVAL + 2)
        assert ids, f"no automatic rule for {FLOOD}:\n{agent.stderr.read_text()[-3000:]}"
        detect_seconds = time.monotonic() - t0
        assert not _covers(agents.auto_rules(), LEGIT)
        assert flood.running, "flood ended before the rule came: the test proves nothing"
        events = agents.events()
        assert any(e["kind"] == "started" and e["vector"] == "source_rate" and e["rules"]
                   for e in events), events

        # 2. SIGKILL: the rule stays in force with no agent at all
        agent.kill()
        before = _flood_drops(agents)
        time.sleep(0.5)
        assert _flood_drops(agents) > before, "flood not dropped while the agent was dead"

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
        assert wait_for(lambda: any(e.get("event") == "reloaded" for e in agent.logs()), timeout=5), \
            agent.stderr.read_text()[-2000:]

        # 5. expiry on time after the flood stops
        rules = agents.auto_rules()
        assert _covers(rules, FLOOD), "rule gone right after the flood"
        latest = RULE_TTL + 1.0 + END_INTERVALS * INTERVAL + GRACE_TTL + 2 * INTERVAL + 1.0
        gone = wait_for(lambda: not _covers(agents.auto_rules(), FLOOD), timeout=latest)
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
