"""Atomic rule-set swaps under traffic: every packet is judged by one set.

Two rule sets, A and B, disagree on some flows and agree on others. While
two senders (pinned to CPU 0 and CPU 1) send sequenced UDP datagrams on
every flow, the test swaps A and B fifty times with
``controller.rules.enforce.apply`` (each time passing the previous ``Applied``).

Every rule exists in both sets (only its action differs), so each keeps its
counter slot across all swaps and its counters cover the whole run. The
flows, one datagram each per round, in this order:

====  ==================  =========================  ========================
flow  source -> port      A                          B
====  ==================  =========================  ========================
0     .2 -> 9001          drop (signature)           monitor: pass
1     .2 -> 9002          monitor: pass              drop (signature)
2     .2 -> 9003          drop (signature)           drop (signature)
3     .2 -> 9004          allow (signature)          rate limit, never reached
4     .3 -> 9005          drop (exact deny entry)    monitor: pass
5     .4 -> 9005          monitor: pass              drop (exact deny entry)
6     .20 -> 9005         drop (prefix deny)         drop (prefix deny)
7     .2 -> 9005          no rule: pass (control)    no rule: pass (control)
====  ==================  =========================  ========================

Checks, all exact:

* the control flow arrives whole and the receiver's UDP counters show no
  loss, so a datagram that did not arrive was dropped by the program;
* per flow, delivered + dropped by its rule == sent == matched by its rule,
  and the reason totals hold only reasons A or B can give, adding up;
* no datagram of a flow both sets drop ever arrives, and every datagram of
  a flow both sets pass arrives exactly once;
* per datagram, in time: the verdict falls after its send time and before
  the arrival of the next datagram the same sender sent that arrived (one
  sender's datagrams are judged in send order). Where that interval lies
  between two swaps the set in force is known, and the datagram's fate must
  be that set's verdict. Within one sender, the set a datagram's fate
  implies changes only where a swap happened, once per swap: a program that
  mixed A and B (say B's signatures with A's deny entries) would fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from controller.addresses import parse_prefix
from controller.dataplane import attach as dataplane
from controller.dataplane import counters
from controller.dataplane.reasons import Reason
from controller.lab import traffic
from controller.rules import enforce
from controller.rules.model import Match, Rule, RuleAction

from . import seqflows
from .enforcing import apply, rule, udp_losses, udp_to
from .lab import CLIENT_V4, EDGE_V4, EXTRA_V4, SETTLE_SECONDS, Breakwater, Topology

pytestmark = pytest.mark.netns

S2, S3, S4, S20 = CLIENT_V4, *EXTRA_V4  # 198.18.0.2, .3, .4, .20
DENIED_PREFIX = "198.18.0.16/28"  # holds .20

FLOWS: tuple[tuple[str, int], ...] = (
    (S2, 9001), (S2, 9002), (S2, 9003), (S2, 9004), (S3, 9005), (S4, 9005), (S20, 9005), (S2, 9005),
)
PORTS = sorted({port for _, port in FLOWS})
# Whether set A, set B passes each flow.
PASSES = {0: (False, True), 1: (True, False), 2: (False, False), 3: (True, True),
          4: (False, True), 5: (True, False), 6: (False, False), 7: (True, True)}
# The rule that matches each flow in both sets (the control flow has none).
RULE_OF = {0: "port-9001", 1: "port-9002", 2: "port-9003", 3: "port-9004", 4: "deny-3", 5: "deny-4",
           6: "deny-pfx"}
CONTROL = 7
DIFFERING = [f for f, (a, b) in PASSES.items() if a != b]
# Reasons A or B can give these flows.
REASONS = {Reason.DROP_SIGNATURE, Reason.DROP_DENY_SRC, Reason.DROP_DENY_PREFIX, Reason.PASS_SIGNATURE,
           Reason.PASS_RATE_LIMIT, Reason.PASS_DEFAULT}
# The link's own housekeeping on the veth (IPv6 duplicate address detection,
# router solicitations, MLD reports: all IPv6, while the flows are IPv4) is
# counted by the program too: ND as always-pass, MLD as PASS_DEFAULT. It is
# measured from the IPv6 per-source counters and allowed for, exactly.
ALWAYS_PASS = {Reason.PASS_ND, Reason.PASS_ARP, Reason.PASS_NON_IP}
MAX_HOUSEKEEPING = 50  # IPv6 housekeeping datagrams one test may see

SWAPS = 50
PERIOD_SECONDS = 0.06  # between one swap's end and the next one's start
CPUS = (0, 1)
FLOW_PPS = 4000.0  # per sender, all flows: 500 pps a flow
# A sender's packet budget: the swaps (about 4 s) must end before it runs out.
STREAM_SECONDS = 6.5
LEAD_SECONDS = 0.3  # traffic under A before the first swap
# At least this share of the differing flows' datagrams fall between two
# swaps, where the set in force is known: the per-datagram check is not vacuous.
MIN_DECIDABLE = 0.5


def from_src(prefix: str) -> Match:
    return Match(src=(parse_prefix(prefix),))


def rule_set(which: str) -> list[Rule]:
    """Set A or B (see the module doc)."""
    a = which == "A"
    never = RuleAction("rate_limit", pps=1_000_000)
    return [
        rule("port-9001", udp_to(EDGE_V4, 9001), "drop" if a else "monitor"),
        rule("port-9002", udp_to(EDGE_V4, 9002), "monitor" if a else "drop"),
        rule("port-9003", udp_to(EDGE_V4, 9003), "drop"),
        rule("port-9004", udp_to(EDGE_V4, 9004), "allow" if a else never),
        rule("deny-3", from_src(S3), "drop" if a else "monitor"),
        rule("deny-4", from_src(S4), "monitor" if a else "drop"),
        rule("deny-pfx", from_src(DENIED_PREFIX), "drop"),
    ]


@dataclass
class Timeline:
    """When each apply ran (monotonic ns) and which set it installed."""

    starts: list[int]
    ends: list[int]
    sets: list[int]  # 0 = A, 1 = B

    def possible(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For verdicts known to fall in [lo, hi]: the first and last apply
        whose set may have been in force."""
        first = np.searchsorted(np.array(self.ends), lo, side="right") - 1
        last = np.searchsorted(np.array(self.starts), hi, side="right") - 1
        return first, last


