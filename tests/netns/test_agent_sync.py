"""The agent syncing with a real ``breakwater controller``, on a real veth.

A controller process on loopback and an agent process protecting bw0 in the
edge namespace (``--controller``). A rule created through the controller's
RuleService must drop packets at the agent. Then the controller is killed
(-9): the agent keeps enforcing; the agent is killed and restarted while the
controller is still down: it loads the last set it ACKed and still enforces
it (its first apply would have removed the rule otherwise). The controller
comes back on the same state: the agent reconnects from the version it
holds, and a deletion through the API reaches it. On the way, the agent's
local API shows the controller rule read-only and manages a manual rule,
its events and telemetry reach the controller, and a rule set that does not
fit the data plane is refused (NACK) with the previous one kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from breakwater.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    telemetry_service_pb2,
    telemetry_service_pb2_grpc,
)
from controller.rules.compiler import DEFAULT_MAX_SIGNATURES

from .lab import CLIENT_V4, EXTRA_V4, IFNAME, NETNS_SIZES, DaemonProc, Topology, detach_quietly

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
LEGIT = CLIENT_V4  # 198.18.0.2
BLOCKED = EXTRA_V4[0]  # 198.18.0.3: the controller's rule drops it
LOCAL = EXTRA_V4[1]  # 198.18.0.4: the agent's local API drops it
NODE_ID = "edge-sync-1"
INTERVAL = 0.5
READY_SECONDS = 90.0  # the first start compiles the program
SYNC_SECONDS = 20.0
COUNT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("BREAKWATER_SERVER", None)
    return env


@dataclass
class Cluster:
    topo: Topology
    pin_root: Path
    workdir: Path
    port: int = field(default_factory=_free_port)
    api_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    started: list[DaemonProc] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> DaemonProc:
        err = self.workdir / f"{name}{len(self.started)}.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-m", "controller.cli", *args], cwd=REPO, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=ferr, stdin=subprocess.DEVNULL)
        p = DaemonProc(proc, err)
        self.started.append(p)
        return p

    def controller(self) -> DaemonProc:
        p = self._spawn("controller", ["controller", "--listen", f"127.0.0.1:{self.port}", "--state-dir",
                                       str(self.workdir / "controller"), "--metrics", ""])
        p.wait_event("controller_ready", 30)
        return p

    @property
    def config(self) -> Path:
        return self.workdir / "agent.toml"

    def write_config(self, site: str = "lab") -> None:
        config = self.config
        sizes = "\n".join(f"{k} = {v}" for k, v in NETNS_SIZES.as_dict().items())
        config.write_text(f"""
interfaces = [{{ name = "{IFNAME}", netns = "{self.topo.edge}", mode = "generic" }}]
protected = ["198.18.0.0/24"]
interval = {INTERVAL}
state_dir = "{self.workdir / 'agent'}"
pin_root = "{self.pin_root}"
metrics = "127.0.0.1:{self.metrics_port}"
controller = "127.0.0.1:{self.port}"
node_id = "{NODE_ID}"
labels = {{ site = "{site}" }}
api = "127.0.0.1:{self.api_port}"

[sizes]
{sizes}

[detect]
source_pps = 1000000.0  # no automatic rules in this test
""")

    def agent(self) -> DaemonProc:
        self.write_config()
        p = self._spawn("agent", ["agent", "--config", str(self.config)])
        p.wait_event("agent_ready", READY_SECONDS)
        return p

    def kill_all(self) -> None:
        for p in self.started:
            with contextlib.suppress(Exception):
                p.kill()


@pytest.fixture
def cluster(pin_root: Path, topology: Topology, tmp_path: Path) -> Iterator[Cluster]:
    """Controller and agent processes; at teardown all are killed, bw0 detached, pins purged."""
    c = Cluster(topology, pin_root, tmp_path)
    try:
        yield c
    finally:
        c.kill_all()
        detach_quietly(topology, pin_root)


def _drop_rule(src: str) -> rule_pb2.Rule:
    return rule_pb2.Rule(match=rule_pb2.Match(src=[src]),
                         action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))


def _eventually(pred: Callable[[], Any], timeout: float = SYNC_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    return pred()


def _metrics(port: int, name: str) -> float | None:
    """The value of the first sample of ``name`` on the agent's metrics page."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _applied(agent: DaemonProc, version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "controller_rules_applied" and e.get("version", 0) >= version


