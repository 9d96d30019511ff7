"""controller.agent.telemetry: an interval's sample and counters as a TelemetrySummary."""

from __future__ import annotations

from datetime import UTC, datetime

from breakwater.v1 import reasons_pb2
from controller.agent.telemetry import summarize
from controller.dataplane.counters import RuleTotals, Totals
from controller.dataplane.reasons import Action, Reason
from controller.detection.harvest import IntervalCounters
from controller.detection.samples import Sample

END = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _sample() -> Sample:
    return Sample.build(10.0, 0.5, sources={
        "198.18.0.3": {"packets": 900, "bytes": 90000, "drops": 900, "udp": 900, "dst": "198.18.0.1"},
        "198.18.0.2": {"packets": 100, "bytes": 10000, "udp": 100},
        "2001:db8::3": {"packets": 50, "bytes": 5000, "syn": 50},
        "198.18.0.4": {"packets": 100, "bytes": 100},
    }, destinations={"198.18.0.1": {"packets": 1100, "bytes": 100100, "drops": 900, "udp": 1000, "refl": 3}})


def test_summary_of_one_interval() -> None:
    counters = IntervalCounters(
        actions={Action.PASS: Totals(250, 15100), Action.DROP: Totals(900, 90000),
                 Action.MONITOR: Totals(0, 0), Action.ABORTED: Totals(0, 0)},
        reasons={Reason.PASS_DEFAULT: Totals(250, 15100), Reason.DROP_DENY_SRC: Totals(900, 90000),
                 Reason.PASS_ARP: Totals(0, 0)},
        rules={"block-heavy": RuleTotals(900, 90000, 900, 0)})
    out = summarize(_sample(), counters, interface="bw0", end_time=END, top_sources=3)
    assert out.end_time.ToDatetime(tzinfo=UTC) == END
    assert out.interval.ToNanoseconds() == 500_000_000
    assert out.interface == "bw0" and out.active_sources == 4
    actions = out.actions
    assert (actions.passed.packets, actions.dropped.packets, actions.dropped.bytes) == (250, 900, 90000)
    assert [(r.reason, r.count.packets) for r in out.reasons] == [
        (reasons_pb2.DROP_REASON_PASS_DEFAULT, 250), (reasons_pb2.DROP_REASON_DROP_DENY_SRC, 900)]
    # heaviest first by packets; ties by address; as many as asked for
    assert [s.address for s in out.top_sources] == ["198.18.0.3", "198.18.0.2", "198.18.0.4"]
    top = out.top_sources[0].counters
    assert (top.packets, top.bytes, top.drops, top.udp) == (900, 90000, 900, 900)
    assert [(d.address, d.counters.refl) for d in out.destinations] == [("198.18.0.1", 3)]
    assert [(r.rule_id, r.matched.packets, r.dropped) for r in out.rules] == [("block-heavy", 900, 900)]


def test_summary_limits() -> None:
    empty = IntervalCounters({}, {}, {})
    assert len(summarize(_sample(), empty, interface="bw0", top_sources=0).top_sources) == 0
    assert len(summarize(_sample(), empty, interface="bw0", top_sources=100).top_sources) == 4
    assert len(summarize(_sample(), empty, interface="bw0", max_destinations=0).destinations) == 0
    out = summarize(Sample.empty(1.0, 1.0), empty, interface="")
    assert out.active_sources == 0 and not out.top_sources and out.HasField("actions")
