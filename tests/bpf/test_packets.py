"""The XDP program, packet by packet, through BPF_PROG_TEST_RUN.

Like Katran's ``KatranBaseTestFixtures.h``: a table of rows, each a
description, a packet, the policy and flags it meets, and what must come out
of it: the XDP action, the one reason counter that moves, the action counter,
and either the source's counters or, for an exact deny, the deny entry's own
hit counters and its rule's. Every row starts from empty maps (fixture
``dp``), so "the others unchanged" is checked as "the others are zero".
"""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import NoPayload, Packet

from controller.addresses import parse_prefix
from controller.dataplane import abi, counters
from controller.dataplane import attach as dataplane
from controller.dataplane import entries as policy
from controller.dataplane import libbpf as lb
from controller.dataplane.reasons import Action, Reason
from controller.errors import InputError, MapOperationError

from .conftest import XDP_DROP, XDP_PASS, DataPlane, lpm_key
from .packets import (
    SRC4,
    SRC6,
    ah,
    arp,
    eth,
    frame,
    ip4,
    ip6,
    ipv4_with_options,
    ipv6_chain,
    lldp,
    mobility,
    nd,
)

pytestmark = pytest.mark.bpf

R = Reason
A = Action
MAX_EXT = abi.MAX_IPV6_EXT
ETH_HLEN = 14
PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_AH, PROTO_FRAG, PROTO_MH = 6, 17, 58, 51, 44, 135
PROTO_SCTP, PROTO_ESP = 132, 50
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_LLDP = 0x0800, 0x86DD, 0x8100, 0x88CC
CLASS_FIELDS = ("syn", "ack", "udp", "icmp", "gre", "frags")


@dataclass(frozen=True)
class Rule:
    """An allow or deny entry a row installs."""

    prefix: str
    rule_id: int = 0
    management: bool = False


DENY_ALL = (Rule("0.0.0.0/0", 90), Rule("::/0", 91))


@dataclass(frozen=True)
class Row:
    """One packet and everything it must do."""

    description: str
    packet: bytes
    reason: Reason
    action: Action = Action.PASS
    deny: tuple[Rule, ...] = ()
    allow: tuple[Rule, ...] = ()
    monitor: bool = False
    pass_malformed: bool = False
    # Address whose src_v4/src_v6 entry counts the packet; None: no source entry at all.
    source: str | None = None
    # Class counters of that source that move besides packets/bytes (and drops, from action).
    moved: tuple[str, ...] = ()
    rule: int = 0  # rule id whose rule_stats move; 0: none
    deny_hit: str | None = None  # exact deny entry that counts the packet (instead of src)


def _l4_cut(layer: Packet, keep: int) -> bytes:
    return bytes(layer)[:keep]


