"""controller.fleet.daemon and controller.fleet.config: the configuration,
the controller in process (server, sweeper, metrics, the sync hook, clean
stop), and `breakwater controller` as a real process: start, change rules
through the CLI, kill -9, restart, everything still there; SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from breakwater.v1 import (
    event_pb2,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    sync_service_pb2,
    sync_service_pb2_grpc,
)
from controller.api.server import Service
from controller.errors import ConfigError
from controller.fleet.config import ControllerConfig, load_config, parse_config
from controller.fleet.daemon import Controller, ServiceRegistry, create_controller
from controller.fleet.store import FleetStore
from controller.fleet.storeapi import Store

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10


# --- configuration --------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.listen == "127.0.0.1:9610" and cfg.metrics == ("127.0.0.1", 9613)
    assert cfg.state_dir == Path("/var/lib/breakwater-controller")
    assert (cfg.reconcile_interval, cfg.heartbeat_timeout, cfg.max_lag) == (30.0, 90.0, 10.0)
    assert cfg.to_dict()["listen"] == "127.0.0.1:9610"


def test_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text('listen = "[::]:9700"\nstate_dir = "/srv/bw"\nmetrics = ""\nreconcile_interval = 5\n'
                    "heartbeat_timeout = 20\nmax_lag = 2.5\nevents_keep = 5000\ninsecure = true\n"
                    "[fleet]\nmin_nodes = 3\n")
    cfg = load_config(path, {"listen": "0.0.0.0:9610", "state_dir": None})
    assert cfg.listen == "0.0.0.0:9610" and cfg.state_dir == Path("/srv/bw") and cfg.metrics is None
    assert (cfg.reconcile_interval, cfg.heartbeat_timeout, cfg.max_lag) == (5.0, 20.0, 2.5)
    assert cfg.events_keep == 5000 and cfg.insecure and cfg.tls is None
    assert cfg.sections == {"fleet": {"min_nodes": 3}} and cfg.source == str(path)
    assert cfg.health.heartbeat_timeout == 20.0


BAD: dict[str, tuple[dict[str, object], str, str]] = {
    "unknown key": ({"lisen": "x"}, "lisen", "did you mean 'listen'?"),
    "listen not host:port": ({"listen": "9610"}, "listen", "is not HOST:PORT"),
    "listen port": ({"listen": "127.0.0.1:70000"}, "listen", "port 0..65535"),
    "listen bare ipv6": ({"listen": "::1:9610"}, "listen", "in brackets"),
    "listen type": ({"listen": 9610}, "listen", "expected"),
    "state_dir relative": ({"state_dir": "var/bw"}, "state_dir", "not an absolute path"),
    "metrics": ({"metrics": "localhost"}, "metrics", "is not ADDR:PORT"),
    "reconcile range": ({"reconcile_interval": 0}, "reconcile_interval", "is out of range 1..86400"),
    "reconcile type": ({"reconcile_interval": "30s"}, "reconcile_interval", "expected a number"),
    "heartbeat bool": ({"heartbeat_timeout": True}, "heartbeat_timeout", "expected a number"),
    "events_keep": ({"events_keep": 0}, "events_keep", "out of range"),
    "max_workers float": ({"max_workers": 8.5}, "max_workers", "expected an integer"),
    "section not a table": ({"sync": 3}, "sync", "expected a table"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_bad_config_names_the_key(case: str) -> None:
    data, key, words = BAD[case]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "controller.toml")
    assert info.value.path == key and words in info.value.what, info.value
    assert str(info.value).startswith(f"controller.toml: {key}: ")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


# --- in process -----------------------------------------------------------------------------


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=("127.0.0.1", 0))
    c = create_controller(cfg, sync=False)
    c.start()
    try:
        yield c
    finally:
        c.stop(0)


def _drop(ttl: int | None = None) -> rule_pb2.Rule:
    r = rule_pb2.Rule()
    r.match.src.append("198.51.100.0/24")
    r.action.kind = rule_pb2.ACTION_KIND_DROP
    if ttl:
        r.ttl.FromSeconds(ttl)
    return r


def test_sweeper_expires_rules_and_publishes_events(ctl: Controller) -> None:
    with grpc.insecure_channel(ctl.address) as channel:
        stub = rule_service_pb2_grpc.RuleServiceStub(channel)
        stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="short", rule=_drop(ttl=1)),
                        timeout=TIMEOUT)
        stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="long", rule=_drop(ttl=3600)),
                        timeout=TIMEOUT)
        deadline = time.monotonic() + 10
        while [r.id for r in ctl.store.rules(include_expired=True)] != ["long"]:
            assert time.monotonic() < deadline, "the sweeper did not remove the expired rule"
            time.sleep(0.1)
    expired = ctl.events.page(newest_first=True, limit=1)[0]
    assert (expired.rule.kind, expired.rule.rule_id, expired.rule.actor, expired.rule.version) == (
        event_pb2.RULE_EVENT_KIND_EXPIRED, "short", "ttl", 3)
    assert ctl.store.version == 3 and ctl.expired_total == 1


def test_metrics_endpoint(ctl: Controller) -> None:
    with grpc.insecure_channel(ctl.address) as channel:
        stub = rule_service_pb2_grpc.RuleServiceStub(channel)
        stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="a", rule=_drop()), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError):
            stub.GetRule(rule_service_pb2.GetRuleRequest(name="nope"), timeout=TIMEOUT)
    ctl.store.register_node("edge-1", {}, {})
    assert ctl._metrics_server is not None
    host, port = ctl._metrics_server.address
    deadline = time.monotonic() + 10
    text = ""
    while "GetRule" not in text and time.monotonic() < deadline:  # rendered every second
        time.sleep(0.2)
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    for line in ('breakwater_controller_rules{origin="manual"} 1', "breakwater_controller_rule_version 1",
                 'breakwater_controller_nodes{health="healthy"} 1',
                 'breakwater_controller_rpcs_total{code="OK",method="CreateRule",'
                 'service="breakwater.v1.RuleService"} 1',
                 'breakwater_controller_rpcs_total{code="INVALID_ARGUMENT",method="GetRule",'
                 'service="breakwater.v1.RuleService"} 1',
                 "# TYPE breakwater_controller_streams gauge",
                 "breakwater_controller_events_last_sequence 1"):
        assert line in text, line


def test_serves_health_then_stops_cleanly_twice(tmp_path: Path) -> None:
    c = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None),
                          sync=False)
    c.start()
    channel = grpc.insecure_channel(c.address)
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)
    for name in ("", "breakwater.v1.RuleService", "breakwater.v1.NodeService", "breakwater.v1.EventService"):
        assert check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
    c.stop(0)
    c.stop(0)  # twice is fine
    assert c.wait(0)
    channel.close()
    with pytest.raises(Exception, match="closed"):
        c.store.version_time(1)  # the store is closed


class _Sync(sync_service_pb2_grpc.SyncServiceServicer):
    def Sync(self, request_iterator: Iterator[sync_service_pb2.SyncRequest],
             context: Any) -> Iterator[sync_service_pb2.SyncResponse]:
        for req in request_iterator:
            yield sync_service_pb2.SyncResponse(registered=sync_service_pb2.Registered(
                node=f"nodes/{req.register.node_id}"))


class _Hub:
    """What the fake sync hook returns: the controller closes it and asks it for metrics."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def collect_metrics(self, out: Any) -> None:
        out.add("breakwater_sync_test", "gauge", "a metric of the sync hub", 7)


