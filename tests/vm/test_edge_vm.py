"""The edge VM: Breakwater's XDP program in native mode on the guest's
virtio-net NIC drops a spoofed flood sent from the lab's namespace, while a
legitimate client on the same link completes real TCP exchanges.

Flood sizes are bounded (a few thousand frames, paced): under TCG the guest
drains far fewer packets per second than on KVM, and the tap's queue drops
what the guest cannot take, so the checks count what the guest's NIC was
actually handed (the tap's tx counter), not what was sent.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from controller.lab import frames, traffic, vm

pytestmark = pytest.mark.vm

GUEST = ("sudo env PYTHONPATH=/breakwater/site:/breakwater PYTHONDONTWRITEBYTECODE=1 "
         "python3 /breakwater/guest.py")
PORT = 8080
FLOOD_NET = "198.19.0.0/16"
SOURCES = 1000
FLOOD_FRAMES = 6000
FLOOD_PPS = 3000.0
CLIENTS = 10


def snmp_udp(edge: vm.Vm) -> dict[str, int]:
    lines = [line.split() for line in edge.ssh("grep ^Udp: /proc/net/snmp").splitlines()]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))


def guest_drops(edge: vm.Vm) -> dict[str, int]:
    result: dict[str, int] = json.loads(edge.ssh(f"{GUEST} drops eth1"))
    return result


def tap_tx(edge: vm.Vm) -> int:
    """Frames the tap handed to the guest (the namespace's side of the link)."""
    with open(f"/proc/{edge.proc.pid if edge.proc else 0}/net/dev") as f:  # qemu lives in the namespace
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == edge.tap:
                return int(rest.split()[9])
    raise AssertionError(f"{edge.tap} not in the namespace's /proc/net/dev")


def request(edge: vm.Vm) -> bytes:
    """One legitimate exchange: TCP handshake, a request line, the reply."""
    def run() -> bytes:
        with socket.create_connection((edge.guest_ip, PORT), timeout=20) as s:
            s.sendall(b"GET / breakwater\n")
            return s.recv(64)
    reply: bytes = traffic.run_in_netns(edge.ns, run, timeout=60)
    return reply


def flood(edge: vm.Vm, count: int, sources: frames.Addresses) -> int:
    host_mac = edge.lab.mac(edge.ns, edge.tap)
    udp = frames.udp_frames(host_mac, edge.guest_mac, sources, edge.guest_ip, 9)
    return traffic.send_raw(edge.ns, edge.tap, udp, count, pps=FLOOD_PPS, max_seconds=60)


def wait_served(edge: vm.Vm, deadline: float = 120.0) -> None:
    start = time.monotonic()
    while True:
        try:
            if request(edge) == b"breakwater-vm-ok\n":
                return
        except Exception:
            if time.monotonic() - start > deadline:
                raise
        time.sleep(1)


def test_native_xdp_drops_a_flood_and_serves_a_client(edge: vm.Vm) -> None:
    sources = frames.addresses(FLOOD_NET, SOURCES, seed=15)
    server = edge.spawn(f"{GUEST} serve {edge.guest_ip} {PORT} 900")
    try:
        wait_served(edge)

        # Without Breakwater the flood reaches the guest's UDP stack (port 9: NoPorts).
        before = snmp_udp(edge)
        sent = flood(edge, 300, sources)
        time.sleep(2)
        reached = snmp_udp(edge)["NoPorts"] - before["NoPorts"]
        assert sent == 300 and reached > 0, (sent, reached)

        attached = json.loads(edge.ssh(f"{GUEST} attach eth1", timeout=600))
        assert attached["mode"] == "native", attached
        listed = "\n".join(frames.dotted(int(a)) + "/32" for a in sources)
        edge.ssh("cat > /tmp/flood-sources.txt", stdin=listed + "\n")
        applied = json.loads(edge.ssh(f"{GUEST} deny eth1 /tmp/flood-sources.txt", timeout=600))
        assert applied["prefixes"] == SOURCES
        link = edge.ssh("ip -d link show eth1")
        assert "xdp " in link or "prog/xdp" in link, link  # native ("xdp"), not "xdpgeneric"
        assert "xdpgeneric" not in link, link

        udp0, drops0, tx0 = snmp_udp(edge), guest_drops(edge), tap_tx(edge)
        flooder = traffic.RawFlood.start(
            edge.ns, edge.tap,
            frames.udp_frames(edge.lab.mac(edge.ns, edge.tap), edge.guest_mac, sources, edge.guest_ip, 9),
            FLOOD_FRAMES, pps=FLOOD_PPS, max_seconds=60)
        try:
            replies = [request(edge) for _ in range(CLIENTS)]
        finally:
            sent = flooder.wait()
        time.sleep(2)
        udp1, drops1, tx1 = snmp_udp(edge), guest_drops(edge), tap_tx(edge)

        assert replies == [b"breakwater-vm-ok\n"] * CLIENTS
        delivered = tx1 - tx0
        dropped = drops1["xdp_drops"] - drops0["xdp_drops"]
        print(f"flood: sent {sent}, handed to the guest {delivered}, XDP drops {dropped}")
        assert sent == FLOOD_FRAMES
        assert udp1["NoPorts"] == udp0["NoPorts"], "a flood packet reached the guest's UDP stack"
        assert udp1["InDatagrams"] == udp0["InDatagrams"]
        # Every frame the guest was handed is a flood frame dropped by XDP,
        # except the legitimate exchanges (≤ 10 frames each, plus ARP).
        assert delivered - 10 * CLIENTS - 10 <= dropped <= delivered, (delivered, dropped)
        assert dropped >= FLOOD_FRAMES // 2, (sent, delivered, dropped)
    finally:
        server.kill()
        server.wait(timeout=30)
