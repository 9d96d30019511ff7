"""Atomic rule-set swaps (controller.dataplane.swap through controller.rules.enforce.apply
and controller.dataplane.entries) against the real program.

Rule counters survive a swap for rules that survive it, start at zero for
new rules and are zeroed for removed ones; exact deny entries keep their
hit counters; a swap that fails leaves the previous set enforced as it was
(maps, verdicts and generation); every swap moves the generation by one;
policy edits carry the signatures over.
"""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest
from scapy.layers.inet import TCP, UDP

from controller.addresses import parse_prefix
from controller.dataplane import abi, counters, swap
from controller.dataplane import entries as policy
from controller.dataplane.maps import BPF_F_MMAPABLE, MAP_SPECS
from controller.dataplane.reasons import Reason
from controller.errors import InputError, MapFullError
from controller.rules.model import Rule

from .conftest import TINY, XDP_DROP, XDP_PASS, DataPlane
from .packets import SRC6, frame, ip4, ip6
from .rulesets import Enforced, enforce_rules, rule

pytestmark = pytest.mark.bpf

R = Reason
POLICY_MAPS = tuple(s.name for s in MAP_SPECS if s.role == "policy")
ZERO = counters.RuleTotals(0, 0, 0, 0)

DNS = frame(ip4(), UDP(sport=5353, dport=53))
WEB = frame(ip4(), TCP(dport=80, flags="S"))
NTP = frame(ip4(), UDP(sport=5353, dport=123))
DENIED4 = "198.18.0.20"
OTHER_UDP = UDP(sport=5353, dport=9)  # no signature of these sets matches it but watch
FROM_DENIED = frame(ip4(src=DENIED4), OTHER_UDP)
FROM_PREFIX = frame(ip4(src="198.18.9.1"), OTHER_UDP)
FROM_PARTNER = frame(ip4(src="192.0.2.5"), UDP(dport=53))
FROM_DENIED6 = frame(ip6(), OTHER_UDP)


def set_a() -> list[Rule]:
    return [
        rule("dns", "drop", 10, protocol="udp", dport=53),
        rule("web", "drop", 20, protocol="tcp", dport=80),
        rule("watch", "monitor", 5, protocol="udp"),
        rule("denied", "drop", src=[DENIED4, SRC6]),
        rule("range", "drop", src=["198.18.9.0/24"]),
        rule("partner", "allow", src=["192.0.2.0/24"]),
    ]


def set_b() -> list[Rule]:
    """A without web and range, with ntp; the rest unchanged."""
    keep = [r for r in set_a() if r.id not in ("web", "range")]
    return [*keep, rule("ntp", "drop", 15, protocol="udp", dport=123)]


def reason_of(dp: DataPlane, packet: bytes) -> tuple[int, Reason]:
    """Run one packet; its action and the one reason counted."""
    before = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    retval = dp.run(packet)
    after = {r: t.packets for r, t in counters.reason_totals(dp.maps).items()}
    moved = [r for r in after if after[r] != before[r]]
    assert len(moved) == 1, moved
    return retval, moved[0]


A_VERDICTS = {
    "dns": (DNS, (XDP_DROP, R.DROP_SIGNATURE)),
    "web": (WEB, (XDP_DROP, R.DROP_SIGNATURE)),
    "ntp": (NTP, (XDP_PASS, R.PASS_DEFAULT)),
    "denied": (FROM_DENIED, (XDP_DROP, R.DROP_DENY_SRC)),
    "denied6": (FROM_DENIED6, (XDP_DROP, R.DROP_DENY_SRC)),
    "range": (FROM_PREFIX, (XDP_DROP, R.DROP_DENY_PREFIX)),
    "partner": (FROM_PARTNER, (XDP_PASS, R.PASS_ALLOW)),
}


def verdicts(dp: DataPlane) -> dict[str, tuple[int, Reason]]:
    return {name: reason_of(dp, p) for name, (p, _) in A_VERDICTS.items()}