# -- every parse path, no policy ------------------------------------------------
PARSE_ROWS = [
    Row("ipv4 udp", frame(ip4(), UDP(sport=5353, dport=53)), R.PASS_DEFAULT,
        source=SRC4, moved=("udp",)),
    Row("ipv4 tcp syn", frame(ip4(), TCP(flags="S")), R.PASS_DEFAULT, source=SRC4, moved=("syn",)),
    Row("ipv4 tcp ack", frame(ip4(), TCP(flags="A")), R.PASS_DEFAULT, source=SRC4, moved=("ack",)),
    Row("ipv4 tcp syn+ack counts neither syn nor ack", frame(ip4(), TCP(flags="SA")),
        R.PASS_DEFAULT, source=SRC4),
    Row("ipv4 tcp psh+ack counts ack", frame(ip4(), TCP(flags="PA")), R.PASS_DEFAULT,
        source=SRC4, moved=("ack",)),
    Row("ipv4 tcp rst counts no class", frame(ip4(), TCP(flags="R")), R.PASS_DEFAULT, source=SRC4),
    Row("ipv4 icmp echo", frame(ip4(), ICMP()), R.PASS_DEFAULT, source=SRC4, moved=("icmp",)),
    Row("ipv4 gre", frame(ip4(), GRE()), R.PASS_DEFAULT, source=SRC4, moved=("gre",)),
    *[
        Row(f"ipv4 options ihl {ihl} tcp syn", ipv4_with_options(ihl, TCP(flags="S")),
            R.PASS_DEFAULT, source=SRC4, moved=("syn",))
        for ihl in range(6, 16)
    ],
    Row("ipv4 df is not a fragment", frame(ip4(flags="DF"), UDP()), R.PASS_DEFAULT,
        source=SRC4, moved=("udp",)),
    Row("ipv4 first fragment (mf, offset 0) parses udp", frame(ip4(flags="MF"), UDP()),
        R.PASS_DEFAULT, source=SRC4, moved=("udp", "frags")),
    Row("ipv4 non-first fragment: syn-like payload is not parsed",
        frame(ip4(frag=185, flags="MF", proto=PROTO_TCP), bytes(TCP(flags="S"))),
        R.PASS_DEFAULT, source=SRC4, moved=("frags",)),
    Row("ipv4 non-first fragment: 2-byte payload is not malformed l4",
        frame(ip4(frag=1, proto=PROTO_TCP), b"\x00\x01"), R.PASS_DEFAULT, source=SRC4,
        moved=("frags",)),
    Row("ipv4 last fragment (offset, no mf): udp-like payload is not parsed",
        frame(ip4(frag=100, proto=PROTO_UDP), bytes(UDP())), R.PASS_DEFAULT, source=SRC4,
        moved=("frags",)),
    Row("ipv4 sctp is parsed (ports), moves no class counter", frame(ip4(), SCTP()),
        R.PASS_DEFAULT, source=SRC4),
    Row("ipv4 non-first fragment: sctp-like payload is not parsed",
        frame(ip4(frag=3, proto=PROTO_SCTP), b"\x00"), R.PASS_DEFAULT, source=SRC4,
        moved=("frags",)),
    Row("ipv4 in 802.1q", frame(Dot1Q(vlan=10), ip4(), UDP()), R.PASS_DEFAULT, source=SRC4,
        moved=("udp",)),
    Row("ipv4 in 802.1ad+802.1q (qinq)", frame(Dot1AD(vlan=100), Dot1Q(vlan=10), ip4(), UDP()),
        R.PASS_DEFAULT, source=SRC4, moved=("udp",)),
    Row("ipv4 in 802.1q+802.1q", frame(Dot1Q(vlan=100), Dot1Q(vlan=10), ip4(), TCP(flags="S")),
        R.PASS_DEFAULT, source=SRC4, moved=("syn",)),
    Row("ipv6 udp", frame(ip6(), UDP()), R.PASS_DEFAULT, source=SRC6, moved=("udp",)),
    Row("ipv6 tcp syn", frame(ip6(), TCP(flags="S")), R.PASS_DEFAULT, source=SRC6, moved=("syn",)),
    Row("ipv6 tcp ack", frame(ip6(), TCP(flags="A")), R.PASS_DEFAULT, source=SRC6, moved=("ack",)),
    Row("ipv6 icmpv6 echo", frame(ip6(), ICMPv6EchoRequest()), R.PASS_DEFAULT, source=SRC6,
        moved=("icmp",)),
    Row("ipv6 gre", frame(ip6(), GRE()), R.PASS_DEFAULT, source=SRC6, moved=("gre",)),
    Row("ipv6 in 802.1q tcp syn", frame(Dot1Q(vlan=10), ip6(), TCP(flags="S")), R.PASS_DEFAULT,
        source=SRC6, moved=("syn",)),
    Row("ipv6 in qinq udp", frame(Dot1AD(vlan=100), Dot1Q(vlan=10), ip6(), UDP()),
        R.PASS_DEFAULT, source=SRC6, moved=("udp",)),
    Row("ipv6 hop-by-hop udp", frame(ip6(), IPv6ExtHdrHopByHop(), UDP()), R.PASS_DEFAULT,
        source=SRC6, moved=("udp",)),
    Row("ipv6 routing udp", frame(ip6(), IPv6ExtHdrRouting(), UDP()), R.PASS_DEFAULT,
        source=SRC6, moved=("udp",)),
    Row("ipv6 dest-opts tcp syn", frame(ip6(), IPv6ExtHdrDestOpt(), TCP(flags="S")),
        R.PASS_DEFAULT, source=SRC6, moved=("syn",)),
    Row("ipv6 hop-by-hop+routing+dest-opts udp",
        frame(ip6(), IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(), UDP()),
        R.PASS_DEFAULT, source=SRC6, moved=("udp",)),
    Row("ipv6 ah udp", frame(ip6(nh=PROTO_AH), ah() + bytes(UDP())), R.PASS_DEFAULT,
        source=SRC6, moved=("udp",)),
    Row("ipv6 mobility header is walked", frame(ip6(nh=PROTO_MH), mobility() + bytes(UDP())),
        R.PASS_DEFAULT, source=SRC6, moved=("udp",)),
    Row("ipv6 first fragment parses udp", frame(ip6(), IPv6ExtHdrFragment(offset=0, m=1), UDP()),
        R.PASS_DEFAULT, source=SRC6, moved=("udp", "frags")),
    Row("ipv6 non-first fragment: syn-like payload is not parsed",
        frame(ip6(), IPv6ExtHdrFragment(offset=185, m=1, nh=PROTO_TCP), bytes(TCP(flags="S"))),
        R.PASS_DEFAULT, source=SRC6, moved=("frags",)),
    Row("ipv6 non-first fragment: 1-byte payload is not malformed l4",
        frame(ip6(), IPv6ExtHdrFragment(offset=1, nh=PROTO_TCP), b"\x01"), R.PASS_DEFAULT,
        source=SRC6, moved=("frags",)),
    Row("ipv6 non-first fragment: extension-like payload is not walked",
        frame(ip6(), IPv6ExtHdrFragment(offset=1, nh=0), b"\x11\xff"), R.PASS_DEFAULT,
        source=SRC6, moved=("frags",)),
    Row(f"ipv6 {MAX_EXT} extension headers (the bound) udp", ipv6_chain(MAX_EXT, UDP()),
        R.PASS_DEFAULT, source=SRC6, moved=("udp",)),
    Row(f"ipv6 {MAX_EXT} extension headers, the last a non-first fragment",
        ipv6_chain(MAX_EXT - 1, bytes([60, 0, 0, 8, 0, 0, 0, 1]) + bytes(8), last_nh=PROTO_FRAG),
        R.PASS_DEFAULT, source=SRC6, moved=("frags",)),
    Row("ipv6 sctp is parsed (ports), moves no class counter", frame(ip6(), SCTP()),
        R.PASS_DEFAULT, source=SRC6),
    Row("ipv4 esp: other protocol passes unparsed", frame(ip4(proto=PROTO_ESP), bytes(8)),
        R.PASS_DEFAULT, source=SRC4),
    Row("ipv6 no next header (59)", frame(ip6(nh=59)), R.PASS_DEFAULT, source=SRC6),
    Row("lldp is non-ip", lldp(), R.PASS_NON_IP),
    Row("unknown ethertype inside qinq is non-ip",
        frame(Dot1AD(vlan=100), Dot1Q(vlan=10, type=ETH_P_LLDP), bytes(16)), R.PASS_NON_IP),
    Row("arp", arp(), R.PASS_ARP),
    Row("arp in 802.1q", arp(Dot1Q(vlan=10)), R.PASS_ARP),
]

