"""``breakwater demo``: the agent at work against a short multi-vector flood.

Builds a namespace lab, runs the real agent in it (``python -m controller.cli
agent --config <generated toml>``, as an operator would), floods the origin
with three vectors back to back while a legitimate client keeps sending,
shows live what the agent detects and mitigates, prints a per-vector summary
and removes everything it built, also on failure, Ctrl-C or SIGTERM::

    client      198.18.0.10   --+
    botnet      198.18.1.1-12 --+  bridge       bw0 198.18.0.1/22      bw1 198.18.2.1/24
    reflectors  (raw frames)  --+-- ix0 ------- [edge: XDP + agent, forwarding] ------- [origin]
    spoofer     (raw frames)  --+  (internet)                               198.18.2.10, UDP :8053

Everything is in 198.18.0.0/15 and no namespace has a route out of the lab.
The agent protects the origin's prefix (198.18.2.0/24); its configuration
(``AGENT_CONFIG``) says where and why it differs from the production
defaults. The waves (``WAVES``), 8 s each, ~30 s in all with the lead-in:

1. **UDP flood** from 12 real sources (sockets) at 2,000 pps each: the
   agent drops the sources, aggregated to their /24;
2. **DNS reflection**: UDP from source port 53 from 2,000 reflectors (raw
   frames, :mod:`controller.lab.frames`): one rule per amplification port on the
   victim, a rate limit that escalates to a drop;
3. **spoofed SYN flood** to TCP/443, every packet from a new random source
   (96,000 of them): an aggregate SYN ceiling on the victim, since no source
   can be blocked.

The legitimate client sends 200 pps of numbered UDP datagrams to the
service for the whole run (none of the three signatures matches them); the
service on the origin records which arrived. Floods are measured in the
data plane: the victim's per-destination counters (every packet, dropped or
not) minus the client's per-source counters, sampled every 0.1 s. A wave is
*mitigated* from the first 0.1 s window in which at least 99% of its packets
were dropped; time to mitigate runs from the flood's first packet (the
sender's own clock) to the start of that window.

Every generator is bounded in packets and time; the agent runs in its own
session and is stopped as a process group; namespaces (and with them the
veths, the bridge and the XDP attachment), pins and the temporary directory
are removed in ``finally``.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import ipaddress
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import numpy as np
import numpy.typing as npt
from pyroute2 import netns as pyroute2_netns

from ..dataplane import abi, counters
from ..dataplane import attach as dataplane
from ..dataplane.pinned import MapSet
from ..errors import BreakwaterError
from ..output import emit_json, human_rate, table
from ..rules import enforce
from ..rules.model import Rule
from . import frames, traffic
from .netns import Lab

__all__ = ["AGENT_CONFIG", "WAVES", "Wave", "run"]

LOGGER = logging.getLogger("breakwater.demo")

# -- the lab ---------------------------------------------------------------------
EDGE_IN: Final = "bw0"  # the edge's ingress veth: XDP and the agent
EDGE_OUT: Final = "bw1"  # towards the origin
HOST_IF: Final = "eth0"  # every other namespace's interface
BRIDGE: Final = "ix0"  # the "internet": one bridge in its own namespace
LAN: Final = "198.18.0.0/22"
LAN_PLEN: Final = 22
EDGE_LAN: Final = "198.18.0.1"
CLIENT: Final = "198.18.0.10"
BOTNET_HOST: Final = "198.18.0.20"
BOTNET: Final = tuple(f"198.18.1.{i}" for i in range(1, 13))  # 12 bots in one /24: aggregated
ORIGIN_NET: Final = "198.18.2.0/24"  # the protected prefix
EDGE_ORIGIN: Final = "198.18.2.1"
SERVICE: Final = "198.18.2.10"  # the victim: every flood and the client aim at it
SERVICE_PORT: Final = 8053
SYN_PORT: Final = 443
REFLECTOR_NET: Final = "198.18.64.0/18"
REFLECTORS: Final = 2000  # many moderate sources, but reflection explains them: not a many-source flood
REFLECTION_SPORT: Final = 53
SPOOF_NETS: Final = ("198.18.128.0/17", "198.19.0.0/16")  # 98,304 addresses: none used twice
SEED: Final = 2024
NAMESPACES: Final = ("internet", "client", "botnet", "reflectors", "spoofer", "edge", "origin")

# -- timing and measurement -------------------------------------------------------
LEGIT_PPS: Final = 200.0
LEAD_SECONDS: Final = 2.0  # the client alone before the first wave
TAIL_SECONDS: Final = 2.0  # and after the last
SAMPLE_SECONDS: Final = 0.1  # data-plane sampling: the resolution of time to mitigate
VIEW_SECONDS: Final = 0.5  # live view refresh
MITIGATED_SHARE: Final = 0.99  # a window with this share of the flood dropped is mitigated
MIN_WINDOW_PACKETS: Final = 100  # windows with fewer flood packets are not judged
SETTLE_SECONDS: Final = 0.5  # the service keeps reading after the client stopped
AGENT_READY_SECONDS: Final = 120.0  # the first start compiles the XDP program
AGENT_STOP_SECONDS: Final = 10.0
OVERTIME_SECONDS: Final = 20.0  # generators still running this long after the end: an error
SERVICE_SLACK_SECONDS: Final = 30.0  # the service's own deadline, past the planned end
RECENT_EVENTS: Final = 8  # event lines kept in the live view


@dataclass(frozen=True)
class Wave:
    """One attack vector of the demo."""

    key: str  # "udp", "reflection", "syn"
    title: str
    namespace: str  # the lab namespace it is sent from
    start: float  # seconds after the legitimate client started
    seconds: float
    pps: float
    sources: str  # what the sources are, for people
    vectors: tuple[str, ...]  # the detector's vectors that answer it

    @property
    def packets(self) -> int:
        return int(self.pps * self.seconds)

    @property
    def end(self) -> float:
        return self.start + self.seconds


WAVES: Final = (
    Wave("udp", "UDP flood", "botnet", LEAD_SECONDS, 8.0, 24_000.0,
         f"{len(BOTNET)} real sources in 198.18.1.0/24", ("source_rate", "udp")),
    Wave("reflection", "DNS reflection", "reflectors", LEAD_SECONDS + 9.5, 8.0, 20_000.0,
         f"{REFLECTORS} reflectors, UDP from port {REFLECTION_SPORT}", ("reflection",)),
    Wave("syn", "spoofed SYN flood", "spoofer", LEAD_SECONDS + 19.0, 8.0, 12_000.0,
         "a new random source per packet", ("syn",)),
)
TOTAL_SECONDS: Final = WAVES[-1].end + TAIL_SECONDS
AGENT_INTERVAL: Final = 0.25

AGENT_CONFIG: Final = """\
# breakwater demo: the agent's configuration for one run, removed with the lab.
# Production defaults are in docs/agent.toml. This differs where the lab does:
# floods of tens of thousands of packets/s from Python senders on a small VM
# (not millions), waves of 8 s, a run of 30 s.
interfaces = [{{ name = "{ifname}", netns = "{netns}", mode = "auto" }}]  # native XDP, else generic
protected = ["{protected}"]   # the origin's prefix
mode = "enforce"
interval = {interval}         # production 1.0: a wave lasts 8 s, detection must take a fraction of one
detach_on_exit = true         # production false: the demo removes everything it built
state_dir = "{state_dir}"
pin_root = "{pin_root}"
metrics = ""                  # off: the demo reads the agent's log and the maps

