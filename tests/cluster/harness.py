"""A controller and three agents as real processes, each in its own network
namespace, for the cluster tests::

                            controller namespace
                 breakwater controller, 0.0.0.0:9610 (gRPC)
                 tests/cluster/relay.py: unix:/tmp/bw-cl-*/api.sock -> 127.0.0.1:9610
               n0 198.19.0.1/30    n1 198.19.0.5/30    n2 198.19.0.9/30
                      |                   |                   |      control links
               ctl0 198.19.0.2/30  ctl0 198.19.0.6/30  ctl0 198.19.0.10/30
          edge0 namespace          edge1 namespace          edge2 namespace
          agent edge-a1 (site=a)   agent edge-a2 (site=a)   agent edge-b1 (site=b)
          bw0: XDP native          bw0: XDP generic         bw0: XDP generic
                 |                        |                        |
          client0 namespace        client1 namespace        client2 namespace

Each node's data link (bw0 / cl0) is the netns lab's (``tests/netns/lab.py``:
the same addresses in every pair, 198.18.0.1 the edge, 198.18.0.2-.4 and .20
the client's sources), so one source address can hit all three nodes, as
one attacker hits three edge servers. Every agent process runs inside its
edge namespace (``nsenter --net``, which leaves the mount namespace, and so
the BPF filesystem, alone) and reaches the controller over its own control
link only: setting ``ctl0`` down cuts exactly that agent off. The
controller runs inside its namespace; the test reaches its API through the
relay's Unix socket (a path, which no network namespace hides), and runs
the CLI inside the namespace. No namespace has a route beyond its links.

With ``ClusterSettings(ha=True)`` the controller namespace holds one etcd
member (127.0.0.1:2379 there) and two controllers over it, on 9610 and
9611; every agent lists both, 9610 first, and the relay reaches 9611.

Every process is started under ``setpriv --pdeathsig KILL`` (it dies with
the test process at worst) and SIGKILLed by the fixture; see ``conftest.py``
for the rest of the cleanup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import NETNS_RUN_DIR

from breakwater.v1 import node_pb2, rule_pb2
from controller.agent.state import Store
from controller.api.client import ApiClient
from controller.config import toml_document
from controller.dataplane import attach as dataplane
from controller.dataplane import counters
from controller.lab.netns import Lab
from tests.netns.lab import IFNAME, NETNS_SIZES, DaemonProc, Topology, build_topology, detach_quietly

REPO = Path(__file__).resolve().parents[2]
PORT = 9610
"""The controller's gRPC port, inside its namespace."""
CONTROL_NET = "198.19.0"
"""Node i's control link is CONTROL_NET.4i/30: .4i+1 the controller's end, .4i+2 the agent's."""
CONTROL_IFNAME = "ctl0"
"""A node's control interface, in its edge namespace."""
READY_SECONDS = 90.0  # an agent's first start compiles the program
SYNC_SECONDS = 20.0
CLI_SECONDS = 30.0
ETCD_PORT = 2379
"""etcd's client port inside the controller namespace (``ha`` settings)."""
RELAY_SECONDS = 900.0
"""The relay exits by itself after this long."""
API_ACTOR = "cluster-test"
CLI_ACTOR = "soc-alice"


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    labels: Mapping[str, str]
    mode: str
    """XDP attach mode of its bw0."""


NODES = (
    NodeSpec("edge-a1", {"site": "a"}, "native"),
    NodeSpec("edge-a2", {"site": "a"}, "generic"),
    NodeSpec("edge-b1", {"site": "b"}, "generic"),
)


@dataclass(frozen=True)
class ClusterSettings:
    """What a test chooses: controller.toml keys and tables over the
    cluster's own, the agents' ``[detect]`` and ``[sizes]`` keys."""

    controller: Mapping[str, object] = field(default_factory=dict)
    detect: Mapping[str, object] = field(default_factory=lambda: {"source_pps": 1_000_000.0})
    """No automatic rules unless a test wants them."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    interval: float = 0.5
    ha: bool = False
    """etcd and two controllers (ports :data:`PORT` and :data:`PORT` + 1) in
    the controller namespace instead of one over SQLite; the agents list
    both, the first first; the relay reaches the second."""


def drop_rule(src: str, *, selector: Mapping[str, str] | None = None, node: str = "") -> rule_pb2.Rule:
    """A rule dropping ``src`` (on every node, those with the labels of ``selector``, or node ``node``)."""
    rule = rule_pb2.Rule(match=rule_pb2.Match(src=[src]),
                         action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))
    if selector:
        rule.scope.node_selector.match_labels.update(selector)
    elif node:
        rule.scope.node = f"nodes/{node}"
    return rule


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("BREAKWATER_SERVER", "BREAKWATER_CLI_CONFIG", "BREAKWATER_STATE_DIR", "SUDO_USER"):
        env.pop(key, None)
    env["USER"] = CLI_ACTOR  # the CLI's x-breakwater-actor
    return env


def in_namespace(ns: str, args: Sequence[str]) -> list[str]:
    """``python args`` inside network namespace ``ns`` (only: the mount
    namespace stays, so bpffs is there), killed if the test process dies."""
    return ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net={NETNS_RUN_DIR}/{ns}", sys.executable,
            *args]


def set_link(ns: str, ifname: str, up: bool) -> None:
    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        assert found, f"no {ifname} in {ns}"
        ipr.link("set", index=found[0], state="up" if up else "down")


def assert_no_route_out(ns: str) -> None:
    """Every route in ``ns`` is a link's own: no gateway, no default route."""
    with IPRoute(netns=ns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=254):  # main
                dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
                assert plen > 0 and route.get_attr("RTA_GATEWAY") is None, \
                    f"{ns}: route {dst}/{plen} via {route.get_attr('RTA_GATEWAY')}"


