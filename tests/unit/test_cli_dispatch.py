"""The CLI's local/remote fork (controller.cli.dispatch): every command the
parser declares runs a Command with a handler; a command with both forms
refuses the flags of the other form, naming the flag, before it touches a
map or a server; a command with only a remote form needs a server."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import pytest

from controller.api.client import ENV_CONFIG, ENV_SERVER, ClientSettings
from controller.cli.dispatch import Command, dispatch
from controller.cli.parser import build_parser
from controller.errors import InputError

# A server nothing listens on: every case fails before it would connect.
SERVER = ("--server", "127.0.0.1:1")

# (command line without a server, the remote-only flag it refuses)
LOCAL_REFUSES = [
    (["rules", "list", "--filter", "priority = 1"], "--filter"),
    (["rules", "list", "--show-expired"], "--show-expired"),
    (["rules", "list", "--limit", "3"], "--limit"),
    (["rules", "del", "x", "--etag", "e"], "--etag"),
    (["rules", "del", "x", "--allow-missing"], "--allow-missing"),
    (["rules", "del", "x", "--reason", "why"], "--reason"),
    (["events", "--filter", "rule:*"], "--filter"),
    (["events", "--follow"], "--follow"),
    (["events", "--after-sequence", "2"], "--after-sequence"),
    (["top", "--node", "n1"], "--node"),
    (["top", "--destinations"], "--destinations"),
    (["top", "--window", "10"], "--window"),
    (["top", "--iterations", "2"], "--iterations"),
    (["stats", "--node", "n1"], "--node"),
    (["stats", "--window", "10"], "--window"),
]

# (command line with a server, the local-only flag it refuses)
REMOTE_REFUSES = [
    (["rules", "list", "-i", "eth0"], "--interface"),
    (["rules", "show", "x", "-i", "eth0"], "--interface"),
    (["rules", "del", "x", "-i", "eth0"], "--interface"),
    (["rules", "del", "x", "--dry-run"], "--dry-run"),
    (["top", "-i", "eth0"], "--interface"),
    (["stats", "-i", "eth0"], "--interface"),
    (["events", "--state-dir", "/tmp"], "--state-dir"),
]

NEEDS_SERVER = [["rules", "create", "x", "--action", "drop"], ["rules", "update", "x", "--ttl", "1h"],
                ["nodes", "list"], ["nodes", "get", "n1"]]


@pytest.fixture(autouse=True)
def no_operator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SERVER, raising=False)
    monkeypatch.setenv(ENV_CONFIG, os.devnull)


def _leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, p
    for action in subs:
        for name, sp in action.choices.items():
            yield from _leaves(sp, (*path, name))


def test_every_command_has_a_handler() -> None:
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 25
    for path, sp in leaves:
        command = sp.get_default("handler")
        assert isinstance(command, Command), path
        assert command.local is not None or command.remote is not None, path


def _id(value: object) -> str:
    return " ".join(value) if isinstance(value, list) else ""


@pytest.mark.parametrize(("argv", "flag"), LOCAL_REFUSES, ids=_id)
def test_the_local_form_refuses_remote_flags(argv: list[str], flag: str) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(InputError, match=f"^{flag} needs a server: give --server HOST:PORT"):
        dispatch(args)


@pytest.mark.parametrize(("argv", "flag"), REMOTE_REFUSES, ids=_id)
def test_the_remote_form_refuses_local_flags(argv: list[str], flag: str) -> None:
    args = build_parser().parse_args([*argv, *SERVER])
    with pytest.raises(InputError, match=f"^{flag} works on this machine's maps; leave it out"):
        dispatch(args)


@pytest.mark.parametrize("argv", NEEDS_SERVER, ids=" ".join)
def test_remote_only_commands_need_a_server(argv: list[str]) -> None:
    with pytest.raises(InputError, match=r"^no server: give --server HOST:PORT, or set \$BREAKWATER_SERVER"):
        dispatch(build_parser().parse_args(argv))


def test_the_fork_follows_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def here(args: argparse.Namespace) -> int:
        calls.append("local")
        return 0

    def there(args: argparse.Namespace, s: ClientSettings) -> int:
        calls.append(f"remote {s.server}")
        return 0

    command = Command(here, there)
    args = build_parser().parse_args(["stats"])
    monkeypatch.setattr(args, "handler", command)
    assert dispatch(args) == 0
    monkeypatch.setenv(ENV_SERVER, "ctl.example:9700")
    assert dispatch(args) == 0
    assert calls == ["local", "remote ctl.example:9700"]
