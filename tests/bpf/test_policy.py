"""controller.dataplane.entries against real pinned maps: round trips, rule-id updates,
all-or-nothing adds (full maps, bad input) and batches past the 1024-key
``contains`` threshold."""

from __future__ import annotations

import contextlib
import ipaddress
import threading

import pytest
from scapy.layers.inet import UDP

from controller.addresses import Prefix, parse_prefix
from controller.dataplane import (
    abi,
    counters,
    swap,
)
from controller.dataplane import (
    attach as dataplane,
)
from controller.dataplane import (
    entries as policy,
)
from controller.dataplane import (
    pinned as bpfmap,
)
from controller.errors import InputError, MapFullError

from .conftest import TINY, XDP_DROP, XDP_PASS, DataPlane
from .packets import SRC4, SRC6, frame, ip4, ip6

pytestmark = pytest.mark.bpf

# Past PinnedMap.contains' per-key threshold (1024), so the one-read path runs.
BATCH = 5000

POLICY_MAPS = ("allow_v4", "allow_v6", "deny_v4", "deny_v6", "deny_pfx_v4", "deny_pfx_v6")


def entry(prefix: str, rule_id: int = 0, management: bool = False) -> policy.Entry:
    return policy.Entry(parse_prefix(prefix), rule_id, management)


def v4_hosts(n: int, base: str = "198.18.0.0") -> list[str]:
    start = int(ipaddress.IPv4Address(base))
    return [str(ipaddress.IPv4Address(start + i)) for i in range(n)]


def listing(dp: DataPlane, which: policy.List) -> list[tuple[str, int, bool, int, int]]:
    return [(str(e.prefix), e.rule_id, e.management, e.hits, e.hit_bytes)
            for e in policy.entries(dp.maps, which)]


def snapshot(dp: DataPlane) -> tuple[object, ...]:
    """Everything an add could change: every policy map's raw contents (both
    slots of the tries), the flags and the generation."""
    raw = tuple(sorted(_pairs(dp, name)) for name in POLICY_MAPS)
    cfg = dp.config()
    return (*raw, cfg.flags, cfg.gen)


def _pairs(dp: DataPlane, name: str) -> list[tuple[bytes, bytes]]:
    m = dp.maps[name]
    keys, values, n = m.read_all()
    ksz, vsz = m.spec.key_size, m.spec.value_size
    return [(keys[i * ksz:(i + 1) * ksz], values[i * vsz:(i + 1) * vsz]) for i in range(n)]


# -- round trips -------------------------------------------------------------------
def test_deny_round_trip(dp: DataPlane) -> None:
    items = [entry(SRC4, 1), entry(SRC6, 2), entry("198.18.4.0/22", 3), entry("2001:db8:4::/48", 4)]
    assert policy.add(dp.maps, "deny", items) == policy.ApplyResult(4, 0, 0)
    # Exact entries in the hashes, prefixes in the tries.
    assert {n: dp.maps[n].count() for n in POLICY_MAPS} == {
        "allow_v4": 0, "allow_v6": 0, "deny_v4": 1, "deny_v6": 1, "deny_pfx_v4": 1, "deny_pfx_v6": 1}
    assert listing(dp, "deny") == [
        (SRC4, 1, False, 0, 0),
        ("198.18.4.0/22", 3, False, 0, 0),
        (SRC6, 2, False, 0, 0),
        ("2001:db8:4::/48", 4, False, 0, 0),
    ]
    assert policy.entries(dp.maps, "allow") == []
    assert policy.add(dp.maps, "deny", items) == policy.ApplyResult(0, 0, 4)

    assert policy.remove(dp.maps, "deny", [e.prefix for e in items]) == 4
    assert policy.entries(dp.maps, "deny") == []
    assert policy.remove(dp.maps, "deny", [e.prefix for e in items]) == 0
    assert dp.config().flags == 0


