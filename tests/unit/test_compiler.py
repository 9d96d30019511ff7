"""The rule compiler: classification, precedence, slots, bitmap views."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.addresses import Prefix, parse_prefix
from controller.dataplane.protect import REFLECTION_PORTS
from controller.errors import FieldError, InputError
from controller.rules.compiler import (
    AllowEntry,
    CompiledSet,
    DenyEntry,
    Packet,
    RateSpec,
    SlotTable,
    compile_ruleset,
)
from controller.rules.model import Match, Rule, RuleAction, RuleSet
from controller.rules.presets import reflection_rule

NOW = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)


def P(text: str) -> Prefix:
    return parse_prefix(text)


def rule(rule_id: str, action: Any = "drop", priority: int = 1000, ttl: str | None = None,
         **match: Any) -> Rule:
    table: dict[str, Any] = {"id": rule_id, "action": action, "priority": priority, "match": match}
    if ttl is not None:
        table["ttl"] = ttl
    return Rule.from_dict(table, now=NOW)


def build(*rules: Rule, **kwargs: Any) -> CompiledSet:
    return compile_ruleset(RuleSet(rules), NOW, **kwargs)


def pkt(src: str, dst: str, proto: int = 17, sport: int | None = None, dport: int | None = None,
        flags: int | None = None, length: int = 100, fragment: bool = False) -> Packet:
    return Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport, flags,
                  length, fragment)


def bits(*indexes: int) -> int:
    return sum(1 << i for i in indexes)


# --- classification ----------------------------------------------------------


def test_classification() -> None:
    cs = build(
        rule("deny", src=["198.18.0.1", "198.18.1.0/24", "2001:db8::1", "2001:db8:1::/48"]),
        rule("allow", "allow", src=["192.0.2.0/24"]),
        rule("watch", "monitor", src=["203.0.113.0/24"]),
        rule("to-edge", dst=["198.51.100.0/24"]),
        rule("unfragmented", src=["198.18.2.0/24"], fragment="no"),
        rule("everything", priority=65535),
        rule("cap", {"kind": "rate_limit", "pps": 1000, "bps": 8_000_000, "scope": "per_source"},
             protocol="udp"),
        rule("pass-dns", "allow", src=["192.0.2.53"], protocol="udp", sport=53),
    )
    assert [(str(e.prefix), e.kind, e.rule_id) for e in cs.deny] == [
        ("198.18.0.1", "exact", "deny"),
        ("198.18.1.0/24", "prefix", "deny"),
        ("2001:db8::1", "exact", "deny"),
        ("2001:db8:1::/48", "prefix", "deny"),
    ]
    assert cs.allow == (AllowEntry(P("192.0.2.0/24"), cs.slots.get("allow"), "allow"),)
    assert [s.rule_id for s in cs.signatures] == ["cap", "pass-dns", "to-edge", "unfragmented", "watch",
                                                  "everything"]
    assert [s.index for s in cs.signatures] == list(range(6))
    cap = cs.signatures[0]
    assert cap.rate == RateSpec(pps=1000, bps=8_000_000, burst_packets=100, burst_bytes=100_000,
                                per_source=True)
    assert cap.protocol == 17 and cap.families == {4, 6}
    assert all(s.rate is None for s in cs.signatures[1:])
    assert cs.signatures[4].action == "monitor" and not cs.signatures[4].terminal
    # every rule has a distinct slot, carried by its entries and signature
    assert len(cs.slots) == 8 and len(set(cs.slots.slots.values())) == 8
    assert {e.slot for e in cs.deny} == {cs.slots.get("deny")}
    assert all(s.slot == cs.slots.get(s.rule_id) for s in cs.signatures)
    assert cs.freed_slots == frozenset() and cs.warnings == ()


def test_expired_rules_are_not_compiled() -> None:
    rules = (rule("short", src=["198.18.0.1"], ttl="1m"), rule("long", src=["198.18.0.2"], ttl="1h"),
             rule("forever", src=["198.18.0.3"]))
    cs = compile_ruleset(RuleSet(rules), NOW)
    assert len(cs.deny) == 3 and cs.next_expiry == NOW + timedelta(minutes=1)
    later = compile_ruleset(RuleSet(rules), NOW + timedelta(minutes=1), slots=cs.slots)
    assert sorted(e.rule_id for e in later.deny) == ["forever", "long"]
    assert later.freed_slots == {cs.slots.get("short")}
    assert later.next_expiry == NOW + timedelta(hours=1)
    assert compile_ruleset(RuleSet(rules), NOW + timedelta(days=1)).next_expiry is None


def test_management_prefixes_are_allow_entries() -> None:
    cs = build(rule("lockout", src=["192.0.2.7"]), rule("also", "allow", src=["192.0.2.0/24"]),
               management=[P("192.0.2.0/24"), P("2001:db8:ff::/48")])
    assert cs.allow == (
        AllowEntry(P("192.0.2.0/24"), 0, "", True),
        AllowEntry(P("2001:db8:ff::/48"), 0, "", True),
    )
    assert any("192.0.2.0/24 is already a management prefix" in w for w in cs.warnings)
    v = cs.evaluate(pkt("192.0.2.7", "198.51.100.1"))
    assert (v.action, v.stage, v.management) == ("pass", "allow", True)


# --- precedence --------------------------------------------------------------


def test_allow_entries_beat_deny_entries() -> None:
    cs = build(rule("deny", priority=1, src=["10.1.2.3"]), rule("allow", "allow", priority=5000,
                                                                 src=["10.0.0.0/8"]))
    v = cs.evaluate(pkt("10.1.2.3", "198.51.100.1"))
    assert (v.action, v.stage, v.rule_id) == ("pass", "allow", "allow")
    (warning,) = cs.warnings
    assert "src-only allow rule 'allow' (priority 5000) overlaps 1 entry of drop rules" in warning
    assert "'deny' 10.1.2.3" in warning


def test_deny_entries_beat_earlier_allow_signatures() -> None:
    cs = build(rule("https", "allow", priority=10, protocol="tcp", dport=443),
               rule("bad", priority=5000, src=["198.18.0.0/15"]))
    v = cs.evaluate(pkt("198.18.0.9", "198.51.100.1", proto=6, sport=5555, dport=443, flags=0x02))
    assert (v.action, v.stage, v.rule_id, v.slot) == ("drop", "deny", "bad", cs.slots.get("bad"))
    (warning,) = cs.warnings
    assert warning.startswith("rule 'https' (allow, priority 10) is a signature, but 1 entry of "
                              "src-only drop rules with later priorities overlap its sources")
    assert "deny entries are checked before signatures" in warning
    # another source: the signature decides
    v = cs.evaluate(pkt("203.0.113.9", "198.51.100.1", proto=6, sport=5555, dport=443, flags=0x02))
    assert (v.action, v.stage, v.rule_id) == ("pass", "signature", "https")


def test_exact_deny_before_prefix_deny() -> None:
    cs = build(rule("wide", priority=1, src=["10.0.0.0/8"]), rule("narrow", src=["10.0.0.0/24"]),
               rule("host", priority=2000, src=["10.0.0.1"]))
    assert cs.evaluate(pkt("10.0.0.1", "198.51.100.1")).rule_id == "host"
    assert cs.evaluate(pkt("10.0.0.2", "198.51.100.1")).rule_id == "narrow"
    assert cs.evaluate(pkt("10.9.0.2", "198.51.100.1")).rule_id == "wide"


def test_signatures_in_priority_then_id_order() -> None:
    cs = build(rule("late", priority=20, protocol="udp"),
               rule("b-drop", priority=10, protocol="udp", dport=53),
               rule("a-allow", "allow", priority=10, protocol="udp", dport=53))
    assert [s.rule_id for s in cs.signatures] == ["a-allow", "b-drop", "late"]
    assert cs.evaluate(pkt("203.0.113.1", "198.51.100.1", sport=999, dport=53)).rule_id == "a-allow"
    assert cs.evaluate(pkt("203.0.113.1", "198.51.100.1", sport=999, dport=54)).rule_id == "late"


def test_monitor_continues_rate_limit_ends() -> None:
    cs = build(rule("mon", "monitor", priority=1, protocol="udp"),
               rule("mon2", "monitor", priority=2),
               rule("limit", {"kind": "rate_limit", "pps": 10}, priority=3, protocol="udp", dport=53),
               rule("drop", priority=4, protocol="udp"))
    v = cs.evaluate(pkt("203.0.113.1", "198.51.100.1", sport=1, dport=53))
    assert (v.action, v.rule_id, v.monitored) == ("rate_limit", "limit", ("mon", "mon2"))
    v = cs.evaluate(pkt("203.0.113.1", "198.51.100.1", sport=1, dport=54))
    assert (v.action, v.rule_id, v.monitored) == ("drop", "drop", ("mon", "mon2"))
    v = cs.evaluate(pkt("203.0.113.1", "198.51.100.1", proto=6, sport=1, dport=54, flags=0x10))
    assert (v.action, v.stage, v.monitored) == ("pass", "default", ("mon2",))


def test_fragments_ports_and_flags() -> None:
    cs = build(rule("syn", protocol="tcp", tcp_flags="syn,!ack", priority=1),
               rule("dns", protocol="udp", sport=53, priority=2),
               rule("frag", "monitor", protocol="udp", fragment="yes", priority=3),
               rule("small", protocol="udp", length="0-64", fragment="no", priority=4))
    src, dst = "203.0.113.1", "198.51.100.1"
    assert cs.evaluate(pkt(src, dst, 6, 1, 80, flags=0x02)).rule_id == "syn"
    assert cs.evaluate(pkt(src, dst, 6, 1, 80, flags=0x12)).stage == "default"
    assert cs.evaluate(pkt(src, dst, 6, None, None, None, fragment=True)).stage == "default"
    assert cs.evaluate(pkt(src, dst, 17, 53, 4000, fragment=True)).rule_id == "dns"  # first fragment
    later = cs.evaluate(pkt(src, dst, 17, None, None, length=60, fragment=True))  # no UDP header
    assert (later.stage, later.monitored) == ("default", ("frag",))
    assert cs.evaluate(pkt(src, dst, 17, 1, 2, length=64)).rule_id == "small"
    assert cs.evaluate(pkt(src, dst, 17, 1, 2, length=65)).stage == "default"


def test_family_filtering_in_evaluate() -> None:
    cs = build(rule("v6-only", dst=["2001:db8::/32"]), rule("icmp", protocol="icmp"))
    assert cs.evaluate(pkt("2001:db8:1::1", "2001:db8::1", proto=58)).rule_id == "v6-only"
    assert cs.evaluate(pkt("203.0.113.1", "198.51.100.1", proto=1)).rule_id == "icmp"
    assert cs.evaluate(pkt("2001:db8:1::1", "2001:db9::1", proto=1)).stage == "default"


# --- warnings ----------------------------------------------------------------


def test_no_warning_when_priorities_agree() -> None:
    cs = build(rule("https", "allow", priority=2000, protocol="tcp", dport=443),
               rule("bad", priority=1000, src=["198.18.0.0/15"]),
               rule("ok", "allow", priority=10, src=["192.0.2.0/24"]))
    assert cs.warnings == ()


def test_reflection_preset_with_denies_is_quiet() -> None:
    preset = reflection_rule("amp", [P("198.51.100.0/24")], RuleAction("rate_limit", pps=1000))
    cs = build(*preset, rule("auto-1", src=["198.18.0.1"]), rule("noc", "allow", src=["192.0.2.0/24"]))
    assert cs.warnings == ()


def test_signature_with_sources_before_allow_entry_warns() -> None:
    cs = build(rule("drop-net", priority=1, src=["10.0.0.0/8"], protocol="udp"),
               rule("partner", "allow", priority=100, src=["10.1.0.0/16", "10.2.0.0/16"]))
    (warning,) = cs.warnings
    assert warning.startswith("rule 'drop-net' (drop, priority 1) is a signature, but 2 entries of "
                              "src-only allow rules with later priorities overlap its sources")


def test_duplicate_prefixes_warn_and_first_owns_the_entry() -> None:
    cs = build(rule("a", priority=5, src=["198.18.0.1"]), rule("b", priority=1, src=["198.18.0.1"]))
    assert cs.deny == (DenyEntry(P("198.18.0.1"), cs.slots.get("b"), "b"),)
    assert cs.warnings == ("rule 'a': source 198.18.0.1 is already denied by rule 'b' (earlier in "
                           "priority order); the entry counts for 'b'",)


def test_warnings_are_capped() -> None:
    rules = [rule(f"r{i:03}", src=["198.18.0.1"]) for i in range(152)]
    cs = build(*rules)
    assert len(cs.warnings) == 101 and cs.warnings[-1] == "... and 51 more warnings"


# --- limits ------------------------------------------------------------------


def test_max_signatures() -> None:
    rules = [rule(f"s{i}", protocol="udp", dport=i) for i in range(3)]
    rules += [rule(f"d{i}", src=[f"198.18.0.{i}"]) for i in range(10)]  # entries, not signatures
    assert len(build(*rules, max_signatures=3).signatures) == 3
    with pytest.raises(InputError) as info:
        build(*rules, max_signatures=2)
    assert str(info.value) == (
        "3 rules compile to signatures but the limit is 2 (max_signatures); only src-only drop/allow "
        "rules need no signature (first over the limit: 's2')"
    )
    assert len(build(*[rule(f"x{i}") for i in range(256)]).signatures) == 256
    with pytest.raises(InputError, match="257 rules compile to signatures but the limit is 256"):
        build(*[rule(f"x{i}") for i in range(257)])


def test_arguments_are_checked() -> None:
    rs = RuleSet((rule("a"),))
    with pytest.raises(InputError, match="now: needs a time zone"):
        compile_ruleset(rs, datetime(2024, 1, 1))
    with pytest.raises(InputError, match="max_signatures"):
        compile_ruleset(rs, NOW, max_signatures=-1)
    with pytest.raises(InputError, match="max_rule_slots"):
        compile_ruleset(rs, NOW, max_rule_slots=0)
    with pytest.raises(InputError, match="management: expected a Prefix"):
        compile_ruleset(rs, NOW, management=["10.0.0.0/8"])  # type: ignore[list-item]


# --- slots -------------------------------------------------------------------


def test_slots_are_stable_across_compiles() -> None:
    a, b, c = rule("a", priority=1), rule("b", priority=2), rule("c", priority=3)
    d, e = rule("d", src=["198.18.0.4"]), rule("e", src=["198.18.0.5"])
    first = build(a, b, c)
    assert first.slots.to_dict() == {"a": 1, "b": 2, "c": 3}
    # b goes, d comes: survivors keep theirs; d does not take b's just-freed slot
    second = build(c, a, d, slots=first.slots)
    assert second.slots.to_dict() == {"a": 1, "c": 3, "d": 4}
    assert second.freed_slots == {2}
    assert {s.rule_id: s.slot for s in second.signatures} == {"a": 1, "c": 3}
    assert second.deny[0].slot == 4
    # next compile: the lowest free slot is 2 again
    third = build(a, c, d, e, slots=second.slots)
    assert third.slots.to_dict() == {"a": 1, "c": 3, "d": 4, "e": 2}
    assert third.freed_slots == frozenset()
    # the same set again changes nothing
    again = build(a, c, d, e, slots=third.slots)
    assert again.slots == third.slots and again.freed_slots == frozenset()
    # the input table is not changed
    assert first.slots.to_dict() == {"a": 1, "b": 2, "c": 3}


def test_slots_freed_now_are_reused_only_when_nothing_else_is_free() -> None:
    a, b, c, d = (rule(x) for x in "abcd")
    first = build(a, b, c, max_rule_slots=4)  # slots 1..3
    second = build(a, c, d, slots=first.slots, max_rule_slots=4)
    assert second.slots.get("d") == 2 and second.freed_slots == {2}


def test_slots_run_out() -> None:
    with pytest.raises(InputError) as info:
        build(rule("a"), rule("b"), rule("c"), max_rule_slots=3)
    assert str(info.value).startswith(
        "rule slots exhausted: 3 active rules need a slot each, but there are 2 (max_rule_slots 3, "
        "slot 0 is reserved)"
    )
    big = SlotTable({"a": 10})
    with pytest.raises(InputError, match="rule 'a' holds slot 10 but max_rule_slots is 8"):
        build(rule("a"), slots=big, max_rule_slots=8)


def test_slot_table() -> None:
    table = SlotTable({"b": 2, "a": 1})
    assert table.to_dict() == {"a": 1, "b": 2} and SlotTable.from_dict(table.to_dict()) == table
    assert table.get("a") == 1 and table.get("zz") == 0 and "a" in table and len(table) == 2
    assert hash(table) == hash(SlotTable({"a": 1, "b": 2}))
    with pytest.raises(TypeError):
        table.slots["c"] = 3  # type: ignore[index]
    with pytest.raises(InputError, match="slots\\['b'\\]: slot 1 is also held by 'a'"):
        SlotTable({"a": 1, "b": 1})
    with pytest.raises(InputError, match="slots\\['a'\\]: 0 is not a slot number"):
        SlotTable({"a": 0})


# --- bitmap views ------------------------------------------------------------


def test_proto_bits() -> None:
    cs = build(rule("udp1", priority=1, protocol="udp"), rule("tcp", priority=2, protocol="tcp"),
               rule("any", priority=3, dst=["198.51.100.0/24"]), rule("udp2", priority=4, protocol=17))
    per, any_bits = cs.proto_bits()
    assert any_bits == bits(2)
    assert per == {17: bits(0, 2, 3), 6: bits(1, 2)}
    assert cs.proto_bits().per_proto.get(47, any_bits) == bits(2)


def test_port_bits() -> None:
    cs = build(rule("a", priority=0, protocol="udp", sport=53),
               rule("b", priority=1, protocol="udp", sport="1000-2000"),
               rule("c", priority=2, protocol="udp", sport="0-65535"),
               rule("d", priority=3, protocol="tcp"),
               rule("e", priority=4, protocol="udp", sport=1500, dport="1-2"))
    per, default, noport = cs.port_bits("sport")
    assert noport == bits(3)
    assert default == bits(2, 3)
    assert per[53] == bits(0, 2, 3)
    assert per[1000] == per[1499] == per[1501] == per[2000] == bits(1, 2, 3)
    assert per[1500] == bits(1, 2, 3, 4)
    assert 999 not in per and 2001 not in per and 0 not in per and 65535 not in per
    assert len(per) == 1 + 1001
    dper, ddefault, dnoport = cs.port_bits("dport")
    assert dnoport == ddefault == bits(0, 1, 2, 3)
    assert dper == {1: bits(0, 1, 2, 3, 4), 2: bits(0, 1, 2, 3, 4)}
    with pytest.raises(InputError):
        cs.port_bits("port")  # type: ignore[arg-type]


def test_prefix_bits_flatten_nested_prefixes() -> None:
    cs = build(
        rule("a", priority=0, src=["10.0.0.0/8"], protocol="udp"),
        rule("b", priority=1, src=["10.1.0.0/16"], protocol="udp"),
        rule("c", priority=2, protocol="udp"),  # no src: any_bits in both families
        rule("d", priority=3, src=["10.1.2.0/24", "2001:db8::/32"], protocol="udp"),
        rule("e", priority=4, src=["2001:db8::/32"], protocol="udp"),  # IPv6 only
        rule("f", priority=5, dst=["2001:db8:ff::/48"]),  # no src but IPv6 only
        rule("g", priority=6, src=["10.2.0.0/16", "11.0.0.0/8"], protocol="udp"),
    )
    entries, any4 = cs.prefix_bits("src", 4)
    assert any4 == bits(2)
    assert [(str(p), b) for p, b in entries] == [
        ("10.0.0.0/8", bits(0, 2)),
        ("10.1.0.0/16", bits(0, 1, 2)),
        ("10.1.2.0/24", bits(0, 1, 2, 3)),
        ("10.2.0.0/16", bits(0, 2, 6)),
        ("11.0.0.0/8", bits(2, 6)),
    ]
    entries6, any6 = cs.prefix_bits("src", 6)
    assert any6 == bits(2, 5)
    assert [(str(p), b) for p, b in entries6] == [("2001:db8::/32", bits(2, 3, 4, 5))]
    dst4, dany4 = cs.prefix_bits("dst", 4)
    assert dst4 == [] and dany4 == bits(0, 1, 2, 3, 6)  # e and f are IPv6 only
    dst6, dany6 = cs.prefix_bits("dst", 6)
    assert dany6 == bits(2, 3, 4)
    assert [(str(p), b) for p, b in dst6] == [("2001:db8:ff::/48", bits(2, 3, 4, 5))]
    with pytest.raises(InputError):
        cs.prefix_bits("src", 5)


def _lpm(entries: list[tuple[Prefix, int]], any_bits: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address
         ) -> int:
    best: tuple[int, int] | None = None
    for p, b in entries:
        if addr in p.network and (best is None or p.network.prefixlen > best[0]):
            best = (p.network.prefixlen, b)
    return any_bits if best is None else best[1]


class Classifier:
    """The compiled set as the data plane uses it: one lookup per dimension,
    AND the bitmaps, then the per-signature checks (flags, length, fragment)."""

    def __init__(self, cs: CompiledSet) -> None:
        self.cs = cs
        self.proto = cs.proto_bits()
        self.ports = {"sport": cs.port_bits("sport"), "dport": cs.port_bits("dport")}
        self.prefixes = {(d, f): cs.prefix_bits(d, f) for d in ("src", "dst") for f in (4, 6)}

    def candidates(self, p: Packet) -> int:
        found = self.proto.per_proto.get(p.protocol, self.proto.any_bits)
        for which, port in (("sport", p.sport), ("dport", p.dport)):
            per, default, noport = self.ports[which]
            found &= noport if port is None else per.get(port, default)
        for dim, addr in (("src", p.src), ("dst", p.dst)):
            entries, any_bits = self.prefixes[(dim, p.family)]
            found &= _lpm(entries, any_bits, addr)
        out = 0
        for s in self.cs.signatures:
            if not found & s.bit:
                continue
            if s.tcp_flags is not None and (p.tcp_flags is None or not s.tcp_flags.matches(p.tcp_flags)):
                continue
            if s.length is not None and not s.length[0] <= p.length <= s.length[1]:
                continue
            if (s.fragment == "yes" and not p.fragment) or (s.fragment == "no" and p.fragment):
                continue
            out |= s.bit
        return out


def _random_prefix(rng: random.Random, family: int) -> Prefix:
    if family == 4:
        plen = rng.choice([8, 12, 16, 20, 24, 28, 32])
        base = int(ipaddress.IPv4Address("10.0.0.0")) | rng.getrandbits(24) & rng.choice([0xF00000, 0xFFFFFF])
        return Prefix(ipaddress.IPv4Network((base, plen), strict=False))
    plen = rng.choice([32, 48, 64, 96, 128])
    mask = rng.choice([0xF << 92, (1 << 96) - 1])
    base = int(ipaddress.IPv6Address("2001:db8::")) | rng.getrandbits(96) & mask
    return Prefix(ipaddress.IPv6Network((base, plen), strict=False))


def _random_rule(rng: random.Random, i: int) -> Rule | None:
    match: dict[str, Any] = {}
    for dim in ("src", "dst"):
        if rng.random() < 0.6:
            fams = rng.choice([[4], [6], [4, 6], [4, 4]])
            match[dim] = sorted({str(_random_prefix(rng, f)) for f in fams})
    proto = rng.choice([None, 6, 17, 17, 1, 58, 47])
    if proto is not None:
        match["protocol"] = proto
    if proto in (6, 17):
        for dim in ("sport", "dport"):
            if rng.random() < 0.5:
                lo = rng.choice([0, 53, 80, 443, 1000, 1024, 60000])
                match[dim] = f"{lo}-{min(65535, lo + rng.choice([0, 0, 10, 1000, 65535]))}"
    if proto == 6 and rng.random() < 0.5:
        match["tcp_flags"] = rng.choice(["syn", "syn,!ack", "ack", "rst"])
    if rng.random() < 0.3:
        lo = rng.choice([0, 40, 100, 1000])
        match["length"] = [lo, lo + rng.choice([0, 60, 1000, 65535 - lo])]
    match["fragment"] = rng.choice(["any", "any", "yes", "no"])
    action = rng.choice(["drop", "allow", "monitor", {"kind": "rate_limit", "pps": 100}])
    try:
        made = rule(f"r{i}", action, priority=rng.randrange(100), **match)
    except FieldError:
        return None  # e.g. families that can never match
    return None if made.match.is_src_only else made  # signatures only


def _random_packet(rng: random.Random, sigs: list[Prefix]) -> Packet:
    family = rng.choice([4, 6])
    addrs = []
    for _ in range(2):
        pool = [p for p in sigs if p.family == family]
        net = (rng.choice(pool) if pool and rng.random() < 0.8 else _random_prefix(rng, family)).network
        addrs.append(net[rng.randrange(net.num_addresses)] if net.num_addresses > 1 else net.network_address)
    proto = rng.choice([6, 17, 1 if family == 4 else 58, 47])
    fragment = rng.random() < 0.2
    has_l4 = proto in (6, 17) and not (fragment and rng.random() < 0.5)
    ports = [rng.choice([0, 53, 80, 443, 999, 1000, 1024, 5000, 60000, 65535]) for _ in range(2)]
    flags = rng.choice([0x02, 0x12, 0x10, 0x04]) if proto == 6 and has_l4 else None
    return Packet(addrs[0], addrs[1], proto, ports[0] if has_l4 else None, ports[1] if has_l4 else None,
                  flags, rng.choice([40, 60, 100, 1500, 9000]), fragment)


def test_bitmap_views_agree_with_the_reference_match() -> None:
    rng = random.Random(20240701)
    for round_ in range(30):
        rules = [r for i in range(40) if (r := _random_rule(rng, i)) is not None]
        cs = build(*rules)
        assert len(cs.signatures) == len(rules)
        classifier = Classifier(cs)
        prefixes = [p for s in cs.signatures for p in (*s.src, *s.dst)]
        for _ in range(150):
            p = _random_packet(rng, prefixes)
            expect = sum(s.bit for s in cs.signatures if s.matches(p))
            assert classifier.candidates(p) == expect, (round_, p)
            # first terminal candidate decides, monitors before it are counted
            verdict = cs.evaluate(p)
            terminal = [s for s in cs.signatures if expect & s.bit and s.terminal]
            assert verdict.rule_id == (terminal[0].rule_id if terminal else "")
            first = terminal[0].index if terminal else len(cs.signatures)
            assert verdict.monitored == tuple(
                s.rule_id for s in cs.signatures[:first] if expect & s.bit and not s.terminal
            )


# --- the reflection preset ---------------------------------------------------


def test_reflection_preset_compiles_to_port_signatures() -> None:
    scope = [P("198.51.100.0/24"), P("2001:db8:200::/48")]
    rules = reflection_rule("amp", scope, RuleAction("drop"), fragments=True)
    cs = build(*rules, rule("other", priority=2000, protocol="tcp"))
    assert len(cs.signatures) == len(REFLECTION_PORTS) + 2
    per, default, noport = cs.port_bits("sport")
    assert set(per) == set(REFLECTION_PORTS)
    other = next(s for s in cs.signatures if s.rule_id == "other")
    frag = next(s for s in cs.signatures if s.rule_id == "amp-fragments")
    assert noport == default == other.bit | frag.bit
    for port, name in REFLECTION_PORTS.items():
        sig = next(s for s in cs.signatures if s.rule_id == f"amp-{name}")
        assert per[port] == sig.bit | default
    for port in (19, 53, 123, 161, 389, 1900, 3702, 11211):
        v = cs.evaluate(pkt("203.0.113.9", "198.51.100.10", 17, port, 40000, length=1400))
        assert (v.action, v.rule_id) == ("drop", f"amp-{REFLECTION_PORTS[port]}")
    assert cs.evaluate(pkt("203.0.113.9", "198.51.100.10", 17, 40000, 53)).stage == "default"
    assert cs.evaluate(pkt("203.0.113.9", "192.0.2.1", 17, 123, 40000)).stage == "default"  # out of scope
    later_fragment = cs.evaluate(pkt("2001:db8:9::1", "2001:db8:200::1", 17, None, None, fragment=True))
    assert later_fragment.rule_id == "amp-fragments"


# --- scale -------------------------------------------------------------------


def test_compile_100k_rules() -> None:
    drop = RuleAction("drop")
    base4 = int(ipaddress.IPv4Address("100.64.0.0"))
    base6 = int(ipaddress.IPv6Address("2001:db8::"))
    rules = [Rule(f"auto-{i}", Match(src=(Prefix(ipaddress.IPv4Network((base4 + i, 32))),)), drop,
                  origin="auto") for i in range(90_000)]
    rules += [Rule(f"auto6-{i}", Match(src=(Prefix(ipaddress.IPv6Network((base6 + (i << 64), 64))),)), drop,
                   origin="auto") for i in range(9_900)]
    rules += reflection_rule("amp", [P("198.51.100.0/24")], RuleAction("rate_limit", pps=1000))
    rules += [rule(f"sig-{i}", protocol="tcp", dport=i) for i in range(100 - len(REFLECTION_PORTS))]
    rs = RuleSet(tuple(rules))
    assert len(rs) == 100_000
    cs = compile_ruleset(rs, NOW, max_rule_slots=1 << 17)
    assert len(cs.deny) == 99_900
    assert sum(e.kind == "exact" for e in cs.deny) == 90_000
    assert len(cs.signatures) == 100 and cs.warnings == ()
    assert len(cs.slots) == 100_000 and set(cs.slots.slots.values()) == set(range(1, 100_001))
    again = compile_ruleset(rs, NOW, slots=cs.slots, max_rule_slots=1 << 17)
    assert again.slots == cs.slots and again.freed_slots == frozenset()
    with pytest.raises(InputError, match="rule slots exhausted: 100000 active rules"):
        compile_ruleset(rs, NOW)
