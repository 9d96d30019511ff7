"""The agent's local API on a Unix socket: made 0600 in a directory made
0700 (only root, the agent's user, can reach it), served over a real
channel (``unix:`` target), alone (``api = ""``) or beside the loopback
port; the admission guards hold there too (the agent's management and
allowlist prefixes); a stale socket is replaced, a regular file in the way
refused."""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from breakwater.v1 import rule_pb2, rule_service_pb2, rule_service_pb2_grpc
from controller.agent.config import AgentConfig
from controller.agent.config import parse as parse_agent
from controller.agent.layers import RuleView
from controller.agent.localapi import LocalApi
from controller.api.client import ApiClient
from controller.api.telemetry import FleetTelemetry
from controller.errors import InputError, SetupError
from controller.rules.model import Rule, RuleSet


class FakeAgent:
    """The little of an agent the local API needs: its configuration and an empty view."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self.manual = RuleSet()

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def view(self) -> RuleView:
        return RuleView(manual=self.manual)

    def edit_manual_rules(self, edit: Callable[[RuleSet], RuleSet], *, actor: str,
                          events: Sequence[tuple[str, str, Rule]] = ()) -> RuleSet:
        self.manual = edit(self.manual)
        return self.manual


def _agent(tmp_path: Path, **keys: object) -> FakeAgent:
    doc = {"interfaces": ["eth0"], "state_dir": str(tmp_path / "state"), "management": ["192.0.2.0/24"],
           **keys}
    return FakeAgent(parse_agent(doc))


def _drop(src: str) -> rule_pb2.Rule:
    return rule_pb2.Rule(match=rule_pb2.Match(src=[src]),
                         action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP))


@pytest.mark.parametrize("tcp", [False, True])
def test_local_api_on_a_private_socket(tmp_path: Path, tcp: bool) -> None:
    sock = tmp_path / "run" / "api.sock"
    agent = _agent(tmp_path, api="127.0.0.1:0" if tcp else "", api_socket=str(sock))
    cfg = agent.config
    assert cfg.api_socket == sock and (cfg.api is None) is not tcp
    api = LocalApi(agent, cfg.api, FleetTelemetry(), cfg.api_socket)
    api.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert ("unix:" + str(sock)) in api.where and (tcp == ("127.0.0.1:" in api.where))
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            rules = rule_service_pb2_grpc.RuleServiceStub(ch)
            request = rule_service_pb2.CreateRuleRequest(rule_id="m1", rule=_drop("198.18.3.0/24"))
            made = rules.CreateRule(request, timeout=10)
            assert made.name == "rules/m1"
            with pytest.raises(grpc.RpcError) as info:
                rules.CreateRule(rule_service_pb2.CreateRuleRequest(rule_id="m2", rule=_drop("192.0.2.7")),
                                 timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "management prefix (guard protected)" in (info.value.details() or "")
        assert [r.id for r in agent.manual] == ["m1"]
        with ApiClient(f"unix:{sock}", timeout=10) as c:  # what `--server unix:PATH` uses
            assert [r.name for r in c.list_rules()[0]] == ["rules/m1"]
    finally:
        api.stop()
    again = LocalApi(agent, None, FleetTelemetry(), sock)  # a stale socket is replaced
    again.stop()


def test_socket_refusals(tmp_path: Path) -> None:
    for bad in ("relative.sock", "/" + "x" * 120, 5):
        with pytest.raises(InputError, match="api_socket"):
            _agent(tmp_path, api_socket=bad)
    blocker = tmp_path / "file"
    blocker.write_text("not a socket")
    agent = _agent(tmp_path, api="", api_socket=str(blocker))
    with pytest.raises(SetupError, match="exists and is not a socket"):
        LocalApi(agent, None, FleetTelemetry(), blocker)
    assert blocker.read_text() == "not a socket"
