"""``breakwater lab run SCENARIO``: a scenario replayed against a real
controller and real agents in a namespace lab, with a live view and a
report (a table, ``--json``, a PNG chart).

The lab (:mod:`.fleet`) is built and its daemons started; each origin
serves HTTP and UDP and counts what reaches it (:mod:`.audience`); the
audience runs for the whole scenario; each wave's sender (:mod:`.attack`)
is forked a second before its start. The edges' data-plane verdicts are
sampled every ``SAMPLE_SECONDS``; the agents' attacks and rules come from
their logs. Everything is removed at the end, also on failure, Ctrl-C or
SIGTERM; ``breakwater lab down`` removes what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..dataplane import attach as dataplane
from ..dataplane import counters
from ..dataplane.pinned import MapSet
from ..dataplane.reasons import Action
from ..output import emit_json
from . import attack, audience, report, traffic
from .fleet import EDGE_IN, HOST_IF, Fleet
from .netns import sigterm_as_interrupt
from .scenario import VECTORS, Scenario, load
from .topology import DemoError
from .view import View

__all__ = ["MISSED", "Run", "run"]

MISSED: Final = 3  # exit status: the run went through, a wave was not detected or not mitigated
LEAD_SECONDS: Final = 3.0  # the audience alone before t = 0 of the scenario ... (and the senders' fork)
TAIL_SECONDS: Final = 3.0  # ... and after its end
SAMPLE_SECONDS: Final = 0.25
LAUNCH_AHEAD: Final = 1.5  # a wave's sender is forked this long before its start


@dataclass
class Run:
    """One run of a scenario; :meth:`close` undoes all of it."""

    scenario: Scenario
    view: View
    fleet: Fleet = field(init=False)
    children: list[traffic.Child] = field(default_factory=list)
    senders: dict[int, traffic.Child] = field(default_factory=dict)
    sent: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    maps: list[MapSet] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=lambda: {"t": [], "passed": [], "dropped": []})
    rules: list[tuple[float, str, str]] = field(default_factory=list)
    fleet_events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    probes_sent: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0
    mode: str = "enforce"
    owner: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        self.fleet = Fleet(self.scenario, mode=self.mode)

    def setup(self) -> None:
        self.fleet.build()
        self.fleet.check_no_route_out()
        self.view.say(f"lab {self.fleet.lab.prefix}: {len(self.fleet.lab.namespaces)} namespaces; starting "
                      f"the controller and {self.scenario.topology.edges} agents")
        self.fleet.start()
        self.maps = [dataplane.open_maps(EDGE_IN, p) for p in self.fleet.pin_roots]
        self.view.say(f"agents ready: XDP {', '.join(self.fleet.xdp_modes())} on {EDGE_IN}; "
                      f"synced through the controller")

    def _sample(self) -> None:
        passed = dropped = 0
        for m in self.maps:
            a = counters.action_totals(m)
            passed += a[Action.PASS].packets
            dropped += a[Action.DROP].packets
        self.series["t"].append(time.monotonic())
        self.series["passed"].append(passed)
        self.series["dropped"].append(dropped)

    def play(self) -> dict[str, Any]:
        s = self.scenario
        topo = s.topology
        total = s.duration + LEAD_SECONDS + TAIL_SECONDS
        self.t0 = time.monotonic() + LEAD_SECONDS
        sniffers = []
        proxies = (int(topo.proxies.net.network_address), int(topo.proxies.net.broadcast_address))
        for i in range(topo.edges):
            mine = [str(o) for o in topo.origins if topo.edge_of(o) == i]
            ns = self.fleet.ns[f"origin{i}"]
            self.children.append(traffic.Child.start(ns, audience.serve, mine, topo.http_port, topo.udp_port,
                                                     total + 5))
            sniffer = traffic.Child.start(ns, audience.count_delivered, HOST_IF, self.t0,
                                          s.duration + TAIL_SECONDS, len(s.waves), proxies, len(VECTORS))
            sniffers.append(sniffer)
            self.children.append(sniffer)
        time.sleep(0.5)  # the services listen
        self._probe()
        legit = s.legit
        crowd = traffic.Child.start(self.fleet.ns["clients"], audience.audience,
                                    [str(a) for a in legit.addresses()], [str(o) for o in topo.origins],
                                    topo.http_port, topo.udp_port, legit.http_rate, legit.udp_rate,
                                    legit.timeout, total - 1.0)
        self.children.append(crowd)
        edge_macs = [self.fleet.macs[f"edge{i}"] for i in range(topo.edges)]
        next_view = time.monotonic()
        while True:
            now = time.monotonic()
            rel = now - self.t0
            for w in s.waves:
                if w.index not in self.senders and rel >= w.start - LAUNCH_AHEAD:
                    if w.vector == "http":
                        role = "proxies"
                    elif w.vector == "reflection":
                        role = "reflectors"
                    elif w.spoof == "random":
                        role = "spoofer"
                    else:
                        role = f"bot-{list(topo.botnets).index(w.botnet)}"
                    self.senders[w.index] = attack.launch(w, topo, self.fleet.ns[role], HOST_IF,
                                                          self.fleet.macs[role], edge_macs, self.t0)
                    self.view.note(f"t={w.start:5.1f}s wave {w.name}: {w.vector} {w.rate:g}/s from "
                                   f"{w.sources} {w.spoof} sources to {w.target}"
                                   + (f" (pulses {w.pulse.on:g}/{w.pulse.off:g} s)" if w.pulse else ""))
            for idx, child in list(self.senders.items()):
                if idx not in self.sent and not child.running:
                    try:
                        self.sent[idx] = child.wait(10)
                    except (RuntimeError, TimeoutError) as exc:
                        raise DemoError(f"wave {s.waves[idx].name}: the sender failed: {exc}") from exc
            self._sample()
            self._logs(now)
            for p in (self.fleet.controller, *self.fleet.agents):
                if p is not None and p.proc.poll() is not None:
                    raise DemoError(f"a daemon exited ({p.proc.returncode}) during the run:\n{p.tail()}")
            if now >= next_view:
                self.view.draw(self._lines(rel))
                next_view += 1.0
            if rel >= s.duration + TAIL_SECONDS and len(self.sent) == len(s.waves):
                break
            if rel >= s.duration + TAIL_SECONDS + 30:
                raise DemoError("the wave senders did not finish on time")
            time.sleep(SAMPLE_SECONDS)
        self.view.clear()
        rows = crowd.wait(30)
        counts = [sn.wait(30) for sn in sniffers]
        delivered = sum(c["waves"] for c in counts)
        probed = sum(c["probes"] for c in counts)
        proxy_syn = sum(c["proxy_syn"] for c in counts)
        records = report.attacks([a.events for a in self.fleet.agents], self.t0)
        waves = report.wave_figures(s, self.t0, self.sent, delivered, proxy_syn, records, rows)
        outside = np.ones(len(rows), dtype=bool)
        for w in s.waves:
            outside &= ~((rows[:, 0] >= self.t0 + w.start) & (rows[:, 0] < self.t0 + w.end))
        first, last = min(w.start for w in s.waves), max(w.end for w in s.waves)
        return {
            "scenario": s.name, "source": s.source, "duration_s": s.duration,
            "lab": {"prefix": self.fleet.lab.prefix, "edges": topo.edges, "xdp_modes": self.fleet.xdp_modes(),
                    "protected": str(topo.protected), "origins": [str(o) for o in topo.origins]},
            "waves": waves,
            "baseline": {
                "legit_tcp_pct": report.legit_share(rows[outside], audience.HTTP, 0, float("inf")),
                "legit_udp_pct": report.legit_share(rows[outside], audience.UDP, 0, float("inf")),
                "before_tcp_pct": report.legit_share(rows, audience.HTTP, 0, self.t0 + first),
                "after_tcp_pct": report.legit_share(rows, audience.HTTP, self.t0 + last + 1, float("inf")),
            },
            "legit_attempts": {"tcp": int((rows[:, 1] == audience.HTTP).sum()),
                               "udp": int((rows[:, 1] == audience.UDP).sum())},
            "attacks": records,
            "fleet_attacks": report.fleet_attacks(self.fleet_events, self.t0),
            "delivery_check": {v: {"sent": n, "seen": int(probed[VECTORS.index(v)])}
                               for v, n in self.probes_sent.items()},
            "mode": self.mode,
            "rules": [{"t_s": round(at - self.t0, 2), "change": change, "rule": rid}
                      for at, change, rid in self.rules],
            "counter_drops": sum(c["drops"] for c in counts),
            "_rows": rows,
        }

    def _logs(self, now: float) -> None:
        for i, a in enumerate(self.fleet.agents):
            for doc in a.poll():
                ev = str(doc.get("event", ""))
                if ev in ("rule_added", "rule_removed"):
                    self.rules.append((now, ev.removeprefix("rule_"), f"edge{i}:{doc.get('rule')}"))
                elif ev == "attack_started":
                    att = doc.get("attack", {})
                    self.view.note(f"edge{i}: attack {att.get('vector')} on {att.get('victim')} "
                                   f"({att.get('profile')}, {float(att.get('pps', 0)):.0f} pps)")
        if self.fleet.controller is not None:
            for doc in self.fleet.controller.poll():
                if str(doc.get("event", "")).startswith("fleet_attack_"):
                    self.fleet_events.append((now, doc))
                    if doc["event"] == "fleet_attack_started":
                        self.view.note(f"controller: fleet attack {doc.get('vector')} on "
                                       f"{doc.get('victim') or 'no victim'}")

    def _probe(self) -> None:
        """The delivery check: a few packets of every crafted vector, before
        the first wave, counted by the origins (see :func:`.attack.probe_frames`)."""
        topo = self.scenario.topology
        edge_macs = [self.fleet.macs[f"edge{i}"] for i in range(topo.edges)]
        batches = attack.probe_frames(self.scenario.waves, topo, self.fleet.macs["spoofer"], edge_macs,
                                      audience.PROBE_IDENT)
        for vector, batch in batches.items():
            self.probes_sent[vector] = traffic.run_in_netns(self.fleet.ns["spoofer"], attack.probe, HOST_IF,
                                                            batch, timeout=30)

    def _lines(self, rel: float) -> list[str]:
        t = self.series["t"]
        line = [f"t={rel:6.1f}s of {self.scenario.duration:.0f}s"]
        if len(t) > 4:
            dt = t[-1] - t[-5]
            p = (self.series["passed"][-1] - self.series["passed"][-5]) / dt
            d = (self.series["dropped"][-1] - self.series["dropped"][-5]) / dt
            line.append(f"edges: {p:8.0f} pps passed, {d:8.0f} pps dropped")
        active = [w.name for w in self.scenario.waves if w.sending(rel)]
        line.append(f"waves now: {', '.join(active) or '-'}")
        added = sum(1 for r in self.rules if r[1] == "added")
        line.append(f"rules added so far: {added}")
        return ["  ".join(line)]

    def close(self) -> list[str]:
        if os.getpid() != self.owner:
            os._exit(1)  # a forked helper unwinding: the run's own process cleans up
        for c in (*self.senders.values(), *self.children):
            with contextlib.suppress(Exception):
                c.close()
        for m in self.maps:
            with contextlib.suppress(Exception):
                m.close()
        return self.fleet.close()


def run(path: Path, *, json_out: bool = False, chart: Path | None = None, mode: str = "enforce",
        ) -> tuple[int, dict[str, Any]]:
    """``breakwater lab run``: (exit code, report). 0 when every wave was
    detected and mitigated and the lab was removed; :data:`MISSED` when the
    run went through but a wave was not; 1 when something was left behind. ``mode="monitor"``: the
    agents detect and plan but apply nothing (a baseline: what the waves do
    unmitigated); its exit code only says whether the lab was removed."""
    s = load(path)
    dataplane.require_root()
    out = sys.stderr if json_out else sys.stdout
    view = View(out, tty=out.isatty())
    result: dict[str, Any] = {}
    with sigterm_as_interrupt():
        r = Run(s, view, mode=mode)
        try:
            r.setup()
            result = r.play()
        except BaseException:
            view.clear()
            for i, a in enumerate(r.fleet.agents):
                print(f"agent edge{i}, last lines:\n{a.tail(15)}", file=sys.stderr)
            raise
        finally:
            left = r.close()
            print(f"lab removed{'' if not left else ' EXCEPT ' + ', '.join(left)}", file=out)
    rows = result.pop("_rows")
    result["left_behind"] = left
    if chart is not None:
        report.chart(chart, s, r.series, result["waves"], r.rules, rows, r.t0)
        result["chart"] = str(chart)
    print(file=out)
    report.print_table(result, out)
    if chart is not None:
        print(f"chart: {chart}", file=out)
    missed = [w["wave"] for w in result["waves"] if not (w["detected"] and w["mitigated"])]
    if mode == "monitor":
        missed = []  # nothing is applied: nothing can be mitigated
    result["ok"] = not missed and not left
    if missed:
        print(f"lab: not detected or not mitigated: {', '.join(missed)}", file=sys.stderr)
    if json_out:
        emit_json(result)
    return (0 if result["ok"] else 1 if left else MISSED), result
