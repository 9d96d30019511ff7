"""The SOC API's servicers wired for a server: RuleService, NodeService and
EventService as :class:`~controller.api.server.Service` s
(:func:`api_services`).

Each servicer has its module (:mod:`.rule_service`, :mod:`.node_service`,
:mod:`.event_service`) and holds no state of its own: it works on a small
backend (:mod:`.backends`), so the controller serves them over its store
and event log and an agent serves RuleService and EventService for its own
node over its own store. What they share: pages and page tokens
(:mod:`.pages`), the caller's identity (:mod:`.callers`), list filters
(:mod:`.filtering`), the wire forms (:mod:`.convert`) and the error
mapping (:mod:`.status`). TelemetryService is :mod:`.telemetry_service`.
"""

from __future__ import annotations

from breakwater.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
    rule_service_pb2,
    rule_service_pb2_grpc,
)

from .event_service import EventServicer
from .node_service import NodeServicer
from .rule_service import RuleServicer
from .server import Service

__all__ = ["api_services"]


def api_services(rules: RuleServicer | None = None, nodes: NodeServicer | None = None,
                 events: EventServicer | None = None) -> list[Service]:
    """The given servicers as :class:`~controller.api.server.Service` s for
    :func:`~controller.api.server.create_server` (or the aio server)."""
    out: list[Service] = []
    if rules is not None:
        out.append(Service.of(rule_service_pb2.DESCRIPTOR.services_by_name["RuleService"],
                              rule_service_pb2_grpc.add_RuleServiceServicer_to_server, rules))
    if nodes is not None:
        out.append(Service.of(node_service_pb2.DESCRIPTOR.services_by_name["NodeService"],
                              node_service_pb2_grpc.add_NodeServiceServicer_to_server, nodes))
    if events is not None:
        out.append(Service.of(event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
                              event_service_pb2_grpc.add_EventServiceServicer_to_server, events))
    return out
