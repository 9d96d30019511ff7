"""List filters: the subset of AIP-160 that ``ListRules``, ``ListNodes`` and
``ListEvents`` (and ``WatchEvents``) document in their ``filter`` fields.

Grammar (exactly what the protos promise, nothing more)::

    filter      = [ comparison { "AND" comparison } ]
    comparison  = field op value            e.g.  priority <= 100
                | field ":" value           e.g.  match.src: "198.51.100.7"   (has)
                | field ":" "*"             e.g.  attack:*                    (present)
    op          = "=" | "!=" | "<" | "<=" | ">" | ">="
    value       = "quoted string" | 'quoted string' | bare word (number, enum value name, true, 5s)

Fields are those of the resource's :class:`Schema` (``RULE_FILTER``,
``NODE_FILTER``, ``EVENT_FILTER``); map fields take a key after a dot
(``labels.site``, ``scope.node_selector.match_labels.site``). Each field
has a type that decides which values and operators it takes:

* string: any value; all six operators (ordering is by code point);
* integer: a whole number; all six;
* enum: one of the enum's value names (``RULE_ORIGIN_AUTO``); ``=`` ``!=``;
* bool: ``true`` or ``false``; ``=`` ``!=``;
* time: an RFC 3339 time with an offset, quoted (``"2024-05-01T12:00:00Z"``); all six;
* duration: ``5s``, ``1.5s``, ``250ms``, ``2m``, ``1h``; all six;
* addresses (``match.src``): only ``:`` with an address or prefix; true
  when one of the rule's prefixes contains it;
* presence (``attack``, ``rule`` of an event): only ``:*``.

Absent values: a field under a message that is not set (``attack.phase``
of a rule event) and an unset time (a permanent rule's ``expire_time``)
satisfy no comparison at all, ``!=`` included. A label a node or selector
does not carry reads as the empty string. Strings that are never unset
(``scope.node`` of a global rule) read as their empty default.

**Bounds.** A filter is at most :data:`MAX_FILTER_LENGTH` characters and
:data:`MAX_COMPARISONS` comparisons (a listing evaluates it on every
resource while holding the GIL: an unbounded one was a denial of service).

``OR``, ``NOT``, ``-``, parentheses, implicit AND and ``==`` are refused
with a message that says so. Every error is a
:class:`~controller.rules.model.FieldError` at ``filter`` (or the path given)
that names the column (1-based) of the offending token.

:func:`compile_filter` parses a filter once per request into a
:class:`Filter`: a predicate over the resource's proto message plus a
canonical form and :attr:`~Filter.fingerprint` (page tokens carry it, so a
token cannot be reused with another filter).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, Literal, TypeVar

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from breakwater.v1 import event_pb2, node_pb2, rule_pb2

from ..errors import FieldError
from ..validate import suggest

__all__ = [
    "EVENT_FILTER",
    "MAX_COMPARISONS",
    "MAX_FILTER_LENGTH",
    "NODE_FILTER",
    "RULE_FILTER",
    "FieldSpec",
    "Filter",
    "Schema",
    "compile_filter",
]

M = TypeVar("M", bound=Message)
Kind = Literal["string", "int", "enum", "bool", "time", "duration", "addresses", "presence"]
Op = Literal["=", "!=", "<", "<=", ">", ">=", ":"]

_ORDERING: Final[frozenset[str]] = frozenset({"<", "<=", ">", ">="})
_EQUALITY: Final[frozenset[str]] = frozenset({"=", "!="})
_ALL_OPS: Final[frozenset[str]] = _ORDERING | _EQUALITY
_OPS_OF: Final[Mapping[str, frozenset[str]]] = {
    "string": _ALL_OPS, "int": _ALL_OPS, "time": _ALL_OPS, "duration": _ALL_OPS,
    "enum": _EQUALITY, "bool": _EQUALITY, "addresses": frozenset({":"}), "presence": frozenset({":"}),
}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_.\-+*/@]+")
_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_ESCAPES: Final = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


class _Absent:
    """A value that is not there (see the module docstring)."""


ABSENT: Final = _Absent()
Value = str | int | float | bool | datetime | Sequence[str] | _Absent


@dataclass(frozen=True)
class FieldSpec(Generic[M]):
    """One filterable field: its type, how to read it from a message, and
    (enums) the enum it holds."""

    kind: Kind
    get: Callable[[M], Value]
    enum: EnumDescriptor | None = None


@dataclass(frozen=True)
class Schema(Generic[M]):
    """What a resource's filter may name: plain fields, and map fields whose
    key follows a dot (``labels`` -> ``labels.site``)."""

    resource: str
    fields: Mapping[str, FieldSpec[M]]
    maps: Mapping[str, Callable[[M], Mapping[str, str]]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [*self.fields, *(f"{m}.<key>" for m in self.maps)]


# --- tokens ----------------------------------------------------------------------------

TokenKind = Literal["word", "string", "op", "lparen", "rparen", "end"]


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    text: str
    pos: int  # 0-based offset into the filter


MAX_FILTER_LENGTH: Final = 2048
"""Longest filter accepted (characters)."""
MAX_COMPARISONS: Final = 16
"""Most comparisons in one filter."""


def _fail(path: str, pos: int, what: str) -> FieldError:
    return FieldError(path, f"column {pos + 1}: {what}")


def _tokens(text: str, path: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            out.append(_Token("lparen" if c == "(" else "rparen", c, i))
            i += 1
        elif c in "\"'":
            start = i
            i += 1
            chars: list[str] = []
            while i < n and text[i] != c:
                if text[i] == "\\":
                    if i + 1 >= n:
                        break
                    nxt = text[i + 1]
                    if nxt not in _ESCAPES:
                        raise _fail(path, i, f"unknown escape \\{nxt} in a string; use \\\" \\' \\\\ \\n \\t")
                    chars.append(_ESCAPES[nxt])
                    i += 2
                    continue
                chars.append(text[i])
                i += 1
            if i >= n:
                raise _fail(path, start, f"string not closed; add the closing {c}")
            out.append(_Token("string", "".join(chars), start))
            i += 1
        elif text.startswith(("<=", ">=", "!=", "=="), i):
            op = text[i:i + 2]
            if op == "==":
                raise _fail(path, i, "'==' is not an operator; use '='")
            out.append(_Token("op", op, i))
            i += 2
        elif c in "=<>:":
            out.append(_Token("op", c, i))
            i += 1
        else:
            m = _WORD_RE.match(text, i)
            if m is None:
                raise _fail(path, i, f"unexpected character {c!r}")
            out.append(_Token("word", m.group(), i))
            i = m.end()
    out.append(_Token("end", "", n))
    return out


# --- values ----------------------------------------------------------------------------


def _parse_duration(text: str) -> float | None:
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        return None
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _parse_time(text: str) -> datetime | None:
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        return None
    return value.astimezone(UTC)


def _literal(spec: FieldSpec[M], name: str, tok: _Token, path: str) -> Value:
    """The value a comparison of ``name`` compares with, checked against its type."""
    text = tok.text
    if spec.kind == "string":
        return text
    if spec.kind == "int":
        if not re.fullmatch(r"-?\d+", text.strip()):
            raise _fail(path, tok.pos, f"{name} takes a whole number, got {text!r}")
        return int(text)
    if spec.kind == "bool":
        if text not in ("true", "false"):
            raise _fail(path, tok.pos, f"{name} takes true or false, got {text!r}")
        return text == "true"
    if spec.kind == "enum":
        assert spec.enum is not None
        names = [v.name for v in spec.enum.values if v.number != 0]
        value = spec.enum.values_by_name.get(text)
        if value is None:
            ends = [n for n in names if n.endswith("_" + text.upper())]
            hint = f" (did you mean {ends[0]!r}?)" if len(ends) == 1 else suggest(text, names)
            raise _fail(path, tok.pos, f"{text!r} is not a {spec.enum.name}{hint}; one of {', '.join(names)}")
        return value.number
    if spec.kind == "time":
        when = _parse_time(text)
        if when is None:
            raise _fail(path, tok.pos, f"{name} takes an RFC 3339 time with an offset in quotes, "
                                       f"e.g. \"2024-05-01T12:00:00Z\"; got {text!r}")
        return when
    if spec.kind == "duration":
        seconds = _parse_duration(text)
        if seconds is None:
            raise _fail(path, tok.pos, f"{name} takes a duration like 5s, 1.5s, 250ms, 2m or 1h; "
                                       f"got {text!r}")
        return seconds
    if spec.kind == "addresses":
        try:
            return str(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError:
            raise _fail(path, tok.pos, f"{name}: takes an IPv4/IPv6 address or prefix (host bits clear), "
                                       f"got {text!r}") from None
    raise _fail(path, tok.pos, f"{name} takes no value")  # presence: handled by the parser


_COMPARE: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}


def _compare(op: str, got: object, want: object) -> bool:
    try:
        return bool(_COMPARE[op](got, want))
    except TypeError:  # values of different types (cannot happen for a checked filter)
        return False


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A prefix of a stored rule, parsed once (a filter is run over every rule)."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _contains(prefixes: Sequence[str], wanted: str) -> bool:
    net = _network(wanted)
    if net is None:
        return False
    for text in prefixes:
        held = _network(text)
        if held is not None and held.version == net.version and net.subnet_of(held):  # type: ignore[arg-type]
            return True
    return False


# --- comparisons and filters -----------------------------------------------------------


@dataclass(frozen=True)
class _Comparison(Generic[M]):
    name: str
    op: str
    value: Value | None  # None: presence (":*")
    shown: str  # the value as written, canonical
    read: Callable[[M], Value]
    kind: Kind

    def test(self, msg: M) -> bool:
        got = self.read(msg)
        if self.kind == "presence":
            return got is True
        if isinstance(got, _Absent):
            return False
        if self.kind == "addresses":
            assert isinstance(self.value, str)
            return isinstance(got, Sequence) and _contains(got, self.value)
        return _compare(self.op, got, self.value)

    def canonical(self) -> str:
        if self.value is None:
            return f"{self.name}:*"
        sep = ": " if self.op == ":" else f" {self.op} "
        return f"{self.name}{sep}{self.shown}"


@dataclass(frozen=True)
class Filter(Generic[M]):
    """A compiled filter: call it on a message. Empty text selects everything."""

    schema: Schema[M]
    comparisons: tuple[_Comparison[M], ...] = ()

    def __call__(self, msg: M) -> bool:
        return all(c.test(msg) for c in self.comparisons)

    @property
    def empty(self) -> bool:
        return not self.comparisons

    @property
    def canonical(self) -> str:
        """The filter re-written one way (spacing and quoting normalised)."""
        return " AND ".join(c.canonical() for c in self.comparisons)

    @property
    def fingerprint(self) -> str:
        """A short hash of the resource and the canonical filter."""
        digest = hashlib.sha256(f"{self.schema.resource}\0{self.canonical}".encode()).hexdigest()
        return digest[:16]


def _field(schema: Schema[M], tok: _Token, path: str) -> tuple[str, FieldSpec[M]]:
    name = tok.text
    spec = schema.fields.get(name)
    if spec is not None:
        return name, spec
    for prefix, getter in schema.maps.items():
        if name.startswith(prefix + "."):
            key = name[len(prefix) + 1:]
            if not _KEY_RE.fullmatch(key):
                raise _fail(path, tok.pos, f"{key!r} is not a label key")

            def read(msg: M, getter: Callable[[M], Mapping[str, str]] = getter, key: str = key) -> Value:
                return getter(msg).get(key, "")

            return name, FieldSpec("string", read)
        if name == prefix:
            raise _fail(path, tok.pos, f"{name} needs a key, e.g. {name}.site")
    if name.startswith("-"):
        raise _fail(path, tok.pos, "negation ('-') is not supported; use != on a field")
    raise _fail(path, tok.pos, f"unknown field {name!r}{suggest(name, schema.names())}; "
                               f"fields: {', '.join(schema.names())}")


def _shown(tok: _Token) -> str:
    if tok.kind == "string":
        escaped = tok.text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    return tok.text


def compile_filter(text: str, schema: Schema[M], path: str = "filter") -> Filter[M]:
    """Parse ``text`` against ``schema``; a bad filter is a :class:`FieldError`
    at ``path`` naming the column."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FieldError(path, f"{len(text)} characters; at most {MAX_FILTER_LENGTH}")
    toks = _tokens(text, path)
    if sum(1 for t in toks if t.kind == "word" and t.text == "AND") >= MAX_COMPARISONS:
        raise FieldError(path, f"more than {MAX_COMPARISONS} comparisons; at most {MAX_COMPARISONS}")
    comparisons: list[_Comparison[M]] = []
    i = 0

    def refuse_keyword(tok: _Token) -> None:
        if tok.kind == "word" and tok.text in ("OR", "NOT"):
            raise _fail(path, tok.pos, f"{tok.text} is not supported; join comparisons with AND")
        if tok.kind in ("lparen", "rparen"):
            raise _fail(path, tok.pos, "parentheses are not supported; join comparisons with AND")

    if toks[0].kind == "end":
        return Filter(schema)
    while True:
        tok = toks[i]
        refuse_keyword(tok)
        if tok.kind == "end":
            raise _fail(path, tok.pos, "expected a comparison after AND")
        if tok.kind != "word":
            raise _fail(path, tok.pos, f"expected a field name, got {_shown(tok)}")
        if tok.text == "AND":
            raise _fail(path, tok.pos, "expected a comparison before AND")
        name, spec = _field(schema, tok, path)
        op_tok = toks[i + 1]
        refuse_keyword(op_tok)
        if op_tok.kind != "op":
            what = "the end" if op_tok.kind == "end" else repr(op_tok.text)
            raise _fail(path, op_tok.pos, f"expected an operator (= != < <= > >= :) after {name}, got {what}")
        op = op_tok.text
        allowed = _OPS_OF[spec.kind]
        if op not in allowed:
            ops = " ".join(sorted(allowed, key=[":", "=", "!=", "<", "<=", ">", ">="].index))
            hint = ""
            if spec.kind == "addresses":
                hint = f'; write {name}: "198.51.100.7" (has: one of its prefixes contains it)'
            elif spec.kind == "presence":
                hint = f"; write {name}:* (events that are {name} events)"
            raise _fail(path, op_tok.pos, f"{name} ({spec.kind}) takes {ops}, not {op}{hint}")
        val_tok = toks[i + 2]
        refuse_keyword(val_tok)
        if val_tok.kind not in ("word", "string"):
            what = "the end" if val_tok.kind == "end" else repr(val_tok.text)
            raise _fail(path, val_tok.pos, f"expected a value after {name} {op}, got {what}")
        if spec.kind == "presence":
            if not (val_tok.kind == "word" and val_tok.text == "*"):
                raise _fail(path, val_tok.pos, f"{name} only takes {name}:* (is it a {name} event)")
            comparisons.append(_Comparison(name, op, None, "*", spec.get, spec.kind))
        else:
            if val_tok.kind == "word" and val_tok.text == "*":
                present = [n for n, s in schema.fields.items() if s.kind == "presence"]
                offered = f"only {', '.join(p + ':*' for p in present)}" if present else "not offered here"
                raise _fail(path, val_tok.pos,
                            f"{name} {op} * is not supported; presence tests are {offered}")
            value = _literal(spec, name, val_tok, path)
            comparisons.append(_Comparison(name, op, value, _shown(val_tok), spec.get, spec.kind))
        nxt = toks[i + 3]
        refuse_keyword(nxt)
        if nxt.kind == "end":
            break
        if nxt.kind == "word" and nxt.text == "AND":
            i += 4
            continue
        if nxt.kind == "word" and nxt.text.upper() in ("AND", "OR", "NOT"):
            raise _fail(path, nxt.pos, f"{nxt.text!r}: operators are upper case (AND)")
        raise _fail(path, nxt.pos, f"expected AND or the end after {name} {op} {_shown(val_tok)}, "
                                   f"got {_shown(nxt)} (comparisons are joined with AND)")
    return Filter(schema, tuple(comparisons))


