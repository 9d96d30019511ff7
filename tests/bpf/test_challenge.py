"""The SYN challenge stage (bpf/challenge.h), packet by packet, through
BPF_PROG_TEST_RUN: the challenge SYN-ACK byte for byte, the RST that answers
it (valid, stale, forged, another 4-tuple), the verified set and its expiry,
the per-destination meter that arms and disarms the challenge, the flow table
(ACK floods) and its bound, and the stage's place in the pipeline."""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet

from controller.addresses import parse_prefix
from controller.dataplane import abi, counters
from controller.dataplane import attach as dataplane
from controller.dataplane import entries as policy
from controller.dataplane import libbpf as lb
from controller.dataplane.challenge import Service, challenged, set_challenged, state_counts
from controller.dataplane.reasons import Action, Reason
from controller.errors import InputError

from .conftest import XDP_DROP, XDP_PASS, DataPlane
from .packets import MAC_DST, MAC_SRC

pytestmark = pytest.mark.bpf

R = Reason
XDP_TX = 3
CLIENT = "198.18.0.10"
OTHER = "198.18.0.11"
SERVER = "198.19.255.1"
PORT = 443
CPORT = 40000
ISN = 0x11223344
COOKIE_COUNT_SHIFT = 24   # the minute counter lives in a syncookie's top 8 bits
ALWAYS = Service(parse_prefix("198.19.255.0/24"), PORT, syn_pps=0, ack_pps=0)
CALM = Service(parse_prefix("198.19.255.0/24"), PORT, syn_pps=10**6, ack_pps=10**6)

SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None),
               ("WScale", 7)]


def syn(src: str = CLIENT, sport: int = CPORT, seq: int = ISN, dport: int = PORT,
        options: list[tuple[str, object]] | None = None, *tags: Packet) -> bytes:
    pkt: Packet = Ether(src=MAC_SRC, dst=MAC_DST)
    for tag in tags:
        pkt = pkt / tag
    return bytes(pkt / IP(src=src, dst=SERVER) / TCP(
        sport=sport, dport=dport, flags="S", seq=seq,
        options=SYN_OPTIONS if options is None else options))


