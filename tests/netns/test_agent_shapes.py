"""Attack shapes against the real agent process: a pulse wave (issue 11).

``python -m controller.cli agent`` protects bw0 (victim 198.18.0.1,
protected 198.18.0.0/24) with the shipped detection and mitigation
defaults (1 s interval, ``start_intervals`` 1, ``end_intervals`` 5, the
pulse hold-down, ``grace_ttl`` 5 s); only the UDP floor is lowered, to a
rate this lab sends reliably on a shared 2-core machine, and the
per-source and offender rates set to keep the flood a destination flood of
named bots. A legitimate client sends UDP to the victim throughout.

The wave: 16 bots in two /24s, 2 s on and 3 s off, four pulses. The agent
must report one attack (not one per pulse) whose pulse count reaches four,
keep its rule in force through every off period, and drop pulses two to
four from their first packet; after the last pulse the attack ends and the
rule goes, within the hold-down plus the grace TTL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import numpy as np
import pytest

from controller.lab import frames, traffic

from .agents import Agents, AgentSettings, Window, wait_for
from .lab import CLIENT_IFNAME, CLIENT_V4, EDGE_V4, Topology

pytestmark = pytest.mark.netns

VICTIM = EDGE_V4
SLUG = VICTIM.replace(".", "-")
LEGIT = CLIENT_V4
LEGIT_PORT = 5201
FLOOD_PORT = 80
UDP_RULE = f"auto-src-udp-{SLUG}"

FLOOR_PPS = 3000
SETTINGS = AgentSettings(
    interval=1.0,
    detect={"udp": {"pps": FLOOR_PPS}, "source_pps": 50_000.0, "offender_pps": 300.0},
)

PULSE_PPS = 12_000  # 4x the floor; each of the 16 bots 750 pps, 2.5x the offender rate
ON_SECONDS = 2.0
OFF_SECONDS = 3.0
PULSES = 4
BOTS = ("198.19.1.0/24", "198.19.2.0/24")
HOLD = 2 * OFF_SECONDS  # pulse_hold x the longest off period
END_BOUND = HOLD + 5 + 5 + 3  # hold-down (or end_intervals), grace TTL, and slack for a loaded VM
MIN_SHARE = 0.99


@pytest.fixture
def agent_settings() -> AgentSettings:
    return SETTINGS


def _attack_docs(agents: Agents) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{agents.state_dir / 'agent.db'}?mode=ro", uri=True) as db:
        return [json.loads(r[0]) for r in db.execute("SELECT doc FROM events ORDER BY seq")]


def test_a_pulse_wave_is_one_attack_and_pulses_after_the_first_are_dropped(
        agents: Agents, topology: Topology) -> None:
    client_mac, edge_mac = topology.macs()
    sources = np.concatenate([frames.addresses(n, 8, offset=1) for n in BOTS])
    batch = frames.udp_frames(client_mac, edge_mac, sources, VICTIM, FLOOD_PORT, sport=frames.SPORT)
    agents.start()
    sink = traffic.UdpSink.start(topology.edge, VICTIM, LEGIT_PORT, max_seconds=60)
    legit = traffic.UdpStream.start(topology.client, [LEGIT], VICTIM, LEGIT_PORT, count=50 * 50, pps=50,
                                    max_seconds=50)
    pulses: list[Window] = []
    off_rules: list[set[str]] = []
    flood: traffic.RawFlood | None = None
    try:
        time.sleep(3.0)
        for i in range(PULSES):
            before = agents.counts(LEGIT)
            flood = traffic.RawFlood.start(topology.client, CLIENT_IFNAME, batch, int(PULSE_PPS * ON_SECONDS),
                                           pps=PULSE_PPS, max_seconds=ON_SECONDS + 2)
            flood.wait(ON_SECONDS + 5)
            pulses.append(Window.between(before, agents.counts(LEGIT)))
            if i == 0:
                assert wait_for(lambda: any(r.id == UDP_RULE for r in agents.auto_rules()), 5.0), \
                    f"first pulse not mitigated: {agents.auto_rules()}"
            if i < PULSES - 1:
                off_until = time.monotonic() + OFF_SECONDS - 0.3
                while time.monotonic() < off_until:
                    off_rules.append({r.id for r in agents.auto_rules()})
                    time.sleep(0.25)
                time.sleep(max(0.0, off_until + 0.3 - time.monotonic()))
        t_last = time.monotonic()
        gone = wait_for(lambda: not agents.auto_rules(), END_BOUND)
        released_after = time.monotonic() - t_last
        docs = _attack_docs(agents)
    finally:
        if flood is not None:
            flood.close()
        legit.close()
        sink.close()

    udp = [d for d in docs if d["vector"] == "udp" and d["victim"] in (VICTIM, f"{VICTIM}/32")]
    print(f"PULSES: {[str(w) for w in pulses]}; attacks {sorted({d['id'] for d in udp})}, "
          f"pulses {max((d['pulses'] for d in udp), default=0)}, rules gone {released_after:.1f} s "
          f"after the last pulse")
    assert len({d["id"] for d in udp if d["kind"] == "started"}) == 1, udp
    assert {d["id"] for d in docs} == {udp[0]["id"]}, docs  # nothing else started
    assert max(d["pulses"] for d in udp) == PULSES, [(d["kind"], d["pulses"]) for d in udp]
    assert [d["kind"] for d in udp].count("ended") == 1
    # the rule held through every off period ...
    assert off_rules and all(UDP_RULE in ids for ids in off_rules), off_rules
    # ... so every later pulse was dropped from its first packet
    for i, w in enumerate(pulses[1:], start=2):
        assert w.seen > 0.8 * PULSE_PPS * ON_SECONDS, (i, str(w))
        assert w.share >= MIN_SHARE and w.legit_dropped == 0, (i, str(w))
    assert gone, f"rules still in force {END_BOUND} s after the last pulse"
