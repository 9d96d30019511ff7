"""Bounded traffic for the lab: UDP senders and receivers inside namespaces.

Every generator stops by itself: after its packet count or its time limit,
whichever comes first. Each runs in a forked child that enters the lab
namespace, so the caller's namespace is never touched. A sender can be
pinned to one CPU (``cpu=``): on veth the receiving side's XDP program runs
on the sending CPU, so two senders pinned to different CPUs exercise the
program on both. Background senders report the interval they sent in
(``window``, ``time.monotonic()`` seconds, measured in the child).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import netns

__all__ = [
    "Child",
    "RawFlood",
    "UdpSink",
    "UdpStream",
    "run_in_netns",
    "send_raw",
    "send_udp",
    "udp_counters",
]

# Hard ceiling on any generator's run time, whatever the caller asks.
MAX_SECONDS = 120.0
# How often a receiver checks whether it was told to stop.
POLL_SECONDS = 0.05
# Receive buffer of a sink. Set with SO_RCVBUFFORCE (root), which ignores
# net.core.rmem_max: a small buffer overflows while the sink process waits
# for a CPU, and the lost datagrams would look like drops by the data plane.
SINK_RCVBUF = 32 << 20
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module lacks it
# With these set, a datagram the device or qdisc drops fails its sendto with
# ENOBUFS instead of being reported as sent (linux/in.h, linux/in6.h): send
# counts stay exact even when a veth drops under load.
IP_RECVERR = 11
IPV6_RECVERR = 25

_CTX = mp.get_context("fork")

Window = tuple[float, float]
"""(start, end) of a sender's run, ``time.monotonic()`` seconds."""


def _enter(ns: str | None, cpu: int | None = None) -> None:
    if ns:
        netns.setns(ns)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _child(conn: multiprocessing.connection.Connection, ns: str | None,
           fn: Callable[..., Any], args: tuple[Any, ...], cpu: int | None = None) -> None:
    try:
        _enter(ns, cpu)
        started = time.monotonic()
        value = fn(*args)
        conn.send(("ok", value, (started, time.monotonic())))
    except BaseException as exc:  # reported to the parent, which re-raises
        conn.send(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        conn.close()


def _result(conn: multiprocessing.connection.Connection, proc: mp.process.BaseProcess,
            timeout: float, what: str) -> tuple[Any, Window]:
    """Wait for a background child's ``(value, window)``; kill it on timeout."""
    if not conn.poll(timeout):
        proc.kill()
        raise TimeoutError(f"{what} did not finish")
    status, value, window = conn.recv()
    proc.join(5)
    if status != "ok":
        raise RuntimeError(value)
    return value, window


def run_in_netns(ns: str | None, fn: Callable[..., Any], *args: Any, timeout: float = MAX_SECONDS,
                 cpu: int | None = None) -> Any:
    """Run ``fn(*args)`` in a child inside ``ns`` (pinned to ``cpu`` if given)
    and return its result."""
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_child, args=(child, ns, fn, args, cpu), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"child in {ns} did not finish within {timeout:.0f}s")
        status, value, _ = parent.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise RuntimeError(f"in netns {ns}: {value}")
    return value


def _pace(sent: int, start: float, pps: float | None) -> None:
    if pps:
        ahead = sent / pps - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def _send_udp(sources: Sequence[str], dst: str, dport: int, count: int, pps: float | None,
              payload: int, max_seconds: float) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    socks = []
    for src in sources:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.bind((src, 0))
        socks.append(s)
    data = b"B" * payload
    sent: Counter[str] = Counter()
    start = time.monotonic()
    deadline = start + min(max_seconds, MAX_SECONDS)
    total = 0
    for i in range(count):
        for src, s in zip(sources, socks, strict=True):
            try:
                s.sendto(data, (dst, dport))
                sent[src] += 1
            except BlockingIOError:
                pass
            except OSError:
                pass  # ENOBUFS under load: the packet was not sent, and not counted
            total += 1
        _pace(total, start, pps)
        if i % 64 == 0 and time.monotonic() > deadline:
            break
    for s in socks:
        s.close()
    return dict(sent)


