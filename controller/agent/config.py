"""The agent's configuration: one TOML file (``/etc/breakwater/agent.toml``).

Every key is documented in ``docs/agent.toml``. :func:`load` validates the
whole file before the agent touches anything; every problem is a
:class:`ConfigError` (an :class:`~controller.errors.InputError`, so the CLI
exits 2) reading ``<file>: <key path>: <what is wrong>; <what is allowed>``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

from ..addresses import Prefix, parse_prefix
from ..api.auth import TlsFiles, check_plaintext
from ..config import checked, parse_listen, read_toml
from ..dataplane import challenge as chal
from ..dataplane.attach import DEFAULT_PIN_ROOT, AttachMode
from ..dataplane.maps import MAX_MAP_ENTRIES, MapSizes
from ..detection.config import DetectConfig, MitigateConfig
from ..errors import ConfigError, FieldError, InputError
from ..pki import identity_of
from ..rules.enforce import DEFAULT_STATE_DIR
from ..rules.scope import check_labels, check_node_id
from ..validate import check_int, check_keys, check_number, join

__all__ = [
    "DEFAULT_API",
    "DEFAULT_CONFIG",
    "DEFAULT_METRICS",
    "MIN_INTERVAL",
    "AgentConfig",
    "InterfaceConfig",
    "default_node_id",
    "load",
    "parse",
    "parse_controller",
]

DEFAULT_CONFIG: Final = Path("/etc/breakwater/agent.toml")
DEFAULT_METRICS: Final = "127.0.0.1:9611"
DEFAULT_API: Final = "127.0.0.1:9612"
DEFAULT_INTERVAL: Final = 1.0
MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 3600.0
ATTACH_MODES: Final = ("auto", "native", "generic")
AgentMode = Literal["monitor", "enforce"]

_TOP_KEYS: Final = (
    "interfaces", "protected", "management", "allowlist", "mode", "interval", "detach_on_exit",
    "state_dir", "pin_root", "metrics", "rules_file", "sizes", "detect", "mitigate",
    "controller", "node_id", "labels", "api", "api_socket", "tls", "challenge",
)
_TLS_KEYS: Final = ("cert", "key", "ca", "insecure")
_IFACE_KEYS: Final = ("name", "netns", "mode")
_CHALLENGE_KEYS: Final = ("prefix", "ports", "syn_pps", "ack_pps", "hold", "verified_ttl")
MAX_RATE: Final = 0xFFFFFFFF
# Keys of [mitigate] the agent fills in from the top level.
_OWNED_BY_AGENT: Final = {"allowlist": "allowlist", "management": "management", "monitor": "mode"}


@dataclass(frozen=True)
class InterfaceConfig:
    """One interface the agent protects."""

    name: str
    netns: str | None = None
    mode: AttachMode = "auto"


@dataclass(frozen=True)
class AgentConfig:
    """The validated configuration (see ``docs/agent.toml``)."""

    interfaces: tuple[InterfaceConfig, ...]
    protected: tuple[Prefix, ...] = ()
    management: tuple[Prefix, ...] = ()
    allowlist: tuple[Prefix, ...] = ()
    mode: AgentMode = "enforce"
    interval: float = DEFAULT_INTERVAL
    detach_on_exit: bool = False
    state_dir: Path = DEFAULT_STATE_DIR
    pin_root: Path = DEFAULT_PIN_ROOT
    metrics: tuple[str, int] | None = ("127.0.0.1", 9611)
    rules_file: Path | None = None
    sizes: MapSizes = field(default_factory=MapSizes)
    detect: DetectConfig = field(default_factory=DetectConfig)
    mitigate: MitigateConfig = field(default_factory=MitigateConfig)
    source: str = "<defaults>"
    controllers: tuple[str, ...] = ()
    """The controllers' SyncService, ``host:port`` each (several controllers
    over one etcd: the agent sticks to one and fails over to the next when
    its stream ends); empty: standalone."""
    node_id: str = "localhost"
    labels: dict[str, str] = field(default_factory=dict)
    api: tuple[str, int] | None = ("127.0.0.1", 9612)
    """Where the agent serves its local API; None: not at all."""
    tls: TlsFiles | None = None
    """[tls]: this node's certificate (``breakwater://node/<node_id>``), its
    key and the CA the controller's certificate must chain to; None: the
    sync stream is plaintext (loopback, or ``[tls] insecure = true``)."""
    insecure: bool = False
    challenge: tuple[chal.Service, ...] = ()
    """TCP services whose SYNs the data plane challenges under a flood, one per prefix and port."""
    api_socket: Path | None = None
    """The local API also (or only, with ``api = ""``) on this Unix socket, 0600 in a 0700 directory."""

    @property
    def monitor(self) -> bool:
        return self.mode == "monitor"

    @property
    def controller(self) -> str | None:
        """The first controller (None: standalone)."""
        return self.controllers[0] if self.controllers else None

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, JSON-friendly (``--check-config`` prints it)."""
        det = {f: _plain(getattr(self.detect, f)) for f in self.detect.__dataclass_fields__}
        mit = {f: _plain(getattr(self.mitigate, f)) for f in self.mitigate.__dataclass_fields__}
        return {
            "source": self.source,
            "interfaces": [{"name": i.name, "netns": i.netns, "mode": i.mode} for i in self.interfaces],
            "protected": [str(p) for p in self.protected],
            "management": [str(p) for p in self.management],
            "allowlist": [str(p) for p in self.allowlist],
            "mode": self.mode,
            "interval": self.interval,
            "detach_on_exit": self.detach_on_exit,
            "state_dir": str(self.state_dir),
            "pin_root": str(self.pin_root),
            "metrics": f"{self.metrics[0]}:{self.metrics[1]}" if self.metrics else "",
            "rules_file": str(self.rules_file) if self.rules_file else "",
            "controller": (self.controllers[0] if len(self.controllers) == 1
                           else list(self.controllers)) if self.controllers else "",
            "node_id": self.node_id,
            "labels": dict(self.labels),
            "api": f"{self.api[0]}:{self.api[1]}" if self.api else "",
            "tls": ({"cert": str(self.tls.cert), "key": str(self.tls.key), "ca": str(self.tls.ca)}
                    if self.tls else {}) | ({"insecure": True} if self.insecure else {}),
            "challenge": [_plain(s) for s in self.challenge],
            "api_socket": str(self.api_socket) if self.api_socket else "",
            "sizes": self.sizes.as_dict(),
            "detect": det,
            "mitigate": mit,
        }


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Prefix):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return {f: _plain(getattr(value, f)) for f in value.__dataclass_fields__}
    return value


