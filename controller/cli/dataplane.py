"""``breakwater dataplane attach|detach|status|mode``: the XDP program on
this machine's interfaces, and which interfaces the local commands act on.

``attach`` compiles, attaches or adopts (the only command that compiles
anything) and, with ``--foreground``, stays up as the loader; ``mode``
switches monitor/enforce in the pinned config map without a reload.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from ..dataplane import attach
from ..dataplane.maps import MapSizes
from ..errors import BreakwaterError, InputError
from ..output import emit_json, human_bytes, table

__all__ = ["cmd_attach", "cmd_detach", "cmd_mode", "cmd_status", "interfaces"]

LOGGER = logging.getLogger("breakwater.cli")

# How often a foreground loader checks that its program is still attached.
WATCH_SECONDS = 2.0


def _sizes(items: Sequence[str]) -> MapSizes:
    data: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise InputError(f"--size {item!r}: expected NAME=ENTRIES, e.g. deny_v4=2097152")
        data[name.strip()] = int(value)
    return MapSizes.from_dict(data)


def interfaces(args: argparse.Namespace) -> list[str]:
    """The interfaces named with ``-i``, else every one Breakwater is attached to."""
    chosen: list[str] = list(getattr(args, "interface", None) or [])
    if chosen:
        return chosen
    found = attach.attached_interfaces(args.pin_root)
    if not found:
        raise BreakwaterError(
            f"no interface has Breakwater attached under {args.pin_root}: "
            "`breakwater dataplane attach IFACE` first"
        )
    return found


def cmd_attach(args: argparse.Namespace) -> int:
    sizes = _sizes(args.size or [])
    results = []
    for ifname in args.interfaces:
        r = attach.attach(
            ifname, args.mode, sizes, pin_root=args.pin_root, netns=args.netns,
            replace_maps=args.replace_maps, force=args.force, reload=args.reload,
        )
        if args.monitor is not None:
            with attach.open_maps(ifname, args.pin_root) as maps:
                attach.set_flags(maps, monitor=args.monitor)
        results.append(r)
    if args.json:
        emit_json([dataclasses.asdict(r) for r in results])
    else:
        table(["INTERFACE", "ACTION", "MODE", "PROG ID", "MAPS MEMORY", "NOTE"],
              [[r.ifname, r.action, r.mode, r.prog_id, human_bytes(r.memory_bytes),
                (r.fallback_reason and f"native failed: {r.fallback_reason}")
                or (r.replaced_maps and "replaced " + ",".join(r.replaced_maps)) or ""]
               for r in results], right=[3])
    sys.stdout.flush()
    if args.foreground:
        return _hold(args, results)
    return 0


def _hold(args: argparse.Namespace, results: list[attach.AttachResult]) -> int:
    """Stay up as the interface's loader until SIGTERM/SIGINT. The program and
    maps do not depend on this process: killing it opens no gap."""
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    LOGGER.info("holding %s", ",".join(r.ifname for r in results),
                extra={"event": "loader_ready", "interfaces": [r.ifname for r in results],
                       "actions": [r.action for r in results]})
    while not stop:
        time.sleep(0.2)
        if int(time.monotonic() * 5) % int(WATCH_SECONDS * 5):
            continue
        for r in results:
            try:
                st = attach.status(r.ifname, pin_root=args.pin_root, netns=args.netns,
                                      count_entries=False)
            except BreakwaterError as exc:
                LOGGER.warning("status of %s failed: %s", r.ifname, exc)
                continue
            if not st.ours:
                LOGGER.error("%s: Breakwater's program is no longer attached (prog id %d)",
                             r.ifname, st.prog_id, extra={"event": "program_gone"})
    if args.detach_on_exit:
        for r in results:
            attach.detach(r.ifname, pin_root=args.pin_root, netns=args.netns)
        LOGGER.info("detached on exit", extra={"event": "detached"})
    else:
        LOGGER.info("exiting; XDP program and maps stay in force", extra={"event": "loader_exit"})
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    rows = []
    for ifname in args.interfaces:
        done = attach.detach(ifname, pin_root=args.pin_root, netns=args.netns,
                                purge=args.purge, force=args.force)
        rows.append({"interface": ifname, "detached": done, "maps_removed": args.purge})
    if args.json:
        emit_json(rows)
    else:
        table(["INTERFACE", "DETACHED", "MAPS"],
              [[r["interface"], "yes" if r["detached"] else "no (nothing attached)",
                "removed" if r["maps_removed"] else "kept (re-adopted by the next attach)"]
               for r in rows])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    names = args.interfaces or attach.attached_interfaces(args.pin_root)
    if not names:
        raise BreakwaterError(f"no interface has Breakwater attached under {args.pin_root}")
    statuses = [attach.status(n, pin_root=args.pin_root, netns=args.netns) for n in names]
    if args.json:
        emit_json([dict(dataclasses.asdict(s), memory_bytes=s.memory_bytes) for s in statuses])
        return 0
    table(["INTERFACE", "NETNS", "STATE", "MODE", "PROG ID", "BREAKWATER", "POLICY", "MAPS MEMORY"],
          [[s.ifname, s.netns or "-", s.oper_state.lower(), s.mode or "-", s.prog_id or "-",
            "yes" if s.ours else ("foreign" if s.attached else "no"),
            "monitor" if s.monitor else "enforce", human_bytes(s.memory_bytes)] for s in statuses],
          right=[4])
    for s in statuses:
        if not s.maps:
            continue
        print(f"\n{s.ifname} maps:")
        table(["MAP", "TYPE", "ENTRIES", "MAX", "FILL", "MEMORY", "PURPOSE"],
              [[m.name, m.type, m.entries, m.max_entries,
                "-" if "array" in m.type else f"{100 * m.entries / max(m.max_entries, 1):.1f}%",
                human_bytes(m.memory_bytes), m.purpose] for m in s.maps], right=[2, 3, 4, 5])
    return 0


def cmd_mode(args: argparse.Namespace) -> int:
    rows = []
    for ifname in interfaces(args):
        with attach.open_maps(ifname, args.pin_root) as maps:
            cfg = attach.set_flags(maps, monitor=args.policy == "monitor")
        rows.append({"interface": ifname, "policy": args.policy, "flags": cfg.flags})
    if args.json:
        emit_json(rows)
    else:
        table(["INTERFACE", "POLICY"], [[r["interface"], r["policy"]] for r in rows])
    return 0