@dataclass
class Outcome:
    timeline: Timeline
    applied: enforce.Applied  # the last set swapped in
    sent: list[seqflows.Sent]  # per sender
    records: seqflows.Received
    losses: dict[str, int]  # the receiver's own UDP losses (must be none)


def swap_under_traffic(bw: Breakwater) -> Outcome:
    """Apply A, start the senders, swap B, A, B, ... ``SWAPS`` times, let the
    senders finish. Every child is killed on the way out."""
    topo: Topology = bw.topo
    sets = {name: rule_set(name) for name in "AB"}
    count = int(FLOW_PPS * STREAM_SECONDS / len(FLOWS))
    timeline = Timeline([], [], [])
    sink = seqflows.Sink.start(topo.edge, EDGE_V4, PORTS, max_seconds=STREAM_SECONDS + 60)
    streams: list[seqflows.Stream] = []
    try:
        with bw.maps() as maps:
            timeline.starts.append(time.monotonic_ns())
            applied = apply(maps, sets["A"])
            timeline.ends.append(time.monotonic_ns())
            timeline.sets.append(0)
            before = traffic.udp_counters(topo.edge)
            for i, cpu in enumerate(CPUS):
                streams.append(seqflows.Stream.start(topo.client, FLOWS, EDGE_V4, count, FLOW_PPS,
                                                     sender=i, max_seconds=STREAM_SECONDS + 5, cpu=cpu))
            time.sleep(LEAD_SECONDS)
            for k in range(1, SWAPS + 1):
                which = k % 2
                timeline.starts.append(time.monotonic_ns())
                applied = apply(maps, sets["AB"[which]], applied)
                timeline.ends.append(time.monotonic_ns())
                timeline.sets.append(which)
                time.sleep(PERIOD_SECONDS)
        assert all(s.running for s in streams), "a sender ended before the last swap: lengthen it"
        sent = [s.wait(STREAM_SECONDS + 30) for s in streams]
        records = sink.stop(settle=SETTLE_SECONDS)
        after = traffic.udp_counters(topo.edge)
    finally:
        for s in streams:
            s.close()
        sink.close()
    return Outcome(timeline, applied, sent, records, udp_losses(before, after))