# -- malformed input: dropped by default ---------------------------------------
MALFORMED_ROWS = [
    Row("three vlan tags", frame(Dot1AD(vlan=1), Dot1Q(vlan=2), Dot1Q(vlan=3), ip4(), UDP()),
        R.MALFORMED_VLAN, A.DROP),
    Row("802.1q tag truncated", bytes(eth(type=ETH_P_8021Q)) + b"\x00\x0a", R.MALFORMED_VLAN,
        A.DROP),
    Row("ipv4 header truncated", frame(ip4(), UDP())[: ETH_HLEN + 19], R.MALFORMED_IPV4, A.DROP),
    Row("ipv4 ihl 4", frame(ip4(ihl=4), UDP()), R.MALFORMED_IPV4, A.DROP),
    Row("ipv4 ihl 0", frame(ip4(ihl=0), UDP()), R.MALFORMED_IPV4, A.DROP),
    Row("ipv4 ethertype carrying version 6", frame(ip4(version=6), UDP()), R.MALFORMED_IPV4,
        A.DROP),
    Row("ipv4 ethertype carrying an ipv6 packet",
        bytes(eth(type=ETH_P_IP) / ip6() / UDP()), R.MALFORMED_IPV4, A.DROP),
    Row("ipv4 ihl 15 beyond the packet", frame(ip4(ihl=15), UDP()), R.MALFORMED_IPV4_OPTIONS,
        A.DROP),
    Row("ipv4 ihl 6 on a bare 20-byte header", frame(ip4(ihl=6, proto=PROTO_UDP)),
        R.MALFORMED_IPV4_OPTIONS, A.DROP),
    Row("ipv4 tcp truncated", frame(ip4(proto=PROTO_TCP), _l4_cut(TCP(flags="S"), 19)),
        R.MALFORMED_L4, A.DROP, source=SRC4),
    Row("ipv4 udp truncated", frame(ip4(proto=PROTO_UDP), _l4_cut(UDP(), 7)), R.MALFORMED_L4,
        A.DROP, source=SRC4),
    Row("ipv4 icmp truncated", frame(ip4(proto=1), _l4_cut(ICMP(), 7)), R.MALFORMED_L4, A.DROP,
        source=SRC4),
    Row("ipv4 gre truncated", frame(ip4(proto=47), _l4_cut(GRE(), 3)), R.MALFORMED_L4, A.DROP,
        source=SRC4),
    Row("ipv4 sctp truncated", frame(ip4(proto=PROTO_SCTP), _l4_cut(SCTP(), 11)), R.MALFORMED_L4,
        A.DROP, source=SRC4),
    Row("ipv4 first fragment with truncated tcp",
        frame(ip4(flags="MF", proto=PROTO_TCP), _l4_cut(TCP(), 10)), R.MALFORMED_L4, A.DROP,
        source=SRC4, moved=("frags",)),
    Row("ipv6 header truncated", frame(ip6(), UDP())[: ETH_HLEN + 39], R.MALFORMED_IPV6, A.DROP),
    Row("ipv6 ethertype carrying version 4", frame(ip6(version=4), UDP()), R.MALFORMED_IPV6,
        A.DROP),
    Row("ipv6 ethertype carrying an ipv4 packet",
        bytes(eth(type=ETH_P_IPV6) / ip4() / UDP() / bytes(32)), R.MALFORMED_IPV6, A.DROP),
    Row("ipv6 tcp truncated", frame(ip6(nh=PROTO_TCP), _l4_cut(TCP(flags="S"), 12)),
        R.MALFORMED_L4, A.DROP, source=SRC6),
    Row("ipv6 udp truncated", frame(ip6(nh=PROTO_UDP), _l4_cut(UDP(), 4)), R.MALFORMED_L4,
        A.DROP, source=SRC6),
    Row("ipv6 icmpv6 truncated", frame(ip6(nh=PROTO_ICMPV6), _l4_cut(ICMPv6EchoRequest(), 4)),
        R.MALFORMED_L4, A.DROP, source=SRC6),
    Row("ipv6 sctp truncated", frame(ip6(nh=PROTO_SCTP), _l4_cut(SCTP(), 4)), R.MALFORMED_L4,
        A.DROP, source=SRC6),
    Row("ipv6 hop-by-hop truncated to one byte", frame(ip6(nh=0), b"\x11"), R.MALFORMED_IPV6_EXT,
        A.DROP, source=SRC6),
    Row("ipv6 hop-by-hop longer than the packet", frame(ip6(nh=0), bytes([17, 1]) + bytes(6)),
        R.MALFORMED_IPV6_EXT, A.DROP, source=SRC6),
    Row("ipv6 fragment header truncated", frame(ip6(nh=PROTO_FRAG), bytes([17, 0, 0, 1])),
        R.MALFORMED_IPV6_EXT, A.DROP, source=SRC6),
    Row("ipv6 ah longer than the packet", frame(ip6(nh=PROTO_AH), ah()[:16]),
        R.MALFORMED_IPV6_EXT, A.DROP, source=SRC6),
    Row(f"ipv6 {MAX_EXT + 1} extension headers", ipv6_chain(MAX_EXT + 1, UDP()),
        R.MALFORMED_IPV6_CHAIN, A.DROP, source=SRC6),
    Row("ipv6 first fragment with truncated udp",
        frame(ip6(), IPv6ExtHdrFragment(offset=0, m=1, nh=PROTO_UDP), bytes(4)), R.MALFORMED_L4,
        A.DROP, source=SRC6, moved=("frags",)),
]

