"""6. Cluster-wide detection (``harness.py``): one source sends a third of
its flood to each node, under every agent's per-source threshold (their
detectors stay quiet: no local attack, no automatic rule), but over the
controller's fleet threshold in sum (and over it only with all three
nodes: two thirds stay under). The controller's detector turns it into a
fleet-wide rule (origin controller, created by breakwater-controller, no
scope), which every node enforces.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest

from breakwater.v1 import event_pb2, node_pb2, rule_pb2, telemetry_service_pb2
from controller.lab import traffic
from tests.netns.lab import EDGE_V4, EXTRA_V4, PORT

from .harness import Cluster, ClusterSettings, Node, wait_for

pytestmark = pytest.mark.cluster

FLOOD = EXTRA_V4[2]  # 198.18.0.20, the same attacker behind every node's client
FLOOD_PORT = PORT + 1  # the exchanges' receivers use PORT
NODE_PPS = 600.0
"""What each node gets from the source: under THRESHOLD_PPS on every node
and summed over two nodes; over it summed over three."""
THRESHOLD_PPS = 1500.0
"""The agents' per-source threshold ([detect] source_pps) and the fleet's ([fleet] source_pps)."""
FLOOD_SECONDS = 40.0
"""The floods' bound; the test stops them once the fleet rule has dropped some at every node."""
DETECT_SECONDS = 30.0
TELEMETRY_WINDOW = 3.0
QUIET_SECONDS = 6.0
"""How long two thirds of the flood must not make a fleet rule: the fleet's
window (3 s) and two evaluations (1 s apart), with room to spare."""

SETTINGS = ClusterSettings(
    controller={
        "telemetry": {"bucket_seconds": 1.0},
        "fleet": {"interval": 1.0, "window": 3.0, "source_pps": THRESHOLD_PPS, "min_nodes": 2,
                  "start_intervals": 2},
    },
    # The verdict exchanges send 0.2 s bursts at 5000 pps, over this test's low
    # per-source threshold: three intervals to start, so a burst is no attack.
    detect={"source_pps": THRESHOLD_PPS, "start_intervals": 3},
)


def test_fleet_wide_detection(cluster: Cluster) -> None:
    cluster.start(SETTINGS)
    sinks: list[traffic.UdpSink] = []
    floods: list[traffic.UdpStream] = []

    def flood(n: Node) -> None:
        floods.append(traffic.UdpStream.start(n.topo.client, [FLOOD], EDGE_V4, FLOOD_PORT,
                                              int(NODE_PPS * FLOOD_SECONDS), pps=NODE_PPS,
                                              max_seconds=FLOOD_SECONDS))

    try:
        for n in cluster.nodes:
            sinks.append(traffic.UdpSink.start(n.topo.edge, EDGE_V4, FLOOD_PORT,
                                               max_seconds=FLOOD_SECONDS + 20))
        with cluster.api() as api:
            def fleet_rules() -> list[rule_pb2.Rule]:
                return api.list_rules(filter="origin = RULE_ORIGIN_CONTROLLER")[0]

            def talker() -> telemetry_service_pb2.TopTalker | None:
                top = api.top_talkers(window=TELEMETRY_WINDOW).top_talkers
                return next((t for t in top if t.address == FLOOD), None)

            # two thirds of the flood: the controller sees it on two nodes, under its threshold
            for n in cluster.nodes[:2]:
                flood(n)

            def on_two_nodes() -> telemetry_service_pb2.TopTalker | None:
                t = talker()
                return t if t is not None and t.node_count == 2 and t.pps >= 1.5 * NODE_PPS else None

            seen = wait_for(on_two_nodes, "the flood in the fleet's telemetry", DETECT_SECONDS, show=talker)
            assert seen.pps < THRESHOLD_PPS, seen
            quiet_until = time.monotonic() + QUIET_SECONDS
            while time.monotonic() < quiet_until:
                assert fleet_rules() == [], "a fleet rule from two thirds of the flood"
                time.sleep(0.5)

            # the last third: over the threshold in sum
            flood(cluster.nodes[2])
            rules = wait_for(fleet_rules, "a fleet rule", DETECT_SECONDS, show=talker)
            assert len(rules) == 1, rules
            rule = rules[0]
            assert rule.name.startswith("rules/fleet-") and rule.created_by == "breakwater-controller"
            assert (list(rule.match.src), rule.action.kind, rule.HasField("scope")) == (
                [FLOOD], rule_pb2.ACTION_KIND_DROP, False), rule
            assert rule.HasField("expire_time"), rule  # fleet rules have a TTL

            def everywhere(states: Mapping[str, node_pb2.Node]) -> bool:
                return len(states) == len(cluster.nodes) and all(
                    s.applied_rule_version >= rule.version for s in states.values())

            cluster.wait_nodes(everywhere, "the fleet rule applied on every node")
            # the flood meets it at every node
            for n in cluster.nodes:
                def dropping(node: Node = n) -> bool:
                    return node.source_drops(FLOOD)[FLOOD] > 0

                wait_for(dropping, f"{n.node_id} dropping the flood")

            # the controller saw it as one source on three nodes, and logged its own attack
            everyone = talker()
            assert everyone is not None and sorted(everyone.nodes) == sorted(n.name for n in cluster.nodes), \
                everyone
            attacks = [e for e in api.list_events(filter="attack:*", limit=100)
                       if e.attack.phase == event_pb2.ATTACK_PHASE_STARTED]
            assert [(e.node, e.attack.vector) for e in attacks] == [
                ("", event_pb2.ATTACK_VECTOR_SOURCE_RATE)], attacks
        for f in floods:
            f.close()  # a bounded flood, stopped early
        received = [s.stop() for s in sinks]
    finally:
        for f in floods:
            f.close()
        for s in sinks:
            s.close()

    # before the rule, the flood reached every node: no local mitigation stopped it
    assert all(r.get(FLOOD, 0) > 0 for r in received), received
    for n in cluster.nodes:
        assert (n.auto_rules(), n.local_attacks()) == ([], []), n.node_id
        assert n.dropped(FLOOD) == {FLOOD: True}, n.node_id
