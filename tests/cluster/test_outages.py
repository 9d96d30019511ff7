"""The cluster through outages (``harness.py``).

4. kill -9 of the controller: every agent keeps enforcing its set; the
   controller restarts on its state, every node reconnects from the version
   it holds and converges, and the store lost nothing (rules, versions,
   nodes, events, the audit log); the restarted controller carries on from
   the stored version.
5. One node's control link cut (its ``ctl0`` down): a created and a deleted
   rule reach the other two at once; the cut node keeps its set, turns
   UNREACHABLE, its agent gives the silent stream up; once the link is back
   it reconnects from the version it holds and catches up.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from breakwater.v1 import node_pb2
from controller.fleet.store import FleetStore
from tests.netns.lab import EXTRA_V4

from .harness import API_ACTOR, CLI_ACTOR, Cluster, describe, drop_rule

pytestmark = pytest.mark.cluster

SRC_A = EXTRA_V4[0]  # 198.18.0.3
SRC_B = EXTRA_V4[1]  # 198.18.0.4
RECONNECT_SECONDS = 60.0
"""Reconnect backoff (0.5 s doubling, 30 s at most) plus a restart."""
SILENT_STREAM_SECONDS = 60.0
"""How long an agent may take to give up a stream whose link is down
(gRPC's TCP user timeout is the keepalive timeout, 20 s)."""


def _dicts(messages: Any) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]


def test_controller_kill9_and_restart(cluster: Cluster) -> None:
    cluster.start()
    with cluster.api(reason="INC-4: everywhere") as api:
        api.create_rule("block-a", drop_rule(SRC_A))
    cluster.cli("rules", "create", "site-a-b", "--src", SRC_B, "--action", "drop", "--selector", "site=a",
                "--reason", "INC-4: site a")
    with cluster.api() as api:
        rules, version = api.list_rules()
        events = api.list_events(limit=1000)
    held = {"edge-a1": version, "edge-a2": version, "edge-b1": version - 1}
    nodes = cluster.wait_applied(held)
    expected = {
        "edge-a1": {SRC_A: True, SRC_B: True},
        "edge-a2": {SRC_A: True, SRC_B: True},
        "edge-b1": {SRC_A: True, SRC_B: False},
    }
    marks = {n.node_id: n.mark() for n in cluster.nodes}

    cluster.kill_controller()
    for n in cluster.nodes:
        n.wait_log("controller_disconnected", marks[n.node_id])
    # the agents keep enforcing what they hold
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == expected
    # what the killed controller left: every acknowledged change, audited
    with FleetStore.open(cluster.state_dir) as store:
        audit = [(a.version, a.actor, a.action, a.rule_id, a.reason) for a in store.audit()]
    assert audit == [(version - 1, API_ACTOR, "create", "block-a", "INC-4: everywhere"),
                     (version, CLI_ACTOR, "create", "site-a-b", "INC-4: site a")]

    cluster.start_controller()
    applied = {}
    for n in cluster.nodes:
        connected = n.wait_log("controller_connected", marks[n.node_id], RECONNECT_SECONDS)
        assert connected["resume_version"] == held[n.node_id], connected
        applied[n.node_id] = n.wait_log("controller_rules_applied", marks[n.node_id])["version"]
    # Each node gets its set as a snapshot. Its version never goes back; a
    # restarted controller knows no node's history, so edge-b1 (whose set
    # did not change at the last version) may be retargeted at the store's
    # version with the same rules.
    assert all(held[nid] <= v <= version for nid, v in applied.items()), (applied, held)
    after = cluster.wait_applied(applied)
    with cluster.api() as api:
        rules_after, version_after = api.list_rules()
        events_after = api.list_events(limit=1000)
    assert (_dicts(rules_after), version_after) == (_dicts(rules), version)
    assert _dicts(events_after)[-len(events):] == _dicts(events)  # newest first: the old ones last
    for nid, state in after.items():
        assert (state.create_time, dict(state.labels), state.health) == (
            nodes[nid].create_time, dict(nodes[nid].labels), node_pb2.NODE_HEALTH_HEALTHY), describe(after)
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == expected

    # the restarted controller carries on from the stored version; edge-b1 is not touched
    cluster.cli("rules", "delete", "site-a-b", "--reason", "INC-4: closed")
    cluster.wait_applied({"edge-a1": version + 1, "edge-a2": version + 1, "edge-b1": applied["edge-b1"]})
    assert {n.node_id: n.dropped(SRC_A, SRC_B) for n in cluster.nodes} == {
        n.node_id: {SRC_A: True, SRC_B: False} for n in cluster.nodes}
    # the trail through the CLI: who did what, newest first (rule events carry no reason) ...
    logged = cluster.cli("events", "--filter", "rule:*", "--limit", "100")
    assert [(e["rule"]["kind"], e["rule"]["rule_id"], e["rule"]["actor"], int(e["rule"]["version"]))
            for e in logged] == [
        ("RULE_EVENT_KIND_DELETED", "site-a-b", CLI_ACTOR, version + 1),
        ("RULE_EVENT_KIND_CREATED", "site-a-b", CLI_ACTOR, version),
        ("RULE_EVENT_KIND_CREATED", "block-a", API_ACTOR, version - 1),
    ]
    # ... and the audit log in the store, with the reasons, the first two from before the kill
    with FleetStore.open(cluster.state_dir) as store:
        trail = [(a.version, a.actor, a.action, a.rule_id, a.reason) for a in store.audit()]
    assert trail == [*audit, (version + 1, CLI_ACTOR, "delete", "site-a-b", "INC-4: closed")]


def test_cut_link_converges_after_heal(cluster: Cluster) -> None:
    cluster.start()
    cut = cluster.node("edge-b1")
    others = [n for n in cluster.nodes if n is not cut]
    with cluster.api() as api:
        held = api.create_rule("old", drop_rule(SRC_B)).version
    cluster.wait_applied(held)
    mark = cut.mark()

    cluster.cut(cut)
    with cluster.api(reason="INC-5") as api:
        api.create_rule("new", drop_rule(SRC_A))
        api.delete_rule("old")
        _, version = api.list_rules()
    # the others get both changes at once
    cluster.wait_applied({n.node_id: version for n in others})
    for n in others:
        assert n.dropped(SRC_A, SRC_B) == {SRC_A: True, SRC_B: False}, n.node_id
    # the cut node keeps what it holds; the controller sees it silent, then unreachable
    assert cut.dropped(SRC_A, SRC_B) == {SRC_A: False, SRC_B: True}
    states = cluster.wait_nodes(lambda s: s[cut.node_id].health == node_pb2.NODE_HEALTH_UNREACHABLE,
                                f"{cut.node_id} unreachable")
    state = states[cut.node_id]
    assert (state.applied_rule_version, state.target_rule_version) == (held, version), describe(states)
    cut.wait_log("controller_disconnected", mark, SILENT_STREAM_SECONDS)
    assert cut.dropped(SRC_A, SRC_B) == {SRC_A: False, SRC_B: True}

    mark = cut.mark()
    cluster.heal(cut)
    connected = cut.wait_log("controller_connected", mark, RECONNECT_SECONDS)
    assert connected["resume_version"] == held
    states = cluster.wait_applied(version)
    assert states[cut.node_id].health == node_pb2.NODE_HEALTH_HEALTHY, describe(states)
    for n in cluster.nodes:
        assert n.dropped(SRC_A, SRC_B) == {SRC_A: True, SRC_B: False}, n.node_id
