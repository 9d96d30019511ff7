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


# One light read (no python3 in the guest: under TCG its start-up alone
# costs a noticeable share of a window): the cpu line and eth1's rx count.
READ = "head -n1 /proc/stat; cat /sys/class/net/eth1/statistics/rx_packets"


def guest_cpu(edge: vm.Vm) -> tuple[int, int]:
    """(busy ticks: user+nice+system+irq+softirq+steal, rx packets of eth1)."""
    cpu, rx = edge.ssh(READ).splitlines()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu.split()[1:9])
    return user + nice + system + irq + softirq + steal, int(rx)


def window(edge: vm.Vm, hz: int, udp: list[bytes], packets: int, pps: float,
           idle: bool = False) -> tuple[float, int, int]:
    """(busy guest seconds, packets the guest received, packets sent); with
    ``idle``, as long a window without traffic."""
    busy0, rx0 = guest_cpu(edge)
    if idle:
        sent = 0
        time.sleep(packets / pps)
    else:
        sent = traffic.send_raw(edge.ns, edge.tap, udp, packets, pps=pps, max_seconds=packets / pps + 60)
    time.sleep(1.0)
    busy1, rx1 = guest_cpu(edge)
    return (busy1 - busy0) / hz, rx1 - rx0, sent



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000, help="flood frames per case (default 200000)")
    ap.add_argument("--pps", type=float, default=20_000.0, help="offered load, frames/s (default 20000)")
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
        hz = int(edge.ssh("getconf CLK_TCK"))
        edge.ssh("sudo systemctl is-system-running --wait || true", timeout=600)  # first boot settles
        results: dict[str, float] = {}

        def measure(case: str) -> None:
            # The idle guest's busy time over as long a window, with the same
            # two reads (sshd, timers), measured right before: subtracted.
            idle_busy, _, _ = window(edge, hz, udp, args.packets, args.pps, idle=True)
            busy, received, sent = window(edge, hz, udp, args.packets, args.pps)
            per = (busy - idle_busy) / received * 1e9 if received else float("nan")
            results[case] = per
            c.emit(case=case, accel=edge.accel, packets=sent, received=received,
                   offered_pps=args.pps, guest_busy_s=round(busy, 3), idle_busy_s=round(idle_busy, 3),
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
