"""The rule model: validation with field paths, TOML/JSON, ttl, diff, presets."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from controller.addresses import parse_prefix
from controller.dataplane.protect import REFLECTION_PORTS
from controller.errors import FieldError, InputError
from controller.rules.model import Match, Rule, RuleAction, RuleSet
from controller.rules.presets import reflection_rule
from controller.rules.values import PortRange, TcpFlags, parse_ttl

NOW = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def base(**changes: Any) -> dict[str, Any]:
    """A valid rule table with ``changes`` applied (None deletes a key)."""
    rule: dict[str, Any] = {"id": "r1", "action": "drop", "match": {"protocol": "udp"}}
    for key, value in changes.items():
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
    return rule


def load(*rules: dict[str, Any]) -> RuleSet:
    return RuleSet.from_dict({"version": 1, "rules": list(rules)}, now=NOW)


def m(**match: Any) -> dict[str, Any]:
    return base(match=match)


INVALID: list[tuple[dict[str, Any], str]] = [
    # rule keys
    (base(dprot=1), "rules[1].dprot: unknown key (did you mean 'dport' in match?); known: action, "
     "comment, created_by, expires_at, id, match, origin, priority, ttl"),
    (base(protocol="udp"), "rules[1].protocol: unknown key ('protocol' belongs in match); known: "),
    (base(pps=5), "rules[1].pps: unknown key ('pps' belongs in action); known: "),
    (base(zzz=5), "rules[1].zzz: unknown key; known: action, "),
    (m(ttl="1h"), "rules[1].match.ttl: unknown key ('ttl' belongs in the rule table); known: "),
    (base(prority=5), "rules[1].prority: unknown key (did you mean 'priority'?); known: "),
    (base(id=None), "rules[1].id: missing; every rule needs an id"),
    (base(id="Web"), "rules[1].id: 'Web' is not a valid rule id; use 1-63 characters"),
    (base(id="-x"), "rules[1].id: '-x' is not a valid rule id"),
    (base(id="a" * 64), "rules[1].id: 'aaaa"),
    (base(id=7), "rules[1].id: expected a string, got 7"),
    (base(priority=70000), "rules[1].priority: 70000 is out of range 0..65535"),
    (base(priority=-1), "rules[1].priority: -1 is out of range 0..65535"),
    (base(priority=True), "rules[1].priority: expected an integer, got true"),
    (base(priority="5"), 'rules[1].priority: expected an integer, got "5"'),
    (base(match=None), "rules[1].match: missing; write match = {} to match every packet"),
    (base(match="udp"), 'rules[1].match: expected a match table, e.g. {protocol = "udp", sport = 53}, '
     'got "udp"'),
    (base(action=None), "rules[1].action: missing; one of drop, rate_limit, allow, monitor"),
    (base(action="block"), 'rules[1].action: "block" is not one of drop, rate_limit, allow, monitor'),
    (base(ttl="10x"), 'rules[1].ttl: "10x" is not a duration; use seconds or e.g. 90s, 10m'),
    (base(ttl=0), "rules[1].ttl: 0 is out of range 1s..3650d"),
    (base(ttl="4000d"), 'rules[1].ttl: "4000d" is out of range 1s..3650d'),
    (base(ttl=1.5), "rules[1].ttl: expected seconds or a duration"),
    (base(ttl="1h", expires_at="2030-01-01T00:00:00Z"), "rules[1].ttl: give ttl or expires_at, not both"),
    (base(expires_at="tomorrow"), 'rules[1].expires_at: "tomorrow" is not an RFC 3339 time'),
    (base(expires_at="2030-01-01T00:00:00"), "rules[1].expires_at: 2030-01-01T00:00:00 has no UTC offset"),
    (base(expires_at=datetime(2030, 1, 1)), "rules[1].expires_at: 2030-01-01T00:00:00 has no UTC offset"),
    (base(origin="human"), 'rules[1].origin: "human" is not one of manual, auto, controller, feed'),
    (base(comment=5), "rules[1].comment: expected a string, got 5"),
    (base(comment="x" * 1025), "rules[1].comment: 1025 characters; at most 1024"),
    (base(created_by="x" * 257), "rules[1].created_by: 257 characters; at most 256"),
    # match
    (m(dprot=53), "rules[1].match.dprot: unknown key (did you mean 'dport'?); known: dport, dst, "
     "fragment, length, protocol, sport, src, tcp_flags"),
    (m(src=["1.2.3.4", 5]), "rules[1].match.src[1]: expected an address or prefix string, got 5"),
    (m(src=["10.0.0.5/8"]),
     "rules[1].match.src[0]: '10.0.0.5/8' has host bits set; did you mean 10.0.0.0/8?"),
    (m(dst=["nope"]), "rules[1].match.dst[0]: 'nope' is not an IPv4/IPv6 address or prefix"),
    (m(dst=[""]), "rules[1].match.dst[0]: empty; expected an IPv4/IPv6 address or prefix"),
    (m(src=5), "rules[1].match.src: expected an array of prefixes, got 5"),
    (m(src=["10.0.0.0/8", "10.0.0.0/8"]), "rules[1].match.src[1]: 10.0.0.0/8 repeats src[0]"),
    (m(src=["10.0.0.0/8"], dst=["2001:db8::/32"]),
     "rules[1].match.dst: only IPv6 prefixes but src has only IPv4; the rule can never match"),
    (m(protocol="icmp", dst=["2001:db8::/32"]),
     "rules[1].match.protocol: icmp is IPv4-only but the prefixes are IPv6; the rule can never match"),
    (m(protocol="icmpv6", src=["192.0.2.0/24"]), "rules[1].match.protocol: icmpv6 is IPv6-only"),
    (m(protocol="upd"), 'rules[1].match.protocol: "upd" is not a protocol name (did you mean \'udp\'?)'),
    (m(protocol=256), "rules[1].match.protocol: 256 is out of range 0..255"),
    (m(protocol="udp", dport=70000), "rules[1].match.dport: 70000 is out of range 0..65535"),
    (m(protocol="udp", sport="1000-70000"), "rules[1].match.sport: 70000 is out of range 0..65535"),
    (m(protocol="udp", sport="2000-1000"),
     "rules[1].match.sport: 2000-1000 is empty: start 2000 is above end 1000"),
    (m(protocol="udp", sport="http"), 'rules[1].match.sport: "http" is not a number or a range'),
    (m(protocol="udp", sport=[1, 2, 3]), "rules[1].match.sport: expected a number, a range"),
    (m(protocol="udp", sport=[1, "x"]), 'rules[1].match.sport: expected an integer, got "x"'),
    (m(protocol="icmp", dport=7),
     "rules[1].match.dport: ports need protocol tcp, udp or sctp; protocol is icmp"),
    (m(sport=7), "rules[1].match.sport: ports need protocol tcp, udp or sctp; protocol is not set"),
    (m(protocol="udp", tcp_flags="syn"), "rules[1].match.tcp_flags: needs protocol tcp; protocol is udp"),
    (m(protocol="tcp", tcp_flags="syn,!ak"), "rules[1].match.tcp_flags: unknown TCP flag 'ak'; known: fin"),
    (m(protocol="tcp", tcp_flags="syn,!syn"), "rules[1].match.tcp_flags: flag 'syn' is given twice"),
    (m(protocol="tcp", tcp_flags="syn,,ack"), "rules[1].match.tcp_flags: \"syn,,ack\" has an empty flag"),
    (m(protocol="tcp", tcp_flags={"mask": 0x02, "value": 0x12}),
     "rules[1].match.tcp_flags.value: 0x12 sets flags outside mask 0x02"),
    (m(protocol="tcp", tcp_flags={"mask": 0, "value": 0}), "rules[1].match.tcp_flags.mask: 0 tests no flag"),
    (m(protocol="tcp", tcp_flags={"mask": 300, "value": 0}),
     "rules[1].match.tcp_flags.mask: 300 is out of range 0..255"),
    (m(protocol="tcp", tcp_flags={"mask": 2}), "rules[1].match.tcp_flags.value: missing"),
    (m(protocol="tcp", tcp_flags={"mask": 2, "value": 2, "x": 1}),
     "rules[1].match.tcp_flags.x: unknown key; known: mask, value"),
    (m(protocol="tcp", tcp_flags=2), "rules[1].match.tcp_flags: expected flags like"),
    (m(length="100-50"), "rules[1].match.length: 100-50 is empty: start 100 is above end 50"),
    (m(length=70000), "rules[1].match.length: 70000 is out of range 0..65535"),
    (m(fragment="maybe"), 'rules[1].match.fragment: "maybe" is not one of any, yes, no'),
    (m(fragment=True), "rules[1].match.fragment: true is not one of any, yes, no"),
    # action
    (base(action={"kind": "rate_limit"}), "rules[1].action: rate_limit needs pps and/or bps"),
    (base(action={"pps": 5}), "rules[1].action.kind: missing; one of drop"),
    (base(action={"kind": "drop", "pps": 5}), "rules[1].action.pps: only rate_limit actions take pps"),
    (base(action={"kind": "allow", "scope": "aggregate"}),
     "rules[1].action.scope: only rate_limit actions take scope; this one is allow"),
    (base(action={"kind": "rate_limit", "pps": 0}),
     "rules[1].action.pps: 0 is out of range 1..1000000000000"),
    (base(action={"kind": "rate_limit", "bps": 10**13}),
     "rules[1].action.bps: 10000000000000 is out of range"),
    (base(action={"kind": "rate_limit", "pps": 1.5}), "rules[1].action.pps: expected an integer, got 1.5"),
    (base(action={"kind": "rate_limit", "pps": 10, "burst_bytes": 100}),
     "rules[1].action.burst_bytes: needs bps: a burst without a rate limits nothing"),
    (base(action={"kind": "rate_limit", "pps": 10, "burst_packets": 0}),
     "rules[1].action.burst_packets: 0 is out of range 1..4294967295"),
    (base(action={"kind": "rate_limit", "pps": 10, "scope": "per_dest"}),
     'rules[1].action.scope: "per_dest" is not one of per_source, aggregate'),
    (base(action={"kind": "rate_limit", "pps": 10, "brust": 3}),
     "rules[1].action.brust: unknown key"),
    (base(action=5), "rules[1].action: expected an action name or table, got 5"),
    # the set
    (base(id="ok"), "rules[1].id: duplicate id 'ok'; rules[0] has it too"),
]


@pytest.mark.parametrize(("rule", "message"), INVALID, ids=[msg[:60] for _, msg in INVALID])
def test_invalid_fields_name_their_path(rule: dict[str, Any], message: str) -> None:
    good = base(id="ok")
    with pytest.raises(InputError) as info:
        load(good, rule)
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, FieldError)
    assert str(info.value) == f"{info.value.path}: {info.value.what}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2}, "version: 2 is not supported; this Breakwater reads 1"),
        ({"rules": {}}, "rules: expected an array of rule tables, got a table"),
        ({"rule": []}, "rule: unknown key (did you mean 'rules'?); known: rules, version"),
        ([], "expected a table with version and rules, got an array"),
        ({"rules": ["x"]}, 'rules[0]: expected a rule table, got "x"'),
    ],
)
def test_invalid_files(data: object, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        RuleSet.from_dict(data, now=NOW)


def test_syntax_errors_are_input_errors() -> None:
    with pytest.raises(InputError, match="invalid TOML"):
        RuleSet.loads_toml("[[rules]\n")
    with pytest.raises(InputError, match="invalid JSON"):
        RuleSet.loads_json("{")


def test_direct_construction_validates() -> None:
    with pytest.raises(FieldError, match=r"^sport: ports need protocol"):
        Match(sport=PortRange(53, 53))
    with pytest.raises(FieldError, match=r"^70000 is out of range 0..65535"):
        PortRange(1, 70000)
    with pytest.raises(FieldError, match=r"^priority: 65536 is out of range"):
        Rule("x", Match(), RuleAction("drop"), priority=65536)
    with pytest.raises(FieldError, match=r"^expires_at: .* has no UTC offset"):
        Rule("x", Match(), RuleAction("drop"), expires_at=datetime(2030, 1, 1))
    with pytest.raises(FieldError, match=r"^src: expected a tuple of prefixes, got list"):
        Match(src=[parse_prefix("10.0.0.0/8")])  # type: ignore[arg-type]
    with pytest.raises(FieldError, match=r"^length: 5-4 is empty: start 5 is above end 4"):
        Match(length=(5, 4))
    with pytest.raises(FieldError, match=r"^rules\[1\].id: duplicate id 'x'"):
        RuleSet((Rule("x", Match(), RuleAction("drop")), Rule("x", Match(), RuleAction("allow"))))


# --- values ------------------------------------------------------------------


def test_tcp_flags_forms() -> None:
    assert TcpFlags.parse("syn,!ack") == TcpFlags(0x12, 0x02)
    assert TcpFlags.parse(" SYN ") == TcpFlags(0x02, 0x02)
    assert TcpFlags.parse({"mask": 0x12, "value": 0x02}) == TcpFlags(0x12, 0x02)
    assert TcpFlags.parse("!fin,!syn,!rst,!psh,!ack,!urg,!ece,!cwr") == TcpFlags(0xFF, 0)
    assert str(TcpFlags(0x12, 0x02)) == "syn,!ack"
    assert str(TcpFlags(0xC1, 0x81)) == "fin,!ece,cwr"
    flags = TcpFlags.parse("syn,!ack")
    assert flags.matches(0x02) and flags.matches(0x02 | 0x08)
    assert not flags.matches(0x12) and not flags.matches(0x10)


def test_port_range_forms() -> None:
    assert PortRange.parse(53) == PortRange(53, 53)
    assert PortRange.parse("53") == PortRange(53, 53)
    assert PortRange.parse("1024 - 65535") == PortRange(1024, 65535)
    assert PortRange.parse([1, 2]) == PortRange(1, 2)
    assert str(PortRange(53, 53)) == "53" and str(PortRange(1, 2)) == "1-2"
    assert 80 in PortRange(1, 1023) and 1024 not in PortRange(1, 1023)
    assert PortRange(0, 65535).is_full and not PortRange(1, 65535).is_full


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(600, 600), ("600", 600), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400),
     ("1h30m", 5400), ("1d2h3m4s", 93784), (" 2H ", 7200)],
)
def test_parse_ttl(value: object, seconds: int) -> None:
    assert parse_ttl(value) == timedelta(seconds=seconds)


def test_ttl_becomes_expires_at() -> None:
    rs = load(base(id="a", ttl="2h"), base(id="b", ttl=30), base(id="c"))
    a, b, c = rs.rules
    assert a.expires_at == NOW + timedelta(hours=2)
    assert a.expires_at is not None and a.expires_at.tzinfo is UTC
    assert b.expires_at == NOW + timedelta(seconds=30)
    assert c.expires_at is None
    # ttl counts from load time: the default is now
    before = datetime.now(UTC)
    rule = Rule.from_dict(base(ttl="1m"))
    assert rule.expires_at is not None
    assert before + timedelta(minutes=1) <= rule.expires_at <= datetime.now(UTC) + timedelta(minutes=1)


def test_expires_at_is_normalised_to_utc() -> None:
    rs = load(base(expires_at="2030-01-01T02:00:00+02:00"))
    assert rs.rules[0].expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert rs.rules[0].expires_at.tzinfo is UTC
    direct = Rule("x", Match(), RuleAction("drop"),
                  expires_at=datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert direct.expires_at is not None and direct.expires_at.tzinfo is UTC


def test_active_drops_expired_rules() -> None:
    rs = load(base(id="short", ttl=60), base(id="long", ttl="1d"), base(id="forever"))
    assert [r.id for r in rs.active(NOW)] == ["short", "long", "forever"]
    assert [r.id for r in rs.active(NOW + timedelta(seconds=60))] == ["long", "forever"]
    assert [r.id for r in rs.active(NOW + timedelta(days=2))] == ["forever"]
    with pytest.raises(InputError, match="time zone"):
        rs.active(datetime(2024, 1, 1))


def test_families() -> None:
    v4, v6 = parse_prefix("192.0.2.0/24"), parse_prefix("2001:db8::/32")
    assert Match().families == {4, 6}
    assert Match(src=(v4, v6)).families == {4, 6}
    assert Match(src=(v4, v6), dst=(v4,)).families == {4}
    assert Match(protocol=1).families == {4}
    assert Match(protocol=58, src=(v4, v6)).families == {6}


def test_src_only() -> None:
    v4 = parse_prefix("192.0.2.0/24")
    assert Match(src=(v4,)).is_src_only
    assert not Match().is_src_only
    assert not Match(src=(v4,), fragment="no").is_src_only
    assert not Match(src=(v4,), protocol=6).is_src_only
    assert not Match(src=(v4,), dst=(v4,)).is_src_only


def test_rate_limit_bursts() -> None:
    a = RuleAction("rate_limit", pps=1000, bps=8_000_000)
    assert a.effective_burst_packets == 100 and a.effective_burst_bytes == 100_000
    low = RuleAction("rate_limit", pps=5, bps=8000)
    assert low.effective_burst_packets == 8 and low.effective_burst_bytes == 18_000
    given = RuleAction("rate_limit", pps=1000, burst_packets=3)
    assert given.effective_burst_packets == 3 and given.effective_burst_bytes is None
    assert RuleAction("drop").effective_burst_packets is None


# --- files -------------------------------------------------------------------


def rich_set() -> RuleSet:
    return load(
        {"id": "allow-noc", "priority": 5, "action": "allow",
         "match": {"src": ["192.0.2.0/24", "2001:db8:100::/48", "198.18.0.1"]},
         "comment": 'quote " backslash \\ tab \t newline \n ctl \x01 del \x7f ünï', "created_by": "alice"},
        {"id": "syn.flood_1", "priority": 200,
         "action": {"kind": "rate_limit", "pps": 200, "bps": 10**9, "burst_packets": 50,
                    "burst_bytes": 70000, "scope": "per_source"},
         "match": {"dst": ["198.51.100.0/24"], "protocol": "tcp", "sport": "1024-65535", "dport": 443,
                   "tcp_flags": "syn,!ack", "length": [40, 100], "fragment": "no"},
         "ttl": "2h", "origin": "auto"},
        {"id": "gre", "action": "monitor", "match": {"protocol": 47, "fragment": "yes"}, "origin": "feed"},
        {"id": "odd-proto", "action": "drop", "match": {"protocol": 99, "length": 60}},
        {"id": "all", "priority": 65535, "action": {"kind": "rate_limit", "bps": 8000}, "match": {},
         "expires_at": "2030-01-01T00:00:00.250000Z", "origin": "controller"},
    )


def test_toml_round_trip() -> None:
    rs = rich_set()
    text = rs.dumps_toml()
    again = RuleSet.loads_toml(text, now=NOW + timedelta(days=1))  # a later load: no ttl left to apply
    assert again == rs
    assert again.dumps_toml() == text


def test_json_round_trip() -> None:
    rs = rich_set()
    text = rs.dumps_json()
    assert RuleSet.loads_json(text) == rs
    assert RuleSet.loads_json(rs.dumps_json(indent=None)) == rs
    assert RuleSet.loads_toml(rs.dumps_toml()) == RuleSet.loads_json(text)


def test_dump_is_canonical() -> None:
    rs = rich_set()
    first = rs.to_dict()["rules"][1]  # type: ignore[index]
    assert first["match"]["tcp_flags"] == "syn,!ack"
    assert first["match"]["sport"] == "1024-65535" and first["match"]["dport"] == 443
    assert first["expires_at"] == "2024-07-01T14:00:00Z"
    assert "ttl" not in first
    assert rs.rules[3].to_dict()["match"] == {"protocol": 99, "length": 60}
    assert RuleSet().dumps_toml() == "version = 1\n"
    assert RuleSet.loads_toml(RuleSet().dumps_toml()) == RuleSet()


def test_sub_table_and_inline_match_read_the_same() -> None:
    inline = 'version = 1\n[[rules]]\nid = "a"\naction = "drop"\nmatch = { protocol = "udp", sport = 53 }\n'
    sub = '[[rules]]\nid = "a"\naction = "drop"\n[rules.match]\nprotocol = "udp"\nsport = 53\n'
    assert RuleSet.loads_toml(inline) == RuleSet.loads_toml(sub)


def test_docs_examples_load() -> None:
    text = DOCS.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        rs = RuleSet.loads_toml(block, now=NOW)
        assert len(rs) >= 1
    (json_block,) = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(RuleSet.loads_json(json_block)) == 2


# --- diff --------------------------------------------------------------------


def test_diff_by_id() -> None:
    old = load(base(id="keep"), base(id="change", priority=10), base(id="gone"))
    new = load(base(id="change", priority=20), base(id="new"), base(id="keep"))
    d = old.diff(new)
    assert [r.id for r in d.added] == ["new"]
    assert [r.id for r in d.removed] == ["gone"]
    assert [(a.priority, b.priority) for a, b in d.changed] == [(10, 20)]
    assert [r.id for r in d.unchanged] == ["keep"]
    assert not d.empty
    assert old.diff(copy.deepcopy(old)).empty
    assert old.get("gone") is not None and new.get("gone") is None


# --- the reflection preset ---------------------------------------------------

REQUIRED_REFLECTION_PORTS = {19, 53, 123, 161, 389, 1900, 3702, 11211}


def test_reflection_preset_covers_the_required_ports() -> None:
    assert set(REFLECTION_PORTS) >= REQUIRED_REFLECTION_PORTS
    scope = [parse_prefix("198.51.100.0/24"), parse_prefix("2001:db8:200::/48")]
    action = RuleAction("rate_limit", pps=10_000, scope="aggregate")
    rules = reflection_rule("amp", scope, action)
    by_port = {r.match.sport.lo: r for r in rules if r.match.sport is not None}
    assert set(by_port) == set(REFLECTION_PORTS)
    for port, rule in by_port.items():
        assert rule.match == Match(dst=tuple(scope), protocol=17, sport=PortRange(port, port))
        assert rule.action == action and rule.priority == 100
        assert rule.id == f"amp-{REFLECTION_PORTS[port]}"
    assert by_port[123].id == "amp-ntp" and by_port[11211].id == "amp-memcached"
    assert len({r.id for r in rules}) == len(rules)
    RuleSet(tuple(rules))  # ids unique, rules valid


def test_reflection_preset_options() -> None:
    scope = [parse_prefix("198.51.100.0/24")]
    rules = reflection_rule("refl", scope, RuleAction("drop"), priority=7, ports=[53, 9999],
                            fragments=True, origin="controller", comment="event", created_by="bob")
    assert [r.id for r in rules] == ["refl-dns", "refl-udp9999", "refl-fragments"]
    assert rules[2].match == Match(dst=tuple(scope), protocol=17, fragment="yes")
    assert all(r.priority == 7 and r.origin == "controller" and r.created_by == "bob" for r in rules)
    assert rules[0].comment == "event: reflection from dns (udp source port 53)"
    with pytest.raises(InputError, match=r"^dst: empty"):
        reflection_rule("refl", [], RuleAction("drop"))
    with pytest.raises(InputError, match=r"^ports: 70000 is not a port"):
        reflection_rule("refl", scope, RuleAction("drop"), ports=[70000])
    with pytest.raises(InputError, match=r"^id: 'x+-qotd' is not a valid rule id"):
        reflection_rule("x" * 60, scope, RuleAction("drop"))


def test_reflection_rules_round_trip() -> None:
    rules = reflection_rule("amp", [parse_prefix("198.51.100.0/24")], RuleAction("monitor"), fragments=True)
    rs = RuleSet(tuple(rules))
    assert RuleSet.loads_toml(rs.dumps_toml()) == rs
