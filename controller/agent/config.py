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
from ..config import checked, parse_listen, read_toml
from ..dataplane.attach import DEFAULT_PIN_ROOT, AttachMode
from ..dataplane.maps import MapSizes
from ..detection.config import DetectConfig, MitigateConfig
from ..errors import ConfigError, FieldError, InputError
from ..rules.enforce import DEFAULT_STATE_DIR
from ..rules.scope import check_labels, check_node_id
from ..validate import check_keys, check_number, join

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
    "controller", "node_id", "labels", "api",
)
_IFACE_KEYS: Final = ("name", "netns", "mode")
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
    controller: str | None = None
    """The controller's SyncService, ``host:port``; None: standalone."""
    node_id: str = "localhost"
    labels: dict[str, str] = field(default_factory=dict)
    api: tuple[str, int] | None = ("127.0.0.1", 9612)
    """Where the agent serves its local API; None: not at all."""

    @property
    def monitor(self) -> bool:
        return self.mode == "monitor"

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
            "controller": self.controller or "",
            "node_id": self.node_id,
            "labels": dict(self.labels),
            "api": f"{self.api[0]}:{self.api[1]}" if self.api else "",
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


def _unknown(data: Mapping[str, object], known: tuple[str, ...], src: str, path: str) -> None:
    with checked(src):
        check_keys(data, known, path)