def deny_hits(dp: DataPlane) -> dict[str, tuple[int, int]]:
    return {str(e.prefix): (e.hits, e.hit_bytes) for e in policy.entries(dp.maps, "deny")
            if e.prefix.is_exact}


def _digest(dp: DataPlane, name: str) -> str:
    m = dp.maps[name]
    if m.spec.flags & BPF_F_MMAPABLE:  # the whole array in one read
        return hashlib.sha256(m.read_mmap(0, m.max_entries)).hexdigest()
    keys, values, n = m.read_all()
    ksz, vsz = m.spec.key_size, m.spec.full_value_size()
    pairs = sorted((keys[i * ksz:(i + 1) * ksz], values[i * vsz:(i + 1) * vsz]) for i in range(n))
    return hashlib.sha256(b"".join(k + v for k, v in pairs)).hexdigest()


def policy_state(dp: DataPlane) -> dict[str, object]:
    """Every policy map (both slots), and the config word."""
    cfg = dp.config()
    return {**{name: _digest(dp, name) for name in POLICY_MAPS}, "flags": cfg.flags, "gen": cfg.gen}


def trie_slots(dp: DataPlane) -> dict[str, set[int]]:
    """Which slots each slotted LPM trie holds entries for (chal_v4 has no slot byte)."""
    out = {}
    for s in MAP_SPECS:
        if s.type_name == "lpm_trie" and s.key in (abi.LpmV4, abi.LpmV6):
            keys = dp.maps[s.name].keys()  # a PinnedMap, not a dict
            out[s.name] = {k[4] for k in keys}
    return out


# -- counters across A -> B -> A ------------------------------------------------------------
def test_counters_across_swaps(dp: DataPlane) -> None:
    gen0 = dp.config().gen
    a1 = enforce_rules(dp.maps, set_a())
    assert a1.outcome.swap is not None and a1.outcome.swap.gen == gen0 + 1 == dp.config().gen
    assert verdicts(dp) == {k: v for k, (_, v) in A_VERDICTS.items()}
    for _ in range(2):
        dp.run(DNS)
        dp.run(FROM_DENIED)
    n_dns, n_den = len(DNS), len(FROM_DENIED)
    dns_a = a1.totals(dp.maps, "dns")
    assert dns_a == counters.RuleTotals(3, 3 * n_dns, 3, 0)
    watch_a = a1.totals(dp.maps, "watch")
    assert watch_a.packets == 3 + 1  # dns x3, ntp (passes, but watch sees every udp packet)
    assert a1.totals(dp.maps, "web").packets == 1
    assert a1.totals(dp.maps, "range").packets == 1
    denied_a = a1.totals(dp.maps, "denied")
    hits_a = deny_hits(dp)
    assert hits_a == {DENIED4: (3, 3 * n_den), SRC6: (1, len(FROM_DENIED6))}

    # A -> B: web and range go, ntp comes.
    b = enforce_rules(dp.maps, set_b(), a1)
    assert b.outcome.swap is not None and b.outcome.swap.gen == gen0 + 2 == dp.config().gen
    for rid in ("dns", "watch", "denied", "partner"):
        assert b.slot(rid) == a1.slot(rid), f"{rid} kept its slot"
        assert b.totals(dp.maps, rid) == a1.totals(dp.maps, rid), f"{rid} kept its counters"
    assert b.slot("ntp") not in (a1.slot("web"), a1.slot("range")), "a slot freed by this compile"
    assert b.totals(dp.maps, "ntp") == ZERO
    freed = {a1.slot("web"), a1.slot("range")}
    assert freed <= b.outcome.compiled.freed_slots
    assert not freed & set(counters.rule_totals(dp.maps)), "removed rules' slots are zeroed"
    assert dp.maps["rl_agg"].lookup(a1.slot("web").to_bytes(4, "little")) == bytes(16)
    assert deny_hits(dp) == hits_a, "surviving exact entries keep their hits"

    # B enforces B: web passes, range passes, ntp drops; survivors go on counting.
    assert reason_of(dp, WEB) == (XDP_PASS, R.PASS_DEFAULT)
    assert reason_of(dp, FROM_PREFIX) == (XDP_PASS, R.PASS_DEFAULT)  # watch counts it now
    assert reason_of(dp, NTP) == (XDP_DROP, R.DROP_SIGNATURE)
    assert reason_of(dp, DNS) == (XDP_DROP, R.DROP_SIGNATURE)
    assert reason_of(dp, FROM_DENIED) == (XDP_DROP, R.DROP_DENY_SRC)
    assert b.totals(dp.maps, "dns") == counters.RuleTotals(4, 4 * n_dns, 4, 0)
    assert b.totals(dp.maps, "ntp") == counters.RuleTotals(1, len(NTP), 1, 0)
    assert b.totals(dp.maps, "denied") == counters.RuleTotals(
        denied_a.packets + 1, denied_a.bytes + n_den, denied_a.dropped + 1, 0)
    assert deny_hits(dp)[DENIED4] == (4, 4 * n_den)

    # B -> A: web and range come back as new rules (from zero), ntp goes.
    a2 = enforce_rules(dp.maps, set_a(), b)
    assert a2.outcome.swap is not None and a2.outcome.swap.gen == gen0 + 3 == dp.config().gen
    assert a2.totals(dp.maps, "web") == ZERO
    assert a2.totals(dp.maps, "range") == ZERO
    assert b.slot("ntp") not in set(counters.rule_totals(dp.maps))
    assert a2.totals(dp.maps, "dns") == counters.RuleTotals(4, 4 * n_dns, 4, 0)
    assert verdicts(dp) == {k: v for k, (_, v) in A_VERDICTS.items()}
    assert a2.totals(dp.maps, "web") == counters.RuleTotals(1, len(WEB), 1, 0)
    assert deny_hits(dp)[DENIED4] == (5, 5 * n_den)


