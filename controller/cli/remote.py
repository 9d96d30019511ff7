"""The CLI's commands against a server: ``breakwater rules|nodes|events|top|stats
--server HOST:PORT`` (or ``$BREAKWATER_SERVER``, or the CLI config; see
:mod:`controller.api.client`).

:mod:`controller.cli` builds the parser and sends a command here when a
server is named; this module turns flags into requests and responses into
aligned tables, or JSON with ``--json`` (the resources as the proto's JSON
mapping with proto field names; a list is a JSON array; followed events
and live ``top`` refreshes are one JSON object per line).

Rule flags are the rule file's vocabulary (``docs/rules.md``): ``--src``,
``--dst``, ``--protocol``, ``--sport``, ``--dport``, ``--length``,
``--tcp-flags``, ``--fragment``, ``--action``, ``--pps``, ``--bps``,
``--burst-packets``, ``--burst-bytes``, ``--per-source``, ``--priority``,
``--ttl``, ``--expire-time``, ``--origin``, ``--comment``, and the scope:
``--node ID``, ``--selector KEY=VALUE`` (repeatable) or ``--everywhere``.
The server validates; its errors name the proto field (``rule.match.dport``).
``rules update`` sends only the fields given, as the update mask.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, node_pb2, reasons_pb2, rule_pb2, telemetry_pb2

from ..api.client import ENV_SERVER, ApiClient, ClientSettings, resolve, rule_name_of
from ..api.convert import FRAGMENTS, ORIGINS, rule_to_proto
from ..errors import FieldError, InputError
from ..output import emit_json, human_bytes, human_rate, table
from ..rules.enforce import load_file
from ..rules.model import PROTOCOLS, TcpFlags, parse_ttl, protocol_name

__all__ = [
    "add_rule_flags",
    "add_server_flags",
    "events",
    "nodes_get",
    "nodes_list",
    "rule_patch",
    "rules_create",
    "rules_delete",
    "rules_get",
    "rules_list",
    "rules_update",
    "settings",
    "stats",
    "top",
]


# --- flags ------------------------------------------------------------------------------


def add_server_flags(p: argparse.ArgumentParser, *, reason: bool = False) -> None:
    """``--server`` and ``--timeout`` (and ``--reason`` for changes)."""
    p.add_argument("--server", metavar="HOST:PORT",
                   help="the controller's (or an agent's) API; default $BREAKWATER_SERVER, then the "
                        "CLI config (~/.config/breakwater/cli.toml, /etc/breakwater/cli.toml)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-call timeout (default $BREAKWATER_TIMEOUT, the CLI config, or 10)")
    if reason:
        p.add_argument("--reason", default="", help="why: recorded in the audit log and rule events")


def add_rule_flags(p: argparse.ArgumentParser, *, update: bool) -> None:
    """The rule's fields as flags (``rules create`` and ``rules update``)."""
    m = p.add_argument_group("match (rule-file syntax, docs/rules.md)")
    m.add_argument("--src", action="append", metavar="PREFIX",
                   help="source address or prefix (repeatable, or comma-separated)")
    m.add_argument("--dst", action="append", metavar="PREFIX", help="destination address or prefix")
    m.add_argument("--protocol", metavar="NAME|NUMBER", help=f"{', '.join(PROTOCOLS)} or 0..255")
    m.add_argument("--sport", metavar="PORT[-PORT]", help="source ports (tcp, udp, sctp)")
    m.add_argument("--dport", metavar="PORT[-PORT]", help="destination ports (tcp, udp, sctp)")
    m.add_argument("--length", metavar="LO[-HI]", help="IP packet length in bytes")
    m.add_argument("--tcp-flags", metavar="FLAGS", help='e.g. "syn,!ack" (SYN set, ACK clear)')
    m.add_argument("--fragment", choices=["any", "yes", "no"], help="fragments only (yes) or none (no)")
    m.add_argument("--match-all", action="store_true",
                   help="match every packet (an empty match; instead of the flags above)")
    a = p.add_argument_group("action")
    a.add_argument("--action", choices=["drop", "rate_limit", "allow", "monitor"],
                   help="what to do with matching packets" + ("" if update else " (required)"))
    a.add_argument("--pps", type=int, help="rate_limit: packets per second")
    a.add_argument("--bps", type=int, help="rate_limit: bits per second")
    a.add_argument("--burst-packets", type=int, help="rate_limit: packet bucket size")
    a.add_argument("--burst-bytes", type=int, help="rate_limit: byte bucket size")
    scope = a.add_mutually_exclusive_group()
    scope.add_argument("--per-source", dest="per_source", action="store_true", default=None,
                       help="rate_limit: one bucket per source address")
    scope.add_argument("--aggregate", dest="per_source", action="store_false",
                       help="rate_limit: one bucket for the whole rule (the default)")
    o = p.add_argument_group("rule")
    o.add_argument("--priority", type=int, help="0..65535, lower first (default 1000)")
    expiry = o.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", metavar="DURATION", help="time to live, e.g. 600, 10m, 2h, 1d")
    expiry.add_argument("--expire-time", metavar="TIME", help='RFC 3339, e.g. "2026-05-01T12:00:00Z"')
    if update:
        expiry.add_argument("--permanent", action="store_true", help="remove the expiry")
    o.add_argument("--origin", choices=list(ORIGINS), help="who made it (default manual)")
    o.add_argument("--comment", help="free text, at most 1024 characters")
    where = p.add_argument_group("scope (default: every node)").add_mutually_exclusive_group()
    where.add_argument("--node", metavar="NODE_ID", help="only this node")
    where.add_argument("--selector", action="append", metavar="KEY=VALUE",
                       help="the nodes with this label (repeatable: all of them)")
    if update:
        where.add_argument("--everywhere", action="store_true", help="every node again")


