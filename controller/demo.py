"""``breakwater demo``: a real flood, counted, then dropped.

Builds a two-namespace lab (an edge server with Breakwater on its ingress
veth, and an "internet" namespace holding a legitimate client and a flooding
source), floods, shows the flood in the per-source counters, denies the
source through the same code path as ``breakwater deny add``, floods again,
and prints what was delivered. Removes everything it built. The full
incident replay comes with the lab (``breakwater lab``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import sys
from pathlib import Path
from typing import Any

from . import counters, dataplane, policy, traffic
from .addresses import parse_prefix
from .maps import MapSizes
from .netns import Lab
from .output import emit_json, human_rate, table

__all__ = ["run"]

EDGE_ADDR = "198.18.0.1"
LEGIT_ADDR = "198.18.0.10"
FLOOD_ADDR = "198.18.0.66"
PORT = 8053
# Each phase: a bounded flood and a steady legitimate stream, sent together.
FLOOD_PACKETS = 60_000
FLOOD_PPS = 30_000.0
LEGIT_PACKETS = 1_500
LEGIT_PPS = 750.0
PHASE_SECONDS = 10.0
DEMO_SIZES = MapSizes(deny_v4=65536, deny_v6=4096, src_v4=65536, src_v6=4096)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _phase(edge: str, inet: str, maps_ifname: str, pin_root: Path) -> dict[str, Any]:
    sink = traffic.UdpSink.start(edge, EDGE_ADDR, PORT, max_seconds=PHASE_SECONDS + 20)
    with dataplane.open_maps(maps_ifname, pin_root) as maps:
        before = counters.read_sources(maps)
        legit = traffic.UdpStream.start(inet, [LEGIT_ADDR], EDGE_ADDR, PORT, LEGIT_PACKETS,
                                        pps=LEGIT_PPS, max_seconds=PHASE_SECONDS)
        flood = traffic.UdpStream.start(inet, [FLOOD_ADDR], EDGE_ADDR, PORT, FLOOD_PACKETS,
                                        pps=FLOOD_PPS, max_seconds=PHASE_SECONDS)
        sent_flood = flood.wait().get(FLOOD_ADDR, 0)
        sent_legit = legit.wait().get(LEGIT_ADDR, 0)
        got = sink.stop(settle=0.3)
        after = counters.read_sources(maps)
        top = counters.top_sources(before, after, n=3)
        deny = {str(e.prefix): e.hits for e in policy.entries(maps, "deny")}
    return {
        "flood_sent": sent_flood, "flood_delivered": got.get(FLOOD_ADDR, 0),
        "legit_sent": sent_legit, "legit_delivered": got.get(LEGIT_ADDR, 0),
        "top": [dataclasses.asdict(r) for r in top], "deny_hits": deny,
    }


def _show_top(rows: list[dict[str, Any]], deny_hits: dict[str, int]) -> None:
    table(["SOURCE", "PPS", "PACKETS", "DROPS"],
          [[r["address"], human_rate(r["pps"]), r["packets"], r["drops"]] for r in rows],
          right=[1, 2, 3])
    for addr, hits in deny_hits.items():
        print(f"deny entry {addr}: {hits} packets dropped")


def run(json_out: bool = False) -> int:
    dataplane.require_root()
    pin_root = Path(f"/sys/fs/bpf/breakwater-demo-{secrets.token_hex(3)}")
    phases: dict[str, dict[str, Any]] = {}
    with Lab("demo") as lab:
        edge = lab.namespace("edge")
        inet = lab.namespace("internet")
        _say(f"lab: namespace {edge} (edge server, {EDGE_ADDR}) <-veth-> {inet} "
             f"(legitimate client {LEGIT_ADDR}, flooding source {FLOOD_ADDR})")
        lab.veth((edge, "bw0", f"{EDGE_ADDR}/24"), (inet, "inet0", f"{LEGIT_ADDR}/24"))
        lab.add_address(inet, "inet0", f"{FLOOD_ADDR}/24")
        try:
            r = dataplane.attach("bw0", "auto", DEMO_SIZES, pin_root=pin_root, netns=edge)
            _say(f"breakwater dataplane attach bw0: {r.action}, {r.mode} mode, program {r.prog_id}")

            _say(f"phase 1: {FLOOD_ADDR} floods UDP/{PORT} at {human_rate(FLOOD_PPS)}pps while "
                 f"{LEGIT_ADDR} sends {human_rate(LEGIT_PPS)}pps; nothing denied yet")
            phases["before"] = _phase(edge, inet, "bw0", pin_root)
            _show_top(phases["before"]["top"], {})

            _say(f"breakwater deny add {FLOOD_ADDR}")
            with dataplane.open_maps("bw0", pin_root) as maps:
                res = policy.add(maps, "deny", [policy.Entry(parse_prefix(FLOOD_ADDR), rule_id=1)])
            print(f"added {res.added} entry")

            _say("phase 2: the same flood again")
            phases["after"] = _phase(edge, inet, "bw0", pin_root)
            _show_top(phases["after"]["top"], phases["after"]["deny_hits"])
        finally:
            with contextlib.suppress(Exception):
                dataplane.detach("bw0", pin_root=pin_root, netns=edge, purge=True)
            with contextlib.suppress(OSError):
                pin_root.rmdir()
    _say("summary (counted at the receiver in the edge namespace)")
    rows = []
    for name, p in phases.items():
        rows.append([
            name, p["flood_sent"], p["flood_delivered"],
            f"{100 * (1 - p['flood_delivered'] / max(p['flood_sent'], 1)):.1f}%",
            p["legit_sent"], p["legit_delivered"],
            f"{100 * p['legit_delivered'] / max(p['legit_sent'], 1):.1f}%",
        ])
    table(["PHASE", "FLOOD SENT", "DELIVERED", "DROPPED", "LEGIT SENT", "DELIVERED", "LEGIT OK"],
          rows, right=[1, 2, 3, 4, 5, 6])
    print("lab removed: namespaces, veths, XDP program and pinned maps", flush=True)
    if json_out:
        emit_json(phases)
    ok = bool(phases) and phases["after"]["flood_delivered"] == 0 and (
        phases["after"]["legit_delivered"] >= 0.99 * phases["after"]["legit_sent"])
    if not ok:
        print("demo: the flood was not fully dropped or legitimate traffic was lost", file=sys.stderr)
    return 0 if ok else 1