def tcp(flags: str, src: str = CLIENT, sport: int = CPORT, seq: int = 1, ack: int = 0,
        dport: int = PORT) -> bytes:
    return bytes(Ether(src=MAC_SRC, dst=MAC_DST) / IP(src=src, dst=SERVER)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def rst(cookie: int, src: str = CLIENT, sport: int = CPORT) -> bytes:
    """What Linux sends for a SYN-ACK whose ack it rejects: RST, seq = that ack."""
    return tcp("R", src, sport, seq=cookie & 0xFFFFFFFF)


def run(dp: DataPlane, packet: bytes) -> tuple[int, Reason, bytes]:
    """One packet: its action, the one reason counted, the frame that left."""
    before = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    out = lb.prog_test_run(dp.prog_fd, packet)
    after = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    moved = [r for r in after if after[r] != before[r]]
    assert len(moved) == 1, moved
    return out.retval, moved[0], out.data_out


def challenge_cookie(dp: DataPlane, **kw: object) -> int:
    """Send a SYN to an always-armed service; the ack of the SYN-ACK."""
    action, reason, out = run(dp, syn(**kw))  # type: ignore[arg-type]
    assert (action, reason) == (XDP_TX, R.DROP_CHALLENGE_SYN)
    return int(Ether(out)[TCP].ack)


def verified(dp: DataPlane) -> set[str]:
    keys = dp.maps["verified_v4"].keys()  # a PinnedMap, not a dict
    return {str(ipaddress.IPv4Address(k)) for k in keys}


# -- the challenge SYN-ACK ---------------------------------------------------

@pytest.mark.parametrize("options", [SYN_OPTIONS, [], [("MSS", 536)]],
                         ids=["linux-options", "no-options", "mss-only"])
def test_challenge_synack_byte_for_byte(dp: DataPlane, options: list[tuple[str, object]]) -> None:
    set_challenged(dp.maps, [ALWAYS])
    action, reason, out = run(dp, syn(options=options))
    assert (action, reason) == (XDP_TX, R.DROP_CHALLENGE_SYN)
    assert len(out) == 14 + 20 + 24
    got = Ether(out)
    ip, th = got[IP], got[TCP]
    # Ethernet: MACs swapped.
    assert (got.src, got.dst, got.type) == (MAC_DST, MAC_SRC, 0x0800)
    # IPv4: fixed header, addresses swapped.
    assert (ip.version, ip.ihl, ip.tos, ip.len, ip.id, int(ip.flags), ip.frag, ip.ttl, ip.proto) == (
        4, 5, 0, 44, 0, 2, 0, abi.CHAL_TTL, 6)
    assert (ip.src, ip.dst) == (SERVER, CLIENT)
    # TCP: ports swapped, SYN|ACK, MSS option only, the ack deliberately wrong.
    assert (th.sport, th.dport, th.dataofs, str(th.flags), th.window, th.urgptr) == (
        PORT, CPORT, 6, "SA", abi.CHAL_WINDOW, 0)
    assert th.options == [("MSS", abi.CHAL_MSS)]
    assert th.ack != ISN + 1
    # Checksums valid: scapy recomputes them from scratch.
    fresh = Ether(out)
    del fresh[IP].chksum
    del fresh[TCP].chksum
    fresh = Ether(bytes(fresh))
    assert (ip.chksum, th.chksum) == (fresh[IP].chksum, fresh[TCP].chksum)
    # Byte for byte, with the two random/secret words taken from the reply.
    want = bytes(Ether(src=MAC_DST, dst=MAC_SRC) / IP(
        src=SERVER, dst=CLIENT, id=0, flags="DF", ttl=abi.CHAL_TTL) / TCP(
        sport=PORT, dport=CPORT, flags="SA", seq=th.seq, ack=th.ack, window=abi.CHAL_WINDOW,
        options=[("MSS", abi.CHAL_MSS)]))
    assert out == want


def test_cookie_is_the_tuple_not_the_isn(dp: DataPlane) -> None:
    """The RST will not echo the client's ISN, so the cookie leaves it out;
    the reply's own seq is random."""
    set_challenged(dp.maps, [ALWAYS])
    a, b = challenge_cookie(dp, seq=1), challenge_cookie(dp, seq=99999)
    assert a == b
    assert challenge_cookie(dp, sport=CPORT + 1) != a
    seqs = {int(Ether(run(dp, syn())[2])[TCP].seq) for _ in range(4)}
    assert len(seqs) > 1


def test_challenge_keeps_vlan_tags(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    action, _, out = run(dp, syn(CLIENT, CPORT, ISN, PORT, None, Dot1Q(vlan=7)))
    assert action == XDP_TX
    got = Ether(out)
    assert got[Dot1Q].vlan == 7 and (got[IP].src, got[TCP].flags) == (SERVER, "SA")
    assert len(out) == 18 + 44


# -- the answer ----------------------------------------------------------------

def test_valid_rst_verifies_the_source_and_its_next_syn_passes(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    cookie = challenge_cookie(dp)
    assert run(dp, rst(cookie))[:2] == (XDP_DROP, R.DROP_CHALLENGE_ANSWER)
    assert verified(dp) == {CLIENT}
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_VERIFIED)
    # the whole source is verified: another port of it, and its ACKs, pass too
    assert run(dp, syn(sport=CPORT + 5))[:2] == (XDP_PASS, R.PASS_VERIFIED)
    assert run(dp, tcp("A", sport=CPORT + 5))[:2] == (XDP_PASS, R.PASS_VERIFIED)
    # and another source still meets the challenge
    assert run(dp, syn(src=OTHER))[:2] == (XDP_TX, R.DROP_CHALLENGE_SYN)


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("forged", lambda c: rst(c ^ 0x10000000)),
        ("stale", lambda c: rst(c - (3 << COOKIE_COUNT_SHIFT))),   # minted 3 minutes ago
        ("other-sport", lambda c: rst(c, sport=CPORT + 1)),
        ("other-source", lambda c: rst(c, src=OTHER)),
        ("rst-ack", lambda c: tcp("RA", seq=c)),
    ],
)
def test_bad_answers_verify_nothing(dp: DataPlane, name: str, answer: object) -> None:
    set_challenged(dp.maps, [ALWAYS])
    cookie = challenge_cookie(dp)
    action, reason, _ = run(dp, answer(cookie))  # type: ignore[operator]
    want = R.DROP_UNVERIFIED if name == "rst-ack" else R.DROP_CHALLENGE_FORGED
    assert (action, reason) == (XDP_DROP, want)
    assert verified(dp) == set()
    assert run(dp, syn())[:2] == (XDP_TX, R.DROP_CHALLENGE_SYN)


