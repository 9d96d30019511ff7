"""Known sources first, with the agent as a process: real UDP clients that
talked to the origin before a spoofed UDP flood keep being answered during
it, while the victim-wide UDP ceiling holds the flood (the namespaces are
:mod:`tests.netns.test_challenge`'s site)::

    client ns                    edge ns (forwards)                 origin ns
    cl0 198.18.0.2/24  <-veth->  bw0 198.18.0.1   eo0 198.18.3.1  <-veth->  or0 198.18.3.2
    UDP clients: 198.18.4.x      XDP: Breakwater + agent                    UDP echo :7000
    flood: spoofed UDP from 198.18.128.0/17 (every packet a new source) through AF_PACKET on cl0

The clients exchange datagrams with an echo server for a few seconds of
peacetime (the agent learns them), then the flood starts. What is measured
(one JSON line): the clients' answered share in peacetime and under the
flood, the flood packets that reached the origin (nftables counter there),
and the automatic rules the agent put in force.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.dataplane import attach as dataplane
from controller.lab import traffic
from controller.lab.netns import Lab

from .agents import Agents, AgentSettings
from .lab import IFNAME, Topology
from .test_challenge import CLIENTS, ORIGIN, SPOOFED, Site, _csum, build_site

pytestmark = pytest.mark.netns

PORT = 7000
CLIENT_COUNT = 4
CLIENT_PPS = 50.0          # each: 200 pps together, under the UDP threshold
PEACE_SECONDS = 4.0        # the clients talk before the flood
FLOOD_PPS = 3000           # modest: 2 shared cores
FLOOD_SECONDS = 10.0
CEILING_PPS = 200          # the victim-wide UDP ceiling: what the flood gets through
REPLY_WAIT = 1.0           # a datagram is answered when its echo is back within this
SETTINGS = AgentSettings(
    interval=0.5,
    protected=("198.18.3.0/24",),
    # the clients' few seconds of peacetime make them known (10 s by default)
    detect={"start_intervals": 2, "udp": {"pps": 1000.0}, "source_pps": 50_000.0, "known_min_seconds": 2.0},
    mitigate={"ceiling_pps": CEILING_PPS},
)


def _echo(addr: str, port: int, seconds: float) -> int:
    """Answer every datagram on ``addr:port`` for ``seconds``; returns how many."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        s.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                continue
            s.sendto(data, peer)
            answered += 1
    return answered


