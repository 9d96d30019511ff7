"""The signature stage, packet by packet, through BPF_PROG_TEST_RUN.

A table like ``test_packets.py``: each row is a rule set (compiled from
:class:`controller.rules.model.RuleSet` and swapped in with
``controller.rules.enforce.apply``, as the controller does), a packet run one or
more times, the reason each run is counted under, and what every rule of
the set counted (packets, dropped, rate-limited; bytes follow from the
packet). Rules not named in a row's ``counts`` must have counted nothing.

Covered: every match field (source/destination prefixes of both families,
nested; protocol; source/destination port and range; TCP flags; IP length;
fragments), every action, priorities and first-match-wins, monitor rules
on the way to a verdict, the precedence allow entries > deny entries >
signatures (docs/rules.md, "Evaluation order"), the reflection preset,
fragments and malformed packets against port rules, and SCTP ports.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q
from scapy.layers.sctp import SCTP

from controller.addresses import parse_prefix
from controller.dataplane import attach as dataplane
from controller.dataplane import counters
from controller.dataplane.protect import REFLECTION_PORTS
from controller.dataplane.reasons import Reason
from controller.rules.model import Rule, RuleAction, RuleSet
from controller.rules.presets import reflection_rule

from .conftest import DataPlane
from .packets import DST4, DST6, SRC4, SRC6, eth, frame, ip4, ip6
from .rulesets import NOW, RuleCount, action_of, enforce_rules, expected_rule_totals, retval_of, rule

pytestmark = pytest.mark.bpf

R = Reason
PROTO_UDP, PROTO_TCP, PROTO_ESP, PROTO_SCTP = 17, 6, 50, 132
ETH_HLEN = 14
DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


@dataclass(frozen=True)
class Row:
    """A rule set, a packet run ``len(reasons)`` times, and what it must do."""

    description: str
    rules: tuple[Rule, ...]
    packet: bytes
    reasons: tuple[Reason, ...]  # the reason of each run, in order
    counts: Mapping[str, RuleCount] = field(default_factory=dict)  # rule id -> (packets, dropped, limited)
    management: tuple[str, ...] = ()
    monitor: bool = False
    pass_malformed: bool = False


def row(description: str, rules: list[Rule] | tuple[Rule, ...], packet: bytes,
        reasons: Reason | tuple[Reason, ...], counts: Mapping[str, RuleCount] | None = None,
        **kw: object) -> Row:
    rs = reasons if isinstance(reasons, tuple) else (reasons,)
    return Row(description, tuple(rules), packet, rs, counts or {}, **kw)  # type: ignore[arg-type]


DROPPED: RuleCount = (1, 1, 0)
MATCHED: RuleCount = (1, 0, 0)


def udp4(sport: int = 5353, dport: int = 53, src: str = SRC4, dst: str = DST4, pad: int = 0) -> bytes:
    return frame(ip4(src=src, dst=dst), UDP(sport=sport, dport=dport), bytes(pad))


def udp6(sport: int = 5353, dport: int = 53, src: str = SRC6, dst: str = DST6, pad: int = 0) -> bytes:
    return frame(ip6(src=src, dst=dst), UDP(sport=sport, dport=dport), bytes(pad))


def tcp4(flags: str = "S", dport: int = 443, sport: int = 40000, src: str = SRC4) -> bytes:
    return frame(ip4(src=src), TCP(sport=sport, dport=dport, flags=flags))


def udp_drop(rid: str = "sig", priority: int = 1000, **match: object) -> Rule:
    """A drop signature on UDP plus ``match``."""
    return rule(rid, "drop", priority, protocol="udp", **match)


# -- source and destination prefixes -------------------------------------------------
PREFIX_ROWS = [
    row("src v4 prefix hit", [udp_drop(src=["198.18.0.0/24"])], udp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("src v4 prefix miss", [udp_drop(src=["198.18.1.0/24"])], udp4(), R.PASS_DEFAULT),
    row("src v4 /32 hit", [udp_drop(src=[SRC4])], udp4(), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("src v4 /32 of a neighbour misses", [udp_drop(src=["198.18.0.11"])], udp4(),
        R.PASS_DEFAULT),
    row("src v6 prefix hit", [udp_drop(src=["2001:db8:0:1::/64"])], udp6(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("src v6 prefix miss", [udp_drop(src=["2001:db8:0:2::/64"])], udp6(), R.PASS_DEFAULT),
    row("src v4-only rule does not match ipv6", [udp_drop(src=["0.0.0.0/0"])], udp6(),
        R.PASS_DEFAULT),
    row("src v6-only rule does not match ipv4", [udp_drop(src=["::/0"])], udp4(), R.PASS_DEFAULT),
    row("src mixed families: v4 packet", [udp_drop(src=["198.18.0.0/24", "2001:db8:0:1::/64"])],
        udp4(), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("src mixed families: v6 packet", [udp_drop(src=["198.18.0.0/24", "2001:db8:0:1::/64"])],
        udp6(), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("src several v4 prefixes: the second hits",
        [udp_drop(src=["203.0.113.0/24", "198.18.0.0/20"])], udp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    # Nested prefixes: the trie holds flattened bit sets, so the /24 entry must
    # carry the /16's signature too, and evaluation order stays by priority.
    *[
        row(f"src v4 nested: packet {where}, {order}",
            [rule("wide", "drop", wp, protocol="udp", src=["198.18.0.0/16"]),
             rule("narrow", "allow", np_, protocol="udp", src=["198.18.0.0/24"])],
            udp4(src=src), reason, counts)
        for where, src, order, wp, np_, reason, counts in [
            ("in both", SRC4, "narrow first", 20, 10, R.PASS_SIGNATURE, {"narrow": MATCHED}),
            ("in both", SRC4, "wide first", 10, 20, R.DROP_SIGNATURE, {"wide": DROPPED}),
            ("in the wide only", "198.18.1.10", "narrow first", 20, 10, R.DROP_SIGNATURE,
             {"wide": DROPPED}),
            ("in neither", "198.20.0.1", "narrow first", 20, 10, R.PASS_DEFAULT, {}),
        ]
    ],
    *[
        row(f"src v6 nested: packet {where}, {order}",
            [rule("wide", "drop", wp, protocol="udp", src=["2001:db8::/32"]),
             rule("narrow", "allow", np_, protocol="udp", src=["2001:db8:0:1::/64"])],
            udp6(src=src), reason, counts)
        for where, src, order, wp, np_, reason, counts in [
            ("in both", SRC6, "narrow first", 20, 10, R.PASS_SIGNATURE, {"narrow": MATCHED}),
            ("in both", SRC6, "wide first", 10, 20, R.DROP_SIGNATURE, {"wide": DROPPED}),
            ("in the wide only", "2001:db8:5::1", "narrow first", 20, 10, R.DROP_SIGNATURE,
             {"wide": DROPPED}),
            ("in neither", "2001:db9::1", "narrow first", 20, 10, R.PASS_DEFAULT, {}),
        ]
    ],
    row("src nested three deep, middle rule first",
        [rule("a16", "drop", 30, protocol="udp", src=["198.18.0.0/16"]),
         rule("b20", "allow", 10, protocol="udp", src=["198.18.0.0/20"]),
         rule("c28", "drop", 20, protocol="udp", src=["198.18.0.0/28"])],
        udp4(), R.PASS_SIGNATURE, {"b20": MATCHED}),
    row("src and a rule without src: both candidates, priority decides",
        [rule("any", "allow", 10, protocol="udp"), udp_drop(src=["198.18.0.0/24"])],
        udp4(), R.PASS_SIGNATURE, {"any": MATCHED}),
    row("dst v4 prefix hit", [udp_drop(dst=["198.19.255.0/24"])], udp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("dst v4 prefix miss", [udp_drop(dst=["198.19.254.0/24"])], udp4(), R.PASS_DEFAULT),
    row("dst v4 matches the destination, not the source", [udp_drop(dst=["198.18.0.0/24"])],
        udp4(), R.PASS_DEFAULT),
    row("dst v6 prefix hit", [udp_drop(dst=["2001:db8:ffff::/48"])], udp6(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("dst v6 prefix miss", [udp_drop(dst=["2001:db8:fffe::/48"])], udp6(), R.PASS_DEFAULT),
    row("dst v4 nested, narrow allow first",
        [rule("wide", "drop", 20, protocol="udp", dst=["198.19.0.0/16"]),
         rule("narrow", "allow", 10, protocol="udp", dst=[DST4])],
        udp4(), R.PASS_SIGNATURE, {"narrow": MATCHED}),
    row("dst v4 nested, packet to the wide only",
        [rule("wide", "drop", 20, protocol="udp", dst=["198.19.0.0/16"]),
         rule("narrow", "allow", 10, protocol="udp", dst=[DST4])],
        udp4(dst="198.19.0.1"), R.DROP_SIGNATURE, {"wide": DROPPED}),
    row("dst v6 nested, packet to the wide only",
        [rule("wide", "drop", 20, protocol="udp", dst=["2001:db8::/32"]),
         rule("narrow", "allow", 10, protocol="udp", dst=["2001:db8:ffff::/48"])],
        udp6(dst="2001:db8:1::1"), R.DROP_SIGNATURE, {"wide": DROPPED}),
    row("src and dst both must match: both do",
        [udp_drop(src=["198.18.0.0/24"], dst=["198.19.255.0/24"])], udp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("src and dst both must match: dst does not",
        [udp_drop(src=["198.18.0.0/24"], dst=["198.19.0.0/24"])], udp4(), R.PASS_DEFAULT),
    row("src and dst both must match: src does not",
        [udp_drop(src=["198.18.1.0/24"], dst=["198.19.255.0/24"])], udp4(), R.PASS_DEFAULT),
]

# -- protocol ---------------------------------------------------------------------------
PROTOCOL_ROWS = [
    row("protocol udp hit", [rule("sig", protocol="udp")], udp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("protocol tcp misses udp", [rule("sig", protocol="tcp")], udp4(), R.PASS_DEFAULT),
    row("protocol tcp hit", [rule("sig", protocol="tcp")], tcp4(), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("protocol icmp hit", [rule("sig", protocol="icmp")], frame(ip4(), ICMP()),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("protocol icmp (ipv4 only) misses ipv6 carrying protocol 1",
        [rule("sig", protocol="icmp")], frame(ip6(nh=1), bytes(8)), R.PASS_DEFAULT),
    row("protocol icmpv6 hit", [rule("sig", protocol="icmpv6")],
        frame(ip6(), ICMPv6EchoRequest()), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("protocol icmpv6 (ipv6 only) misses ipv4 carrying protocol 58",
        [rule("sig", protocol="icmpv6")], frame(ip4(proto=58), bytes(8)), R.PASS_DEFAULT),
    row("protocol gre hit", [rule("sig", protocol="gre")], frame(ip4(), GRE()), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("protocol by number (esp) hit", [rule("sig", protocol=PROTO_ESP)],
        frame(ip4(proto=PROTO_ESP), bytes(16)), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("protocol by number (esp) on ipv6", [rule("sig", protocol=PROTO_ESP)],
        frame(ip6(nh=PROTO_ESP), bytes(16)), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("ipv6 protocol is the one after the extension headers", [rule("sig", protocol="udp")],
        frame(ip6(), IPv6ExtHdrHopByHop(), UDP()), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("no protocol: every packet matches", [rule("sig", "drop", length=[0, 65535])],
        frame(ip4(), GRE()), R.DROP_SIGNATURE, {"sig": DROPPED}),
]

# -- ports ------------------------------------------------------------------------------
PORT_ROWS = [
    row("dport single hit", [udp_drop(dport=53)], udp4(dport=53), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("dport single miss", [udp_drop(dport=53)], udp4(dport=54), R.PASS_DEFAULT),
    row("dport single does not look at sport", [udp_drop(dport=53)], udp4(sport=53, dport=5353),
        R.PASS_DEFAULT),
    row("sport single hit", [udp_drop(sport=123)], udp4(sport=123), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("sport single miss", [udp_drop(sport=123)], udp4(sport=124), R.PASS_DEFAULT),
    *[
        row(f"dport range 1000-2000, port {p}", [udp_drop(dport="1000-2000")], udp4(dport=p),
            R.DROP_SIGNATURE if 1000 <= p <= 2000 else R.PASS_DEFAULT,
            {"sig": DROPPED} if 1000 <= p <= 2000 else {})
        for p in (999, 1000, 1500, 2000, 2001)
    ],
    *[
        row(f"sport range [1024, 65535], port {p}", [udp_drop(sport=[1024, 65535])],
            udp4(sport=p), R.DROP_SIGNATURE if p >= 1024 else R.PASS_DEFAULT,
            {"sig": DROPPED} if p >= 1024 else {})
        for p in (0, 1023, 1024, 65535)
    ],
    row("dport range 0-65535 matches port 0", [udp_drop(dport="0-65535")], udp4(dport=0),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("sport and dport both: both match", [udp_drop(sport=53, dport="1024-65535")],
        udp4(sport=53, dport=40000), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("sport and dport both: dport does not", [udp_drop(sport=53, dport="1024-65535")],
        udp4(sport=53, dport=80), R.PASS_DEFAULT),
    row("tcp dport hit", [rule("sig", protocol="tcp", dport=443)], tcp4(dport=443),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp dport rule misses udp to the same port", [rule("sig", protocol="tcp", dport=53)],
        udp4(dport=53), R.PASS_DEFAULT),
    row("ipv6 udp dport hit", [udp_drop(dport=53)], udp6(dport=53), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("overlapping ranges: the first by priority",
        [rule("lo", "allow", 10, protocol="udp", dport="1-100"),
         rule("hi", "drop", 20, protocol="udp", dport="50-200")],
        udp4(dport=75), R.PASS_SIGNATURE, {"lo": MATCHED}),
    row("overlapping ranges: past the first",
        [rule("lo", "allow", 10, protocol="udp", dport="1-100"),
         rule("hi", "drop", 20, protocol="udp", dport="50-200")],
        udp4(dport=150), R.DROP_SIGNATURE, {"hi": DROPPED}),
]

# -- TCP flags --------------------------------------------------------------------------
FLAG_ROWS = [
    row("tcp_flags syn,!ack: syn", [rule("sig", protocol="tcp", tcp_flags="syn,!ack")],
        tcp4("S"), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp_flags syn,!ack: syn+ack", [rule("sig", protocol="tcp", tcp_flags="syn,!ack")],
        tcp4("SA"), R.PASS_DEFAULT),
    row("tcp_flags syn,!ack: syn+ece (bits outside the mask ignored)",
        [rule("sig", protocol="tcp", tcp_flags="syn,!ack")], tcp4("SE"), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("tcp_flags syn: syn+ack", [rule("sig", protocol="tcp", tcp_flags="syn")], tcp4("SA"),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp_flags syn: ack", [rule("sig", protocol="tcp", tcp_flags="syn")], tcp4("A"),
        R.PASS_DEFAULT),
    row("tcp_flags {mask 0x12, value 0x12}: syn+ack",
        [rule("sig", protocol="tcp", tcp_flags={"mask": 0x12, "value": 0x12})], tcp4("SA"),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp_flags {mask 0x12, value 0x12}: syn",
        [rule("sig", protocol="tcp", tcp_flags={"mask": 0x12, "value": 0x12})], tcp4("S"),
        R.PASS_DEFAULT),
    row("tcp_flags rst: rst+ack", [rule("sig", protocol="tcp", tcp_flags="rst")], tcp4("RA"),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp_flags !fin,!syn,!rst,!psh,!ack,!urg,!ece,!cwr: null scan",
        [rule("sig", protocol="tcp", tcp_flags="!fin,!syn,!rst,!psh,!ack,!urg,!ece,!cwr")],
        tcp4(""), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("tcp_flags fin,psh,urg: xmas scan",
        [rule("sig", protocol="tcp", tcp_flags="fin,psh,urg")], tcp4("FPU"), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("tcp_flags on ipv6", [rule("sig", protocol="tcp", tcp_flags="syn,!ack")],
        frame(ip6(), TCP(flags="S")), R.DROP_SIGNATURE, {"sig": DROPPED}),
]

# -- IP length (VLAN tags do not count) ----------------------------------------------------
UDP4_IP_LEN = 28  # 20-byte IPv4 header + 8-byte UDP header
UDP6_IP_LEN = 48
LENGTH_ROWS = [
    *[
        row(f"length 100-200, ipv4 length {n}", [udp_drop(length="100-200")],
            udp4(pad=n - UDP4_IP_LEN), R.DROP_SIGNATURE if 100 <= n <= 200 else R.PASS_DEFAULT,
            {"sig": DROPPED} if 100 <= n <= 200 else {})
        for n in (99, 100, 150, 200, 201)
    ],
    *[
        row(f"length 100-200, ipv6 length {n}", [udp_drop(length="100-200")],
            udp6(pad=n - UDP6_IP_LEN), R.DROP_SIGNATURE if 100 <= n <= 200 else R.PASS_DEFAULT,
            {"sig": DROPPED} if 100 <= n <= 200 else {})
        for n in (99, 100, 200, 201)
    ],
    row("length single value 60", [udp_drop(length=60)], udp4(pad=60 - UDP4_IP_LEN),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("length of a tagged frame: 802.1q does not count", [udp_drop(length="100-100")],
        frame(Dot1Q(vlan=10), ip4(), UDP(), bytes(100 - UDP4_IP_LEN)), R.DROP_SIGNATURE,
        {"sig": DROPPED}),
    row("length of a qinq frame: neither tag counts", [udp_drop(length="0-100")],
        frame(Dot1AD(vlan=1), Dot1Q(vlan=2), ip4(), UDP(), bytes(100 - UDP4_IP_LEN)),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("length is the IP length, not the frame length", [udp_drop(length=f"0-{UDP4_IP_LEN}")],
        udp4(), R.DROP_SIGNATURE, {"sig": DROPPED}),
]

# -- fragments --------------------------------------------------------------------------
FIRST_FRAG4 = frame(ip4(flags="MF"), UDP(sport=5353, dport=53))
LATER_FRAG4 = frame(ip4(frag=185, proto=PROTO_UDP), bytes(UDP(sport=5353, dport=53)) + bytes(32))
FIRST_FRAG6 = frame(ip6(), IPv6ExtHdrFragment(offset=0, m=1), UDP(sport=5353, dport=53))
LATER_FRAG6 = frame(ip6(), IPv6ExtHdrFragment(offset=185, nh=PROTO_UDP),
                    bytes(UDP(sport=5353, dport=53)) + bytes(32))
FRAGMENTS = {
    "unfragmented v4": (udp4(), False),
    "first fragment v4": (FIRST_FRAG4, True),
    "later fragment v4": (LATER_FRAG4, True),
    "unfragmented v6": (udp6(), False),
    "first fragment v6": (FIRST_FRAG6, True),
    "later fragment v6": (LATER_FRAG6, True),
}
FRAGMENT_ROWS = [
    row(f"fragment {mode}: {name}", [udp_drop(fragment=mode)], packet,
        R.DROP_SIGNATURE if hit else R.PASS_DEFAULT, {"sig": DROPPED} if hit else {})
    for mode in ("yes", "no", "any")
    for name, (packet, is_frag) in FRAGMENTS.items()
    for hit in [mode == "any" or (mode == "yes") == is_frag]
]

# -- actions, priorities, monitor -----------------------------------------------------------
PER_SECOND_ONCE = {"kind": "rate_limit", "pps": 1, "burst_packets": 1}
ACTION_ROWS = [
    row("drop", [udp_drop()], udp4(), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("drop x3", [udp_drop()], udp4(), (R.DROP_SIGNATURE,) * 3, {"sig": (3, 3, 0)}),
    row("allow", [rule("sig", "allow", protocol="udp")], udp4(), R.PASS_SIGNATURE,
        {"sig": MATCHED}),
    row("allow skips later signatures",
        [rule("ok", "allow", 10, protocol="udp"), rule("mon", "monitor", 20, protocol="udp"),
         udp_drop(priority=30)],
        udp4(), R.PASS_SIGNATURE, {"ok": MATCHED}),
    row("rate_limit within its rate",
        [rule("sig", {"kind": "rate_limit", "pps": 1_000_000}, protocol="udp")], udp4(),
        (R.PASS_RATE_LIMIT,) * 3, {"sig": (3, 0, 0)}),
    row("rate_limit over its rate: 1 pps, burst 1",
        [rule("sig", PER_SECOND_ONCE, protocol="udp")], udp4(),
        (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT, R.DROP_RATE_LIMIT), {"sig": (3, 2, 2)}),
    row("rate_limit over its rate: burst 3",
        [rule("sig", {"kind": "rate_limit", "pps": 1, "burst_packets": 3}, protocol="udp")],
        udp4(), (R.PASS_RATE_LIMIT,) * 3 + (R.DROP_RATE_LIMIT,) * 2, {"sig": (5, 2, 2)}),
    row("rate_limit per source over its rate",
        [rule("sig", {**PER_SECOND_ONCE, "scope": "per_source"}, protocol="udp")], udp6(),
        (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"sig": (2, 1, 1)}),
    row("rate_limit bps within its rate",
        [rule("sig", {"kind": "rate_limit", "bps": 10**12}, protocol="udp")], udp4(),
        (R.PASS_RATE_LIMIT,) * 2, {"sig": (2, 0, 0)}),
    row("rate_limit pps and bps: over the packet rate",
        [rule("sig", {"kind": "rate_limit", "pps": 1, "burst_packets": 1, "bps": 10**12},
              protocol="udp")],
        udp4(), (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"sig": (2, 1, 1)}),
    row("rate_limit pps and bps: over the bit rate",
        [rule("sig", {"kind": "rate_limit", "pps": 10**6, "bps": 8, "burst_bytes": UDP4_IP_LEN},
              protocol="udp")],
        udp4(), (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"sig": (2, 1, 1)}),
    row("rate_limit is terminal: a later drop is not reached",
        [rule("rl", {"kind": "rate_limit", "pps": 1_000_000}, 10, protocol="udp"),
         udp_drop(priority=20)],
        udp4(), R.PASS_RATE_LIMIT, {"rl": MATCHED}),
    row("drop beneath a ceiling: the drop first",
        [rule("rl", {"kind": "rate_limit", "pps": 1_000_000}, 20, protocol="udp"),
         udp_drop(priority=10, dport=53)],
        udp4(), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("monitor alone counts and passes", [rule("mon", "monitor", protocol="udp")], udp4(),
        R.PASS_DEFAULT, {"mon": MATCHED}),
    row("monitor x3", [rule("mon", "monitor", protocol="udp")], udp4(), (R.PASS_DEFAULT,) * 3,
        {"mon": (3, 0, 0)}),
    row("monitor before a drop: both count",
        [rule("mon", "monitor", 10, protocol="udp"), udp_drop(priority=20)], udp4(),
        R.DROP_SIGNATURE, {"mon": MATCHED, "sig": DROPPED}),
    row("monitor after a drop is not reached",
        [rule("mon", "monitor", 20, protocol="udp"), udp_drop(priority=10)], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("two monitors then an allow: all three count",
        [rule("m1", "monitor", 10, protocol="udp"), rule("m2", "monitor", 20, dport=53,
                                                         protocol="udp"),
         rule("ok", "allow", 30, protocol="udp")],
        udp4(), R.PASS_SIGNATURE, {"m1": MATCHED, "m2": MATCHED, "ok": MATCHED}),
    row("monitor that does not match is not counted",
        [rule("mon", "monitor", 10, protocol="udp", dport=54), udp_drop(priority=20)], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("monitor before a rate limit over its rate",
        [rule("mon", "monitor", 10, protocol="udp"), rule("rl", PER_SECOND_ONCE, 20,
                                                          protocol="udp")],
        udp4(), (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"mon": (2, 0, 0), "rl": (2, 1, 1)}),
    row("lower priority number wins, whatever the order given",
        [udp_drop(priority=20), rule("ok", "allow", 10, protocol="udp")], udp4(),
        R.PASS_SIGNATURE, {"ok": MATCHED}),
    row("lower priority number wins: the drop first",
        [rule("ok", "allow", 20, protocol="udp"), udp_drop(priority=10)], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("equal priorities: by id (a before b), allow",
        [rule("b", "drop", 100, protocol="udp"), rule("a", "allow", 100, protocol="udp")],
        udp4(), R.PASS_SIGNATURE, {"a": MATCHED}),
    row("equal priorities: by id (a before b), drop",
        [rule("b", "allow", 100, protocol="udp"), rule("a", "drop", 100, protocol="udp")],
        udp4(), R.DROP_SIGNATURE, {"a": DROPPED}),
    row("first match past non-matching earlier rules",
        [rule("r1", "allow", 1, protocol="tcp"), rule("r2", "allow", 2, protocol="udp", dport=54),
         rule("r3", "allow", 3, protocol="udp", src=["203.0.113.0/24"]),
         rule("r4", "drop", 4, protocol="udp", length="0-1000"), rule("r5", "allow", 5,
                                                                      protocol="udp")],
        udp4(), R.DROP_SIGNATURE, {"r4": DROPPED}),
    row("global monitor mode: a drop signature would drop", [udp_drop()], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}, monitor=True),
    row("global monitor mode: over a rate would drop",
        [rule("sig", PER_SECOND_ONCE, protocol="udp")], udp4(),
        (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"sig": (2, 1, 1)}, monitor=True),
]

# -- precedence: allow entries > deny entries > signatures (docs/rules.md) ------------------------
PRECEDENCE_ROWS = [
    row("allow entry beats a drop signature with a lower priority number",
        [rule("noc", "allow", 5000, src=["198.18.0.0/24"]), udp_drop(priority=10)], udp4(),
        R.PASS_ALLOW, {"noc": MATCHED}),
    row("allow entry: a monitor signature is not reached",
        [rule("noc", "allow", 5000, src=["198.18.0.0/24"]),
         rule("mon", "monitor", 1, protocol="udp")], udp4(), R.PASS_ALLOW, {"noc": MATCHED}),
    row("allow entry elsewhere: the signature decides",
        [rule("noc", "allow", 5000, src=["198.18.1.0/24"]), udp_drop(priority=10)], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("deny prefix entry beats an allow signature with a lower priority number",
        [rule("bad", "drop", 5000, src=["198.18.0.0/24"]), rule("ok", "allow", 10,
                                                                protocol="udp")],
        udp4(), R.DROP_DENY_PREFIX, {"bad": DROPPED}),
    row("exact deny entry beats an allow signature",
        [rule("bad", "drop", 5000, src=[SRC4]), rule("ok", "allow", 10, protocol="udp")],
        udp4(), R.DROP_DENY_SRC, {"bad": DROPPED}),
    row("exact ipv6 deny entry beats a rate limit",
        [rule("bad", "drop", 5000, src=[SRC6]),
         rule("rl", {"kind": "rate_limit", "pps": 10**6}, 10, protocol="udp")],
        udp6(), R.DROP_DENY_SRC, {"bad": DROPPED}),
    row("deny entry: a monitor signature is not reached",
        [rule("bad", "drop", 5000, src=["198.18.0.0/16"]),
         rule("mon", "monitor", 1, protocol="udp")], udp4(), R.DROP_DENY_PREFIX,
        {"bad": DROPPED}),
    row("allow entry beats a deny entry",
        [rule("noc", "allow", 5000, src=["198.18.0.0/24"]), rule("bad", "drop", 10, src=[SRC4])],
        udp4(), R.PASS_ALLOW, {"noc": MATCHED}),
    row("management prefix beats a deny entry and signatures",
        [rule("bad", "drop", src=["198.18.0.0/15"]), udp_drop(priority=1)], udp4(),
        R.PASS_MGMT, management=("198.18.0.0/24",)),
    row("management prefix of the other family changes nothing",
        [rule("bad", "drop", src=["::/0"])], udp6(), R.DROP_DENY_PREFIX, {"bad": DROPPED},
        management=("198.18.0.0/24",)),
    row("deny entries and signatures both: no deny entry covers, the signature decides",
        [rule("bad", "drop", src=["203.0.113.0/24"]), udp_drop(priority=10)], udp4(),
        R.DROP_SIGNATURE, {"sig": DROPPED}),
]

# -- fragments and malformed packets against port rules -------------------------------------
MALFORMED_ROWS = [
    row("later v4 fragment never matches a dport rule", [udp_drop(dport=53)], LATER_FRAG4,
        R.PASS_DEFAULT),
    row("later v6 fragment never matches a dport rule", [udp_drop(dport=53)], LATER_FRAG6,
        R.PASS_DEFAULT),
    row("later v4 fragment never matches a sport rule", [udp_drop(sport=5353)], LATER_FRAG4,
        R.PASS_DEFAULT),
    row("later v4 fragment never matches the full port range", [udp_drop(dport="0-65535")],
        LATER_FRAG4, R.PASS_DEFAULT),
    row("later tcp fragment never matches a tcp_flags rule",
        [rule("sig", protocol="tcp", tcp_flags="syn")],
        frame(ip4(frag=185, proto=PROTO_TCP), bytes(TCP(flags="S"))), R.PASS_DEFAULT),
    row("later v4 fragment matches a protocol-only rule", [udp_drop()], LATER_FRAG4,
        R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("later v4 fragment: the port rule is skipped, the next rule decides",
        [udp_drop(priority=10, dport=53), rule("frags", "drop", 20, fragment="yes")],
        LATER_FRAG4, R.DROP_SIGNATURE, {"frags": DROPPED}),
    row("first v4 fragment carries ports: the dport rule matches", [udp_drop(dport=53)],
        FIRST_FRAG4, R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("first v6 fragment carries ports: the dport rule matches", [udp_drop(dport=53)],
        FIRST_FRAG6, R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("truncated udp is malformed before any rule", [udp_drop(dport=53),
                                                       rule("mon", "monitor", 1)],
        frame(ip4(proto=PROTO_UDP), bytes(UDP(dport=53))[:6]), R.MALFORMED_L4),
    row("truncated udp with pass-malformed still meets no rule",
        [rule("ok", "allow", 1, protocol="udp"), udp_drop(dport=53)],
        frame(ip4(proto=PROTO_UDP), bytes(UDP(dport=53))[:6]), R.MALFORMED_L4,
        pass_malformed=True),
    row("truncated tcp is malformed before a tcp_flags rule",
        [rule("sig", protocol="tcp", tcp_flags="syn")],
        frame(ip4(proto=PROTO_TCP), bytes(TCP(flags="S"))[:19]), R.MALFORMED_L4),
    row("other protocol (no ports) never matches a port rule", [udp_drop(dport=53)],
        frame(ip4(proto=PROTO_ESP), bytes(UDP(dport=53))), R.PASS_DEFAULT),
]

# -- SCTP ports ----------------------------------------------------------------------------
SCTP_ROWS = [
    row("sctp dport hit v4", [rule("sig", protocol="sctp", dport=38412)],
        frame(ip4(), SCTP(sport=1000, dport=38412)), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("sctp dport hit v6", [rule("sig", protocol="sctp", dport=38412)],
        frame(ip6(), SCTP(sport=1000, dport=38412)), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("sctp dport miss", [rule("sig", protocol="sctp", dport=38412)],
        frame(ip4(), SCTP(sport=1000, dport=38413)), R.PASS_DEFAULT),
    row("sctp sport range hit", [rule("sig", protocol="sctp", sport="1000-2000")],
        frame(ip4(), SCTP(sport=2000, dport=9)), R.DROP_SIGNATURE, {"sig": DROPPED}),
    row("sctp sport range miss", [rule("sig", protocol="sctp", sport="1000-2000")],
        frame(ip4(), SCTP(sport=2001, dport=9)), R.PASS_DEFAULT),
    row("sctp rule misses udp to the same port", [rule("sig", protocol="sctp", dport=38412)],
        udp4(dport=38412), R.PASS_DEFAULT),
    row("udp rule misses sctp to the same port", [udp_drop(dport=38412)],
        frame(ip4(), SCTP(dport=38412)), R.PASS_DEFAULT),
    row("later sctp fragment never matches an sctp port rule",
        [rule("sig", protocol="sctp", dport=38412)],
        frame(ip4(frag=100, proto=PROTO_SCTP), bytes(SCTP(dport=38412))), R.PASS_DEFAULT),
    row("truncated sctp is malformed", [rule("sig", protocol="sctp", dport=38412)],
        frame(ip4(proto=PROTO_SCTP), bytes(SCTP(dport=38412))[:8]), R.MALFORMED_L4),
]

ROWS = (PREFIX_ROWS + PROTOCOL_ROWS + PORT_ROWS + FLAG_ROWS + LENGTH_ROWS + FRAGMENT_ROWS
        + ACTION_ROWS + PRECEDENCE_ROWS + MALFORMED_ROWS + SCTP_ROWS)


def test_descriptions_are_unique() -> None:
    names = [r.description for r in ROWS]
    assert len(names) == len(set(names)), [n for n, c in Counter(names).items() if c > 1]


def check_row(dp: DataPlane, r: Row) -> None:
    enforced = enforce_rules(dp.maps, r.rules, management=r.management)
    if r.monitor or r.pass_malformed:
        dataplane.set_flags(dp.maps, monitor=r.monitor, pass_malformed=r.pass_malformed)
    actions = [action_of(reason, monitor=r.monitor, pass_malformed=r.pass_malformed)
               for reason in r.reasons]
    retvals = [dp.run(r.packet) for _ in r.reasons]
    assert retvals == [retval_of(a) for a in actions]

    n = len(r.packet)
    want_reasons = Counter(r.reasons)
    reasons = {k: v for k, v in counters.reason_totals(dp.maps).items() if v.packets}
    assert reasons == {k: counters.Totals(c, c * n) for k, c in want_reasons.items()}
    want_actions = Counter(actions)
    acts = {k: v for k, v in counters.action_totals(dp.maps).items() if v.packets}
    assert acts == {k: counters.Totals(c, c * n) for k, c in want_actions.items()}
    unknown = set(r.counts) - {x.id for x in r.rules}
    assert not unknown, f"counts name rules not in the row: {unknown}"
    assert counters.rule_totals(dp.maps) == expected_rule_totals(enforced, r.counts, n)


@pytest.mark.parametrize("r", ROWS, ids=[r.description for r in ROWS])
def test_signature(dp: DataPlane, r: Row) -> None:
    check_row(dp, r)


# -- every word of the bit vectors -------------------------------------------------------
@pytest.mark.parametrize("index", [0, 63, 64, 127, 128, 191, 192, 255])
def test_signature_in_every_word(dp: DataPlane, index: int) -> None:
    """The deciding signature at bit ``index`` of the 256 (four 64-bit words),
    behind ``index`` earlier signatures that the packet does not match."""
    fillers = [rule(f"f{i:03d}", "allow", i + 1, protocol="udp", dport=1000 + i)
               for i in range(index)]
    target = rule("target", "drop", 5000, protocol="udp", dport=53)
    enforced = enforce_rules(dp.maps, [*fillers, target])
    assert [s.rule_id for s in enforced.outcome.compiled.signatures].index("target") == index
    assert dp.sig_meta(dp.config().gen & 1).count == index + 1
    packet = udp4(dport=53)
    assert dp.run(packet) == retval_of(action_of(R.DROP_SIGNATURE))
    n = len(packet)
    assert counters.rule_totals(dp.maps) == expected_rule_totals(enforced, {"target": DROPPED}, n)
    if index:
        last = udp4(dport=1000 + index - 1)  # the filler just before the target
        dp.run(last)
        assert enforced.totals(dp.maps, f"f{index - 1:03d}") == counters.RuleTotals(1, len(last), 0, 0)


# -- the reflection preset --------------------------------------------------------------------
SCOPE4, SCOPE6 = "198.19.0.0/16", "2001:db8:ffff::/48"


def reflection(action: RuleAction | None = None, fragments: bool = False) -> list[Rule]:
    return reflection_rule("amp", [parse_prefix(SCOPE4), parse_prefix(SCOPE6)],
                           action or RuleAction("drop"), fragments=fragments)


@pytest.mark.parametrize("port", sorted(REFLECTION_PORTS),
                         ids=[f"{p}-{n}" for p, n in sorted(REFLECTION_PORTS.items())])
def test_reflection_preset_drops_each_port(dp: DataPlane, port: int) -> None:
    name = f"amp-{REFLECTION_PORTS[port]}"
    check_row(dp, row(f"reflection v4 {port}", reflection(), udp4(sport=port, dport=40000),
                      R.DROP_SIGNATURE, {name: DROPPED}))
    dp.reset()
    check_row(dp, row(f"reflection v6 {port}", reflection(), udp6(sport=port, dport=40000),
                      R.DROP_SIGNATURE, {name: DROPPED}))


REFLECTION_MISSES = [
    row("reflection: a port not in the preset (54)", reflection(), udp4(sport=54), R.PASS_DEFAULT),
    row("reflection: a port not in the preset (443)", reflection(), udp4(sport=443),
        R.PASS_DEFAULT),
    row("reflection: a port not in the preset (0)", reflection(), udp4(sport=0), R.PASS_DEFAULT),
    row("reflection: a port not in the preset (65535)", reflection(), udp4(sport=65535),
        R.PASS_DEFAULT),
    row("reflection: 11212, next to memcached", reflection(), udp4(sport=11212), R.PASS_DEFAULT),
    row("reflection: the preset port as destination port", reflection(),
        udp4(sport=40000, dport=53), R.PASS_DEFAULT),
    row("reflection: another destination v4", reflection(), udp4(sport=53, dst="203.0.113.1"),
        R.PASS_DEFAULT),
    row("reflection: another destination v6", reflection(),
        udp6(sport=53, dst="2001:db8:fffe::1"), R.PASS_DEFAULT),
    row("reflection: tcp from port 53", reflection(),
        frame(ip4(), TCP(sport=53, dport=40000, flags="SA")), R.PASS_DEFAULT),
    row("reflection: a later fragment slips past without fragments=True", reflection(),
        LATER_FRAG4, R.PASS_DEFAULT),
    row("reflection: fragments=True catches the later fragment", reflection(fragments=True),
        LATER_FRAG4, R.DROP_SIGNATURE, {"amp-fragments": DROPPED}),
    row("reflection: fragments=True, a first fragment from 53 is the port rule's",
        reflection(fragments=True), frame(ip4(flags="MF"), UDP(sport=53, dport=40000)),
        R.DROP_SIGNATURE, {"amp-dns": DROPPED}),
    row("reflection: monitor first", reflection(RuleAction("monitor")), udp4(sport=123),
        R.PASS_DEFAULT, {"amp-ntp": MATCHED}),
    row("reflection: as a rate limit (per port), over",
        reflection(RuleAction("rate_limit", pps=1, burst_packets=1)), udp4(sport=11211),
        (R.PASS_RATE_LIMIT, R.DROP_RATE_LIMIT), {"amp-memcached": (2, 1, 1)}),
    row("reflection: an allow for the resolver at a lower priority number",
        [*reflection(), rule("resolver", "allow", 50, src=[SRC4], protocol="udp", sport=53)],
        udp4(sport=53), R.PASS_SIGNATURE, {"resolver": MATCHED}),
]


@pytest.mark.parametrize("r", REFLECTION_MISSES, ids=[r.description for r in REFLECTION_MISSES])
def test_reflection_preset(dp: DataPlane, r: Row) -> None:
    check_row(dp, r)


# -- the example rule file of docs/rules.md -----------------------------------------------------
def docs_example() -> RuleSet:
    text = DOCS.read_text()
    m = re.search(r"```toml\n(.*?)```", text, re.S)
    assert m, f"{DOCS}: no TOML example"
    return RuleSet.loads_toml(m[1], NOW)


DOCS_PACKETS = [
    ("partner NOC passes", frame(ip4(src="192.0.2.9", dst="198.51.100.1"), UDP(sport=53)),
     R.PASS_ALLOW, "partner-noc", MATCHED),
    ("mirai range dropped", frame(ip4(src="203.0.113.50", dst="198.51.100.1"), UDP()),
     R.DROP_DENY_PREFIX, "mirai-c2", DROPPED),
    ("mirai host dropped", frame(ip4(src="198.18.7.9", dst="198.51.100.1"), UDP()),
     R.DROP_DENY_SRC, "mirai-c2", DROPPED),
    ("syn to the edge: within the per-source rate",
     frame(ip4(src="198.18.1.1", dst="198.51.100.7"), TCP(dport=443, flags="S")),
     R.PASS_RATE_LIMIT, "syn-per-source", MATCHED),
    ("large dns answer to the edge dropped",
     frame(ip4(src="198.18.1.1", dst="198.51.100.7"), UDP(sport=53, dport=40000), bytes(600)),
     R.DROP_SIGNATURE, "dns-amp", DROPPED),
    ("large dns answer to the v6 edge dropped",
     frame(ip6(src="2001:db8:1::1", dst="2001:db8:200::7"), UDP(sport=53, dport=40000),
           bytes(600)),
     R.DROP_SIGNATURE, "dns-amp", DROPPED),
    ("small dns answer falls to the udp ceiling",
     frame(ip4(src="198.18.1.1", dst="198.51.100.7"), UDP(sport=53, dport=40000), bytes(100)),
     R.PASS_RATE_LIMIT, "udp-ceiling", MATCHED),
]


@pytest.mark.parametrize(("what", "packet", "reason", "rid", "count"), DOCS_PACKETS,
                         ids=[p[0] for p in DOCS_PACKETS])
def test_docs_example_rule_file(dp: DataPlane, what: str, packet: bytes, reason: Reason,
                                rid: str, count: RuleCount) -> None:
    rs = docs_example()
    check_row(dp, row(what, tuple(rs.rules), packet, reason, {rid: count}))


def test_docs_example_fragment_is_monitored_then_ceilinged(dp: DataPlane) -> None:
    """watch-fragments (monitor, priority 50) counts a UDP fragment to the
    edge, then udp-ceiling (priority 900) decides."""
    packet = frame(ip4(src="198.18.1.1", dst="198.51.100.7", frag=100, proto=PROTO_UDP), bytes(64))
    check_row(dp, row("fragment", tuple(docs_example().rules), packet, R.PASS_RATE_LIMIT,
                      {"watch-fragments": MATCHED, "udp-ceiling": MATCHED}))


# -- documented behaviour the data plane does not have (product bugs) --------------------------
BUG_ROWS = [
    pytest.param(
        row("length ignores ethernet padding",
            [udp_drop(length=f"0-{UDP4_IP_LEN}")],
            bytes(eth() / ip4() / UDP()) + bytes(60 - ETH_HLEN - UDP4_IP_LEN),
            R.DROP_SIGNATURE, {"sig": DROPPED}),
        id="length ignores ethernet padding"),
    pytest.param(
        row("a byte burst smaller than the packet refuses it",
            [rule("sig", {"kind": "rate_limit", "bps": 8000, "burst_bytes": 100}, protocol="udp")],
            udp4(pad=500), R.DROP_RATE_LIMIT, {"sig": (1, 1, 1)}),
        id="a byte burst smaller than the packet refuses it"),
]


@pytest.mark.parametrize("r", BUG_ROWS)
def test_documented_but_not_enforced(dp: DataPlane, r: Row) -> None:
    check_row(dp, r)
