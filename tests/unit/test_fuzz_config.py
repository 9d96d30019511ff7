"""Property-based fuzzing of every configuration file Breakwater reads: the
agent's config (``docs/agent.toml``), the controller's (with its ``[sync]``,
``[telemetry]`` and ``[fleet]`` tables, as ``--check-config`` checks them),
the lab's scenario files (``scenarios/*.toml``) and rule files (TOML and
JSON).

hypothesis starts from a real document and changes it: a value anywhere in
the tree replaced by one of another type or at an edge (negative, zero,
huge, NaN and infinities, empty and control-character strings, lists,
tables), a key removed, an unknown key added; or the file's text itself
cut short or with bytes changed. The document is written to a file and
read by the loader the daemon or the CLI uses. The property: it loads, or
it fails with the error that names the file and the field
(:class:`~controller.errors.ConfigError`; a rule file's
:class:`~controller.errors.InputError` naming the rule and key), never
another exception (a traceback for the operator).

``BREAKWATER_FUZZ_SCALE`` multiplies the example counts (``make fuzz``).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.agent import config as agent_config
from controller.api.telemetry import TelemetryConfig
from controller.config import read_toml, toml_document
from controller.errors import ConfigError, FieldError, InputError
from controller.fleet.config import load_config
from controller.fleet.detector import FleetConfig
from controller.fleet.syncconfig import SyncConfig, check_config
from controller.lab import scenario
from controller.rules.enforce import load_file

from ..fuzzing import examples

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "scenarios").glob("*.toml"))


def _plain(obj: object) -> Any:
    """A config dataclass's defaults as a TOML-able document."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}  # type: ignore[arg-type]
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def controller_doc() -> dict[str, Any]:
    return {"listen": "127.0.0.1:9610", "state_dir": "/var/lib/breakwater-controller", "metrics": "",
            "store": "sqlite", "reconcile_interval": 30, "heartbeat_timeout": 90, "max_lag": 10,
            "events_keep": 1000, "max_workers": 64, "shutdown_grace": 5, "insecure": False,
            "sync": _plain(SyncConfig()), "telemetry": _plain(TelemetryConfig()),
            "fleet": _plain(FleetConfig())}


RULES_DOC = {"version": 1, "rules": [
    {"id": "dns-amp", "priority": 10, "action": "drop", "comment": "reflection",
     "match": {"src": ["198.18.0.0/24"], "protocol": "udp", "sport": 53, "length": [512, 1500]}},
    {"id": "syn", "action": {"kind": "rate_limit", "pps": 1000, "bps": 10**6},
     "match": {"dst": ["198.19.0.0/24"], "protocol": "tcp", "tcp_flags": {"mask": 18, "value": 2},
               "fragment": "no"}},
    {"id": "deny", "action": "drop", "ttl": 300, "match": {"src": ["2001:db8::1", "198.18.1.1"]}},
    {"id": "watch", "action": "monitor", "match": {"protocol": "gre"}},
]}


# -- mutations -------------------------------------------------------------------------------------
_TEXT = ["", " ", "\x00", "\x1b[31m", "\u202e", "a" * 5000, "-1", "nan", "0.0.0.0/0", "::/0", "eth0:1",
         "198.18.0.1:99999", "[::1]:0", "/", "relative/path", "x" * 300]
VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**18]),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.0, -0.0, -1.5, 1e-300, 1e300, math.inf, -math.inf, math.nan, 0.5]),
    st.floats(),
    st.booleans(),
    st.sampled_from(_TEXT),
    st.text(max_size=20),
    st.lists(st.one_of(st.integers(-5, 70000), st.sampled_from(_TEXT)), max_size=3),
    st.just({}),
    st.dictionaries(st.sampled_from(["x", "name", "pps", "src"]), st.integers(-1, 3), max_size=2),
    st.just([{}]),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of the tree (list indexes included)."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _containers(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _containers(v, (*prefix, k))


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "replace", "replace", "remove", "unknown"]))
        if how == "unknown":
            where = draw(st.sampled_from(list(_containers(doc))))
            key = draw(st.sampled_from(["bogus", "Interval", "x-y", "", "a.b", "\x1b[2J"]))
            _at(doc, where)[key] = copy.deepcopy(draw(VALUES))
            continue
        paths = list(_paths(doc))
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        parent = _at(doc, path[:-1])
        if how == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(VALUES))  # st.just({}) is one shared object
    return doc