def _clients(sources: list[str], dst: str, port: int, pps: float, seconds: float) -> list[tuple[float, bool]]:
    """Each source sends ``pps`` datagrams/s to ``dst:port`` for ``seconds``;
    per datagram: its send time (from the start) and whether its echo came back."""
    socks = []
    sel = selectors.DefaultSelector()
    for i, src in enumerate(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    sent: dict[tuple[int, int], float] = {}
    back: set[tuple[int, int]] = set()
    start = time.monotonic()
    step = 1.0 / pps
    seq = 0
    try:
        while True:
            now = time.monotonic() - start
            if now >= seconds + REPLY_WAIT:
                break
            if now < seconds and now >= seq * step:
                for i, s in enumerate(socks):
                    try:
                        s.sendto(struct.pack("!II", i, seq) + b"x" * 56, (dst, port))
                        sent[(i, seq)] = now
                    except BlockingIOError:
                        sent[(i, seq)] = now  # counted as sent and lost
                seq += 1
            for key, _ in sel.select(timeout=min(step / 4, 0.005)):
                while True:
                    try:
                        data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    i, n = struct.unpack("!II", data[:8])
                    at = sent.get((i, n))
                    if at is not None and time.monotonic() - start - at <= REPLY_WAIT:
                        back.add((i, n))
    finally:
        for s in socks:
            s.close()
    return [(at, k in back) for k, at in sent.items()]


def flood_frames(site: Site, n: int) -> list[bytes]:
    """``n`` spoofed UDP frames to the origin, each from another source of SPOOFED."""
    net = ipaddress.IPv4Network(SPOOFED)
    eth = (bytes.fromhex(site.edge_mac.replace(":", "")) + bytes.fromhex(site.client_mac.replace(":", ""))
           + b"\x08\x00")
    dst = ipaddress.IPv4Address(ORIGIN).packed
    payload = b"\0" * 32
    frames = []
    for i in range(n):
        src = net[1 + (i * 7919) % (net.num_addresses - 2)].packed
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        udp = struct.pack("!HHHH", 20000 + i % 20000, PORT, 8 + len(payload), 0)  # no checksum (IPv4)
        frames.append(eth + ip + udp + payload)
    return frames


@pytest.fixture
def agent_site(lab: Lab, pin_root: Path, tmp_path: Path) -> Iterator[tuple[Site, Agents]]:
    site = build_site(lab, pin_root)
    site.nft(site.origin, "add", "rule", "ip", "bwcount", "pre", "ip", "saddr", SPOOFED, "meta", "l4proto",
             "udp", "counter", "comment", '"udp"')
    agents = Agents(Topology(lab, site.edge, site.client), pin_root, tmp_path, SETTINGS)
    try:
        yield site, agents
    finally:
        agents.kill_all()
        # teardown goes on whatever happens: the lab removes the namespace anyway
        with contextlib.suppress(Exception):
            dataplane.detach(IFNAME, pin_root=pin_root, netns=site.edge, purge=True, force=True)


@pytest.mark.parametrize("known_pps", [1000, 0], ids=["known-first", "shared-ceiling"])
def test_known_udp_clients_are_answered_through_a_spoofed_udp_flood(
        agent_site: tuple[Site, Agents], known_pps: int) -> None:
    """With known sources first the clients keep ≥ 99% of their answers; with
    it off (``known_per_source_pps = 0``, the baseline in the same lab) they
    share the ceiling with the flood and most of their datagrams are lost."""
    site, agents = agent_site
    agents.settings = SETTINGS.merged(mitigate={"known_per_source_pps": known_pps})
    agents.start()
    net = ipaddress.IPv4Network(CLIENTS)
    sources = [str(net[10 + i]) for i in range(CLIENT_COUNT)]
    total = PEACE_SECONDS + FLOOD_SECONDS + 1.0
    with agents.watching_auto_rules() as seen:
        server = traffic.Child.start(site.origin, _echo, ORIGIN, PORT, total + REPLY_WAIT + 4)
        flood = None
        try:
            time.sleep(0.5)
            clients = traffic.Child.start(site.client, _clients, sources, ORIGIN, PORT, CLIENT_PPS, total)
            time.sleep(PEACE_SECONDS)
            count = int(FLOOD_PPS * FLOOD_SECONDS)
            flood = traffic.RawFlood.start(site.client, "cl0", flood_frames(site, count), count, FLOOD_PPS,
                                           FLOOD_SECONDS + 5)
            sent = flood.wait(FLOOD_SECONDS + 30)
            results: list[tuple[float, bool]] = clients.wait(total + 30)
            server.wait(total + 30)
        finally:
            if flood is not None:
                flood.close()
            server.close()
    rules = list(seen.values())

    def share(lo: float, hi: float) -> float:
        window = [ok for at, ok in results if lo <= at < hi]
        return sum(window) / max(len(window), 1)

    at_origin = site.origin_counts()["udp"]
    known = [r for r in rules if r.id.startswith("auto-known-udp-")]
    figures: dict[str, Any] = {
        "peace_answered": share(0.5, PEACE_SECONDS),
        "flood_answered": share(PEACE_SECONDS, PEACE_SECONDS + FLOOD_SECONDS),
        "flood_sent": sent, "flood_at_origin": at_origin,
        "flood_dropped": 1 - at_origin / max(sent, 1),
        "rules": {r.id: {"match": r.match.to_dict(), "action": str(r.action)} for r in rules},
    }
    print(json.dumps({"test": "known_udp", "known_per_source_pps": known_pps, **figures}, default=str))
    assert figures["peace_answered"] >= 0.99, figures
    assert any(r.id.startswith("auto-udp-") for r in rules), figures
    if known_pps:
        # the ceiling is in force, with the clients let past it
        assert figures["flood_answered"] >= 0.99, figures
        assert known and {str(p.network.network_address) for r in known for p in r.match.src} >= set(sources)
    else:
        assert not known and figures["flood_answered"] < 0.9, figures
    # no client in a drop rule; the flood meets the ceiling (and detection's delay)
    clients_net = ipaddress.IPv4Network(CLIENTS)
    assert not [r.id for r in rules if r.action.kind == "drop"
                for p in r.match.src if p.network.overlaps(clients_net)], figures
    assert at_origin <= 0.5 * sent, figures
