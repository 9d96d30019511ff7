"""The local forms of ``rules``, ``deny``/``allow``, ``top``, ``stats`` and
``events``: the rule set recorded under ``--state-dir`` and swapped into the
pinned maps, the counters in those maps, the agent's state database.

Rule-set edits (``rules apply|del|preset``, ``deny``/``allow add|del``) run
under the maps' lock through :func:`controller.rules.enforce.apply`, one
interface at a time; ``allow``/``deny`` edit source-only rules
(:func:`~controller.rules.enforce.with_sources`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ..addresses import Prefix, parse_prefix
from ..dataplane import abi, attach, counters
from ..dataplane import entries as policy
from ..dataplane.pinned import MapSet
from ..dataplane.reasons import Action, Reason
from ..errors import BreakwaterError, InputError
from ..output import emit_json, human_bytes, human_rate, table
from ..rules import enforce
from ..rules.blocklist import read_file
from ..rules.model import RuleAction, RuleSet
from ..rules.presets import reflection_rule
from .dataplane import interfaces

__all__ = [
    "cmd_events",
    "cmd_list_add",
    "cmd_list_del",
    "cmd_list_show",
    "cmd_rules_apply",
    "cmd_rules_del",
    "cmd_rules_list",
    "cmd_rules_preset",
    "cmd_rules_show",
    "cmd_stats",
    "cmd_top",
]

LOGGER = logging.getLogger("breakwater.cli")


def _prefixes(args: argparse.Namespace) -> list[Prefix]:
    out = [parse_prefix(p, field="prefix") for p in args.prefixes]
    for f in args.file or []:
        out.extend(read_file(Path(f)))
    if not out:
        raise InputError("no prefixes given: name them or pass --file")
    return out


def _user() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"


def _edit_rules(args: argparse.Namespace, edit: Callable[[RuleSet], RuleSet],
                dry_run: bool = False, replace_all: bool = False,
                management: Callable[[enforce.Applied | None], tuple[Prefix, ...]] | None = None,
                ) -> list[dict[str, Any]]:
    """Apply ``edit`` to each interface's rule set and swap the result in."""
    rows: list[dict[str, Any]] = []
    for ifname in interfaces(args):
        with attach.open_maps(ifname, args.pin_root) as maps, maps.locked():
            prev = _previous(args, maps, replace_all)
            before = prev.rules if prev else RuleSet.from_rules(())
            after = edit(before)
            mgmt = management(prev) if management else (prev.management if prev else ())
            out = enforce.apply(maps, after, prev, management=mgmt, dry_run=dry_run,
                                state_dir=args.state_dir)
        rows.append(_outcome_row(ifname, out))
    return rows


def _previous(args: argparse.Namespace, maps: MapSet, replace_all: bool) -> enforce.Applied | None:
    """The recorded rule set; when it does not match the maps, a whole new set
    (`rules apply`) may still replace it, an edit may not."""
    if replace_all:
        return enforce.recorded(args.state_dir, maps)
    return enforce.load_applied(args.state_dir, maps)


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
    for ifname in interfaces(args):
        with attach.open_maps(ifname, args.pin_root) as maps:
            prev = enforce.recorded(args.state_dir, maps)
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
    for ifname in interfaces(args):
        with attach.open_maps(ifname, args.pin_root) as maps:
            prev = enforce.recorded(args.state_dir, maps)
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
    ifnames = interfaces(args)
    while True:
        rows: list[dict[str, Any]] = []
        opened = [attach.open_maps(n, args.pin_root) for n in ifnames]
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
    for ifname in interfaces(args):
        with attach.open_maps(ifname, args.pin_root) as maps:
            actions = counters.action_totals(maps)
            reasons = counters.reason_totals(maps)
            rules = counters.rule_totals(maps)
            monitor = bool(maps.config().flags & abi.CFG_MONITOR)
            prev = enforce.recorded(args.state_dir, maps)
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


# -- events ------------------------------------------------------------------

def cmd_events(args: argparse.Namespace) -> int:
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