# With BW_CFG_PASS_MALFORMED the same packets pass, counted under the same reason.
PASS_MALFORMED_ROWS = [
    dataclasses.replace(r, description=f"{r.description} (pass-malformed)", pass_malformed=True,
                        action=A.PASS)
    for r in MALFORMED_ROWS
]

# -- policy ----------------------------------------------------------------------
ND_NAMES = {133: "rs", 134: "ra", 135: "ns", 136: "na", 137: "redirect"}

POLICY_ROWS = [
    Row("ipv4 exact deny", frame(ip4(), UDP()), R.DROP_DENY_SRC, A.DROP,
        deny=(Rule(SRC4, 7),), rule=7, deny_hit=SRC4),
    Row("ipv6 exact deny", frame(ip6(), TCP(flags="S")), R.DROP_DENY_SRC, A.DROP,
        deny=(Rule(SRC6, 8),), rule=8, deny_hit=SRC6),
    Row("ipv4 exact deny without a rule id", frame(ip4(), UDP()), R.DROP_DENY_SRC, A.DROP,
        deny=(Rule(SRC4),), deny_hit=SRC4),
    Row("ipv4 exact deny of a neighbour address passes", frame(ip4(), UDP()), R.PASS_DEFAULT,
        deny=(Rule("198.18.0.11", 7),), source=SRC4, moved=("udp",)),
    Row("ipv4 prefix deny", frame(ip4(), TCP(flags="S")), R.DROP_DENY_PREFIX, A.DROP,
        deny=(Rule("198.18.0.0/24", 9),), rule=9, source=SRC4, moved=("syn",)),
    Row("ipv6 prefix deny", frame(ip6(), UDP()), R.DROP_DENY_PREFIX, A.DROP,
        deny=(Rule("2001:db8:0:1::/64", 10),), rule=10, source=SRC6, moved=("udp",)),
    Row("ipv4 longest prefix wins", frame(ip4(), UDP()), R.DROP_DENY_PREFIX, A.DROP,
        deny=(Rule("198.18.0.0/15", 11), Rule("198.18.0.0/24", 12), Rule("198.18.0.0/20", 13)),
        rule=12, source=SRC4, moved=("udp",)),
    Row("ipv4 shorter prefix where the longer does not cover", frame(ip4(), UDP()),
        R.DROP_DENY_PREFIX, A.DROP, deny=(Rule("198.18.0.0/16", 11), Rule("198.18.1.0/24", 12)),
        rule=11, source=SRC4, moved=("udp",)),
    Row("ipv6 longest prefix wins", frame(ip6(), UDP()), R.DROP_DENY_PREFIX, A.DROP,
        deny=(Rule("2001:db8::/32", 13), Rule("2001:db8:0:1::/64", 14),
              Rule("2001:db8::/48", 15)),
        rule=14, source=SRC6, moved=("udp",)),
    Row("ipv4 exact deny beats prefix deny", frame(ip4(), UDP()), R.DROP_DENY_SRC, A.DROP,
        deny=(Rule(SRC4, 7), Rule("198.18.0.0/24", 9)), rule=7, deny_hit=SRC4),
    Row("ipv4 allow beats exact deny", frame(ip4(), UDP()), R.PASS_ALLOW,
        allow=(Rule("198.18.0.0/24", 20),), deny=(Rule(SRC4, 7),), rule=20, source=SRC4,
        moved=("udp",)),
    Row("ipv4 allow beats prefix deny", frame(ip4(), UDP()), R.PASS_ALLOW,
        allow=(Rule(SRC4, 20),), deny=DENY_ALL, rule=20, source=SRC4, moved=("udp",)),
    Row("ipv6 allow beats exact deny", frame(ip6(), UDP()), R.PASS_ALLOW,
        allow=(Rule("2001:db8:0:1::/64", 22),), deny=(Rule(SRC6, 8),), rule=22, source=SRC6,
        moved=("udp",)),
    Row("ipv4 allow elsewhere does not pass a denied source", frame(ip4(), UDP()),
        R.DROP_DENY_SRC, A.DROP, allow=(Rule("198.18.1.0/24", 20),), deny=(Rule(SRC4, 7),),
        rule=7, deny_hit=SRC4),
    Row("ipv4 allow-everything does not cover ipv6", frame(ip6(), UDP()), R.DROP_DENY_PREFIX,
        A.DROP, allow=(Rule("0.0.0.0/0", 20),), deny=DENY_ALL, rule=91, source=SRC6,
        moved=("udp",)),
    Row("ipv4 passes a deny of ::/0 only", frame(ip4(), UDP()), R.PASS_DEFAULT,
        deny=(Rule("::/0", 91),), source=SRC4, moved=("udp",)),
    Row("ipv4 management prefix", frame(ip4(), TCP(flags="S")), R.PASS_MGMT,
        allow=(Rule("198.18.0.0/16", 21, management=True),), deny=DENY_ALL, rule=21,
        source=SRC4, moved=("syn",)),
    Row("ipv6 management prefix", frame(ip6(), TCP(flags="S")), R.PASS_MGMT,
        allow=(Rule("2001:db8::/32", 23, management=True),), deny=(Rule(SRC6, 8),), rule=23,
        source=SRC6, moved=("syn",)),
    Row("qinq ipv4 from a denied source is dropped",
        frame(Dot1AD(vlan=100), Dot1Q(vlan=10), ip4(), UDP()), R.DROP_DENY_SRC, A.DROP,
        deny=(Rule(SRC4, 7),), rule=7, deny_hit=SRC4),
    Row("802.1q ipv6 from a denied prefix is dropped", frame(Dot1Q(vlan=10), ip6(), UDP()),
        R.DROP_DENY_PREFIX, A.DROP, deny=(Rule("2001:db8::/32", 13),), rule=13, source=SRC6,
        moved=("udp",)),
    Row("ipv4 non-first fragment from a denied prefix is dropped",
        frame(ip4(frag=185, proto=PROTO_UDP), bytes(64)), R.DROP_DENY_PREFIX, A.DROP,
        deny=(Rule("198.18.0.0/24", 9),), rule=9, source=SRC4, moved=("frags",)),
    Row("ipv6 non-first fragment from a denied source is dropped",
        frame(ip6(), IPv6ExtHdrFragment(offset=185, nh=PROTO_UDP), bytes(64)), R.DROP_DENY_SRC,
        A.DROP, deny=(Rule(SRC6, 8),), rule=8, deny_hit=SRC6),
    Row("arp with deny-everything passes", arp(), R.PASS_ARP, deny=DENY_ALL),
    Row("arp in 802.1q with deny-everything passes", arp(Dot1Q(vlan=10)), R.PASS_ARP,
        deny=DENY_ALL),
    Row("lldp with deny-everything passes", lldp(), R.PASS_NON_IP, deny=DENY_ALL),
    *[
        Row(f"nd {ND_NAMES[t]} ({t}) hop limit 255 with deny-everything passes", nd(t), R.PASS_ND,
            deny=DENY_ALL, source=SRC6, moved=("icmp",))
        for t in sorted(ND_NAMES)
    ],
    *[
        Row(f"nd {ND_NAMES[t]} ({t}) hop limit 64 from a denied source is dropped",
            nd(t, hlim=64), R.DROP_DENY_SRC, A.DROP, deny=(Rule(SRC6, 8),), rule=8,
            deny_hit=SRC6)
        for t in sorted(ND_NAMES)
    ],
    Row("nd ns hop limit 255 from an exactly denied source passes", nd(135), R.PASS_ND,
        deny=(Rule(SRC6, 8),), source=SRC6, moved=("icmp",)),
    Row("nd ns behind a hop-by-hop header passes", frame(ip6(hlim=255), IPv6ExtHdrHopByHop(),
        ICMPv6ND_NS()), R.PASS_ND, deny=DENY_ALL, source=SRC6, moved=("icmp",)),
    Row("nd ns hop limit 254 with deny-everything is dropped", nd(135, hlim=254),
        R.DROP_DENY_PREFIX, A.DROP, deny=DENY_ALL, rule=91, source=SRC6, moved=("icmp",)),
    *[
        Row(f"icmpv6 type {t} hop limit 255 (not nd) with deny-everything is dropped",
            frame(ip6(nh=PROTO_ICMPV6, hlim=255), bytes([t]) + bytes(7)), R.DROP_DENY_PREFIX,
            A.DROP, deny=DENY_ALL, rule=91, source=SRC6, moved=("icmp",))
        for t in (128, 132, 138)
    ],
    Row("nd ns in a non-first fragment with deny-everything is dropped",
        frame(ip6(hlim=255), IPv6ExtHdrFragment(offset=1, nh=PROTO_ICMPV6), bytes(ICMPv6ND_NS())),
        R.DROP_DENY_PREFIX, A.DROP, deny=DENY_ALL, rule=91, source=SRC6, moved=("frags",)),
]

