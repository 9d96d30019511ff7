"""Sequenced UDP flows: every datagram says who sent it, on which flow, with
which sequence number and when, so a test can tell per datagram whether it
arrived and bound the time its verdict was made.

Both ends run as ``traffic.Child`` processes in the lab namespaces, bounded
in count and time like the rest of ``controller.lab.traffic``.
"""

from __future__ import annotations

import multiprocessing as mp
import select
import socket
import struct
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event

from controller.lab import traffic

HEADER = struct.Struct("!IIQQ")
"""Payload header: sender id, flow index, sequence number, send time
(``time.monotonic_ns()`` just before ``sendto``)."""
FIELDS = ("sender", "flow", "seq", "t_send", "t_recv", "src", "port")
"""Columns of :attr:`Received.records`, one row per datagram received."""
READY_SECONDS = 10.0
STOP_SECONDS = 30.0

_CTX = mp.get_context("fork")  # the events must be inherited by traffic.Child's fork


@dataclass(frozen=True)
class Sent:
    """What one sender sent. ``t_send[seq * len(flows) + flow]`` is the send
    time of that datagram in ns, or -1 if ``sendto`` failed (with IP_RECVERR
    a datagram the device drops fails there, so -1 means "never left")."""

    sender: int
    flows: tuple[tuple[str, int], ...]  # (source address, destination port)
    rounds: int  # sequence numbers 0 .. rounds - 1 were attempted on every flow
    t_send: array  # type: ignore[type-arg]  # array("q")


def _send(flows: Sequence[tuple[str, int]], dst: str, count: int, pps: float, payload: int,
          max_seconds: float, sender: int) -> Sent:
    socks = []
    for src, _ in flows:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, traffic.IP_RECVERR, 1)
        s.bind((src, 0))
        socks.append(s)
    pad = b"S" * max(0, payload - HEADER.size)
    n = len(flows)
    t_send = array("q", [-1]) * (count * n)
    targets = [(dst, dport) for _, dport in flows]
    start = time.monotonic()
    deadline = start + min(max_seconds, traffic.MAX_SECONDS)
    rounds = 0
    for seq in range(count):
        for f in range(n):
            t = time.monotonic_ns()
            try:
                socks[f].sendto(HEADER.pack(sender, f, seq, t) + pad, targets[f])
                t_send[seq * n + f] = t
            except OSError:
                pass  # ENOBUFS: not sent, stays -1
            ahead = (seq * n + f + 1) / pps - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        rounds = seq + 1
        if time.monotonic() > deadline:
            break
    for s in socks:
        s.close()
    del t_send[rounds * n :]
    return Sent(sender, tuple(flows), rounds, t_send)


@dataclass
class Stream:
    """A background sender (IPv4): ``count`` rounds, each one datagram per
    flow in order, ``pps`` in total. Pinned to one CPU, its datagrams reach
    the receiving side's XDP program in send order."""

    child: traffic.Child

    @classmethod
    def start(cls, ns: str, flows: Sequence[tuple[str, int]], dst: str, count: int, pps: float, *,
              sender: int, max_seconds: float, cpu: int | None = None, payload: int = 32) -> Stream:
        return cls(traffic.Child.start(ns, _send, list(flows), dst, count, pps, payload, max_seconds,
                                       sender, cpu=cpu))

    def wait(self, timeout: float) -> Sent:
        sent: Sent = self.child.wait(timeout)
        return sent

    @property
    def running(self) -> bool:
        return self.child.running

    def close(self) -> None:
        self.child.close()


@dataclass(frozen=True)
class Received:
    """What a :class:`Sink` got: ``records`` is ``array("q")`` of rows of
    :data:`FIELDS` (``t_recv``: ``time.monotonic_ns()`` right after the read;
    ``src``: index into ``addresses``); ``short`` counts datagrams too short
    for a header."""

    records: array  # type: ignore[type-arg]
    addresses: tuple[str, ...]
    short: int


def _receive(bind: str, ports: Sequence[int], max_seconds: float, ready: Event, stop: Event) -> Received:
    socks: dict[socket.socket, int] = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Forced past rmem_max (root): a sink waiting for a CPU must not overflow.
        s.setsockopt(socket.SOL_SOCKET, traffic.SO_RCVBUFFORCE, traffic.SINK_RCVBUF)
        s.bind((bind, port))
        s.setblocking(False)
        socks[s] = port
    ready.set()
    rec = array("q")
    addresses: dict[str, int] = {}
    short = 0

    def drain(s: socket.socket) -> None:
        nonlocal short
        port = socks[s]
        while True:
            try:
                data, addr = s.recvfrom(2048)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            if len(data) < HEADER.size:
                short += 1
                continue
            src = addresses.setdefault(addr[0], len(addresses))
            rec.extend((*HEADER.unpack_from(data), now, src, port))

    deadline = time.monotonic() + min(max_seconds, traffic.MAX_SECONDS)
    while time.monotonic() < deadline and not stop.is_set():
        readable, _, _ = select.select(list(socks), [], [], traffic.POLL_SECONDS)
        for s in readable:
            drain(s)
    for s in socks:
        drain(s)
        s.close()
    return Received(rec, tuple(addresses), short)


@dataclass
class Sink:
    """A receiver of sequenced datagrams on several UDP ports of one address."""

    child: traffic.Child
    stop_event: Event

    @classmethod
    def start(cls, ns: str, bind: str, ports: Sequence[int], max_seconds: float) -> Sink:
        ready, stop = _CTX.Event(), _CTX.Event()
        child = traffic.Child.start(ns, _receive, bind, list(ports), max_seconds, ready, stop)
        deadline = time.monotonic() + READY_SECONDS
        while not ready.wait(traffic.POLL_SECONDS):
            if not child.running:
                child.wait(1)  # raises the child's error
            if time.monotonic() > deadline:
                child.close()
                raise TimeoutError("receiver did not start")
        return cls(child, stop)

    def stop(self, settle: float) -> Received:
        """Stop after ``settle`` seconds and return what was received."""
        time.sleep(settle)
        self.stop_event.set()
        received: Received = self.child.wait(STOP_SECONDS)
        return received

    def close(self) -> None:
        self.child.close()
