"""CPU time per dropped packet inside the edge VM, on virtio-net (a real NIC
driver, unlike veth): native XDP (Breakwater denying 10k sources, and a bare
``return XDP_DROP``), nftables dropping the same 10k-source set in netdev
ingress, and no filter, all with the same offered load in one run.

The guest is the lab box (``make vagrant-box``) booted by qemu in a namespace
of its own (``controller.lab.vm``); the flood comes from that namespace
through the guest's tap. The guest's own ``/proc/stat`` gives its busy CPU
time over each window (minus the idle guest's busy time over as long a
window), divided by the packets its NIC received. Under TCG absolute
costs are distorted: the line names the accelerator, and only the ratios
(all measured inside one guest, in this run) mean anything.

    sudo .venv/bin/python bench/vm.py [--packets N] [--pps R]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common as c
import pyroute2

from controller.lab import frames, traffic, vm

REPO = Path(__file__).resolve().parents[1]
SHARE = ((REPO / "controller", "controller"), (REPO / "bpf", "bpf"),
         (REPO / "tests" / "vm" / "guest.py", "guest.py"),
         (Path(pyroute2.__file__).parent, "site/pyroute2"))
GUEST = ("sudo env PYTHONPATH=/breakwater/site:/breakwater PYTHONDONTWRITEBYTECODE=1 "
         "python3 /breakwater/guest.py")
SOURCES = 10_000
FLOOD_NET = "198.19.0.0/16"


def guest_cpu(edge: vm.Vm) -> dict[str, int]:
    result: dict[str, int] = json.loads(edge.ssh(f"{GUEST} cpu eth1"))
    return result


def window(edge: vm.Vm, udp: list[bytes], packets: int, pps: float) -> tuple[float, int, int, float]:
    """(busy guest seconds, packets the guest received, packets sent, seconds)."""
    before = guest_cpu(edge)
    start = time.monotonic()
    sent = traffic.send_raw(edge.ns, edge.tap, udp, packets, pps=pps, max_seconds=packets / pps + 60)
    time.sleep(1.0)
    after = guest_cpu(edge)
    seconds = time.monotonic() - start
    busy = (after["busy_ticks"] - before["busy_ticks"]) / after["hz"]
    return busy, after["rx_packets"] - before["rx_packets"], sent, seconds


def idle_rate(edge: vm.Vm, seconds: float) -> float:
    """Busy guest seconds per second with no traffic (sshd, the clock under TCG)."""
    before = guest_cpu(edge)
    time.sleep(seconds)
    after = guest_cpu(edge)
    return (after["busy_ticks"] - before["busy_ticks"]) / after["hz"] / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=40_000, help="flood frames per case (default 40000)")
    ap.add_argument("--pps", type=float, default=4000.0, help="offered load, frames/s (default 4000)")
    args = ap.parse_args()
    c.set_bench("vm")
    box = vm.find_box()
    if box is None:
        raise SystemExit("bench/vm.py: no box; run `make vagrant-box`")
    sources = frames.addresses(FLOOD_NET, SOURCES, seed=15)
    with vm.Vm(box, share=SHARE) as edge:
        c.log(f"edge VM up in {edge.boot_seconds:.0f} s ({edge.accel})")
        udp = frames.udp_frames(edge.lab.mac(edge.ns, edge.tap), edge.guest_mac, sources, edge.guest_ip, 9)
        edge.ssh("cat > /tmp/sources.txt", stdin="\n".join(frames.dotted(int(a)) for a in sources) + "\n")
        idle = idle_rate(edge, args.packets / args.pps)
        results: dict[str, float] = {}

        def measure(case: str) -> None:
            busy, received, sent, seconds = window(edge, udp, args.packets, args.pps)
            net = max(busy - idle * seconds, 0.0)
            per = net / received * 1e9 if received else float("nan")
            results[case] = per
            c.emit(case=case, accel=edge.accel, packets=sent, received=received,
                   offered_pps=args.pps, guest_busy_s=round(busy, 3), idle_busy_s=round(idle * seconds, 3),
                   cpu_ns_per_pkt=round(per, 1))

        measure("no-filter")
        edge.ssh(f"{GUEST} nft eth1 /tmp/sources.txt")
        measure("nftables-netdev-ingress")
        edge.ssh(f"{GUEST} nft-off")
        bare = edge.spawn(f"{GUEST} bare eth1 900")
        try:
            deadline = time.monotonic() + 600
            while "prog/xdp" not in edge.ssh("ip -d link show eth1"):
                if time.monotonic() > deadline:
                    raise SystemExit("bench/vm.py: the bare XDP program never attached")
                time.sleep(2)
            measure("xdp-bare-drop")
            edge.ssh("sudo ip link set dev eth1 xdpdrv off")
        finally:
            bare.kill()
            bare.wait(timeout=30)
        attached = json.loads(edge.ssh(f"{GUEST} attach eth1", timeout=900))
        if attached["mode"] != "native":
            raise SystemExit(f"bench/vm.py: Breakwater attached in {attached['mode']} mode")
        edge.ssh(f"{GUEST} deny eth1 /tmp/sources.txt", timeout=900)
        measure("breakwater-xdp")
        edge.ssh(f"{GUEST} detach eth1")
        nft = results["nftables-netdev-ingress"]
        c.emit(case="ratios", accel=edge.accel,
               breakwater_over_nft=round(results["breakwater-xdp"] / nft, 3),
               bare_xdp_over_nft=round(results["xdp-bare-drop"] / nft, 3),
               nft_over_no_filter=round(nft / results["no-filter"], 3),
               breakwater_over_bare_xdp=round(results["breakwater-xdp"] / results["xdp-bare-drop"], 3),
               target_breakwater_over_nft=0.333)
    c.print_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
