"""Every attack vector against the real agent process, end to end.

One test per vector (the table :data:`CASES`): ``python -m controller.cli
agent`` protects bw0 (victim 198.18.0.1, protected 198.18.0.0/24); a
legitimate client (198.18.0.2) keeps sending UDP to the victim the whole
time; a flood of crafted frames (``controller.lab.frames``, sent over AF_PACKET
by ``traffic.RawFlood``: sources anywhere in 198.18.0.0/15, spoofed) hits
the same victim. Each test checks, in order:

1. the agent reports the vector (``breakwater events --json``: a
   ``started`` event of that vector on the victim, with rules applied) and
   puts in the automatic rules the planner is meant to choose for it (kind,
   scope, source prefixes, signature);
2. after the rules are in force the data plane drops most of the flood
   (reason counters, the legitimate source's own counters taken out), and
   a measured legitimate stream sent then arrives at least 99% at the
   receiver;
3. the agent is SIGKILLed: the flood is still dropped with no agent at all;
4. a new agent adopts the program and reloads the rules; it detects the
   attack again and takes the rules back; they are in force at every poll
   on the way and the flood is still dropped;
5. the flood stops: the attack ends and every automatic rule is gone within
   the end intervals plus the grace TTL.

No check is on wall-clock speed: every wait is bounded, and the rates are
far from the thresholds: floods 3-4x over the floors, each bot 2.5x over
the offender rate and the legitimate client at half of it, many-source
proxies at 20 pps against a "moderate" bound of 50, the spoofed flood's
new sources 10x over the churn threshold.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from controller.dataplane.reasons import Reason
from controller.lab import frames, traffic
from controller.rules.model import Rule

from .agents import AgentProc, Agents, AgentSettings, Window, wait_for
from .lab import CLIENT_IFNAME, CLIENT_V4, EDGE_V4, Topology

pytestmark = pytest.mark.netns

VICTIM = EDGE_V4  # 198.18.0.1, inside the protected 198.18.0.0/24
SLUG = VICTIM.replace(".", "-")
LEGIT = CLIENT_V4  # 198.18.0.2
LEGIT_PORT = 5201  # the client's stream for the whole test
MEASURE_PORT = 5202  # the same client's measured stream, sent while the rules are in force
FLOOD_PORT = 80

INTERVAL = 0.5
START_INTERVALS = 2
END_INTERVALS = 2
RULE_TTL = 8.0
GRACE_TTL = 3.0  # bridges a restart: the new agent needs 1 + START_INTERVALS intervals to see the attack
FLOOR_PPS = 3000  # every vector's start threshold (no baseline is learned this fast)
CEILING_PPS = 500  # victim-wide limits (spoofed floods, reflection per port)
OFFENDER_PPS = 300  # a source is named an offender from this rate; bots send 2.5x, the client 1/2
ESCALATE_AFTER = 4

SETTINGS = AgentSettings(
    interval=INTERVAL,
    detect={
        "start_intervals": START_INTERVALS,
        "end_intervals": END_INTERVALS,
        "window": 1.5,
        "source_pps": 50_000.0,  # no single source here is a source_rate attack
        "offender_pps": OFFENDER_PPS,
        "many_min_sources": 200,
        "many_max_source_pps": 50.0,
        "many_newcomer_lead": 1.0,
        **{v: {"pps": FLOOR_PPS} for v in ("syn", "ack", "udp", "icmp", "gre", "fragment", "reflection",
                                           "many_source")},
    },
    mitigate={
        "rule_ttl": RULE_TTL,
        "grace_ttl": GRACE_TTL,
        "ceiling_pps": CEILING_PPS,
        "reflection_pps": CEILING_PPS,
        "escalate_after": ESCALATE_AFTER,
        # the per-source limit of a many-source flood applies to every client of the
        # victim, the legitimate one too: keep it above that client's rate
        "proxy_per_source_pps": 1000,
    },
)

# The legitimate client: a stream for the whole test, plus a measured one
# (same address, its own port and receiver) once the rules are in force.
LEGIT_PPS = 50.0
LEGIT_SECONDS = 40.0  # longer than any run; stopped at the end
MEASURE_PPS = 100.0
MEASURE_COUNT = 300
MIN_DELIVERY = 0.99
LEAD_SECONDS = 3.0  # the client is established (> many_newcomer_lead), the detector a window old

FLOOD_SECONDS = 40.0  # the flood's own bound; the test stops it earlier
DETECT_SECONDS = 10.0  # bound on detection and rule application
DEAD_SECONDS = 1.0  # how long the flood is watched with no agent
REDETECT_SECONDS = 10.0
EXPIRY_SECONDS = (END_INTERVALS + 4) * INTERVAL + GRACE_TTL + 2.0
SPOOFED = 100_000  # random sources of the spoofed flood: each comes back after 10 s, long after `window`

Addresses = frames.Addresses
Builder = Callable[[str, str, Addresses], list[bytes]]


def bots(*networks: str, per_network: int) -> Callable[[], Addresses]:
    """``per_network`` consecutive hosts (from .1) of each network."""
    def make() -> Addresses:
        return np.concatenate([frames.addresses(n, per_network, offset=1) for n in networks])
    return make


def spoofed(count: int) -> Callable[[], Addresses]:
    """``count`` distinct random addresses of 198.18.0.0/15 outside the lab's /24."""
    return lambda: frames.addresses("198.18.0.0/15", count, skip=("198.18.0.0/24",), seed=20240812)


