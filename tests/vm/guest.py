"""Run inside the lab VM (Debian's python3, bcc, numpy, pyroute2; the repo on
the read-only share at /breakwater): Breakwater's data plane on the guest's
virtio-net NIC, and a TCP service for the legitimate client.

    python3 guest.py attach IFNAME              # native XDP; prints JSON
    python3 guest.py deny IFNAME FILE           # drop the sources listed in FILE
    python3 guest.py serve ADDRESS PORT SECONDS # answer each request line
    python3 guest.py drops IFNAME               # the driver's XDP drop counter
    python3 guest.py detach IFNAME              # Breakwater off, pins purged
    python3 guest.py bare IFNAME SECONDS        # a bare `return XDP_DROP`, native, for SECONDS
    python3 guest.py bare-pin PATH              # that program loaded and pinned at PATH, not attached
    python3 guest.py nft IFNAME FILE            # nftables netdev-ingress drop of FILE's sources
    python3 guest.py nft-off                    # that table removed
    python3 guest.py cpu IFNAME                 # busy CPU ticks (/proc/stat) and rx packets
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PIN_ROOT = Path("/sys/fs/bpf/breakwater-vm")
REPLY = b"breakwater-vm-ok\n"


def attach(ifname: str) -> None:
    from controller.dataplane.attach import attach as bw_attach

    result = bw_attach(ifname, "native", pin_root=PIN_ROOT)
    print(json.dumps({"mode": result.mode, "prog_id": result.prog_id, "action": result.action}))


def deny(ifname: str, path: str) -> None:
    from controller.addresses import parse_prefix
    from controller.dataplane.attach import open_maps
    from controller.rules import enforce
    from controller.rules.model import RuleSet

    prefixes = [parse_prefix(line.strip()) for line in Path(path).read_text().splitlines() if line.strip()]
    rules = enforce.with_sources(RuleSet.from_rules(()), "vm-flood", "drop", prefixes)
    with open_maps(ifname, PIN_ROOT) as maps:
        out = enforce.apply(maps, rules, None)
    print(json.dumps({"prefixes": len(prefixes), "gen": out.swap.gen if out.swap else None}))


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        if conn.recv(1024):
            conn.sendall(REPLY)


def serve(address: str, port: str, seconds: str) -> None:
    srv = socket.create_server((address, int(port)))
    srv.settimeout(1)
    deadline = time.monotonic() + float(seconds)
    print("listening", flush=True)
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def drops(ifname: str) -> None:
    out = subprocess.run(["ethtool", "-S", ifname], capture_output=True, text=True, check=True).stdout
    stats = {}
    for line in out.splitlines():
        name, _, value = line.strip().partition(":")
        if value.strip().isdigit():
            stats[name] = int(value)
    print(json.dumps({
        "xdp_drops": sum(v for k, v in stats.items() if k.endswith("xdp_drops")),
        "rx_packets": sum(v for k, v in stats.items() if k.startswith("rx_queue") and k.endswith("_packets")),
    }))


def detach(ifname: str) -> None:
    from controller.dataplane.attach import detach as bw_detach

    bw_detach(ifname, pin_root=PIN_ROOT, purge=True)


XDP_FLAGS_DRV_MODE = 1 << 2


def bare(ifname: str, seconds: str) -> None:
    from bcc import BPF

    b = BPF(text="int bare(struct xdp_md *ctx) { return XDP_DROP; }")
    b.attach_xdp(ifname, b.load_func("bare", BPF.XDP), XDP_FLAGS_DRV_MODE)
    print("attached", flush=True)
    try:
        time.sleep(float(seconds))
    finally:
        b.remove_xdp(ifname, XDP_FLAGS_DRV_MODE)


def bare_pin(path: str) -> None:
    from bcc import BPF, libbcc

    b = BPF(text="int bare(struct xdp_md *ctx) { return XDP_DROP; }")
    fn = b.load_func("bare", BPF.XDP)
    Path(path).unlink(missing_ok=True)
    if libbcc.lib.bpf_obj_pin(fn.fd, path.encode()) != 0:
        raise SystemExit(f"guest.py: could not pin the bare program at {path}")
    print("pinned", flush=True)


NFT_TABLE = "breakwater_vm"


def nft(ifname: str, path: str) -> None:
    sources = ", ".join(line.split("/")[0] for line in Path(path).read_text().split() if line)
    rules = (f"table netdev {NFT_TABLE} {{\n"
             f" set src {{ type ipv4_addr; flags constant; elements = {{ {sources} }} }}\n"
             f" chain ingress {{ type filter hook ingress device {ifname} priority -500; policy accept;\n"
             "  ip saddr @src drop\n }\n}\n")
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def nft_off() -> None:
    subprocess.run(["nft", "delete", "table", "netdev", NFT_TABLE], check=True)


def cpu(ifname: str) -> None:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    rx = int(Path(f"/sys/class/net/{ifname}/statistics/rx_packets").read_text())
    print(json.dumps({"busy_ticks": user + nice + system + irq + softirq + steal,
                      "idle_ticks": idle + iowait, "hz": os.sysconf("SC_CLK_TCK"), "rx_packets": rx}))


COMMANDS: dict[str, Callable[..., None]] = {
    "attach": attach, "deny": deny, "serve": serve, "drops": drops, "detach": detach,
    "bare": bare, "bare-pin": bare_pin, "nft": nft, "nft-off": nft_off, "cpu": cpu,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
