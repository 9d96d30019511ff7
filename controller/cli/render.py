"""How the fleet API's resources read in a terminal: rules, nodes, events,
top talkers and stats as aligned tables and ``key: value`` blocks, and any
message as the proto's JSON mapping with proto field names (``--json``).

:mod:`controller.cli.remote` makes the calls and picks the form; this module
only turns ``breakwater.v1`` messages into text (times in UTC, RFC 3339 to
the second; enums by their short lower-case names).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, node_pb2, reasons_pb2, rule_pb2, telemetry_pb2, telemetry_service_pb2

from ..api.convert import FRAGMENTS
from ..errors import FieldError
from ..output import human_bytes, human_rate, table
from ..rules.values import TcpFlags, protocol_name

__all__ = [
    "EVENT_HEADERS",
    "as_dict",
    "event_row",
    "event_table",
    "node_table",
    "rule_table",
    "show_node",
    "show_rule",
    "show_stats",
    "top_text",
]


def as_dict(msg: Message) -> dict[str, Any]:
    """``msg`` as the proto's JSON mapping, with proto field names."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


# --- times and enums --------------------------------------------------------------------


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


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


# --- rules ------------------------------------------------------------------------------


def _range_text(r: rule_pb2.Range) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"


def _match_text(m: rule_pb2.Match) -> str:
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


def _action_text(a: rule_pb2.Action) -> str:
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


def _scope_text(r: rule_pb2.Rule) -> str:
    which = r.scope.WhichOneof("target")
    if which == "node":
        return r.scope.node
    if which == "node_selector":
        return ",".join(f"{k}={v}" for k, v in sorted(r.scope.node_selector.match_labels.items()))
    return "every node"


def _origin(r: rule_pb2.Rule) -> str:
    name = rule_pb2.RuleOrigin.Name(r.origin or rule_pb2.RULE_ORIGIN_MANUAL)
    return name.removeprefix("RULE_ORIGIN_").lower()


def rule_table(rules: Sequence[rule_pb2.Rule]) -> None:
    """One row per rule on stdout."""
    table(["ID", "PRIO", "ACTION", "MATCH", "SCOPE", "ORIGIN", "EXPIRES", "VERSION", "CREATED BY"],
          [[r.name.removeprefix("rules/"), r.priority, _action_text(r.action), _match_text(r.match),
            _scope_text(r), _origin(r), _when(_ts(r, "expire_time")), r.version, r.created_by or "-"]
           for r in rules], right=[1, 7])


def show_rule(r: rule_pb2.Rule, out: TextIO | None = None) -> None:
    """One rule in full, a field a line (on stdout unless ``out``)."""
    stream = out or sys.stdout
    rows = [("name", r.name), ("match", _match_text(r.match)), ("action", _action_text(r.action)),
            ("priority", r.priority), ("scope", _scope_text(r)), ("origin", _origin(r)),
            ("expire_time", _when(_ts(r, "expire_time"))), ("comment", r.comment or "-"),
            ("created_by", r.created_by or "-"), ("create_time", _when(_ts(r, "create_time"))),
            ("update_time", _when(_ts(r, "update_time"))), ("version", r.version), ("etag", r.etag or "-")]
    for key, value in rows:
        stream.write(f"{key:>12}: {value}\n")


# --- nodes ------------------------------------------------------------------------------

_HEALTH: dict[int, str] = {node_pb2.NODE_HEALTH_HEALTHY: "healthy", node_pb2.NODE_HEALTH_DEGRADED: "degraded",
                           node_pb2.NODE_HEALTH_UNREACHABLE: "unreachable"}


def _mode(n: node_pb2.Node) -> str:
    return {node_pb2.AGENT_MODE_ENFORCE: "enforce", node_pb2.AGENT_MODE_MONITOR: "monitor"}.get(n.mode, "-")


def _lag(n: node_pb2.Node) -> str:
    seconds = n.lag.seconds + n.lag.nanos / 1e9
    return "-" if seconds == 0 else _span(seconds)


def _labels_text(n: node_pb2.Node) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"


