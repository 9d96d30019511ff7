"""Real packets through Breakwater: UDP over a veth into the edge namespace.

Each test attaches a fresh program (native and generic XDP), installs a
policy, sends a bounded number of datagrams from several client addresses
and checks what the receiver got against what the program counted: per
source (``src_v4``/``src_v6``), per exact deny entry, per reason and per
action. Only UDP from the lab's own addresses is counted; the fixtures keep
ARP and ND off the link (see conftest.py).
"""

from __future__ import annotations

import pytest

from controller.addresses import parse_prefix
from controller.dataplane import attach as dataplane
from controller.dataplane import counters
from controller.dataplane import entries as policy
from controller.dataplane.pinned import MapSet
from controller.dataplane.reasons import Action, Reason

from .lab import CLIENT_V4, CLIENT_V6, EDGE_V6, EXTRA_V4, EXTRA_V6, Breakwater

pytestmark = pytest.mark.netns

PASSING = (CLIENT_V4, EXTRA_V4[1])  # 198.18.0.2, 198.18.0.4
DENIED_EXACT = EXTRA_V4[0]  # 198.18.0.3
DENIED_PREFIX = "198.18.0.16/28"
IN_DENIED_PREFIX = EXTRA_V4[2]  # 198.18.0.20
ALLOWED_PREFIX = "198.18.0.0/24"
DENIED_V6 = EXTRA_V6[0]  # 2001:db8::3


def deny(maps: MapSet, *prefixes: str) -> None:
    policy.add(maps, "deny", [policy.Entry(parse_prefix(p)) for p in prefixes])


def deny_hits(maps: MapSet) -> dict[str, int]:
    """Packets counted on each exact deny entry, by address."""
    return {str(e.prefix): e.hits for e in policy.entries(maps, "deny") if e.prefix.is_exact}


def source(maps: MapSet, address: str) -> dict[str, int]:
    found = counters.read_sources(maps).lookup(address)
    assert found is not None, f"no counters for source {address}"
    return found


def assert_counted_as_passed(maps: MapSet, sent: dict[str, int], *addresses: str) -> None:
    """The source table saw exactly the datagrams sent, all UDP, none dropped."""
    for addr in addresses:
        c = source(maps, addr)
        assert (c["packets"], c["udp"], c["drops"]) == (sent[addr], sent[addr], 0), addr


def test_attached_in_requested_mode(bw: Breakwater, mode: str) -> None:
    state = bw.state()
    assert state.mode == mode
    assert state.prog_id == bw.result.prog_id != 0
    assert (bw.result.action, bw.result.mode) == ("attached", mode)
    status = dataplane.status("bw0", pin_root=bw.pin_root, netns=bw.topo.edge)
    assert status.ours and not status.monitor


def test_denied_sources_are_dropped(bw: Breakwater) -> None:
    with bw.maps() as maps:
        deny(maps, DENIED_EXACT, DENIED_PREFIX)

    sources = [*PASSING, DENIED_EXACT, IN_DENIED_PREFIX]
    sent, got = bw.topo.exchange(sources)

    assert got.get(DENIED_EXACT, 0) == 0
    assert got.get(IN_DENIED_PREFIX, 0) == 0
    assert {a: got.get(a, 0) for a in PASSING} == {a: sent[a] for a in PASSING}
    with bw.maps() as maps:
        assert_counted_as_passed(maps, sent, *PASSING)
        # An exact deny counts on its entry; a prefix deny on the source.
        assert deny_hits(maps)[DENIED_EXACT] == sent[DENIED_EXACT]
        pfx = source(maps, IN_DENIED_PREFIX)
        assert (pfx["packets"], pfx["drops"]) == (sent[IN_DENIED_PREFIX],) * 2
        reasons = counters.reason_totals(maps)
        actions = counters.action_totals(maps)
    assert reasons[Reason.DROP_DENY_SRC].packets == sent[DENIED_EXACT]
    assert reasons[Reason.DROP_DENY_PREFIX].packets == sent[IN_DENIED_PREFIX]
    assert actions[Action.DROP].packets == sent[DENIED_EXACT] + sent[IN_DENIED_PREFIX]
    assert actions[Action.MONITOR].packets == 0


