"""Per-destination counters for protected prefixes, the latest destination
per source, and the harvester's per-interval deltas, through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controller.addresses import parse_prefix
from controller.dataplane import protect
from controller.detection import harvest
from controller.detection.samples import address_from_words

from .conftest import DataPlane

pytestmark = pytest.mark.bpf


def _rows(arr: object) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in arr:  # type: ignore[attr-defined]
        out[str(address_from_words(r["addr_hi"], r["addr_lo"]))] = {
            n: int(r[n]) for n in r.dtype.names if n not in ("addr_hi", "addr_lo")}
    return out


def test_destinations_sources_and_deltas(dp: DataPlane) -> None:
    protect.set_protected(dp.maps, [parse_prefix("198.18.0.0/24")])
    protect.set_reflection_ports(dp.maps)
    assert protect.protected(dp.maps) == [parse_prefix("198.18.0.0/24")]
    h = harvest.Harvester()
    assert h.sample(dp.maps) is None  # the first read only sets the baseline
    ntp = bytes(Ether() / IP(src="203.0.113.5", dst="198.18.0.10") / UDP(sport=123, dport=4444))
    syn = bytes(Ether() / IP(src="203.0.113.9", dst="198.18.0.11") / TCP(flags="S"))
    elsewhere = bytes(Ether() / IP(src="203.0.113.9", dst="198.19.0.1") / TCP(flags="S"))
    dp.run_many(ntp, 5)
    dp.run_many(syn, 3)
    dp.run_many(elsewhere, 2)
    s = h.sample(dp.maps)
    assert s is not None and s.dt > 0
    dst = _rows(s.destinations)
    assert set(dst) == {"198.18.0.10", "198.18.0.11"}  # 198.19.0.1 is not protected
    assert dst["198.18.0.10"]["udp"] == dst["198.18.0.10"]["refl"] == 5
    assert dst["198.18.0.11"]["syn"] == 3 and dst["198.18.0.11"]["refl"] == 0
    src = _rows(s.sources)
    assert src["203.0.113.5"]["packets"] == 5
    assert src["203.0.113.9"]["packets"] == 5
    last = next(r for r in s.sources if str(address_from_words(r["addr_hi"], r["addr_lo"])) == "203.0.113.9")
    assert str(address_from_words(last["dst_hi"], last["dst_lo"])) == "198.19.0.1"
    dp.run_many(syn, 4)
    s2 = h.sample(dp.maps)
    assert s2 is not None
    assert set(_rows(s2.destinations)) == {"198.18.0.11"}  # only what moved
    assert _rows(s2.destinations)["198.18.0.11"]["syn"] == 4  # a delta, not the total
    assert set(_rows(s2.sources)) == {"203.0.113.9"}


def test_unprotecting_clears_the_bit(dp: DataPlane) -> None:
    protect.set_protected(dp.maps, [parse_prefix("198.18.0.0/24"), parse_prefix("2001:db8::/64")])
    assert dp.config().flags & (3 << 12) == 3 << 12
    protect.set_protected(dp.maps, [])
    assert dp.config().flags & (3 << 12) == 0
    assert protect.protected(dp.maps) == []


def test_denied_sources_keep_counting_across_deny_changes(dp: DataPlane) -> None:
    """The harvester skips an exact deny map it found empty until the
    generation flips; a deny added later must show its drops at once, and a
    deny removed hands its hits back without a negative or doubled delta."""
    from controller.dataplane import entries as policy

    flood = bytes(Ether() / IP(src="203.0.113.66", dst="198.18.0.10") / UDP(sport=5, dport=53))
    h = harvest.Harvester()
    assert h.sample(dp.maps) is None
    dp.run_many(flood, 7)
    s = h.sample(dp.maps)
    assert s is not None and _rows(s.sources)["203.0.113.66"]["packets"] == 7
    assert h.sample(dp.maps) is not None  # quiet interval: the empty deny maps are now skipped
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix("203.0.113.66"))])
    dp.run_many(flood, 11)
    s = h.sample(dp.maps)
    assert s is not None
    row = _rows(s.sources)["203.0.113.66"]
    assert row["packets"] == 11 and row["drops"] == 11
    policy.remove(dp.maps, "deny", [parse_prefix("203.0.113.66")])
    dp.run_many(flood, 3)
    s = h.sample(dp.maps)
    assert s is not None
    row = _rows(s.sources)["203.0.113.66"]
    assert row["packets"] == 3 and row["drops"] == 0, row


def test_idle_sources_are_pruned_and_count_from_zero_when_back(dp: DataPlane,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources idle past ``idle_seconds`` are deleted from the source map
    (not those also counted on a deny entry); one that comes back is
    re-created by the data plane and its first delta is its new packets."""
    from controller.dataplane import entries as policy

    monkeypatch.setattr(harvest, "PRUNE_MIN", 1)

    def udp(src: str) -> bytes:
        return bytes(Ether() / IP(src=src, dst="198.18.0.10") / UDP(sport=5, dport=53))

    h = harvest.Harvester(idle_seconds=0.0)  # idle for one interval is enough here
    assert h.sample(dp.maps) is None
    for src, n in (("203.0.113.1", 4), ("203.0.113.2", 5), ("203.0.113.3", 6), ("203.0.113.4", 2)):
        dp.run_many(udp(src), n)
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix("203.0.113.4"))])
    dp.run_many(udp("203.0.113.4"), 3)  # counted on the deny entry from now on
    s = h.sample(dp.maps)
    assert s is not None and set(_rows(s.sources)) == {f"203.0.113.{i}" for i in (1, 2, 3, 4)}
    dp.run_many(udp("203.0.113.1"), 7)
    s = h.sample(dp.maps)
    assert s is not None and set(_rows(s.sources)) == {"203.0.113.1"}
    keys = set(dp.maps["src_v4"].keys())
    # 2 and 3 are gone; 4 stays (its row and its deny entry are one total)
    assert keys == {bytes([203, 0, 113, 1]), bytes([203, 0, 113, 4])}
    assert h.pruned == 2
    dp.run_many(udp("203.0.113.2"), 9)
    dp.run_many(udp("203.0.113.4"), 1)
    s = h.sample(dp.maps)
    assert s is not None
    rows = _rows(s.sources)
    assert rows["203.0.113.2"]["packets"] == 9  # back: re-created, counted from zero
    assert rows["203.0.113.4"]["packets"] == 1 and rows["203.0.113.4"]["drops"] == 1


def test_delete_packed_skips_absent_keys(dp: DataPlane) -> None:
    src = dp.maps["src_v4"]
    present = [bytes([198, 51, 100, i]) for i in range(10)]
    src.insert_new(present, [bytes(src.spec.value_size)] * len(present))
    asked = [*present[:3], bytes([192, 0, 2, 1]), *present[3:6], bytes([192, 0, 2, 2])]
    assert src.delete_packed(b"".join(asked), len(asked)) == 6
    assert set(src.keys()) == set(present[6:])