def send_udp(ns: str | None, sources: Sequence[str], dst: str, dport: int, count: int,
             pps: float | None = None, payload: int = 32, max_seconds: float = 30.0,
             cpu: int | None = None) -> dict[str, int]:
    """Send ``count`` datagrams from each source address (bound locally in ``ns``).

    ``pps`` paces the total rate. Returns datagrams sent per source."""
    result: dict[str, int] = run_in_netns(ns, _send_udp, list(sources), dst, dport, count, pps,
                                          payload, max_seconds, timeout=max_seconds + 30, cpu=cpu)
    return result


@dataclass
class _Background:
    """A bounded generator or receiver in a forked child inside a namespace
    (pinned to ``cpu`` if given); subclasses name what it runs."""

    proc: mp.process.BaseProcess
    conn: multiprocessing.connection.Connection
    window: Window | None = None  # set by wait(): when the child ran

    @classmethod
    def _spawn(cls: type[_B], ns: str | None, fn: Callable[..., Any], args: tuple[Any, ...],
               cpu: int | None) -> _B:
        parent, child = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(target=_child, args=(child, ns, fn, args, cpu), daemon=True)
        proc.start()
        child.close()
        return cls(proc, parent)

    def _wait(self, timeout: float, what: str) -> Any:
        value, self.window = _result(self.conn, self.proc, timeout, what)
        return value

    @property
    def running(self) -> bool:
        return self.proc.is_alive()

    def close(self) -> None:
        """Kill the child if it still runs (cleanup after a failure)."""
        _kill(self.proc, self.conn)


_B = TypeVar("_B", bound=_Background)


@dataclass
class UdpStream(_Background):
    """A sender running in the background (see :func:`send_udp`)."""

    @classmethod
    def start(cls, ns: str | None, sources: Sequence[str], dst: str, dport: int, count: int,
              pps: float | None = None, payload: int = 32, max_seconds: float = 30.0,
              cpu: int | None = None) -> UdpStream:
        return cls._spawn(ns, _send_udp, (list(sources), dst, dport, count, pps, payload, max_seconds),
                          cpu)

    def wait(self, timeout: float = MAX_SECONDS) -> dict[str, int]:
        result: dict[str, int] = self._wait(timeout, "sender")
        return result


