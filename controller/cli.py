"""``breakwater``: the operator's command line.

Local mode (like xdp-filter): every command works on the pinned maps under
``--pin-root`` (default /sys/fs/bpf/breakwater); only ``dataplane attach``
compiles anything. Tables by default, ``--json`` for machines. Errors are
one line on stderr and a non-zero exit: 2 for bad input, 1 for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import counters, dataplane, logs, policy
from .addresses import Prefix, parse_prefix
from .blocklist import read_file
from .errors import BreakwaterError, InputError
from .maps import MapSizes
from .output import emit_json, human_bytes, human_rate, table
from .reasons import Action, Reason

__all__ = ["build_parser", "main"]

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


def _interfaces(args: argparse.Namespace) -> list[str]:
    chosen: list[str] = list(getattr(args, "interface", None) or [])
    if chosen:
        return chosen
    found = dataplane.attached_interfaces(args.pin_root)
    if not found:
        raise BreakwaterError(
            f"no interface has Breakwater attached under {args.pin_root}: "
            "`breakwater dataplane attach IFACE` first"
        )
    return found


def _prefixes(args: argparse.Namespace) -> list[Prefix]:
    out = [parse_prefix(p, field="prefix") for p in args.prefixes]
    for f in args.file or []:
        out.extend(read_file(Path(f)))
    if not out:
        raise InputError("no prefixes given: name them or pass --file")
    return out


# -- dataplane ---------------------------------------------------------------

def cmd_attach(args: argparse.Namespace) -> int:
    sizes = _sizes(args.size or [])
    results = []
    for ifname in args.interfaces:
        r = dataplane.attach(
            ifname, args.mode, sizes, pin_root=args.pin_root, netns=args.netns,
            replace_maps=args.replace_maps, force=args.force, reload=args.reload,
        )
        if args.monitor is not None:
            with dataplane.open_maps(ifname, args.pin_root) as maps:
                dataplane.set_flags(maps, monitor=args.monitor)
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


def _hold(args: argparse.Namespace, results: list[dataplane.AttachResult]) -> int:
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
                st = dataplane.status(r.ifname, pin_root=args.pin_root, netns=args.netns,
                                      count_entries=False)
            except BreakwaterError as exc:
                LOGGER.warning("status of %s failed: %s", r.ifname, exc)
                continue
            if not st.ours:
                LOGGER.error("%s: Breakwater's program is no longer attached (prog id %d)",
                             r.ifname, st.prog_id, extra={"event": "program_gone"})
    if args.detach_on_exit:
        for r in results:
            dataplane.detach(r.ifname, pin_root=args.pin_root, netns=args.netns)
        LOGGER.info("detached on exit", extra={"event": "detached"})
    else:
        LOGGER.info("exiting; XDP program and maps stay in force", extra={"event": "loader_exit"})
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    rows = []
    for ifname in args.interfaces:
        done = dataplane.detach(ifname, pin_root=args.pin_root, netns=args.netns,
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
    names = args.interfaces or dataplane.attached_interfaces(args.pin_root)
    if not names:
        raise BreakwaterError(f"no interface has Breakwater attached under {args.pin_root}")
    statuses = [dataplane.status(n, pin_root=args.pin_root, netns=args.netns) for n in names]
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
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            cfg = dataplane.set_flags(maps, monitor=args.policy == "monitor")
        rows.append({"interface": ifname, "policy": args.policy, "flags": cfg.flags})
    if args.json:
        emit_json(rows)
    else:
        table(["INTERFACE", "POLICY"], [[r["interface"], r["policy"]] for r in rows])
    return 0


# -- allow / deny ---------------------------------------------------------------

def cmd_list_add(args: argparse.Namespace) -> int:
    prefixes = _prefixes(args)
    entries = [policy.Entry(p, args.rule_id, getattr(args, "management", False)) for p in prefixes]
    rows = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            r = policy.add(maps, args.which, entries)
        rows.append({"interface": ifname, "added": r.added, "updated": r.updated,
                     "unchanged": r.unchanged})
    if args.json:
        emit_json(rows)
    else:
        table(["INTERFACE", "ADDED", "UPDATED", "UNCHANGED"],
              [[r["interface"], r["added"], r["updated"], r["unchanged"]] for r in rows],
              right=[1, 2, 3])
    return 0


def cmd_list_del(args: argparse.Namespace) -> int:
    prefixes = _prefixes(args)
    rows = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            n = policy.remove(maps, args.which, prefixes)
        rows.append({"interface": ifname, "removed": n, "not_found": len(prefixes) - n})
    if args.json:
        emit_json(rows)
    else:
        table(["INTERFACE", "REMOVED", "NOT FOUND"],
              [[r["interface"], r["removed"], r["not_found"]] for r in rows], right=[1, 2])
    return 0


def cmd_list_show(args: argparse.Namespace) -> int:
    out: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            for e in policy.entries(maps, args.which):
                out.append({"interface": ifname, "prefix": str(e.prefix), "rule_id": e.rule_id,
                            "management": e.management, "hits": e.hits, "hit_bytes": e.hit_bytes})
    if args.limit:
        out = out[: args.limit]
    if args.json:
        emit_json(out)
        return 0
    headers = ["INTERFACE", "PREFIX", "RULE"]
    if args.which == "allow":
        table([*headers, "KIND"], [[r["interface"], r["prefix"], r["rule_id"] or "-",
                                    "management" if r["management"] else "allow"] for r in out])
    else:
        table([*headers, "HITS", "HIT BYTES"],
              [[r["interface"], r["prefix"], r["rule_id"] or "-",
                r["hits"] if "/" not in r["prefix"] else "(per source)",
                human_bytes(r["hit_bytes"]) if "/" not in r["prefix"] else ""] for r in out],
              right=[3])
    return 0


# -- counters ------------------------------------------------------------------

def cmd_top(args: argparse.Namespace) -> int:
    ifnames = _interfaces(args)
    while True:
        rows: list[dict[str, Any]] = []
        opened = [dataplane.open_maps(n, args.pin_root) for n in ifnames]
        try:
            before = [counters.read_sources(m) for m in opened]
            time.sleep(args.interval)
            after = [counters.read_sources(m) for m in opened]
        finally:
            for m in opened:
                m.close()
        for name, b, a in zip(ifnames, before, after, strict=True):
            for r in counters.top_sources(b, a, args.count, args.by):
                rows.append(dict(dataclasses.asdict(r), interface=name))
        key = {"packets": "pps", "bytes": "bps", "drops": "drops_ps"}[args.by]
        rows.sort(key=lambda r: -float(r[key]))
        rows = rows[: args.count]
        if args.json:
            emit_json(rows)
        else:
            if args.watch:
                sys.stdout.write("\x1b[2J\x1b[H")
            print(f"top sources by {args.by}/s over {args.interval:g}s "
                  f"({', '.join(ifnames)})")
            table(["SOURCE", "INTERFACE", "PPS", "BPS", "DROPS/S", "PACKETS", "DROPS", "SYN", "UDP",
                   "ICMP"],
                  [[r["address"], r["interface"], human_rate(r["pps"]), human_rate(r["bps"]),
                    human_rate(r["drops_ps"]), r["packets"], r["drops"], r["syn"], r["udp"],
                    r["icmp"]] for r in rows], right=[2, 3, 4, 5, 6, 7, 8, 9])
        sys.stdout.flush()
        if not args.watch:
            return 0


def cmd_stats(args: argparse.Namespace) -> int:
    report: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            actions = counters.action_totals(maps)
            reasons = counters.reason_totals(maps)
            rules = counters.rule_totals(maps)
            monitor = bool(dataplane.read_config(maps).flags & 1)
        report.append({
            "interface": ifname,
            "policy": "monitor" if monitor else "enforce",
            "actions": {a.label: dataclasses.asdict(t) for a, t in actions.items()},
            "reasons": {r.label: dataclasses.asdict(t) for r, t in reasons.items() if t.packets},
            "rules": {str(k): dataclasses.asdict(t) for k, t in sorted(rules.items())},
        })
    if args.json:
        emit_json(report)
        return 0
    for i, rep in enumerate(report):
        if i:
            print()
        print(f"{rep['interface']} ({rep['policy']})")
        table(["ACTION", "PACKETS", "BYTES"],
              [[a.label, rep["actions"][a.label]["packets"],
                human_bytes(rep["actions"][a.label]["bytes"])] for a in Action], right=[1, 2])
        print()
        table(["REASON", "CODE", "PACKETS", "BYTES"],
              [[r.label, r.value, rep["reasons"][r.label]["packets"],
                human_bytes(rep["reasons"][r.label]["bytes"])]
               for r in Reason if r.label in rep["reasons"]], right=[1, 2, 3])
        if rep["rules"]:
            print()
            table(["RULE", "PACKETS", "BYTES"],
                  [[k, v["packets"], human_bytes(v["bytes"])] for k, v in rep["rules"].items()],
                  right=[0, 1, 2])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(json_out=args.json)


# -- parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="breakwater",
        description="Breakwater: XDP edge DDoS mitigation. Local commands work on the "
                    "pinned maps of the interfaces Breakwater is attached to.",
    )
    p.add_argument("--pin-root", type=Path, default=dataplane.DEFAULT_PIN_ROOT,
                   help="bpffs directory of the pinned programs and maps "
                        "(default %(default)s, or $BREAKWATER_PIN_ROOT)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, iface: bool = True) -> None:
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if iface:
            sp.add_argument("-i", "--interface", action="append",
                            help="interface to act on (repeatable; default: every attached one)")

    dp = sub.add_parser("dataplane", help="attach, detach and inspect the XDP program")
    dsub = dp.add_subparsers(dest="dp_command", required=True, metavar="ACTION")

    a = dsub.add_parser("attach", help="attach to interfaces, or adopt/upgrade what is attached")
    a.add_argument("interfaces", nargs="+", metavar="IFACE")
    a.add_argument("--netns", help="network namespace of the interfaces")
    a.add_argument("--mode", choices=["auto", "native", "generic"], default="auto",
                   help="XDP mode; auto tries native and falls back to generic (default auto)")
    a.add_argument("--size", action="append", metavar="MAP=ENTRIES",
                   help="map size, e.g. deny_v4=2097152 (repeatable); see docs/dataplane.md")
    a.add_argument("--replace-maps", action="store_true",
                   help="replace pinned maps whose layout or size differs (allow/deny entries "
                        "are copied, counters restart)")
    a.add_argument("--force", action="store_true", help="replace a foreign XDP program")
    a.add_argument("--reload", action="store_true",
                   help="recompile and swap in atomically even if the same build is attached")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--monitor", dest="monitor", action="store_true", default=None,
                      help="count would-drop packets, drop nothing")
    mode.add_argument("--enforce", dest="monitor", action="store_false",
                      help="drop what the policy says (default for a new attachment)")
    a.add_argument("--foreground", action="store_true",
                   help="stay running as the loader until SIGTERM (program stays attached)")
    a.add_argument("--detach-on-exit", action="store_true",
                   help="with --foreground: detach when stopped")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.set_defaults(func=cmd_attach)

    d = dsub.add_parser("detach", help="detach from interfaces (maps kept unless --purge)")
    d.add_argument("interfaces", nargs="+", metavar="IFACE")
    d.add_argument("--netns", help="network namespace of the interfaces")
    d.add_argument("--purge", action="store_true", help="also remove the pinned maps (policy!)")
    d.add_argument("--force", action="store_true", help="detach a foreign XDP program too")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.set_defaults(func=cmd_detach)

    s = dsub.add_parser("status", help="interface, mode, program id, map sizes and fill")
    s.add_argument("interfaces", nargs="*", metavar="IFACE")
    s.add_argument("--netns", help="network namespace of the interfaces")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_status)

    m = dsub.add_parser("mode", help="switch monitor/enforce at run time, without reloading")
    m.add_argument("policy", choices=["monitor", "enforce"])
    common(m)
    m.set_defaults(func=cmd_mode)

    for which, helptext in (("deny", "denied sources (exact addresses and prefixes)"),
                            ("allow", "allowlist and management prefixes (always win)")):
        lp = sub.add_parser(which, help=helptext)
        lsub = lp.add_subparsers(dest="list_command", required=True, metavar="ACTION")
        add = lsub.add_parser("add", help=f"add {which} entries")
        add.add_argument("prefixes", nargs="*", metavar="PREFIX")
        add.add_argument("--file", action="append",
                         help="read prefixes from a file (plain CIDR, Spamhaus DROP, FireHOL)")
        add.add_argument("--rule-id", type=int, default=0,
                         help="rule id the entries count against (default 0: none)")
        if which == "allow":
            add.add_argument("--management", action="store_true",
                             help="management prefix (reported as pass_mgmt)")
        common(add)
        add.set_defaults(func=cmd_list_add, which=which)
        rm = lsub.add_parser("del", help=f"remove {which} entries")
        rm.add_argument("prefixes", nargs="*", metavar="PREFIX")
        rm.add_argument("--file", action="append", help="read prefixes from a file")
        common(rm)
        rm.set_defaults(func=cmd_list_del, which=which)
        ls = lsub.add_parser("list", help=f"list {which} entries")
        ls.add_argument("--limit", type=int, default=0, help="show at most N entries")
        common(ls)
        ls.set_defaults(func=cmd_list_show, which=which)

    t = sub.add_parser("top", help="top sources by rate, from two counter reads")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between reads (default 1)")
    t.add_argument("-n", "--count", type=int, default=20, help="rows (default 20)")
    t.add_argument("--by", choices=["packets", "bytes", "drops"], default="packets")
    t.add_argument("--watch", action="store_true", help="refresh until interrupted")
    common(t)
    t.set_defaults(func=cmd_top)

    st = sub.add_parser("stats", help="packets by action, reason and rule")
    common(st)
    st.set_defaults(func=cmd_stats)

    dm = sub.add_parser("demo", help="a real flood in a namespace lab, counted then dropped")
    dm.add_argument("--json", action="store_true", help="print the summary as JSON")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        rc: int = args.func(args)
        return rc
    except InputError as exc:
        print(f"breakwater: error: {exc}", file=sys.stderr)
        return 2
    except BreakwaterError as exc:
        print(f"breakwater: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