class _Hook:
    """A sync hook in place of the real hub's: records its calls and adds a
    SyncService that answers each Register with Registered."""

    def __init__(self, *, as_server: bool) -> None:
        self.as_server = as_server
        self.calls: list[Any] = []
        self.hub = _Hub()

    def __call__(self, registry: ServiceRegistry, store: Store, events: Any, config: ControllerConfig, *,
                 backend: Any, leadership: Any) -> _Hub:
        self.calls.append((registry, store, events, config, backend))
        self.leadership = leadership
        if self.as_server:  # the generated helper, with the registry in the server's place
            sync_service_pb2_grpc.add_SyncServiceServicer_to_server(_Sync(), registry)  # type: ignore[arg-type]
        else:
            registry.add(Service.of(sync_service_pb2.DESCRIPTOR.services_by_name["SyncService"],
                                    sync_service_pb2_grpc.add_SyncServiceServicer_to_server, _Sync()))
        return self.hub


@pytest.mark.parametrize("as_server", [False, True], ids=["registry.add", "add_*_to_server"])
def test_sync_hook_adds_services(tmp_path: Path, as_server: bool) -> None:
    hook = _Hook(as_server=as_server)
    cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None, reconcile_interval=7)
    c = create_controller(cfg, sync_hook=hook)
    c.start()
    try:
        (_, store, events, config, backend), = hook.calls
        assert store is c.store and events is c.events and config is cfg and backend is c.backend
        assert c.sync is hook.hub and hook.leadership is c.leadership and c.leadership.is_leader  # SQLite
        with grpc.insecure_channel(c.address) as channel:
            stream = sync_service_pb2_grpc.SyncServiceStub(channel).Sync(iter([sync_service_pb2.SyncRequest(
                register=sync_service_pb2.Register(node_id="edge-1"))]), timeout=TIMEOUT)
            assert [r.registered.node for r in stream] == ["nodes/edge-1"]
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(iter(stub.ServerReflectionInfo(  # type: ignore[operator]
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)))
            assert "breakwater.v1.SyncService" in {s.name for s in reply.list_services_response.service}
        assert "breakwater_sync_test 7" in c.metrics_text()
    finally:
        c.stop(0)
    assert hook.hub.closed