def check_switches(timeline: Timeline, sender: int, flow: np.ndarray, arrived: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray, check: np.ndarray) -> int:
    """The set each checked datagram's fate implies (A or B: the flows
    differ) may change between two datagrams of one sender only where a
    swap to the new set overlaps the interval from the first one's send to
    the second one's latest verdict time; each swap explains one change.
    Returns the number of changes (one per swap the sender saw)."""
    order = np.nonzero(check)[0]
    passes_a = np.array([PASSES[int(f)][0] for f in flow[order]])
    implied = np.where(arrived[order] == passes_a, 0, 1)
    changes = np.nonzero(implied[1:] != implied[:-1])[0]
    k = 0
    for c in changes:
        p, q = order[c], order[c + 1]
        new = implied[c + 1]
        k += 1
        while k < len(timeline.starts) and not (
                timeline.sets[k] == new and timeline.ends[k] >= lo[p] and timeline.starts[k] <= hi[q]):
            if timeline.starts[k] > hi[q]:
                k = len(timeline.starts)
                break
            k += 1
        if k >= len(timeline.starts):
            pytest.fail(f"sender {sender}: datagrams {p} and {q} (send order) imply sets "
                        f"{'AB'[implied[c]]} then {'AB'[new]} with no swap to {'AB'[new]} between them")
    return len(changes)


NEVER = np.iinfo(np.int64).max  # "no arrival (yet)"


@dataclass
class Fates:
    """One sender's datagrams in send order (index ``seq * len(FLOWS) + flow``)."""

    sender: int
    flow: np.ndarray
    sent: np.ndarray  # bool: sendto succeeded
    arrived: np.ndarray  # bool
    lo: np.ndarray  # ns: the verdict came after this (the send time)
    hi: np.ndarray  # ns: ... and before this (NEVER: unknown)

    @classmethod
    def of(cls, fs: seqflows.Sent, got: dict[str, np.ndarray]) -> Fates:
        n = len(FLOWS)
        t_send = np.frombuffer(fs.t_send, dtype=np.int64)
        mine = got["sender"] == fs.sender
        idx = got["seq"][mine] * n + got["flow"][mine]
        assert (idx < len(t_send)).all() and (t_send[idx] == got["t_send"][mine]).all(), \
            "a datagram arrived that was never sent"
        arrived = np.zeros(len(t_send), dtype=bool)
        arrived[idx] = True
        t_recv = np.full(len(t_send), NEVER)
        t_recv[idx] = got["t_recv"][mine]
        # One sender's datagrams are judged in send order, so the verdict on
        # datagram i came before the arrival of any later datagram that arrived.
        hi = np.minimum.accumulate(t_recv[::-1])[::-1]
        return cls(fs.sender, np.arange(len(t_send)) % n, t_send >= 0, arrived, t_send, hi)

    def count(self, f: int) -> tuple[int, int]:
        """(sent, arrived) of flow ``f``."""
        mine = self.flow == f
        return int((self.sent & mine).sum()), int((self.arrived & mine).sum())


def check_in_time(timeline: Timeline, fates: Fates) -> tuple[int, int, int]:
    """Every datagram of a differing flow whose verdict interval lies between
    two swaps met the set then in force, and the set changes once per swap.
    Returns (datagrams checkable, of which decided, set changes seen)."""
    check = fates.sent & np.isin(fates.flow, DIFFERING) & (fates.hi < NEVER)
    first, last = timeline.possible(fates.lo, fates.hi)
    known = check & (first == last)
    sets = np.array(timeline.sets)
    want = np.array([PASSES[int(f)][int(s)] for f, s in zip(fates.flow[known], sets[first[known]],
                                                          strict=True)], dtype=bool)
    bad = np.nonzero(known)[0][fates.arrived[known] != want]
    if len(bad):
        i = int(bad[0])
        pytest.fail(f"sender {fates.sender} seq {i // len(FLOWS)} flow {i % len(FLOWS)}: "
                    f"arrived={bool(fates.arrived[i])} while set {'AB'[sets[first[i]]]} was in force "
                    f"(verdict in [{fates.lo[i]}, {fates.hi[i]}] ns, apply {first[i]}); "
                    f"{len(bad)} datagrams like it")
    changes = check_switches(timeline, fates.sender, fates.flow, fates.arrived, fates.lo, fates.hi, check)
    widths = (fates.hi - fates.lo)[check]
    print(f"sender {fates.sender}: verdict interval median {np.median(widths) / 1e6:.2f} ms, "
          f"p99 {np.percentile(widths, 99) / 1e6:.2f} ms")
    return int(check.sum()), int(known.sum()), changes