def one_per(networks: Sequence[str]) -> Callable[[], Addresses]:
    return bots(*networks, per_network=1)


def _udp(sport: int) -> Builder:
    return lambda smac, dmac, src: frames.udp_frames(smac, dmac, src, VICTIM, FLOOD_PORT, sport=sport)


def _tcp(flags: str) -> Builder:
    return lambda smac, dmac, src: frames.tcp_frames(smac, dmac, src, VICTIM, FLOOD_PORT, flags=flags)


def _icmp(smac: str, dmac: str, src: Addresses) -> list[bytes]:
    return frames.icmp_frames(smac, dmac, src, VICTIM)


def _gre(smac: str, dmac: str, src: Addresses) -> list[bytes]:
    return frames.gre_frames(smac, dmac, src, VICTIM)


def _fragments(smac: str, dmac: str, src: Addresses) -> list[bytes]:
    return frames.fragment_frames(smac, dmac, src, VICTIM)


@dataclass(frozen=True)
class Expected:
    """One automatic rule the planner must put in force for the attack."""

    id: str
    """Its id (source lists are per victim and vector: ``auto-src-<vector>-<victim>``),
    or the start of it when it ends in ``-``."""
    kind: str
    scope: str | None = None
    src: frozenset[str] | None = None
    """Exactly these source prefixes (a source-only drop rule)."""
    protocol: int | None = None
    flags: str | None = None
    """The TCP flags test, as the rule's match writes it (``syn,!ack``)."""

    def find(self, rules: Sequence[Rule]) -> Rule | None:
        for r in rules:
            if r.id == self.id or (self.id.endswith("-") and r.id.startswith(self.id)):
                return r
        return None

    def check(self, rule: Rule) -> None:
        action, match = rule.action, rule.match
        assert action.kind == self.kind, (rule.id, action)
        if self.scope is not None:
            assert action.scope == self.scope, (rule.id, action)
        if self.src is not None:
            assert match.is_src_only, rule
            assert {str(p) for p in match.src} == self.src, (rule.id, sorted(str(p) for p in match.src))
        else:
            assert [str(p) for p in match.dst] in ([VICTIM], [f"{VICTIM}/32"]), rule
            assert not match.src, rule
        if self.protocol is not None:
            assert match.protocol == self.protocol, rule
        if self.flags is not None:
            assert match.to_dict().get("tcp_flags") == self.flags, rule.match.to_dict()


@dataclass(frozen=True)
class Case:
    name: str
    vector: str
    build: Builder
    sources: Callable[[], Addresses]
    pps: float
    expect: tuple[Expected, ...]
    drop_reasons: frozenset[Reason]
    """The reasons the flood's drops must come under, once the rules are in force."""
    profile: str | None = None
    min_share: float = 0.95
    """Share of the flood dropped once the rules are in force (a rate limit lets its rate through)."""
    detect: Mapping[str, object] = field(default_factory=dict)
    escalates: bool = False
    """The rate limit becomes a drop while the attack lasts."""


