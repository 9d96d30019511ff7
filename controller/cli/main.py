"""``breakwater``: the operator's command line.

Local mode (like xdp-filter): every command works on the pinned maps under
``--pin-root`` (default /sys/fs/bpf/breakwater); only ``dataplane attach``
compiles anything.

Remote mode: ``rules``, ``nodes``, ``events``, ``top`` and ``stats`` talk
gRPC to a controller (``breakwater controller``) or an agent's API when a
server is named: ``--server HOST:PORT``, else ``$BREAKWATER_SERVER``, else
the CLI config (:mod:`controller.api.client`); :mod:`controller.cli.remote` runs
them. ``rules list|show|del``, ``events``, ``top`` and ``stats`` stay local
when no server is named; ``rules create|update`` and ``nodes`` need one;
``rules apply|preset`` and the ``deny``/``allow`` lists are local only.

Tables by default, ``--json`` for machines. Errors are one line on stderr
and a non-zero exit: 2 for bad input (a remote ``INVALID_ARGUMENT``
included: the line names the field), 1 for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from .. import logs
from ..addresses import Prefix, parse_prefix
from ..agent.config import DEFAULT_CONFIG as DEFAULT_AGENT_CONFIG
from ..api.client import ClientSettings
from ..dataplane import abi, counters
from ..dataplane import attach as dataplane
from ..dataplane import entries as policy
from ..dataplane.maps import MapSizes
from ..dataplane.pinned import MapSet
from ..dataplane.reasons import Action, Reason
from ..errors import BreakwaterError, InputError
from ..output import emit_json, human_bytes, human_rate, table
from ..rules import enforce
from ..rules.blocklist import read_file
from ..rules.model import RuleAction, RuleSet
from ..rules.presets import reflection_rule
from . import remote as apicli

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


def _remote(args: argparse.Namespace) -> ClientSettings | None:
    """The server this command should talk to, or None to work locally."""
    s = apicli.settings(args)
    return s if s.server is not None else None


def _given(args: argparse.Namespace, names: Sequence[str]) -> str | None:
    for name in names:
        if getattr(args, name, None) not in (None, False, [], "", 0):
            return "--" + name.replace("_", "-")
    return None


def _local_flags(args: argparse.Namespace, names: Sequence[str] = ("interface",)) -> None:
    """Refuse flags of the local form in a remote command."""
    flag = _given(args, names)
    if flag:
        raise InputError(f"{flag} works on this machine's maps; leave it out when talking to a server")


def _remote_flags(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Refuse flags of the remote form in a local command."""
    flag = _given(args, names)
    if flag:
        raise InputError(f"{flag} needs a server: give --server HOST:PORT or set $BREAKWATER_SERVER")


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


# -- rule sets ------------------------------------------------------------------

def _user() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"


def _edit_rules(args: argparse.Namespace, edit: Callable[[RuleSet], RuleSet],
                dry_run: bool = False, replace_all: bool = False,
                management: Callable[[enforce.Applied | None], tuple[Prefix, ...]] | None = None,
                ) -> list[dict[str, Any]]:
    """Apply ``edit`` to each interface's rule set and swap the result in."""
    rows: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps, maps.locked():
            prev = _previous(args, maps, replace_all)
            before = prev.rules if prev else RuleSet.from_rules(())
            after = edit(before)
            mgmt = management(prev) if management else (prev.management if prev else ())
            out = enforce.apply(maps, after, prev, management=mgmt, dry_run=dry_run,
                                state_dir=args.state_dir)
        rows.append(_outcome_row(ifname, out))
    return rows


def _recorded(args: argparse.Namespace, maps: MapSet) -> enforce.Applied | None:
    """The recorded rule set for naming rules in listings (None if it does not match)."""
    try:
        return enforce.load_applied(args.state_dir, maps)
    except enforce.StateMismatchError as exc:
        LOGGER.warning("%s", exc)
        return None