def test_allow_round_trip_with_management(dp: DataPlane) -> None:
    items = [entry("198.18.0.0/24", 5), entry("203.0.113.7", 6, management=True),
             entry("2001:db8::/32", 7, management=True), entry(SRC6, 8)]
    assert policy.add(dp.maps, "allow", items) == policy.ApplyResult(4, 0, 0)
    assert listing(dp, "allow") == [
        ("198.18.0.0/24", 5, False, 0, 0),
        ("203.0.113.7", 6, True, 0, 0),
        ("2001:db8::/32", 7, True, 0, 0),
        (SRC6, 8, False, 0, 0),
    ]
    # Allow entries, exact or not, all live in the tries.
    assert dp.maps["allow_v4"].count() == 2 and dp.maps["allow_v6"].count() == 2
    assert dp.config().flags == abi.TRIE_FLAGS["allow_v4"] | abi.TRIE_FLAGS["allow_v6"]
    # Turning management off is an update of the same prefix.
    assert policy.add(dp.maps, "allow", [entry("203.0.113.7", 6)]) == policy.ApplyResult(0, 1, 0)
    assert ("203.0.113.7", 6, False, 0, 0) in listing(dp, "allow")
    assert policy.remove(dp.maps, "allow", [e.prefix for e in items]) == 4
    assert dp.config().flags == 0


def test_repeated_prefix_keeps_the_last_entry(dp: DataPlane) -> None:
    policy.add(dp.maps, "deny", [entry(SRC4, 1), entry(SRC4, 2)])
    assert listing(dp, "deny") == [(SRC4, 2, False, 0, 0)]


def test_repeated_prefix_counts_once(dp: DataPlane) -> None:
    assert policy.add(dp.maps, "deny", [entry(SRC4, 1), entry(SRC4, 2)]) == policy.ApplyResult(1, 0, 0)


def test_remove_skips_absent_entries(dp: DataPlane) -> None:
    policy.add(dp.maps, "deny", [entry(SRC4, 1), entry("198.18.8.0/24", 2)])
    absent = [parse_prefix("198.18.0.99"), parse_prefix("198.18.9.0/24")]
    removed = policy.remove(dp.maps, "deny", [absent[0], parse_prefix(SRC4), absent[1]])
    assert removed == 1
    assert listing(dp, "deny") == [("198.18.8.0/24", 2, False, 0, 0)]


def test_remove_with_repeated_prefixes(dp: DataPlane) -> None:
    """A prefix named twice in one remove (a blocklist file with a duplicate
    line, two rules sharing an address) must not stop the rest being removed."""
    items = [entry("198.18.0.1", 1), entry("198.18.0.2", 1), entry("198.18.0.3", 1),
             entry("198.18.0.0/24", 2), entry("198.18.1.0/24", 2)]
    policy.add(dp.maps, "deny", items)
    prefixes = [parse_prefix(t) for t in ("198.18.0.1", "198.18.0.1", "198.18.0.2", "198.18.0.3",
                                          "198.18.0.0/24", "198.18.0.0/24", "198.18.1.0/24")]
    removed = policy.remove(dp.maps, "deny", prefixes)
    assert listing(dp, "deny") == []
    assert removed == len(items)


# -- rule-id updates keep the hit counters -----------------------------------------
@pytest.mark.parametrize(("address", "packet"), [
    pytest.param(SRC4, frame(ip4(), UDP()), id="v4"),
    pytest.param(SRC6, frame(ip6(), UDP()), id="v6"),
])
def test_rule_id_update_keeps_hit_counters(dp: DataPlane, address: str, packet: bytes) -> None:
    policy.add(dp.maps, "deny", [entry(address, 1)])
    for _ in range(3):
        assert dp.run(packet) == XDP_DROP
    n = len(packet)
    assert listing(dp, "deny") == [(address, 1, False, 3, 3 * n)]

    assert policy.add(dp.maps, "deny", [entry(address, 2)]) == policy.ApplyResult(0, 1, 0)
    assert listing(dp, "deny") == [(address, 2, False, 3, 3 * n)]

    assert dp.run(packet) == XDP_DROP
    assert listing(dp, "deny") == [(address, 2, False, 4, 4 * n)]
    assert counters.rule_totals(dp.maps) == {
        1: counters.RuleTotals(3, 3 * n, 3, 0), 2: counters.RuleTotals(1, n, 1, 0)}