# -- monitor mode: nothing is dropped, would-drops are counted -------------------
MONITOR_ROWS = [
    Row("monitor: ipv4 exact deny", frame(ip4(), UDP()), R.DROP_DENY_SRC, A.MONITOR,
        deny=(Rule(SRC4, 7),), monitor=True, rule=7, deny_hit=SRC4),
    Row("monitor: ipv6 prefix deny", frame(ip6(), UDP()), R.DROP_DENY_PREFIX, A.MONITOR,
        deny=(Rule("2001:db8:0:1::/64", 10),), monitor=True, rule=10, source=SRC6,
        moved=("udp",)),
    Row("monitor: qinq ipv4 prefix deny", frame(Dot1AD(vlan=1), Dot1Q(vlan=2), ip4(), UDP()),
        R.DROP_DENY_PREFIX, A.MONITOR, deny=DENY_ALL, monitor=True, rule=90, source=SRC4,
        moved=("udp",)),
    Row("monitor: unmatched packet passes as usual", frame(ip4(), UDP()), R.PASS_DEFAULT,
        monitor=True, source=SRC4, moved=("udp",)),
    Row("monitor: allow passes as usual", frame(ip4(), UDP()), R.PASS_ALLOW,
        allow=(Rule(SRC4, 20),), deny=(Rule(SRC4, 7),), monitor=True, rule=20, source=SRC4,
        moved=("udp",)),
    Row("monitor: malformed l4 would drop", frame(ip4(proto=PROTO_TCP), bytes(4)),
        R.MALFORMED_L4, A.MONITOR, monitor=True, source=SRC4),
    Row("monitor: three vlan tags would drop",
        frame(Dot1AD(vlan=1), Dot1Q(vlan=2), Dot1Q(vlan=3), ip4(), UDP()), R.MALFORMED_VLAN,
        A.MONITOR, monitor=True),
]

ROWS = PARSE_ROWS + MALFORMED_ROWS + PASS_MALFORMED_ROWS + POLICY_ROWS + MONITOR_ROWS


