"""The controller's configuration: :class:`ControllerConfig`, read from
command-line flags and a TOML file (``--config``) with the same keys,
flags winning (:func:`load_config`, :func:`parse_config`). Every key, its
default and its range are in :data:`KEYS` and ``docs/controlplane.md``; a
bad value is a :class:`~controller.errors.ConfigError` naming the file and
key (the CLI exits 2). The tables ``[sync]``, ``[telemetry]`` and
``[fleet]`` are kept as they are, for the sync hub, which validates them
(:mod:`controller.fleet.syncconfig`).

``[admission]`` holds the guards and caps of rule writes through the API
(:class:`~controller.rules.admission.AdmissionPolicy`: ``min_prefix_v4``,
``min_prefix_v6``, ``max_rules``, ``max_batch``, ``max_prefixes``,
``allowlist``, ``management``); the ``allowlist`` and ``management`` of
``[fleet.mitigate]`` are protected too.

TLS: ``tls_cert``, ``tls_key`` and ``tls_ca`` (all three or none) serve
mutual TLS on the one port, refusing every certificate whose serial is in
the revocation list ``tls_revoked`` (default ``<state_dir>/revoked.txt``;
``breakwater pki revoke`` and ``breakwater nodes remove`` add to it);
without them the port is plaintext, refused on a non-loopback ``listen``
unless ``insecure = true``
(:func:`controller.api.auth.check_plaintext`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ..api.auth import TlsFiles, check_plaintext
from ..config import checked, parse_listen, read_toml
from ..errors import ConfigError, FieldError, InputError
from ..rules.admission import AdmissionPolicy
from ..validate import check_bool, check_int, check_keys, check_number
from .backend import HealthPolicy
from .etcd import EtcdTLS, parse_endpoints
from .etcdstore import DEFAULT_PREFIX

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_METRICS",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STORE",
    "KEYS",
    "REVOKED_FILE",
    "ControllerConfig",
    "load_config",
    "parse_config",
]

DEFAULT_LISTEN: Final = "127.0.0.1:9610"
"""The gRPC port: loopback by default; ``[::]:9610`` with ``tls_*`` serves
agents and operators on other hosts (docs/security.md)."""
DEFAULT_STATE_DIR: Final = Path("/var/lib/breakwater-controller")
DEFAULT_STORE: Final = "sqlite"
"""The embedded SQLite file under ``state_dir``; ``etcd://host:2379,...`` for several controllers."""
DEFAULT_METRICS: Final = "127.0.0.1:9613"
"""Prometheus metrics (an agent has its metrics on 9611 and its local API on 9612)."""
DEFAULT_RECONCILE: Final = 30.0
DEFAULT_EVENTS_KEEP: Final = 1_000_000
DEFAULT_MAX_WORKERS: Final = 1024
"""RPC threads, started as needed: every open stream (an agent's Sync, a
WatchEvents) holds one for as long as it is open."""
DEFAULT_GRACE: Final = 5.0
DEFAULT_NODE_RETENTION: Final = 7 * 86400.0
"""A week: the node registry forgets nodes gone that long (it would grow for ever)."""
SYNC_SECTIONS: Final = ("sync", "telemetry", "fleet")
REVOKED_FILE: Final = "revoked.txt"
"""The revocation list's name under ``state_dir`` when ``tls_revoked`` is not given."""

# Numeric keys -> their allowed range.
_NUMBERS: Final[Mapping[str, tuple[float, float]]] = {
    "reconcile_interval": (1.0, 86400.0),
    "heartbeat_timeout": (1.0, 86400.0),
    "max_lag": (0.0, 86400.0),
    "shutdown_grace": (0.0, 600.0),
    "node_retention": (0.0, 10 * 365 * 86400.0),
}
_INTEGERS: Final[Mapping[str, tuple[int, int]]] = {
    "events_keep": (1, 1_000_000_000),
    "max_workers": (4, 100_000),
}
_ETCD_FILES: Final = ("etcd_ca", "etcd_cert", "etcd_key")
TLS_KEYS: Final = ("tls_cert", "tls_key", "tls_ca")
KEYS: Final = ("listen", "state_dir", "store", "store_prefix", *_ETCD_FILES, "metrics", *_NUMBERS,
               *_INTEGERS, *TLS_KEYS, "tls_revoked", "insecure", "admission", *SYNC_SECTIONS)
"""Every key of the configuration file (and of ``overrides``)."""


