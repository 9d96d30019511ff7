"""The netns tests' lab: topology, addresses, and the helpers the fixtures use.

One lab per test, nothing shared::

    client namespace                               edge namespace
    cl0  198.18.0.2 .3 .4 .20 /24      veth        bw0  198.18.0.1/24
         2001:db8::2 ::3 /64        <-------->          2001:db8::1/64
         (senders: traffic.send_udp)                    XDP: Breakwater, native or generic
                                                        receiver: traffic.UdpSink

Both ends hold permanent neighbour entries for each other's addresses and
IPv6 addresses skip DAD, so no ARP or ND crosses the link: every packet from
a lab source is a UDP datagram the test sent, and counters can be compared
with send counts exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.dataplane import attach as dataplane
from controller.dataplane import netlink
from controller.dataplane.attach import AttachResult
from controller.dataplane.maps import MapSizes
from controller.dataplane.pinned import MapSet
from controller.lab import traffic
from controller.lab.netns import Lab

LOGGER = logging.getLogger("breakwater.tests.netns")

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT_PREFIX = "bw-nt-"
MODES = ("native", "generic")

IFNAME = "bw0"  # Breakwater's interface, in the edge namespace
CLIENT_IFNAME = "cl0"
EDGE_V4 = "198.18.0.1"
CLIENT_V4 = "198.18.0.2"
EXTRA_V4 = ("198.18.0.3", "198.18.0.4", "198.18.0.20")
EDGE_V6 = "2001:db8::1"
CLIENT_V6 = "2001:db8::2"
EXTRA_V6 = ("2001:db8::3",)
V4_PLEN = 24
V6_PLEN = 64
PORT = 5201

# Small maps: a build's preallocated hashes stay near 50 MiB.
NETNS_SIZES = MapSizes(deny_v4=65536, deny_v6=65536, src_v4=65536, src_v6=65536)

# Datagrams per source in one exchange, and the total send rate. Moderate on
# purpose: on a 2-CPU VM sender, softirq and receiver share the CPUs, and a
# packet lost before the XDP hook would break the exact counter checks.
COUNT = 1000
PPS = 5000.0
# Time the receiver keeps reading after the sender returned.
SETTLE_SECONDS = 0.3
# How long a daemon gets to log what a test waits for.
WAIT_SECONDS = 20.0


def size_args(sizes: MapSizes = NETNS_SIZES) -> list[str]:
    """``--size`` options for the CLI that give ``sizes``."""
    out: list[str] = []
    for name, value in sizes.as_dict().items():
        out += ["--size", f"{name}={value}"]
    return out


@dataclass
class Topology:
    """The two namespaces and the veth between them."""

    lab: Lab
    edge: str
    client: str

    def exchange(
        self,
        sources: Sequence[str],
        count: int = COUNT,
        *,
        dst: str = EDGE_V4,
        pps: float = PPS,
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Send ``count`` datagrams from each source to a receiver on ``dst``.
        Returns (sent, received) per source address."""
        max_seconds = count * len(sources) / pps + 10
        sink = traffic.UdpSink.start(self.edge, dst, PORT, max_seconds=max_seconds + 20)
        try:
            sent = traffic.send_udp(self.client, sources, dst, PORT, count, pps=pps,
                                    max_seconds=max_seconds)
            received = sink.stop(settle=SETTLE_SECONDS)
        finally:
            sink.close()
        for src in sources:
            assert sent.get(src, 0) > 0, f"sender could not send from {src}: {sent}"
        return sent, received

    def verdicts(self, sources: Sequence[str], *, legit: str = CLIENT_V4,
                 count: int = COUNT) -> tuple[dict[str, int], dict[str, bool]]:
        """Exchange ``count`` datagrams from ``legit`` and each of ``sources``:
        (sent per source, whether the edge dropped each of ``sources``). A
        source is dropped when none of its datagrams arrived and passed when
        (nearly) all did; anything between fails, as does ``legit`` not
        getting through."""
        sent, received = self.exchange([legit, *sources], count)
        assert received.get(legit, 0) >= 0.95 * sent[legit], (sent, received)
        out = {}
        for src in sources:
            got = received.get(src, 0)
            assert got == 0 or got >= 0.95 * sent[src], \
                f"{src}: {got} of {sent[src]}: neither dropped nor passed"
            out[src] = got == 0
        return sent, out

    def dropped(self, *sources: str, legit: str = CLIENT_V4, count: int = COUNT) -> dict[str, bool]:
        """Which of ``sources`` the edge drops (:meth:`verdicts`)."""
        return self.verdicts(sources, legit=legit, count=count)[1]

    def macs(self) -> tuple[str, str]:
        """(client MAC, edge MAC): source and destination of crafted (spoofed) frames."""
        return self.lab.mac(self.client, CLIENT_IFNAME), self.lab.mac(self.edge, IFNAME)


