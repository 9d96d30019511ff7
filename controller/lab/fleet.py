"""The fleet lab of ``breakwater lab run``: a scenario's namespaces, links
and addresses (:meth:`Fleet.build`), a real controller and one real agent
per edge (:meth:`Fleet.start`), and the record that lets ``breakwater lab
down`` remove a crashed run (:func:`down`)::

    clients 198.18.0.10..   proxies .200 (+pool)   reflectors .201   spoofer .202   bots .210.. (+pools)
          \\________________________|____________________|______________|_____________/
                                  bridge ix0 (internet namespace), 198.18.0.0/24
                   edge0 bw0 198.18.0.1              edge1 bw0 198.18.0.2          XDP + agent on bw0
                   edge0 bw1 198.18.3.1/30           edge1 bw1 198.18.3.5/30
                   origin0 198.18.3.2 (+ its part    origin1 198.18.3.6            HTTP + UDP services,
                   of the protected prefix, local)                                 the delivery counter
                   edge0 ctl0 198.19.255.2/30 ------ controller (ctl namespace) ---- edge1 ctl0 .6/30

Every address is in 198.18.0.0/15 and no namespace has a route out of the
lab (routes only to the lab's own prefixes). Spoofed sources get no route
back; real bots and proxies do, so their handshakes complete.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from .. import pki
from ..config import toml_document
from ..dataplane import attach as dataplane
from ..dataplane import build as program
from ..errors import from_os_error
from .agentproc import Agent
from .netns import Lab
from .scenario import CONTROL, INFRA, LAN, Scenario
from .topology import DemoError

__all__ = ["CONTROLLER_PORT", "EDGE_IN", "HOST_IF", "LAB_TAG", "RUN_DIR", "Fleet", "down"]

LOGGER = logging.getLogger("breakwater.lab")

LAB_TAG: Final = "xlab"  # namespaces are bwxlab<hex>-<role>: only this tool makes them
RUN_DIR: Final = Path("/run/breakwater-lab")  # one record per run, for `lab down`
EDGE_IN: Final = "bw0"
EDGE_OUT: Final = "bw1"
CONTROL_IF: Final = "ctl0"
HOST_IF: Final = "eth0"
CONTROLLER_PORT: Final = 9610
READY_SECONDS: Final = 120.0  # an agent's first start compiles the XDP program
ROLE_ADDR: Final = {"proxies": 200, "reflectors": 201, "spoofer": 202}
LAB_TELEMETRY_SECONDS: Final = 1.0  # the agents' telemetry reports and the controller's buckets
BOT_ADDR: Final = 210  # botnet i's namespace: 198.18.0.(210 + i)

SIZES: Final = {"deny_v4": 65536, "deny_v6": 4096, "deny_pfx_v4": 16384, "deny_pfx_v6": 4096,
                "src_v4": 262144, "src_v6": 4096, "rl_src": 65536, "dst_v4": 4096, "dst_v6": 1024}
"""Small maps (production: 1M-entry deny and source maps)."""


def _lan(host: int) -> str:
    return str(LAN.network_address + host)


@dataclass
class Fleet:
    """The lab of one scenario run; :meth:`close` removes all of it."""

    scenario: Scenario
    lab: Lab = field(default_factory=lambda: Lab(LAB_TAG))
    ns: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str] = field(default_factory=dict)  # edge i's ingress MAC: "edge0"
    workdir: Path = Path()
    pin_roots: list[Path] = field(default_factory=list)
    controller: Agent | None = None
    agents: list[Agent] = field(default_factory=list)
    mode: str = "enforce"  # the agents' mode: "monitor" plans and reports rules without applying them

    def __post_init__(self) -> None:
        self.workdir = Path(f"/tmp/breakwater-{self.lab.prefix}")
        self.pin_roots = [Path(f"/sys/fs/bpf/{self.lab.prefix}-edge{i}")
                          for i in range(self.scenario.topology.edges)]

    @property
    def record(self) -> Path:
        return RUN_DIR / f"{self.lab.prefix}.json"

    def botnet_ns(self, name: str) -> str:
        return self.ns[f"bot-{list(self.scenario.topology.botnets).index(name)}"]

    def _save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        pids = [p.proc.pid for p in (self.controller, *self.agents) if p is not None]
        self.record.write_text(json.dumps({
            "prefix": self.lab.prefix, "namespaces": list(self.lab.namespaces), "pids": pids,
            "pin_roots": [str(p) for p in self.pin_roots], "workdir": str(self.workdir),
            "interface": EDGE_IN}))

    # -- build --

    def build(self) -> None:
        topo = self.scenario.topology
        self.workdir.mkdir(mode=0o700)
        self._save()
        names = ["ctl", "ix", "clients", "proxies", "reflectors", "spoofer"]
        names += [f"bot-{i}" for i in range(len(topo.botnets))]
        names += [f"edge{i}" for i in range(topo.edges)] + [f"origin{i}" for i in range(topo.edges)]
        for name in names:
            self.ns[name] = self.lab.namespace(name)
            self._save()
        ix = self.ns["ix"]
        ports = []
        plen = LAN.prefixlen
        for i in range(topo.edges):
            edge = self.ns[f"edge{i}"]
            self.lab.veth((edge, EDGE_IN, f"{_lan(1 + i)}/{plen}"), (ix, f"ix-e{i}", None))
            ports.append(f"ix-e{i}")
            self.macs[f"edge{i}"] = self.lab.mac(edge, EDGE_IN)
        senders = {"clients": _lan(5), **{r: _lan(h) for r, h in ROLE_ADDR.items()},
                   **{f"bot-{i}": _lan(BOT_ADDR + i) for i in range(len(topo.botnets))}}
        for role, addr in senders.items():
            self.lab.veth((self.ns[role], HOST_IF, f"{addr}/{plen}"), (ix, f"ix-{role}", None))
            ports.append(f"ix-{role}")
            self.macs[role] = self.lab.mac(self.ns[role], HOST_IF)
        self.lab.bridge(ix, "ix0", ports)
        for i in range(topo.edges):
            self.lab.add_fdb(ix, f"ix-e{i}", self.macs[f"edge{i}"])
            # the challenge's SYN-ACKs leave bw0 with XDP_TX: received by ix-e<i> only with NAPI on
            program.attach_pass(f"ix-e{i}", ix)
        for a in self.scenario.legit.addresses():
            self.lab.add_address(self.ns["clients"], HOST_IF, f"{a}/32")
        for n in range(topo.proxies.count):
            self.lab.add_address(self.ns["proxies"], HOST_IF, f"{topo.proxies.net.network_address + n}/32")
        for i, bot in enumerate(topo.botnets.values()):
            for n in range(bot.pool.count):
                self.lab.add_address(self.ns[f"bot-{i}"], HOST_IF, f"{bot.pool.net.network_address + n}/32")
        # senders reach each edge's part of the protected prefix through that edge
        for role in senders:
            for i in range(topo.edges):
                self.lab.add_route(self.ns[role], str(topo.edge_net(i)), _lan(1 + i))
                self.lab.add_neighbour(self.ns[role], HOST_IF, _lan(1 + i), self.macs[f"edge{i}"])
        for i in range(topo.edges):
            self._edge(i, senders)
        self._control()
        self._save()

    def _edge(self, i: int, senders: dict[str, str]) -> None:
        topo = self.scenario.topology
        edge, origin = self.ns[f"edge{i}"], self.ns[f"origin{i}"]
        link = list(INFRA.subnets(new_prefix=30))[i]
        e_addr, o_addr = str(link.network_address + 1), str(link.network_address + 2)
        self.lab.veth((edge, EDGE_OUT, f"{e_addr}/30"), (origin, HOST_IF, f"{o_addr}/30"))
        self.lab.sysctl(edge, "net.ipv4.ip_forward", 1)
        for where, ifname in ((edge, EDGE_IN), (origin, HOST_IF)):
            for conf in ("all", "default", ifname):  # spoofed sources have no route back
                self.lab.sysctl(where, f"net.ipv4.conf.{conf}.rp_filter", 0)
        part = topo.edge_net(i)
        self.lab.add_route(edge, str(part), o_addr)
        self.lab.add_neighbour(edge, EDGE_OUT, o_addr, self.lab.mac(origin, HOST_IF))
        self.lab.add_neighbour(origin, HOST_IF, e_addr, self.lab.mac(edge, EDGE_OUT))
        # answers to real sources: the bots' and proxies' pools through their namespaces
        for j, bot in enumerate(topo.botnets.values()):
            if bot.pool.count:
                self.lab.add_route(edge, str(bot.pool.net), senders[f"bot-{j}"])
        self.lab.add_route(edge, str(topo.proxies.net), senders["proxies"])
        # the origin answers for its whole part of the protected prefix (carpet bombing lands)
        # and sends everything else of the lab back through its edge
        with IPRoute(netns=origin) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.route("add", dst=str(part), type="local", scope=254, oif=lo, table=255)
            except NetlinkError as exc:
                raise from_os_error(int(exc.code), f"local route {part} in {origin}") from exc
        for net in ("198.18.0.0/16", "198.19.0.0/16"):
            self.lab.add_route(origin, net, e_addr)

    def _control(self) -> None:
        for i in range(self.scenario.topology.edges):
            link = list(CONTROL.subnets(new_prefix=30))[i]
            self.lab.veth((self.ns[f"edge{i}"], CONTROL_IF, f"{link.network_address + 2}/30"),
                          (self.ns["ctl"], f"n{i}", f"{link.network_address + 1}/30"))

    def check_no_route_out(self) -> None:
        """Every route in every namespace is a link's own or one of the lab's
        prefixes: none is a default route, none leads outside 198.18.0.0/15."""
        lab_net = ipaddress.IPv4Network("198.18.0.0/15")
        for ns in self.lab.namespaces:
            with IPRoute(netns=ns) as ipr:
                for family in (socket.AF_INET, socket.AF_INET6):
                    for route in ipr.get_routes(family=family, table=254):
                        dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
                        if family == socket.AF_INET6:
                            if route.get_attr("RTA_GATEWAY") is not None or plen == 0:
                                raise DemoError(f"{ns}: IPv6 route {dst}/{plen} leads out of the lab")
                            continue
                        net = ipaddress.IPv4Network(f"{dst}/{plen}", strict=False)
                        if plen == 0 or not net.subnet_of(lab_net):
                            raise DemoError(f"{ns}: route {net} leads out of the lab")

    # -- processes --

    def start(self) -> None:
        """The controller, then every agent (started together), each connected."""
        s = self.scenario
        ctl_dir = self.workdir / "controller"
        links = list(CONTROL.subnets(new_prefix=30))[: s.topology.edges]
        # The lab runs secure, as production should: a CA of its own, a controller
        # certificate for the addresses the agents dial, a node certificate per edge.
        ca, tls = self.workdir / "pki" / "ca", self.workdir / "pki" / "tls"
        pki.init_ca(ca, name=f"{self.lab.prefix}-ca")
        ctl = pki.issue(ca, tls, "controller", "controller",
                        hosts=[str(link.network_address + 1) for link in links])
        config = self.workdir / "controller.toml"
        config.write_text(toml_document({"listen": f"0.0.0.0:{CONTROLLER_PORT}", "state_dir": str(ctl_dir),
                                         "metrics": "", "heartbeat_timeout": 4, "tls_cert": str(ctl.cert),
                                         "tls_key": str(ctl.key), "tls_ca": str(ctl.ca),
                                         **_fleet_tables(s.fleet, monitor=self.mode == "monitor")}))
        self.controller = Agent.start(config, self.workdir / "controller.log", netns=self.ns["ctl"],
                                      command="controller")
        self._save()
        self.controller.wait_ready(30, "controller_ready")
        for i, link in enumerate(links):
            node = pki.issue(ca, tls, "node", f"edge-{i}")
            doc: dict[str, object] = {
                "interfaces": [{"name": EDGE_IN, "mode": "auto"}],
                "protected": [str(s.topology.protected)],
                "mode": self.mode,
                "interval": s.agent["interval"],
                "detach_on_exit": True,
                "state_dir": str(self.workdir / f"edge{i}"),
                "pin_root": str(self.pin_roots[i]),
                "metrics": "",
                "api": "",
                "controller": f"{link.network_address + 1}:{CONTROLLER_PORT}",
                "node_id": f"edge-{i}",
                "labels": {"lab": self.lab.prefix},
                "sizes": SIZES,
                "detect": s.agent["detect"],
                "mitigate": s.agent["mitigate"],
                "challenge": s.agent["challenge"],
                "tls": {"cert": str(node.cert), "key": str(node.key), "ca": str(node.ca)},
            }
            path = self.workdir / f"agent{i}.toml"
            path.write_text(toml_document(doc))
            self.agents.append(Agent.start(path, self.workdir / f"agent{i}.log", netns=self.ns[f"edge{i}"]))
            self._save()
        for a in self.agents:
            a.wait_ready(READY_SECONDS)
            a.wait_ready(30, "controller_connected")

    def xdp_modes(self) -> list[str]:
        return [str(next((d.get("mode") for d in a.events if d.get("event") == "interface_ready"), "?"))
                for a in self.agents]

    def close(self) -> list[str]:
        """Stop every process, remove every namespace, pin and file; return what is left."""
        for p in (*self.agents, self.controller):
            if p is not None:
                p.stop()
        left = _remove(self.lab.prefix, list(self.lab.namespaces), self.pin_roots, self.workdir)
        self.lab.namespaces.clear()
        left += [f"process {p.proc.pid}" for p in (*self.agents, self.controller)
                 if p is not None and p.proc.poll() is None]
        if not left:
            self.record.unlink(missing_ok=True)
        return left


def _fleet_tables(fleet: Mapping[str, Any], *, monitor: bool = False) -> dict[str, object]:
    """The controller's cluster-wide detection tables: the scenario's ``[fleet]``
    on lab-sized telemetry (1 s reports and buckets, so a few seconds' window
    means something), or nothing (the controller's defaults). In monitor mode
    it is off: the agents enforce controller rules in monitor mode too, and
    the baseline is what the waves do with no rule at all."""
    if monitor:
        return {"fleet": {"enabled": False}}
    if not fleet:
        return {}
    return {"sync": {"telemetry_interval": LAB_TELEMETRY_SECONDS},
            "telemetry": {"bucket_seconds": LAB_TELEMETRY_SECONDS}, "fleet": dict(fleet)}


def _remove(prefix: str, namespaces: list[str], pin_roots: list[Path], workdir: Path) -> list[str]:
    for ns in namespaces:  # the agents detach on exit; this is for when they could not
        if ns.endswith(tuple(f"-edge{i}" for i in range(4))):
            pin = next((p for p in pin_roots if p.name == f"{prefix}-{ns.rsplit('-', 1)[1]}"), None)
            with contextlib.suppress(Exception):
                dataplane.detach(EDGE_IN, pin_root=pin or pin_roots[0], netns=ns, purge=True, force=True)
    for ns in reversed(namespaces):
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(ns)
    for pin in pin_roots:
        with contextlib.suppress(Exception):
            dataplane.remove_pin_tree(pin)
    shutil.rmtree(workdir, ignore_errors=True)
    left = sorted(set(namespaces) & set(pyroute2_netns.listnetns()))
    return left + [str(p) for p in (*pin_roots, workdir) if p.exists()]


def _ours(pid: int) -> bool:
    """Whether ``pid`` is still a Breakwater daemon (not a reused pid)."""
    try:
        return b"controller.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def down() -> tuple[list[str], list[str]]:
    """``breakwater lab down``: remove every lab run recorded under
    :data:`RUN_DIR` (a crashed one's processes, namespaces, pins, files) and
    any namespace named like a lab's. Returns (removed, left behind)."""
    removed: list[str] = []
    left: list[str] = []
    records = sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []
    for rec in records:
        try:
            doc: dict[str, Any] = json.loads(rec.read_text())
        except (OSError, ValueError) as exc:
            left.append(f"{rec} ({exc})")
            continue
        for pid in doc.get("pids", []):
            if _ours(int(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)
                removed.append(f"process {pid}")
        time.sleep(0.2)
        namespaces = [str(n) for n in doc.get("namespaces", [])]
        gone = _remove(str(doc["prefix"]), namespaces, [Path(p) for p in doc.get("pin_roots", [])],
                       Path(str(doc.get("workdir", "/nonexistent"))))
        removed += [n for n in namespaces if n not in gone]
        left += gone
        if not gone:
            rec.unlink(missing_ok=True)
    stray = [n for n in pyroute2_netns.listnetns() if n.startswith(f"bw{LAB_TAG}")]
    for ns in stray:
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(ns)
            removed.append(ns)
    left += [n for n in stray if n in pyroute2_netns.listnetns()]
    return removed, left