def test_each_swap_moves_the_generation_by_one(dp: DataPlane) -> None:
    gen = dp.config().gen
    prev: Enforced | None = None
    for rules in (set_a(), set_a(), set_b(), [], set_a()):
        prev = enforce_rules(dp.maps, rules, prev)
        gen += 1
        assert prev.outcome.swap is not None and prev.outcome.swap.gen == gen == dp.config().gen
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix("203.0.113.9"), 0)])
    assert dp.config().gen == gen + 1
    assert policy.remove(dp.maps, "deny", [parse_prefix("203.0.113.9")]) == 1
    assert dp.config().gen == gen + 2
    # Changes that change nothing do not swap.
    assert policy.remove(dp.maps, "deny", [parse_prefix("203.0.113.9")]) == 0
    assert dp.config().gen == gen + 2


def test_old_slot_is_cleared_after_the_flip(dp: DataPlane) -> None:
    """Once the new generation is in force, the tries hold only its slot and
    the exact maps only its entries."""
    a = enforce_rules(dp.maps, [*set_a(), rule("sig-src", "drop", protocol="udp",
                                               src=["198.18.0.0/16", "2001:db8::/32"],
                                               dst=["198.19.0.0/16", "2001:db8:ffff::/48"])])
    slot = dp.config().gen & 1
    held = {name: slots for name, slots in trie_slots(dp).items() if slots}
    assert held == {name: {slot} for name in ("allow_v4", "deny_pfx_v4", "sig_src_v4", "sig_src_v6",
                                              "sig_dst_v4", "sig_dst_v6")}
    enforce_rules(dp.maps, set_b(), a)
    slot = dp.config().gen & 1
    held = {name: slots for name, slots in trie_slots(dp).items() if slots}
    assert held == {"allow_v4": {slot}}
    assert dp.maps["deny_v4"].count() == 1 and dp.maps["deny_v6"].count() == 1
    assert dp.sig_meta(slot).count == 3  # dns, ntp, watch
    assert dp.config().flags == abi.TRIE_FLAGS["allow_v4"]


B_VERDICTS = {
    **{k: v for k, (_, v) in A_VERDICTS.items()},
    "web": (XDP_PASS, R.PASS_DEFAULT),
    "ntp": (XDP_DROP, R.DROP_SIGNATURE),
    "range": (XDP_PASS, R.PASS_DEFAULT),
}


