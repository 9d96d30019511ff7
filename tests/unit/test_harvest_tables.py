"""controller.detection.harvest's per-interval deltas against a plain-Python reference:
keys in any order, new keys, vanished keys, counters the LRU re-created; and
the action, reason and rule counters' increases by the same step."""

from __future__ import annotations

import numpy as np
import pytest

from controller.dataplane import abi
from controller.dataplane.counters import RuleTotals, Totals
from controller.dataplane.reasons import Action, Reason
from controller.detection import harvest
from controller.detection.harvest import CounterTotals
from controller.detection.samples import SOURCE_DTYPE, SOURCE_FIELDS, address_from_words


def _table(keys: np.ndarray, rows: np.ndarray) -> harvest.Table:
    width = 4 if keys.dtype == np.uint32 else 16
    packed = keys.astype(">u4").view("V4") if width == 4 else keys
    return harvest.Table.of(np.asarray(packed), rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deltas_match_a_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    pool = rng.choice(2**32, 2 * n, replace=False).astype(np.uint32)
    prev_keys = pool[:n]
    cur_keys = np.concatenate([pool[n // 2 : n], pool[n : n + n // 2]])  # half kept, half new
    rng.shuffle(cur_keys)
    prev = np.zeros(n, dtype=abi.SRC_COUNTERS_DTYPE)
    cur = np.zeros(len(cur_keys), dtype=abi.SRC_COUNTERS_DTYPE)
    for f in SOURCE_FIELDS:
        prev[f] = rng.integers(0, 10_000, n)
    before = {int(k): {f: int(prev[f][i]) for f in SOURCE_FIELDS} for i, k in enumerate(prev_keys)}
    want: dict[int, dict[str, int]] = {}
    for i, k in enumerate(cur_keys):
        old = before.get(int(k))
        for f in SOURCE_FIELDS:
            if old is None:
                cur[f][i] = rng.integers(0, 100)
                value = int(cur[f][i])
            elif rng.random() < 0.05:  # evicted and re-created: the counter restarted lower
                cur[f][i] = rng.integers(0, max(old[f], 1))
                value = int(cur[f][i])
            else:
                cur[f][i] = old[f] + rng.integers(0, 100)
                value = int(cur[f][i]) - old[f]
            want.setdefault(int(k), {})[f] = value
    t_prev, t_cur = _table(prev_keys, prev), _table(cur_keys, cur)
    rows, which = harvest._moved(t_cur, t_prev, SOURCE_FIELDS, extra=2)
    got = rows.view(SOURCE_DTYPE).ravel()
    expect = {k: v for k, v in want.items() if v["packets"] > 0}
    assert len(got) == len(expect)
    rows_at = np.arange(len(cur_keys))[which]
    for r, idx in zip(got, rows_at, strict=True):
        addr = int(address_from_words(int(r["addr_hi"]), int(r["addr_lo"])))
        assert addr == int(cur_keys[idx])
        assert {f: int(r[f]) for f in SOURCE_FIELDS} == expect[addr]


def test_ipv6_keys_and_empty_tables() -> None:
    keys = np.array([bytes([0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [i]) for i in (3, 1, 2)], dtype="S16")
    rows = np.zeros(3, dtype=abi.SRC_COUNTERS_DTYPE)
    rows["packets"] = [30, 10, 20]
    empty = harvest.Table.of(np.zeros(0, dtype="S16"), np.zeros(0, dtype=abi.SRC_COUNTERS_DTYPE))
    t = harvest.Table.of(keys, rows)
    first, _ = harvest._moved(t, empty, SOURCE_FIELDS, extra=2)
    addrs = [str(address_from_words(int(r[0]), int(r[1]))) for r in first]
    assert addrs == ["2001:db8::3", "2001:db8::1", "2001:db8::2"]  # map order
    assert list(first[:, 2]) == [30, 10, 20]
    none, _ = harvest._moved(t, t, SOURCE_FIELDS, extra=2)
    assert len(none) == 0


def test_counter_increases_follow_rules_not_slots() -> None:
    first = CounterTotals({Action.PASS: Totals(10, 1000)}, {Reason.PASS_DEFAULT: Totals(10, 1000)},
                          {1: RuleTotals(5, 500, 5, 0), 2: RuleTotals(7, 700, 0, 0)}, {1: "a", 2: "b"})
    since_nothing = first.since(CounterTotals())
    assert since_nothing.actions[Action.PASS] == Totals(10, 1000)  # against no read: the totals so far
    assert set(since_nothing.rules) == {"a", "b"}
    second = CounterTotals({Action.PASS: Totals(25, 2500)}, {Reason.PASS_DEFAULT: Totals(25, 2500)},
                           {1: RuleTotals(8, 800, 8, 0), 2: RuleTotals(9, 900, 0, 0)}, {1: "a", 2: "c"})
    nxt = second.since(first)
    assert nxt.actions[Action.PASS] == Totals(15, 1500)
    assert nxt.reasons[Reason.PASS_DEFAULT] == Totals(15, 1500)
    assert nxt.rules["a"] == RuleTotals(3, 300, 3, 0)
    assert nxt.rules["c"] == RuleTotals(9, 900, 0, 0)  # slot 2 changed hands: counts from zero
    assert "b" not in nxt.rules
    # counters that went backwards (maps recreated) count from zero; idle rules are left out
    third = CounterTotals({Action.PASS: Totals(4, 400)}, {}, {1: RuleTotals(8, 800, 8, 0)}, {1: "a"})
    again = third.since(second)
    assert again.actions[Action.PASS] == Totals(4, 400)
    assert again.rules == {}
    # unnamed slots are left out
    assert CounterTotals(rules={3: RuleTotals(1, 1, 0, 0)}).since(CounterTotals()).rules == {}


def test_read_buffers_alternate_so_the_previous_read_survives() -> None:
    from controller.dataplane.pinned import ReadBuffers

    bufs = ReadBuffers()
    a = bufs.next("src_v4", 64, 128)
    b = bufs.next("src_v4", 64, 128)
    assert a[0] is not b[0] and a[1] is not b[1]
    assert bufs.next("src_v4", 64, 128)[0] is a[0]  # the one before last is free again
    assert bufs.next("dst_v4", 8, 8)[0] is not b[0]  # per map
    bigger = bufs.next("src_v4", 256, 128)  # b's turn, too small now: replaced
    assert len(bigger[0]) == 256 and bigger[0] is not b[0]


def test_deny_rows_merge_in_place_and_append() -> None:
    from controller.dataplane.counters import _merge

    keys = np.array([b"\x01\x00\x00\x03", b"\x01\x00\x00\x01", b"\x01\x00\x00\x02"], dtype="S4")
    rows = np.zeros(3, dtype=abi.SRC_COUNTERS_DTYPE)
    rows["packets"] = [3, 1, 2]
    more_keys = np.array([b"\x09\x00\x00\x09", b"\x01\x00\x00\x01"], dtype="S4")
    more = np.zeros(2, dtype=abi.SRC_COUNTERS_DTYPE)
    more["packets"] = more["drops"] = [90, 10]
    k, r, both = _merge(keys, rows, more_keys, more)
    assert list(k) == [*keys, more_keys[0]]  # the source rows keep their map order
    assert list(r["packets"]) == [3, 11, 2, 90] and list(r["drops"]) == [0, 10, 0, 90]
    assert list(both) == [1]
    assert list(rows["packets"]) == [3, 1, 2]  # the read itself is left alone