def _toml(doc: dict[str, Any]) -> str:
    """The document as TOML; non-finite floats written as TOML writes them."""
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return _Raw("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v
    text = toml_document(_unraw(finite(doc)))
    return text.replace(f'"{_RAW}nan"', "nan").replace(f'"{_RAW}inf"', "inf").replace(f'"{_RAW}-inf"', "-inf")


_RAW = "\ue000raw:"


class _Raw(str):
    pass


def _unraw(v: Any) -> Any:
    if isinstance(v, _Raw):
        return _RAW + str(v)
    if isinstance(v, dict):
        return {k: _unraw(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unraw(x) for x in v]
    return v


@st.composite
def corrupted(draw: st.DrawFn, text: str) -> str:
    """The file's text cut short, or with a few characters changed."""
    if draw(st.booleans()):
        return text[:draw(st.integers(0, len(text)))]
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from('=[]{}"\'#\n,.0a\x00\\'))
    return "".join(chars)


# -- the loaders -----------------------------------------------------------------------------------
def load_agent(path: Path) -> object:
    return agent_config.load(path)


def load_controller(path: Path) -> object:
    cfg = load_config(path)
    try:
        check_config(cfg)  # the [sync]/[telemetry]/[fleet] tables, as --check-config
    except FieldError as exc:  # as the CLI names the file (cli/daemons.py: checked(cfg.source))
        raise ConfigError(cfg.source, exc.path, exc.what) from None
    return cfg


def load_scenario(path: Path) -> object:
    return scenario.load(path)


def load_rules(path: Path) -> object:
    return load_file(path)


def agent_doc() -> dict[str, Any]:
    doc = read_toml(REPO / "docs" / "agent.toml")
    assert doc is not None
    return doc


def scenario_doc(i: int) -> dict[str, Any]:
    doc = read_toml(SCENARIOS[i % len(SCENARIOS)])
    assert doc is not None
    return doc


KINDS: dict[str, tuple[Callable[[Path], object], Callable[[], dict[str, Any]], int]] = {
    # kind: loader, seed document, CI examples of structure mutations (text corruptions get a third)
    "agent": (load_agent, agent_doc, 300),
    "controller": (load_controller, controller_doc, 300),
    "scenario": (load_scenario, lambda: scenario_doc(0), 200),
    "rules": (load_rules, lambda: copy.deepcopy(RULES_DOC), 300),
}


def check_load(kind: str, path: Path, *, field: bool = False) -> None:
    """Load ``path``; an error must name the file (and with ``field``, the field)."""
    loader = KINDS[kind][0]
    try:
        loader(path)
    except ConfigError as exc:
        assert exc.source == str(path), f"{kind}: the error does not name the file: {exc}"
        assert exc.path or not field, f"{kind}: the error names no field: {exc}"
    except InputError as exc:
        # a rule file: InputError naming the file, then (through FieldError) the rule and key
        assert kind == "rules" and str(exc).startswith(f"{path}: "), f"{kind}: {type(exc).__name__}: {exc}"
        where = str(exc)[len(f"{path}: "):].partition(": ")[0]
        assert where or not field, f"{kind}: the error names no field: {exc}"


def test_the_seed_documents_load(tmp_path: Path) -> None:
    """The mutations start from documents that load (else every error would be the seed's)."""
    for kind, (loader, seed, _) in KINDS.items():
        path = tmp_path / f"{kind}.toml"
        path.write_text(_toml(seed()))
        loader(path)
    for scen in SCENARIOS:
        scenario.load(scen)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_changed_document_loads_or_names_the_field(kind: str) -> None:
    _, seed, n = KINDS[kind]
    base = seed()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.toml"

        @settings(max_examples=examples(n))
        @given(doc=mutated(base), as_json=st.booleans())
        def run(doc: dict[str, Any], as_json: bool) -> None:
            target = path
            if kind == "rules" and as_json:
                target = path.with_suffix(".json")
                target.write_text(json.dumps(doc, allow_nan=True))
            else:
                target.write_text(_toml(doc))
            check_load(kind, target, field=True)

        run()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_corrupt_file_loads_or_names_the_file(kind: str) -> None:
    _, seed, n = KINDS[kind]
    text = _toml(seed())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.toml"

        @settings(max_examples=examples(max(1, n // 3)))
        @given(body=corrupted(text))
        def run(body: str) -> None:
            path.write_text(body)
            check_load(kind, path)

        run()


@pytest.mark.parametrize("index", range(len(SCENARIOS)))
def test_every_shipped_scenario_changed_loads_or_names_the_field(index: int) -> None:
    base = scenario_doc(index)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.toml"

        @settings(max_examples=examples(25))
        @given(doc=mutated(base))
        def run(doc: dict[str, Any]) -> None:
            path.write_text(_toml(doc))
            check_load("scenario", path, field=True)

        run()