# Small maps (production: 1M-entry deny and source maps); src_v4 holds the
# spoofed wave's 96,000 sources.
[sizes]
deny_v4 = 65536
deny_v6 = 4096
deny_pfx_v4 = 16384
deny_pfx_v6 = 4096
src_v4 = 262144
src_v6 = 4096
rl_src = 65536
dst_v4 = 4096
dst_v6 = 1024

[detect]
start_intervals = 2           # production 3: an attack starts after 0.5 s over its threshold
end_intervals = 8             # production 15: it ends 2 s after its flood stops
source_pps = 1000.0           # production 20000: each bot sends 2000 pps, the client 200
udp = {{ pps = 3000.0, factor = 3.0, min_share = 0.0 }}          # production 50000
reflection = {{ pps = 3000.0, factor = 4.0, min_share = 0.0 }}   # production 10000
syn = {{ pps = 3000.0, factor = 4.0, min_share = 0.25 }}         # production 10000

[mitigate]
rule_ttl = 60.0               # production 300
grace_ttl = 5.0               # production 60: rules of an ended attack go within the demo
reflection_pps = 100          # production 1000: a 20k pps wave is >= 99% dropped even while limited
escalate_after = 4            # production 10: the reflection limit becomes a drop after 1 s over
ceiling_pps = 50              # production 1000: the victim's SYN ceiling passes < 1% of 12k pps
"""
"""The agent's configuration, a ``str.format`` template (ifname, netns,
protected, interval, state_dir, pin_root)."""

TOPOLOGY: Final = f"""\
  client      {CLIENT}   --+
  botnet      198.18.1.1-12 --+  bridge       {EDGE_IN} {EDGE_LAN}/{LAN_PLEN}      {EDGE_OUT} {EDGE_ORIGIN}/24
  reflectors  (raw frames)  --+-- {BRIDGE} ------- [edge: XDP + agent, forwarding] ------- [origin]
  spoofer     (raw frames)  --+  (internet)                               {SERVICE}, UDP :{SERVICE_PORT}"""


class DemoError(BreakwaterError):
    """The demo could not run: the agent died, a generator failed, ..."""


# -- the legitimate client and the service ------------------------------------------

LEGIT_PAYLOAD: Final = 32  # bytes; the first four carry the sequence number
LEGIT_MAX_LAG: Final = 0.02  # seconds behind schedule the client may catch up on


def _legit_client(src: str, dst: str, port: int, count: int, pps: float,
                  max_seconds: float) -> npt.NDArray[np.float64]:
    """Send up to ``count`` numbered datagrams at a steady ``pps``; return
    each one's send time (``time.monotonic()``, the clock the demo samples
    with; NaN: not sent). Like a real client's stream it never catches up in
    a burst after a stall: a burst would look like a flood source."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, traffic.IP_RECVERR, 1)  # a local drop fails the send
    s.bind((src, 0))
    sent_at = np.full(count, np.nan)
    pad = b"L" * (LEGIT_PAYLOAD - 4)
    next_at = time.monotonic()
    deadline = next_at + min(max_seconds, traffic.MAX_SECONDS)
    for seq in range(count):
        now = time.monotonic()
        if now > deadline:
            break
        try:
            s.sendto(struct.pack("!I", seq) + pad, (dst, port))
            sent_at[seq] = now
        except OSError:
            pass  # not sent, not counted
        next_at = max(next_at + 1 / pps, now - LEGIT_MAX_LAG)
        wait = next_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    s.close()
    return sent_at


