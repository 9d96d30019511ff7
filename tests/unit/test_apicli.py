"""The CLI against a real in-process controller (controller.cli.remote,
reached through controller.cli.main and its dispatch): tables and --json,
exit codes (2 for a refused field, named; 1 for the rest), where the server
comes from, rules from flags and files, nodes, events (listed, and followed
by a real process until Ctrl-C), top and stats against the fleet telemetry
service."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import controller.cli.main as cli
from breakwater.v1 import telemetry_pb2
from controller.api.client import (
    DEFAULT_PORT,
    ENV_CONFIG,
    ENV_SERVER,
    ENV_TIMEOUT,
    resolve,
    target_of,
)
from controller.api.server import create_server
from controller.api.telemetry import FleetTelemetry
from controller.api.telemetry_service import TelemetryServicer, telemetry_service
from controller.errors import InputError
from controller.fleet.config import ControllerConfig
from controller.fleet.daemon import Controller, create_controller

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_operator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SERVER, raising=False)
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    monkeypatch.setenv(ENV_CONFIG, os.devnull)
    monkeypatch.setenv("USER", "carol")
    monkeypatch.delenv("SUDO_USER", raising=False)


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    c = create_controller(ControllerConfig(listen="127.0.0.1:0", state_dir=tmp_path / "state", metrics=None),
                          sync=False)
    c.start()
    try:
        yield c
    finally:
        c.stop(0)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """cli.main points the root logger at the (captured) stderr: put it back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process; the in-process server's own logs (same root
    logger) are kept out of stderr with --log-level warning."""
    rc = cli.main(["--log-level", "warning", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    rc, out, err = run(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


# --- which server ---------------------------------------------------------------------------


def test_targets() -> None:
    assert target_of("ctl.example", "--server") == f"ctl.example:{DEFAULT_PORT}"
    assert target_of("10.0.0.1:9700", "--server") == "10.0.0.1:9700"
    assert target_of("[::1]:9700", "--server") == "[::1]:9700"
    assert target_of("[2001:db8::1]", "--server") == f"[2001:db8::1]:{DEFAULT_PORT}"
    for bad, words in (("::1", "in brackets"), ("host:0", "1..65535"), ("host:x", "1..65535"),
                       ("", "HOST:PORT"),
                       ("http://x", "HOST:PORT"), ("[::1", "closing ]")):
        with pytest.raises(InputError, match=words):
            target_of(bad, "--server")


def test_server_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve().server is None
    config = tmp_path / "cli.toml"
    config.write_text('server = "ctl-from-file"\ntimeout = 3\n')
    monkeypatch.setenv(ENV_CONFIG, str(config))
    s = resolve()
    assert (s.server, s.timeout, s.source) == (f"ctl-from-file:{DEFAULT_PORT}", 3.0, str(config))
    monkeypatch.setenv(ENV_SERVER, "ctl-from-env:1234")
    monkeypatch.setenv(ENV_TIMEOUT, "4.5")
    s = resolve()
    assert (s.server, s.timeout, s.source) == ("ctl-from-env:1234", 4.5, f"${ENV_SERVER}")
    s = resolve("flag:1", 2)
    assert (s.server, s.timeout, s.source) == ("flag:1", 2.0, "--server")
    config.write_text('sever = "x"\n')
    monkeypatch.delenv(ENV_SERVER)
    with pytest.raises(InputError, match="sever: unknown key"):
        resolve()
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "missing.toml"))
    with pytest.raises(InputError, match="no such file"):
        resolve()
    with pytest.raises(InputError, match="--timeout"):
        resolve("x:1", -1)


def test_env_server_switches_rules_list_to_remote(ctl: Controller, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SERVER, ctl.address)
    assert run_json(capsys, "rules", "list") == []


def test_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "rules", "create", "x", "--action", "drop")
    assert rc == 2 and "no server: give --server HOST:PORT" in err
    rc, _, err = run(capsys, "nodes", "list")
    assert rc == 2 and "no server" in err
    rc, _, err = run(capsys, "events", "--follow")
    assert rc == 2 and "--follow needs a server" in err
    rc, _, err = run(capsys, "rules", "list", "--filter", "priority = 1")
    assert rc == 2 and "--filter needs a server" in err


def test_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "rules", "list", "--server", "127.0.0.1:1", "--timeout", "3")
    assert rc == 1 and err.startswith("breakwater: error: 127.0.0.1:1 (from --server): ")
    assert "is `breakwater controller`" in err and err.count("\n") == 1


def test_local_flags_are_refused_remotely(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "rules", "list", "--server", ctl.address, "-i", "eth0")
    assert rc == 2 and "--interface works on this machine's maps" in err
    rc, _, err = run(capsys, "rules", "del", "x", "--server", ctl.address, "--dry-run")
    assert rc == 2 and "--dry-run works on this machine's maps" in err


# --- rules ----------------------------------------------------------------------------------


def test_rules_round_trip(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", ctl.address)
    rc, out, err = run(capsys, "rules", "create", "dns-amp", *S, "--src", "198.51.100.0/24,203.0.113.0/24",
                       "--protocol", "udp", "--sport", "53", "--action", "rate_limit", "--pps", "1000",
                       "--per-source", "--ttl", "10m", "--selector", "site=fra1", "--comment", "resolvers",
                       "--reason", "INC-9")
    assert rc == 0, err
    assert "rate_limit(pps=1000 per_source)" in out and "site=fra1" in out
    assert "created 1 rule(s) in version 1" in out
    rule = run_json(capsys, "rules", "get", "dns-amp", *S)
    assert rule["created_by"] == "carol" and rule["match"]["sport"] == {"lo": 53, "hi": 53}
    assert rule["scope"] == {"node_selector": {"match_labels": {"site": "fra1"}}} and "expire_time" in rule
    assert ctl.store.audit()[0].reason == "INC-9" and ctl.store.audit()[0].actor == "carol"
    rc, out, _ = run(capsys, "rules", "list", *S)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "PRIO", "ACTION", "MATCH"] and lines[1].startswith("dns-amp")
    assert "1 rule(s) at rule set version 1" in lines[-1]
    # update: only the flags given, as the mask
    rc, out, err = run(capsys, "rules", "update", "dns-amp", *S, "--pps", "5000", "--comment", "raised")
    assert rc == 0 and "updated: action.rate_limit.pps, comment" in out, err
    updated = run_json(capsys, "rules", "show", "rules/dns-amp", *S)
    assert updated["action"]["rate_limit"] == {"pps": "5000", "scope": "RATE_LIMIT_SCOPE_PER_SOURCE"}
    assert updated["comment"] == "raised" and updated["match"] == rule["match"] and updated["version"] == "2"
    rc, out, _ = run(capsys, "rules", "update", "dns-amp", *S, "--action", "drop", "--everywhere",
                     "--permanent")
    assert rc == 0
    plain = run_json(capsys, "rules", "get", "dns-amp", *S)
    assert plain["action"] == {"kind": "ACTION_KIND_DROP"}
    assert "scope" not in plain and "expire_time" not in plain
    # a stale etag is refused (exit 1), a current one works
    rc, _, err = run(capsys, "rules", "update", "dns-amp", *S, "--priority", "5", "--etag", rule["etag"])
    assert rc == 1 and "changed since it was read" in err
    rc, _, err = run(capsys, "rules", "delete", "dns-amp", *S, "--etag", plain["etag"])
    assert rc == 0, err
    rc, _, err = run(capsys, "rules", "delete", "dns-amp", *S)
    assert rc == 1 and "does not exist" in err
    rc, _, err = run(capsys, "rules", "delete", "dns-amp", *S, "--allow-missing")
    assert rc == 0


def test_refused_fields_exit_2_naming_the_field(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", ctl.address)
    for args, words in ((("rules", "create", "x", *S, "--dport", "80", "--action", "drop"),
                         "rule.match.dport: ports need protocol"),
                        (("rules", "create", "x", *S, "--protocol", "tcp", "--dport", "70000", "--action",
                          "drop"),
                         "rule.match.dport: 70000 is out of range"),
                        (("rules", "create", "x", *S, "--src", "10.0.0.1/24", "--action", "drop"),
                         "rule.match.src[0]: '10.0.0.1/24' has host bits set"),
                        (("rules", "create", "x", *S, "--src", "10.0.0.0/8"), "rule.action: required"),
                        (("rules", "create", "Bad", *S, "--match-all", "--action", "drop"),
                         "rule_id: 'Bad' is not a valid"),
                        (("rules", "create", "x", *S, "--action", "drop"), "say which packets"),
                        (("rules", "create", "x", *S, "--match-all", "--src", "10.0.0.0/8", "--action",
                          "drop"),
                         "--match-all matches every packet: leave out --src"),
                        (("rules", "create", "x", *S, "--match-all", "--action", "drop", "--node", "Edge!"),
                         "rule.scope.node"),
                        (("rules", "create", "x", *S, "--match-all", "--action", "drop", "--ttl", "soon"),
                         "--ttl: "),
                        (("rules", "create", "x", *S, "--action", "drop", "--dport", "http"), "--dport: "),
                        (("rules", "list", *S, "--filter", "orign = 1"), "filter: column 1: unknown field"),
                        (("nodes", "list", *S, "--filter", "health = sick"), "filter: column 10:"),
                        (("events", *S, "--filter", "attack = 1"), "filter: column 8:")):
        rc, _, err = run(capsys, *args)
        assert rc == 2, (args, err)
        assert err.startswith("breakwater: error: ") and words in err, (args, err)
    assert ctl.store.version == 0 and ctl.store.audit() == []
    rc, _, err = run(capsys, "rules", "update", "x", *S)
    assert rc == 2 and "nothing to change" in err


def test_dry_run_and_files(ctl: Controller, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    S = ("--server", ctl.address)
    rc, _, err = run(capsys, "rules", "create", "x", *S, "--match-all", "--action", "drop", "--dry-run")
    assert rc == 2 and "guard broad-prefix" in err and ctl.store.version == 0
    rc, out, _ = run(capsys, "rules", "create", "x", *S, "--match-all", "--action", "drop", "--dry-run",
                     "--override", "broad-prefix")
    assert rc == 0 and "validated, nothing created" in out and ctl.store.version == 0
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nid = "a"\naction = "drop"\nmatch = { src = ["192.0.2.0/24"] }\n\n'
                     '[[rules]]\nid = "b"\npriority = 10\naction = { kind = "rate_limit", pps = 100 }\n'
                     'match = { protocol = "udp", dport = 123 }\n')
    made = run_json(capsys, "rules", "create", *S, "--file", str(rules), "--node", "edge-1")
    assert [r["name"] for r in made] == ["rules/a", "rules/b"] and {r["version"] for r in made} == {"1"}
    assert all(r["scope"] == {"node": "nodes/edge-1"} for r in made)
    rc, _, err = run(capsys, "rules", "create", *S, "--file", str(rules))
    assert rc == 1 and "exists already" in err and ctl.store.version == 1  # all or none
    flt = 'scope.node = "nodes/edge-1" AND priority < 100'
    listed = run_json(capsys, "rules", "list", *S, "--filter", flt)
    assert [r["name"] for r in listed] == ["rules/b"]
    assert len(run_json(capsys, "rules", "list", *S, "--limit", "1")) == 1


# --- nodes and events ---------------------------------------------------------------------


def test_nodes(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", ctl.address)
    ctl.store.register_node("edge-fra1-01", {"site": "fra1"}, {
        "agent_version": "0.1.0", "mode": "AGENT_MODE_ENFORCE", "interfaces": [{"name": "eth1"}]})
    ctl.store.register_node("edge-ams1-01", {"site": "ams1"}, {"agent_version": "0.1.0"})
    ctl.store.update_node("edge-ams1-01", connected=False)
    rc, out, _ = run(capsys, "nodes", "list", *S)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["NODE", "HEALTH", "CONNECTED"]
    assert [r[:3] for r in rows[1:]] == [["edge-ams1-01", "unreachable", "no"],
                                         ["edge-fra1-01", "healthy", "yes"]]
    listed = run_json(capsys, "nodes", "list", *S, "--filter", 'labels.site = "fra1"')
    assert [n["name"] for n in listed] == ["nodes/edge-fra1-01"]
    assert listed[0]["health"] == "NODE_HEALTH_HEALTHY"
    rc, out, _ = run(capsys, "nodes", "get", "edge-fra1-01", *S)
    assert rc == 0 and "healthy" in out and "eth1" in out and "site=fra1" in out
    rc, _, err = run(capsys, "nodes", "get", "nope", *S)
    assert rc == 1 and "never registered" in err


def test_events_list(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", ctl.address)
    run(capsys, "rules", "create", "a", *S, "--src", "192.0.2.1", "--action", "drop")
    run(capsys, "rules", "delete", "a", *S)
    rc, out, _ = run(capsys, "events", *S)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "NODE", "KIND", "WHAT"]
    assert "rule deleted" in lines[1] and "rule created" in lines[2] and "a v1 by carol" in lines[2]
    events = run_json(capsys, "events", *S, "--filter", "rule.kind = RULE_EVENT_KIND_CREATED")
    assert [e["sequence"] for e in events] == ["1"]
    assert len(run_json(capsys, "events", *S, "--limit", "1")) == 1


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_events_follow_streams_until_ctrl_c(ctl: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", ctl.address)
    run(capsys, "rules", "create", "old", *S, "--src", "192.0.2.1", "--action", "drop")
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "events", "--follow", "--json", *S,
                             "--after-sequence", "0", "--filter", "rule:*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the replay
        assert first["rule"]["rule_id"] == "old"
        run(capsys, "rules", "create", "live", *S, "--src", "192.0.2.2", "--action", "drop")
        live = json.loads(proc.stdout.readline())
        assert (live["rule"]["rule_id"], live["rule"]["kind"]) == ("live", "RULE_EVENT_KIND_CREATED")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- telemetry ------------------------------------------------------------------------------


@pytest.fixture
def telemetry() -> Iterator[str]:
    """The fleet telemetry service (controller.api.telemetry) with two nodes' reports."""
    fleet = FleetTelemetry()
    now = time.time()
    for node, pps in (("edge-1", 900), ("edge-2", 100)):
        s = telemetry_pb2.TelemetrySummary()
        s.end_time.FromNanoseconds(int(now * 1e9))
        s.interval.FromSeconds(1)
        s.actions.passed.packets, s.actions.dropped.packets = 1000, pps
        s.top_sources.append(telemetry_pb2.AddressCounters(
            address="198.51.100.7", counters=telemetry_pb2.TrafficCounters(packets=pps, bytes=pps * 60,
                                                                            drops=pps // 2, syn=pps)))
        s.top_sources.append(telemetry_pb2.AddressCounters(
            address="203.0.113.9", counters=telemetry_pb2.TrafficCounters(packets=10, bytes=50000)))
        fleet.offer(node, s, now=now)
    fleet.fold(now)
    server, port = create_server("127.0.0.1:0", [telemetry_service(TelemetryServicer(fleet))])
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_top_and_stats(telemetry: str, capsys: pytest.CaptureFixture[str]) -> None:
    S = ("--server", telemetry)
    rc, out, err = run(capsys, "top", *S, "--iterations", "2", "--interval", "0.05")
    assert rc == 0, err
    assert out.count("top sources by packets over") == 2 and "(2 node(s) reporting)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("198.", "203."))]
    assert [r[0] for r in rows[:2]] == ["198.51.100.7", "203.0.113.9"]
    doc = run_json(capsys, "top", *S, "--by", "bytes")  # --json: one refresh
    assert doc["top_talkers"][0]["address"] == "203.0.113.9" and doc["nodes_reporting"] == 2
    one = run_json(capsys, "top", *S, "--node", "edge-2", "-n", "1")
    assert len(one["top_talkers"]) == 1 and one["top_talkers"][0]["nodes"] == ["nodes/edge-2"]
    rc, _, err = run(capsys, "top", *S, "--by", "drops")
    assert rc == 2 and "local counters only" in err
    rc, out, err = run(capsys, "stats", *S)
    assert rc == 0, err
    assert "2 node(s) reporting" in out and out.splitlines()[1].split() == ["ACTION", "PACKETS", "BYTES"]
    stats = run_json(capsys, "stats", *S, "--window", "120")
    assert stats["actions"]["dropped"]["packets"] == "1000"


def test_stats_against_a_server_without_telemetry(ctl: Controller,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "stats", "--server", ctl.address)
    assert rc == 1 and "does not serve this call" in err
