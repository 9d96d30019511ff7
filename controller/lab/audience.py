"""The lab's origins and audience: each origin's HTTP and UDP services
(:func:`serve`), what reaches it (:func:`count_delivered`), and the
legitimate users (:func:`audience`), counted the way an audience feels
them: a fresh TCP connection, a GET and its response within the timeout,
or a UDP request answered within it.

All of these run in forked children inside lab namespaces
(:class:`controller.lab.traffic.Child`) and stop by themselves at their
deadline. Times are ``time.monotonic()`` (one clock for every process).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from . import traffic
from .scenario import LAN

__all__ = ["BIN_SECONDS", "HTTP", "PROBE_IDENT", "UDP", "audience", "count_delivered", "serve"]

BIN_SECONDS: Final = 0.1  # resolution of the delivery counts
HTTP: Final = 0  # attempt kinds in the audience's record
UDP: Final = 1
PROBE_IDENT: Final = 0xAF00  # IPv4 identification of the delivery check's packets: + vector index
WAVE_IDENT: Final = 0xB000  # ... of a wave's crafted packets: + wave index (scenario.Wave.ident)
LAN_FIRST: Final = int(LAN.network_address)  # the lab's LAN: legitimate clients, never a crafted source
LAN_LAST: Final = int(LAN.broadcast_address)
RESPONSE: Final = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
                   b"Connection: close\r\n\r\nbreakwater ok\n")
ETH_P_IP: Final = 0x0800
PACKET_OUTGOING: Final = 4
SOL_PACKET: Final = 263
PACKET_STATISTICS: Final = 6


# -- the origin ------------------------------------------------------------------------------

async def _serve(addresses: Sequence[str], http_port: int, udp_port: int, seconds: float) -> dict[str, int]:
    counts = {"http": 0, "udp": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(RESPONSE)
            await writer.drain()
            counts["http"] += 1
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    class Echo(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data.startswith(b"BWQ"):  # the audience's requests; floods get no answer
                counts["udp"] += 1
                self.transport.sendto(b"BWA" + data[3:], addr)

    loop = asyncio.get_running_loop()
    servers = []
    transports = []
    for a in addresses:
        servers.append(await asyncio.start_server(handle, a, http_port, backlog=4096, reuse_address=True))
        t, _ = await loop.create_datagram_endpoint(Echo, local_addr=(a, udp_port))
        transports.append(t)
    await asyncio.sleep(seconds)
    for srv in servers:
        srv.close()
    for t in transports:
        t.close()
    return counts


def serve(addresses: Sequence[str], http_port: int, udp_port: int, seconds: float) -> dict[str, int]:
    """The origin's services on ``addresses`` for ``seconds``: HTTP (any
    request answered 200) and a UDP echo of the audience's requests.
    Returns requests served by kind."""
    return asyncio.run(_serve(list(addresses), http_port, udp_port, min(seconds, traffic.MAX_SECONDS * 4)))


def count_delivered(ifname: str, t0: float, seconds: float, idents: int, proxies: tuple[int, int],
                    probes: int = 0) -> dict[str, Any]:
    """Count what reaches the origin on ``ifname`` per ``BIN_SECONDS`` bin
    from ``t0``: crafted flood packets by wave (IPv4 identification
    ``WAVE_IDENT + wave``, ``idents`` waves) and TCP SYNs from the proxies'
    range ``proxies`` (first, last address as integers); and, at any time,
    the delivery check's packets (``PROBE_IDENT + k``, ``probes`` kinds).
    Packets from the lab's LAN (the legitimate users, whose own
    identifications can take those values) are never counted.
    Returns ``{"waves": array[idents, bins], "proxy_syn": array[bins],
    "probes": array[probes], "drops": n}``."""
    bins = int(seconds / BIN_SECONDS) + 1
    waves = np.zeros((idents, bins), dtype=np.int64)
    proxy = np.zeros(bins, dtype=np.int64)
    probed = np.zeros(probes, dtype=np.int64)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.setsockopt(socket.SOL_SOCKET, traffic.SO_RCVBUFFORCE, traffic.SINK_RCVBUF)
    s.bind((ifname, ETH_P_IP))
    s.settimeout(traffic.POLL_SECONDS)
    lo, hi = proxies
    buf = bytearray(128)
    view = memoryview(buf)
    deadline = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        try:
            n, addr = s.recvfrom_into(buf, 128)
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING or n < 34:
            continue
        src = struct.unpack_from("!I", view, 26)[0]
        if LAN_FIRST <= src <= LAN_LAST:
            continue  # the legitimate users (and the lab's hosts): an identification of theirs may match
        ident = (buf[18] << 8) | buf[19]
        if 0 <= ident - PROBE_IDENT < probes:
            probed[ident - PROBE_IDENT] += 1
            continue
        b = int((time.monotonic() - t0) / BIN_SECONDS)
        if b < 0 or b >= bins:
            continue
        w = ident - WAVE_IDENT
        if lo <= src <= hi:
            if buf[23] == 6 and n >= 48 and (buf[47] & 0x12) == 0x02:
                proxy[b] += 1
        elif 0 <= w < idents:
            waves[w, b] += 1
    stats = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    s.close()
    _, drops = struct.unpack("II", stats)
    return {"waves": waves, "proxy_syn": proxy, "probes": probed, "drops": int(drops)}


# -- the audience ----------------------------------------------------------------------------

async def _audience(clients: Sequence[str], origins: Sequence[str], http_port: int, udp_port: int,
                    http_rate: float, udp_rate: float, timeout: float, seconds: float) -> npt.NDArray[Any]:
    rows: list[tuple[float, int, int, float]] = []
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def http_once(src: str, dst: str) -> None:
        t = time.monotonic()
        ok = 0
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(dst, http_port, local_addr=(src, 0))
                writer.write(f"GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n".encode())
                body = await reader.read()
                ok = int(body.startswith(b"HTTP/1.1 200"))
        except (TimeoutError, OSError):
            pass
        finally:
            if writer is not None:
                writer.close()
        rows.append((t, HTTP, ok, time.monotonic() - t))

    pending: dict[int, tuple[float, asyncio.Future[None]]] = {}

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data.startswith(b"BWA") and len(data) >= 7:
                seq = struct.unpack_from("!I", data, 3)[0]
                got = pending.get(seq)
                if got is not None and not got[1].done():
                    got[1].set_result(None)

    socks = []
    for src in clients:
        tr, _ = await loop.create_datagram_endpoint(Client, local_addr=(src, 0))
        socks.append(tr)

    async def udp_once(k: int, seq: int, dst: str) -> None:
        t = time.monotonic()
        fut: asyncio.Future[None] = loop.create_future()
        pending[seq] = (t, fut)
        ok = 0
        try:
            socks[k].sendto(b"BWQ" + struct.pack("!I", seq) + b"." * 25, (dst, udp_port))
            await asyncio.wait_for(fut, timeout)
            ok = 1
        except (TimeoutError, OSError):
            pass
        pending.pop(seq, None)
        rows.append((t, UDP, ok, time.monotonic() - t))

    start = time.monotonic()
    end = start + seconds
    n_http = n_udp = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due_http = int((now - start) * http_rate)
        due_udp = int((now - start) * udp_rate)
        while n_http < due_http:
            task = asyncio.create_task(http_once(clients[n_http % len(clients)],
                                                 origins[n_http % len(origins)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n_http += 1
        while n_udp < due_udp:
            k = n_udp % len(clients)
            task = asyncio.create_task(udp_once(k, n_udp, origins[(n_udp // len(clients)) % len(origins)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n_udp += 1
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1)
    for tr in socks:
        tr.close()
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def audience(clients: Sequence[str], origins: Sequence[str], http_port: int, udp_port: int,
             http_rate: float, udp_rate: float, timeout: float, seconds: float) -> npt.NDArray[Any]:
    """The legitimate users for ``seconds``: ``http_rate`` fresh HTTP
    connections/s and ``udp_rate`` UDP exchanges/s, spread over the
    ``clients`` addresses and the ``origins``. Returns one row per attempt:
    (start time, kind ``HTTP``/``UDP``, success 0/1, seconds taken)."""
    return asyncio.run(_audience(list(clients), list(origins), http_port, udp_port, http_rate, udp_rate,
                                 timeout, min(seconds, traffic.MAX_SECONDS * 4)))