def test_controller_rule_enforced_and_kept_through_outages(cluster: Cluster) -> None:
    topo = cluster.topo
    ctl = cluster.controller()
    agent = cluster.agent()
    agent.wait_for("controller_connected", lambda e: e.get("event") == "controller_connected")
    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        rules = rule_service_pb2_grpc.RuleServiceStub(channel)
        made = rules.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="block-lab",
                                                                   rule=_drop_rule(BLOCKED)),
                                timeout=10, metadata=(("x-breakwater-actor", "netns-test"),))
        version = made.version
        agent.wait_for("the rule applied", _applied(agent, version))
        assert topo.dropped(BLOCKED, LOCAL, count=COUNT) == {BLOCKED: True, LOCAL: False}
        def acked() -> Any:
            node = node_service_pb2_grpc.NodeServiceStub(channel).GetNode(
                node_service_pb2.GetNodeRequest(name=f"nodes/{NODE_ID}"), timeout=10)
            return node if node.applied_rule_version == version else None

        # node state reaches the store up to [sync] node_write_interval after the ACK
        node = _eventually(acked)
        assert node and dict(node.labels) == {"site": "lab"}
        metrics = _eventually(lambda: _metrics(cluster.metrics_port, "breakwater_controller_rule_version")
                              == version)
        assert metrics, _metrics(cluster.metrics_port, "breakwater_controller_rule_version")
        assert _metrics(cluster.metrics_port, "breakwater_controller_connected") == 1

        # SIGHUP with new labels: the agent registers again, keeping its rules
        mark = len(agent.logs())
        cluster.write_config(site="lab2")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_for("the new registration", lambda e: e.get("event") == "controller_connected", after=mark)
        assert _eventually(lambda: dict(node_service_pb2_grpc.NodeServiceStub(channel).GetNode(
            node_service_pb2.GetNodeRequest(name=f"nodes/{NODE_ID}"), timeout=10).labels) == {"site": "lab2"})
        assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: True}
        cluster.write_config()

    # the agent's local API: the controller rule is there, read-only; a manual rule of its own
    with grpc.insecure_channel(f"127.0.0.1:{cluster.api_port}") as channel:
        local = rule_service_pb2_grpc.RuleServiceStub(channel)
        listed = {r.name: r for r in local.ListRules(rule_service_pb2.ListRulesRequest(), timeout=10).rules}
        assert listed["rules/block-lab"].origin == rule_pb2.RULE_ORIGIN_CONTROLLER
        with pytest.raises(grpc.RpcError) as info:
            local.DeleteRule(rule_service_pb2.DeleteRuleRequest(name="rules/block-lab"), timeout=10)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        local.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="local-block", rule=_drop_rule(LOCAL)),
                         timeout=20)
        assert topo.dropped(BLOCKED, LOCAL, count=COUNT) == {BLOCKED: True, LOCAL: True}
        local.DeleteRule(rule_service_pb2.DeleteRuleRequest(name="rules/local-block"), timeout=20)
        assert topo.dropped(LOCAL, count=COUNT) == {LOCAL: False}
        # its events and telemetry, for this node
        events = event_service_pb2_grpc.EventServiceStub(channel).ListEvents(
            event_service_pb2.ListEventsRequest(filter='rule.rule_id = "local-block"'), timeout=10).events
        assert [(e.rule.kind, e.node) for e in events] == [
            (event_pb2.RULE_EVENT_KIND_DELETED, f"nodes/{NODE_ID}"),
            (event_pb2.RULE_EVENT_KIND_CREATED, f"nodes/{NODE_ID}")]
        telemetry = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        stats = telemetry.GetStats(telemetry_service_pb2.GetStatsRequest(node=f"nodes/{NODE_ID}"),
                                   timeout=10)
        assert stats.actions.dropped.packets >= 2 * COUNT and stats.nodes_reporting == 1
        top = telemetry.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(), timeout=10).top_talkers
        blocked = next(t for t in top if t.address == BLOCKED)
        assert blocked.counters.drops >= 2 * COUNT
        with pytest.raises(grpc.RpcError) as info:
            telemetry.GetStats(telemetry_service_pb2.GetStatsRequest(node="nodes/someone-else"), timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND

    # ... and the controller got them
    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        def reported() -> list[Any]:
            return list(event_service_pb2_grpc.EventServiceStub(channel).ListEvents(
                event_service_pb2.ListEventsRequest(filter=f'rule.rule_id = "local-block" AND node = '
                                                           f'"nodes/{NODE_ID}"'), timeout=10).events)

        assert _eventually(lambda: len(reported()) == 2), reported()
        talkers = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)

        def seen() -> bool:
            request = telemetry_service_pb2.ListTopTalkersRequest(parent=f"nodes/{NODE_ID}")
            top = talkers.ListTopTalkers(request, timeout=10).top_talkers
            return any(t.address == BLOCKED and t.counters.drops > 0 for t in top)

        assert _eventually(seen)

    # kill -9 the controller: the agent keeps enforcing
    ctl.kill()
    agent.wait_for("controller_disconnected", lambda e: e.get("event") == "controller_disconnected")
    assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: True}

    # restart the agent while the controller is down: it enforces the stored set from its first apply
    agent.kill()
    agent = cluster.agent()
    ready = agent.event("agent_ready")
    assert ready is not None
    assert ready["controller_version"] == version and ready["controller_rules"] == ["block-lab"]
    assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: True}
    assert agent.event("controller_connected") is None

    # the controller returns on its state: the agent resumes from its version; a deletion reaches it
    mark = len(agent.logs())
    cluster.controller()
    agent.wait_for("the reconnect", lambda e: e.get("event") == "controller_connected", timeout=60,
                   after=mark)
    connected = next(e for e in agent.logs()[mark:] if e.get("event") == "controller_connected")
    assert connected["resume_version"] == version
    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        rule_service_pb2_grpc.RuleServiceStub(channel).DeleteRule(
            rule_service_pb2.DeleteRuleRequest(name="rules/block-lab"), timeout=10)
    agent.wait_for("the deletion applied", lambda e: e.get("event") == "controller_rules_applied"
                   and e.get("rules") == 0, after=mark)
    assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: False}

    # a set that does not fit (one signature rule too many) is refused; the last good one stays
    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        rules = rule_service_pb2_grpc.RuleServiceStub(channel)
        again = rule_service_pb2.CreateRuleRequest(rule_id="block-again", rule=_drop_rule(BLOCKED))
        good = rules.CreateRule(again, timeout=10).version
        agent.wait_for("the rule applied", _applied(agent, good))
        many = [rule_service_pb2.CreateRuleRequest(rule_id=f"sig-{i}", rule=rule_pb2.Rule(
            match=rule_pb2.Match(protocol=17, dport=rule_pb2.Range(lo=20000 + i, hi=20000 + i)),
            action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP)))
            for i in range(DEFAULT_MAX_SIGNATURES + 1)]
        too_big = rules.BatchCreateRules(rule_service_pb2.BatchCreateRulesRequest(requests=many),
                                         timeout=30).rules[0].version
        nack = agent.wait_for("the NACK", lambda e: e.get("event") == "controller_rules_nacked", after=mark)
        assert (nack["version"], nack["last_good_version"], nack["code"]) == (
            too_big, good, "APPLY_ERROR_CODE_CAPACITY")
        nodes = node_service_pb2_grpc.NodeServiceStub(channel)

        def current() -> Any:
            return nodes.GetNode(node_service_pb2.GetNodeRequest(name=f"nodes/{NODE_ID}"), timeout=10)

        assert _eventually(lambda: current().last_error.code == rule_pb2.APPLY_ERROR_CODE_CAPACITY)
        assert current().applied_rule_version == good
        assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: True}
        # one fewer fits
        rules.DeleteRule(rule_service_pb2.DeleteRuleRequest(name="rules/sig-0"), timeout=10)
        assert _eventually(lambda: current().applied_rule_version > too_big, timeout=SYNC_SECONDS)
        assert not current().HasField("last_error")
    assert topo.dropped(BLOCKED, count=COUNT) == {BLOCKED: True}
    assert agent.proc.poll() is None