def test_descriptions_are_unique() -> None:
    names = [r.description for r in ROWS]
    assert len(names) == len(set(names))


def _entries(rules: tuple[Rule, ...]) -> list[policy.Entry]:
    return [policy.Entry(parse_prefix(r.prefix), r.rule_id, r.management) for r in rules]


def apply_setup(dp: DataPlane, row: Row) -> None:
    if row.allow:
        policy.add(dp.maps, "allow", _entries(row.allow))
    if row.deny:
        policy.add(dp.maps, "deny", _entries(row.deny))
    if row.monitor or row.pass_malformed:
        dataplane.set_flags(dp.maps, monitor=row.monitor, pass_malformed=row.pass_malformed)


def expected_source(n: int, action: Action, moved: tuple[str, ...], times: int = 1
                    ) -> dict[str, int]:
    """The counters of a source that sent ``times`` packets of ``n`` bytes."""
    unknown = set(moved) - set(CLASS_FIELDS)
    assert not unknown, f"not a class counter: {unknown}"
    counts = {"packets": times, "bytes": times * n, "drops": times * int(action != A.PASS)}
    counts.update({f: times * int(f in moved) for f in CLASS_FIELDS})
    return {f: counts[f] for f in abi.SRC_COUNTER_FIELDS}


def check_outcome(dp: DataPlane, packet: bytes, retvals: list[int], *, reason: Reason,
                  action: Action, source: str | None, moved: tuple[str, ...] = (), rule: int = 0,
                  deny_hit: str | None = None) -> None:
    """Everything ``packet``, run len(retvals) times, must have moved, and nothing else."""
    n, times = len(packet), len(retvals)
    assert retvals == [XDP_DROP if action == A.DROP else XDP_PASS] * times

    zero = counters.Totals(0, 0)
    moved_totals = counters.Totals(times, times * n)
    reasons = counters.reason_totals(dp.maps)
    assert {r: t for r, t in reasons.items() if t != zero} == {reason: moved_totals}
    actions = counters.action_totals(dp.maps)
    assert {a: t for a, t in actions.items() if t != zero} == {action: moved_totals}
    dropped = times if action != A.PASS else 0  # monitor mode counts would-drops
    assert counters.rule_totals(dp.maps) == (
        {rule: counters.RuleTotals(times, times * n, dropped, 0)} if rule else {})

    # The LRU source tables alone: an exact-deny drop is not counted there.
    lru = counters.read_sources(dp.maps, include_denied=False)
    if source is None:
        assert len(lru) == 0, "no source entry expected"
    else:
        assert len(lru) == 1, "exactly one source entry expected"
        assert lru.lookup(source) == expected_source(n, action, moved, times)
    # The operator's view merges exact-deny hits in as drops.
    merged = counters.read_sources(dp.maps)
    if deny_hit is not None:
        assert source is None
        assert len(merged) == 1
        assert merged.lookup(deny_hit) == expected_source(n, A.DROP, (), times)
    else:
        assert len(merged) == len(lru)

    hits = {str(e.prefix): (e.hits, e.hit_bytes) for e in policy.entries(dp.maps, "deny")}
    assert hits == {p: ((times, times * n) if p == deny_hit else (0, 0)) for p in hits}
    if deny_hit is not None:
        assert deny_hit in hits


# Once: a source's first packet (its entry is created). Three times: then the
# atomic-add path of an existing entry.
@pytest.mark.parametrize("times", [1, 3], ids=["once", "x3"])
@pytest.mark.parametrize("row", ROWS, ids=[r.description for r in ROWS])
def test_packet(dp: DataPlane, row: Row, times: int) -> None:
    apply_setup(dp, row)
    retvals = [dp.run(row.packet) for _ in range(times)]
    check_outcome(dp, row.packet, retvals, reason=row.reason, action=row.action,
                  source=row.source, moved=row.moved, rule=row.rule, deny_hit=row.deny_hit)


def test_one_source_mixed_classes(dp: DataPlane) -> None:
    """Different packets from one source add up on one entry, class by class."""
    packets = [frame(ip4(), TCP(flags="S")), frame(ip4(), TCP(flags="A")),
               frame(ip4(), UDP()), frame(ip4(), ICMP()), frame(ip4(), GRE()),
               frame(ip4(flags="MF"), UDP()), frame(ip4(frag=9, proto=PROTO_TCP), bytes(8))]
    for p in packets:
        assert dp.run(p) == XDP_PASS
    total = sum(len(p) for p in packets)
    assert counters.read_sources(dp.maps).lookup(SRC4) == {
        "packets": 7, "bytes": total, "drops": 0, "syn": 1, "ack": 1, "udp": 2, "icmp": 1,
        "gre": 1, "frags": 2}


def test_source_seen_before_and_after_an_exact_deny(dp: DataPlane) -> None:
    """read_sources merges a source's LRU entry with its exact deny entry's hits."""
    packet = frame(ip4(), UDP())
    n = len(packet)
    assert dp.run(packet) == XDP_PASS
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix(SRC4), 4)])
    assert dp.run(packet) == XDP_DROP
    assert dp.run(packet) == XDP_DROP
    lru = counters.read_sources(dp.maps, include_denied=False).lookup(SRC4)
    assert lru == expected_source(n, A.PASS, ("udp",))
    assert counters.read_sources(dp.maps).lookup(SRC4) == {
        "packets": 3, "bytes": 3 * n, "drops": 2, "syn": 0, "ack": 0, "udp": 1, "icmp": 0,
        "gre": 0, "frags": 0}