def test_packets_see_one_generation_whole(dp: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packets run while the swap has written the idle slot and the pending
    exact entries (just before the flip) are judged by the old set whole;
    packets run in the grace period after the flip, before the old slot is
    cleared, by the new set whole. An exact entry moving from one rule to
    another counts for the old rule before the flip and the new one after."""
    a = enforce_rules(dp.maps, set_a())
    moved = [*_without(set_b(), "denied"), rule("denied", "drop", src=[SRC6]),
             rule("moved", "drop", src=[DENIED4])]
    seen: dict[str, tuple[int, dict[str, tuple[int, Reason]], dict[int, int]]] = {}

    def probe(phase: str) -> None:
        if phase in seen:
            return
        before = {k: v.packets for k, v in counters.rule_totals(dp.maps).items()}
        got = verdicts(dp)
        after = {k: v.packets for k, v in counters.rule_totals(dp.maps).items()}
        seen[phase] = (dp.config().gen, got, {k: after[k] - before.get(k, 0) for k in after
                                              if after[k] != before.get(k, 0)})

    real_zero = swap._zero_rules

    def zero_then_probe(maps: object, slots: list[int]) -> None:
        real_zero(dp.maps, slots)
        probe("staged")

    def sleep_then_probe(seconds: float) -> None:
        time.sleep(seconds)
        probe("flipped")

    monkeypatch.setattr(swap, "_zero_rules", zero_then_probe)
    monkeypatch.setattr(swap, "time", SimpleNamespace(perf_counter=time.perf_counter,
                                                      sleep=sleep_then_probe))
    gen = dp.config().gen
    b = enforce_rules(dp.maps, moved, a)
    assert set(seen) == {"staged", "flipped"}
    staged_gen, staged, staged_hits = seen["staged"]
    flipped_gen, flipped, flipped_hits = seen["flipped"]
    assert (staged_gen, flipped_gen) == (gen, gen + 1)
    assert staged == {k: v for k, (_, v) in A_VERDICTS.items()}
    assert flipped == B_VERDICTS
    # FROM_DENIED: on A's "denied" before the flip, on B's "moved" after it.
    assert staged_hits[a.slot("denied")] == 2  # DENIED4 and SRC6
    assert b.slot("moved") not in staged_hits
    assert flipped_hits[b.slot("moved")] == 1
    assert flipped_hits[b.slot("denied")] == 1  # SRC6 only
    assert flipped_hits[b.slot("ntp")] == 1


def test_exact_entry_moving_to_another_rule_keeps_its_hits(dp: DataPlane) -> None:
    a = enforce_rules(dp.maps, [rule("old", "drop", src=[DENIED4])])
    for _ in range(3):
        dp.run(FROM_DENIED)
    n = len(FROM_DENIED)
    b = enforce_rules(dp.maps, [rule("new", "drop", src=[DENIED4])], a)
    assert deny_hits(dp) == {DENIED4: (3, 3 * n)}
    assert reason_of(dp, FROM_DENIED) == (XDP_DROP, R.DROP_DENY_SRC)
    assert deny_hits(dp) == {DENIED4: (4, 4 * n)}
    assert b.totals(dp.maps, "new") == counters.RuleTotals(1, n, 1, 0)
    assert a.slot("old") not in set(counters.rule_totals(dp.maps))
    entries = policy.entries(dp.maps, "deny")
    assert [(str(e.prefix), e.rule_id) for e in entries] == [(DENIED4, b.slot("new"))]


# -- a failed swap changes nothing ----------------------------------------------------------
def _too_many_signatures() -> list[Rule]:
    return [rule(f"s{i:03d}", "drop", protocol="udp", dport=i) for i in range(abi.MAX_SIGS + 1)]


def _check_unchanged(dp: DataPlane, before: dict[str, object], a: Enforced) -> None:
    assert policy_state(dp) == before
    totals = counters.rule_totals(dp.maps)
    assert verdicts(dp) == {k: v for k, (_, v) in A_VERDICTS.items()}
    after = counters.rule_totals(dp.maps)
    assert after[a.slot("dns")].packets == totals[a.slot("dns")].packets + 1


def test_too_many_signatures_changes_nothing(dp: DataPlane) -> None:
    a = enforce_rules(dp.maps, set_a())
    verdicts(dp)
    before = policy_state(dp)
    with pytest.raises(InputError, match=rf"{abi.MAX_SIGS + 1} rules compile to signatures"):
        enforce_rules(dp.maps, _too_many_signatures(), a)
    _check_unchanged(dp, before, a)


def test_a_set_of_max_signatures_fits(dp: DataPlane) -> None:
    rules = _too_many_signatures()[: abi.MAX_SIGS]
    enforced = enforce_rules(dp.maps, rules)
    assert dp.sig_meta(dp.config().gen & 1).count == abi.MAX_SIGS
    assert reason_of(dp, frame(ip4(), UDP(dport=abi.MAX_SIGS - 1))) == (XDP_DROP, R.DROP_SIGNATURE)
    assert enforced.totals(dp.maps, f"s{abi.MAX_SIGS - 1:03d}").dropped == 1


def _hosts(n: int, base: int = 0xC6120000) -> list[str]:  # 198.18.0.0
    return [".".join(str((base + 256 + i) >> s & 0xFF) for s in (24, 16, 8, 0)) for i in range(n)]


def _without(rules: list[Rule], *ids: str) -> list[Rule]:
    return [r for r in rules if r.id not in ids]


FAILING_SETS = {
    # One rule with one exact entry too many for the 64-entry deny_v4.
    "deny_v4 full": lambda: [*set_b(), rule("flood", "drop", src=_hosts(TINY + 1))],
    # deny_v4 staged first (DENIED4 to be removed, until = next gen), then
    # deny_v6 overflows: the deny_v4 change must be undone.
    "deny_v6 full after deny_v4 was staged": lambda: [
        *_without(set_b(), "denied"),
        rule("flood6", "drop", src=[f"2001:db8:1::{i:x}" for i in range(TINY + 1)])],
    # Prefixes: the 64-entry deny_pfx_v4 trie holds A's one, so 64 more do not fit.
    "deny_pfx_v4 full": lambda: [*set_b(), rule("nets", "drop",
                                                src=[f"198.20.{i}.0/24" for i in range(TINY)])],
    # A signature with more source prefixes than the 64-entry signature trie.
    "sig_src_v4 full": lambda: [*set_b(), rule("wide", "drop", protocol="udp",
                                               src=[f"198.21.{i}.0/24" for i in range(TINY + 1)])],
    # sig_src_v4 fits, then sig_dst_v6 overflows: the v4 signature prefixes are undone.
    "sig_dst_v6 full after sig_src_v4": lambda: [
        *set_b(), rule("wide", "drop", protocol="udp", src=[f"198.21.{i}.0/24" for i in range(8)]),
        rule("wide6", "drop", protocol="udp", dst=[f"2001:db8:{i:x}::/48" for i in range(TINY + 1)])],
    # Allow entries past the 64-entry allow_v6 trie.
    "allow_v6 full": lambda: [*set_b(), rule("ok", "allow",
                                             src=[f"2001:db8:{i:x}::/48" for i in range(TINY + 1)])],
}


@pytest.mark.parametrize("what", list(FAILING_SETS))
def test_full_map_changes_nothing(tiny: DataPlane, what: str) -> None:
    a = enforce_rules(tiny.maps, set_a())
    verdicts(tiny)
    before = policy_state(tiny)
    with pytest.raises(MapFullError, match=r"is full \(64 entries\)"):
        enforce_rules(tiny.maps, FAILING_SETS[what](), a)
    _check_unchanged(tiny, before, a)
    # And the same maps take the next set that fits.
    b = enforce_rules(tiny.maps, set_b(), a)
    assert b.outcome.swap is not None and b.outcome.swap.gen == tiny.config().gen
    assert reason_of(tiny, NTP) == (XDP_DROP, R.DROP_SIGNATURE)


def test_too_many_rule_slots_changes_nothing(tiny: DataPlane) -> None:
    a = enforce_rules(tiny.maps, set_a())
    verdicts(tiny)
    before = policy_state(tiny)
    many = [rule(f"d{i:02d}", "drop", src=[h]) for i, h in enumerate(_hosts(TINY))]
    with pytest.raises(InputError, match="rule slots exhausted"):
        enforce_rules(tiny.maps, many, a)
    _check_unchanged(tiny, before, a)


# -- policy edits carry the signatures over --------------------------------------------------------
def test_policy_add_keeps_the_signatures(dp: DataPlane) -> None:
    a = enforce_rules(dp.maps, set_a())
    dp.run(DNS)
    slot = dp.config().gen & 1
    meta = bytes(dp.sig_meta(slot))
    extra = policy.Entry(parse_prefix("203.0.113.0/24"), a.slot("range"))
    assert policy.add(dp.maps, "deny", [extra]).added == 1
    new_slot = dp.config().gen & 1
    assert new_slot != slot
    assert bytes(dp.sig_meta(new_slot)) == meta, "the signature table was carried over"
    assert verdicts(dp) == {k: v for k, (_, v) in A_VERDICTS.items()}
    assert reason_of(dp, frame(ip4(src="203.0.113.7"), UDP())) == (XDP_DROP, R.DROP_DENY_PREFIX)
    assert a.totals(dp.maps, "dns") == counters.RuleTotals(2, 2 * len(DNS), 2, 0)
    # The rule set's own entries are untouched by the edit.
    assert deny_hits(dp) == {DENIED4: (1, len(FROM_DENIED)), SRC6: (1, len(FROM_DENIED6))}

    assert policy.remove(dp.maps, "deny", [parse_prefix(DENIED4)]) == 1
    assert reason_of(dp, FROM_DENIED) == (XDP_PASS, R.PASS_DEFAULT)
    assert reason_of(dp, DNS) == (XDP_DROP, R.DROP_SIGNATURE)
    assert reason_of(dp, WEB) == (XDP_DROP, R.DROP_SIGNATURE)
    assert a.totals(dp.maps, "dns") == counters.RuleTotals(3, 3 * len(DNS), 3, 0)


def test_rate_limit_bucket_survives_a_swap(dp: DataPlane) -> None:
    """A rule that survives keeps its bucket: a drained rate limit stays drained."""
    rl = rule("rl", {"kind": "rate_limit", "pps": 1, "burst_packets": 1}, protocol="udp")
    a = enforce_rules(dp.maps, [rl])
    assert reason_of(dp, DNS) == (XDP_PASS, R.PASS_RATE_LIMIT)
    assert reason_of(dp, DNS) == (XDP_DROP, R.DROP_RATE_LIMIT)
    enforce_rules(dp.maps, [rl, rule("web", "drop", protocol="tcp")], a)
    assert reason_of(dp, DNS) == (XDP_DROP, R.DROP_RATE_LIMIT)


@pytest.mark.parametrize("scope", [
    "aggregate",
    pytest.param("per_source"),
])
def test_new_rule_on_a_reused_slot_starts_with_a_full_bucket(dp: DataPlane, scope: str) -> None:
    limit = {"kind": "rate_limit", "pps": 1, "burst_packets": 1, "scope": scope}
    a = enforce_rules(dp.maps, [rule("old", limit, protocol="udp")])
    assert reason_of(dp, DNS) == (XDP_PASS, R.PASS_RATE_LIMIT)
    assert reason_of(dp, DNS) == (XDP_DROP, R.DROP_RATE_LIMIT)
    b = enforce_rules(dp.maps, [], a)  # old goes, its slot is freed
    c = enforce_rules(dp.maps, [rule("new", limit, protocol="udp")], b)
    assert c.slot("new") == a.slot("old"), "the freed slot is reused by the next compile"
    assert c.totals(dp.maps, "new") == ZERO
    assert reason_of(dp, DNS) == (XDP_PASS, R.PASS_RATE_LIMIT)
