"""The agent as a real process in the namespace lab, for the agent tests.

:class:`Agents` writes an agent configuration for the lab's bw0 (its own
pin root, state directory and metrics port), starts ``python -m
controller.cli agent`` processes, SIGKILLs them, and reads what they left:
the automatic rules in the SQLite store, ``breakwater events --json``, the
rule set recorded as in force, and the data plane's counters. The
``agents`` fixture (``conftest.py``) kills every process it started and
detaches bw0 at teardown, whatever the test did.

Each test module picks its settings (:class:`AgentSettings`: interval,
protected prefixes, ``[detect]`` and ``[mitigate]`` tables) by overriding
the ``agent_settings`` fixture, or per test by assigning
``agents.settings`` before the first start.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controller.agent.state import Store
from controller.config import toml_value
from controller.dataplane import attach as dataplane
from controller.dataplane import counters
from controller.dataplane.pinned import MapSet
from controller.dataplane.reasons import Reason
from controller.rules import enforce
from controller.rules.model import Rule

from .lab import IFNAME, NETNS_SIZES, DaemonProc, Topology

REPO = Path(__file__).resolve().parents[2]
READY_SECONDS = 60.0  # the first start compiles the program
CLI_SECONDS = 30.0

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for the metrics server
    and the local API: another agent on the machine may hold the defaults)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], T], timeout: float, step: float = 0.1) -> T:
    """Poll ``pred`` until it returns something true or ``timeout`` seconds
    pass; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


@dataclass(frozen=True)
class AgentSettings:
    """What a test chooses in the agent's configuration (the rest is the lab's)."""

    interval: float = 0.5
    protected: tuple[str, ...] = ("198.18.0.0/24",)
    detect: Mapping[str, object] = field(default_factory=dict)
    mitigate: Mapping[str, object] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)
    """Other top-level keys (``allowlist``, ``management``, ...)."""

    def merged(self, *, detect: Mapping[str, object] | None = None,
               mitigate: Mapping[str, object] | None = None) -> AgentSettings:
        """These settings with some ``[detect]`` / ``[mitigate]`` keys replaced."""
        return AgentSettings(self.interval, self.protected, {**self.detect, **(detect or {})},
                             {**self.mitigate, **(mitigate or {})}, self.extra)


class AgentProc(DaemonProc):
    def wait_ready(self, timeout: float = READY_SECONDS) -> dict[str, Any]:
        return self.wait_event("agent_ready", timeout)


