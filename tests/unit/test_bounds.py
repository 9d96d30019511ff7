"""Bounded resources on the servers, over real sockets: idle WatchEvents
streams cannot take every worker (per caller and in total,
RESOURCE_EXHAUSTED past them, other calls still served), a request larger
than the message limit is refused, and the metrics HTTP server serves a
scrape while a crowd of half-sent requests is held open (bounded
connections, read timeout)."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from breakwater.v1 import event_service_pb2, event_service_pb2_grpc, rule_service_pb2, rule_service_pb2_grpc
from controller.api.limits import StreamLimits
from controller.api.server import MAX_REQUEST_BYTES
from controller.errors import CapacityError
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import create_controller
from controller.metrics import MAX_SCRAPERS, MetricsServer

TIMEOUT = 10


def test_idle_watchers_cannot_lock_the_controller_out(tmp_path: Path) -> None:
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None,
                                             max_workers=8), sync=False)
    ctl.start()
    watchers: list[Any] = []
    try:
        with grpc.insecure_channel(ctl.address) as ch:
            events = event_service_pb2_grpc.EventServiceStub(ch)
            total = ctl.watch_limits.total
            assert total == 4
            for _ in range(total):
                watchers.append(events.WatchEvents(event_service_pb2.WatchEventsRequest(), timeout=60))
            deadline = threading.Event()
            for _ in range(100):  # the streams start on the pool: wait until all hold their slot
                if ctl.watch_limits.open == total:
                    break
                deadline.wait(0.05)
            assert ctl.watch_limits.open == total
            with pytest.raises(grpc.RpcError) as info:
                next(iter(events.WatchEvents(event_service_pb2.WatchEventsRequest(), timeout=TIMEOUT)))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 4" in (info.value.details() or "")
            # every other call is still served
            rules = rule_service_pb2_grpc.RuleServiceStub(ch)
            assert rules.ListRules(rule_service_pb2.ListRulesRequest(), timeout=TIMEOUT).version == 0
            check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                   response_deserializer=health_pb2.HealthCheckResponse.FromString)
            assert check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == 1
            assert "breakwater_controller_watch_streams_refused_total 1.0" in ctl.metrics_text()
            watchers.pop().cancel()
            for _ in range(100):
                if ctl.watch_limits.open < total:
                    break
                deadline.wait(0.05)
            again = events.WatchEvents(event_service_pb2.WatchEventsRequest(), timeout=60)
            watchers.append(again)
            for _ in range(100):
                if ctl.watch_limits.open == total:
                    break
                deadline.wait(0.05)
            assert ctl.watch_limits.open == total
    finally:
        for w in watchers:
            w.cancel()
        ctl.stop(0)


def test_stream_limits_per_caller() -> None:
    limits = StreamLimits(per_caller=2, total=3)
    with limits.hold("user:a"), limits.hold("user:a"):
        with (pytest.raises(CapacityError, match="user:a holds 2 open streams; at most 2 per caller"),
              limits.hold("user:a")):
            pass
        with (limits.hold("user:b"), pytest.raises(CapacityError, match="3 open streams on this server"),
              limits.hold("user:c")):
            pass
    assert limits.open == 0 and limits.refused == 2


def test_a_request_over_the_message_limit_is_refused(tmp_path: Path) -> None:
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None),
                            sync=False)
    ctl.start()
    try:
        with grpc.insecure_channel(ctl.address) as ch:
            call = ch.unary_unary("/breakwater.v1.RuleService/ListRules", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as info:
                call(b"\x1a" + b"\x80\x80\x80\x02" + b"x" * MAX_REQUEST_BYTES, timeout=TIMEOUT)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        ctl.stop(0)


def test_metrics_server_survives_half_sent_requests() -> None:
    server = MetricsServer("127.0.0.1", 0, render=lambda: "up 1\n")
    server.start()
    held: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(MAX_SCRAPERS * 6):
            s = socket.create_connection(server.address, timeout=15)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(s)
        threads = threading.active_count() - before
        assert threads <= MAX_SCRAPERS + 2, threads
        # the held connections time out and free their slots: a scrape gets through
        body = b""
        pause = threading.Event()
        for _ in range(30):  # within a read timeout or two (SCRAPE_READ_TIMEOUT, 5 s)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=15) as r:
                    body = r.read()
                    break
            except OSError:
                pause.wait(0.5)
        assert body == b"up 1\n"
        assert server.refused > 0
        assert held[0].recv(100) == b""  # the server closed the half-sent one
    finally:
        for s in held:
            s.close()
        server.close()
