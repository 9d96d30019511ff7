"""controller.api.telemetry_service: TelemetryService's answers from the
book, called directly (the sync hub's tests call it over a channel)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2

from breakwater.v1 import telemetry_service_pb2
from controller.api.pages import decode_page_token
from controller.api.telemetry import FleetTelemetry
from controller.api.telemetry_service import TelemetryServicer
from controller.errors import FieldError, NotFoundError

from .test_telemetry import T, summary


def _servicer(tel: FleetTelemetry, now: float) -> TelemetryServicer:
    def known(node_id: str) -> None:
        if node_id not in ("a", "b", "c", "idle"):
            raise NotFoundError(f"node {node_id!r} has never registered", f"nodes/{node_id}")
    return TelemetryServicer(tel, known_node=known, clock=lambda: now)


def _talkers(svc: TelemetryServicer, **kw: Any) -> telemetry_service_pb2.ListTopTalkersResponse:
    return svc.ListTopTalkers(telemetry_service_pb2.ListTopTalkersRequest(**kw), None)  # type: ignore[arg-type]


def test_top_talkers_rank_page_and_attribute() -> None:
    tel = FleetTelemetry()
    for node, share in (("a", 3), ("b", 2), ("c", 1)):
        tel.offer(node, summary(T + 5, sources={f"192.0.2.{i}": (share * (100 - i), 0) for i in range(30)},
                                dests={"198.18.0.10": {"packets": share * 10, "bytes": 999, "refl": share}}),
                  now=T + 5)
    svc = _servicer(tel, T + 6)
    first = _talkers(svc, page_size=10)
    assert [t.address for t in first.top_talkers] == [f"192.0.2.{i}" for i in range(10)]
    top = first.top_talkers[0]
    assert top.counters.packets == 600 and top.node_count == 3
    assert top.nodes == ["nodes/a", "nodes/b", "nodes/c"]
    span = (first.end_time.ToNanoseconds() - first.start_time.ToNanoseconds()) / 1e9
    assert top.pps == pytest.approx(600 / span) and top.bps == pytest.approx(600 * 100 * 8 / span)
    seen = [t.address for t in first.top_talkers]
    token = first.next_page_token
    while token:
        page = _talkers(svc, page_size=10, page_token=token)
        seen += [t.address for t in page.top_talkers]
        token = page.next_page_token
    assert seen == [f"192.0.2.{i}" for i in range(30)]
    dest = _talkers(svc, kind=telemetry_service_pb2.TALKER_KIND_DESTINATION,
                    order_by=telemetry_service_pb2.TALKER_ORDER_BYTES, parent="nodes/b")
    assert [(t.address, t.counters.packets, t.counters.refl, t.node_count) for t in dest.top_talkers] == [
        ("198.18.0.10", 20, 2, 1)]
    assert dest.nodes_reporting == 1 and not dest.next_page_token


def test_servicer_refusals() -> None:
    svc = _servicer(FleetTelemetry(), T)
    with pytest.raises(FieldError) as info:
        _talkers(svc, page_token="garbage")
    assert info.value.path == "page_token"
    token = _talkers(_servicer(_filled(), T + 6), page_size=1).next_page_token
    assert decode_page_token(token, "talkers", _fp("", "source", 0, 60.0))
    with pytest.raises(FieldError) as info:
        _talkers(_servicer(_filled(), T + 6), page_size=1, page_token=token,
                 order_by=telemetry_service_pb2.TALKER_ORDER_BYTES)  # another request's token
    assert info.value.path == "page_token"
    with pytest.raises(FieldError) as info:
        _talkers(svc, window=duration_pb2.Duration(seconds=7200))
    assert info.value.path == "window"
    with pytest.raises(FieldError) as info:
        _talkers(svc, page_size=-1)
    assert info.value.path == "page_size"
    with pytest.raises(FieldError) as info:
        _talkers(svc, parent="rules/x")
    assert info.value.path == "parent"
    with pytest.raises(NotFoundError):
        svc.GetStats(telemetry_service_pb2.GetStatsRequest(node="nodes/ghost"), None)  # type: ignore[arg-type]
    idle = svc.GetStats(telemetry_service_pb2.GetStatsRequest(node="nodes/idle"), None)  # type: ignore[arg-type]
    assert idle.nodes_reporting == 0 and idle.node == "nodes/idle"


def _filled() -> FleetTelemetry:
    tel = FleetTelemetry()
    tel.offer("a", summary(T + 5, sources={"192.0.2.1": (10, 0), "192.0.2.2": (5, 0)}), now=T + 5)
    return tel


def _fp(parent: str, kind: str, by: int, window: float) -> str:
    import hashlib
    return hashlib.sha256(f"{parent or 'nodes/-'}|{kind}|{by}|{window!r}".encode()).hexdigest()[:16]
