"""controller.api.telemetry: per-node buckets of TelemetrySummary, windows,
memory bounds, and the book's answers (sums equal what was sent)."""

from __future__ import annotations

import pytest

from breakwater.v1 import reasons_pb2, telemetry_pb2
from controller.api.telemetry import FleetTelemetry, TelemetryConfig
from controller.errors import FieldError

T = 1_800_000_000.0  # a bucket boundary (multiple of 10 and 60)


def summary(end: float, *, sources: dict[str, tuple[int, int]] | None = None,
            dests: dict[str, dict[str, int]] | None = None, passed: int = 0, dropped: int = 0,
            interval: float = 5.0, active: int = 0, rules: dict[str, int] | None = None,
            reasons: dict[int, int] | None = None) -> telemetry_pb2.TelemetrySummary:
    s = telemetry_pb2.TelemetrySummary(active_sources=active)
    s.end_time.FromNanoseconds(int(end * 1e9))
    s.interval.FromNanoseconds(int(interval * 1e9))
    s.actions.passed.packets, s.actions.passed.bytes = passed, passed * 100
    s.actions.dropped.packets, s.actions.dropped.bytes = dropped, dropped * 100
    for addr, (packets, drops) in (sources or {}).items():
        counters = telemetry_pb2.TrafficCounters(packets=packets, bytes=packets * 100, drops=drops,
                                                 udp=packets)
        s.top_sources.append(telemetry_pb2.AddressCounters(address=addr, counters=counters))
    for addr, counts in (dests or {}).items():
        s.destinations.append(telemetry_pb2.AddressCounters(
            address=addr, counters=telemetry_pb2.TrafficCounters(**counts)))
    for rule_id, n in (rules or {}).items():
        matched = telemetry_pb2.Count(packets=n, bytes=n * 60)
        s.rules.append(telemetry_pb2.RuleCount(rule_id=rule_id, matched=matched, dropped=n))
    for reason, n in (reasons or {}).items():
        s.reasons.append(telemetry_pb2.ReasonCount(reason=reason,  # type: ignore[arg-type]
                                                   count=telemetry_pb2.Count(packets=n, bytes=n * 100)))
    return s


def test_sums_over_nodes_and_window() -> None:
    tel = FleetTelemetry()
    for i, node in enumerate(("a", "b", "c")):
        tel.offer(node, summary(T + 5, sources={"198.51.100.7": (1000, 10), f"203.0.113.{i}": (50, 0)},
                                passed=1000, dropped=10, active=5 + i, rules={"r1": 7},
                                reasons={reasons_pb2.DROP_REASON_DROP_DENY_SRC: 10}), now=T + 5)
        tel.offer(node, summary(T + 10, sources={"198.51.100.7": (500, 0)}, passed=500), now=T + 10)
    stats = tel.stats(None, 60, now=T + 11)
    assert stats.node == "nodes/-" and stats.nodes_reporting == 3
    assert stats.actions.passed.packets == 3 * 1500 and stats.actions.dropped.packets == 30
    assert [(r.rule_id, r.matched.packets, r.dropped) for r in stats.rules] == [("r1", 21, 21)]
    deny = reasons_pb2.DROP_REASON_DROP_DENY_SRC
    assert [(r.reason, r.count.packets) for r in stats.reasons] == [(deny, 30)]
    assert stats.peak_active_sources == 7
    one = tel.stats("b", 60, now=T + 11)
    assert one.node == "nodes/b" and one.nodes_reporting == 1 and one.actions.passed.packets == 1500
    start, _end, reporting, table = tel.totals("source", None, 60, now=T + 11)
    assert reporting == 3 and start <= T + 11 - 60
    counters, by_node = table["198.51.100.7"]
    assert counters[0] == 4500 and counters[2] == 30 and sorted(by_node) == ["a", "b", "c"]
    # a short window holds only the newer bucket
    assert tel.stats(None, 1, now=T + 11).actions.passed.packets == 3 * 500


def test_rates_per_node_seconds() -> None:
    tel = FleetTelemetry()
    tel.offer("a", summary(T + 5, sources={"198.51.100.7": (5000, 0)}, interval=5), now=T + 5)
    tel.offer("b", summary(T + 5, sources={"198.51.100.7": (1000, 0)}, interval=1), now=T + 5)
    rates = tel.rates("source", 10, now=T + 6)
    r = rates["198.51.100.7"]
    assert r.pps == pytest.approx(1000 + 1000) and r.nodes == 2 and r.max_node_pps == pytest.approx(1000)
    assert r.bps == pytest.approx(2000 * 100 * 8) and r.rate("udp") == pytest.approx(2000)