def build_topology(lab: Lab, edge: str = "edge", client: str = "client") -> Topology:
    """Namespaces ``edge`` and ``client`` of ``lab``, the veth between them
    (bw0 / cl0), every address and the static neighbours."""
    edge_ns = lab.namespace(edge)
    client_ns = lab.namespace(client)
    lab.veth((edge_ns, IFNAME, f"{EDGE_V4}/{V4_PLEN}"),
             (client_ns, CLIENT_IFNAME, f"{CLIENT_V4}/{V4_PLEN}"))
    lab.add_address(edge_ns, IFNAME, f"{EDGE_V6}/{V6_PLEN}")
    client_addrs = [CLIENT_V4, *EXTRA_V4, CLIENT_V6, *EXTRA_V6]
    for addr in client_addrs[1:]:
        lab.add_address(client_ns, CLIENT_IFNAME, f"{addr}/{V6_PLEN if ':' in addr else V4_PLEN}")
    edge_mac = lab.mac(edge_ns, IFNAME)
    client_mac = lab.mac(client_ns, CLIENT_IFNAME)
    for addr in (EDGE_V4, EDGE_V6):
        lab.add_neighbour(client_ns, CLIENT_IFNAME, addr, edge_mac)
    for addr in client_addrs:
        lab.add_neighbour(edge_ns, IFNAME, addr, client_mac)
    return Topology(lab, edge_ns, client_ns)


@dataclass
class Breakwater:
    """Breakwater attached to bw0 in the edge namespace."""

    topo: Topology
    mode: str
    pin_root: Path
    result: AttachResult

    @contextlib.contextmanager
    def maps(self) -> Iterator[MapSet]:
        with dataplane.open_maps(IFNAME, self.pin_root) as maps:
            yield maps

    def state(self) -> netlink.XdpState:
        return netlink.xdp_state(IFNAME, self.topo.edge)


def remove_pins(root: Path) -> None:
    """Remove ``root`` and everything pinned under it."""
    dataplane.remove_pin_tree(root)


def detach_quietly(topo: Topology, pin_root: Path) -> None:
    """Teardown: take Breakwater off bw0 and purge its pins, logging failures
    (the namespace's removal detaches the program in any case)."""
    try:
        dataplane.detach(IFNAME, pin_root=pin_root, netns=topo.edge, purge=True, force=True)
    except Exception:
        LOGGER.exception("detach from %s in %s failed", IFNAME, topo.edge)


@dataclass
class DaemonProc:
    """A Breakwater process (loader, agent) whose JSON log lines go to ``stderr``."""

    proc: subprocess.Popen[bytes]
    stderr: Path

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.stderr.read_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        """The first log line with ``"event": name``."""
        return next((e for e in self.logs() if e.get("event") == name), None)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for event ``name``; fail (with the log) if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.event(name)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no {name} (exit {self.proc.poll()}):\n{self.stderr.read_text()}")

    def wait_for(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT_SECONDS,
                 after: int = 0) -> dict[str, Any]:
        """The first log line past line ``after`` that ``pred`` accepts; fail
        (with the log's tail) if none comes in time or the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in self.logs()[after:] if pred(e)), None)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no {what} (exit {self.proc.poll()}):\n{self.stderr.read_text()[-6000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process (SIGKILL: no cleanup of any kind runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)