def _str(value: object, src: str, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(src, path, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _prefix_list(value: object, src: str, path: str) -> tuple[Prefix, ...]:
    if not isinstance(value, list):
        raise ConfigError(src, path, f"expected a list of prefixes like [\"198.18.0.0/24\"], got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(src, f"{path}[{i}]", f"expected a prefix string, got {item!r}")
        try:
            out.append(parse_prefix(item, field=f"{path}[{i}]"))
        except InputError as exc:
            raise ConfigError(src, f"{path}[{i}]", str(exc).removeprefix(f"{path}[{i}]: ")) from None
    return tuple(dict.fromkeys(out))


def _interfaces(value: object, src: str) -> tuple[InterfaceConfig, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(src, "interfaces", "expected a non-empty list of interface names or "
                                             "tables {name, netns, mode}")
    out: list[InterfaceConfig] = []
    for i, item in enumerate(value):
        path = f"interfaces[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(src, path, f"expected a name or a table {{name, netns, mode}}, got {item!r}")
        _unknown(item, _IFACE_KEYS, src, path)
        if "name" not in item:
            raise ConfigError(src, f"{path}.name", "missing; the interface name, e.g. \"eth0\"")
        name = _str(item["name"], src, f"{path}.name")
        if len(name) > 15 or "/" in name or " " in name:
            raise ConfigError(src, f"{path}.name", f"{name!r} is not a valid interface name "
                                                   "(at most 15 characters, no '/' or spaces)")
        netns = _str(item["netns"], src, f"{path}.netns") if "netns" in item else None
        mode = item.get("mode", "auto")
        if mode not in ATTACH_MODES:
            raise ConfigError(src, f"{path}.mode", f"{mode!r} is not one of {', '.join(ATTACH_MODES)}")
        if any(o.name == name and o.netns == netns for o in out):
            raise ConfigError(src, f"{path}.name", f"{name!r} is listed twice")
        out.append(InterfaceConfig(name, netns, cast(AttachMode, mode)))
    if len({i.name for i in out}) != len(out):
        raise ConfigError(src, "interfaces", "interface names must be unique (their pins share one root)")
    return tuple(out)


def parse_metrics(value: object, src: str = "--metrics", path: str = "metrics") -> tuple[str, int] | None:
    """``"ADDR:PORT"`` (``[::1]:9611`` for IPv6), or ``""`` to disable."""
    with checked(src):
        return parse_listen(value, path, "127.0.0.1:9611")


def parse_controller(value: object, src: str = "--controller", path: str = "controller") -> str | None:
    """``"HOST:PORT"`` (``[::1]:9610`` for IPv6, a host name is fine) as a
    gRPC target, or ``""`` for none."""
    if not isinstance(value, str):
        raise ConfigError(src, path, f"expected \"HOST:PORT\" or \"\" (standalone), got {value!r}")
    if not value:
        return None
    host, sep, port = value.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (not sep or not bare or not port.isdigit() or not 1 <= int(port) <= 65535
            or any(c.isspace() or c in "/[]" for c in bare) or (":" in bare and bare == host)):
        raise ConfigError(src, path, f"{value!r} is not HOST:PORT (e.g. controller.example:9610, "
                                     "10.0.0.5:9610, [2001:db8::5]:9610; port 1..65535)")
    return f"[{bare}]:{int(port)}" if ":" in bare else f"{bare}:{int(port)}"


_NOT_NODE_ID = re.compile(r"[^a-z0-9._-]")


def default_node_id(hostname: str | None = None) -> str:
    """The node id when none is configured: the host name, lower-cased,
    every character outside ``a-z 0-9 . _ -`` made ``-`` (``localhost`` if
    nothing is left)."""
    name = _NOT_NODE_ID.sub("-", (socket.gethostname() if hostname is None else hostname).lower())
    name = name.lstrip("._-")[:253]
    return name or "localhost"


def _node_id(value: object, src: str) -> str:
    try:
        return check_node_id(value, "node_id")
    except FieldError as exc:
        raise ConfigError(src, "node_id", exc.what) from None


def _labels(value: object, src: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(src, "labels", f"expected a table like {{ site = \"fra1\" }}, got {value!r}")
    try:
        return check_labels(value, "labels")
    except FieldError as exc:
        raise ConfigError(src, exc.path, exc.what) from None


def _number(value: object, src: str, path: str, lo: float, hi: float) -> float:
    with checked(src):
        return check_number(value, path, lo, hi)


def parse(data: Mapping[str, object], source: str = "<config>",
          overrides: Mapping[str, object] | None = None) -> AgentConfig:
    """Validate a parsed TOML document (plus command-line ``overrides``,
    which take the same keys and win)."""
    doc: dict[str, object] = dict(data)
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    src = source
    _unknown(doc, _TOP_KEYS, src, "")
    if "interfaces" not in doc:
        raise ConfigError(src, "interfaces", "missing; e.g. interfaces = [\"eth0\"] "
                                             "or [[interfaces]] tables with name, netns, mode")
    interfaces = _interfaces(doc["interfaces"], src)
    protected = _prefix_list(doc.get("protected", []), src, "protected")
    management = _prefix_list(doc.get("management", []), src, "management")
    allowlist = _prefix_list(doc.get("allowlist", []), src, "allowlist")
    mode = doc.get("mode", "enforce")
    if mode not in ("monitor", "enforce"):
        raise ConfigError(src, "mode", f"{mode!r} is not one of monitor, enforce")
    interval = _number(doc.get("interval", DEFAULT_INTERVAL), src, "interval", MIN_INTERVAL, MAX_INTERVAL)
    detach = doc.get("detach_on_exit", False)
    if not isinstance(detach, bool):
        raise ConfigError(src, "detach_on_exit", f"expected true or false, got {detach!r}")
    state_dir = Path(_str(doc.get("state_dir", str(DEFAULT_STATE_DIR)), src, "state_dir"))
    pin_root = Path(_str(doc.get("pin_root", str(DEFAULT_PIN_ROOT)), src, "pin_root"))
    for key, p in (("state_dir", state_dir), ("pin_root", pin_root)):
        if not p.is_absolute():
            raise ConfigError(src, key, f"{str(p)!r} is not an absolute path")
    metrics = parse_metrics(doc.get("metrics", DEFAULT_METRICS), src, "metrics")
    rules_file = None
    if doc.get("rules_file"):
        rules_file = Path(_str(doc["rules_file"], src, "rules_file"))
    sizes_doc = doc.get("sizes", {})
    if not isinstance(sizes_doc, dict):
        raise ConfigError(src, "sizes", f"expected a table of MAP = ENTRIES, got {sizes_doc!r}")
    try:
        sizes = MapSizes.from_dict(sizes_doc)
    except InputError as exc:
        bad = next((k for k in sizes_doc if k not in MapSizes.__dataclass_fields__
                    or not isinstance(sizes_doc[k], int) or isinstance(sizes_doc[k], bool)
                    or not 1 <= sizes_doc[k] <= 1 << 26), "")
        raise ConfigError(src, join("sizes", bad), str(exc).split(": ", 1)[-1]) from None
    detect = _section(doc, "detect", DetectConfig.from_dict, src)
    mit_doc = doc.get("mitigate", {})
    if not isinstance(mit_doc, dict):
        raise ConfigError(src, "mitigate", f"expected a table, got {mit_doc!r}")
    for key, owner in _OWNED_BY_AGENT.items():
        if key in mit_doc:
            raise ConfigError(src, f"mitigate.{key}", f"set by the top-level key {owner!r}; remove it here")
    mitigate = _section({"mitigate": mit_doc}, "mitigate", MitigateConfig.from_dict, src)
    mitigate = replace(mitigate, allowlist=allowlist, management=management, monitor=mode == "monitor")
    controller = parse_controller(doc.get("controller", ""), src, "controller")
    node_id = _node_id(doc["node_id"], src) if "node_id" in doc else default_node_id()
    labels = _labels(doc.get("labels", {}), src)
    api = parse_metrics(doc.get("api", DEFAULT_API), src, "api")
    return AgentConfig(interfaces, protected, management, allowlist, mode, interval,
                       detach, state_dir, pin_root, metrics, rules_file, sizes, detect, mitigate, src,
                       controller, node_id, labels, api)


def _section(doc: Mapping[str, object], key: str, build: Any, src: str) -> Any:
    table = doc.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(src, key, f"expected a table, got {table!r}")
    try:
        with checked(src, key):
            return build(table)
    except TypeError as exc:  # a wrongly typed sub-table reaching a dataclass
        raise ConfigError(src, key, str(exc)) from None


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