def test_verification_expires(dp: DataPlane) -> None:
    ttl = 30.0
    set_challenged(dp.maps, [Service(ALWAYS.prefix, PORT, 0, 0, verified_ttl=ttl)])
    key = bytes(int(b) for b in CLIENT.split("."))
    now = time.monotonic_ns()   # bpf_ktime_get_ns is CLOCK_MONOTONIC
    dp.maps["verified_v4"].update(key, (now - int((ttl - 5) * 1e9)).to_bytes(8, "little"))
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_VERIFIED)
    dp.maps["verified_v4"].update(key, (now - int((ttl + 1) * 1e9)).to_bytes(8, "little"))
    assert run(dp, syn())[:2] == (XDP_TX, R.DROP_CHALLENGE_SYN)


# -- the meter -----------------------------------------------------------------

def meter(dp: DataPlane) -> abi.ChalMeter:
    key = abi.ChalDstV4()
    key.addr[:] = [198, 19, 255, 1]
    key.port[:] = list(PORT.to_bytes(2, "big"))
    raw = dp.maps["chal_meter_v4"].lookup(bytes(key))
    assert raw is not None
    return abi.ChalMeter.from_buffer_copy(raw)


def test_syns_below_the_threshold_pass_untouched(dp: DataPlane) -> None:
    set_challenged(dp.maps, [Service(ALWAYS.prefix, PORT, syn_pps=1000)])
    packet = syn()
    for _ in range(5):
        action, reason, out = run(dp, packet)
        assert (action, reason, out) == (XDP_PASS, R.PASS_DEFAULT, packet)
    m = meter(dp)
    assert (m.syn, m.armed_until, m.armed) == (5, 0, 0)


def test_syn_rate_arms_the_challenge_and_it_falls_back(dp: DataPlane) -> None:
    """1000 SYNs/s = 100 a window: the 101st in one window arms it; after
    hold, with the rate down, it disarms."""
    set_challenged(dp.maps, [Service(ALWAYS.prefix, PORT, syn_pps=1000, hold=10)])
    assert lb.prog_test_run(dp.prog_fd, syn(sport=1), repeat=101).retval == XDP_TX  # last one
    m = meter(dp)
    assert m.armed == 1 and m.armed_until > time.monotonic_ns()
    assert run(dp, syn(sport=2))[:2] == (XDP_TX, R.DROP_CHALLENGE_SYN)
    # hold over: the meter's window and arming time moved into the past
    m.window = m.armed_until = time.monotonic_ns() - 1
    m.syn = 0
    key = abi.ChalDstV4()
    key.addr[:] = [198, 19, 255, 1]
    key.port[:] = list(PORT.to_bytes(2, "big"))
    dp.maps["chal_meter_v4"].update(bytes(key), bytes(m))
    assert run(dp, syn(sport=3))[:2] == (XDP_PASS, R.PASS_DEFAULT)


def test_other_ports_and_destinations_are_not_challenged(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    assert run(dp, syn(dport=80))[:2] == (XDP_PASS, R.PASS_DEFAULT)
    packet = bytes(Ether(src=MAC_SRC, dst=MAC_DST) / IP(src=CLIENT, dst="198.19.254.1")
                   / TCP(sport=CPORT, dport=PORT, flags="S"))
    assert run(dp, packet)[:2] == (XDP_PASS, R.PASS_DEFAULT)


def test_monitor_mode_counts_the_challenge_and_rewrites_nothing(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    dataplane.set_flags(dp.maps, monitor=True)
    packet = syn()
    before = counters.action_totals(dp.maps)[Action.MONITOR].packets
    assert run(dp, packet) == (XDP_PASS, R.DROP_CHALLENGE_SYN, packet)
    assert counters.action_totals(dp.maps)[Action.MONITOR].packets == before + 1


# -- pipeline order --------------------------------------------------------------

def test_allowlisted_sources_are_never_challenged_denied_ones_dropped_first(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    policy.add(dp.maps, "allow", [policy.Entry(parse_prefix(CLIENT), 3)])
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix(OTHER), 4)])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_ALLOW)
    assert run(dp, syn(src=OTHER))[:2] == (XDP_DROP, R.DROP_DENY_SRC)


