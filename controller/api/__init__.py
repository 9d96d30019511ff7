"""The gRPC API (``proto/breakwater/v1``) as Python: conversion between
Breakwater's objects and their wire form (:mod:`.convert`), the servicers of
RuleService, NodeService and EventService over small backends
(:mod:`.services`), TelemetryService and the telemetry book it reads
(:mod:`.telemetry`), list filters (:mod:`.filtering`), the one place errors
become statuses and back (:mod:`.status`), the servers: thread-pool
(:mod:`.server`), grpc.aio (:mod:`.aio`) and grpc.aio on a thread of its
own (:mod:`.aiothread`), and the client the CLI uses (:mod:`.client`).

Shared by both daemons: the agent serves RuleService, EventService and
TelemetryService for its own node, the controller for the fleet.
"""

__all__ = [
    "aio",
    "aiothread",
    "client",
    "convert",
    "filtering",
    "server",
    "services",
    "status",
    "telemetry",
]