def settings(args: argparse.Namespace, *, required: bool = False) -> ClientSettings:
    """Where this command's server is (None: not named anywhere; an
    InputError instead when the command needs one)."""
    s = resolve(getattr(args, "server", None), getattr(args, "timeout", None))
    if required and s.server is None:
        raise InputError(f"no server: give --server HOST:PORT, or set ${ENV_SERVER} "
                         "(this command talks to a controller or an agent's API)")
    return s


def _client(args: argparse.Namespace, s: ClientSettings) -> ApiClient:
    return ApiClient.from_settings(s, reason=getattr(args, "reason", ""))


# --- flags -> a patch of breakwater.v1.Rule ---------------------------------------------


def _range(text: str, flag: str, field: str) -> rule_pb2.Range:
    lo_text, sep, hi_text = text.partition("-")
    if not lo_text.strip().isdigit() or (sep and not hi_text.strip().isdigit()):
        raise FieldError(flag, f"{text!r} is not a number or a range like 1024-65535 ({field})")
    lo = int(lo_text)
    return rule_pb2.Range(lo=lo, hi=int(hi_text) if sep else lo)


def _protocol(text: str) -> int:
    name = text.strip().lower()
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name.isdigit() and 0 <= int(name) <= 255:
        return int(name)
    raise FieldError("--protocol", f"{text!r} is not a protocol; use {', '.join(PROTOCOLS)} or 0..255")


