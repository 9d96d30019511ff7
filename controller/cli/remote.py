"""The CLI's commands against a server: ``breakwater rules|nodes|events|top|stats
--server HOST:PORT`` (or ``$BREAKWATER_SERVER``, or the CLI config; see
:mod:`controller.api.client`).

:mod:`controller.cli.dispatch` sends a command here when a server is named
(or the command needs one); this module turns flags into requests
(:mod:`controller.cli.ruleflags` for a rule's fields) and shows the answers
through :mod:`controller.cli.render`: aligned tables, or JSON with
``--json`` (the resources as the proto's JSON mapping with proto field
names; a list is a JSON array; followed events and live ``top`` refreshes
are one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..api.client import ApiClient, ClientSettings, node_name_of, rule_name_of
from ..api.convert import rule_to_proto
from ..errors import InputError
from ..output import emit_json
from ..rules.enforce import load_file
from . import render
from .render import as_dict
from .ruleflags import rule_patch

__all__ = [
    "events",
    "nodes_get",
    "nodes_list",
    "nodes_remove",
    "rules_create",
    "rules_delete",
    "rules_get",
    "rules_list",
    "rules_update",
    "stats",
    "top",
]


def _client(args: argparse.Namespace, s: ClientSettings) -> ApiClient:
    return ApiClient.from_settings(s, reason=getattr(args, "reason", ""))


# --- rules ------------------------------------------------------------------------------


def rules_list(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        rules, version = c.list_rules(filter=args.filter or "", show_expired=args.show_expired,
                                      limit=args.limit or 0)
    if args.json:
        emit_json([as_dict(r) for r in rules])
        return 0
    render.rule_table(rules)
    print(f"{len(rules)} rule(s) at rule set version {version} ({s.server})")
    return 0


def rules_get(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        rule = c.get_rule(args.id)
    if args.json:
        emit_json(as_dict(rule))
    else:
        render.show_rule(rule)
    return 0


def rules_create(args: argparse.Namespace, s: ClientSettings) -> int:
    patch, _ = rule_patch(args)
    if args.file:
        if args.id:
            raise InputError("give a rule ID or --file, not both (the file's rules have their ids)")
        requests = []
        for rule in load_file(Path(args.file)):
            msg = rule_to_proto(rule)
            if patch.HasField("scope"):
                msg.scope.CopyFrom(patch.scope)
            requests.append((rule.id, msg))
        if not requests:
            raise InputError(f"{args.file}: no rules in it")
        with _client(args, s) as c:
            made = c.create_rules(requests, validate_only=args.dry_run, overrides=args.override or ())
    else:
        if not args.id:
            raise InputError("rules create needs a rule ID (or --file FILE)")
        if not patch.HasField("match"):
            raise InputError("say which packets: --src, --dst, --protocol, --sport, --dport, --length, "
                             "--tcp-flags, --fragment, or --match-all for every packet")
        with _client(args, s) as c:
            made = [c.create_rule(args.id, patch, validate_only=args.dry_run, overrides=args.override or ())]
    if args.json:
        emit_json([as_dict(r) for r in made] if args.file else as_dict(made[0]))
        return 0
    if args.file:
        render.rule_table(made)
    else:
        render.show_rule(made[0])
    print(("validated, nothing created: " if args.dry_run else "created ")
          + f"{len(made)} rule(s)" + ("" if args.dry_run else f" in version {made[0].version}"))
    return 0


def rules_update(args: argparse.Namespace, s: ClientSettings) -> int:
    patch, paths = rule_patch(args)
    if not paths:
        raise InputError("nothing to change: give the fields to update (e.g. --action, --ttl, --dport)")
    patch.name = rule_name_of(args.id)
    if args.etag:
        patch.etag = args.etag
    with _client(args, s) as c:
        rule = c.update_rule(patch, paths, validate_only=args.dry_run, overrides=args.override or ())
    if args.json:
        emit_json(as_dict(rule))
        return 0
    render.show_rule(rule)
    print(("validated, nothing changed: " if args.dry_run else "updated: ") + ", ".join(paths))
    return 0


def rules_delete(args: argparse.Namespace, s: ClientSettings) -> int:
    if args.etag and len(args.ids) > 1:
        raise InputError("--etag names one rule's version: delete one rule with it")
    names: list[str] = []
    with _client(args, s) as c:
        for rule_id in args.ids:  # one DeleteRule each: an error stops there
            try:
                c.delete_rule(rule_id, etag=args.etag or "", allow_missing=args.allow_missing,
                              overrides=args.override or ())
            except BaseException:
                if names:
                    print(f"deleted {', '.join(names)} before the error", file=sys.stderr)
                raise
            names.append(rule_name_of(rule_id))
    if args.json:
        emit_json([{"name": n, "deleted": True} for n in names])
    else:
        print(f"deleted {', '.join(names)}")
    return 0


# --- nodes ------------------------------------------------------------------------------


def nodes_list(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        nodes = c.list_nodes(filter=args.filter or "", limit=args.limit or 0)
    if args.json:
        emit_json([as_dict(n) for n in nodes])
        return 0
    render.node_table(nodes)
    return 0


def nodes_get(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        n = c.get_node(args.id)
    if args.json:
        emit_json(as_dict(n))
        return 0
    render.show_node(n)
    return 0


def nodes_remove(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        c.delete_node(args.id)
    print(f"removed {node_name_of(args.id)}: its stream ended and its certificate is revoked "
          "(it can come back only with a new one)")
    return 0


# --- events -----------------------------------------------------------------------------


def events(args: argparse.Namespace, s: ClientSettings) -> int:
    if args.follow:
        return _follow(args, s)
    with _client(args, s) as c:
        found = c.list_events(filter=args.filter or "", limit=args.limit)
    if args.json:
        emit_json([as_dict(e) for e in found])
        return 0
    render.event_table(found)
    return 0


def _follow(args: argparse.Namespace, s: ClientSettings) -> int:
    c = _client(args, s)
    try:
        with c.watch_events(filter=args.filter or "", after_sequence=args.after_sequence) as stream:
            if not args.json:
                print("  ".join(render.EVENT_HEADERS), flush=True)
            for e in stream:
                if args.json:
                    print(json.dumps(as_dict(e), separators=(",", ":")), flush=True)
                else:
                    print("  ".join(str(cell) for cell in render.event_row(e)), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        c.close()
    return 0


# --- telemetry --------------------------------------------------------------------------


def _top_once(c: ApiClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    by_bytes = args.by == "bytes"
    resp = c.top_talkers(node=args.node or "", destinations=args.destinations, by_bytes=by_bytes,
                         window=args.window, limit=args.count)
    return as_dict(resp), render.top_text(resp, by=args.by, destinations=args.destinations,
                                          node=args.node or "")


def top(args: argparse.Namespace, s: ClientSettings) -> int:
    if args.by == "drops":
        raise InputError("--by drops works on local counters only; the API ranks by packets or bytes")
    iterations = args.iterations if args.iterations is not None else (1 if args.json else 0)
    live = sys.stdout.isatty() and not args.json
    n = 0
    try:
        with _client(args, s) as c:
            while True:
                doc, text = _top_once(c, args)
                n += 1
                if args.json:
                    print(json.dumps(doc, separators=(",", ":")) if iterations != 1 else
                          json.dumps(doc, indent=2), flush=True)
                else:
                    if live:
                        sys.stdout.write("\x1b[2J\x1b[H")
                    elif n > 1:
                        sys.stdout.write("\n")
                    sys.stdout.write(text)
                    sys.stdout.flush()
                if iterations and n >= iterations:
                    return 0
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def stats(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        st = c.get_stats(node=args.node or "", window=args.window)
    if args.json:
        emit_json(as_dict(st))
        return 0
    render.show_stats(st)
    return 0
