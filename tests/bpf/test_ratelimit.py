"""Token-bucket (GCRA) accuracy through BPF_PROG_TEST_RUN.

The program reads its clock with bpf_ktime_get_ns (CLOCK_MONOTONIC), so a
run of N packets with ``repeat`` is timed here with time.monotonic_ns()
around the syscall: the bucket cannot have seen more time than that
(``outer``). The kernel's own duration (average per run x repeat) excludes
preemption and the test run's setup (with repeat > 1 the XDP dispatcher is
swapped in and out, ~15 ms here), so it is a lower bound of the time the
bucket saw (``inner``). A rule that passes ``burst + rate x elapsed`` must
therefore land within

    0.9 x (burst + rate x inner)  <=  passed  <=  1.1 x (burst + rate x outer) + 1

with ``passed`` = the rule's matched packets - its rate-limited ones. No
bound is a fixed wall-clock duration.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Dot1Q

from controller.dataplane import abi, counters
from controller.dataplane.reasons import Reason

from .conftest import DataPlane
from .packets import SRC4, SRC6, frame, ip4, ip6
from .rulesets import Enforced, enforce_rules, rule

pytestmark = pytest.mark.bpf

NS_PER_S = 1_000_000_000
TOLERANCE = 0.10
# About 150 ns a run here: a million runs give the bucket ~0.15 s to refill,
# 10-20x its burst at the rates below.
RUNS = 1_000_000
ETH_HLEN = 14
UDP4_IP_LEN = 28


@dataclass(frozen=True)
class Timed:
    """One BPF_PROG_TEST_RUN of ``repeat`` runs and its two clocks."""

    repeat: int
    inner_s: float  # the kernel's duration: a lower bound of what the bucket saw
    outer_s: float  # monotonic time around the syscall: an upper bound
    started_ns: int
    ended_ns: int


def timed_run(dp: DataPlane, packet: bytes, repeat: int) -> Timed:
    t0 = time.monotonic_ns()
    result = dp.run_many(packet, repeat)
    t1 = time.monotonic_ns()
    return Timed(repeat, result.duration_ns * repeat / NS_PER_S, (t1 - t0) / NS_PER_S, t0, t1)


def passed(dp: DataPlane, enforced: Enforced, rule_id: str) -> tuple[int, int]:
    """(matched, passed) of a rule so far."""
    t = enforced.totals(dp.maps, rule_id)
    return t.packets, t.packets - t.rate_limited


def assert_within(got: float, burst: float, rate: float, inner_s: float, outer_s: float,
                  slack: float = 1) -> None:
    """``got`` (packets or bytes passed) against burst + rate x elapsed."""
    low = (1 - TOLERANCE) * (burst + rate * inner_s)
    high = (1 + TOLERANCE) * (burst + rate * outer_s) + slack
    assert low <= got <= high, (
        f"passed {got}; want {low:.0f}..{high:.0f} (burst {burst}, rate {rate}/s, "
        f"elapsed {inner_s * 1e3:.1f}..{outer_s * 1e3:.1f} ms)")


def reason_packets(dp: DataPlane, reason: Reason) -> int:
    return counters.reason_totals(dp.maps)[reason].packets


# -- packets per second ------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["aggregate", "per_source"])
def test_pps_accuracy(dp: DataPlane, scope: str) -> None:
    pps, burst = 10_000, 100
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "pps": pps, "burst_packets": burst, "scope": scope},
        protocol="udp")])
    run = timed_run(dp, frame(ip4(), UDP()), RUNS)
    matched, ok = passed(dp, enforced, "rl")
    assert matched == RUNS
    assert_within(ok, burst, pps, run.inner_s, run.outer_s)
    # Every run is counted under one of the two rate-limit reasons, and the
    # rule's dropped and rate-limited counters agree.
    assert reason_packets(dp, Reason.PASS_RATE_LIMIT) == ok
    assert reason_packets(dp, Reason.DROP_RATE_LIMIT) == RUNS - ok
    t = enforced.totals(dp.maps, "rl")
    assert t.dropped == t.rate_limited == RUNS - ok


def test_pps_burst_passes_whole(dp: DataPlane) -> None:
    """A full bucket passes exactly ``burst`` back-to-back packets, then one
    per 1/rate s: a short run sees the burst and hardly any refill."""
    pps, burst = 1000, 100
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "pps": pps, "burst_packets": burst}, protocol="udp")])
    run = timed_run(dp, frame(ip4(), UDP()), 10 * burst)
    _, ok = passed(dp, enforced, "rl")
    assert burst <= ok <= burst + pps * run.outer_s + 1


def test_pps_bucket_refills_between_runs(dp: DataPlane) -> None:
    """A drained bucket refills at the rate between runs: the next run passes
    what accrued in the gap (measured on the same clock), capped at the burst."""
    pps, burst = 2000, 1000
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "pps": pps, "burst_packets": burst}, protocol="udp")])
    packet = frame(ip4(), UDP())
    first = timed_run(dp, packet, 3 * burst)
    _, ok1 = passed(dp, enforced, "rl")
    assert burst <= ok1 <= burst + pps * first.outer_s + 1
    time.sleep(0.05)
    second = timed_run(dp, packet, 3 * burst)
    _, ok2 = passed(dp, enforced, "rl")
    gap_min = (second.started_ns - first.ended_ns) / NS_PER_S
    gap_max = (second.ended_ns - first.started_ns) / NS_PER_S
    refilled = ok2 - ok1
    assert min(burst, (1 - TOLERANCE) * pps * gap_min) <= refilled, (refilled, gap_min)
    assert refilled <= min(burst + pps * second.outer_s, pps * gap_max) + 2, (refilled, gap_max)


# -- bits per second ---------------------------------------------------------------------------
# Large packets: the Ethernet header is 1-2% of the frame, so these hold
# whether the program charges IP or frame bytes (see the VLAN test below).
BPS_CASES = [1400, 576]


@pytest.mark.parametrize("ip_length", BPS_CASES)
def test_bps_accuracy(dp: DataPlane, ip_length: int) -> None:
    bps, burst_bytes = 8_000_000, 20_000  # 1 MB/s
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "bps": bps, "burst_bytes": burst_bytes}, protocol="udp")])
    packet = frame(ip4(), UDP(), bytes(ip_length - UDP4_IP_LEN))
    assert len(packet) == ETH_HLEN + ip_length
    run = timed_run(dp, packet, RUNS)
    matched, ok = passed(dp, enforced, "rl")
    assert matched == RUNS
    # In IP bytes; one packet of slack for the packet that ends the burst.
    assert_within(ok * ip_length, burst_bytes, bps / 8, run.inner_s, run.outer_s, slack=ip_length)


def test_bps_vlan_tags_do_not_count(dp: DataPlane) -> None:
    """The same 50-byte IP packets, untagged and in 802.1Q, against a byte
    bucket of 640 bytes at 1 byte/s (no refill to speak of): the bucket must
    pass as many of one as of the other."""
    ip_length, burst_bytes = 50, 640
    got = []
    for tags in ((), (Dot1Q(vlan=10),)):
        dp.reset()
        enforced = enforce_rules(dp.maps, [rule(
            "rl", {"kind": "rate_limit", "bps": 8, "burst_bytes": burst_bytes}, protocol="udp")])
        packet = frame(*tags, ip4(), UDP(), bytes(ip_length - UDP4_IP_LEN))
        timed_run(dp, packet, 100)
        got.append(passed(dp, enforced, "rl")[1])
    assert got[0] == got[1], f"untagged {got[0]}, tagged {got[1]}"


def test_pps_and_bps_both_apply(dp: DataPlane) -> None:
    """With both rates a packet needs both buckets: here the bit rate is the
    tighter one (1000 pps of 1428-byte packets is 11.4 Mbit/s)."""
    pps, bps, ip_length = 1000, 1_000_000, 1400
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "pps": pps, "burst_packets": 10, "bps": bps,
               "burst_bytes": 18_000}, protocol="udp")])
    packet = frame(ip4(), UDP(), bytes(ip_length - UDP4_IP_LEN))
    run = timed_run(dp, packet, RUNS // 2)
    _, ok = passed(dp, enforced, "rl")
    assert_within(ok * ip_length, 18_000, bps / 8, run.inner_s, run.outer_s, slack=ip_length)
    assert ok < 10 + pps * run.inner_s  # well under what the packet rate alone allows


# -- one bucket per source -----------------------------------------------------------------
def _sources(n4: int, n6: int) -> list[str]:
    v4 = ipaddress.IPv4Address(SRC4)
    v6 = ipaddress.IPv6Address(SRC6)
    return [str(v4 + i) for i in range(n4)] + [str(v6 + i) for i in range(n6)]


def _packet(src: str) -> bytes:
    if ipaddress.ip_address(src).version == 4:
        return frame(ip4(src=src), UDP())
    return frame(ip6(src=src), UDP())


def _rl_src_keys(dp: DataPlane) -> set[tuple[int, int, str]]:
    out = set()
    keys = dp.maps["rl_src"].keys()  # a PinnedMap, not a dict
    for raw in keys:
        k = abi.RlKey.from_buffer_copy(raw)
        addr = bytes(k.addr)[:4] if k.family == 4 else bytes(k.addr)
        if k.family == 4:
            assert bytes(k.addr)[4:] == bytes(12)
        out.add((k.rule_id, k.family, str(ipaddress.ip_address(addr))))
    return out


@pytest.mark.parametrize("scope", ["per_source", "aggregate"])
def test_sources_get_their_own_bucket(dp: DataPlane, scope: str) -> None:
    """Each source drains its own bucket (per_source) or all share one
    (aggregate). A low rate keeps refills far below the burst, so the
    difference is the burst: once per source, or once in all."""
    pps, burst, runs = 100, 50, 500
    enforced = enforce_rules(dp.maps, [rule(
        "rl", {"kind": "rate_limit", "pps": pps, "burst_packets": burst, "scope": scope},
        protocol="udp")])
    sources = _sources(4, 2)
    got: dict[str, int] = {}
    timings: dict[str, Timed] = {}
    before = 0
    for src in sources:
        timings[src] = timed_run(dp, _packet(src), runs)
        _, ok = passed(dp, enforced, "rl")
        got[src], before = ok - before, ok
    span = (timings[sources[-1]].ended_ns - timings[sources[0]].started_ns) / NS_PER_S
    total = sum(got.values())
    slot = enforced.slot("rl")
    if scope == "per_source":
        for src in sources:
            assert burst <= got[src] <= burst + pps * timings[src].outer_s + 1, (src, got)
        assert _rl_src_keys(dp) == {(slot, ipaddress.ip_address(s).version, s) for s in sources}
    else:
        assert burst <= total <= burst + pps * span + 1, got
        assert dp.maps.is_empty("rl_src")

    # Back to the first source: under per_source its bucket is still drained
    # (it refilled only since its own run), while a new source gets a burst.
    first, new = sources[0], _sources(6, 0)[-1]
    again = timed_run(dp, _packet(first), runs)
    _, ok = passed(dp, enforced, "rl")
    first_again, before = ok - before, ok
    refill = pps * (again.ended_ns - timings[first].started_ns) / NS_PER_S + 1
    assert first_again <= refill < burst
    fresh = timed_run(dp, _packet(new), runs)
    _, ok = passed(dp, enforced, "rl")
    new_got = ok - before
    if scope == "per_source":
        assert burst <= new_got <= burst + pps * fresh.outer_s + 1
    else:
        assert new_got <= pps * (fresh.ended_ns - timings[first].started_ns) / NS_PER_S + 1
