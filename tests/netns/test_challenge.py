"""The SYN challenge with real TCP clients: a spoofed SYN flood, then a
spoofed ACK flood, while clients open fresh connections (connect + HTTP
request + response) to a real server behind the edge::

    client ns                    edge ns (forwards)                 origin ns
    cl0 198.18.0.2/24  <-veth->  bw0 198.18.0.1   eo0 198.18.3.1  <-veth->  or0 198.18.3.2
    clients: 198.18.4.0/22       XDP: Breakwater                            HTTP server :80
    (AnyIP, a fresh source        chal_v4: 198.18.3.0/24 port 80
     per connection)
    flood: spoofed 198.18.128.0/17 through an AF_PACKET socket on cl0

Every connection comes from a new source address, so each one pays the
challenge (the worst case: a returning source passes at once). On veth a
frame the edge sends back with XDP_TX reaches the client namespace only when
cl0 runs NAPI: GRO is switched on there (``ethtool -K cl0 gro on``); a real
NIC needs nothing of the kind.

What is measured (printed as one JSON line): connections completed within
1 s and 3 s, flood packets that reached the origin (nftables counters in the
origin namespace), and the edge's reason counters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from controller.addresses import parse_prefix
from controller.dataplane import attach as dataplane
from controller.dataplane import counters, netlink
from controller.dataplane.challenge import Service, set_challenged
from controller.dataplane.reasons import Reason
from controller.lab import traffic
from controller.lab.netns import Lab
from controller.rules.model import Rule

from .agents import Agents, AgentSettings
from .lab import IFNAME, NETNS_SIZES, Topology

LOGGER = logging.getLogger("breakwater.tests.netns.challenge")

pytestmark = pytest.mark.netns

ORIGIN = "198.18.3.2"
PORT = 80
CLIENTS = "198.18.4.0/22"
SPOOFED = "198.18.128.0/17"
SYN_PPS = 200          # the service's thresholds: legit traffic (50/s) stays under them
ACK_PPS = 200
FLOOD_PPS = 3000       # modest: 2 shared cores
FLOOD_SECONDS = 10.0
RATE = 50.0            # legitimate connections per second
CLIENT_SECONDS = 8.0
TIMEOUT = 6.0          # per connection
BODY = b"x" * 1024
TCP_SYN, TCP_ACK = 0x02, 0x10


def _serve(addr: str, port: int, seconds: float) -> int:
    """An HTTP/1.0 server for ``seconds``; returns the requests answered."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()
            served += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, addr, port, backlog=4096)
        async with server:
            await asyncio.sleep(seconds)

    asyncio.run(main())
    return served


def _one(src: str, dst: str, port: int) -> float | None:
    start = time.monotonic()
    try:
        with socket.create_connection((dst, port), timeout=TIMEOUT, source_address=(src, 0)) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: origin\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        if not data.startswith(b"HTTP/1.0 200") or not data.endswith(BODY):
            return None
        return time.monotonic() - start
    except OSError:
        return None


