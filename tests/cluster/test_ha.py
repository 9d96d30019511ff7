"""Two controllers over etcd with real agents (``harness.py``,
``ClusterSettings(ha=True)``; issue 13).

kill -9 of the leader, which every agent is connected to: the agents fail
over to the other controller and keep enforcing every rule meanwhile (real
packets over veth, checked against the data plane's counters); the other
controller takes the singleton jobs over (a rule's expiry is swept by it);
a rule created afterwards reaches every node.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.netns.lab import EXTRA_V4

from .harness import PORT, Cluster, ClusterSettings, drop_rule

pytestmark = pytest.mark.cluster

SRC_A = EXTRA_V4[0]  # 198.18.0.3
SRC_B = EXTRA_V4[1]  # 198.18.0.4
FAILOVER_SECONDS = 15.0
"""Generous: measured well under a second (bench/ha.py)."""
HANDOVER_SECONDS = 20.0
"""The leader lease (5 s) and a check, on a busy machine."""
EXPIRY_SECONDS = 40.0


def test_leader_kill9_agents_fail_over_and_keep_enforcing(cluster: Cluster) -> None:
    cluster.start(ClusterSettings(ha=True))
    leader, other = cluster.controllers
    assert other.event("leader_elected") is None
    brief = drop_rule(SRC_B)
    brief.ttl.FromSeconds(20)
    with cluster.api(reason="INC-13") as api:  # on the second controller: reaches the leader's agents
        api.create_rule("block-a", drop_rule(SRC_A))
        api.create_rule("brief-b", brief)
        _, version = api.list_rules()
    cluster.wait_applied(version)
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == {
        n.node_id: {SRC_A: True, SRC_B: True} for n in cluster.nodes}
    marks = {n.node_id: n.mark() for n in cluster.nodes}

    leader.kill()  # kill -9: every agent's controller, and the leader
    for n in cluster.nodes:
        second = f"{n.controller_address}:{PORT + 1}"

        def to_second(e: dict[str, Any], second: str = second) -> bool:
            return e.get("controller") == second

        connected = n.wait_log("controller_connected", marks[n.node_id], FAILOVER_SECONDS, pred=to_second)
        assert connected["resume_version"] == version
    # enforcing all along, and now through the other controller
    assert {n.node_id: n.dropped(SRC_A, SRC_B)[SRC_A] for n in cluster.nodes} == {
        n.node_id: True for n in cluster.nodes}
    elected = other.wait_event("leader_elected", HANDOVER_SECONDS)
    expired = other.wait_event("rules_expired", EXPIRY_SECONDS)
    assert expired["rules"] == ["brief-b"] and expired["version"] > version
    assert elected["token"] > 0

    with cluster.api(reason="INC-13 again") as api:
        api.create_rule("after", drop_rule(EXTRA_V4[2]))
        _, latest = api.list_rules()
    cluster.wait_applied(latest)
    assert {n.node_id: n.dropped(SRC_A, SRC_B, EXTRA_V4[2]) for n in cluster.nodes} == {
        n.node_id: {SRC_A: True, SRC_B: False, EXTRA_V4[2]: True} for n in cluster.nodes}