def test_allowlist_beats_deny(bw: Breakwater) -> None:
    with bw.maps() as maps:
        policy.add(maps, "allow", [policy.Entry(parse_prefix(ALLOWED_PREFIX))])
        deny(maps, DENIED_EXACT, DENIED_PREFIX)

    sources = [CLIENT_V4, DENIED_EXACT, IN_DENIED_PREFIX]
    sent, got = bw.topo.exchange(sources)

    assert {a: got.get(a, 0) for a in sources} == sent
    with bw.maps() as maps:
        assert_counted_as_passed(maps, sent, *sources)
        assert deny_hits(maps)[DENIED_EXACT] == 0
        reasons = counters.reason_totals(maps)
        actions = counters.action_totals(maps)
    assert reasons[Reason.PASS_ALLOW].packets == sum(sent.values())
    assert reasons[Reason.DROP_DENY_SRC].packets == 0
    assert reasons[Reason.DROP_DENY_PREFIX].packets == 0
    assert actions[Action.DROP].packets == 0


def test_monitor_mode_drops_nothing(bw: Breakwater) -> None:
    with bw.maps() as maps:
        dataplane.set_flags(maps, monitor=True)
        deny(maps, DENIED_EXACT, DENIED_PREFIX)

    sources = [CLIENT_V4, DENIED_EXACT, IN_DENIED_PREFIX]
    sent, got = bw.topo.exchange(sources)

    assert {a: got.get(a, 0) for a in sources} == sent
    would_drop = sent[DENIED_EXACT] + sent[IN_DENIED_PREFIX]
    with bw.maps() as maps:
        assert_counted_as_passed(maps, sent, CLIENT_V4)
        assert deny_hits(maps)[DENIED_EXACT] == sent[DENIED_EXACT]
        # "drops" counts would-drop packets in monitor mode.
        assert source(maps, IN_DENIED_PREFIX)["drops"] == sent[IN_DENIED_PREFIX]
        reasons = counters.reason_totals(maps)
        actions = counters.action_totals(maps)
    assert actions[Action.MONITOR].packets == would_drop
    assert actions[Action.DROP].packets == 0
    assert reasons[Reason.DROP_DENY_SRC].packets == sent[DENIED_EXACT]
    assert reasons[Reason.DROP_DENY_PREFIX].packets == sent[IN_DENIED_PREFIX]


def test_monitor_to_enforce_at_run_time(bw: Breakwater) -> None:
    prog_id = bw.state().prog_id
    with bw.maps() as maps:
        dataplane.set_flags(maps, monitor=True)
        deny(maps, DENIED_EXACT)
    sources = [CLIENT_V4, DENIED_EXACT]

    sent1, got1 = bw.topo.exchange(sources)
    assert {a: got1.get(a, 0) for a in sources} == sent1

    with bw.maps() as maps:
        dataplane.set_flags(maps, monitor=False)
    sent2, got2 = bw.topo.exchange(sources)
    assert got2.get(DENIED_EXACT, 0) == 0
    assert got2.get(CLIENT_V4, 0) == sent2[CLIENT_V4]

    assert bw.state().prog_id == prog_id  # no reload: the same program switched
    with bw.maps() as maps:
        assert deny_hits(maps)[DENIED_EXACT] == sent1[DENIED_EXACT] + sent2[DENIED_EXACT]
        assert source(maps, CLIENT_V4)["packets"] == sent1[CLIENT_V4] + sent2[CLIENT_V4]
        actions = counters.action_totals(maps)
    assert actions[Action.MONITOR].packets == sent1[DENIED_EXACT]
    assert actions[Action.DROP].packets == sent2[DENIED_EXACT]


def test_ipv6_exact_deny(bw: Breakwater) -> None:
    with bw.maps() as maps:
        deny(maps, DENIED_V6)

    sources = [CLIENT_V6, DENIED_V6]
    sent, got = bw.topo.exchange(sources, dst=EDGE_V6)

    assert got.get(DENIED_V6, 0) == 0
    assert got.get(CLIENT_V6, 0) == sent[CLIENT_V6]
    with bw.maps() as maps:
        assert_counted_as_passed(maps, sent, CLIENT_V6)
        assert deny_hits(maps)[DENIED_V6] == sent[DENIED_V6]
        reasons = counters.reason_totals(maps)
    assert reasons[Reason.DROP_DENY_SRC].packets == sent[DENIED_V6]
