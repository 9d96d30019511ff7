"""The CLI's side of the gRPC API: where the server is, and typed calls.

Which server (first found wins):

1. ``--server HOST:PORT`` on the command line;
2. the ``BREAKWATER_SERVER`` environment variable;
3. ``server = "HOST:PORT"`` in the CLI configuration: ``$BREAKWATER_CLI_CONFIG``,
   else ``~/.config/breakwater/cli.toml`` (``$XDG_CONFIG_HOME``), else
   ``/etc/breakwater/cli.toml``.

A server without a port gets :data:`DEFAULT_PORT` (the controller's). The
same places give ``timeout`` (seconds per call; ``--timeout``,
``BREAKWATER_TIMEOUT``, default 10) and the client certificate for mutual
TLS: ``cert``, ``key`` and ``ca`` (``--cert``/``--key``/``--ca``,
``BREAKWATER_CERT``/``BREAKWATER_KEY``/``BREAKWATER_CA``; all three or none;
``breakwater pki issue operator NAME --role ROLE`` makes them). Without
them the channel is plaintext, which only a loopback server accepts unless
``insecure`` (``--insecure``, ``BREAKWATER_INSECURE=1``) says otherwise. Nothing found: the commands that have
a local form (``rules list``, ``events``, ``top``, ``stats``) work on the
local machine as before, the others say how to name a server.

:class:`ApiClient` makes every call with the timeout, the caller's identity
(``x-breakwater-actor``: ``$SUDO_USER``/``$USER`` unless given) and reason
(``x-breakwater-reason``) as metadata, and turns failures into Breakwater
errors through :func:`controller.api.status.rpc_errors`: ``INVALID_ARGUMENT`` is
a :class:`~controller.rules.model.FieldError` naming the field (the CLI exits 2),
an unreachable server an :class:`~controller.errors.UnavailableError` that
names the address and where it came from (exit 1).
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from breakwater.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
    rule_pb2,
    rule_service_pb2,
    rule_service_pb2_grpc,
    telemetry_service_pb2,
    telemetry_service_pb2_grpc,
)

from ..errors import InputError, RemoteError, UnavailableError
from .auth import TlsFiles, channel_credentials, check_plaintext
from .callers import ACTOR_METADATA, REASON_METADATA
from .pages import MAX_PAGE_SIZE
from .status import rpc_errors

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ENV_CONFIG",
    "ENV_INSECURE",
    "ENV_SERVER",
    "ENV_TIMEOUT",
    "ENV_TLS",
    "ApiClient",
    "ClientSettings",
    "node_name_of",
    "resolve",
    "rule_name_of",
    "target_of",
]

DEFAULT_PORT: Final = 9610
DEFAULT_TIMEOUT: Final = 10.0
ENV_SERVER: Final = "BREAKWATER_SERVER"
ENV_TIMEOUT: Final = "BREAKWATER_TIMEOUT"
ENV_CONFIG: Final = "BREAKWATER_CLI_CONFIG"
ENV_INSECURE: Final = "BREAKWATER_INSECURE"
ENV_TLS: Final = {"cert": "BREAKWATER_CERT", "key": "BREAKWATER_KEY", "ca": "BREAKWATER_CA"}
SYSTEM_CONFIG: Final = Path("/etc/breakwater/cli.toml")
_CONFIG_KEYS: Final = ("server", "timeout", "cert", "key", "ca", "insecure")

_R = TypeVar("_R")


@dataclass(frozen=True)
class ClientSettings:
    """Where to talk to and how long to wait: ``server`` is None when no
    place names one; ``source`` says which place did (for messages)."""

    server: str | None
    timeout: float = DEFAULT_TIMEOUT
    source: str = ""
    tls: TlsFiles | None = None
    """The client certificate, its key and the CA (None: plaintext)."""
    insecure: bool = False
    """Plaintext to a non-loopback server, on purpose."""


def target_of(text: str, source: str) -> str:
    """``HOST:PORT`` (``HOST`` alone gets :data:`DEFAULT_PORT`; IPv6 in
    brackets), or an :class:`InputError` naming ``source``."""
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw) or "/" in raw:
        raise InputError(f"{source}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not host:
            raise InputError(f"{source}: {text!r}: an IPv6 address needs a closing ] (e.g. [::1]:9610)")
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            raise InputError(f"{source}: {text!r} is not [IPv6]:PORT")
        host = f"[{host}]"
    elif raw.count(":") > 1:
        raise InputError(f"{source}: {text!r}: write an IPv6 address in brackets, e.g. [::1]:9610")
    else:
        host, sep, port_text = raw.partition(":")
        port = port_text if sep else None
    if port is None:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"{source}: {text!r}: the port must be 1..65535")
    return f"{host}:{int(port)}"


def _timeout(value: object, source: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{source}: {value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= 3600:
        raise InputError(f"{source}: {value!r} is not a timeout; give 0 < seconds <= 3600")
    return float(value)


def _config_paths(env: Mapping[str, str]) -> list[Path]:
    if env.get(ENV_CONFIG):
        return [Path(env[ENV_CONFIG])]
    home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return [home / "breakwater" / "cli.toml", SYSTEM_CONFIG]


def _read_config(env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    explicit = bool(env.get(ENV_CONFIG))
    for path in _config_paths(env):
        try:
            text = path.read_text()
        except FileNotFoundError:
            if explicit:
                raise InputError(f"{path} (${ENV_CONFIG}): no such file") from None
            continue
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
        for key in data:
            if key not in _CONFIG_KEYS:
                raise InputError(f"{path}: {key}: unknown key; known: {', '.join(_CONFIG_KEYS)}")
        return data, str(path)
    return {}, ""


def _tls(flags: Mapping[str, str | None], environ: Mapping[str, str], config: Mapping[str, Any],
         config_source: str) -> TlsFiles | None:
    """cert, key and ca, each from its flag, else its variable, else the config: all or none."""
    paths: dict[str, Path] = {}
    for name, flag in flags.items():
        if flag:
            where, raw = f"--{name}", flag
        elif environ.get(ENV_TLS[name]):
            where, raw = f"${ENV_TLS[name]}", environ[ENV_TLS[name]]
        elif name in config:
            where, raw = f"{config_source}: {name}", config[name]
            if not isinstance(raw, str):
                raise InputError(f"{where}: expected a file path, got {raw!r}")
        else:
            continue
        path = Path(raw).expanduser()
        if not path.is_file():
            raise InputError(f"{where}: {raw}: no such file")
        paths[name] = path
    if not paths:
        return None
    missing = [n for n in ENV_TLS if n not in paths]
    if missing:
        raise InputError(f"--{missing[0]}: needed with --{' --'.join(paths)} (mutual TLS takes "
                         "--cert, --key and --ca)")
    return TlsFiles(cert=paths["cert"], key=paths["key"], ca=paths["ca"])


def resolve(server: str | None = None, timeout: float | None = None, *,
            cert: str | None = None, key: str | None = None, ca: str | None = None,
            insecure: bool = False, env: Mapping[str, str] | None = None) -> ClientSettings:
    """The settings from the flags (None: not given), the environment and the config file."""
    environ = os.environ if env is None else env
    flag_wait = _timeout(timeout, "--timeout") if timeout is not None else None
    config, config_source = _read_config(environ)
    if server is not None:
        chosen: str | None = target_of(server, "--server")
        source = "--server"
    elif environ.get(ENV_SERVER):
        chosen, source = target_of(environ[ENV_SERVER], f"${ENV_SERVER}"), f"${ENV_SERVER}"
    elif "server" in config:
        if not isinstance(config["server"], str):
            raise InputError(f"{config_source}: server: expected \"HOST:PORT\", got {config['server']!r}")
        chosen, source = target_of(config["server"], f"{config_source}: server"), config_source
    else:
        chosen, source = None, ""
    if flag_wait is not None:
        wait = flag_wait
    elif environ.get(ENV_TIMEOUT):
        wait = _timeout(environ[ENV_TIMEOUT], f"${ENV_TIMEOUT}")
    elif "timeout" in config:
        wait = _timeout(config["timeout"], f"{config_source}: timeout")
    else:
        wait = DEFAULT_TIMEOUT
    tls = _tls({"cert": cert, "key": key, "ca": ca}, environ, config, config_source)
    plain = (insecure or environ.get(ENV_INSECURE, "") in ("1", "true", "yes")
             or config.get("insecure") is True)
    return ClientSettings(chosen, wait, source, tls, plain)


def rule_name_of(text: str) -> str:
    """``rules/ID`` for ``ID`` or ``rules/ID``."""
    return text if text.startswith("rules/") else f"rules/{text}"


def node_name_of(text: str) -> str:
    """``nodes/ID`` for ``ID`` or ``nodes/ID``."""
    return text if text.startswith("nodes/") else f"nodes/{text}"


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _default_actor() -> str:
    """Who is calling: the sudo user, else the login name."""
    name = os.environ.get("SUDO_USER") or os.environ.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = ""
    return name or "unknown"


class ApiClient:
    """One channel to a Breakwater API server and a method per call."""

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT, actor: str | None = None,
                 reason: str = "", source: str = "", tls: TlsFiles | None = None,
                 insecure: bool = False) -> None:
        self.target = target
        self.timeout = timeout
        self.source = source
        if tls is not None:
            self.channel = grpc.secure_channel(target, channel_credentials(tls))
        else:
            check_plaintext(target, insecure, source or "--server")
            self.channel = grpc.insecure_channel(target)
        self._rules = rule_service_pb2_grpc.RuleServiceStub(self.channel)
        self._nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self._events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self._telemetry = telemetry_service_pb2_grpc.TelemetryServiceStub(self.channel)
        md = [(ACTOR_METADATA, actor or _default_actor())]
        if reason:
            md.append((REASON_METADATA, reason))
        self.metadata: tuple[tuple[str, str], ...] = tuple(md)

    @classmethod
    def from_settings(cls, settings: ClientSettings, *, reason: str = "") -> ApiClient:
        if settings.server is None:
            raise InputError(f"no server: give --server HOST:PORT, or set ${ENV_SERVER}")
        return cls(settings.server, timeout=settings.timeout, reason=reason, source=settings.source,
                   tls=settings.tls, insecure=settings.insecure)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Breakwater errors for failed calls; an unreachable server names itself."""
        try:
            with rpc_errors():
                yield
        except UnavailableError as exc:
            where = f" (from {self.source})" if self.source else ""
            raise UnavailableError(f"{self.target}{where}: {exc}; is `breakwater controller` (or an "
                                   "agent's API) running there?", exc.code) from exc
        except RemoteError as exc:
            if exc.code != "UNIMPLEMENTED":
                raise
            raise RemoteError(f"{self.target} does not serve this call ({exc}); is it an older server, "
                              "or one without this service?", exc.code) from exc

    def _call(self, fn: Callable[..., _R], request: Any) -> _R:
        with self.errors():
            return fn(request, timeout=self.timeout, metadata=self.metadata)

    # -- rules --

    def list_rules(self, *, filter: str = "", show_expired: bool = False, limit: int = 0
                   ) -> tuple[list[rule_pb2.Rule], int]:
        """Every rule that matches (at most ``limit``; 0: all), and the version of the first page."""
        out: list[rule_pb2.Rule] = []
        token = ""
        version = 0
        while True:
            size = MAX_PAGE_SIZE if not limit else min(MAX_PAGE_SIZE, limit - len(out))
            resp = self._call(self._rules.ListRules, rule_service_pb2.ListRulesRequest(
                page_size=size, page_token=token, filter=filter, show_expired=show_expired))
            version = version or resp.version
            out.extend(resp.rules)
            token = resp.next_page_token
            if not token or (limit and len(out) >= limit):
                return out, version

    def get_rule(self, name: str) -> rule_pb2.Rule:
        return self._call(self._rules.GetRule, rule_service_pb2.GetRuleRequest(name=rule_name_of(name)))

    def create_rule(self, rule_id: str, rule: rule_pb2.Rule, *, validate_only: bool = False,
                    overrides: Sequence[str] = ()) -> rule_pb2.Rule:
        return self._call(self._rules.CreateRule, rule_service_pb2.CreateRuleRequest(
            rule_id=rule_id, rule=rule, validate_only=validate_only, override_guards=list(overrides)))

    def create_rules(self, rules: Sequence[tuple[str, rule_pb2.Rule]], *,
                     validate_only: bool = False, overrides: Sequence[str] = ()) -> list[rule_pb2.Rule]:
        resp = self._call(self._rules.BatchCreateRules, rule_service_pb2.BatchCreateRulesRequest(
            requests=[rule_service_pb2.CreateRuleRequest(rule_id=i, rule=r, override_guards=list(overrides))
                      for i, r in rules],
            validate_only=validate_only))
        return list(resp.rules)

    def update_rule(self, rule: rule_pb2.Rule, paths: Sequence[str] | None, *,
                    validate_only: bool = False, overrides: Sequence[str] = ()) -> rule_pb2.Rule:
        request = rule_service_pb2.UpdateRuleRequest(rule=rule, validate_only=validate_only,
                                                     override_guards=list(overrides))
        if paths is not None:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(paths)))
        return self._call(self._rules.UpdateRule, request)

    def delete_rule(self, name: str, *, etag: str = "", allow_missing: bool = False,
                    overrides: Sequence[str] = ()) -> None:
        self._call(self._rules.DeleteRule, rule_service_pb2.DeleteRuleRequest(
            name=rule_name_of(name), etag=etag, allow_missing=allow_missing, override_guards=list(overrides)))

    # -- nodes --

    def list_nodes(self, *, filter: str = "", limit: int = 0) -> list[node_pb2.Node]:
        out: list[node_pb2.Node] = []
        token = ""
        while True:
            size = MAX_PAGE_SIZE if not limit else min(MAX_PAGE_SIZE, limit - len(out))
            resp = self._call(self._nodes.ListNodes, node_service_pb2.ListNodesRequest(
                page_size=size, page_token=token, filter=filter))
            out.extend(resp.nodes)
            token = resp.next_page_token
            if not token or (limit and len(out) >= limit):
                return out

    def get_node(self, name: str) -> node_pb2.Node:
        return self._call(self._nodes.GetNode, node_service_pb2.GetNodeRequest(name=node_name_of(name)))

    def delete_node(self, name: str) -> None:
        self._call(self._nodes.DeleteNode, node_service_pb2.DeleteNodeRequest(name=node_name_of(name)))

    # -- events --

    def list_events(self, *, filter: str = "", limit: int = 50) -> list[event_pb2.Event]:
        """The newest ``limit`` events that match, newest first (0: all of them)."""
        out: list[event_pb2.Event] = []
        token = ""
        while True:
            size = MAX_PAGE_SIZE if not limit else min(MAX_PAGE_SIZE, limit - len(out))
            resp = self._call(self._events.ListEvents, event_service_pb2.ListEventsRequest(
                page_size=size, page_token=token, filter=filter))
            out.extend(resp.events)
            token = resp.next_page_token
            if not token or (limit and len(out) >= limit):
                return out

    @contextlib.contextmanager
    def watch_events(self, *, filter: str = "", after_sequence: int | None = None
                     ) -> Iterator[Iterator[event_pb2.Event]]:
        """``with client.watch_events() as stream: for e in stream: ...``; the
        stream is cancelled when the block ends (Ctrl-C included)."""
        request = event_service_pb2.WatchEventsRequest(filter=filter)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        with self.errors():
            call = self._events.WatchEvents(request, metadata=self.metadata)

        def events() -> Iterator[event_pb2.Event]:
            with self.errors():
                yield from call

        try:
            yield events()
        finally:
            call.cancel()

    # -- telemetry --

    def get_stats(self, *, node: str = "", window: float | None = None) -> telemetry_service_pb2.Stats:
        request = telemetry_service_pb2.GetStatsRequest(node=node_name_of(node) if node else "")
        if window is not None:
            request.window.CopyFrom(_duration(window))
        return self._call(self._telemetry.GetStats, request)

    def top_talkers(self, *, node: str = "", destinations: bool = False, by_bytes: bool = False,
                    window: float | None = None, limit: int = 20
                    ) -> telemetry_service_pb2.ListTopTalkersResponse:
        request = telemetry_service_pb2.ListTopTalkersRequest(
            parent=node_name_of(node) if node else "",
            kind=telemetry_service_pb2.TALKER_KIND_DESTINATION if destinations
            else telemetry_service_pb2.TALKER_KIND_SOURCE,
            order_by=telemetry_service_pb2.TALKER_ORDER_BYTES if by_bytes
            else telemetry_service_pb2.TALKER_ORDER_PACKETS,
            page_size=limit)
        if window is not None:
            request.window.CopyFrom(_duration(window))
        return self._call(self._telemetry.ListTopTalkers, request)