def _text(value: object, path: str) -> str:
    """A non-empty string, stripped (validate has no string check of its own)."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError(path, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _prefix(value: object, path: str) -> Prefix:
    if not isinstance(value, str):
        raise FieldError(path, f"expected a prefix string, got {value!r}")
    try:
        return parse_prefix(value, field=path)
    except InputError as exc:
        raise FieldError(path, str(exc).removeprefix(f"{path}: ")) from None


def _prefix_list(value: object, path: str) -> tuple[Prefix, ...]:
    if not isinstance(value, list):
        raise FieldError(path, f"expected a list of prefixes like [\"198.18.0.0/24\"], got {value!r}")
    return tuple(dict.fromkeys(_prefix(item, join(path, f"[{i}]")) for i, item in enumerate(value)))


def _interfaces(value: object) -> tuple[InterfaceConfig, ...]:
    if not isinstance(value, list) or not value:
        raise FieldError("interfaces", "expected a non-empty list of interface names or "
                                       "tables {name, netns, mode}")
    out: list[InterfaceConfig] = []
    for i, item in enumerate(value):
        path = f"interfaces[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise FieldError(path, f"expected a name or a table {{name, netns, mode}}, got {item!r}")
        check_keys(item, _IFACE_KEYS, path)
        if "name" not in item:
            raise FieldError(f"{path}.name", "missing; the interface name, e.g. \"eth0\"")
        name = _text(item["name"], f"{path}.name")
        if len(name) > 15 or "/" in name or " " in name:
            raise FieldError(f"{path}.name", f"{name!r} is not a valid interface name "
                                             "(at most 15 characters, no '/' or spaces)")
        netns = _text(item["netns"], f"{path}.netns") if "netns" in item else None
        mode = item.get("mode", "auto")
        if mode not in ATTACH_MODES:
            raise FieldError(f"{path}.mode", f"{mode!r} is not one of {', '.join(ATTACH_MODES)}")
        if any(o.name == name and o.netns == netns for o in out):
            raise FieldError(f"{path}.name", f"{name!r} is listed twice")
        out.append(InterfaceConfig(name, netns, cast(AttachMode, mode)))
    if len({i.name for i in out}) != len(out):
        raise FieldError("interfaces", "interface names must be unique (their pins share one root)")
    return tuple(out)


def _challenge(value: object, path: str = "challenge") -> tuple[chal.Service, ...]:
    """``[[challenge]]`` tables: a prefix, its ports and the thresholds, one
    :class:`~controller.dataplane.challenge.Service` per prefix and port."""
    if not isinstance(value, list):
        raise FieldError(path, "expected [[challenge]] tables with prefix, ports, syn_pps, ack_pps, "
                               f"hold, verified_ttl; got {value!r}")
    out: dict[tuple[Prefix, int], chal.Service] = {}
    for i, item in enumerate(value):
        at = join(path, f"[{i}]")
        if not isinstance(item, dict):
            raise FieldError(at, f"expected a table {{prefix, ports, ...}}, got {item!r}")
        check_keys(item, _CHALLENGE_KEYS, at)
        for key in ("prefix", "ports"):
            if key not in item:
                raise FieldError(join(at, key), "missing; e.g. prefix = \"198.18.0.0/24\", ports = [443]")
        prefix = _prefix(item["prefix"], join(at, "prefix"))
        if prefix.family != 4:
            raise FieldError(join(at, "prefix"), f"{prefix} is IPv6: only IPv4 services can be "
                                                 "challenged so far")
        ports = item["ports"]
        if not isinstance(ports, list) or not ports:
            raise FieldError(join(at, "ports"), f"expected a non-empty list of TCP ports, got {ports!r}")
        syn_pps = check_int(item.get("syn_pps", chal.DEFAULT_SYN_PPS), join(at, "syn_pps"), 0, MAX_RATE)
        ack_pps = check_int(item.get("ack_pps", chal.DEFAULT_ACK_PPS), join(at, "ack_pps"), 0, MAX_RATE)
        hold = check_number(item.get("hold", chal.DEFAULT_HOLD), join(at, "hold"), 0, 86400, above=True)
        ttl = check_number(item.get("verified_ttl", chal.DEFAULT_VERIFIED_TTL), join(at, "verified_ttl"),
                           0, 86400, above=True)
        for j, port in enumerate(ports):
            port = check_int(port, join(at, f"ports[{j}]"), 1, 65535)
            if (prefix, port) in out:
                raise FieldError(join(at, f"ports[{j}]"), f"{prefix} port {port} is challenged twice")
            out[(prefix, port)] = chal.Service(prefix, port, syn_pps, ack_pps, hold, ttl)
    return tuple(out.values())


def _address(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(path, f"expected \"HOST:PORT\", got {value!r}")
    host, sep, port = value.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (not sep or not bare or not port.isdigit() or not 1 <= int(port) <= 65535
            or any(c.isspace() or c in "/[]," for c in bare) or (":" in bare and bare == host)):
        raise FieldError(path, f"{value!r} is not HOST:PORT (e.g. controller.example:9610, "
                               "10.0.0.5:9610, [2001:db8::5]:9610; port 1..65535)")
    return f"[{bare}]:{int(port)}" if ":" in bare else f"{bare}:{int(port)}"


def _controllers(value: object, path: str) -> tuple[str, ...]:
    """``"HOST:PORT"``, ``"HOST:PORT,HOST:PORT"`` or a list of them; ``""`` or ``[]``: none."""
    if isinstance(value, str):
        items: list[object] = list(value.split(",")) if value.strip() else []
        paths = [path] * len(items)
    elif isinstance(value, list):
        items = list(value)
        paths = [f"{path}[{i}]" for i in range(len(items))]
    else:
        raise FieldError(path, f"expected \"HOST:PORT\", a list of them, or \"\" (standalone), got {value!r}")
    out: list[str] = []
    for item, where in zip(items, paths, strict=True):
        address = _address(item, where)
        if address in out:
            raise FieldError(where, f"{address} is listed twice")
        out.append(address)
    return tuple(out)


def parse_controller(value: object, src: str = "--controller", path: str = "controller") -> tuple[str, ...]:
    """``"HOST:PORT"`` (``[::1]:9610`` for IPv6, a host name is fine), several
    separated by commas, or a list of them, as gRPC targets; ``""`` for none."""
    with checked(src):
        return _controllers(value, path)


_NOT_NODE_ID = re.compile(r"[^a-z0-9._-]")


def default_node_id(hostname: str | None = None) -> str:
    """The node id when none is configured: the host name, lower-cased,
    every character outside ``a-z 0-9 . _ -`` made ``-`` (``localhost`` if
    nothing is left)."""
    name = _NOT_NODE_ID.sub("-", (socket.gethostname() if hostname is None else hostname).lower())
    name = name.lstrip("._-")[:253]
    return name or "localhost"


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise FieldError("labels", f"expected a table like {{ site = \"fra1\" }}, got {value!r}")
    return check_labels(value, "labels")


def _sizes(value: object) -> MapSizes:
    if not isinstance(value, dict):
        raise FieldError("sizes", f"expected a table of MAP = ENTRIES, got {value!r}")
    check_keys(value, MapSizes.__dataclass_fields__, "sizes", what="map")
    for key, entries in value.items():
        check_int(entries, join("sizes", key), 1, MAX_MAP_ENTRIES)
    return MapSizes.from_dict(value)


def _section(doc: Mapping[str, object], key: str, build: Any, src: str) -> Any:
    table = doc.get(key, {})
    if not isinstance(table, dict):
        raise FieldError(key, f"expected a table, got {table!r}")
    try:
        with checked(src, key):
            return build(table)
    except TypeError as exc:  # a wrongly typed sub-table reaching a dataclass
        raise FieldError(key, str(exc)) from None


def parse(data: Mapping[str, object], source: str = "<config>",
          overrides: Mapping[str, object] | None = None) -> AgentConfig:
    """Validate a parsed TOML document (plus command-line ``overrides``,
    which take the same keys and win)."""
    doc: dict[str, object] = dict(data)
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    with checked(source):
        return _parse(doc, source)


def _parse(doc: Mapping[str, object], src: str) -> AgentConfig:
    """:func:`parse`'s checks: each raises a :class:`FieldError` at its key."""
    check_keys(doc, _TOP_KEYS)
    if "interfaces" not in doc:
        raise FieldError("interfaces", "missing; e.g. interfaces = [\"eth0\"] "
                                       "or [[interfaces]] tables with name, netns, mode")
    interfaces = _interfaces(doc["interfaces"])
    protected = _prefix_list(doc.get("protected", []), "protected")
    management = _prefix_list(doc.get("management", []), "management")
    allowlist = _prefix_list(doc.get("allowlist", []), "allowlist")
    mode = doc.get("mode", "enforce")
    if mode not in ("monitor", "enforce"):
        raise FieldError("mode", f"{mode!r} is not one of monitor, enforce")
    interval = check_number(doc.get("interval", DEFAULT_INTERVAL), "interval", MIN_INTERVAL, MAX_INTERVAL)
    detach = doc.get("detach_on_exit", False)
    if not isinstance(detach, bool):
        raise FieldError("detach_on_exit", f"expected true or false, got {detach!r}")
    state_dir = Path(_text(doc.get("state_dir", str(DEFAULT_STATE_DIR)), "state_dir"))
    pin_root = Path(_text(doc.get("pin_root", str(DEFAULT_PIN_ROOT)), "pin_root"))
    for key, p in (("state_dir", state_dir), ("pin_root", pin_root)):
        if not p.is_absolute():
            raise FieldError(key, f"{str(p)!r} is not an absolute path")
    metrics = parse_listen(doc.get("metrics", DEFAULT_METRICS), "metrics", DEFAULT_METRICS)
    rules_file = Path(_text(doc["rules_file"], "rules_file")) if doc.get("rules_file") else None
    sizes = _sizes(doc.get("sizes", {}))
    detect = _section(doc, "detect", DetectConfig.from_dict, src)
    mit_doc = doc.get("mitigate", {})
    if not isinstance(mit_doc, dict):
        raise FieldError("mitigate", f"expected a table, got {mit_doc!r}")
    for key, owner in _OWNED_BY_AGENT.items():
        if key in mit_doc:
            raise FieldError(f"mitigate.{key}", f"set by the top-level key {owner!r}; remove it here")
    mitigate = _section({"mitigate": mit_doc}, "mitigate", MitigateConfig.from_dict, src)
    mitigate = replace(mitigate, allowlist=allowlist, management=management, monitor=mode == "monitor")
    controllers = _controllers(doc.get("controller", ""), "controller")
    node_id = check_node_id(doc["node_id"], "node_id") if "node_id" in doc else default_node_id()
    labels = _labels(doc.get("labels", {}))
    api = parse_listen(doc.get("api", DEFAULT_API), "api", DEFAULT_API)
    tls, insecure = _tls(doc.get("tls", {}), controllers, node_id)
    challenge = _challenge(doc.get("challenge", []))
    if len(challenge) > sizes.challenge:
        raise FieldError("challenge", f"{len(challenge)} prefix/port pairs do not fit the chal_v4 map "
                                      f"({sizes.challenge} entries): raise [sizes] challenge")
    api_socket = _socket_path(doc.get("api_socket", ""), "api_socket")
    return AgentConfig(interfaces, protected, management, allowlist, mode, interval,
                       detach, state_dir, pin_root, metrics, rules_file, sizes, detect, mitigate, src,
                       controllers, node_id, labels, api, tls, insecure, challenge, api_socket)