@dataclass
class Agents:
    """Agent processes on the lab's bw0, one after another, sharing one state."""

    topo: Topology
    pin_root: Path
    workdir: Path
    settings: AgentSettings = field(default_factory=AgentSettings)
    metrics_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    started: list[AgentProc] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def write_config(self) -> Path:
        s = self.settings
        path = self.workdir / "agent.toml"
        lines = [
            f'interfaces = [{{ name = "{IFNAME}", netns = "{self.topo.edge}", mode = "generic" }}]',
            f"protected = {toml_value(list(s.protected))}",
            'mode = "enforce"',
            f"interval = {s.interval!r}",
            f'state_dir = "{self.state_dir}"',
            f'pin_root = "{self.pin_root}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'api = "127.0.0.1:{self.api_port}"',
            *(f"{k} = {toml_value(v)}" for k, v in s.extra.items()),
            "",
            "[sizes]",
            *(f"{k} = {v}" for k, v in NETNS_SIZES.as_dict().items()),
            "",
            "[detect]",
            *(f"{k} = {toml_value(v)}" for k, v in s.detect.items()),
            "",
            "[mitigate]",
            *(f"{k} = {toml_value(v)}" for k, v in s.mitigate.items()),
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = READY_SECONDS) -> AgentProc:
        """Start an agent and wait for ``agent_ready`` (fails the test with its log otherwise)."""
        config = self.write_config()
        err = self.workdir / f"agent{len(self.started)}.err"
        with err.open("wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "agent", "--config",
                                     str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=ferr, stdin=subprocess.DEVNULL)
        agent = AgentProc(proc, err)
        self.started.append(agent)
        agent.wait_ready(timeout)
        return agent

    def kill_all(self) -> None:
        for a in self.started:
            with contextlib.suppress(Exception):
                a.kill()

    # -- what the agents left --

    def auto_rules(self) -> list[Rule]:
        """The automatic rules in the store (what the agent has applied)."""
        with Store.open(self.state_dir) as store:
            return list(store.auto_rules(IFNAME))

    @contextlib.contextmanager
    def watching_auto_rules(self, every: float = 0.25) -> Iterator[dict[str, Rule]]:
        """Every automatic rule put in force while the block runs, by id (the
        store polled every ``every`` s: rules that came and went are kept)."""
        seen: dict[str, Rule] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(every):
                seen.update((r.id, r) for r in self.auto_rules())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield seen
        finally:
            stop.set()
            watcher.join()

    def events(self) -> list[dict[str, Any]]:
        """``breakwater events --json``, oldest first."""
        out = subprocess.run([sys.executable, "-m", "controller.cli", "events", "--json", "--limit", "1000",
                              "--state-dir", str(self.state_dir)], cwd=REPO, capture_output=True,
                             check=True, timeout=CLI_SECONDS)
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows

    def stored_events(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The same rows read from the store directly (cheaper, for polling)."""
        with Store.open(self.state_dir, readonly=True) as store:
            return [e.to_dict() for e in store.events(limit)]

    @contextlib.contextmanager
    def maps(self) -> Iterator[MapSet]:
        with dataplane.open_maps(IFNAME, self.pin_root) as maps:
            yield maps

    def applied_rules(self) -> list[Rule]:
        """The rule set recorded as in force on bw0's maps."""
        with self.maps() as maps:
            applied = enforce.load_applied(self.state_dir, maps)
        return [] if applied is None else list(applied.rules)

    def source_counters(self, address: str) -> dict[str, int] | None:
        with self.maps() as maps:
            return counters.read_sources(maps).lookup(address)

    def counts(self, legit: str | None = None) -> Counts:
        """One read of the data plane's totals (and of ``legit``'s own counters).

        ``legit`` is read first: a packet of it counted in between goes to
        the flood's side of a :class:`Window`, which can only lower its share."""
        with self.maps() as maps:
            row = counters.read_sources(maps).lookup(legit) if legit else None
            reasons = counters.reason_totals(maps)
        return Counts(
            time.monotonic(),
            seen=sum(t.packets for t in reasons.values()),
            dropped=sum(t.packets for r, t in reasons.items() if r.is_drop),
            by_reason={r: t.packets for r, t in reasons.items() if t.packets},
            legit_seen=row["packets"] if row else 0,
            legit_dropped=row["drops"] if row else 0,
        )


@dataclass(frozen=True)
class Counts:
    """Cumulative data-plane counters at one moment (``time.monotonic()``)."""

    t: float
    seen: int
    """Packets of every reason: everything the XDP program judged on bw0."""
    dropped: int
    """Policy drops (deny, signature, rate limit)."""
    by_reason: Mapping[Reason, int]
    legit_seen: int
    legit_dropped: int


@dataclass(frozen=True)
class Window:
    """What the data plane did between two :class:`Counts`, the legitimate source taken out."""

    seconds: float
    seen: int
    dropped: int
    by_reason: Mapping[Reason, int]
    legit_dropped: int

    @classmethod
    def between(cls, a: Counts, b: Counts) -> Window:
        legit_seen = b.legit_seen - a.legit_seen
        legit_dropped = b.legit_dropped - a.legit_dropped
        if legit_seen < 0 or legit_dropped < 0:  # its LRU entry was re-created: count it as flood
            legit_seen = legit_dropped = 0
        reasons = {r: n - a.by_reason.get(r, 0) for r, n in b.by_reason.items()
                   if n - a.by_reason.get(r, 0)}
        return cls(b.t - a.t, b.seen - a.seen - legit_seen, b.dropped - a.dropped - legit_dropped,
                   reasons, legit_dropped)

    @property
    def pps(self) -> float:
        """The flood's rate at bw0 in the window."""
        return self.seen / self.seconds if self.seconds > 0 else 0.0

    @property
    def share(self) -> float:
        """Share of the flood's packets the data plane dropped."""
        return self.dropped / self.seen if self.seen else 0.0

    def __str__(self) -> str:
        reasons = ", ".join(f"{r.label} {n}" for r, n in sorted(self.by_reason.items()))
        return (f"{self.dropped}/{self.seen} flood packets dropped ({100 * self.share:.1f}%) in "
                f"{self.seconds:.2f} s ({self.pps:.0f} pps; {reasons})")