def test_sources_are_kept_apart(dp: DataPlane) -> None:
    """Trailing zero bytes too: the numpy key arrays are NUL-stripped strings."""
    addrs4 = ["198.18.1.1", "198.18.1.0", "198.18.0.0", "198.19.0.1", "198.18.1.255"]
    addrs6 = ["2001:db8:1::1", "2001:db8:1::", "2001:db8::", "2001:db8:1::100", "2001:db8:1:0:1::"]
    for i, a in enumerate(addrs4):
        for _ in range(i + 1):
            dp.run(frame(ip4(src=a), UDP()))
    for i, a in enumerate(addrs6):
        for _ in range(i + 1):
            dp.run(frame(ip6(src=a), TCP(flags="S")))
    sources = counters.read_sources(dp.maps)
    assert len(sources) == 10
    for i, a in enumerate(addrs4):
        assert sources.lookup(a) == expected_source(len(frame(ip4(), UDP())), A.PASS, ("udp",),
                                                    i + 1)
    for i, a in enumerate(addrs6):
        assert sources.lookup(a) == expected_source(len(frame(ip6(), TCP())), A.PASS, ("syn",),
                                                    i + 1)


# -- truncated at every byte ------------------------------------------------------
# A well-formed packet, for each of its layers after Ethernet the reason a cut
# inside that layer must be counted under, and the class counter the whole
# packet moves.
TRUNCATION_CASES: dict[str, tuple[Packet, tuple[Reason, ...], str]] = {
    "ipv4 tcp": (eth() / ip4() / TCP(flags="S"), (R.MALFORMED_IPV4, R.MALFORMED_L4), "syn"),
    "ipv6 hop-by-hop udp": (
        eth() / ip6() / IPv6ExtHdrHopByHop() / UDP(),
        (R.MALFORMED_IPV6, R.MALFORMED_IPV6_EXT, R.MALFORMED_L4),
        "udp",
    ),
    "qinq ipv4 udp": (
        eth() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / ip4() / UDP(),
        (R.MALFORMED_VLAN, R.MALFORMED_VLAN, R.MALFORMED_IPV4, R.MALFORMED_L4),
        "udp",
    ),
}


def _layer_bounds(pkt: Packet) -> list[tuple[type[Packet], int]]:
    """(layer class, end offset) of every layer, from the dissected bytes."""
    raw = bytes(pkt)
    layer: Packet = Ether(raw)
    out = []
    while not isinstance(layer, NoPayload):
        out.append((type(layer), len(raw) - len(layer.payload)))
        layer = layer.payload
    return out


def _truncation_params() -> list[Any]:
    params = []
    for name, (pkt, reasons, whole_class) in TRUNCATION_CASES.items():
        raw = bytes(pkt)
        bounds = _layer_bounds(pkt)
        assert bounds[0][0] is Ether and len(bounds) == len(reasons) + 1, name
        ip_cls, ip_end = next((cls, end) for cls, end in bounds if cls in (IP, IPv6))
        for cut in range(ETH_HLEN, len(raw) + 1):
            reason = next(
                (r for (_, end), r in zip(bounds[1:], reasons, strict=True) if cut < end),
                R.PASS_DEFAULT,
            )
            # The source is known, and counted, once the IP header has been read.
            source = (SRC4 if ip_cls is IP else SRC6) if cut >= ip_end else None
            moved = (whole_class,) if cut == len(raw) else ()
            for pass_malformed in (False, True):
                params.append(pytest.param(
                    raw[:cut], reason, source, moved, pass_malformed,
                    id=f"{name} cut {cut}/{len(raw)}{' pass-malformed' if pass_malformed else ''}",
                ))
    return params


@pytest.mark.parametrize(("packet", "reason", "source", "moved", "pass_malformed"),
                         _truncation_params())
def test_truncated(dp: DataPlane, packet: bytes, reason: Reason, source: str | None,
                   moved: tuple[str, ...], pass_malformed: bool) -> None:
    if pass_malformed:
        dataplane.set_flags(dp.maps, pass_malformed=True)
    retval = dp.run(packet)
    assert retval != 0, "XDP_ABORTED"
    action = A.DROP if reason.is_malformed and not pass_malformed else A.PASS
    check_outcome(dp, packet, [retval], reason=reason, action=action, source=source, moved=moved)


@pytest.mark.parametrize("length", range(ETH_HLEN))
def test_frames_shorter_than_ethernet_are_refused_by_the_kernel(dp: DataPlane, length: int) -> None:
    """BPF_PROG_TEST_RUN rejects frames under ETH_HLEN (EINVAL), so
    MALFORMED_ETH cannot be exercised here; a driver would not deliver one."""
    with pytest.raises(MapOperationError) as info:
        lb.prog_test_run(dp.prog_fd, bytes(frame(ip4(), UDP()))[:length])
    assert info.value.errno == errno.EINVAL
    assert all(t.packets == 0 for t in counters.reason_totals(dp.maps).values())


# -- the trie-skip bits -----------------------------------------------------------
TRIES = [
    pytest.param("deny", "deny_pfx_v4", "198.18.0.0/24", frame(ip4(), UDP()), R.DROP_DENY_PREFIX,
                 id="deny_pfx_v4"),
    pytest.param("deny", "deny_pfx_v6", "2001:db8::/32", frame(ip6(), UDP()), R.DROP_DENY_PREFIX,
                 id="deny_pfx_v6"),
    pytest.param("allow", "allow_v4", "198.18.0.0/24", frame(ip4(), UDP()), R.PASS_ALLOW,
                 id="allow_v4"),
    pytest.param("allow", "allow_v6", "2001:db8::/32", frame(ip6(), UDP()), R.PASS_ALLOW,
                 id="allow_v6"),
]