def _clients(sources: list[str], dst: str, port: int, rate: float) -> list[float | None]:
    """One connection per source, ``rate`` a second; each one's time to the
    full response, None if it failed."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.monotonic()
        futures = []
        for i, src in enumerate(sources):
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            futures.append(pool.submit(_one, src, dst, port))
        return [f.result() for f in futures]


def _attach_pass(ns: str, ifname: str) -> None:
    """An XDP program that passes everything, on ``ifname`` in ``ns`` (the
    namespace's removal takes it away)."""
    from bcc import BPF

    prog = BPF(text=b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        netlink.attach_xdp(ifname, prog.load_func(b"xdp_pass", BPF.XDP).fd, "native", ns)
    finally:
        prog.cleanup()


@dataclass
class Site:
    lab: Lab
    client: str
    edge: str
    origin: str
    pin_root: Path
    edge_mac: str
    client_mac: str

    def nft(self, ns: str, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True,
                              capture_output=True, text=True).stdout

    def origin_counts(self) -> dict[str, int]:
        """Packets from the spoofed range that reached the origin, by kind."""
        out = json.loads(self.nft(self.origin, "-j", "list", "table", "ip", "bwcount"))
        got = {}
        for item in out["nftables"]:
            rule = item.get("rule")
            if rule:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                got[rule["comment"]] = int(counter["packets"])
        return got

    def reasons(self) -> dict[Reason, int]:
        with dataplane.open_maps(IFNAME, self.pin_root) as maps:
            return {r: t.packets for r, t in counters.reason_totals(maps).items() if t.packets}


def build_site(lab: Lab, pin_root: Path) -> Site:
    """The three namespaces, routes, the client's pass program and the
    origin's counters; nothing on the edge's bw0 yet."""
    client, edge, origin = lab.namespace("client"), lab.namespace("edge"), lab.namespace("origin")
    lab.veth((edge, IFNAME, "198.18.0.1/24"), (client, "cl0", "198.18.0.2/24"))
    lab.veth((edge, "eo0", "198.18.3.1/24"), (origin, "or0", f"{ORIGIN}/24"))
    lab.sysctl(edge, "net.ipv4.ip_forward", 1)
    lab.add_route(client, "198.18.3.0/24", "198.18.0.1")
    lab.add_route(edge, CLIENTS, "198.18.0.2")
    lab.add_route(origin, "198.18.0.0/16", "198.18.3.1")
    # every address of CLIENTS is local in the client namespace (AnyIP)
    subprocess.run(["ip", "-n", client, "route", "add", "local", CLIENTS, "dev", "lo"], check=True)
    # veth hands XDP_TX frames only to a peer whose receive side runs NAPI:
    # an XDP program on cl0 does that (switching GRO on did not, here)
    _attach_pass(client, "cl0")
    s = Site(lab, client, edge, origin, pin_root, lab.mac(edge, IFNAME), lab.mac(client, "cl0"))
    rules = (
        "add table ip bwcount\n"
        "add chain ip bwcount pre { type filter hook prerouting priority -300; policy accept; }\n"
        f'add rule ip bwcount pre ip saddr {SPOOFED} tcp flags & (syn|ack) == syn counter comment "syn"\n'
        f'add rule ip bwcount pre ip saddr {SPOOFED} tcp flags & (syn|ack) == ack counter comment "ack"\n'
        f'add rule ip bwcount pre ip saddr {CLIENTS} tcp flags & (syn|ack) == syn counter '
        'comment "legit_syn"\n'
    )
    subprocess.run(["ip", "netns", "exec", origin, "nft", "-f", "-"], input=rules, text=True, check=True)
    return s


@pytest.fixture
def site(lab: Lab, pin_root: Path) -> Iterator[Site]:
    """The site with the program attached and the service challenged directly."""
    s = build_site(lab, pin_root)
    edge = s.edge
    try:
        dataplane.attach(IFNAME, "native", NETNS_SIZES, pin_root=pin_root, netns=edge)
        with dataplane.open_maps(IFNAME, pin_root) as maps:
            set_challenged(maps, [Service(parse_prefix("198.18.3.0/24"), PORT, SYN_PPS, ACK_PPS, hold=5.0)])
        yield s
    finally:
        try:
            dataplane.detach(IFNAME, pin_root=pin_root, netns=edge, purge=True, force=True)
        except Exception:
            LOGGER.exception("detach from %s in %s failed", IFNAME, edge)


def _csum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def flood_frames(s: Site, flags: int, n: int) -> list[bytes]:
    """``n`` spoofed TCP frames, every one a distinct 4-tuple from SPOOFED
    (a flood that never repeats a tuple, as a random-spoofing botnet's),
    checksums valid. Built from bytes: scapy takes seconds for 30k frames."""
    rng = random.Random(10)
    net = ipaddress.IPv4Network(SPOOFED)
    eth = (bytes.fromhex(s.edge_mac.replace(":", "")) + bytes.fromhex(s.client_mac.replace(":", ""))
           + b"\x08\x00")
    dst = ipaddress.IPv4Address(ORIGIN).packed
    frames = []
    for i in range(n):
        src = net[1 + (i * 7919) % (net.num_addresses - 2)].packed
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        tcp = struct.pack("!HHIIBBHHH", 1024 + rng.randrange(64000), PORT, rng.getrandbits(32),
                          rng.getrandbits(32) if flags & 0x10 else 0, 5 << 4, flags, 64240, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
        frames.append(eth + ip + tcp)
    return frames


def under_flood(s: Site, flags: int, sources: list[str]) -> tuple[list[float | None], int]:
    """Run the clients while a spoofed flood of ``flags`` packets runs."""
    server = traffic.Child.start(s.origin, _serve, ORIGIN, PORT, FLOOD_SECONDS + TIMEOUT + 4)
    flood = None
    try:
        time.sleep(0.5)
        count = int(FLOOD_PPS * FLOOD_SECONDS)
        flood = traffic.RawFlood.start(s.client, "cl0", flood_frames(s, flags, count), count, FLOOD_PPS,
                                       FLOOD_SECONDS + 2)
        time.sleep(1.0)   # the meter arms within a window; the clients start under the flood
        times = traffic.run_in_netns(s.client, _clients, sources, ORIGIN, PORT, RATE,
                                     timeout=CLIENT_SECONDS + TIMEOUT + 30)
        sent = flood.wait(FLOOD_SECONDS + 30)
        server.wait(FLOOD_SECONDS + TIMEOUT + 30)
        return times, sent
    finally:
        if flood is not None:
            flood.close()
        server.close()


def shares(times: list[float | None]) -> dict[str, float]:
    done = [t for t in times if t is not None]
    n = len(times)
    ordered = sorted(done)
    return {
        "connections": n,
        "within_1s": sum(t <= 1.0 for t in done) / n,
        "within_3s": sum(t <= 3.0 for t in done) / n,
        "failed": n - len(done),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 1) if ordered else -1,
        "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99) - 1], 1) if ordered else -1,
    }


def client_sources(offset: int) -> list[str]:
    net = ipaddress.IPv4Network(CLIENTS)
    count = int(RATE * CLIENT_SECONDS)
    return [str(net[offset + i + 1]) for i in range(count)]


def test_real_clients_connect_through_spoofed_syn_and_ack_floods(site: Site) -> None:
    # SYN flood: every connection from a fresh source
    times, sent = under_flood(site, TCP_SYN, client_sources(0))
    syn_phase = shares(times)
    reasons = site.reasons()
    origin = site.origin_counts()
    syn_phase |= {"flood_sent": sent, "flood_syn_at_origin": origin["syn"],
                  "challenged": reasons.get(Reason.DROP_CHALLENGE_SYN, 0),
                  "verified_answers": reasons.get(Reason.DROP_CHALLENGE_ANSWER, 0),
                  "passed_verified": reasons.get(Reason.PASS_VERIFIED, 0)}
    print(json.dumps({"phase": "syn_flood", **syn_phase}))
    assert syn_phase["within_3s"] >= 0.99, syn_phase
    # at most the SYNs of the window that armed the challenge reach the origin
    assert origin["syn"] <= 2 * SYN_PPS // 10, syn_phase
    assert syn_phase["challenged"] >= 0.9 * sent, syn_phase

    # ACK flood: new sources again; the first connection of each is challenged
    # while the destination is armed, so their ACKs come from verified sources
    time.sleep(6.0)   # the SYN flood's hold runs out
    before = dict(reasons)
    times, sent = under_flood(site, TCP_ACK, client_sources(1000 - int(RATE * CLIENT_SECONDS)))
    ack_phase = shares(times)
    reasons = site.reasons()
    origin = site.origin_counts()
    ack_phase |= {"flood_sent": sent, "flood_ack_at_origin": origin["ack"],
                  "unverified_dropped": reasons.get(Reason.DROP_UNVERIFIED, 0)
                  - before.get(Reason.DROP_UNVERIFIED, 0)}
    print(json.dumps({"phase": "ack_flood", **ack_phase}))
    assert ack_phase["within_3s"] >= 0.99, ack_phase
    assert origin["ack"] <= 2 * ACK_PPS // 10, ack_phase
    assert ack_phase["unverified_dropped"] >= 0.9 * sent, ack_phase


# -- the agent as a process: [[challenge]] in its configuration, detection on ----------

AGENT_SETTINGS = AgentSettings(
    interval=0.5,
    protected=("198.18.3.0/24",),
    detect={"start_intervals": 2, "syn": {"pps": 1000.0}, "ack": {"pps": 1000.0},
            "source_pps": 50_000.0},
    extra={"challenge": [{"prefix": "198.18.3.0/24", "ports": [PORT], "syn_pps": SYN_PPS,
                          "ack_pps": ACK_PPS, "hold": 5.0}]},
)


@pytest.fixture
def agent_site(lab: Lab, pin_root: Path, tmp_path: Path) -> Iterator[tuple[Site, Agents]]:
    """The site with an agent process managing bw0 (the lab's agent tests'
    :class:`Agents`); every process killed, bw0 detached, pins purged at teardown."""
    s = build_site(lab, pin_root)
    started = Agents(Topology(lab, s.edge, s.client), pin_root, tmp_path, AGENT_SETTINGS)
    try:
        yield s, started
    finally:
        started.kill_all()
        try:
            dataplane.detach(IFNAME, pin_root=pin_root, netns=s.edge, purge=True, force=True)
        except Exception:
            LOGGER.exception("detach from %s in %s failed", IFNAME, s.edge)


def agent_phase(site: Site, agents: Agents, flags: int, sources: list[str]) -> tuple[
        dict[str, object], list[Rule]]:
    """Real clients under a spoofed flood of ``flags`` packets while the
    agent runs: their figures and every automatic rule it put in force."""
    before = site.reasons()
    with agents.watching_auto_rules() as seen:
        times, sent = under_flood(site, flags, sources)
    reasons = site.reasons()
    moved = {r.name.lower(): n - before.get(r, 0) for r, n in reasons.items() if n != before.get(r, 0)}
    rules = list(seen.values())
    phase: dict[str, object] = {**shares(times), "flood_sent": sent, "origin": site.origin_counts(),
                                "reasons": moved, "rules": {r.id: r.match.to_dict() for r in rules}}
    return phase, rules


def test_agent_with_a_challenge_keeps_real_clients_through_spoofed_syn_and_ack_floods(
        agent_site: tuple[Site, Agents]) -> None:
    """The agent detects each flood and plans its rules; its victim-wide SYN
    and ACK ceilings leave the challenged port to the challenge, so real
    clients (handshake + GET, each from a fresh source: each pays the
    challenge) keep connecting, and none of them is named in a rule."""
    site, agents = agent_site
    agents.start()
    clients = ipaddress.IPv4Network(CLIENTS)
    for name, flags, offset, reason in (
            ("syn", TCP_SYN, 0, "drop_challenge_syn"),
            ("ack", TCP_ACK, 1000 - int(RATE * CLIENT_SECONDS), "drop_unverified")):
        phase, rules = agent_phase(site, agents, flags, client_sources(offset))
        print(json.dumps({"phase": f"agent_{name}_flood", **phase}))
        assert cast("float", phase["within_3s"]) >= 0.99, phase
        moved = cast("dict[str, int]", phase["reasons"])
        assert moved.get(reason, 0) >= 0.9 * cast("int", phase["flood_sent"]), phase
        # the agent saw the attack and planned for it, with no ceiling on the
        # challenged port, and no real client named anywhere
        ceilings = [r for r in rules if r.id.startswith(f"auto-{name}-")]
        assert ceilings, phase
        for rule in ceilings:
            assert rule.match.dport is not None and PORT not in rule.match.dport, rule
        assert not [r.id for r in rules for src in r.match.src if src.network.overlaps(clients)], phase
        time.sleep(6.0)   # the challenge's hold runs out between the floods