def _hosts(addrs: Addresses) -> frozenset[str]:
    return frozenset(frames.dotted(a) for a in addrs)


def _nets(*networks: str) -> frozenset[str]:
    return frozenset(str(ipaddress.ip_network(n)) for n in networks)


SYN_BOTS = [f"198.18.{16 + i}.0/24" for i in range(8)]  # 2 per /24: no aggregate (K = 8)
ICMP_BOTS = [f"198.19.{16 + i}.0/24" for i in range(16)]
GRE_BOTS = [f"198.19.{40 + i}.0/24" for i in range(8)]
FRAG_BOTS = [f"198.19.{60 + i}.0/24" for i in range(16)]
DENY = frozenset({Reason.DROP_DENY_SRC})
DENY_PREFIX = frozenset({Reason.DROP_DENY_PREFIX})
SPOOFED_SYN_RULE = Expected(f"auto-syn-{SLUG}", "rate_limit", scope="aggregate", protocol=6, flags="syn,!ack")

CASES = [
    # concentrated floods, 16 bots at 750 pps each: the bots' /32s are dropped ...
    Case("syn", "syn", _tcp("S"), bots(*SYN_BOTS, per_network=2), 12_000,
         (Expected(f"auto-src-syn-{SLUG}", "drop",
                   src=_hosts(bots(*SYN_BOTS, per_network=2)())),), DENY, "concentrated"),
    # ... or, K = 8 or more of them in one /24, the /24 (the aggregation path)
    Case("ack", "ack", _tcp("A"), bots("198.18.32.0/24", per_network=16), 12_000,
         (Expected(f"auto-src-ack-{SLUG}", "drop", src=_nets("198.18.32.0/24")),), DENY_PREFIX,
         "concentrated"),
    Case("udp", "udp", _udp(frames.SPORT), bots("198.19.1.0/24", "198.19.2.0/24", per_network=8), 12_000,
         (Expected(f"auto-src-udp-{SLUG}", "drop", src=_nets("198.19.1.0/24", "198.19.2.0/24")),),
         DENY_PREFIX, "concentrated"),
    Case("icmp", "icmp", _icmp, one_per(ICMP_BOTS), 12_000,
         (Expected(f"auto-src-icmp-{SLUG}", "drop", src=_hosts(one_per(ICMP_BOTS)())),), DENY,
         "concentrated"),
    Case("gre", "gre", _gre, bots(*GRE_BOTS, per_network=2), 12_000,
         (Expected(f"auto-src-gre-{SLUG}", "drop", src=_hosts(bots(*GRE_BOTS, per_network=2)())),),
         DENY, "concentrated"),
    Case("fragment", "fragment", _fragments, one_per(FRAG_BOTS), 12_000,
         (Expected(f"auto-src-frag-{SLUG}", "drop", src=_hosts(one_per(FRAG_BOTS)())),), DENY,
         "concentrated"),
    # NTP answers (source port 123) from 64 reflectors: UDP from the reflection
    # ports to the victim is rate-limited per port, then escalated to a drop
    Case("reflection", "reflection", _udp(123), bots("198.19.100.0/24", per_network=64), 12_000,
         (Expected(f"auto-refl-{SLUG}-ntp", "rate_limit", protocol=17),
          Expected(f"auto-refl-{SLUG}-fragments", "rate_limit", protocol=17)),
         frozenset({Reason.DROP_RATE_LIMIT, Reason.DROP_SIGNATURE}), min_share=0.9, escalates=True),
    # HTTP-proxy style: 500 established-looking TCP clients (ACK+PSH) at 20 pps
    # each; their ACKs stay under the ACK floor, as proxies' requests do next to
    # a web server's ACK baseline. The newcomers are dropped, aggregated per /24.
    Case("many_source", "many_source", _tcp("PA"), bots("198.19.128.0/23", per_network=500), 10_000,
         (Expected(f"auto-many-{SLUG}", "rate_limit", scope="per_source"),
          Expected(f"auto-src-many-{SLUG}", "drop", src=_nets("198.19.128.0/24", "198.19.129.0/24"))),
         DENY_PREFIX, "diffuse", detect={"ack": {"pps": 40_000}}),
    # random spoofed SYNs, every packet a new source: an aggregate limit on the victim
    Case("spoofed_syn", "syn", _tcp("S"), spoofed(SPOOFED), 10_000, (SPOOFED_SYN_RULE,),
         frozenset({Reason.DROP_RATE_LIMIT}), "spoofed", min_share=0.85),
]