def _socket_path(value: object, path: str) -> Path | None:
    if not isinstance(value, str):
        raise FieldError(path, "expected an absolute path like \"/run/breakwater/api.sock\" or \"\", "
                               f"got {value!r}")
    if not value:
        return None
    if not value.startswith("/") or len(value.encode()) > 100:
        raise FieldError(path, f"{value!r}: give an absolute path of at most 100 bytes "
                               "(a Unix socket's limit)")
    return Path(value)


def _tls(value: object, controllers: tuple[str, ...], node_id: str) -> tuple[TlsFiles | None, bool]:
    """[tls]: cert, key and ca (all or none), insecure. The certificate must
    name this node; plaintext to a controller beyond loopback needs insecure."""
    if not isinstance(value, dict):
        raise FieldError("tls", f"expected a table ([tls]), got {value!r}")
    check_keys(value, _TLS_KEYS, "tls")
    insecure = value.get("insecure", False)
    if not isinstance(insecure, bool):
        raise FieldError("tls.insecure", f"expected true or false, got {insecure!r}")
    paths: dict[str, Path] = {}
    for key in ("cert", "key", "ca"):
        if value.get(key):
            path = Path(_text(value[key], f"tls.{key}"))
            if not path.is_file():
                raise FieldError(f"tls.{key}", f"{str(path)!r}: no such file (breakwater pki issue node)")
            paths[key] = path
    if paths and len(paths) < 3:
        missing = next(k for k in ("cert", "key", "ca") if k not in paths)
        raise FieldError(f"tls.{missing}", "needed with the other tls keys (cert, key and ca, or none)")
    tls = TlsFiles(paths["cert"], paths["key"], paths["ca"]) if paths else None
    if tls is not None:
        try:
            ident = identity_of(tls.cert.read_bytes())
        except (InputError, OSError) as exc:
            raise FieldError("tls.cert", str(exc)) from None
        if ident.kind != "node" or ident.name != node_id:
            raise FieldError("tls.cert", f"names {ident.principal}, not node:{node_id} (node_id); "
                                         f"issue one with breakwater pki issue node {node_id}")
    else:
        for controller in controllers:
            try:
                check_plaintext(controller, insecure, "controller")
            except InputError as exc:
                raise FieldError("controller", str(exc).partition(": ")[2]) from None
    return tls, insecure


def load(path: Path, overrides: Mapping[str, object] | None = None) -> AgentConfig:
    """Read and validate ``path``. A missing file is an error unless every
    required key comes from ``overrides``."""
    src = str(path)
    data = read_toml(path)
    if data is None:
        if overrides and overrides.get("interfaces"):
            return parse({}, f"{src} (absent; command line only)", overrides)
        raise ConfigError(src, "", "no such file; write one (docs/agent.toml is an example) "
                                   "or pass --interface")
    return parse(data, src, overrides)