# --- schemas ---------------------------------------------------------------------------


def _time(msg: Message, name: str) -> Value:
    if not msg.HasField(name):
        return ABSENT
    ts = getattr(msg, name)
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


def _rule_scope_node(r: rule_pb2.Rule) -> Value:
    return r.scope.node if r.scope.WhichOneof("target") == "node" else ""


RULE_FILTER: Final[Schema[rule_pb2.Rule]] = Schema(
    "rule",
    {
        "name": FieldSpec("string", lambda r: r.name),
        "origin": FieldSpec("enum", lambda r: r.origin or rule_pb2.RULE_ORIGIN_MANUAL,
                            rule_pb2.RuleOrigin.DESCRIPTOR),
        "action.kind": FieldSpec("enum", lambda r: r.action.kind, rule_pb2.ActionKind.DESCRIPTOR),
        "priority": FieldSpec("int", lambda r: r.priority if r.HasField("priority") else 1000),
        "created_by": FieldSpec("string", lambda r: r.created_by),
        "scope.node": FieldSpec("string", _rule_scope_node),
        "create_time": FieldSpec("time", lambda r: _time(r, "create_time")),
        "update_time": FieldSpec("time", lambda r: _time(r, "update_time")),
        "expire_time": FieldSpec("time", lambda r: _time(r, "expire_time")),
        "match.src": FieldSpec("addresses", lambda r: list(r.match.src)),
    },
    {"scope.node_selector.match_labels": lambda r: r.scope.node_selector.match_labels},
)
"""ListRulesRequest.filter."""

