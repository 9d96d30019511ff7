"""Carpet bombing against the real agent process (issue 11).

``python -m controller.cli agent`` protects bw0 (198.18.0.0/24) with the
shipped detection and mitigation defaults (1 s interval, the carpet
grouping at /24); only the UDP floor is lowered to a rate this lab sends
reliably on a shared 2-core machine, and the per-source and offender rates
set as in ``test_agent_shapes.py``. A legitimate client sends UDP to
198.18.0.1 throughout.

The flood is spread over 100 addresses of the prefix (198.18.0.100-.199)
at 60 pps each, fifty times under the floor per address, twice it in all:

* from 16 bots, each spraying every address at 375 pps (over the offender
  rate): one ``udp`` attack on 198.18.0.0/24, none on an address, mitigated
  by dropping the bots (their two /24s) and nothing victim-wide; the legitimate
  client is never dropped;
* from 400 bots at 15 pps each (too light to name): the same attack, mitigated
  by a UDP limit towards the prefix (``auto-udp-198-18-0-0-24``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from controller.lab import frames, traffic

from .agents import Agents, AgentSettings, Window, wait_for
from .lab import CLIENT_IFNAME, CLIENT_V4, EDGE_V4, Topology

pytestmark = pytest.mark.netns

PREFIX = "198.18.0.0/24"
SLUG = "198-18-0-0-24"
LEGIT = CLIENT_V4
LEGIT_PORT = 5201
FLOOD_PORT = 8053
FLOOR_PPS = 3000
SETTINGS = AgentSettings(
    interval=1.0,
    detect={"udp": {"pps": FLOOR_PPS}, "source_pps": 50_000.0, "offender_pps": 300.0},
)
TARGETS = [f"198.18.0.{i}" for i in range(100, 200)]
CARPET_PPS = 6000  # 2x the floor in all; 60 pps per address
SECONDS = 8.0
MIN_SHARE = 0.99


@pytest.fixture
def agent_settings() -> AgentSettings:
    return SETTINGS


def _carpet(agents: Agents, topology: Topology, sources: np.ndarray) -> tuple[list[dict[str, object]], Window,
                                                                                 set[str]]:
    """Flood TARGETS from ``sources`` (each source every target, in turn); the
    attack docs, the window after the first automatic rule, the rule ids."""
    client_mac, edge_mac = topology.macs()
    batch = [f for dst in TARGETS for f in frames.udp_frames(client_mac, edge_mac, sources, dst, FLOOD_PORT)]
    agents.start()
    sink = traffic.UdpSink.start(topology.edge, EDGE_V4, LEGIT_PORT, max_seconds=40)
    legit = traffic.UdpStream.start(topology.client, [LEGIT], EDGE_V4, LEGIT_PORT, count=50 * 25, pps=50,
                                    max_seconds=25)
    flood = None
    try:
        time.sleep(3.0)
        flood = traffic.RawFlood.start(topology.client, CLIENT_IFNAME, batch, int(CARPET_PPS * SECONDS),
                                       pps=CARPET_PPS, max_seconds=SECONDS + 3)
        assert wait_for(lambda: agents.auto_rules(), 6.0), f"carpet not mitigated: {agents.events()[-5:]}"
        time.sleep(1.5)  # the swap, and the rule set settles
        rules = {r.id for r in agents.auto_rules()}
        before = agents.counts(LEGIT)
        time.sleep(3.0)
        after = Window.between(before, agents.counts(LEGIT))
        flood.wait(SECONDS + 5)
        docs = agents.stored_events()
    finally:
        if flood is not None:
            flood.close()
        legit.close()
        sink.close()
    return [d for d in docs if "vector" in d], after, rules


def test_a_carpet_from_nameable_bots_drops_the_bots_and_nothing_victim_wide(
        agents: Agents, topology: Topology) -> None:
    bots = np.concatenate([frames.addresses(n, 8, offset=1) for n in ("198.19.1.0/24", "198.19.2.0/24")])
    docs, after, rules = _carpet(agents, topology, bots)
    print(f"CARPET nameable: {after}; rules {sorted(rules)}; "
          f"attacks {sorted({(d['vector'], d['victim'], d['profile']) for d in docs})}")
    assert {(d["vector"], d["victim"]) for d in docs} == {("udp", PREFIX)}, docs
    assert rules == {f"auto-src-udp-{SLUG}"}, rules
    assert after.seen > 0.5 * CARPET_PPS * 3 and after.share >= MIN_SHARE, str(after)
    assert after.legit_dropped == 0, str(after)


def test_a_carpet_from_bots_too_light_to_name_is_limited_on_the_prefix(
        agents: Agents, topology: Topology) -> None:
    bots = frames.addresses("198.19.0.0/22", 400, offset=1)
    docs, after, rules = _carpet(agents, topology, bots)
    print(f"CARPET light: {after}; rules {sorted(rules)}; "
          f"attacks {sorted({(d['vector'], d['victim'], d['profile']) for d in docs})}")
    assert {(d["vector"], d["victim"]) for d in docs} == {("udp", PREFIX)}, docs
    assert f"auto-udp-{SLUG}" in rules, rules
    # the aggregate limit (ceiling_pps, 1000 pps towards the prefix) holds the flood to it
    assert after.dropped >= after.seen - 1000 * after.seconds * 1.2, str(after)
