"""The demo's traffic: the three attack waves, the legitimate client and the
origin's service that counts what arrived.

The waves (``WAVES``), 8 s each, ~30 s in all with the lead-in:

1. **UDP flood** from 12 real sources (sockets) at 2,000 pps each: the
   agent drops the sources, aggregated to their /24;
2. **DNS reflection**: UDP from source port 53 from 2,000 reflectors (raw
   frames, :mod:`controller.lab.frames`): one rule per amplification port on the
   victim, a rate limit that escalates to a drop;
3. **spoofed SYN flood** to TCP/443, every packet from a new random source
   (96,000 of them): an aggregate SYN ceiling on the victim, since no source
   can be blocked.

The legitimate client sends 200 pps of numbered UDP datagrams to the
service for the whole run (none of the three signatures matches them); the
service on the origin records which arrived. Every generator is bounded in
packets and time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import multiprocessing.connection
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import frames, traffic
from .netns import Lab
from .topology import BOTNET, CLIENT, HOST_IF, SERVICE, SERVICE_PORT, DemoError

__all__ = [
    "LEGIT_PPS",
    "TOTAL_SECONDS",
    "WAVES",
    "Service",
    "Wave",
    "WaveRun",
    "flood_frames",
    "legit_client",
]

SYN_PORT: Final = 443
REFLECTOR_NET: Final = "198.18.64.0/18"
REFLECTORS: Final = 2000  # many moderate sources, but reflection explains them: not a many-source flood
REFLECTION_SPORT: Final = 53
SPOOF_NETS: Final = ("198.18.128.0/17", "198.19.0.0/16")  # 98,304 addresses: none used twice
SEED: Final = 2024

LEGIT_PPS: Final = 200.0
LEAD_SECONDS: Final = 2.0  # the client alone before the first wave
TAIL_SECONDS: Final = 2.0  # and after the last


@dataclass(frozen=True)
class Wave:
    """One attack vector of the demo."""

    key: str  # "udp", "reflection", "syn"
    title: str
    namespace: str  # the lab namespace it is sent from
    start: float  # seconds after the legitimate client started
    seconds: float
    pps: float
    sources: str  # what the sources are, for people
    vectors: tuple[str, ...]  # the detector's vectors that answer it

    @property
    def packets(self) -> int:
        return int(self.pps * self.seconds)

    @property
    def end(self) -> float:
        return self.start + self.seconds


WAVES: Final = (
    Wave("udp", "UDP flood", "botnet", LEAD_SECONDS, 8.0, 24_000.0,
         f"{len(BOTNET)} real sources in 198.18.1.0/24", ("source_rate", "udp")),
    Wave("reflection", "DNS reflection", "reflectors", LEAD_SECONDS + 9.5, 8.0, 20_000.0,
         f"{REFLECTORS} reflectors, UDP from port {REFLECTION_SPORT}", ("reflection",)),
    Wave("syn", "spoofed SYN flood", "spoofer", LEAD_SECONDS + 19.0, 8.0, 12_000.0,
         "a new random source per packet", ("syn",)),
)
TOTAL_SECONDS: Final = WAVES[-1].end + TAIL_SECONDS


def flood_frames(lab: Lab, ns: Mapping[str, str], edge_mac: str) -> dict[str, list[bytes]]:
    """The raw frames of the crafted waves (reflection, spoofed SYN), by wave
    key: built before the clock starts."""
    out: dict[str, list[bytes]] = {}
    reflectors = frames.addresses(REFLECTOR_NET, REFLECTORS, seed=SEED)
    out["reflection"] = frames.udp_frames(lab.mac(ns["reflectors"], HOST_IF), edge_mac,
                                          reflectors, SERVICE, SERVICE_PORT,
                                          sport=REFLECTION_SPORT)
    pool = np.concatenate([frames.addresses(net, ipaddress.ip_network(net).num_addresses)
                           for net in SPOOF_NETS])
    np.random.default_rng(SEED).shuffle(pool)
    syn = next(w for w in WAVES if w.key == "syn")
    out["syn"] = frames.tcp_frames(lab.mac(ns["spoofer"], HOST_IF), edge_mac,
                                   pool[: syn.packets], SERVICE, SYN_PORT, flags="S")
    return out


@dataclass
class WaveRun:
    """One wave during a run: its sender once launched, and what it sent."""

    wave: Wave
    sender: traffic.UdpStream | traffic.RawFlood | None = None
    sent: int = 0
    window: tuple[float, float] | None = None  # the sender's own (first, last) send time
    done: bool = False

    def launch(self, ns: str, crafted: Mapping[str, list[bytes]]) -> None:
        """Start the sender in namespace ``ns``: sockets from the bots, else
        the wave's frames from ``crafted``."""
        w = self.wave
        limit = w.seconds + 2
        if w.key == "udp":
            self.sender = traffic.UdpStream.start(ns, list(BOTNET), SERVICE, SERVICE_PORT,
                                                  count=w.packets // len(BOTNET), pps=w.pps,
                                                  max_seconds=limit)
        else:
            self.sender = traffic.RawFlood.start(ns, HOST_IF, crafted[w.key], w.packets, pps=w.pps,
                                                 max_seconds=limit)

    def collect(self) -> None:
        """The finished sender's count and send window."""
        assert self.sender is not None
        try:
            value = self.sender.wait(10)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"{self.wave.title}: the sender failed: {exc}") from exc
        self.sent = sum(value.values()) if isinstance(value, dict) else int(value)
        self.window = self.sender.window
        self.done = True

    def span(self, t0: float) -> tuple[float, float]:
        """The flood's (first, last) send time; planned from ``t0`` while it runs."""
        if self.window is not None:
            return self.window
        return t0 + self.wave.start, min(time.monotonic(), t0 + self.wave.end)