# -- all or nothing ----------------------------------------------------------------
def test_invalid_rule_id_changes_nothing(dp: DataPlane) -> None:
    policy.add(dp.maps, "deny", [entry(SRC4, 1), entry("198.18.8.0/24", 2)])
    before = snapshot(dp)
    max_rules = dp.maps["rule_stats"].max_entries
    for bad in (max_rules, -1):
        batch = [entry(SRC4, 9), entry("2001:db8::/32", 3), entry("198.18.9.0/24", bad)]
        with pytest.raises(InputError, match=rf"entries\[2\]\.rule_id: {bad} is out of range"):
            policy.add(dp.maps, "deny", batch)
        assert snapshot(dp) == before


def test_management_deny_entry_is_refused(dp: DataPlane) -> None:
    before = snapshot(dp)
    with pytest.raises(InputError, match=r"entries\[1\]\.management"):
        policy.add(dp.maps, "deny", [entry(SRC4, 1), entry("198.18.8.0/24", 2, management=True)])
    assert snapshot(dp) == before


def test_full_exact_map_changes_nothing(tiny: DataPlane) -> None:
    hosts = v4_hosts(TINY + 1)
    assert policy.add(tiny.maps, "deny", [entry(h, 1) for h in hosts[:TINY]]).added == TINY
    before = snapshot(tiny)
    failures = bpfmap.FAILURES[("deny_v4", "insert")]

    # A prefix (an empty trie: its bit must end clear again), a rule-id change
    # on an existing entry, and one exact entry too many.
    batch = [entry("198.19.0.0/24", 2), entry(hosts[0], 3), entry(hosts[TINY], 4)]
    with pytest.raises(MapFullError, match=r"deny_v4 is full \(64 entries\).*nothing was changed"):
        policy.add(tiny.maps, "deny", batch)
    assert snapshot(tiny) == before
    assert tiny.config().flags & abi.TRIE_FLAGS["deny_pfx_v4"] == 0
    assert bpfmap.FAILURES[("deny_v4", "insert")] == failures + 1

    # The data plane agrees: the prefix was not left behind.
    assert tiny.run(frame(ip4(src="198.19.0.1"), UDP())) == XDP_PASS


def test_full_exact_map_in_one_batch(tiny: DataPlane) -> None:
    """A batch larger than the map from empty: the partial batch is rolled back."""
    with pytest.raises(MapFullError, match=r"1 of 65 new entries did not fit"):
        policy.add(tiny.maps, "deny", [entry(h, 1) for h in v4_hosts(TINY + 1)])
    assert tiny.maps.is_empty("deny_v4")


def test_full_trie_changes_nothing(tiny: DataPlane) -> None:
    prefixes = [f"198.18.{i}.0/24" for i in range(TINY + 1)]
    assert policy.add(tiny.maps, "deny", [entry(p, 1) for p in prefixes[:TINY]]).added == TINY
    before = snapshot(tiny)
    with pytest.raises(MapFullError, match=r"deny_pfx_v4 is full"):
        policy.add(tiny.maps, "deny", [entry(SRC6, 5), entry(prefixes[TINY], 2)])
    assert snapshot(tiny) == before  # the v6 exact entry was rolled back too
    assert tiny.config().flags & abi.TRIE_FLAGS["deny_pfx_v4"]  # the trie is not empty


def test_full_trie_from_empty_clears_its_bit(tiny: DataPlane) -> None:
    with pytest.raises(MapFullError):
        policy.add(tiny.maps, "allow", [entry(f"2001:db8:{i:x}::/48", 1) for i in range(TINY + 1)])
    assert tiny.maps.is_empty("allow_v6")
    assert tiny.config().flags == 0