def _reason_of_one(dp: DataPlane, packet: bytes) -> tuple[int, Reason]:
    """Run one packet from clean counters; its action and the reason counted."""
    before = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    retval = dp.run(packet)
    after = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    moved = [r for r in after if after[r] != before[r]]
    assert len(moved) == 1, moved
    return retval, moved[0]


@pytest.mark.parametrize(("which", "trie", "prefix", "packet", "reason"), TRIES)
def test_trie_bit_follows_the_trie(dp: DataPlane, which: policy.List, trie: str, prefix: str,
                                   packet: bytes, reason: Reason) -> None:
    bit = abi.TRIE_FLAGS[trie]
    assert dp.config().flags & bit == 0
    expected_retval = XDP_DROP if reason.is_drop else XDP_PASS

    policy.add(dp.maps, which, [policy.Entry(parse_prefix(prefix), 5)])
    assert dp.config().flags & bit == bit
    assert _reason_of_one(dp, packet) == (expected_retval, reason)

    # A second prefix, then removing the first: the trie is not empty, the bit stays.
    other = "203.0.113.0/24" if "v4" in trie else "2001:db8:dead::/48"
    policy.add(dp.maps, which, [policy.Entry(parse_prefix(other), 6)])
    assert policy.remove(dp.maps, which, [parse_prefix(prefix)]) == 1
    assert dp.config().flags & bit == bit
    assert _reason_of_one(dp, packet) == (XDP_PASS, R.PASS_DEFAULT)

    # The last prefix gone: the bit is cleared.
    assert policy.remove(dp.maps, which, [parse_prefix(other)]) == 1
    assert dp.config().flags & bit == 0
    assert _reason_of_one(dp, packet) == (XDP_PASS, R.PASS_DEFAULT)


@pytest.mark.parametrize(("which", "trie", "prefix", "packet", "reason"), TRIES)
def test_clear_trie_bit_skips_the_trie(dp: DataPlane, which: policy.List, trie: str, prefix: str,
                                       packet: bytes, reason: Reason) -> None:
    """The program does not look in a trie whose bit is clear (why user space
    must set it before the first insert)."""
    key = lpm_key(trie, dp.config().gen & 1, parse_prefix(prefix))
    dp.maps[trie].update(key, bytes(abi.RuleRef(5, 0)))
    assert _reason_of_one(dp, packet) == (XDP_PASS, R.PASS_DEFAULT)

    cfg = dp.config()
    cfg.flags |= abi.TRIE_FLAGS[trie]
    dataplane.write_config(dp.maps, cfg)
    expected_retval = XDP_DROP if reason.is_drop else XDP_PASS
    assert _reason_of_one(dp, packet) == (expected_retval, reason)


@pytest.mark.parametrize(("which", "trie", "prefix", "packet", "reason"), TRIES)
def test_idle_slot_of_a_trie_is_not_seen(dp: DataPlane, which: policy.List, trie: str,
                                         prefix: str, packet: bytes, reason: Reason) -> None:
    """An entry in the other slot (gen + 1) & 1 is invisible, bit set or not,
    until config.gen moves to that generation."""
    cfg = dp.config()
    idle = (cfg.gen + 1) & 1
    dp.maps[trie].update(lpm_key(trie, idle, parse_prefix(prefix)), bytes(abi.RuleRef(5, 0)))
    cfg.flags |= abi.TRIE_FLAGS[trie]
    dataplane.write_config(dp.maps, cfg)
    assert _reason_of_one(dp, packet) == (XDP_PASS, R.PASS_DEFAULT)
    cfg.gen += 1
    dataplane.write_config(dp.maps, cfg)
    expected_retval = XDP_DROP if reason.is_drop else XDP_PASS
    assert _reason_of_one(dp, packet) == (expected_retval, reason)


def test_exact_entries_set_no_trie_bit(dp: DataPlane) -> None:
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix(SRC4), 1),
                                 policy.Entry(parse_prefix(SRC6), 2)])
    assert dp.config().flags == 0
    assert _reason_of_one(dp, frame(ip4(), UDP())) == (XDP_DROP, R.DROP_DENY_SRC)
    assert _reason_of_one(dp, frame(ip6(), UDP())) == (XDP_DROP, R.DROP_DENY_SRC)


def test_failed_prefix_add_leaves_the_bit_clear(dp: DataPlane) -> None:
    """An add refused as a whole (bad rule id) must not leave a trie bit set."""
    bad = dp.maps["rule_stats"].max_entries
    with pytest.raises(InputError, match="rule_id"):
        policy.add(dp.maps, "deny", [policy.Entry(parse_prefix("198.18.0.0/24"), bad)])
    assert dp.config().flags == 0


def test_monitor_flag_via_set_flags(dp: DataPlane) -> None:
    """set_flags(monitor=True) sets CFG_MONITOR and leaves the trie bits alone."""
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix("198.18.0.0/24"), 3)])
    cfg = dataplane.set_flags(dp.maps, monitor=True)
    assert cfg.flags == abi.CFG_MONITOR | abi.TRIE_FLAGS["deny_pfx_v4"]
    assert dp.config().flags == cfg.flags
    assert _reason_of_one(dp, frame(ip4(), UDP())) == (XDP_PASS, R.DROP_DENY_PREFIX)
    dataplane.set_flags(dp.maps, monitor=False)
    assert _reason_of_one(dp, frame(ip4(), UDP())) == (XDP_DROP, R.DROP_DENY_PREFIX)

