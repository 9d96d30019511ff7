"""Rules from the controller's API on three real agents (``harness.py``).

1. A rule created with ``breakwater rules create --server`` drops at every
   node, counted at each receiver and in each data plane, and NodeService
   shows every node at the controller's version.
2. Scopes select nodes: a rule for label site=a drops on the two site=a
   nodes only, a rule for one node on that node only; a node's target
   version moves only with changes to its own rules; a rule moved to
   another label leaves the nodes it no longer selects.
3. A set the agents cannot hold (more rules than their counter slots) is
   NACKed by every agent with the previous set still dropping, NodeService
   shows the error and DEGRADED; one rule fewer fits and converges.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from breakwater.v1 import node_pb2, rule_pb2
from tests.netns.lab import CLIENT_V4, EXTRA_V4

from .harness import CLI_ACTOR, Cluster, ClusterSettings, describe, drop_rule

pytestmark = pytest.mark.cluster

LEGIT = CLIENT_V4  # 198.18.0.2: passes everywhere
SRC_A = EXTRA_V4[0]  # 198.18.0.3
SRC_B = EXTRA_V4[1]  # 198.18.0.4
HEALTHY = node_pb2.NODE_HEALTH_HEALTHY


def test_api_rule_enforced_on_every_node(cluster: Cluster) -> None:
    cluster.start()
    made = cluster.cli("rules", "create", "block-a", "--src", SRC_A, "--action", "drop",
                       "--reason", "INC-1: block a")
    version = int(made["version"])
    assert made["name"] == "rules/block-a" and made["created_by"] == CLI_ACTOR
    states = cluster.wait_applied(version)
    with cluster.api() as api:
        rules, current = api.list_rules()
    assert [r.name for r in rules] == ["rules/block-a"] and current == version
    for n in cluster.nodes:
        assert n.dropped(SRC_A, SRC_B) == {SRC_A: True, SRC_B: False}, n.node_id
        state = states[n.node_id]
        assert (state.applied_rule_version, state.health, state.last_error.code) == (version, HEALTHY, 0), \
            describe(states)
        assert dict(state.labels) == dict(n.spec.labels)
        mode = node_pb2.ATTACH_MODE_NATIVE if n.spec.mode == "native" else node_pb2.ATTACH_MODE_GENERIC
        assert [(i.name, i.attach_mode) for i in state.interfaces] == [("bw0", mode)]
    listed = cluster.cli("nodes", "list")
    assert [(d["name"], int(d["applied_rule_version"])) for d in listed] == \
        sorted((n.name, version) for n in cluster.nodes)


def test_scopes_select_nodes(cluster: Cluster) -> None:
    cluster.start()
    a = cluster.cli("rules", "create", "site-a", "--src", SRC_A, "--action", "drop", "--selector", "site=a")
    b = cluster.cli("rules", "create", "only-b1", "--src", SRC_B, "--action", "drop", "--node", "edge-b1")
    va, vb = int(a["version"]), int(b["version"])
    assert vb == va + 1
    # each node's version moves only with its own rules: the node-scoped rule leaves site a at va
    cluster.wait_applied({"edge-a1": va, "edge-a2": va, "edge-b1": vb})
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == {
        "edge-a1": {SRC_A: True, SRC_B: False},
        "edge-a2": {SRC_A: True, SRC_B: False},
        "edge-b1": {SRC_A: False, SRC_B: True},
    }
    with cluster.api() as api:
        assert [r.name for r in api.list_rules(filter='scope.node = "nodes/edge-b1"')[0]] == ["rules/only-b1"]
        assert [r.name for r in api.list_rules(filter='scope.node_selector.match_labels.site = "a"')[0]] == \
            ["rules/site-a"]

    # the label rule moves to site b: it leaves the site-a nodes and reaches edge-b1
    moved = int(cluster.cli("rules", "update", "site-a", "--selector", "site=b")["version"])
    assert moved == vb + 1
    cluster.wait_applied(moved)
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == {
        "edge-a1": {SRC_A: False, SRC_B: False},
        "edge-a2": {SRC_A: False, SRC_B: False},
        "edge-b1": {SRC_A: True, SRC_B: True},
    }


SLOTS = 15
"""Rule counter slots of the agents in the NACK test (``[sizes] rules`` = SLOTS + 1)."""


def test_nacked_set_keeps_previous_one(cluster: Cluster) -> None:
    cluster.start(ClusterSettings(sizes={"rules": SLOTS + 1}))
    marks = {n.node_id: n.mark() for n in cluster.nodes}
    with cluster.api(reason="INC-3") as api:
        good = api.create_rule("keep", drop_rule(SRC_A)).version
        cluster.wait_applied(good)
        # SLOTS more rules: one too many for every agent; one of them would drop SRC_B
        extra = [(f"extra-{i:02d}", drop_rule(f"198.18.1.{i}")) for i in range(SLOTS - 1)]
        extra.append(("extra-b", drop_rule(SRC_B)))
        too_big = api.create_rules(extra)[0].version

    for n in cluster.nodes:
        nack = n.wait_log("controller_rules_nacked", marks[n.node_id])
        assert (nack["version"], nack["last_good_version"], nack["code"]) == (
            too_big, good, "APPLY_ERROR_CODE_CAPACITY"), nack

    def refused(states: Mapping[str, node_pb2.Node]) -> bool:
        return all(s.last_error.code == rule_pb2.APPLY_ERROR_CODE_CAPACITY for s in states.values())

    states = cluster.wait_nodes(refused, "every node's NACK in NodeService")
    for n in cluster.nodes:
        s = states[n.node_id]
        assert (s.applied_rule_version, s.target_rule_version, s.health) == (
            good, too_big, node_pb2.NODE_HEALTH_DEGRADED), describe(states)
        assert f"refusing version {too_big} (keeps {good})" in s.health_detail, s.health_detail
        assert f"{SLOTS + 1} rules need a counter slot each" in s.last_error.message, s.last_error.message
        # the last good set still drops; nothing of the refused one is in force
        assert n.dropped(SRC_A, SRC_B) == {SRC_A: True, SRC_B: False}, n.node_id

    # one rule fewer fits: every node converges on it
    with cluster.api(reason="INC-3: fewer") as api:
        api.delete_rule("extra-00")
        _, fixed = api.list_rules()
    states = cluster.wait_applied(fixed)
    for n in cluster.nodes:
        s = states[n.node_id]
        assert (s.health, s.HasField("last_error")) == (HEALTHY, False), describe(states)
        assert n.dropped(SRC_A, SRC_B) == {SRC_A: True, SRC_B: True}, n.node_id