# -- the legitimate client and the service ------------------------------------------

LEGIT_PAYLOAD: Final = 32  # bytes; the first four carry the sequence number
LEGIT_MAX_LAG: Final = 0.02  # seconds behind schedule the client may catch up on


def legit_client(src: str, dst: str, port: int, count: int, pps: float,
                 max_seconds: float) -> npt.NDArray[np.float64]:
    """Send up to ``count`` numbered datagrams at a steady ``pps``; return
    each one's send time (``time.monotonic()``, the clock the demo samples
    with; NaN: not sent). Like a real client's stream it never catches up in
    a burst after a stall: a burst would look like a flood source."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, traffic.IP_RECVERR, 1)  # a local drop fails the send
    s.bind((src, 0))
    sent_at = np.full(count, np.nan)
    pad = b"L" * (LEGIT_PAYLOAD - 4)
    next_at = time.monotonic()
    deadline = next_at + min(max_seconds, traffic.MAX_SECONDS)
    for seq in range(count):
        now = time.monotonic()
        if now > deadline:
            break
        try:
            s.sendto(struct.pack("!I", seq) + pad, (dst, port))
            sent_at[seq] = now
        except OSError:
            pass  # not sent, not counted
        next_at = max(next_at + 1 / pps, now - LEGIT_MAX_LAG)
        wait = next_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    s.close()
    return sent_at


def _service(ctl: multiprocessing.connection.Connection, bind: str, port: int, client: str,
             count: int, max_seconds: float) -> dict[str, Any]:
    """The origin's UDP service: records which of the client's datagrams
    arrived and counts flood datagrams by wave. Answers ``"peek"`` on ``ctl``
    with the client's datagrams so far; stops on ``"stop"`` or at its deadline."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(PermissionError):  # not root: net.core.rmem_max
        s.setsockopt(socket.SOL_SOCKET, traffic.SO_RCVBUFFORCE, traffic.SINK_RCVBUF)
    s.bind((bind, port))
    s.setblocking(False)
    got = bytearray(count)
    legit = 0
    flood: Counter[str] = Counter()
    bots = set(BOTNET)

    def drain() -> None:
        nonlocal legit
        while True:
            try:
                data, (addr, sport) = s.recvfrom(2048)
            except BlockingIOError:
                return
            if addr == client and len(data) >= 4:
                seq = struct.unpack_from("!I", data)[0]
                if seq < count and not got[seq]:
                    got[seq] = 1
                    legit += 1
            elif sport == REFLECTION_SPORT:
                flood["reflection"] += 1
            elif addr in bots:
                flood["udp"] += 1
            else:
                flood["other"] += 1

    fds = [s.fileno(), ctl.fileno()]
    deadline = time.monotonic() + min(max_seconds, traffic.MAX_SECONDS)
    ctl.send("ready")
    while time.monotonic() < deadline:
        ready, _, _ = select.select(fds, [], [], traffic.POLL_SECONDS)
        if fds[0] in ready:
            drain()
        if fds[1] in ready:
            msg = ctl.recv()
            drain()
            if msg == "stop":
                break
            ctl.send(legit)
    drain()
    s.close()
    return {"received": bytes(got), "flood": dict(flood)}


@dataclass
class Service:
    """:func:`_service` in the origin namespace, with its control pipe."""

    child: traffic.Child
    ctl: multiprocessing.connection.Connection

    @classmethod
    def start(cls, ns: str, count: int, max_seconds: float) -> Service:
        ctl, theirs = multiprocessing.Pipe(duplex=True)
        child = traffic.Child.start(ns, _service, theirs, SERVICE, SERVICE_PORT, CLIENT, count, max_seconds)
        theirs.close()
        if not ctl.poll(10):
            child.close()
            raise DemoError("the origin's service did not start")
        ctl.recv()
        return cls(child, ctl)

    def peek(self) -> int:
        """The client's datagrams received so far."""
        self.ctl.send("peek")
        if not self.ctl.poll(5):
            raise DemoError("the origin's service stopped answering")
        return int(self.ctl.recv())

    def stop(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            self.ctl.send("stop")
        result: dict[str, Any] = self.child.wait(10)
        return result

    def close(self) -> None:
        self.child.close()
        self.ctl.close()