def test_without_a_sync_hub_the_api_still_serves(tmp_path: Path) -> None:
    c = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None),
                          sync=False)
    try:
        assert c.sync is None
        c.start()
        with grpc.insecure_channel(c.address) as channel:
            stub = rule_service_pb2_grpc.RuleServiceStub(channel)
            assert stub.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="a", rule=_drop()),
                                   timeout=TIMEOUT).version == 1
    finally:
        c.stop(0)


def test_busy_port_is_refused(ctl: Controller, tmp_path: Path) -> None:
    from controller.errors import SetupError

    with pytest.raises(SetupError, match="cannot listen"):
        create_controller(ControllerConfig(listen=ctl.address, state_dir=tmp_path / "other", metrics=None),
                          sync=False)


# --- a real process -------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("BREAKWATER_SERVER", None)
    env["BREAKWATER_CLI_CONFIG"] = os.devnull  # no operator config leaks in
    return env


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, env=_env(), cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


class _Daemon:
    """`breakwater controller` as a child process; its JSON log lines are collected."""

    def __init__(self, state_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "controller", "--listen", "127.0.0.1:0", "--state-dir",
             str(state_dir), "--metrics", ""], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=_env(), cwd=REPO)
        self.lines: list[dict[str, Any]] = []
        self.ready = threading.Event()
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        assert self.ready.wait(30), f"controller did not come up: {self.lines}"
        self.address = next(line["address"] for line in self.lines if line.get("event") == "controller_ready")

    def _read(self, stream: TextIO) -> None:
        for raw in stream:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"raw": raw.rstrip()}
            self.lines.append(doc)
            if doc.get("event") == "controller_ready":
                self.ready.set()

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines if "event" in line]


def test_real_process_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _Daemon(state)
    try:
        made = _cli("rules", "create", "dns-amp", "--server", first.address, "--src", "198.51.100.0/24",
                    "--protocol", "udp", "--sport", "53", "--action", "drop", "--reason", "INC-1", "--json")
        assert json.loads(made.stdout)["name"] == "rules/dns-amp"
        bad = _cli("rules", "create", "bad", "--server", first.address, "--dport", "80", "--action", "drop",
                   check=False)
        assert bad.returncode == 2 and "rule.match.dport" in bad.stderr
    finally:
        first.proc.kill()  # kill -9: no clean stop
        first.proc.wait(10)
    assert first.proc.returncode == -signal.SIGKILL
    second = _Daemon(state)
    try:
        listed = json.loads(_cli("rules", "list", "--server", second.address, "--json").stdout)
        assert [r["name"] for r in listed] == ["rules/dns-amp"] and listed[0]["version"] == "1"
        events = json.loads(_cli("events", "--server", second.address, "--json").stdout)
        assert [(e["rule"]["kind"], e["rule"]["rule_id"]) for e in events] == [("RULE_EVENT_KIND_CREATED",
                                                                                 "dns-amp")]
        with grpc.insecure_channel(second.address) as channel:  # what `grpcurl list` asks
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(iter(stub.ServerReflectionInfo(  # type: ignore[operator]
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)))
            names = {s.name for s in reply.list_services_response.service}
            assert {"breakwater.v1.RuleService", "breakwater.v1.NodeService", "breakwater.v1.EventService",
                    "grpc.health.v1.Health"} <= names
        _cli("rules", "delete", "dns-amp", "--server", second.address, "--reason", "INC-1 closed")
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0
        assert "controller_stopped" in second.events()
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
            second.proc.wait(10)
    with FleetStore.open(state) as store:
        audit = store.audit()
        assert [(a.action, a.rule_id, a.reason) for a in audit] == [("create", "dns-amp", "INC-1"),
                                                                    ("delete", "dns-amp", "INC-1 closed")]
        assert audit[0].actor and store.version == 2 and store.rules() == []