def test_clock_skew_files_at_arrival() -> None:
    tel = FleetTelemetry(TelemetryConfig(max_skew_seconds=30))
    tel.offer("a", summary(T - 7200, passed=10), now=T + 1)  # agent clock far off
    assert tel.stats(None, 10, now=T + 2).actions.passed.packets == 10


def test_buckets_trim_to_the_heaviest() -> None:
    tel = FleetTelemetry(TelemetryConfig(bucket_sources=4))
    tel.offer("a", summary(T + 1, sources={f"10.0.0.{i}": (100 + i, 0) for i in range(9)}), now=T + 1)
    _s, _e, _n, table = tel.totals("source", None, 60, now=T + 2)
    assert sorted(table) == [f"10.0.0.{i}" for i in range(5, 9)]  # 9 > 2 x 4: the 4 heaviest stay
    tel.offer("a", summary(T + 2, sources={f"10.0.1.{i}": (1, 0) for i in range(3)}), now=T + 2)
    _s, _e, _n, table = tel.totals("source", None, 60, now=T + 3)
    assert len(table) == 7  # under the trim mark: kept exactly


def test_rule_counters_and_reasons_are_bounded() -> None:
    """20 summaries of 40k rule ids once grew the controller by 130 MiB while
    telemetry_entries read 0: rule counters are trimmed per bucket and counted."""
    tel = FleetTelemetry(TelemetryConfig(bucket_rules=100))
    for k in range(20):
        tel.offer("a", summary(T + 10 * k + 1, rules={f"r{k}-{i}": 1 + i for i in range(4000)},
                               reasons={1000 + i: 1 for i in range(1000)}), now=T + 10 * k + 1)
    tel.fold(now=T + 200)
    buckets = [*tel._series["a"].fine, *tel._series["a"].coarse]
    assert all(len(b.rules) <= 200 and len(b.reasons) <= 256 for b in buckets)
    assert tel.entries == sum(b.entries for b in buckets) and tel.entries <= 20 * 200
    heavy = max(buckets[0].rules.items(), key=lambda kv: kv[1][0])
    assert heavy[0] == "r0-3999"  # the heaviest stay


def test_coarsen_and_retention() -> None:
    cfg = TelemetryConfig(bucket_seconds=10, fine_seconds=60, coarse_seconds=60, retention_seconds=3600)
    tel = FleetTelemetry(cfg)
    for k in range(12):  # two minutes of 10 s buckets
        tel.offer("a", summary(T + 10 * k + 5, passed=1), now=T + 10 * k + 5)
    tel.fold(now=T + 125)
    series = tel._series["a"]
    assert len(series.coarse) >= 1 and all(b.width == 60 for b in series.coarse)
    assert tel.stats("a", 3600, now=T + 125).actions.passed.packets == 12  # nothing lost by merging
    assert tel.stats("a", 3600, now=T + 125 + 3700).nodes_reporting == 0  # past retention: gone
    assert tel.nodes() == []


def test_max_entries_drops_oldest_buckets_first() -> None:
    tel = FleetTelemetry(TelemetryConfig(max_entries=1000, bucket_sources=1000))
    for k in range(5):
        tel.offer("a", summary(T + 10 * k + 1, sources={f"10.{k}.{i // 250}.{i % 250}": (1, 0)
                                                        for i in range(300)}), now=T + 10 * k + 1)
    tel.fold(now=T + 50)
    assert tel.entries <= 1000 and tel.evicted == 2
    _s, _e, _n, table = tel.totals("source", None, 3600, now=T + 50)
    assert not any(a.startswith(("10.0.", "10.1.")) for a in table)  # the oldest went


def test_config_from_dict() -> None:
    assert TelemetryConfig.from_dict({"bucket_seconds": 5}).bucket_seconds == 5
    with pytest.raises(FieldError) as info:
        TelemetryConfig.from_dict({"bucket_secs": 5})
    assert info.value.path == "bucket_secs" and "bucket_seconds" in info.value.what
    with pytest.raises(FieldError) as info:
        TelemetryConfig(retention_seconds=60)
    assert info.value.path == "retention_seconds"