def _interface(i: node_pb2.NodeInterface) -> str:
    mode = _enum_name(node_pb2.AttachMode, i.attach_mode, "ATTACH_MODE_")
    return f"{i.name}{'@' + i.netns if i.netns else ''} ({mode})"


def node_table(nodes: Sequence[node_pb2.Node]) -> None:
    """One row per node on stdout: health, versions, lag, when last heard from."""
    now = datetime.now(UTC)
    table(["NODE", "HEALTH", "CONNECTED", "APPLIED", "TARGET", "LAG", "HEARD FROM", "AGENT", "MODE", "LABELS",
           "DETAIL"],
          [[n.name.removeprefix("nodes/"), _HEALTH.get(n.health, "unknown"), "yes" if n.connected else "no",
            n.applied_rule_version, n.target_rule_version, _lag(n), _ago(_ts(n, "last_heartbeat_time"), now),
            n.agent_version or "-", _mode(n), _labels_text(n), n.health_detail or "-"] for n in nodes],
          right=[3, 4])


def show_node(n: node_pb2.Node) -> None:
    """One node in full, a field a line on stdout."""
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


# --- events -----------------------------------------------------------------------------


def _event_kind(e: event_pb2.Event) -> str:
    if e.WhichOneof("payload") == "attack":
        return f"attack {_enum_name(event_pb2.AttackPhase, e.attack.phase, 'ATTACK_PHASE_')}"
    if e.WhichOneof("payload") == "rule":
        return f"rule {_enum_name(event_pb2.RuleEventKind, e.rule.kind, 'RULE_EVENT_KIND_')}"
    return "unknown"


def _event_detail(e: event_pb2.Event) -> str:
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
            what += f": {_action_text(r.rule.action)} {_match_text(r.rule.match)}"
        if r.HasField("error"):
            what += f": {r.error.message}"
        if r.reason:
            what += f" ({r.reason})"
        return what
    return "-"


# The columns of an event, in a table and in a followed stream.
EVENT_HEADERS = ["SEQ", "TIME", "NODE", "KIND", "WHAT"]


def event_row(e: event_pb2.Event) -> list[object]:
    """The cells of one event under :data:`EVENT_HEADERS`."""
    return [e.sequence, _when(_ts(e, "time")), e.node.removeprefix("nodes/") or "controller", _event_kind(e),
            _event_detail(e)]


def event_table(found: Sequence[event_pb2.Event]) -> None:
    """One row per event on stdout."""
    table(EVENT_HEADERS, [event_row(e) for e in found], right=[0])


# --- telemetry --------------------------------------------------------------------------


def top_text(resp: telemetry_service_pb2.ListTopTalkersResponse, *, by: str, destinations: bool,
             node: str) -> str:
    """A top-talkers answer as a heading line and a table (``node``: "" for the cluster)."""
    start, end = _ts(resp, "start_time"), _ts(resp, "end_time")
    span = f"{(end - start).total_seconds():g}s" if start and end else "?"
    who = node or "the cluster"
    head = (f"top {'destinations' if destinations else 'sources'} by {by} over {span}, {who} "
            f"({resp.nodes_reporting} node(s) reporting) at {_when(end)}")
    rows = [[t.address, human_rate(t.pps), human_rate(t.bps), human_rate(t.dropped_pps), t.counters.packets,
             human_bytes(t.counters.bytes), t.counters.drops, t.node_count,
             ",".join(n.removeprefix("nodes/") for n in t.nodes[:3]) + ("…" if len(t.nodes) > 3 else "")]
            for t in resp.top_talkers]
    text = io.StringIO()
    text.write(head + "\n")
    table(["ADDRESS", "PPS", "BPS", "DROPS/S", "PACKETS", "BYTES", "DROPS", "NODES", "SEEN BY"], rows,
          out=text, right=[1, 2, 3, 4, 5, 6, 7])
    return text.getvalue()


def show_stats(st: telemetry_service_pb2.Stats) -> None:
    """Stats on stdout: a heading line, packets by action, by reason, by rule."""
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