def test_configuration_round_trips_and_clears(dp: DataPlane) -> None:
    services = [ALWAYS, Service(parse_prefix("198.19.0.0/16"), 80, 50, 70, 2.5, 60)]
    set_challenged(dp.maps, services)
    assert challenged(dp.maps) == sorted(services)
    assert dp.config().flags & abi.CFG_TRIE_CHALLENGE_V4
    with pytest.raises(InputError, match="listed twice"):
        set_challenged(dp.maps, [ALWAYS, ALWAYS])
    assert challenged(dp.maps) == sorted(services)   # nothing partially applied
    set_challenged(dp.maps, [])
    assert challenged(dp.maps) == [] and not dp.config().flags & abi.CFG_TRIE_CHALLENGE_V4
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)


def test_ipv6_services_are_refused() -> None:
    with pytest.raises(InputError, match="only IPv4"):
        Service(parse_prefix("2001:db8::/64"), 443)


# -- ACK floods and the flow table -------------------------------------------------

def test_connections_seen_open_keep_flowing_under_challenge(dp: DataPlane) -> None:
    set_challenged(dp.maps, [CALM])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)          # noted in flows_v4
    assert run(dp, tcp("A", sport=CPORT + 9))[:2] == (XDP_PASS, R.PASS_DEFAULT)  # learnt while calm
    set_challenged(dp.maps, [ALWAYS])
    assert run(dp, tcp("A"))[:2] == (XDP_PASS, R.PASS_FLOW)
    assert run(dp, tcp("PA", sport=CPORT + 9))[:2] == (XDP_PASS, R.PASS_FLOW)
    assert run(dp, tcp("A", sport=CPORT + 1))[:2] == (XDP_DROP, R.DROP_UNVERIFIED)
    assert run(dp, tcp("FA", src=OTHER))[:2] == (XDP_DROP, R.DROP_UNVERIFIED)


def test_unknown_ack_rate_arms_the_challenge(dp: DataPlane) -> None:
    """ack_pps 10 = 1 a window: the second unknown connection in a window arms it."""
    set_challenged(dp.maps, [Service(ALWAYS.prefix, PORT, syn_pps=10**6, ack_pps=10)])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)
    flood = [tcp("A", src=f"198.18.{i // 250}.{i % 250 + 1}", sport=1000 + i) for i in range(50)]
    reasons = [run(dp, p)[1] for p in flood]
    assert reasons[0] == R.PASS_DEFAULT
    assert R.DROP_UNVERIFIED in reasons and reasons[-1] == R.DROP_UNVERIFIED
    assert run(dp, tcp("A"))[:2] == (XDP_PASS, R.PASS_FLOW)   # the real connection goes on


def test_flow_table_stays_bounded_under_distinct_tuples(tiny: DataPlane) -> None:
    set_challenged(tiny.maps, [CALM])
    for i in range(600):
        assert tiny.run(syn(src=f"198.18.{i // 200}.{i % 200 + 1}", sport=1024 + i)) == XDP_PASS
    assert 0 < state_counts(tiny.maps)["flows_v4"] <= tiny.sizes.flows_v4


def flow_key(src: str = CLIENT, sport: int = CPORT) -> bytes:
    """The flows_v4 key of a client's connection to SERVER:PORT."""
    key = abi.FlowV4()
    key.saddr[:] = list(ipaddress.IPv4Address(src).packed)
    key.daddr[:] = list(ipaddress.IPv4Address(SERVER).packed)
    key.sport[:] = list(sport.to_bytes(2, "big"))
    key.dport[:] = list(PORT.to_bytes(2, "big"))
    return bytes(key)


def flow_value(dp: DataPlane) -> int | None:
    raw = dp.maps["flows_v4"].lookup(flow_key())
    return None if raw is None else int.from_bytes(raw, "little")


def key_flow(dp: DataPlane, value: int) -> None:
    dp.maps["flows_v4"].update(flow_key(), value.to_bytes(8, "little"))