def _service(ctl: multiprocessing.connection.Connection, bind: str, port: int, client: str,
             count: int, max_seconds: float) -> dict[str, Any]:
    """The origin's UDP service: records which of the client's datagrams
    arrived and counts flood datagrams by wave. Answers ``"peek"`` on ``ctl``
    with the client's datagrams so far; stops on ``"stop"`` or at its deadline."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(PermissionError):  # not root: net.core.rmem_max
        s.setsockopt(socket.SOL_SOCKET, traffic.SO_RCVBUFFORCE, traffic.SINK_RCVBUF)
    s.bind((bind, port))
    s.setblocking(False)
    got = bytearray(count)
    legit = 0
    flood: Counter[str] = Counter()
    bots = set(BOTNET)

    def drain() -> None:
        nonlocal legit
        while True:
            try:
                data, (addr, sport) = s.recvfrom(2048)
            except BlockingIOError:
                return
            if addr == client and len(data) >= 4:
                seq = struct.unpack_from("!I", data)[0]
                if seq < count and not got[seq]:
                    got[seq] = 1
                    legit += 1
            elif sport == REFLECTION_SPORT:
                flood["reflection"] += 1
            elif addr in bots:
                flood["udp"] += 1
            else:
                flood["other"] += 1

    fds = [s.fileno(), ctl.fileno()]
    deadline = time.monotonic() + min(max_seconds, traffic.MAX_SECONDS)
    ctl.send("ready")
    while time.monotonic() < deadline:
        ready, _, _ = select.select(fds, [], [], traffic.POLL_SECONDS)
        if fds[0] in ready:
            drain()
        if fds[1] in ready:
            msg = ctl.recv()
            drain()
            if msg == "stop":
                break
            ctl.send(legit)
    drain()
    s.close()
    return {"received": bytes(got), "flood": dict(flood)}


@dataclass
class _Service:
    """:func:`_service` in the origin namespace, with its control pipe."""

    child: traffic.Child
    ctl: multiprocessing.connection.Connection

    @classmethod
    def start(cls, ns: str, count: int, max_seconds: float) -> _Service:
        ctl, theirs = multiprocessing.Pipe(duplex=True)
        child = traffic.Child.start(ns, _service, theirs, SERVICE, SERVICE_PORT, CLIENT, count, max_seconds)
        theirs.close()
        if not ctl.poll(10):
            child.close()
            raise DemoError("the origin's service did not start")
        ctl.recv()
        return cls(child, ctl)

    def peek(self) -> int:
        """The client's datagrams received so far."""
        self.ctl.send("peek")
        if not self.ctl.poll(5):
            raise DemoError("the origin's service stopped answering")
        return int(self.ctl.recv())

    def stop(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            self.ctl.send("stop")
        result: dict[str, Any] = self.child.wait(10)
        return result

    def close(self) -> None:
        self.child.close()
        self.ctl.close()


# -- the agent, as a process ------------------------------------------------------------


@dataclass
class _Agent:
    """``breakwater agent`` in its own session; its JSON log goes to a file the demo tails."""

    proc: subprocess.Popen[bytes]
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    @classmethod
    def start(cls, config: Path, log: Path) -> _Agent:
        cmd = [sys.executable, "-m", "controller.cli", "--log-level", "info",
               "agent", "--config", str(config)]
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        return cls(proc, log)

    def poll(self) -> list[dict[str, Any]]:
        """The JSON log lines written since the last call."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk.decode(errors="replace")).split("\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        self.events.extend(out)
        return out

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in self.poll():
                if doc.get("event") == "agent_ready":
                    return doc
            if self.proc.poll() is not None:
                raise DemoError(f"the agent exited ({self.proc.returncode}) before it was ready")
            time.sleep(0.05)
        raise DemoError(f"the agent was not ready within {timeout:.0f} s")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM (it detaches and exits), then SIGKILL to whatever is left of its group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(AGENT_STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# -- data-plane counters ------------------------------------------------------------------

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class _Series:
    """The victim's and the client's data-plane counters, cumulative, one row per sample."""

    t: list[float] = field(default_factory=list)
    victim: list[tuple[int, int]] = field(default_factory=list)  # (packets, drops)
    client: list[tuple[int, int]] = field(default_factory=list)

    def sample(self, maps: MapSet) -> None:
        victim = client = (0, 0)
        key = ipaddress.IPv4Address(CLIENT).packed
        raw = maps["src_v4"].lookup(key)
        if raw is not None:
            row = np.frombuffer(raw, dtype=abi.SRC_COUNTERS_DTYPE, count=1)[0]
            client = (int(row["packets"]), int(row["drops"]))
        raw = maps["deny_v4"].lookup(key)  # an exactly denied source is counted on its entry
        if raw is not None:
            hits = int(np.frombuffer(raw, dtype=abi.DENY_DTYPE, count=1)[0]["packets"])
            client = (client[0] + hits, client[1] + hits)
        raw = maps["dst_v4"].lookup(ipaddress.IPv4Address(SERVICE).packed)
        if raw is not None:
            row = np.frombuffer(raw, dtype=abi.DST_COUNTERS_DTYPE, count=1)[0]
            victim = (int(row["packets"]), int(row["drops"]))
        self.t.append(time.monotonic())
        self.victim.append(victim)
        self.client.append(client)

    def windows(self) -> tuple[F64, F64, I64, I64]:
        """Per window between two samples: (start, end, flood packets, flood
        drops), the flood being everything to the victim but the client."""
        t = np.asarray(self.t, dtype=np.float64)
        v = np.asarray(self.victim, dtype=np.int64).reshape(-1, 2)
        c = np.asarray(self.client, dtype=np.int64).reshape(-1, 2)
        d = np.maximum(np.diff(v, axis=0) - np.diff(c, axis=0), 0)
        return t[:-1], t[1:], d[:, 0], d[:, 1]

    def rate(self, seconds: float) -> tuple[float, float]:
        """Flood packets/s seen and dropped at the edge over the last ``seconds``."""
        if len(self.t) < 2:
            return 0.0, 0.0
        i = min(max(bisect.bisect_left(self.t, self.t[-1] - seconds) - 1, 0), len(self.t) - 2)
        dt = self.t[-1] - self.t[i]
        seen = (self.victim[-1][0] - self.victim[i][0]) - (self.client[-1][0] - self.client[i][0])
        drops = (self.victim[-1][1] - self.victim[i][1]) - (self.client[-1][1] - self.client[i][1])
        return max(seen, 0) / dt, max(drops, 0) / dt


@dataclass(frozen=True)
class _FloodFigures:
    """A wave as the data plane saw it, between its first packet and its end."""

    seen: int
    dropped: int
    mitigated_at: float | None  # start of the first window >= MITIGATED_SHARE dropped
    seen_after: int
    dropped_after: int


def _flood_figures(series: _Series, lo: float, hi: float) -> _FloodFigures:
    starts, ends, seen, dropped = series.windows()
    idx = np.nonzero((ends > lo) & (starts < hi + SAMPLE_SECONDS))[0]
    mitigated_at = None
    for k in idx:
        if seen[k] >= MIN_WINDOW_PACKETS and dropped[k] >= MITIGATED_SHARE * seen[k]:
            mitigated_at = float(starts[k])
            break
    later = idx[starts[idx] >= mitigated_at] if mitigated_at is not None else idx[:0]
    return _FloodFigures(int(seen[idx].sum()), int(dropped[idx].sum()), mitigated_at,
                         int(seen[later].sum()), int(dropped[later].sum()))


# -- the agent's rules ------------------------------------------------------------------------

REFL_RULE: Final = "auto-refl-"  # the agent's reflection rules, one per port: folded when shown


@dataclass
class _RuleBook:
    """The agent's automatic rules, read from the rule state it records
    with each swap: what each does (every action it had, so an escalation
    shows) and its data-plane counters, kept after the rule is gone."""

    state_dir: Path
    matches: dict[str, str] = field(default_factory=dict)
    actions: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, counters.RuleTotals] = field(default_factory=dict)
    in_force: tuple[str, ...] = ()

    def describe(self, rid: str) -> str:
        """E.g. ``limit 100 pps -> drop UDP sport 53 to 198.18.2.10/32``."""
        return f"{' -> '.join(self.actions.get(rid, ['?']))} {self.matches.get(rid, '')}".strip()

    def dropped(self, ids: Sequence[str]) -> int:
        return sum(self.totals[r].dropped for r in ids if r in self.totals)

    def refresh(self, maps: MapSet) -> None:
        try:
            applied = enforce.load_applied(self.state_dir, maps)
        except BreakwaterError:
            return  # read between a swap and its record: next time
        if applied is None:
            return
        slots = applied.slots.to_dict()
        by_slot = counters.rule_totals(maps)
        auto = []
        for rule in applied.rules:
            if rule.origin != "auto":
                continue
            auto.append(rule.id)
            action, self.matches[rule.id] = _describe(rule)
            had = self.actions.setdefault(rule.id, [])
            if not had or had[-1] != action:
                had.append(action)
            slot = slots.get(rule.id)
            if slot is not None and slot in by_slot:
                self.totals[rule.id] = by_slot[slot]
        self.in_force = tuple(sorted(auto))


def _describe(rule: Rule) -> tuple[str, str]:
    """(action, match), short: ("limit 50 pps", "TCP SYN to 198.18.2.10/32")."""
    act = rule.action
    action = act.kind.replace("_", " ")
    if act.kind == "rate_limit":
        action = f"limit {act.pps} pps" + (" per source" if act.scope == "per_source" else "")
    m = rule.match
    parts = []
    if m.src:
        more = f" +{len(m.src) - 2}" if len(m.src) > 2 else ""
        parts.append(f"from {', '.join(str(p) for p in m.src[:2])}{more}")
    if m.protocol == socket.IPPROTO_TCP:
        parts.append("TCP SYN" if m.tcp_flags is not None else "TCP")
    elif m.protocol == socket.IPPROTO_UDP:
        parts.append("UDP" + (f" sport {m.sport.lo}" if m.sport is not None else ""))
    if m.fragment == "yes":
        parts.append("fragments")
    if m.dst:
        parts.append(f"to {m.dst[0]}")
    return action, " ".join(parts)


def _fold(ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Rule ids as (name shown, ids): a victim's per-port reflection rules
    become one ``auto-refl-<victim>-* (N rules)`` entry."""
    plain = [(rid, [rid]) for rid in ids if rid and not rid.startswith(REFL_RULE)]
    refl = [rid for rid in ids if rid.startswith(REFL_RULE)]
    if len(refl) < 2:
        return plain + [(rid, [rid]) for rid in refl]
    stem = refl[0]
    for rid in refl[1:]:
        while not rid.startswith(stem):
            stem = stem[:-1]
    stem = stem[: stem.rfind("-") + 1]
    return [*plain, (f"{stem}* ({len(refl)} rules)", refl)]


def _short_rules(ids: Sequence[str]) -> str:
    return ", ".join(name for name, _ in _fold(ids)) or "-"


def _group_description(book: _RuleBook, group: Sequence[str]) -> str:
    if len(group) == 1:
        return book.describe(group[0])
    acts = sorted({" -> ".join(book.actions.get(r, ["?"])) for r in group})
    return f"one per reflection port and UDP fragments, {' / '.join(acts)}"


# -- the live view -------------------------------------------------------------------------


@dataclass
class _View:
    """Redrawn in place on a terminal; a line per event otherwise."""

    out: TextIO
    tty: bool
    t0: float = 0.0
    drawn: int = 0
    recent: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:5.1f}s  {text}" if self.t0 else text
        self.recent = [*self.recent, line][-RECENT_EVENTS:]
        if not self.tty:
            print(line, file=self.out, flush=True)

    def say(self, text: str) -> None:
        """A line above the live view."""
        self.clear()
        print(text, file=self.out, flush=True)

    def clear(self) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.flush()
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((120, 40)).columns - 1
        body = [ln[:width] for ln in [*lines, "recent events:", *(f"  {r}" for r in self.recent)]]
        self.clear()
        self.out.write("\n".join(body) + "\n")
        self.out.flush()
        self.drawn = len(body)