def test_every_packet_is_judged_by_one_of_the_two_sets(bw: Breakwater) -> None:
    out = swap_under_traffic(bw)
    with bw.maps() as maps:
        rules = counters.rule_totals(maps)
        reasons = counters.reason_totals(maps)
        gen = dataplane.read_config(maps).gen
        sources = counters.read_sources(maps)
    assert gen == out.applied.gen == SWAPS + 1
    applied_ms = [(e - s) / 1e6 for s, e in zip(out.timeline.starts, out.timeline.ends, strict=True)]

    assert out.records.short == 0
    assert not out.losses, f"the receiver lost datagrams itself: {out.losses}"
    rows = np.frombuffer(out.records.records, dtype=np.int64).reshape(-1, len(seqflows.FIELDS))
    got = {name: rows[:, i] for i, name in enumerate(seqflows.FIELDS)}
    # Every datagram arrived on the port and from the source of its flow, once.
    addresses = np.array(out.records.addresses)
    for f, (src, port) in enumerate(FLOWS):
        mine = got["flow"] == f
        assert set(addresses[got["src"][mine]]) <= {src} and set(got["port"][mine]) <= {port}, f
    keys = (got["sender"] << 40) + got["seq"] * len(FLOWS) + got["flow"]
    assert len(np.unique(keys)) == len(keys), "a datagram arrived twice"

    fates = [Fates.of(fs, got) for fs in out.sent]
    sent = {f: sum(x.count(f)[0] for x in fates) for f in range(len(FLOWS))}
    delivered = {f: sum(x.count(f)[1] for x in fates) for f in range(len(FLOWS))}
    timed = [check_in_time(out.timeline, x) for x in fates]
    checkable, decided = sum(t[0] for t in timed), sum(t[1] for t in timed)
    print(f"swaps: {SWAPS} applies, {np.mean(applied_ms[1:]):.1f} ms mean, {max(applied_ms[1:]):.1f} ms "
          f"max; per flow sent {sent}, delivered {delivered}; differing-flow datagrams {checkable}, "
          f"{decided} between swaps ({decided / max(checkable, 1):.0%}), none wrong; "
          f"set changes seen per sender {[t[2] for t in timed]}")
    print(f"rules (packets, dropped): { {k: (v.packets, v.dropped) for k, v in rules.items()} }; "
          f"reasons: { {r.label: t.packets for r, t in reasons.items() if t.packets} }")

    # The control flow: the receiver loses nothing by itself.
    assert delivered[CONTROL] == sent[CONTROL]
    for f, (a, b) in PASSES.items():
        if a and b:
            assert delivered[f] == sent[f], f"flow {f} passed by both sets lost datagrams"
        if not a and not b:
            assert delivered[f] == 0, f"flow {f} dropped by both sets got through"
    # Both fates were seen on every differing flow, and the timed check had work.
    for f in DIFFERING:
        assert 0 < delivered[f] < sent[f], f
    assert decided >= MIN_DECIDABLE * checkable, "too few datagrams between swaps to check"
    # Each sender ran through every swap, and saw each one take effect.
    assert [t[2] for t in timed] == [SWAPS] * len(fates)

    # Rule counters: each flow's rule matched all of it, and dropped what did not arrive.
    for f, rid in RULE_OF.items():
        t = rules[out.applied.slots.get(rid)]
        assert t.packets == sent[f], (rid, t, sent[f])
        assert delivered[f] + t.dropped == sent[f], (rid, t, delivered[f], sent[f])
        assert t.rate_limited == 0

    # Reasons: only those A or B give the flows, adding up to what was sent,
    # plus the link's IPv6 housekeeping (its sources are all IPv6: the flows are IPv4).
    lab_v4 = {np.bytes_(parse_prefix(a).exact_key()) for a in (S2, S3, S4, S20)}
    assert all(k in lab_v4 for k in sources.v4_keys), "IPv4 from outside the flows"
    housekeeping = int(sources.v6["packets"].sum())
    assert housekeeping <= MAX_HOUSEKEEPING
    nd = reasons[Reason.PASS_ND].packets
    seen = {r: t.packets for r, t in reasons.items() if t.packets and r not in ALWAYS_PASS}
    assert set(seen) <= REASONS, f"reasons neither set gives: {set(seen) - REASONS}"
    assert sum(seen.values()) == sum(sent.values()) + housekeeping - nd
    dropped = {f: sent[f] - delivered[f] for f in range(len(FLOWS))}
    assert seen.get(Reason.DROP_SIGNATURE, 0) == dropped[0] + dropped[1] + dropped[2]
    assert seen.get(Reason.DROP_DENY_SRC, 0) == dropped[4] + dropped[5]
    assert seen.get(Reason.DROP_DENY_PREFIX, 0) == dropped[6] == sent[6]
    assert seen.get(Reason.PASS_SIGNATURE, 0) + seen.get(Reason.PASS_RATE_LIMIT, 0) == sent[3]
    default_passes = delivered[0] + delivered[1] + delivered[4] + delivered[5] + delivered[CONTROL]
    assert seen.get(Reason.PASS_DEFAULT, 0) == default_passes + housekeeping - nd