def _set_rcvbuf(s: socket.socket, size: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:  # not root: capped at net.core.rmem_max
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _kill(proc: mp.process.BaseProcess, conn: multiprocessing.connection.Connection) -> None:
    """Stop a helper child now, whatever it is doing (for cleanup paths)."""
    if proc.is_alive():
        proc.kill()
    proc.join(5)
    conn.close()


def _sink(conn: multiprocessing.connection.Connection, ns: str | None, bind: str, port: int,
          max_seconds: float) -> None:
    try:
        _enter(ns)
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        _set_rcvbuf(s, SINK_RCVBUF)
        s.bind((bind, port))
        s.setblocking(False)
        conn.send(("ready", None))
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + min(max_seconds, MAX_SECONDS)
        while time.monotonic() < deadline:
            if conn.poll():
                break
            r, _, _ = select.select([s], [], [], POLL_SECONDS)
            if not r:
                continue
            while True:
                try:
                    _, addr = s.recvfrom(2048)
                except BlockingIOError:
                    break
                counts[addr[0]] += 1
        # drain what is already queued
        while True:
            try:
                _, addr = s.recvfrom(2048)
            except BlockingIOError:
                break
            counts[addr[0]] += 1
        conn.send(("ok", dict(counts)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class UdpSink:
    """A UDP receiver in a namespace counting datagrams per source address."""

    proc: mp.process.BaseProcess
    conn: multiprocessing.connection.Connection

    @classmethod
    def start(cls, ns: str | None, bind: str, port: int, max_seconds: float = 60.0) -> UdpSink:
        parent, child = _CTX.Pipe(duplex=True)
        proc = _CTX.Process(target=_sink, args=(child, ns, bind, port, max_seconds), daemon=True)
        proc.start()
        if not parent.poll(10):
            proc.kill()
            raise TimeoutError("receiver did not start")
        status, value = parent.recv()
        if status != "ready":
            raise RuntimeError(value)
        return cls(proc, parent)

    def stop(self, settle: float = 0.2) -> dict[str, int]:
        """Stop after ``settle`` seconds and return datagrams received per source."""
        time.sleep(settle)
        with contextlib.suppress(BrokenPipeError):  # it may have ended at its own deadline
            self.conn.send("stop")
        if not self.conn.poll(10):
            self.proc.kill()
            raise TimeoutError("receiver did not stop")
        status, value = self.conn.recv()
        self.proc.join(5)
        if status != "ok":
            raise RuntimeError(value)
        result: dict[str, int] = value
        return result

    @property
    def running(self) -> bool:
        return self.proc.is_alive()

    def close(self) -> None:
        """Kill the child if it still runs (cleanup after a failure)."""
        _kill(self.proc, self.conn)


def _send_raw(ifname: str, frames: Sequence[bytes], count: int, pps: float | None,
              max_seconds: float) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    start = time.monotonic()
    deadline = start + min(max_seconds, MAX_SECONDS)
    sent = 0
    n = len(frames)
    for i in range(count):
        try:
            s.send(frames[i % n])
            sent += 1
        except OSError:
            pass
        _pace(i + 1, start, pps)
        if i % 256 == 0 and time.monotonic() > deadline:
            break
    s.close()
    return sent


def send_raw(ns: str | None, ifname: str, frames: Sequence[bytes], count: int,
             pps: float | None = None, max_seconds: float = 30.0, cpu: int | None = None) -> int:
    """Send ``count`` crafted Ethernet frames (cycling through ``frames``) on
    ``ifname`` in ``ns``: for spoofed sources. Returns frames sent."""
    sent: int = run_in_netns(ns, _send_raw, ifname, list(frames), count, pps, max_seconds,
                             timeout=max_seconds + 30, cpu=cpu)
    return sent


@dataclass
class RawFlood(_Background):
    """:func:`send_raw` in the background."""

    @classmethod
    def start(cls, ns: str | None, ifname: str, frames: Sequence[bytes], count: int,
              pps: float | None = None, max_seconds: float = 30.0, cpu: int | None = None) -> RawFlood:
        return cls._spawn(ns, _send_raw, (ifname, list(frames), count, pps, max_seconds), cpu)

    def wait(self, timeout: float = MAX_SECONDS) -> int:
        return int(self._wait(timeout, "flood"))


def _snmp_udp() -> dict[str, int]:
    with open("/proc/net/snmp") as f:  # /proc/net is the calling task's namespace
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def udp_counters(ns: str | None) -> dict[str, int]:
    """The UDP counters of ``/proc/net/snmp`` in ``ns`` (``InDatagrams``,
    ``RcvbufErrors``, ``InCsumErrors``, ...): a receiver's own losses."""
    result: dict[str, int] = run_in_netns(ns, _snmp_udp, timeout=10)
    return result


@dataclass
class Child(_Background):
    """Any function run in the background in a namespace, the way the
    generators above run: for a test's own bounded senders and receivers.
    ``fn`` must stop by itself."""

    @classmethod
    def start(cls, ns: str | None, fn: Callable[..., Any], *args: Any, cpu: int | None = None) -> Child:
        return cls._spawn(ns, fn, args, cpu)

    def wait(self, timeout: float = MAX_SECONDS) -> Any:
        """``fn``'s result (its exception is re-raised as RuntimeError)."""
        return self._wait(timeout, "child")