# -- large batches -----------------------------------------------------------------
def test_batch_of_exact_entries(dp: DataPlane) -> None:
    hosts = v4_hosts(BATCH)
    assert policy.add(dp.maps, "deny", [entry(h, 1) for h in hosts]) == policy.ApplyResult(BATCH, 0, 0)
    assert dp.maps["deny_v4"].count() == BATCH
    # Same again: every key found present through the one-read path.
    assert policy.add(dp.maps, "deny", [entry(h, 1) for h in hosts]) == policy.ApplyResult(0, 0, BATCH)
    # Half the rule ids change, plus 100 new entries.
    more = v4_hosts(100, "198.19.0.0")
    batch = [entry(h, 2 if i % 2 else 1) for i, h in enumerate(hosts)] + [entry(h, 3) for h in more]
    assert policy.add(dp.maps, "deny", batch) == policy.ApplyResult(100, BATCH // 2, BATCH // 2)
    listed = {str(e.prefix): e.rule_id for e in policy.entries(dp.maps, "deny")}
    assert listed == {str(e.prefix): e.rule_id for e in batch}

    # The data plane enforces the last entry of the batch.
    assert dp.run(frame(ip4(src=hosts[-1]), UDP())) == XDP_DROP
    n = len(frame(ip4(), UDP()))
    assert counters.rule_totals(dp.maps) == {2: counters.RuleTotals(1, n, 1, 0)}

    removed = policy.remove(dp.maps, "deny", [parse_prefix(h) for h in hosts + more + v4_hosts(
        50, "198.19.128.0")])
    assert removed == BATCH + 100
    assert dp.maps.is_empty("deny_v4")


def test_batch_of_prefixes(dp: DataPlane) -> None:
    """The tries have no batch syscalls: the per-element paths, past 1024 keys."""
    base = int(ipaddress.IPv6Address("2001:db8::"))
    prefixes = [Prefix(ipaddress.IPv6Network((base + (i << 80), 48))) for i in range(BATCH)]
    items = [policy.Entry(p, 7) for p in prefixes]
    assert policy.add(dp.maps, "deny", items) == policy.ApplyResult(BATCH, 0, 0)
    assert policy.add(dp.maps, "deny", items) == policy.ApplyResult(0, 0, BATCH)
    assert dp.maps["deny_pfx_v6"].count() == BATCH
    assert dp.config().flags == abi.TRIE_FLAGS["deny_pfx_v6"]
    src = str(prefixes[-1].network.network_address + 1)
    assert dp.run(frame(ip6(src=src), UDP())) == XDP_DROP
    assert policy.remove(dp.maps, "deny", prefixes) == BATCH
    assert dp.config().flags == 0


# -- concurrent writers ----------------------------------------------------------
def test_concurrent_adds_from_two_map_sets_both_survive(dp: DataPlane,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers (two MapSets on one pin directory, as two processes would
    have) add different entries at once: both must end up enforced. The
    read is slowed down until both writers have read, if the locking lets
    them; with the lock held from read to swap the second waits instead."""
    real_read = swap.read_image
    both_read = threading.Barrier(2)

    def read_then_wait(maps: bpfmap.MapSet) -> swap.Image:
        image = real_read(maps)
        # Broken: the other writer is waiting for the lock, as it should.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=LOCK_WAIT_S)
        return image

    monkeypatch.setattr(swap, "read_image", read_then_wait)
    other = bpfmap.MapSet.open(dp.pin_dir, dp.sizes)
    try:
        workers = [threading.Thread(target=policy.add, args=(m, "deny", [entry(a, 1)]))
                   for m, a in ((dp.maps, SRC4), (other, SRC6))]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
    finally:
        other.close()
    assert sorted(e[0] for e in listing(dp, "deny")) == sorted([SRC4, SRC6])


# -- config word shared by trie bits and run-time switches --------------------------
LOCK_WAIT_S = 0.3


def test_set_flags_waits_for_policy_writers(dp: DataPlane) -> None:
    """struct bw_config.flags holds the trie bits (written by policy under the
    pin directory's lock) and the monitor/malformed switches. set_flags rewrites
    the whole word, so it must take the same lock: otherwise a toggle racing a
    first prefix insert writes back the old word, the trie bit is lost while
    the trie holds entries, and the program stops enforcing those prefixes."""
    done = threading.Event()

    def toggle() -> None:
        dataplane.set_flags(dp.maps, monitor=True)
        done.set()

    with dp.maps.locked():  # a policy writer mid-operation
        worker = threading.Thread(target=toggle)
        worker.start()
        finished_under_lock = done.wait(LOCK_WAIT_S)
    worker.join(5)
    assert done.is_set()
    assert not finished_under_lock, "set_flags rewrote the config word while a policy writer held the lock"