@dataclass(frozen=True)
class ControllerConfig:
    """The validated configuration (see the module docstring)."""

    listen: str = DEFAULT_LISTEN
    state_dir: Path = DEFAULT_STATE_DIR
    store: str = DEFAULT_STORE
    """``sqlite`` or ``etcd://host:port[,host:port...]`` (``etcds://`` or ``etcd_ca`` for TLS)."""
    store_prefix: str = DEFAULT_PREFIX
    """Where the controller's keys live in etcd (controllers sharing a fleet use the same)."""
    etcd_tls: EtcdTLS | None = None
    """The CA and client certificate for etcd (from ``etcd_ca``, ``etcd_cert``, ``etcd_key``)."""
    metrics: tuple[str, int] | None = ("127.0.0.1", 9613)
    reconcile_interval: float = DEFAULT_RECONCILE
    """Seconds between the reconciling snapshots every agent gets (SyncService)."""
    heartbeat_timeout: float = 90.0
    """Seconds a connected node may stay silent before it is UNREACHABLE."""
    max_lag: float = 10.0
    """Seconds a node may be behind its target version and still be HEALTHY."""
    events_keep: int = DEFAULT_EVENTS_KEEP
    """Events kept in the log; older ones are pruned."""
    max_workers: int = DEFAULT_MAX_WORKERS
    shutdown_grace: float = DEFAULT_GRACE
    """Seconds in-flight calls get to finish on SIGTERM."""
    node_retention: float = DEFAULT_NODE_RETENTION
    """Seconds a disconnected node's record is kept after it was last heard
    from; then it is forgotten (0: kept for ever)."""
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The [sync], [telemetry] and [fleet] tables, for the sync hub."""
    tls: TlsFiles | None = None
    """Mutual TLS on the port (None: plaintext)."""
    tls_revoked: Path | None = None
    """The revocation list (None: ``revoked.txt`` under ``state_dir``)."""
    insecure: bool = False
    """Plaintext on a non-loopback address, on purpose (logged at every start, and a metric)."""
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    """The guards and caps of rule writes (the ``[admission]`` table)."""
    source: str = "<defaults>"

    @property
    def revocation_path(self) -> Path:
        """Where the revocation list is (checked only with TLS)."""
        return self.tls_revoked or self.state_dir / REVOKED_FILE

    @property
    def health(self) -> HealthPolicy:
        return HealthPolicy(heartbeat_timeout=self.heartbeat_timeout, max_lag=self.max_lag)

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, JSON-friendly (``--check-config`` prints it)."""
        return {
            "source": self.source, "listen": self.listen, "state_dir": str(self.state_dir),
            "store": self.store, "store_prefix": self.store_prefix,
            **({"etcd_ca": str(self.etcd_tls.ca), "etcd_cert": str(self.etcd_tls.cert or ""),
                "etcd_key": str(self.etcd_tls.key or "")} if self.etcd_tls else {}),
            "metrics": f"{self.metrics[0]}:{self.metrics[1]}" if self.metrics else "",
            "reconcile_interval": self.reconcile_interval, "heartbeat_timeout": self.heartbeat_timeout,
            "max_lag": self.max_lag, "events_keep": self.events_keep, "max_workers": self.max_workers,
            "shutdown_grace": self.shutdown_grace, "node_retention": self.node_retention,
            "insecure": self.insecure,
            "tls_revoked": str(self.revocation_path),
            **({"tls_cert": str(self.tls.cert), "tls_key": str(self.tls.key), "tls_ca": str(self.tls.ca)}
               if self.tls else {}),
            "admission": self.admission.to_dict(),
            **{k: dict(v) for k, v in self.sections.items()},
        }


