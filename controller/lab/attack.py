"""A scenario wave's sender (:func:`launch`): crafted frames for the packet
vectors (sent from Python on an ``AF_PACKET`` socket, or by trafgen for a
wave with ``sender = "trafgen"``: higher rates), real TCP connections and
requests for ``http``.

Crafted waves are built inside the sender's child from the wave and the
edges' MACs (:func:`wave_frames`: every packet carries the wave's IPv4
identification, so the origin can tell waves apart), then sent on the
namespace's interface at the wave's rate, silent in the "off" parts of a
pulse. Every sender is bounded by its wave's packet count and its duration
(plus a small slack) and returns ``(sent, first send, last send)``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Final

from . import frames, traffic
from .scenario import VECTORS, Topology, Wave

__all__ = ["MAX_FRAMES", "PROBE_PACKETS", "PROBE_SOURCES", "TRAFGEN_FRAMES", "launch", "offered", "probe",
           "probe_frames", "trafgen_config", "wave_frames"]

MAX_FRAMES: Final = 65536  # frames built per wave; the sender cycles through them
SLACK_SECONDS: Final = 2.0
TRAFGEN_FRAMES: Final = 16384  # frames in a trafgen configuration (~0.8 s to parse); it cycles through them
TRAFGEN_PARSE_LEAD: Final = 1.0  # trafgen is started this long before the wave: it parses its frames first
# The delivery check: per crafted vector, PROBE_PACKETS packets from PROBE_SOURCES
# sources at 1/PROBE_GAP packets/s: under every detection threshold of the shipped
# scenarios (at 50 sources a vector and 500 pps it started a many-source attack).
PROBE_PACKETS: Final = 40
PROBE_SOURCES: Final = 8
PROBE_GAP: Final = 0.005


def _sources(wave: Wave, topo: Topology) -> frames.Addresses:
    seed = 1000 + wave.index
    if wave.vector == "reflection":
        return frames.addresses(str(topo.reflectors.net), wave.sources, seed=seed)
    if wave.spoof == "random":
        return frames.addresses(str(topo.spoofed.net), wave.sources, seed=seed)
    pool = topo.botnets[wave.botnet].pool
    if wave.spoof == "real":
        return frames.addresses(str(pool.net), wave.sources)  # the configured ones: the first `count`
    # spoofed from the pool: the addresses after the configured (real) ones
    return frames.addresses(str(pool.net), min(wave.sources, pool.net.num_addresses - pool.count),
                            offset=pool.count)


def wave_frames(wave: Wave, topo: Topology, src_mac: str, edge_macs: Sequence[str],
                ident: int | None = None) -> list[bytes]:
    """The wave's frames: each source once, cycling through the target's
    addresses (a carpet), each frame to the MAC of the edge serving its
    destination, with the wave's IPv4 identification (or ``ident``)."""
    sources = _sources(wave, topo)
    dsts = [str(a) for a in wave.target.hosts()] if wave.carpet else [str(wave.target.network_address)]
    per_dst: list[list[bytes]] = []
    for j, dst in enumerate(dsts):
        src = sources[j :: len(dsts)] if len(sources) >= len(dsts) else sources[[j % len(sources)]]
        src = src[: MAX_FRAMES // len(dsts) + 1]
        mac = edge_macs[topo.edge_of(ipaddress.IPv4Address(dst))]
        v = wave.vector
        ident = wave.ident if ident is None else ident
        if v in ("syn", "ack"):
            out = frames.tcp_frames(src_mac, mac, src, dst, wave.port, flags="S" if v == "syn" else "A",
                                   ident=ident)
        elif v == "udp":
            out = frames.udp_frames(src_mac, mac, src, dst, wave.port, ident=ident)
        elif v == "reflection":
            out = frames.udp_frames(src_mac, mac, src, dst, wave.port, sport=wave.sport, ident=ident)
        elif v == "icmp":
            out = frames.icmp_frames(src_mac, mac, src, dst, ident=ident)
        elif v == "gre":
            out = frames.gre_frames(src_mac, mac, src, dst, ident=ident)
        elif v == "fragment":
            out = frames.fragment_frames(src_mac, mac, src, dst, ident=ident)
        else:
            raise ValueError(f"{v} waves are not crafted frames")
        per_dst.append(out)
    interleaved = [f for group in itertools.zip_longest(*per_dst) for f in group if f is not None]
    return interleaved[:MAX_FRAMES]


def _flood(ifname: str, wave: Wave, topo: Topology, src_mac: str, edge_macs: Sequence[str],
           t0: float) -> tuple[int, float, float]:
    batch = wave_frames(wave, topo, src_mac, edge_macs)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    start = t0 + wave.start
    end = min(t0 + wave.end, time.monotonic() + wave.duration + SLACK_SECONDS)
    delay = start - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sent = 0
    first = last = 0.0
    period = wave.pulse.on + wave.pulse.off if wave.pulse else 0.0
    on = wave.pulse.on if wave.pulse else 0.0
    limit = wave.packets
    n = len(batch)
    due = 0.0
    prev = time.monotonic()
    while sent < limit:
        now = time.monotonic()
        if now >= end:
            break
        if period and (now - start) % period >= on:  # a pulse's pause: no credit accrues
            prev = now
            time.sleep(min(0.01, period - (now - start) % period))
            continue
        due += (now - prev) * wave.rate
        prev = now
        while due >= 1 and sent < limit:
            try:
                s.send(batch[sent % n])
                if not first:
                    first = time.monotonic()
                sent += 1
            except OSError:
                pass  # not sent, not counted
            due -= 1
        last = time.monotonic()
        time.sleep(0.001)
    s.close()
    return sent, first, last


def trafgen_config(batch: Sequence[bytes]) -> str:
    """A trafgen packet configuration: one ``{ 0x.., ... }`` block per frame (trafgen cycles through them)."""
    return "".join("{ " + ", ".join(f"0x{b:02x}" for b in f) + " }\n" for f in batch)


def _trafgen(ifname: str, wave: Wave, topo: Topology, src_mac: str, edge_macs: Sequence[str],
             t0: float) -> tuple[int, float, float]:
    """The wave's frames (the first ``TRAFGEN_FRAMES``) sent by trafgen on
    ``ifname`` (this process's namespace: trafgen inherits it) at the wave's
    rate, bounded by its packet count and, if it is still sending then, stopped
    (SIGINT: it reports what it sent) at the wave's end. The first send is
    when trafgen says it runs (after parsing its configuration)."""
    binary = shutil.which("trafgen")
    if binary is None:
        raise RuntimeError("trafgen is not installed (Debian: netsniff-ng; make setup installs it)")
    batch = wave_frames(wave, topo, src_mac, edge_macs)[:TRAFGEN_FRAMES]
    with tempfile.NamedTemporaryFile("w", prefix="bw-lab-trafgen-", suffix=".cfg") as conf:
        conf.write(trafgen_config(batch))
        conf.flush()
        start = t0 + wave.start
        time.sleep(max(0.0, start - TRAFGEN_PARSE_LEAD - time.monotonic()))
        # killed with this sender (pdeathsig), bounded by its packet count in any case
        cmd = ["setpriv", "--pdeathsig", "KILL", binary, "--dev", ifname, "--conf", conf.name,
               "--rate", f"{int(wave.rate)}pps", "--num", str(wave.packets), "--cpus", "1", "--qdisc-path",
               "--no-cpu-stats", "--notouch-irq"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        out: list[str] = []
        first = 0.0
        for raw in proc.stdout:  # "Running! Hang up with ^C!" once the frames are parsed and the ring is set
            out.append(raw.decode(errors="replace"))
            if "Running!" in out[-1]:
                first = time.monotonic()
                break
        stop = min(t0 + wave.end, first + wave.duration) if first else time.monotonic() + SLACK_SECONDS
        try:
            rest, _ = proc.communicate(timeout=max(0.0, stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=SLACK_SECONDS)
        last = time.monotonic()
    text = "".join(out) + rest.decode(errors="replace")
    sent = re.search(r"(\d+) packets outgoing", text)
    if proc.returncode not in (0, -signal.SIGINT) or sent is None or not first:
        raise RuntimeError(f"trafgen exited {proc.returncode}: {text.strip()[-500:]}")
    return int(sent.group(1)), first, last


async def _http_flood(sources: Sequence[str], dst: str, port: int, wave: Wave, t0: float
                      ) -> tuple[int, float, float]:
    start = t0 + wave.start
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    end = start + wave.duration
    tasks: set[asyncio.Task[None]] = set()
    request = f"GET /?flood={wave.name} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n".encode()

    async def once(src: str) -> None:
        writer = None
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_connection(dst, port, local_addr=(src, 0))
                writer.write(request)
                await reader.read()
        except (TimeoutError, OSError):
            pass
        finally:
            if writer is not None:
                writer.close()

    sent = 0
    first = last = 0.0
    while sent < wave.packets:
        now = time.monotonic()
        if now >= end:
            break
        if wave.sending(now - t0):
            due = int((now - start) * wave.rate) if not wave.pulse else sent + 1
            while sent < min(due, wave.packets):
                task = asyncio.create_task(once(sources[sent % len(sources)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                first = first or time.monotonic()
                last = time.monotonic()
        await asyncio.sleep(1 / wave.rate if wave.pulse else 0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=3)
    return sent, first, last


def _http(sources: Sequence[str], dst: str, port: int, wave: Wave, t0: float) -> tuple[int, float, float]:
    return asyncio.run(_http_flood(sources, dst, port, wave, t0))


def probe_frames(waves: Sequence[Wave], topo: Topology, src_mac: str, edge_macs: Sequence[str],
                 ident: int) -> dict[str, list[bytes]]:
    """The delivery check: ``PROBE_PACKETS`` frames of each crafted vector of
    ``waves`` (those of its first wave from its first ``PROBE_SOURCES``
    sources, in turn, with IPv4 identification ``ident + k``, ``k`` the
    vector's index in :data:`~.scenario.VECTORS`), so the origins' counter can
    show it sees every kind of packet it is asked to count."""
    out: dict[str, list[bytes]] = {}
    for w in waves:
        if w.vector == "http" or w.vector in out:
            continue
        k = VECTORS.index(w.vector)
        first = wave_frames(w, topo, src_mac, edge_macs, ident=ident + k)[:PROBE_SOURCES]
        out[w.vector] = [first[i % len(first)] for i in range(PROBE_PACKETS)]
    return out


def probe(ifname: str, batch: Sequence[bytes]) -> int:
    """Send ``batch`` on ``ifname``, ``PROBE_GAP`` apart; how many were sent."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    sent = 0
    for f in batch:
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass
        time.sleep(PROBE_GAP)
    s.close()
    return sent


def launch(wave: Wave, topo: Topology, ns: str, ifname: str, src_mac: str, edge_macs: Sequence[str],
           t0: float, cpu: int | None = None) -> traffic.Child:
    """Start the wave's sender in namespace ``ns`` (it waits for its start,
    ``t0 + wave.start``); its result is ``(sent, first, last)``."""
    if wave.vector == "http":
        sources = [str(topo.proxies.net.network_address + i) for i in range(wave.sources)]
        return traffic.Child.start(ns, _http, sources, str(wave.target.network_address), wave.port, wave, t0,
                                   cpu=cpu)
    send = _trafgen if wave.sender == "trafgen" else _flood
    return traffic.Child.start(ns, send, ifname, wave, topo, src_mac, list(edge_macs), t0, cpu=cpu)


def offered(results: Mapping[int, tuple[int, float, float]], wave: Wave) -> float:
    """The wave's offered rate: packets (connections) sent over its sending time."""
    sent, first, last = results.get(wave.index, (0, 0.0, 0.0))
    span = wave.on_time() if wave.pulse else max(last - first, 1e-3)
    return sent / span if sent else 0.0