NODE_FILTER: Final[Schema[node_pb2.Node]] = Schema(
    "node",
    {
        "name": FieldSpec("string", lambda n: n.name),
        "agent_version": FieldSpec("string", lambda n: n.agent_version),
        "mode": FieldSpec("enum", lambda n: n.mode, node_pb2.AgentMode.DESCRIPTOR),
        "health": FieldSpec("enum", lambda n: n.health, node_pb2.NodeHealth.DESCRIPTOR),
        "connected": FieldSpec("bool", lambda n: n.connected),
        "applied_rule_version": FieldSpec("int", lambda n: n.applied_rule_version),
        "lag": FieldSpec("duration", lambda n: n.lag.seconds + n.lag.nanos / 1e9),
    },
    {"labels": lambda n: n.labels},
)
"""ListNodesRequest.filter."""


def _attack(read: Callable[[event_pb2.AttackEvent], Value]) -> Callable[[event_pb2.Event], Value]:
    def get(e: event_pb2.Event) -> Value:
        return read(e.attack) if e.WhichOneof("payload") == "attack" else ABSENT
    return get


def _rule(read: Callable[[event_pb2.RuleEvent], Value]) -> Callable[[event_pb2.Event], Value]:
    def get(e: event_pb2.Event) -> Value:
        return read(e.rule) if e.WhichOneof("payload") == "rule" else ABSENT
    return get


