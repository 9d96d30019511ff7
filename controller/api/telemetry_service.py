"""TelemetryService (``breakwater.v1.TelemetryService``): GetStats and
ListTopTalkers answered from the telemetry book
(:class:`~controller.api.telemetry.FleetTelemetry`).

A request's window is a positive duration of at most :data:`MAX_WINDOW`
(default :data:`DEFAULT_WINDOW`), rounded out to whole buckets by the book.
Top talkers rank by packets or bytes, 20 to a page by default, and page
by offset over the window of the first page (its token carries the
window's end).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Final

import grpc
from google.protobuf import duration_pb2

from breakwater.v1 import telemetry_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc

from ..errors import FieldError
from .convert import NODE_WILDCARD, check_duration, node_name, parse_node_parent
from .pages import decode_page_token, encode_page_token, page_size
from .server import Service
from .telemetry import BYTES, DROPS, MAX_WINDOW, PACKETS, TRAFFIC_FIELDS, FleetTelemetry, Kind, saturated

__all__ = ["DEFAULT_WINDOW", "TelemetryServicer", "telemetry_service"]

DEFAULT_WINDOW: Final = 60.0
"""Seconds of a request's window when it names none."""
DEFAULT_TALKERS: Final = 20
"""Top talkers per page when the request says 0."""
MAX_TALKERS: Final = 1000
"""Most top talkers per page (the API's page maximum)."""
TALKER_NODES: Final = 16
"""Nodes listed per top talker (TopTalker.nodes)."""


def _window_of(window: duration_pb2.Duration | None, path: str = "window") -> float:
    if window is None:
        return DEFAULT_WINDOW
    check_duration(window, path)
    value = window.seconds + window.nanos / 1e9
    if value <= 0:
        raise FieldError(path, f"{value:g}s is not a window; give a positive duration (default "
                               f"{DEFAULT_WINDOW:g}s)")
    if value > MAX_WINDOW:
        raise FieldError(path, f"{value:g}s is too long; at most {MAX_WINDOW:g}s")
    return value


class TelemetryServicer(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """GetStats and ListTopTalkers over a :class:`FleetTelemetry`.
    ``known_node`` raises :class:`~controller.errors.NotFoundError` for a
    node id that never registered (the controller passes ``store.node``)."""

    def __init__(self, telemetry: FleetTelemetry, *, known_node: Callable[[str], object] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._telemetry = telemetry
        self._known = known_node
        self._clock = clock

    def _node(self, name: str, path: str) -> str | None:
        node_id = parse_node_parent(name, path)
        if node_id is not None and self._known is not None:
            self._known(node_id)
        return node_id

    def GetStats(self, request: telemetry_service_pb2.GetStatsRequest,
                 context: grpc.ServicerContext) -> telemetry_service_pb2.Stats:
        node_id = self._node(request.node, "node")
        window = _window_of(request.window if request.HasField("window") else None)
        return self._telemetry.stats(node_id, window, now=self._clock())

    def ListTopTalkers(self, request: telemetry_service_pb2.ListTopTalkersRequest,
                       context: grpc.ServicerContext) -> telemetry_service_pb2.ListTopTalkersResponse:
        node_id = self._node(request.parent, "parent")
        window = _window_of(request.window if request.HasField("window") else None)
        destinations = request.kind == telemetry_service_pb2.TALKER_KIND_DESTINATION
        kind: Kind = "destination" if destinations else "source"
        if request.kind not in telemetry_service_pb2.TalkerKind.values():
            raise FieldError("kind", f"{request.kind} is not a TalkerKind")
        if request.order_by not in telemetry_service_pb2.TalkerOrder.values():
            raise FieldError("order_by", f"{request.order_by} is not a TalkerOrder")
        by = BYTES if request.order_by == telemetry_service_pb2.TALKER_ORDER_BYTES else PACKETS
        size = page_size(request.page_size, DEFAULT_TALKERS)
        fingerprint = hashlib.sha256(
            f"{request.parent or NODE_WILDCARD}|{kind}|{by}|{window!r}".encode()).hexdigest()[:16]
        offset, now = 0, self._clock()
        if request.page_token:
            position = decode_page_token(request.page_token, "talkers", fingerprint)
            try:
                text_offset, text_end = str(position).split(":", 1)
                offset, now = int(text_offset), float(text_end)
            except ValueError:
                raise FieldError("page_token", "not a page token of this server; pass the "
                                               "next_page_token of a previous response") from None
        start, end, reporting, table = self._telemetry.totals(kind, node_id, window, now=now)
        ranked = sorted(table.items(), key=lambda kv: (-kv[1][0][by], kv[0]))
        span = max(end - start, 1e-9)
        out = telemetry_service_pb2.ListTopTalkersResponse(nodes_reporting=reporting)
        out.start_time.FromNanoseconds(int(start * 1e9))
        out.end_time.FromNanoseconds(int(end * 1e9))
        for addr, (c, by_node) in ranked[offset:offset + size]:
            heaviest = sorted(by_node.items(), key=lambda kv: (-kv[1][by], kv[0]))[:TALKER_NODES]
            out.top_talkers.append(telemetry_service_pb2.TopTalker(
                address=addr, counters=telemetry_pb2.TrafficCounters(**{
                    name: saturated(v) for name, v in zip(TRAFFIC_FIELDS, c, strict=True)}),
                pps=c[PACKETS] / span, bps=c[BYTES] * 8 / span, dropped_pps=c[DROPS] / span,
                nodes=[node_name(n) for n, _ in heaviest], node_count=len(by_node)))
        if offset + size < len(ranked):
            out.next_page_token = encode_page_token("talkers", fingerprint, f"{offset + size}:{now!r}")
        return out


def telemetry_service(servicer: TelemetryServicer) -> Service:
    """The servicer as a :class:`~controller.api.server.Service`."""
    return Service.of(telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"],
                      telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server, servicer)