def _previous(args: argparse.Namespace, maps: MapSet, replace_all: bool) -> enforce.Applied | None:
    """The recorded rule set; when it does not match the maps, a whole new set
    (`rules apply`) may still replace it, an edit may not."""
    try:
        return enforce.load_applied(args.state_dir, maps)
    except enforce.StateMismatchError as exc:
        if not replace_all:
            raise
        LOGGER.warning("%s; replacing it", exc)
        return None


def _outcome_row(ifname: str, out: enforce.Outcome) -> dict[str, Any]:
    c = out.compiled
    return {
        "interface": ifname,
        "added": [r.id for r in out.diff.added],
        "removed": [r.id for r in out.diff.removed],
        "changed": [new.id for _, new in out.diff.changed],
        "unchanged": len(out.diff.unchanged),
        "deny_exact": sum(1 for d in c.deny if d.prefix.is_exact),
        "deny_prefix": sum(1 for d in c.deny if not d.prefix.is_exact),
        "allow": len(c.allow),
        "signatures": len(c.signatures),
        "warnings": list(c.warnings),
        "applied": out.swap is not None,
        "generation": out.swap.gen if out.swap else None,
        "swap_ms": round(out.swap.seconds * 1000, 2) if out.swap else None,
    }


def _print_outcomes(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    table(["INTERFACE", "ADDED", "REMOVED", "CHANGED", "UNCHANGED", "DENY /32,/128", "DENY PFX",
           "ALLOW", "SIGNATURES", "RESULT"],
          [[r["interface"], len(r["added"]), len(r["removed"]), len(r["changed"]), r["unchanged"],
            r["deny_exact"], r["deny_prefix"], r["allow"], r["signatures"],
            f"generation {r['generation']} in force ({r['swap_ms']} ms)" if r["applied"]
            else "dry run: nothing changed"] for r in rows], right=[1, 2, 3, 4, 5, 6, 7, 8])
    for r in rows[:1]:
        for label in ("added", "removed", "changed"):
            if r[label]:
                print(f"{label}: {', '.join(r[label])}")
        for w in r["warnings"]:
            print(f"warning: {w}")


def cmd_rules_apply(args: argparse.Namespace) -> int:
    rules = enforce.load_file(Path(args.file))
    _print_outcomes(_edit_rules(args, lambda _: rules, dry_run=args.dry_run, replace_all=True),
                    args.json)
    return 0


def cmd_rules_del(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        _local_flags(args, ("interface", "dry_run"))
        return apicli.rules_delete(args, remote)
    _remote_flags(args, ("etag", "allow_missing", "reason"))

    def edit(rs: RuleSet) -> RuleSet:
        missing = [i for i in args.ids if rs.get(i) is None]
        if missing:
            raise InputError(f"no rule {', '.join(map(repr, missing))}: `breakwater rules list` shows them")
        return RuleSet.from_rules(r for r in rs.rules if r.id not in set(args.ids))

    _print_outcomes(_edit_rules(args, edit, dry_run=args.dry_run), args.json)
    return 0


def cmd_rules_preset(args: argparse.Namespace) -> int:
    dst = [parse_prefix(p, field="--dst") for p in args.dst]
    if args.action == "rate_limit":
        if not args.pps and not args.bps:
            raise InputError("--action rate_limit needs --pps and/or --bps")
        action = RuleAction("rate_limit", pps=args.pps, bps=args.bps, scope=args.scope)
    else:
        action = RuleAction(args.action)
    new = reflection_rule(args.id, dst, action, fragments=args.fragments, created_by=_user(),
                          comment="reflection preset")

    def edit(rs: RuleSet) -> RuleSet:
        ids = {r.id for r in new}
        return RuleSet.from_rules([*(r for r in rs.rules if r.id not in ids), *new])

    _print_outcomes(_edit_rules(args, edit, dry_run=args.dry_run), args.json)
    return 0


def _rule_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            prev = _recorded(args, maps)
            if prev is None:
                continue
            totals = counters.rule_totals(maps)
        for r in sorted(prev.rules.rules, key=lambda r: r.order):
            slot = prev.slots.get(r.id)
            t = totals.get(slot)
            rows.append({
                "interface": ifname, "id": r.id, "priority": r.priority, "action": r.action.to_value(),
                "match": r.match.to_dict(), "origin": r.origin,
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "comment": r.comment, "created_by": r.created_by, "slot": slot,
                "matched": t.packets if t else 0, "dropped": t.dropped if t else 0,
                "rate_limited": t.rate_limited if t else 0, "bytes": t.bytes if t else 0,
            })
    return rows


def _match_text(match: dict[str, Any]) -> str:
    parts = []
    for k, v in match.items():
        if isinstance(v, list):
            v = ",".join(map(str, v[:3])) + (f",+{len(v) - 3}" if len(v) > 3 else "")
        parts.append(f"{k}={v}")
    return " ".join(parts) or "(everything)"


def _action_text(action: Any) -> str:
    if isinstance(action, str):
        return action
    rate = " ".join(f"{k}={v}" for k, v in action.items() if k != "kind")
    return f"{action['kind']}({rate})"


def cmd_rules_list(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        _local_flags(args)
        return apicli.rules_list(args, remote)
    _remote_flags(args, ("filter", "show_expired", "limit"))
    rows = _rule_rows(args)
    if args.json:
        emit_json(rows)
        return 0
    table(["INTERFACE", "ID", "PRIO", "ACTION", "MATCH", "ORIGIN", "EXPIRES", "MATCHED", "DROPPED",
           "LIMITED"],
          [[r["interface"], r["id"], r["priority"], _action_text(r["action"]), _match_text(r["match"]),
            r["origin"], r["expires_at"] or "-", r["matched"], r["dropped"], r["rate_limited"]]
           for r in rows], right=[2, 7, 8, 9])
    return 0


def cmd_rules_show(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        _local_flags(args)
        return apicli.rules_get(args, remote)
    rows = [r for r in _rule_rows(args) if r["id"] == args.id]
    if not rows:
        raise InputError(f"no rule {args.id!r}: `breakwater rules list` shows them")
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        for k, v in r.items():
            print(f"{k:>13}: {v}")
    return 0


# -- allow / deny: edits of source-only rules ---------------------------------------

def cmd_list_add(args: argparse.Namespace) -> int:
    prefixes = _prefixes(args)
    kind: Literal["drop", "allow"] = "drop" if args.which == "deny" else "allow"
    if getattr(args, "management", False):
        return _management_add(args, prefixes)
    rule_id = args.rule or f"cli-{args.which}"
    rows = _edit_rules(args, lambda rs: enforce.with_sources(
        rs, rule_id, kind, prefixes, created_by=_user(), comment=f"breakwater {args.which} add"))
    _print_outcomes(rows, args.json)
    return 0


def _management_add(args: argparse.Namespace, prefixes: list[Prefix]) -> int:
    def mgmt(prev: enforce.Applied | None) -> tuple[Prefix, ...]:
        return tuple(dict.fromkeys((*(prev.management if prev else ()), *prefixes)))

    _print_outcomes(_edit_rules(args, lambda rs: rs, management=mgmt), args.json)
    return 0


def cmd_list_del(args: argparse.Namespace) -> int:
    prefixes = _prefixes(args)
    kind = "drop" if args.which == "deny" else "allow"
    found: list[int] = []

    def edit(rs: RuleSet) -> RuleSet:
        out, n = enforce.without_sources(rs, kind, prefixes)
        found.append(n)
        return out

    def mgmt(prev: enforce.Applied | None) -> tuple[Prefix, ...]:
        return tuple(p for p in (prev.management if prev else ()) if p not in set(prefixes))

    rows = _edit_rules(args, edit, management=mgmt if args.which == "allow" else None)
    if not any(found):
        print("none of those prefixes is in a source-only rule", file=sys.stderr)
    _print_outcomes(rows, args.json)
    return 0


def cmd_list_show(args: argparse.Namespace) -> int:
    out: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            prev = _recorded(args, maps)
            names = {s: rid for rid, s in (prev.slots.to_dict().items() if prev else [])}
            for e in policy.entries(maps, args.which):
                out.append({"interface": ifname, "prefix": str(e.prefix),
                            "rule": names.get(e.rule_id, "management" if e.management else "-"),
                            "slot": e.rule_id, "management": e.management, "hits": e.hits,
                            "hit_bytes": e.hit_bytes})
    if args.limit:
        out = out[: args.limit]
    if args.json:
        emit_json(out)
        return 0
    headers = ["INTERFACE", "PREFIX", "RULE"]
    if args.which == "allow":
        table([*headers, "KIND"], [[r["interface"], r["prefix"], r["rule"],
                                    "management" if r["management"] else "allow"] for r in out])
    else:
        table([*headers, "HITS", "HIT BYTES"],
              [[r["interface"], r["prefix"], r["rule"],
                r["hits"] if "/" not in r["prefix"] else "(per source)",
                human_bytes(r["hit_bytes"]) if "/" not in r["prefix"] else ""] for r in out],
              right=[3])
    return 0


# -- counters ------------------------------------------------------------------

def cmd_top(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        _local_flags(args)
        return apicli.top(args, remote)
    _remote_flags(args, ("node", "destinations", "window", "iterations"))
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
    remote = _remote(args)
    if remote is not None:
        _local_flags(args)
        return apicli.stats(args, remote)
    _remote_flags(args, ("node", "window"))
    report: list[dict[str, Any]] = []
    for ifname in _interfaces(args):
        with dataplane.open_maps(ifname, args.pin_root) as maps:
            actions = counters.action_totals(maps)
            reasons = counters.reason_totals(maps)
            rules = counters.rule_totals(maps)
            monitor = bool(maps.config().flags & abi.CFG_MONITOR)
            prev = _recorded(args, maps)
        names = {s: rid for rid, s in (prev.slots.to_dict().items() if prev else [])}
        report.append({
            "interface": ifname,
            "policy": "monitor" if monitor else "enforce",
            "actions": {a.label: dataclasses.asdict(t) for a, t in actions.items()},
            "reasons": {r.label: dataclasses.asdict(t) for r, t in reasons.items() if t.packets},
            "rules": {names.get(k, f"slot {k}"): dict(dataclasses.asdict(t), slot=k)
                      for k, t in sorted(rules.items())},
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
            table(["RULE", "SLOT", "MATCHED", "BYTES", "DROPPED", "RATE-LIMITED"],
                  [[k, v["slot"], v["packets"], human_bytes(v["bytes"]), v["dropped"], v["rate_limited"]]
                   for k, v in rep["rules"].items()], right=[1, 2, 3, 4, 5])
    return 0


def _agent_overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.agent_interface:
        out["interfaces"] = [{"name": n, **({"netns": args.netns} if args.netns else {})}
                             for n in args.agent_interface]
    elif args.netns:
        raise InputError("--netns needs --interface (or set netns per interface in the config)")
    if args.interval is not None:
        out["interval"] = args.interval
    if args.monitor is not None:
        out["mode"] = "monitor" if args.monitor else "enforce"
    for key in ("agent_pin_root", "agent_state_dir"):
        value = getattr(args, key)
        if value is not None:
            out[key.removeprefix("agent_")] = str(value)
    if args.metrics is not None:
        out["metrics"] = args.metrics
    for key in ("controller", "node_id", "api"):
        value = getattr(args, f"agent_{key}")
        if value is not None:
            out[key] = value
    if args.agent_label:
        labels: dict[str, str] = {}
        for item in args.agent_label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InputError(f"--label {item!r}: expected KEY=VALUE, e.g. --label site=fra1")
            labels[key] = value
        out["labels"] = labels
    return out


def cmd_agent(args: argparse.Namespace) -> int:
    from ..agent import config as agentconfig
    from ..agent import daemon as agent

    overrides = _agent_overrides(args)
    cfg = agentconfig.load(Path(args.config), overrides)
    if args.check_config:
        emit_json(cfg.to_dict())
        return 0
    return agent.run(cfg, config_path=Path(args.config), overrides=overrides)


def cmd_events(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        _local_flags(args, ("events_state_dir",))
        return apicli.events(args, remote)
    _remote_flags(args, ("filter", "follow", "after_sequence"))
    from ..agent.state import DB_NAME, Store

    state_dir = args.events_state_dir or args.state_dir
    path = state_dir / DB_NAME
    if not path.exists():
        raise BreakwaterError(f"no agent state at {path}: is `breakwater agent` running with this "
                              "--state-dir?")
    with Store.open(state_dir, readonly=True) as store:
        rows = store.events(args.limit)
    if args.json:
        emit_json([r.to_dict() for r in rows])
        return 0
    table(["TIME", "INTERFACE", "KIND", "VECTOR", "VICTIM", "PROFILE", "PEAK PPS", "RULES"],
          [[r.to_dict()["time"], r.ifname, r.kind, r.vector, r.victim or "-", r.profile,
            human_rate(r.peak_pps), ",".join(r.rules) or "-"] for r in rows], right=[6])
    return 0


def cmd_rules_create(args: argparse.Namespace) -> int:
    return apicli.rules_create(args, apicli.settings(args, required=True))


def cmd_rules_update(args: argparse.Namespace) -> int:
    return apicli.rules_update(args, apicli.settings(args, required=True))


def cmd_nodes_list(args: argparse.Namespace) -> int:
    return apicli.nodes_list(args, apicli.settings(args, required=True))


def cmd_nodes_get(args: argparse.Namespace) -> int:
    return apicli.nodes_get(args, apicli.settings(args, required=True))


def cmd_controller(args: argparse.Namespace) -> int:
    from ..fleet import daemon as controlplane
    from ..fleet.config import load_config

    overrides = {"listen": args.listen, "state_dir": args.controller_state_dir, "metrics": args.metrics,
                 "reconcile_interval": args.reconcile_interval}
    cfg = load_config(Path(args.config) if args.config else None, overrides)
    if args.check_config:
        emit_json(cfg.to_dict())
        return 0
    return controlplane.run(cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab import demo

    return demo.run(json_out=args.json, agent_log=args.agent_log)


# -- parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="breakwater",
        description="Breakwater: XDP edge DDoS mitigation. Local commands work on the "
                    "pinned maps of the interfaces Breakwater is attached to; rules, nodes, events, "
                    "top and stats talk to a controller (or an agent's API) with --server HOST:PORT "
                    "or $BREAKWATER_SERVER.",
    )
    p.add_argument("--pin-root", type=Path, default=dataplane.DEFAULT_PIN_ROOT,
                   help="bpffs directory of the pinned programs and maps "
                        "(default %(default)s, or $BREAKWATER_PIN_ROOT)")
    p.add_argument("--state-dir", type=Path, default=enforce.DEFAULT_STATE_DIR,
                   help="where the rule set in force is recorded (default %(default)s, "
                        "or $BREAKWATER_STATE_DIR)")
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
        add.add_argument("--rule", metavar="ID",
                         help=f"source-only rule to add them to (default cli-{which}; created if missing)")
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

    rp = sub.add_parser("rules", help="the rule set: local (apply a file atomically, list, show, delete) "
                                      "or a server's (list, get, create, update, delete with --server)")
    rsub = rp.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    ra = rsub.add_parser("apply", help="make FILE (TOML, or .json) the whole rule set, atomically")
    ra.add_argument("file", metavar="FILE")
    ra.add_argument("--dry-run", action="store_true", help="compile and show the diff, change nothing")
    common(ra)
    ra.set_defaults(func=cmd_rules_apply)
    rl = rsub.add_parser("list", help="rules in force with their counters (a server's: with --server)")
    common(rl)
    apicli.add_server_flags(rl)
    rl.add_argument("--filter", metavar="EXPR",
                    help='with a server: e.g. \'origin = RULE_ORIGIN_AUTO AND match.src: "198.51.100.7"\' '
                         "(docs/controlplane.md)")
    rl.add_argument("--show-expired", action="store_true",
                    help="with a server: also rules past their expiry that are not swept yet")
    rl.add_argument("--limit", type=int, default=0, help="with a server: at most N rules (default all)")
    rl.set_defaults(func=cmd_rules_list)
    rs_ = rsub.add_parser("show", aliases=["get"], help="one rule in full (a server's: with --server)")
    rs_.add_argument("id", metavar="ID", help="the rule id (or rules/ID)")
    common(rs_)
    apicli.add_server_flags(rs_)
    rs_.set_defaults(func=cmd_rules_show)
    rd = rsub.add_parser("del", aliases=["delete"], help="delete rules by id (a server's: with --server)")
    rd.add_argument("ids", nargs="+", metavar="ID")
    rd.add_argument("--dry-run", action="store_true", help="local: show the diff, change nothing")
    common(rd)
    apicli.add_server_flags(rd, reason=True)
    rd.add_argument("--etag", help="with a server: delete only if the rule's etag is still this")
    rd.add_argument("--allow-missing", action="store_true",
                    help="with a server: succeed if the rule does not exist")
    rd.set_defaults(func=cmd_rules_del)
    rc = rsub.add_parser("create", help="create a rule on a server (needs --server or $BREAKWATER_SERVER)")
    rc.add_argument("id", metavar="ID", nargs="?", help="the new rule's id")
    rc.add_argument("--file", metavar="FILE",
                    help="create every rule of a rule file (TOML, or .json) at once, all or none")
    rc.add_argument("--dry-run", action="store_true", help="validate on the server, create nothing")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apicli.add_server_flags(rc, reason=True)
    apicli.add_rule_flags(rc, update=False)
    rc.set_defaults(func=cmd_rules_create)
    ru = rsub.add_parser("update", help="change fields of a rule on a server (only the flags given)")
    ru.add_argument("id", metavar="ID", help="the rule id (or rules/ID)")
    ru.add_argument("--etag", help="change only if the rule's etag is still this (else: aborted)")
    ru.add_argument("--dry-run", action="store_true", help="validate on the server, change nothing")
    ru.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apicli.add_server_flags(ru, reason=True)
    apicli.add_rule_flags(ru, update=True)
    ru.set_defaults(func=cmd_rules_update)
    rpre = rsub.add_parser("preset", help="add a built-in rule group (reflection)")
    rpre.add_argument("preset", choices=["reflection"])
    rpre.add_argument("--dst", action="append", required=True, metavar="PREFIX",
                      help="protected destination prefix (repeatable)")
    rpre.add_argument("--action", choices=["drop", "rate_limit", "monitor"], default="drop")
    rpre.add_argument("--pps", type=int, help="with --action rate_limit: packets/s per port")
    rpre.add_argument("--bps", type=int, help="with --action rate_limit: bits/s per port")
    rpre.add_argument("--scope", choices=["aggregate", "per_source"], default="aggregate")
    rpre.add_argument("--id", default="amp", help="id prefix of the rules (default amp: amp-ntp, ...)")
    rpre.add_argument("--fragments", action="store_true", help="also match UDP fragments to --dst")
    rpre.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    common(rpre)
    rpre.set_defaults(func=cmd_rules_preset)

    t = sub.add_parser("top", help="top sources by rate, from two counter reads (the fleet's: with --server, "
                                   "refreshed live)")
    t.add_argument("--interval", type=float, default=1.0,
                   help="seconds between reads, or between refreshes with a server (default 1)")
    t.add_argument("-n", "--count", type=int, default=20, help="rows (default 20)")
    t.add_argument("--by", choices=["packets", "bytes", "drops"], default="packets",
                   help="rank by (a server ranks by packets or bytes)")
    t.add_argument("--watch", action="store_true",
                   help="refresh until interrupted (a server's top always refreshes, unless --json or "
                        "--iterations)")
    common(t)
    apicli.add_server_flags(t)
    t.add_argument("--node", metavar="NODE_ID", help="with a server: one node (default: the cluster)")
    t.add_argument("--destinations", action="store_true",
                   help="with a server: rank protected destinations instead of sources")
    t.add_argument("--window", type=float, metavar="SECONDS",
                   help="with a server: the window, ending now (default 60, at most 3600)")
    t.add_argument("--iterations", type=int, metavar="N",
                   help="with a server: stop after N refreshes (default: until Ctrl-C; 1 with --json)")
    t.set_defaults(func=cmd_top)

    st = sub.add_parser("stats", help="packets by action, reason and rule (the fleet's: with --server)")
    common(st)
    apicli.add_server_flags(st)
    st.add_argument("--node", metavar="NODE_ID", help="with a server: one node (default: the cluster)")
    st.add_argument("--window", type=float, metavar="SECONDS",
                    help="with a server: the window, ending now (default 60, at most 3600)")
    st.set_defaults(func=cmd_stats)

    np_ = sub.add_parser("nodes", help="the agents registered with a controller (needs --server)")
    nsub = np_.add_subparsers(dest="nodes_command", required=True, metavar="ACTION")
    nl = nsub.add_parser("list", help="every node: health, applied and target version, lag")
    nl.add_argument("--filter", metavar="EXPR",
                    help='e.g. \'labels.site = "fra1" AND health != NODE_HEALTH_HEALTHY\'')
    nl.add_argument("--limit", type=int, default=0, help="at most N nodes (default all)")
    nl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apicli.add_server_flags(nl)
    nl.set_defaults(func=cmd_nodes_list)
    ng = nsub.add_parser("get", help="one node in full")
    ng.add_argument("id", metavar="NODE_ID", help="the node id (or nodes/ID)")
    ng.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apicli.add_server_flags(ng)
    ng.set_defaults(func=cmd_nodes_get)

    ag = sub.add_parser("agent", help="run the detection and mitigation daemon")
    ag.add_argument("--config", default=str(DEFAULT_AGENT_CONFIG),
                    help="agent configuration, TOML (default %(default)s; see docs/agent.toml)")
    ag.add_argument("-i", "--interface", dest="agent_interface", action="append", metavar="IFACE",
                    help="interface to protect (repeatable; replaces the config's interfaces)")
    ag.add_argument("--netns", help="with --interface: network namespace of the interfaces")
    ag.add_argument("--interval", type=float, help="seconds between detection intervals (min 0.1)")
    amode = ag.add_mutually_exclusive_group()
    amode.add_argument("--monitor", dest="monitor", action="store_true", default=None,
                       help="plan and report, never apply automatic rules")
    amode.add_argument("--enforce", dest="monitor", action="store_false",
                       help="apply automatic rules (the default)")
    ag.add_argument("--pin-root", dest="agent_pin_root", type=Path,
                    help="bpffs directory of the pins (default: the config's pin_root)")
    ag.add_argument("--state-dir", dest="agent_state_dir", type=Path,
                    help="state directory, holds agent.db (default: the config's state_dir)")
    ag.add_argument("--metrics", metavar="ADDR:PORT",
                    help='metrics listen address (default 127.0.0.1:9611; "" disables)')
    ag.add_argument("--controller", dest="agent_controller", metavar="HOST:PORT",
                    help='the controller to sync rules with ("" runs standalone; default: the config\'s)')
    ag.add_argument("--node-id", dest="agent_node_id", metavar="ID",
                    help="this node's id at the controller (default: the config's, else the host name)")
    ag.add_argument("--label", dest="agent_label", action="append", metavar="KEY=VALUE",
                    help="a node label, e.g. site=fra1 (repeatable; replaces the config's labels)")
    ag.add_argument("--api", dest="agent_api", metavar="ADDR:PORT",
                    help='the local API listen address (default 127.0.0.1:9612; "" disables)')
    ag.add_argument("--check-config", action="store_true",
                    help="validate the configuration, print the effective one, exit (0 ok, 2 bad)")
    ag.set_defaults(func=cmd_agent)

    ev = sub.add_parser("events", help="recent attack events from the agent's state database (a server's "
                                       "attack and rule events with --server; --follow streams them)")
    ev.add_argument("--limit", type=int, default=50, help="at most N events, newest first (default 50)")
    ev.add_argument("--json", action="store_true",
                    help="print JSON instead of a table (one object per line with --follow)")
    ev.add_argument("--state-dir", dest="events_state_dir", type=Path,
                    help="the agent's state directory (default: the global --state-dir)")
    apicli.add_server_flags(ev)
    ev.add_argument("--filter", metavar="EXPR",
                    help="with a server: e.g. 'rule:*' or 'attack.phase = ATTACK_PHASE_STARTED'")
    ev.add_argument("-f", "--follow", action="store_true",
                    help="with a server: stream events as they are logged, until Ctrl-C")
    ev.add_argument("--after-sequence", type=int, metavar="SEQ",
                    help="with --follow: first replay the kept events after SEQ (0: all)")
    ev.set_defaults(func=cmd_events)

    ct = sub.add_parser("controller", help="run the control plane: the gRPC API and the agents' sync "
                                           "server, over a SQLite store")
    ct.add_argument("--config", metavar="FILE",
                    help="controller configuration, TOML (optional; keys in docs/controlplane.md)")
    ct.add_argument("--listen", metavar="HOST:PORT",
                    help="gRPC listen address (default 127.0.0.1:9610; 0.0.0.0:9610 serves other hosts)")
    ct.add_argument("--state-dir", dest="controller_state_dir", metavar="DIR",
                    help="holds controller.db (default /var/lib/breakwater-controller)")
    ct.add_argument("--metrics", metavar="ADDR:PORT",
                    help='Prometheus metrics address (default 127.0.0.1:9613; "" disables)')
    ct.add_argument("--reconcile-interval", type=float, metavar="SECONDS",
                    help="seconds between the reconciling snapshots agents get (default 30)")
    ct.add_argument("--check-config", action="store_true",
                    help="validate the configuration, print the effective one, exit (0 ok, 2 bad)")
    ct.set_defaults(func=cmd_controller)

    dm = sub.add_parser(
        "demo", help="the agent against a multi-vector flood in a namespace lab (~40 s, root)",
        description="Builds a namespace lab (a legitimate client, a botnet, reflectors and a spoofer "
                    "behind a bridge; an edge with XDP on its ingress veth, routing to an origin), runs "
                    "`breakwater agent` in it with a generated configuration, and floods the origin for "
                    "~30 s: a UDP flood from 12 real sources, a DNS reflection flood from 2000 sources, a "
                    "spoofed SYN flood. Shows live what the agent detects and mitigates, then a summary "
                    "per vector: time to detect and to mitigate (>= 99% of the flood dropped), flood "
                    "dropped, legitimate delivery. Removes everything it built, also on failure, "
                    "Ctrl-C or SIGTERM. Exit 0 when every vector was mitigated, 1 otherwise.")
    dm.add_argument("--json", action="store_true",
                    help="print the summary as JSON on stdout (the live view goes to stderr)")
    dm.add_argument("--agent-log", type=Path, metavar="FILE",
                    help="keep a copy of the agent's JSON log in FILE")
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

