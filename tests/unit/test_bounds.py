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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from breakwater.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
)
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


def test_pages_fit_the_message_limit(tmp_path: Path) -> None:
    """A page of 1000 rules of 1024 prefixes each would be about 30 MB: a page
    ends before 3 MiB, with a token, and every page is readable by a default client."""
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None),
                            sync=False)
    ctl.start()
    try:
        with grpc.insecure_channel(ctl.address, options=[
                ("grpc.max_send_message_length", 64 << 20)]) as ch:
            rules = rule_service_pb2_grpc.RuleServiceStub(ch)
            for batch in range(2):  # 100 rules of 1000 long IPv6 addresses: about 4 MB listed
                requests = []
                for k in range(50):
                    n = batch * 50 + k
                    rule = rule_pb2.Rule(action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))
                    rule.match.src.extend(f"2001:db8:aaaa:bbbb:cccc:dddd:{n + 4096:x}:{i + 4096:x}"
                                          for i in range(1000))
                    requests.append(rule_service_pb2.CreateRuleRequest(rule_id=f"big-{n:03d}", rule=rule))
                request = rule_service_pb2.BatchCreateRulesRequest(requests=requests)
                rules.BatchCreateRules(request, timeout=60)
            seen: list[str] = []
            token = ""
            pages = 0
            while True:  # a default client (4 MiB receive limit) reads every page
                page = rules.ListRules(rule_service_pb2.ListRulesRequest(page_size=1000, page_token=token),
                                       timeout=60)
                assert page.ByteSize() <= 3 * 1024 * 1024 + 64 * 1024
                seen += [r.name for r in page.rules]
                pages += 1
                token = page.next_page_token
                if not token:
                    break
            assert len(seen) == len(set(seen)) == 100 and pages >= 2
    finally:
        ctl.stop(0)


def test_a_silent_node_is_forgotten(tmp_path: Path) -> None:
    ctl = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None,
                                             node_retention=3600), sync=False)
    try:
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        ctl.store.register_node("gone", {}, {}, now=t0)
        ctl.store.update_node("gone", connected=False, now=t0)
        ctl.store.register_node("quiet-but-connected", {}, {}, now=t0)
        ctl.store.register_node("recent", {}, {}, now=t0 + timedelta(minutes=50))
        ctl.store.update_node("recent", connected=False, now=t0 + timedelta(minutes=50))
        assert ctl.forget_nodes(t0 + timedelta(minutes=61)) == ["gone"]
        assert [n.node_id for n in ctl.store.nodes()] == ["quiet-but-connected", "recent"]
    finally:
        ctl.stop(0)