def _listen(value: object, src: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(src, "listen", f"expected \"HOST:PORT\" like {DEFAULT_LISTEN!r}, got {value!r}")
    text = value.strip()
    host, sep, port = text.rpartition(":")
    bare = host.strip("[]")
    if not sep or not bare or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(src, "listen", f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9610, [::]:9610; "
                                         "port 0..65535, 0 picks a free one)")
    if ":" in bare and not host.startswith("["):
        raise ConfigError(src, "listen", f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9610")
    return text


def _store(doc: Mapping[str, object], src: str) -> dict[str, Any]:
    """The ``store``, ``store_prefix`` and ``etcd_*`` keys, checked."""
    out: dict[str, Any] = {}
    raw = doc.get("store", DEFAULT_STORE)
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(src, "store", f'expected "sqlite" or "etcd://HOST:PORT[,HOST:PORT...]", '
                                        f"got {raw!r}")
    spec = raw.strip()
    if spec != "sqlite":
        with checked(src):
            parse_endpoints(spec, "store")
    out["store"] = spec
    if "store_prefix" in doc:
        prefix = doc["store_prefix"]
        if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
            raise ConfigError(src, "store_prefix",
                              f"expected a key prefix like \"/breakwater/\", got {prefix!r}")
        out["store_prefix"] = prefix
    files: dict[str, Path] = {}
    for key in _ETCD_FILES:
        if doc.get(key) is None:
            continue
        value = doc[key]
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ConfigError(src, key, f"expected the path of a PEM file, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(src, key, f"{str(path)!r}: no such file")
        files[key] = path
    if files:
        if spec == "sqlite":
            raise ConfigError(src, next(iter(files)), 'only for store = "etcd://..."')
        if "etcd_ca" not in files:
            raise ConfigError(src, "etcd_ca",
                              "needed with etcd_cert/etcd_key (the CA of etcd's certificates)")
        if ("etcd_cert" in files) != ("etcd_key" in files):
            raise ConfigError(src, "etcd_key" if "etcd_cert" in files else "etcd_cert",
                              "etcd_cert and etcd_key go together")
        out["etcd_tls"] = EtcdTLS(files["etcd_ca"], files.get("etcd_cert"), files.get("etcd_key"))
    elif spec.startswith("etcds://"):
        raise ConfigError(src, "etcd_ca",
                          "etcds:// needs etcd_ca (and etcd_cert, etcd_key for client certificates)")
    return out


def parse_config(data: Mapping[str, object], source: str = "<config>",
                 overrides: Mapping[str, object] | None = None) -> ControllerConfig:
    """Validate a parsed TOML document plus command-line ``overrides`` (same
    keys; they win, None means not given)."""
    doc: dict[str, object] = dict(data)
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    src = source
    with checked(src):
        check_keys(doc, KEYS)
    out = ControllerConfig(source=src)
    changes: dict[str, Any] = {}
    if "listen" in doc:
        changes["listen"] = _listen(doc["listen"], src)
    if "state_dir" in doc:
        raw = doc["state_dir"]
        if not isinstance(raw, str | Path) or not str(raw).strip():
            raise ConfigError(src, "state_dir", f"expected a directory path, got {raw!r}")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise ConfigError(src, "state_dir", f"{str(raw)!r} is not an absolute path")
        changes["state_dir"] = path
    changes.update(_store(doc, src))
    with checked(src):
        if "metrics" in doc:
            changes["metrics"] = parse_listen(doc["metrics"], "metrics", "127.0.0.1:9613")
        for key, (lo, hi) in _NUMBERS.items():
            if key in doc:
                changes[key] = check_number(doc[key], key, lo, hi)
        for key, (ilo, ihi) in _INTEGERS.items():
            if key in doc:
                changes[key] = check_int(doc[key], key, ilo, ihi)
    sections: dict[str, Mapping[str, Any]] = {}
    for key in SYNC_SECTIONS:
        if key in doc:
            table = doc[key]
            if not isinstance(table, dict):
                raise ConfigError(src, key, f"expected a table ([{key}]), got {table!r}")
            sections[key] = dict(table)
    changes["sections"] = sections
    changes["admission"] = _admission(doc, sections, src)
    changes["tls"] = _tls(doc, src)
    if doc.get("tls_revoked") not in (None, ""):
        raw = doc["tls_revoked"]
        if not isinstance(raw, str | Path) or not Path(raw).expanduser().parent.is_dir():
            raise ConfigError(src, "tls_revoked",
                              f"expected a file path in an existing directory, got {raw!r}")
        changes["tls_revoked"] = Path(raw).expanduser()
    with checked(src):
        changes["insecure"] = check_bool(doc.get("insecure", False), "insecure")
    if changes["tls"] is None:
        try:
            check_plaintext(changes.get("listen", out.listen), changes["insecure"], "listen")
        except InputError as exc:
            raise ConfigError(src, "listen", str(exc).partition(": ")[2]) from None
    return replace(out, **changes)


def _admission(doc: Mapping[str, object], sections: Mapping[str, Mapping[str, Any]],
               src: str) -> AdmissionPolicy:
    """The ``[admission]`` table, with ``[fleet.mitigate]``'s allowlist and management prefixes added."""
    mitigate = sections.get("fleet", {}).get("mitigate", {})
    extra: dict[str, list[object]] = {"allowlist": [], "management": []}
    if isinstance(mitigate, Mapping):
        for key in extra:
            value = mitigate.get(key, [])
            extra[key] = list(value) if isinstance(value, list | tuple) else [value]
    table = doc.get("admission", {})
    if not isinstance(table, Mapping):
        raise ConfigError(src, "admission", f"expected a table ([admission]), got {table!r}")
    merged = {**table, **{k: [*table.get(k, []), *v] for k, v in extra.items() if v}}
    try:
        return AdmissionPolicy.from_dict(merged)
    except FieldError as exc:
        raise ConfigError(src, exc.path, exc.what) from None


def _tls(doc: Mapping[str, object], src: str) -> TlsFiles | None:
    """The tls_* keys: all three paths (absolute, or relative to the working directory) or none."""
    given = {k: doc[k] for k in TLS_KEYS if doc.get(k) not in (None, "")}
    if not given:
        return None
    missing = [k for k in TLS_KEYS if k not in given]
    if missing:
        raise ConfigError(src, missing[0], f"needed with {', '.join(given)} (give all of "
                                           f"{', '.join(TLS_KEYS)}, or none for plaintext)")
    paths: dict[str, Path] = {}
    for key, raw in given.items():
        if not isinstance(raw, str | Path):
            raise ConfigError(src, key, f"expected a file path, got {raw!r}")
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ConfigError(src, key, f"{str(path)!r}: no such file (breakwater pki issue makes one)")
        paths[key] = path
    return TlsFiles(cert=paths["tls_cert"], key=paths["tls_key"], ca=paths["tls_ca"])


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> ControllerConfig:
    """The configuration from ``path`` (TOML; None: defaults) and ``overrides``."""
    if path is None:
        return parse_config({}, "<command line>", overrides)
    src = str(path)
    data = read_toml(path)
    if data is None:
        raise ConfigError(src, "", "no such file (--config is optional: leave it out for the defaults)")
    return parse_config(data, src, overrides)