def _list(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def _labels(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FieldError("--selector", f"{item!r} is not KEY=VALUE (e.g. site=fra1)")
        out[key.strip()] = value.strip()
    return out


def _time(text: str, flag: str) -> datetime:
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise FieldError(flag, f"{text!r} is not an RFC 3339 time with an offset, e.g. 2026-05-01T12:00:00Z")
    return value.astimezone(UTC)


def rule_patch(args: argparse.Namespace) -> tuple[rule_pb2.Rule, list[str]]:
    """The rule fields the flags give, and their update-mask paths."""
    r = rule_pb2.Rule()
    paths: list[str] = []

    def mark(path: str) -> None:
        if path not in paths:
            paths.append(path)

    m = r.match
    if args.src:
        m.src.extend(_list(args.src))
        mark("match.src")
    if args.dst:
        m.dst.extend(_list(args.dst))
        mark("match.dst")
    if args.protocol is not None:
        m.protocol = _protocol(args.protocol)
        mark("match.protocol")
    for flag in ("sport", "dport", "length"):
        text = getattr(args, flag)
        if text is not None:
            getattr(m, flag).CopyFrom(_range(text, f"--{flag}", f"match.{flag}"))
            mark(f"match.{flag}")
    if args.tcp_flags is not None:
        try:
            flags = TcpFlags.parse(args.tcp_flags)
        except FieldError as exc:
            raise FieldError("--tcp-flags", exc.what) from None
        m.tcp_flags.CopyFrom(rule_pb2.TcpFlags(mask=flags.mask, value=flags.value))
        mark("match.tcp_flags")
    if args.fragment is not None:
        m.fragment = FRAGMENTS[args.fragment]
        mark("match.fragment")
    if args.match_all:
        if paths:
            raise InputError(f"--match-all matches every packet: leave out --{paths[0].split('.')[1]}")
        m.SetInParent()
        mark("match")
    rate = {"pps": args.pps, "bps": args.bps, "burst_packets": args.burst_packets,
            "burst_bytes": args.burst_bytes}
    rl = r.action.rate_limit
    for name, value in rate.items():
        if value is not None:
            setattr(rl, name, value)
    if args.per_source is not None:
        rl.scope = (rule_pb2.RATE_LIMIT_SCOPE_PER_SOURCE if args.per_source
                    else rule_pb2.RATE_LIMIT_SCOPE_AGGREGATE)
    rate_given = [n for n, v in rate.items() if v is not None] + (["scope"] if args.per_source is not None
                                                                   else [])
    if args.action is not None:
        r.action.kind = rule_pb2.ActionKind.Value(f"ACTION_KIND_{args.action.upper()}")
        if not rate_given:
            r.action.ClearField("rate_limit")
        mark("action")  # the whole action: a new kind drops a rate limit it no longer takes
    elif rate_given:
        for name in rate_given:
            mark(f"action.rate_limit.{name}")
    else:
        r.ClearField("action")
    if args.priority is not None:
        r.priority = args.priority
        mark("priority")
    if args.ttl is not None:
        try:
            r.ttl.FromTimedelta(parse_ttl(args.ttl))
        except FieldError as exc:
            raise FieldError("--ttl", exc.what) from None
        mark("ttl")
    if args.expire_time is not None:
        r.expire_time.FromDatetime(_time(args.expire_time, "--expire-time"))
        mark("expire_time")
    if getattr(args, "permanent", False):
        mark("expire_time")
    if args.origin is not None:
        r.origin = ORIGINS[args.origin]
        mark("origin")
    if args.comment is not None:
        r.comment = args.comment
        mark("comment")
    if args.node is not None:
        r.scope.node = f"nodes/{args.node.removeprefix('nodes/')}"
        mark("scope")
    elif args.selector:
        r.scope.node_selector.match_labels.update(_labels(args.selector))
        mark("scope")
    elif getattr(args, "everywhere", False):
        mark("scope")
    if not paths:
        r.ClearField("match")
    return r, paths


# --- showing resources ------------------------------------------------------------------


def _dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def _ts(msg: Message, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - at).total_seconds()
    return f"{_span(abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _range_text(r: rule_pb2.Range) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"


def match_text(m: rule_pb2.Match) -> str:
    parts = []
    for name in ("src", "dst"):
        values = list(getattr(m, name))
        if values:
            shown = ",".join(values[:3]) + (f",+{len(values) - 3}" if len(values) > 3 else "")
            parts.append(f"{name}={shown}")
    if m.HasField("protocol"):
        parts.append(f"protocol={protocol_name(m.protocol)}")
    for name, present, r in (("sport", m.HasField("sport"), m.sport), ("dport", m.HasField("dport"), m.dport),
                             ("length", m.HasField("length"), m.length)):
        if present:
            parts.append(f"{name}={_range_text(r)}")
    if m.HasField("tcp_flags"):
        try:
            parts.append(f"tcp_flags={TcpFlags(m.tcp_flags.mask, m.tcp_flags.value)}")
        except FieldError:
            parts.append(f"tcp_flags=0x{m.tcp_flags.value:02x}/0x{m.tcp_flags.mask:02x}")
    frag = {v: k for k, v in FRAGMENTS.items()}.get(m.fragment, "any")
    if frag != "any":
        parts.append(f"fragment={frag}")
    return " ".join(parts) or "(everything)"


def action_text(a: rule_pb2.Action) -> str:
    kind = rule_pb2.ActionKind.Name(a.kind).removeprefix("ACTION_KIND_").lower()
    if a.kind != rule_pb2.ACTION_KIND_RATE_LIMIT:
        return kind
    rl = a.rate_limit
    fields = (("pps", rl.HasField("pps"), rl.pps), ("bps", rl.HasField("bps"), rl.bps),
              ("burst_packets", rl.HasField("burst_packets"), rl.burst_packets),
              ("burst_bytes", rl.HasField("burst_bytes"), rl.burst_bytes))
    parts = [f"{n}={v}" for n, has, v in fields if has]
    if rl.scope == rule_pb2.RATE_LIMIT_SCOPE_PER_SOURCE:
        parts.append("per_source")
    return f"{kind}({' '.join(parts)})"


def scope_text(r: rule_pb2.Rule) -> str:
    which = r.scope.WhichOneof("target")
    if which == "node":
        return r.scope.node
    if which == "node_selector":
        return ",".join(f"{k}={v}" for k, v in sorted(r.scope.node_selector.match_labels.items()))
    return "every node"


def _origin(r: rule_pb2.Rule) -> str:
    name = rule_pb2.RuleOrigin.Name(r.origin or rule_pb2.RULE_ORIGIN_MANUAL)
    return name.removeprefix("RULE_ORIGIN_").lower()


def _rule_rows(rules: Sequence[rule_pb2.Rule]) -> None:
    table(["ID", "PRIO", "ACTION", "MATCH", "SCOPE", "ORIGIN", "EXPIRES", "VERSION", "CREATED BY"],
          [[r.name.removeprefix("rules/"), r.priority, action_text(r.action), match_text(r.match),
            scope_text(r), _origin(r), _when(_ts(r, "expire_time")), r.version, r.created_by or "-"]
           for r in rules], right=[1, 7])


def _show_rule(r: rule_pb2.Rule, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    rows = [("name", r.name), ("match", match_text(r.match)), ("action", action_text(r.action)),
            ("priority", r.priority), ("scope", scope_text(r)), ("origin", _origin(r)),
            ("expire_time", _when(_ts(r, "expire_time"))), ("comment", r.comment or "-"),
            ("created_by", r.created_by or "-"), ("create_time", _when(_ts(r, "create_time"))),
            ("update_time", _when(_ts(r, "update_time"))), ("version", r.version), ("etag", r.etag or "-")]
    for key, value in rows:
        stream.write(f"{key:>12}: {value}\n")


# --- rules ------------------------------------------------------------------------------


def rules_list(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        rules, version = c.list_rules(filter=args.filter or "", show_expired=args.show_expired,
                                      limit=args.limit or 0)
    if args.json:
        emit_json([_dict(r) for r in rules])
        return 0
    _rule_rows(rules)
    print(f"{len(rules)} rule(s) at rule set version {version} ({s.server})")
    return 0


def rules_get(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        rule = c.get_rule(args.id)
    if args.json:
        emit_json(_dict(rule))
    else:
        _show_rule(rule)
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
            made = c.create_rules(requests, validate_only=args.dry_run)
    else:
        if not args.id:
            raise InputError("rules create needs a rule ID (or --file FILE)")
        if not patch.HasField("match"):
            raise InputError("say which packets: --src, --dst, --protocol, --sport, --dport, --length, "
                             "--tcp-flags, --fragment, or --match-all for every packet")
        with _client(args, s) as c:
            made = [c.create_rule(args.id, patch, validate_only=args.dry_run)]
    if args.json:
        emit_json([_dict(r) for r in made] if args.file else _dict(made[0]))
        return 0
    if args.file:
        _rule_rows(made)
    else:
        _show_rule(made[0])
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
        rule = c.update_rule(patch, paths, validate_only=args.dry_run)
    if args.json:
        emit_json(_dict(rule))
        return 0
    _show_rule(rule)
    print(("validated, nothing changed: " if args.dry_run else "updated: ") + ", ".join(paths))
    return 0


def rules_delete(args: argparse.Namespace, s: ClientSettings) -> int:
    if args.etag and len(args.ids) > 1:
        raise InputError("--etag names one rule's version: delete one rule with it")
    names: list[str] = []
    with _client(args, s) as c:
        for rule_id in args.ids:  # one DeleteRule each: an error stops there
            try:
                c.delete_rule(rule_id, etag=args.etag or "", allow_missing=args.allow_missing)
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

_HEALTH: dict[int, str] = {node_pb2.NODE_HEALTH_HEALTHY: "healthy", node_pb2.NODE_HEALTH_DEGRADED: "degraded",
                           node_pb2.NODE_HEALTH_UNREACHABLE: "unreachable"}


def _mode(n: node_pb2.Node) -> str:
    return {node_pb2.AGENT_MODE_ENFORCE: "enforce", node_pb2.AGENT_MODE_MONITOR: "monitor"}.get(n.mode, "-")


def _lag(n: node_pb2.Node) -> str:
    seconds = n.lag.seconds + n.lag.nanos / 1e9
    return "-" if seconds == 0 else _span(seconds)


def nodes_list(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        nodes = c.list_nodes(filter=args.filter or "", limit=args.limit or 0)
    if args.json:
        emit_json([_dict(n) for n in nodes])
        return 0
    now = datetime.now(UTC)
    table(["NODE", "HEALTH", "CONNECTED", "APPLIED", "TARGET", "LAG", "HEARD FROM", "AGENT", "MODE", "LABELS",
           "DETAIL"],
          [[n.name.removeprefix("nodes/"), _HEALTH.get(n.health, "unknown"), "yes" if n.connected else "no",
            n.applied_rule_version, n.target_rule_version, _lag(n), _ago(_ts(n, "last_heartbeat_time"), now),
            n.agent_version or "-", _mode(n), _labels_text(n), n.health_detail or "-"] for n in nodes],
          right=[3, 4])
    return 0


def _labels_text(n: node_pb2.Node) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"


def _interface(i: node_pb2.NodeInterface) -> str:
    mode = _enum_name(node_pb2.AttachMode, i.attach_mode, "ATTACH_MODE_")
    return f"{i.name}{'@' + i.netns if i.netns else ''} ({mode})"


def nodes_get(args: argparse.Namespace, s: ClientSettings) -> int:
    with _client(args, s) as c:
        n = c.get_node(args.id)
    if args.json:
        emit_json(_dict(n))
        return 0
    rows = [("name", n.name), ("health", _HEALTH.get(n.health, "unknown")),
            ("detail", n.health_detail or "-"), ("connected", "yes" if n.connected else "no"),
            ("applied", n.applied_rule_version), ("target", n.target_rule_version), ("lag", _lag(n)),
            ("heard from", _ago(_ts(n, "last_heartbeat_time"))), ("agent", n.agent_version or "-"),
            ("mode", _mode(n)), ("labels", _labels_text(n)),
            ("interfaces", ", ".join(_interface(i) for i in n.interfaces) or "-"),
            ("registered", _when(_ts(n, "create_time")))]
    if n.HasField("last_error"):
        rows.append(("last error", n.last_error.message))
    for key, value in rows:
        print(f"{key:>12}: {value}")
    return 0


# --- events -----------------------------------------------------------------------------


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def event_kind(e: event_pb2.Event) -> str:
    if e.WhichOneof("payload") == "attack":
        return f"attack {_enum_name(event_pb2.AttackPhase, e.attack.phase, 'ATTACK_PHASE_')}"
    if e.WhichOneof("payload") == "rule":
        return f"rule {_enum_name(event_pb2.RuleEventKind, e.rule.kind, 'RULE_EVENT_KIND_')}"
    return "unknown"


def event_detail(e: event_pb2.Event) -> str:
    if e.WhichOneof("payload") == "attack":
        a = e.attack
        vector = _enum_name(event_pb2.AttackVector, a.vector, "ATTACK_VECTOR_")
        profile = _enum_name(event_pb2.AttackProfile, a.profile, "ATTACK_PROFILE_")
        rules = f" rules {','.join(a.applied_rule_ids)}" if a.applied_rule_ids else ""
        return (f"{a.attack_id}: {vector} to {a.victim or '-'} ({profile}), peak {human_rate(a.peak_pps)} pps"
                f"{rules}")
    if e.WhichOneof("payload") == "rule":
        r = e.rule
        what = f"{r.rule_id} v{r.version} by {r.actor or '-'}"
        if r.HasField("rule") and r.kind != event_pb2.RULE_EVENT_KIND_REJECTED:
            what += f": {action_text(r.rule.action)} {match_text(r.rule.match)}"
        if r.HasField("error"):
            what += f": {r.error.message}"
        if r.reason:
            what += f" ({r.reason})"
        return what
    return "-"


def _event_row(e: event_pb2.Event) -> list[object]:
    return [e.sequence, _when(_ts(e, "time")), e.node.removeprefix("nodes/") or "controller", event_kind(e),
            event_detail(e)]


_EVENT_HEADERS = ["SEQ", "TIME", "NODE", "KIND", "WHAT"]


def events(args: argparse.Namespace, s: ClientSettings) -> int:
    if args.follow:
        return _follow(args, s)
    with _client(args, s) as c:
        found = c.list_events(filter=args.filter or "", limit=args.limit)
    if args.json:
        emit_json([_dict(e) for e in found])
        return 0
    table(_EVENT_HEADERS, [_event_row(e) for e in found], right=[0])
    return 0


def _follow(args: argparse.Namespace, s: ClientSettings) -> int:
    c = _client(args, s)
    try:
        with c.watch_events(filter=args.filter or "", after_sequence=args.after_sequence) as stream:
            if not args.json:
                print("  ".join(_EVENT_HEADERS), flush=True)
            for e in stream:
                if args.json:
                    print(json.dumps(_dict(e), separators=(",", ":")), flush=True)
                else:
                    print("  ".join(str(cell) for cell in _event_row(e)), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        c.close()
    return 0


# --- telemetry --------------------------------------------------------------------------


def _rate(v: float) -> str:
    return human_rate(v)


def _top_once(c: ApiClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    by_bytes = args.by == "bytes"
    resp = c.top_talkers(node=args.node or "", destinations=args.destinations, by_bytes=by_bytes,
                         window=args.window, limit=args.count)
    start, end = _ts(resp, "start_time"), _ts(resp, "end_time")
    span = f"{(end - start).total_seconds():g}s" if start and end else "?"
    who = args.node or "the cluster"
    head = (f"top {'destinations' if args.destinations else 'sources'} by {args.by} over {span}, {who} "
            f"({resp.nodes_reporting} node(s) reporting) at {_when(end)}")
    rows = [[t.address, _rate(t.pps), _rate(t.bps), _rate(t.dropped_pps), t.counters.packets,
             human_bytes(t.counters.bytes), t.counters.drops, t.node_count,
             ",".join(n.removeprefix("nodes/") for n in t.nodes[:3]) + ("…" if len(t.nodes) > 3 else "")]
            for t in resp.top_talkers]
    import io

    text = io.StringIO()
    text.write(head + "\n")
    table(["ADDRESS", "PPS", "BPS", "DROPS/S", "PACKETS", "BYTES", "DROPS", "NODES", "SEEN BY"], rows,
          out=text, right=[1, 2, 3, 4, 5, 6, 7])
    return _dict(resp), text.getvalue()


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
        emit_json(_dict(st))
        return 0
    start, end = _ts(st, "start_time"), _ts(st, "end_time")
    span = f"{(end - start).total_seconds():g}s" if start and end else "?"
    print(f"{st.node or 'nodes/-'} over {span} ending {_when(end)}: {st.nodes_reporting} node(s) reporting, "
          f"peak {st.peak_active_sources} active sources")
    acts: list[tuple[str, telemetry_pb2.Count]] = [
        ("passed", st.actions.passed), ("dropped", st.actions.dropped), ("monitored", st.actions.monitored),
        ("aborted", st.actions.aborted)]
    table(["ACTION", "PACKETS", "BYTES"], [[name, cnt.packets, human_bytes(cnt.bytes)] for name, cnt in acts],
          right=[1, 2])
    if st.reasons:
        print()
        table(["REASON", "CODE", "PACKETS", "BYTES"],
              [[_enum_name(reasons_pb2.DropReason, r.reason, "DROP_REASON_"), r.reason, r.count.packets,
                human_bytes(r.count.bytes)] for r in st.reasons], right=[1, 2, 3])
    if st.rules:
        print()
        table(["RULE", "MATCHED", "BYTES", "DROPPED", "RATE-LIMITED"],
              [[r.rule_id, r.matched.packets, human_bytes(r.matched.bytes), r.dropped, r.rate_limited]
               for r in st.rules], right=[1, 2, 3, 4])
    return 0