@pytest.mark.parametrize("closer", ["FA", "R", "RA"])
def test_fin_or_rst_marks_the_flow_closing_and_it_is_forgotten_when_idle(
        dp: DataPlane, closer: str) -> None:
    set_challenged(dp.maps, [CALM])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)
    live = flow_value(dp)
    assert live is not None and not live & abi.FLOW_CLOSING
    set_challenged(dp.maps, [ALWAYS])
    assert run(dp, tcp(closer, seq=ISN + 1))[:2] == (XDP_PASS, R.PASS_FLOW)
    closing = flow_value(dp)
    assert closing is not None and closing & abi.FLOW_CLOSING
    # the last ACK of the close still passes, and keeps the flow closing
    assert run(dp, tcp("A", seq=ISN + 2))[:2] == (XDP_PASS, R.PASS_FLOW)
    again = flow_value(dp)
    assert again is not None and again & abi.FLOW_CLOSING
    # idle past the grace: forgotten, the tuple is unknown again
    stale = (time.monotonic_ns() - abi.FLOW_CLOSING_NS - 10**9) | abi.FLOW_CLOSING
    key_flow(dp, stale)
    assert run(dp, tcp("A", seq=ISN + 2))[:2] == (XDP_DROP, R.DROP_UNVERIFIED)
    assert flow_value(dp) is None


def test_a_live_flow_never_ages_and_a_new_syn_reopens_a_closing_one(dp: DataPlane) -> None:
    set_challenged(dp.maps, [ALWAYS])
    old = time.monotonic_ns() - 3600 * 10**9
    key_flow(dp, old)                                     # live, idle an hour
    assert run(dp, tcp("A"))[:2] == (XDP_PASS, R.PASS_FLOW)
    key_flow(dp, old | abi.FLOW_CLOSING)                  # closing, idle an hour
    set_challenged(dp.maps, [CALM])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)  # port reused while calm
    value = flow_value(dp)
    assert value is not None and not value & abi.FLOW_CLOSING


def test_a_fin_first_seen_while_calm_is_noted_closing(dp: DataPlane) -> None:
    set_challenged(dp.maps, [CALM])
    assert run(dp, tcp("FA"))[:2] == (XDP_PASS, R.PASS_DEFAULT)
    value = flow_value(dp)
    assert value is not None and value & abi.FLOW_CLOSING


def test_a_verified_sources_fin_closes_its_flow(dp: DataPlane) -> None:
    set_challenged(dp.maps, [CALM])
    assert run(dp, syn())[:2] == (XDP_PASS, R.PASS_DEFAULT)
    set_challenged(dp.maps, [ALWAYS])
    key = bytes(int(b) for b in CLIENT.split("."))
    dp.maps["verified_v4"].update(key, time.monotonic_ns().to_bytes(8, "little"))
    assert run(dp, tcp("FA"))[:2] == (XDP_PASS, R.PASS_VERIFIED)
    value = flow_value(dp)
    assert value is not None and value & abi.FLOW_CLOSING


# -- SYNs not worth answering -----------------------------------------------------

def partial_checksum_syn() -> bytes:
    """A SYN as a sender with checksum offload hands it to a veth: the TCP
    checksum field holds the pseudo-header sum only (CHECKSUM_PARTIAL)."""
    pkt = Ether(syn())
    seglen = len(pkt[TCP])
    words = (sum(int.from_bytes(bytes(int(b) for b in a.split(".")), "big") >> s & 0xFFFF
                 for a in (CLIENT, SERVER) for s in (16, 0)) + 6 + seglen)
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    pkt[TCP].chksum = words
    return bytes(pkt)


@pytest.mark.parametrize(
    ("name", "packet", "answered"),
    [
        ("valid", lambda: syn(), True),
        ("offload-partial", partial_checksum_syn, True),
        ("bad-checksum", lambda: bytes(Ether(src=MAC_SRC, dst=MAC_DST) / IP(src=CLIENT, dst=SERVER)
                                       / TCP(sport=CPORT, dport=PORT, flags="S", chksum=0x1234)), False),
        ("corrupted-option", lambda: syn()[:-3] + bytes([syn()[-3] ^ 0x40]) + syn()[-2:], False),
        ("with-data", lambda: bytes(Ether(src=MAC_SRC, dst=MAC_DST) / IP(src=CLIENT, dst=SERVER)
                                    / TCP(sport=CPORT, dport=PORT, flags="S") / b"GET / HTTP/1.0\r\n"),
         False),
        ("ethernet-padding", lambda: syn(options=[]) + bytes(6), True),
    ],
)
def test_only_sound_syns_are_answered(dp: DataPlane, name: str, packet: object,
                                      answered: bool) -> None:
    set_challenged(dp.maps, [ALWAYS])
    action, reason, _ = run(dp, packet())  # type: ignore[operator]
    want = (XDP_TX, R.DROP_CHALLENGE_SYN) if answered else (XDP_DROP, R.DROP_CHALLENGE_BAD_SYN)
    assert (action, reason) == want, name