def test_check_config_and_bad_flags() -> None:
    ok = _cli("controller", "--check-config", "--listen", "0.0.0.0:9610", "--reconcile-interval", "12",
              "--insecure")
    doc = json.loads(ok.stdout)
    assert doc["listen"] == "0.0.0.0:9610" and doc["reconcile_interval"] == 12.0 and doc["insecure"]
    plain = _cli("controller", "--check-config", "--listen", "0.0.0.0:9610", check=False)
    assert plain.returncode == 2 and "listen: 0.0.0.0:9610 is not a loopback address" in plain.stderr
    bad = _cli("controller", "--check-config", "--reconcile-interval", "0", check=False)
    assert bad.returncode == 2 and "reconcile_interval: 0 is out of range" in bad.stderr


def test_check_config_reads_the_sync_tables(tmp_path: Path) -> None:
    """--check-config refuses a bad [sync], [telemetry] or [fleet] key as
    starting the controller would, naming the file and the key."""
    for table, body, key in (("sync", "bogus = 1", "sync.bogus"),
                             ("fleet.mitigate", "rule_tll = 5", "fleet.mitigate.rule_tll")):
        path = tmp_path / "controller.toml"
        path.write_text(f"[{table}]\n{body}\n")
        bad = _cli("controller", "--config", str(path), "--check-config", check=False)
        assert bad.returncode == 2 and f"{path}: {key}: unknown key" in bad.stderr, bad.stderr



# --- with the real sync hub -----------------------------------------------------------------


def test_nodes_seen_through_a_real_sync_stream(tmp_path: Path) -> None:
    """An agent's stream (Register, ACK) on the controller's one port: NodeService
    shows it healthy and current, then unreachable once the stream is gone."""
    import queue

    from breakwater.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

    c = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path, metrics=None))
    c.start()
    channel = grpc.insecure_channel(c.address)
    try:
        rules = rule_service_pb2_grpc.RuleServiceStub(channel)
        rules.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="a", rule=_drop()), timeout=TIMEOUT)
        up: queue.Queue[sync_service_pb2.SyncRequest | None] = queue.Queue()
        up.put(sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(
            node_id="edge-1", labels={"site": "fra1"}, agent_version="0.1.0",
            mode=node_pb2.AGENT_MODE_ENFORCE)))

        def requests() -> Iterator[sync_service_pb2.SyncRequest]:
            while (item := up.get()) is not None:
                yield item

        stream = sync_service_pb2_grpc.SyncServiceStub(channel).Sync(requests())
        assert next(stream).registered.node == "nodes/edge-1"
        snapshot = next(stream).snapshot
        assert [r.name for r in snapshot.rules] == ["rules/a"] and snapshot.version == 1
        up.put(sync_service_pb2.SyncRequest(ack=sync_service_pb2.Ack(version=snapshot.version)))
        nodes = node_service_pb2_grpc.NodeServiceStub(channel)
        get = node_service_pb2.GetNodeRequest(name="nodes/edge-1")
        deadline = time.monotonic() + 10
        while (node := nodes.GetNode(get, timeout=TIMEOUT)).applied_rule_version != 1:
            assert time.monotonic() < deadline, node
            time.sleep(0.05)
        assert (node.health, node.connected, node.target_rule_version, node.agent_version, node.mode) == (
            node_pb2.NODE_HEALTH_HEALTHY, True, 1, "0.1.0", node_pb2.AGENT_MODE_ENFORCE)
        assert dict(node.labels) == {"site": "fra1"}
        up.put(None)  # the agent goes away
        stream.cancel()
        deadline = time.monotonic() + 10
        while (node := nodes.GetNode(get, timeout=TIMEOUT)).connected:
            assert time.monotonic() < deadline, node
            time.sleep(0.05)
        assert node.health == node_pb2.NODE_HEALTH_UNREACHABLE and "no sync stream" in node.health_detail
    finally:
        channel.close()
        c.stop(0)


def test_bad_sync_table_names_the_file_and_key(tmp_path: Path) -> None:
    cfg = parse_config({"listen": "127.0.0.1:0", "state_dir": str(tmp_path), "metrics": "",
                        "sync": {"bogus": 1}}, "controller.toml")
    with pytest.raises(ConfigError) as info:
        create_controller(cfg)
    assert info.value.path == "sync.bogus" and str(info.value).startswith("controller.toml: sync.bogus: ")


def test_busy_metrics_port_is_a_setup_error(ctl: Controller, tmp_path: Path) -> None:
    from controller.errors import SetupError

    assert ctl._metrics_server is not None
    busy = ctl._metrics_server.address
    cfg = ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path / "other", metrics=busy)
    other = create_controller(cfg, sync=False)
    try:
        with pytest.raises(SetupError, match="cannot listen"):
            other.start()
    finally:
        other.stop(0)