def _matching(rules: Sequence[Rule], expect: Sequence[Expected]) -> list[Rule]:
    """The rules meeting each expectation, or [] unless all are there."""
    found = [e.find(rules) for e in expect]
    return [r for r in found if r is not None] if all(found) else []


def _victim(e: Mapping[str, Any]) -> bool:
    return e.get("victim") in (VICTIM, f"{VICTIM}/32")


def _started(events: Sequence[Mapping[str, Any]], vector: str, after: int = 0) -> list[Mapping[str, Any]]:
    return [e for e in events if e["seq"] > after and e["kind"] == "started" and e["vector"] == vector
            and _victim(e) and e["rules"]]


def _tail(agent: AgentProc) -> str:
    return agent.stderr.read_text()[-4000:]


@pytest.fixture
def agent_settings() -> AgentSettings:
    return SETTINGS


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vector_detected_mitigated_survives_restart_and_expires(
        case: Case, agents: Agents, topology: Topology) -> None:
    agents.settings = SETTINGS.merged(detect=case.detect)
    client_mac, edge_mac = topology.macs()
    sources = case.sources()
    batch = case.build(client_mac, edge_mac, sources)
    for frame in batch[:: max(1, len(batch) // 64)]:
        frames.verify(frame)

    agent = agents.start()
    sink = traffic.UdpSink.start(topology.edge, VICTIM, LEGIT_PORT, max_seconds=LEGIT_SECONDS + 30)
    measure_sink = traffic.UdpSink.start(topology.edge, VICTIM, MEASURE_PORT, max_seconds=LEGIT_SECONDS + 30)
    legit = traffic.UdpStream.start(topology.client, [LEGIT], VICTIM, LEGIT_PORT,
                                    count=int(LEGIT_PPS * LEGIT_SECONDS), pps=LEGIT_PPS,
                                    max_seconds=LEGIT_SECONDS)
    flood: traffic.RawFlood | None = None
    t_start = time.monotonic()
    try:
        time.sleep(LEAD_SECONDS)
        flood = traffic.RawFlood.start(topology.client, CLIENT_IFNAME, batch, int(case.pps * FLOOD_SECONDS),
                                       pps=case.pps, max_seconds=FLOOD_SECONDS)
        t_flood = time.monotonic()

        # 1. detected, and the planned rules in force
        rules = wait_for(lambda: _matching(agents.auto_rules(), case.expect), DETECT_SECONDS)
        assert rules, f"no {[e.id for e in case.expect]} in {agents.auto_rules()}:\n{_tail(agent)}"
        t_rules = time.monotonic()
        for expected, rule in zip(case.expect, rules, strict=True):
            if case.escalates and rule.action.kind == "drop":
                continue  # escalated already: checked below
            expected.check(rule)
        at_rules = agents.counts(LEGIT)
        events = agents.events()
        started = _started(events, case.vector)
        assert started, events
        assert {e["vector"] for e in events if e["kind"] == "started"} == {case.vector}, events
        if case.profile is not None:
            assert started[0]["profile"] == case.profile, started
        assert {r.id for r in rules} <= set(started[0]["rules"]) | {r.id for r in agents.auto_rules()}
        assert flood.running, "the flood ended before the rules came: the test proves nothing"

        # 2. the flood dropped, the legitimate client served
        measure_sent = traffic.send_udp(topology.client, [LEGIT], VICTIM, MEASURE_PORT, MEASURE_COUNT,
                                        pps=MEASURE_PPS, max_seconds=MEASURE_COUNT / MEASURE_PPS + 10)[LEGIT]
        after_measure = agents.counts(LEGIT)
        assert flood.running, "the flood ended during the measurement"
        mitigated = Window.between(at_rules, after_measure)
        if case.escalates:
            escalated = wait_for(lambda: [r for r in agents.auto_rules() if r.id == case.expect[0].id
                                          and r.action.kind == "drop"], ESCALATE_AFTER * INTERVAL + 5)
            assert escalated, f"{case.expect[0].id} not escalated:\n{agents.auto_rules()}"
        in_force = {r.id for r in agents.auto_rules()}

        # 3. kill -9: the rules stay in force with no agent at all
        agent.kill()
        dead_from = agents.counts(LEGIT)
        time.sleep(DEAD_SECONDS)
        dead = Window.between(dead_from, agents.counts(LEGIT))

        # 4. restart: rules reloaded, the attack seen again, the rules taken back
        seq = max((e["seq"] for e in agents.stored_events()), default=0)
        agent = agents.start()
        ready = agent.event("agent_ready")
        assert ready is not None
        reloaded = set(ready["auto_rules"]["bw0"])
        assert in_force <= reloaded, (in_force, reloaded)
        gaps: list[str] = []

        def retaken() -> bool:
            now = {r.id for r in agents.auto_rules()}
            if not in_force <= now:
                gaps.append(f"{time.monotonic() - t_start:.2f}s: {sorted(in_force - now)} missing")
            return bool(_started(agents.stored_events(), case.vector, after=seq))

        assert wait_for(retaken, REDETECT_SECONDS), f"attack not seen again after a restart:\n{_tail(agent)}"
        assert not gaps, f"rules out of force during the restart: {gaps}"
        restarted = Window.between(dead_from, agents.counts(LEGIT))
        assert flood.running, "the flood ended before the restarted agent took the rules back"
        assert _matching(agents.auto_rules(), case.expect)

        # 5. the flood stops: the attack ends, every automatic rule expires on time
        flood.close()
        t_stop = time.monotonic()
        gone = wait_for(lambda: not agents.auto_rules(), EXPIRY_SECONDS)
        expiry = time.monotonic() - t_stop
        assert gone, f"rules still in force {expiry:.1f} s after the flood:\n{agents.auto_rules()}"
        assert not [r for r in agents.applied_rules() if r.origin == "auto"]
        ended = [e for e in agents.events() if e["seq"] > seq and e["kind"] == "ended"
                 and e["vector"] == case.vector]
        assert ended, agents.events()
        legit.close()
        received = sink.stop(settle=0.3).get(LEGIT, 0)
        measured = measure_sink.stop(settle=0.3).get(LEGIT, 0)
        client = agents.source_counters(LEGIT)
    finally:
        if flood is not None:
            flood.close()
        legit.close()
        sink.close()
        measure_sink.close()

    delivery = measured / measure_sent
    # the whole stream: what reached bw0 from the client, less the measured stream, arrived
    assert client is not None, "the client's own counters are gone (LRU)"
    stream_seen = client["packets"] - measure_sent
    stream_delivery = received / stream_seen
    print(f"VECTOR {case.name}: {case.vector} ({started[0]['profile']}) detected "
          f"{t_rules - t_flood:.2f} s after the flood started, rules "
          f"{', '.join(f'{r.id} {r.action.kind}' for r in rules)}; "
          f"mitigated: {mitigated}; legit measured {measured}/{measure_sent} ({100 * delivery:.2f}%), "
          f"whole stream {received}/{stream_seen} ({100 * stream_delivery:.2f}%); "
          f"agent dead: {dead}; through the restart: {restarted}; "
          f"rules gone {expiry:.2f} s after the flood; test {time.monotonic() - t_start:.1f} s")
    assert mitigated.share >= case.min_share, str(mitigated)
    assert {r for r in mitigated.by_reason if r.is_drop or r.is_malformed} <= case.drop_reasons, \
        str(mitigated)
    assert mitigated.legit_dropped == 0 and restarted.legit_dropped == 0, (mitigated, restarted)
    assert dead.share >= case.min_share, f"flood not dropped with no agent: {dead}"
    assert restarted.share >= case.min_share, f"flood not dropped through the restart: {restarted}"
    assert delivery >= MIN_DELIVERY, (measured, measure_sent)
    assert client["drops"] == 0, f"the data plane dropped the legitimate client: {client}"
    assert stream_delivery >= MIN_DELIVERY, (received, stream_seen)
