"""Which handler runs a parsed command: the local one, the remote one, or the
fork between them on whether a server is named.

The parser gives every command a :class:`Command` (``args.handler``) and
:func:`dispatch` runs it. A command with both forms (``rules list|show|del``,
``events``, ``top``, ``stats``) talks to the server when one is named
(``--server HOST:PORT``, else ``$BREAKWATER_SERVER``, else the CLI config:
:func:`controller.api.client.resolve`) and works on this machine otherwise;
each form refuses the flags only the other one takes, naming the flag. A
command with only a remote form (``rules create|update``, ``nodes``) needs a
server; one with only a local form never looks for one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..api.client import ENV_SERVER, ClientSettings, resolve
from ..errors import InputError

__all__ = ["Command", "LocalHandler", "RemoteHandler", "dispatch", "settings"]

LocalHandler = Callable[[argparse.Namespace], int]
RemoteHandler = Callable[[argparse.Namespace, ClientSettings], int]


@dataclass(frozen=True)
class Command:
    """A command's handlers: at least one of ``local`` and ``remote``.

    ``local_flags`` are the flags of the local form (refused when talking to
    a server), ``remote_flags`` those of the remote form (refused locally),
    by their argparse ``dest``, or ``dest:--spelling`` where the flag is not
    spelled like its dest.
    """

    local: LocalHandler | None = None
    remote: RemoteHandler | None = None
    local_flags: tuple[str, ...] = ("interface",)
    remote_flags: tuple[str, ...] = ()


def settings(args: argparse.Namespace, *, required: bool = False) -> ClientSettings:
    """Where this command's server is (None: not named anywhere; an
    InputError instead when the command needs one)."""
    s = resolve(getattr(args, "server", None), getattr(args, "timeout", None),
                cert=getattr(args, "cert", None), key=getattr(args, "key", None),
                ca=getattr(args, "ca", None),
                insecure=bool(getattr(args, "insecure", False)))
    if required and s.server is None:
        raise InputError(f"no server: give --server HOST:PORT, or set ${ENV_SERVER} "
                         "(this command talks to a controller or an agent's API)")
    return s


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command's handler: the remote one when a server is
    named (or the command has no local form), else the local one."""
    command: Command = args.handler
    if command.local is None:
        assert command.remote is not None, "a command has a local or a remote handler"
        return command.remote(args, settings(args, required=True))
    if command.remote is None:
        return command.local(args)
    remote = settings(args)
    if remote.server is not None:
        flag = _given(args, command.local_flags)
        if flag:
            raise InputError(f"{flag} works on this machine's maps; leave it out when talking to a server")
        return command.remote(args, remote)
    flag = _given(args, command.remote_flags)
    if flag:
        raise InputError(f"{flag} needs a server: give --server HOST:PORT or set $BREAKWATER_SERVER")
    return command.local(args)


def _given(args: argparse.Namespace, names: Sequence[str]) -> str | None:
    """The first of these flags the command line set, spelled as a flag."""
    for name in names:
        dest, _, spelling = name.partition(":")
        if getattr(args, dest, None) not in (None, False, [], "", 0):
            return spelling or "--" + dest.replace("_", "-")
    return None