EVENT_FILTER: Final[Schema[event_pb2.Event]] = Schema(
    "event",
    {
        "node": FieldSpec("string", lambda e: e.node),
        "time": FieldSpec("time", lambda e: _time(e, "time")),
        "sequence": FieldSpec("int", lambda e: e.sequence),
        "attack.attack_id": FieldSpec("string", _attack(lambda a: a.attack_id)),
        "attack.vector": FieldSpec("enum", _attack(lambda a: a.vector),
                                   event_pb2.AttackVector.DESCRIPTOR),
        "attack.phase": FieldSpec("enum", _attack(lambda a: a.phase),
                                  event_pb2.AttackPhase.DESCRIPTOR),
        "attack.victim": FieldSpec("string", _attack(lambda a: a.victim)),
        "attack.profile": FieldSpec("enum", _attack(lambda a: a.profile),
                                    event_pb2.AttackProfile.DESCRIPTOR),
        "rule.kind": FieldSpec("enum", _rule(lambda r: r.kind),
                               event_pb2.RuleEventKind.DESCRIPTOR),
        "rule.rule_id": FieldSpec("string", _rule(lambda r: r.rule_id)),
        "rule.actor": FieldSpec("string", _rule(lambda r: r.actor)),
        "attack": FieldSpec("presence", lambda e: e.WhichOneof("payload") == "attack"),
        "rule": FieldSpec("presence", lambda e: e.WhichOneof("payload") == "rule"),
    },
)
"""ListEventsRequest.filter and WatchEventsRequest.filter."""
