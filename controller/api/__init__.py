"""The gRPC API (``proto/breakwater/v1``) as Python: conversion between
Breakwater's objects and their wire form (:mod:`.convert`); the servicers
of RuleService, NodeService and EventService (:mod:`.rule_service`,
:mod:`.node_service`, :mod:`.event_service`, wired by :mod:`.services`)
over small backends (:mod:`.backends`), with pages and page tokens
(:mod:`.pages`), the caller's identity (:mod:`.callers`) and list filters
(:mod:`.filtering`); TelemetryService (:mod:`.telemetry_service`) and the
telemetry book it reads (:mod:`.telemetry`); the one place errors become
statuses and back (:mod:`.status`); TLS credentials, principals and the
role of every RPC (:mod:`.auth`); the servers: thread-pool
(:mod:`.server`), grpc.aio (:mod:`.aio`) and grpc.aio on a thread of its
own (:mod:`.aiothread`), with the handler shapes their interceptors rewrap
(:mod:`.handlers`); and the client the CLI uses (:mod:`.client`).

Shared by both daemons: the agent serves RuleService, EventService and
TelemetryService for its own node, the controller for the fleet.
"""

__all__ = [
    "aio",
    "aiothread",
    "auth",
    "backends",
    "callers",
    "client",
    "convert",
    "event_service",
    "filtering",
    "handlers",
    "limits",
    "node_service",
    "pages",
    "rule_service",
    "server",
    "services",
    "status",
    "telemetry",
    "telemetry_service",
]