def _agent_line(doc: dict[str, Any]) -> str | None:
    """One line for an agent log event worth showing (rule events aside), else None."""
    ev = str(doc.get("event", ""))
    a = doc.get("attack", {})
    if ev in ("attack_started", "attack_ended"):
        return (f"agent: attack {a.get('id')} {a.get('kind')}: {a.get('vector')} "
                f"on {a.get('victim') or 'any'}, {a.get('profile')}, "
                f"{human_rate(float(a.get('pps', 0)))} pps; "
                f"rules {_short_rules(a.get('applied', []))}")
    if ev == "attack_updated":
        return f"agent: attack {a.get('id')} now has rules {_short_rules(a.get('applied', []))}"
    if ev == "rules_applied":
        auto = len(doc.get("auto_rules", []))
        return f"agent: generation {doc.get('generation')} in force, {auto} automatic rules"
    if ev in ("refused", "interval_failed", "overrun", "reload_failed"):
        return f"agent: {doc.get('level')}: {doc.get('msg')}"
    return None


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _WaveRun:
    wave: Wave
    sender: traffic.UdpStream | traffic.RawFlood | None = None
    sent: int = 0
    window: tuple[float, float] | None = None  # the sender's own (first, last) send time
    done: bool = False


class _Demo:
    """The lab, the agent, the traffic; :meth:`cleanup` undoes all of it."""

    def __init__(self, view: _View, keep_log: Path | None = None) -> None:
        self.view = view
        self.keep_log = keep_log
        self.owner = os.getpid()
        self.lab = Lab("demo")
        self.tmp = Path(tempfile.mkdtemp(prefix="breakwater-demo-"))
        self.pin_root = Path(f"/sys/fs/bpf/bw-demo-{secrets.token_hex(4)}")
        self.ns: dict[str, str] = {}
        self.agent: _Agent | None = None
        self.maps: MapSet | None = None
        self.service: _Service | None = None
        self.client: traffic.Child | None = None
        self.waves = [_WaveRun(w) for w in WAVES]
        self.series = _Series()
        self.rules = _RuleBook(self.tmp / "state")
        self.xdp_mode = "?"
        self.frames: dict[str, list[bytes]] = {}
        self.t0 = 0.0
        self.delivered = 0  # the client's datagrams at the origin so far
        self.legit_live: float | None = None  # delivered / seen at the edge over the last second
        self._legit_mark = (0.0, 0, 0)  # (time, delivered, seen at the edge)

    # -- build --

    def build(self) -> None:
        lab, ns = self.lab, self.ns
        for name in NAMESPACES:
            ns[name] = lab.namespace(name)
        ix = ns["internet"]
        lab.veth((ns["edge"], EDGE_IN, f"{EDGE_LAN}/{LAN_PLEN}"), (ix, "ix-edge", None))
        lab.veth((ns["client"], HOST_IF, f"{CLIENT}/{LAN_PLEN}"), (ix, "ix-client", None))
        lab.veth((ns["botnet"], HOST_IF, f"{BOTNET_HOST}/{LAN_PLEN}"), (ix, "ix-botnet", None))
        for addr in BOTNET:
            lab.add_address(ns["botnet"], HOST_IF, f"{addr}/{LAN_PLEN}")
        lab.veth((ns["reflectors"], HOST_IF, None), (ix, "ix-refl", None))
        lab.veth((ns["spoofer"], HOST_IF, None), (ix, "ix-spoof", None))
        lab.bridge(ix, BRIDGE, ["ix-edge", "ix-client", "ix-botnet", "ix-refl", "ix-spoof"])
        edge_mac = lab.mac(ns["edge"], EDGE_IN)
        lab.add_fdb(ix, "ix-edge", edge_mac)  # frames to the edge never go out of the other ports
        lab.veth((ns["edge"], EDGE_OUT, f"{EDGE_ORIGIN}/24"), (ns["origin"], HOST_IF, f"{SERVICE}/24"))
        lab.sysctl(ns["edge"], "net.ipv4.ip_forward", 1)
        # Spoofed and reflected sources have no route back: without this a
        # reverse-path check, not Breakwater, would drop them (a transit edge has none).
        for where, ifname in ((ns["edge"], EDGE_IN), (ns["origin"], HOST_IF)):
            for conf in ("all", "default", ifname):
                lab.sysctl(where, f"net.ipv4.conf.{conf}.rp_filter", 0)
        for who in ("client", "botnet"):
            lab.add_route(ns[who], ORIGIN_NET, EDGE_LAN)
            lab.add_neighbour(ns[who], HOST_IF, EDGE_LAN, edge_mac)
        lab.add_route(ns["origin"], LAN, EDGE_ORIGIN)
        lab.add_neighbour(ns["edge"], EDGE_OUT, SERVICE, lab.mac(ns["origin"], HOST_IF))
        lab.add_neighbour(ns["origin"], HOST_IF, EDGE_ORIGIN, lab.mac(ns["edge"], EDGE_OUT))
        # raw frames for the crafted waves, built before the clock starts
        reflectors = frames.addresses(REFLECTOR_NET, REFLECTORS, seed=SEED)
        self.frames["reflection"] = frames.udp_frames(lab.mac(ns["reflectors"], HOST_IF), edge_mac,
                                                      reflectors, SERVICE, SERVICE_PORT,
                                                      sport=REFLECTION_SPORT)
        pool = np.concatenate([frames.addresses(net, ipaddress.ip_network(net).num_addresses)
                               for net in SPOOF_NETS])
        np.random.default_rng(SEED).shuffle(pool)
        syn = next(w for w in WAVES if w.key == "syn")
        self.frames["syn"] = frames.tcp_frames(lab.mac(ns["spoofer"], HOST_IF), edge_mac,
                                               pool[: syn.packets], SERVICE, SYN_PORT, flags="S")

    def start_agent(self) -> Path:
        config = self.tmp / "agent.toml"
        config.write_text(AGENT_CONFIG.format(
            ifname=EDGE_IN, netns=self.ns["edge"], protected=ORIGIN_NET, interval=AGENT_INTERVAL,
            state_dir=self.rules.state_dir, pin_root=self.pin_root))
        self.agent = _Agent.start(config, self.tmp / "agent.log")
        self.agent.wait_ready(AGENT_READY_SECONDS)
        for doc in self.agent.events:
            if doc.get("event") == "interface_ready":
                self.xdp_mode = str(doc.get("mode"))
        self.maps = dataplane.open_maps(EDGE_IN, self.pin_root)
        return config

    # -- play --

    def play(self) -> None:
        assert self.agent is not None and self.maps is not None
        count = int(LEGIT_PPS * TOTAL_SECONDS)
        self.service = _Service.start(self.ns["origin"], count, TOTAL_SECONDS + SERVICE_SLACK_SECONDS)
        self.series.sample(self.maps)
        self.t0 = self.view.t0 = time.monotonic()
        self.client = traffic.Child.start(self.ns["client"], _legit_client, CLIENT, SERVICE, SERVICE_PORT,
                                          count, LEGIT_PPS, TOTAL_SECONDS + 1)
        self.view.note(f"legitimate client {CLIENT} -> {SERVICE}:{SERVICE_PORT}/udp, "
                       f"{LEGIT_PPS:.0f} pps for {TOTAL_SECONDS:.0f} s")
        next_sample = next_view = self.t0
        while True:
            now = time.monotonic()
            elapsed = now - self.t0
            for wr in self.waves:
                if wr.sender is None and elapsed >= wr.wave.start:
                    self._launch(wr)
                elif wr.sender is not None and not wr.done and not wr.sender.running:
                    self._collect(wr)
            if now >= next_sample:
                self.series.sample(self.maps)
                next_sample += SAMPLE_SECONDS
            self._agent_events()
            if now >= next_view:
                self._refresh()
                self.view.draw(self._lines())
                next_view += VIEW_SECONDS
            if self.agent.proc.poll() is not None:
                raise DemoError(f"the agent exited ({self.agent.proc.returncode}) during the run")
            if elapsed >= TOTAL_SECONDS and all(w.done for w in self.waves) and not self.client.running:
                break
            if elapsed >= TOTAL_SECONDS + OVERTIME_SECONDS:
                raise DemoError("the traffic generators did not finish on time")
            time.sleep(max(0.0, min(next_sample, next_view) - time.monotonic()))
        self.series.sample(self.maps)
        self._refresh()
        self._agent_events()
        self.view.draw(self._lines())

    def _launch(self, wr: _WaveRun) -> None:
        w = wr.wave
        ns = self.ns[w.namespace]
        limit = w.seconds + 2
        if w.key == "udp":
            wr.sender = traffic.UdpStream.start(ns, list(BOTNET), SERVICE, SERVICE_PORT,
                                                count=w.packets // len(BOTNET), pps=w.pps, max_seconds=limit)
        else:
            wr.sender = traffic.RawFlood.start(ns, HOST_IF, self.frames[w.key], w.packets, pps=w.pps,
                                               max_seconds=limit)
        self.view.note(f"wave {w.title}: {human_rate(w.pps)} pps for {w.seconds:.0f} s, {w.sources}")

    def _collect(self, wr: _WaveRun) -> None:
        assert wr.sender is not None
        try:
            value = wr.sender.wait(10)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"{wr.wave.title}: the sender failed: {exc}") from exc
        wr.sent = sum(value.values()) if isinstance(value, dict) else int(value)
        wr.window = wr.sender.window
        wr.done = True
        fig = _flood_figures(self.series, *self._window(wr))
        self.view.note(f"wave {wr.wave.title} over: {wr.sent} packets sent, "
                       f"{_pct_text(_pct(fig.dropped, fig.seen))} dropped at the edge")

    def _window(self, wr: _WaveRun) -> tuple[float, float]:
        if wr.window is not None:
            return wr.window
        return self.t0 + wr.wave.start, min(time.monotonic(), self.t0 + wr.wave.end)

    def _agent_events(self) -> None:
        """New agent log lines into the view; the rules added (removed) in one batch on one line."""
        assert self.agent is not None
        changed: dict[str, list[str]] = {"rule_added": [], "rule_removed": []}
        for doc in self.agent.poll():
            ev = doc.get("event", "")
            if ev in changed:
                changed[ev].append(str(doc.get("rule")))
                continue
            line = _agent_line(doc)
            if line:
                self.view.note(line)
        for ev, ids in changed.items():
            if ids:
                self.view.note(f"agent: {'added' if ev == 'rule_added' else 'removed'} {_short_rules(ids)}")

    def _refresh(self) -> None:
        assert self.service is not None and self.maps is not None
        self.delivered = self.service.peek()
        self.rules.refresh(self.maps)
        now = time.monotonic()
        seen = self.series.client[-1][0] - self.series.client[0][0]
        at, delivered, seen_before = self._legit_mark
        if now - at >= 1.0:
            if seen > seen_before:
                self.legit_live = min(100.0, 100.0 * (self.delivered - delivered) / (seen - seen_before))
            self._legit_mark = (now, self.delivered, seen)

    def _lines(self) -> list[str]:
        elapsed = time.monotonic() - self.t0
        running = [wr.wave.title for wr in self.waves if wr.sender is not None and not wr.done]
        phase = ", ".join(running) or ("the legitimate client alone" if elapsed < TOTAL_SECONDS else "done")
        rows = []
        for wr in self.waves:
            w = wr.wave
            if wr.sender is None:
                rows.append([w.title, f"{human_rate(w.pps)} pps", f"at {w.start:.0f} s", "", "", w.sources])
                continue
            fig = _flood_figures(self.series, *self._window(wr))
            ttm = "-" if fig.mitigated_at is None else f"{fig.mitigated_at - self._window(wr)[0]:.2f} s"
            rows.append([w.title, f"{human_rate(w.pps)} pps", "done" if wr.done else "running", ttm,
                         _pct_text(_pct(fig.dropped, fig.seen)), w.sources])
        buf = io.StringIO()
        table(["WAVE", "RATE", "STATE", "MITIGATED", "DROPPED", "SOURCES"], rows, out=buf, right=[1, 3, 4])
        seen, dropped = self.series.rate(1.0)
        share = f" ({100 * dropped / seen:.1f}%)" if seen >= 1 else ""
        legit = "-" if self.legit_live is None else f"{self.legit_live:.1f}%"
        lines = [
            f"breakwater demo  {elapsed:4.1f}/{TOTAL_SECONDS:.0f} s  now: {phase}",
            f"agent pid {self.agent.proc.pid if self.agent else '-'}: {self.xdp_mode} XDP on {EDGE_IN}, "
            f"interval {AGENT_INTERVAL} s",
            "",
            *buf.getvalue().splitlines(),
            "",
            f"flood at the edge, last second: {human_rate(seen)} pps, "
            f"{human_rate(dropped)} pps dropped{share}",
            f"legitimate client: {self.delivered} datagrams delivered to the origin; last second {legit}",
            f"automatic rules in force: {len(self.rules.in_force)}",
        ]
        for name, group in _fold(self.rules.in_force):
            lines.append(f"  {name}: {_group_description(self.rules, group)}; "
                         f"{self.rules.dropped(group)} dropped")
        return lines

    # -- results --

    def finish(self) -> dict[str, Any]:
        assert self.client is not None and self.service is not None
        try:
            sent_at: F64 = self.client.wait(10)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"the legitimate client failed: {exc}") from exc
        time.sleep(SETTLE_SECONDS)
        result = self.service.stop()
        received = np.frombuffer(result["received"], dtype=np.uint8)[: len(sent_at)].astype(bool)
        return self._summary(sent_at, received, result["flood"])

    def _summary(self, sent_at: F64, received: npt.NDArray[np.bool_],
                 at_origin: dict[str, int]) -> dict[str, Any]:
        attacks = _attacks(self.agent.events if self.agent else [])

        def legit(lo: float, hi: float) -> dict[str, Any]:
            mask = (sent_at >= lo) & (sent_at < hi)
            n, got = int(mask.sum()), int(received[mask].sum())
            return {"sent": n, "delivered": got, "delivery_pct": _pct(got, n)}

        claimed: set[str] = set()
        vectors = []
        for wr in self.waves:
            w = wr.wave
            lo, hi = self._window(wr)
            fig = _flood_figures(self.series, lo, hi)
            mine = [a for a in attacks if a["vector"] in w.vectors and lo - 1 <= a["started_at"] <= hi + 1
                    and a["id"] not in claimed]
            claimed |= {a["id"] for a in mine}
            rules = sorted({r for a in mine for r in a["rules"]})
            detected = min((a["started_at"] for a in mine), default=None)
            vectors.append({
                "vector": w.key,
                "title": w.title,
                "sources": w.sources,
                "pps": w.pps,
                "seconds": round(hi - lo, 2),
                "sent": wr.sent,
                "seen_at_edge": fig.seen,
                "dropped_at_edge": fig.dropped,
                "dropped_pct": _pct(fig.dropped, fig.seen),
                "mitigated": fig.mitigated_at is not None,
                "time_to_mitigate_s": None if fig.mitigated_at is None
                else round(max(0.0, fig.mitigated_at - lo), 2),
                "detected_after_s": None if detected is None else round(detected - lo, 2),
                "dropped_after_mitigation_pct": _pct(fig.dropped_after, fig.seen_after),
                "delivered_to_origin": at_origin.get(w.key, 0) if w.key != "syn" else None,
                "legit": legit(lo, hi),
                "legit_after_mitigation": legit(max(fig.mitigated_at, lo), hi) if fig.mitigated_at else
                {"sent": 0, "delivered": 0, "delivery_pct": None},
                "attacks": [{k: a[k] for k in ("id", "vector", "profile", "peak_pps", "rules")}
                            for a in mine],
                "rules": [{"id": r, "action": self.rules.describe(r), "dropped": self.rules.dropped([r])}
                          for r in rules],
            })
        return {
            "lab": {"namespaces": dict(self.ns), "service": f"{SERVICE}:{SERVICE_PORT}",
                    "protected": ORIGIN_NET, "client": CLIENT, "xdp_mode": self.xdp_mode,
                    "agent_interval_s": AGENT_INTERVAL, "pin_root": str(self.pin_root),
                    "workdir": str(self.tmp)},
            "vectors": vectors,
            "legit": legit(-np.inf, np.inf),
            "other_attacks": [a for a in attacks if a["id"] not in claimed],
            "flood_at_origin": at_origin,
        }

    # -- cleanup --

    def cleanup(self) -> list[str]:
        """Remove everything built; return what is left (nothing, normally)."""
        if os.getpid() != self.owner:
            os._exit(1)  # a forked helper unwinding: the demo's own process cleans up
        for wr in self.waves:
            if wr.sender is not None:
                wr.sender.close()
        for child in (self.client, self.service):
            if child is not None:
                try:
                    child.close()
                except OSError as exc:
                    LOGGER.warning("closing a traffic child: %s", exc)
        if self.maps is not None:
            self.maps.close()
        if self.agent is not None:
            self.agent.stop()
            if self.keep_log is not None:
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.agent.log, self.keep_log)
        if "edge" in self.ns:  # the agent detaches on exit; this is for when it could not
            try:
                dataplane.detach(EDGE_IN, pin_root=self.pin_root, netns=self.ns["edge"], purge=True,
                                 force=True)
            except BreakwaterError as exc:  # the namespace's removal detaches in any case
                LOGGER.debug("detach %s: %s", EDGE_IN, exc)
        made = list(self.lab.namespaces)
        self.lab.close()
        dataplane.remove_pin_tree(self.pin_root)
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = sorted(set(made) & set(pyroute2_netns.listnetns()))
        left += [str(p) for p in (self.pin_root, self.tmp) if p.exists()]
        if self.agent is not None and self.agent.proc.poll() is None:
            left.append(f"agent process {self.agent.proc.pid}")
        return left


