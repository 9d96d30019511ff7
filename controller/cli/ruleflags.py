"""The rule's fields as command-line flags (``rules create`` and ``rules
update --server``), and the flags given back as a patch of
``breakwater.v1.Rule`` with its update-mask paths.

The flags are the rule file's vocabulary (``docs/rules.md``): ``--src``,
``--dst``, ``--protocol``, ``--sport``, ``--dport``, ``--length``,
``--tcp-flags``, ``--fragment``, ``--action``, ``--pps``, ``--bps``,
``--burst-packets``, ``--burst-bytes``, ``--per-source``, ``--priority``,
``--ttl``, ``--expire-time``, ``--origin``, ``--comment``, and the scope:
``--node ID``, ``--selector KEY=VALUE`` (repeatable) or ``--everywhere``.
The server validates; its errors name the proto field (``rule.match.dport``),
the checks here name the flag. ``rules update`` sends only the fields given,
as the update mask.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime

from breakwater.v1 import rule_pb2

from ..api.convert import FRAGMENTS, ORIGINS
from ..errors import FieldError, InputError
from ..rules.values import PROTOCOLS, TcpFlags, parse_ttl

__all__ = ["add_rule_flags", "rule_patch"]


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