def wait_for(pred: Callable[[], Any], what: str, timeout: float = SYNC_SECONDS, step: float = 0.2,
             show: Callable[[], object] | None = None) -> Any:
    """Poll ``pred`` until it returns something true; fail naming ``what``
    (and ``show()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s" + (f"; {show()}" if show else ""))
        time.sleep(step)


@dataclass
class Node:
    """One edge node: its namespaces, its agent's configuration and process."""

    index: int
    spec: NodeSpec
    topo: Topology
    pin_root: Path
    workdir: Path
    settings: ClusterSettings
    agent: DaemonProc | None = None
    started: list[DaemonProc] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def name(self) -> str:
        return f"nodes/{self.spec.node_id}"

    @property
    def controller_address(self) -> str:
        return f"{CONTROL_NET}.{4 * self.index + 1}"

    @property
    def address(self) -> str:
        return f"{CONTROL_NET}.{4 * self.index + 2}"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def write_config(self) -> Path:
        s = self.settings
        doc: dict[str, object] = {
            "interfaces": [{"name": IFNAME, "mode": self.spec.mode}],
            "protected": ["198.18.0.0/24"],
            "mode": "enforce",
            "interval": s.interval,
            "state_dir": str(self.state_dir),
            "pin_root": str(self.pin_root),
            "metrics": "",
            "api": "",
            "controller": ([f"{self.controller_address}:{PORT}", f"{self.controller_address}:{PORT + 1}"]
                           if s.ha else f"{self.controller_address}:{PORT}"),
            "tls": {"insecure": True},  # plaintext in the lab's own namespaces (the lab run is secure)
            "node_id": self.node_id,
            "labels": dict(self.spec.labels),
            "sizes": {**NETNS_SIZES.as_dict(), **s.sizes},
            "detect": dict(s.detect),
        }
        path = self.workdir / "agent.toml"
        path.write_text(toml_document(doc))
        return path

    def spawn(self) -> DaemonProc:
        """Start the agent (do not wait for it)."""
        config = self.write_config()
        err = self.workdir / f"agent{len(self.started)}.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen(in_namespace(self.topo.edge, ["-m", "controller.cli", "agent", "--config",
                                                                  str(config)]),
                                    cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=ferr,
                                    stdin=subprocess.DEVNULL)
        self.agent = DaemonProc(proc, err)
        self.started.append(self.agent)
        return self.agent

    def proc(self) -> DaemonProc:
        assert self.agent is not None, f"{self.node_id}: no agent started"
        return self.agent

    def mark(self) -> int:
        """The agent's log length now (for waits on what it logs after)."""
        return len(self.proc().logs())

    def wait_log(self, event: str, after: int = 0, timeout: float = SYNC_SECONDS,
                 pred: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        return self.proc().wait_for(f"{self.node_id}: {event}", lambda e: e.get("event") == event and pred(e),
                                    timeout, after)

    def kill(self) -> None:
        for p in self.started:
            with contextlib.suppress(Exception):
                p.kill()

    # -- the data plane --

    def source_drops(self, *addresses: str) -> dict[str, int]:
        """The data plane's drop counters of ``addresses``, and (key "") every policy drop."""
        with dataplane.open_maps(IFNAME, self.pin_root) as maps:
            sources = counters.read_sources(maps)
            reasons = counters.reason_totals(maps)
        out = {a: (row["drops"] if (row := sources.lookup(a)) else 0) for a in addresses}
        out[""] = sum(t.packets for r, t in reasons.items() if r.is_drop)
        return out

    def dropped(self, *sources: str) -> dict[str, bool]:
        """Which of ``sources`` this node drops, seen at the receiver and in
        the data plane's counters, which must agree exactly: a dropped
        source's drop counter grows by what it sent, a passed one's not at
        all, and nothing else is dropped meanwhile."""
        before = self.source_drops(*sources)
        sent, verdicts = self.topo.verdicts(sources)
        after = self.source_drops(*sources)
        grew = {a: after[a] - before[a] for a in after}
        expected = {a: sent[a] if verdicts[a] else 0 for a in sources}
        expected[""] = sum(n for a, n in expected.items() if a)
        assert grew == expected, f"{self.node_id}: drop counters grew by {grew}, expected {expected}"
        return verdicts

    def auto_rules(self) -> list[str]:
        """Ids of the automatic rules the agent has in force (its local detection's)."""
        with Store.open(self.state_dir, readonly=True) as store:
            return [r.id for r in store.auto_rules(IFNAME)]

    def local_attacks(self) -> list[dict[str, Any]]:
        """The attack events the agent logged."""
        with Store.open(self.state_dir, readonly=True) as store:
            return [e.to_dict() for e in store.events(1000)]


@dataclass
class Cluster:
    """The controller namespace, three nodes, and the processes in them."""

    lab: Lab
    ctl: str
    nodes: list[Node]
    workdir: Path
    api_socket: Path
    """The relay's end of the API (its path must stay under 108 bytes)."""
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    controller: DaemonProc | None = None
    relay: DaemonProc | None = None
    started: list[DaemonProc] = field(default_factory=list)
    controllers: list[DaemonProc] = field(default_factory=list)
    """Every controller started, in order (``ha``: the first is the leader at start)."""
    etcd: DaemonProc | None = None

    @classmethod
    def build(cls, lab: Lab, workdir: Path, api_socket: Path, pin_roots: Sequence[Path]) -> Cluster:
        """The namespaces and links (no process yet)."""
        ctl = lab.namespace("ctl")
        nodes = []
        for i, spec in enumerate(NODES):
            topo = build_topology(lab, f"edge{i}", f"client{i}")
            node_dir = workdir / spec.node_id
            node_dir.mkdir()
            node = Node(i, spec, topo, pin_roots[i], node_dir, ClusterSettings())
            lab.veth((topo.edge, CONTROL_IFNAME, f"{node.address}/30"),
                     (ctl, f"n{i}", f"{node.controller_address}/30"))
            nodes.append(node)
        for ns in lab.namespaces:
            assert_no_route_out(ns)
        return cls(lab, ctl, nodes, workdir, api_socket)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "controller"

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    # -- processes --

    def _spawn(self, name: str, args: Sequence[str]) -> DaemonProc:
        err = self.workdir / f"{name}{len(self.started)}.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen(in_namespace(self.ctl, args), cwd=REPO, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=ferr, stdin=subprocess.DEVNULL)
        p = DaemonProc(proc, err)
        self.started.append(p)
        return p

    def write_controller_config(self, index: int = 0) -> Path:
        doc: dict[str, object] = {
            "listen": f"0.0.0.0:{PORT + index}",
            "insecure": True,  # plaintext in the lab's own namespaces (the lab run is secure)
            "state_dir": str(self.state_dir if index == 0 else self.workdir / f"controller{index}"),
            "metrics": "",
            "heartbeat_timeout": 4,
            **({"store": f"etcd://127.0.0.1:{ETCD_PORT}"} if self.settings.ha else {}),
            **self.settings.controller,
        }
        path = self.workdir / f"controller{index or ''}.toml"
        path.write_text(toml_document(doc))
        return path

    def start_controller(self, index: int = 0) -> DaemonProc:
        config = self.write_controller_config(index)
        proc = self._spawn("controller", ["-m", "controller.cli", "controller", "--config", str(config)])
        proc.wait_event("controller_ready", 30)
        self.controllers.append(proc)
        if index == 0:
            self.controller = proc
        return proc

    def start_etcd(self) -> None:
        """One etcd member in the controller namespace (its loopback, fixed
        ports: the namespace is the test's own), data under the workdir."""
        etcd = shutil.which("etcd")
        if etcd is None:
            reason = "needs the etcd binary (Debian etcd-server; `make setup`)"
            if os.environ.get("BREAKWATER_REQUIRE_BPF") == "1":  # CI: a missing tool fails, as in tests/store
                pytest.fail(f"BREAKWATER_REQUIRE_BPF=1 but this test {reason}", pytrace=False)
            pytest.skip(reason)
        err = self.workdir / "etcd.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net={NETNS_RUN_DIR}/{self.ctl}", etcd,
                 "--name", "m0", "--data-dir", str(self.workdir / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                 "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                 "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                 "--initial-cluster", f"m0=http://127.0.0.1:{ETCD_PORT + 1}"],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=ferr, stdin=subprocess.DEVNULL)
        self.etcd = DaemonProc(proc, err)
        self.started.append(self.etcd)
        probe = ("import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{ETCD_PORT}/health', timeout=1).read()")

        def healthy() -> bool:
            assert proc.poll() is None, f"etcd exited: {err.read_text()[-3000:]}"
            return subprocess.run(in_namespace(self.ctl, ["-c", probe]), capture_output=True,
                                  timeout=CLI_SECONDS, check=False).returncode == 0

        wait_for(healthy, "etcd healthy in the controller namespace", 30)

    def start_relay(self, port: int = PORT) -> None:
        self.relay = self._spawn("relay", ["-m", "tests.cluster.relay", str(self.api_socket), "127.0.0.1",
                                           str(port), str(RELAY_SECONDS)])
        self.relay.wait_event("relay_ready", 30)

    def start(self, settings: ClusterSettings | None = None) -> None:
        """Controller (``ha``: etcd, then two controllers, the first leading),
        relay, then the three agents (started together), each ready and
        registered."""
        if settings is not None:
            self.settings = settings
        for n in self.nodes:
            n.settings = self.settings
        if self.settings.ha:
            self.start_etcd()
            self.start_controller(0).wait_event("leader_elected", 30)
            self.start_controller(1)
            self.start_relay(PORT + 1)
        else:
            self.start_controller()
            self.start_relay()
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.proc().wait_event("agent_ready", READY_SECONDS)
            n.wait_log("controller_connected")

    def kill_controller(self) -> None:
        assert self.controller is not None
        self.controller.kill()

    def kill_all(self) -> None:
        for n in self.nodes:
            n.kill()
        for p in self.started:
            with contextlib.suppress(Exception):
                p.kill()

    def detach_all(self) -> None:
        for n in self.nodes:
            detach_quietly(n.topo, n.pin_root)

    # -- links --

    def cut(self, node: Node) -> None:
        """Take the node's control link down (its agent's only way to the controller)."""
        set_link(node.topo.edge, CONTROL_IFNAME, up=False)

    def heal(self, node: Node) -> None:
        set_link(node.topo.edge, CONTROL_IFNAME, up=True)

    # -- the API --

    @contextlib.contextmanager
    def api(self, reason: str = "") -> Iterator[ApiClient]:
        """A client of the controller's API (through the relay)."""
        client = ApiClient(f"unix:{self.api_socket}", timeout=10, actor=API_ACTOR, reason=reason)
        try:
            yield client
        finally:
            client.close()

    def cli(self, *args: str, port: int = PORT) -> Any:
        """``breakwater ARGS --server ... --json`` inside the controller's namespace; its JSON."""
        out = subprocess.run(in_namespace(self.ctl, ["-m", "controller.cli", *args, "--server",
                                                     f"127.0.0.1:{port}", "--json"]),
                             cwd=REPO, env=_env(), capture_output=True, timeout=CLI_SECONDS, check=False)
        assert out.returncode == 0, \
            f"breakwater {' '.join(args)}: exit {out.returncode}: {out.stderr.decode()}"
        return json.loads(out.stdout)

    def node_states(self) -> dict[str, node_pb2.Node]:
        """NodeService's view of every node, by node id."""
        with self.api() as api:
            return {n.name.removeprefix("nodes/"): n for n in api.list_nodes()}

    def wait_nodes(self, pred: Callable[[Mapping[str, node_pb2.Node]], bool], what: str,
                   timeout: float = SYNC_SECONDS) -> dict[str, node_pb2.Node]:
        """Poll NodeService until ``pred`` holds for the node states; fail with them otherwise."""
        last: dict[str, node_pb2.Node] = {}

        def check() -> bool:
            nonlocal last
            last = self.node_states()
            return pred(last)

        wait_for(check, what, timeout, show=lambda: describe(last))
        return last

    def wait_applied(self, versions: Mapping[str, int] | int, timeout: float = SYNC_SECONDS
                     ) -> dict[str, node_pb2.Node]:
        """Wait until every node named (an int: every node) is connected and
        has applied, and is targeted at, its version."""
        want = versions if isinstance(versions, Mapping) else {n.node_id: versions for n in self.nodes}

        def done(states: Mapping[str, node_pb2.Node]) -> bool:
            return all(nid in states and states[nid].connected
                       and states[nid].applied_rule_version == v == states[nid].target_rule_version
                       for nid, v in want.items())

        return self.wait_nodes(done, f"nodes at versions {dict(want)}", timeout)


def describe(states: Mapping[str, node_pb2.Node]) -> str:
    """One line per node state, for failure messages."""
    return "; ".join(
        f"{nid}: connected={n.connected} applied={n.applied_rule_version} target={n.target_rule_version} "
        f"health={node_pb2.NodeHealth.Name(n.health)} ({n.health_detail}) error={n.last_error.message!r}"
        for nid, n in sorted(states.items()))