def _attacks(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's attacks from its log: one record per attack id."""
    out: dict[str, dict[str, Any]] = {}
    for doc in events:
        if not str(doc.get("event", "")).startswith("attack_"):
            continue
        a = doc["attack"]
        rec = out.setdefault(a["id"], {"id": a["id"], "vector": a["vector"], "started_at": a["started_at"],
                                       "peak_pps": 0.0, "rules": []})
        rec["profile"] = a["profile"]
        rec["peak_pps"] = round(max(rec["peak_pps"], float(a["peak_pps"])), 1)
        rec["rules"] = sorted(set(rec["rules"]) | set(a["applied"]))
    return list(out.values())


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole > 0 else None


def _pct_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s"

    rows = []
    for v in summary["vectors"]:
        rows.append([v["title"], f"{human_rate(v['pps'])} pps", v["seen_at_edge"],
                     secs(v["detected_after_s"]), secs(v["time_to_mitigate_s"]), _pct_text(v["dropped_pct"]),
                     _pct_text(v["dropped_after_mitigation_pct"]), _pct_text(v["legit"]["delivery_pct"]),
                     _pct_text(v["legit_after_mitigation"]["delivery_pct"])])
    print("summary per vector (flood counted at the edge's XDP program, legitimate datagrams at the origin)",
          file=out)
    table(["VECTOR", "RATE", "PACKETS", "DETECTED", "MITIGATED", "DROPPED", "AFTER", "LEGIT OK", "AFTER"],
          rows, out=out, right=[1, 2, 3, 4, 5, 6, 7, 8])
    print(f"DETECTED: the agent's attack start, MITIGATED: the first {SAMPLE_SECONDS:.1f} s window with "
          f">= {100 * MITIGATED_SHARE:.0f}% of the flood dropped,\nboth after the flood's first packet; "
          "AFTER: from that window to the end of the wave.", file=out)
    print(file=out)
    for v in summary["vectors"]:
        print(f"{v['title']} ({v['sources']}):", file=out)
        for a in v["attacks"]:
            print(f"  attack {a['id']}: {a['vector']}, {a['profile']}, peak {human_rate(a['peak_pps'])} pps",
                  file=out)
        if not v["attacks"]:
            print("  no attack reported by the agent", file=out)
        by_id = {r["id"]: r for r in v["rules"]}
        for name, group in _fold(list(by_id)):
            desc = by_id[group[0]]["action"] if len(group) == 1 else (
                "one per reflection port and UDP fragments, "
                + " / ".join(sorted({by_id[r]["action"].split(" UDP")[0] for r in group})))
            print(f"  rule {name}: {desc}; {sum(by_id[r]['dropped'] for r in group)} dropped", file=out)
    if summary["other_attacks"]:
        print("other attacks the agent reported: "
              + ", ".join(f"{a['id']} ({a['vector']})" for a in summary["other_attacks"]), file=out)
    lg = summary["legit"]
    print(f"legitimate client: {lg['delivered']} of {lg['sent']} datagrams delivered "
          f"({_pct_text(lg['delivery_pct'])}) over the whole run", file=out)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM runs the same cleanup as Ctrl-C, in this process only: a
    forked helper (pyroute2 forks to create namespaces and stops its child
    with SIGTERM) must die of it, not unwind into the demo's cleanup."""
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(json_out: bool = False, agent_log: Path | None = None) -> int:
    """``breakwater demo``: 0 when every wave was mitigated, 1 otherwise.
    ``json_out``: the summary as JSON on stdout, everything else on stderr.
    ``agent_log``: keep a copy of the agent's JSON log there."""
    dataplane.require_root()
    out = sys.stderr if json_out else sys.stdout
    view = _View(out, tty=out.isatty())
    summary: dict[str, Any] | None = None
    with _sigterm_as_interrupt():
        demo = _Demo(view, agent_log)
        try:
            view.say(TOPOLOGY)
            view.say(f"\nbuilding the lab: {len(NAMESPACES)} namespaces, a bridge, 6 veth pairs")
            demo.build()
            config = demo.start_agent()
            view.say(f"agent running: {sys.executable} -m controller.cli agent --config {config}\n"
                     f"agent ready: {demo.xdp_mode} XDP on {EDGE_IN} in {demo.ns['edge']}, pins under "
                     f"{demo.pin_root}, interval {AGENT_INTERVAL} s\n")
            demo.play()
            summary = demo.finish()
        except BaseException:
            view.clear()
            if demo.agent is not None:
                print(f"the agent's log, last lines:\n{demo.agent.tail()}", file=sys.stderr)
            raise
        finally:
            left = demo.cleanup()
            if left:
                print(f"demo: could not remove {', '.join(left)}", file=sys.stderr)
            else:
                print("\nremoved: the agent, the XDP program and its pins, the namespaces with their "
                      "veths and bridge, the temporary directory", file=out)
    summary["left_behind"] = left
    print(file=out)
    _print_summary(summary, out)
    missed = [v["title"] for v in summary["vectors"] if not v["mitigated"]]
    summary["ok"] = not missed and not left
    if json_out:
        emit_json(summary)
    if missed:
        print(f"demo: never mitigated: {', '.join(missed)}", file=sys.stderr)
    return 0 if summary["ok"] else 1
