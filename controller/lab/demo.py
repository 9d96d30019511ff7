"""``breakwater demo``: the agent at work against a short multi-vector flood.

Builds a namespace lab (:mod:`.topology`), runs the real agent in it
(:mod:`.agentproc`), floods the origin with three vectors back to back while
a legitimate client keeps sending (:mod:`.waves`), shows live what the agent
detects and mitigates (:mod:`.view`), measures it in the data plane
(:mod:`.measure`), prints a per-vector summary (:mod:`.summary`) and removes
everything it built, also on failure, Ctrl-C or SIGTERM.

Every generator is bounded in packets and time; the agent runs in its own
session and is stopped as a process group; namespaces (and with them the
veths, the bridge and the XDP attachment), pins and the temporary directory
are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pyroute2 import netns as pyroute2_netns

from ..dataplane import attach as dataplane
from ..dataplane.pinned import MapSet
from ..errors import BreakwaterError
from ..output import emit_json, human_rate
from . import topology, traffic
from .agentproc import AGENT_CONFIG, AGENT_INTERVAL, AGENT_READY_SECONDS, Agent
from .measure import SAMPLE_SECONDS, RuleBook, Series, flood_figures, pct, pct_text
from .netns import Lab, sigterm_as_interrupt
from .summary import print_summary, summarize
from .topology import CLIENT, EDGE_IN, NAMESPACES, ORIGIN_NET, SERVICE, SERVICE_PORT, TOPOLOGY, DemoError
from .view import VIEW_SECONDS, View, agent_line, short_rules, status_lines
from .waves import LEGIT_PPS, TOTAL_SECONDS, WAVES, Service, WaveRun, flood_frames, legit_client

__all__ = ["run"]

LOGGER = logging.getLogger("breakwater.demo")

SETTLE_SECONDS: Final = 0.5  # the service keeps reading after the client stopped
OVERTIME_SECONDS: Final = 20.0  # generators still running this long after the end: an error
SERVICE_SLACK_SECONDS: Final = 30.0  # the service's own deadline, past the planned end


class _Demo:
    """The lab, the agent, the traffic; :meth:`cleanup` undoes all of it."""

    def __init__(self, view: View, keep_log: Path | None = None) -> None:
        self.view = view
        self.keep_log = keep_log
        self.owner = os.getpid()
        self.lab = Lab("demo")
        self.tmp = Path(tempfile.mkdtemp(prefix="breakwater-demo-"))
        self.pin_root = Path(f"/sys/fs/bpf/bw-demo-{secrets.token_hex(4)}")
        self.ns: dict[str, str] = {}
        self.agent: Agent | None = None
        self.maps: MapSet | None = None
        self.service: Service | None = None
        self.client: traffic.Child | None = None
        self.waves = [WaveRun(w) for w in WAVES]
        self.series = Series()
        self.rules = RuleBook(self.tmp / "state")
        self.xdp_mode = "?"
        self.frames: dict[str, list[bytes]] = {}
        self.t0 = 0.0
        self.delivered = 0  # the client's datagrams at the origin so far
        self.legit_live: float | None = None  # delivered / seen at the edge over the last second
        self._legit_mark = (0.0, 0, 0)  # (time, delivered, seen at the edge)

    # -- build --

    def build(self) -> None:
        edge_mac = topology.build(self.lab, self.ns)
        self.frames = flood_frames(self.lab, self.ns, edge_mac)

    def start_agent(self) -> Path:
        config = self.tmp / "agent.toml"
        config.write_text(AGENT_CONFIG.format(
            ifname=EDGE_IN, netns=self.ns["edge"], protected=ORIGIN_NET, interval=AGENT_INTERVAL,
            state_dir=self.rules.state_dir, pin_root=self.pin_root))
        self.agent = Agent.start(config, self.tmp / "agent.log")
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
        self.service = Service.start(self.ns["origin"], count, TOTAL_SECONDS + SERVICE_SLACK_SECONDS)
        self.series.sample(self.maps)
        self.t0 = self.view.t0 = time.monotonic()
        self.client = traffic.Child.start(self.ns["client"], legit_client, CLIENT, SERVICE, SERVICE_PORT,
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

    def _launch(self, wr: WaveRun) -> None:
        w = wr.wave
        wr.launch(self.ns[w.namespace], self.frames)
        self.view.note(f"wave {w.title}: {human_rate(w.pps)} pps for {w.seconds:.0f} s, {w.sources}")

    def _collect(self, wr: WaveRun) -> None:
        wr.collect()
        fig = flood_figures(self.series, *wr.span(self.t0))
        self.view.note(f"wave {wr.wave.title} over: {wr.sent} packets sent, "
                       f"{pct_text(pct(fig.dropped, fig.seen))} dropped at the edge")

    def _agent_events(self) -> None:
        """New agent log lines into the view; the rules added (removed) in one batch on one line."""
        assert self.agent is not None
        changed: dict[str, list[str]] = {"rule_added": [], "rule_removed": []}
        for doc in self.agent.poll():
            ev = doc.get("event", "")
            if ev in changed:
                changed[ev].append(str(doc.get("rule")))
                continue
            line = agent_line(doc)
            if line:
                self.view.note(line)
        for ev, ids in changed.items():
            if ids:
                self.view.note(f"agent: {'added' if ev == 'rule_added' else 'removed'} {short_rules(ids)}")

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
        return status_lines(self.t0, self.waves, self.series, self.rules,
                            agent_pid=self.agent.proc.pid if self.agent else None,
                            xdp_mode=self.xdp_mode, delivered=self.delivered, legit_live=self.legit_live)

    # -- results --

    def finish(self) -> dict[str, Any]:
        assert self.client is not None and self.service is not None
        try:
            sent_at: npt.NDArray[np.float64] = self.client.wait(10)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"the legitimate client failed: {exc}") from exc
        time.sleep(SETTLE_SECONDS)
        result = self.service.stop()
        received = np.frombuffer(result["received"], dtype=np.uint8)[: len(sent_at)].astype(bool)
        lab = {"namespaces": dict(self.ns), "service": f"{SERVICE}:{SERVICE_PORT}",
               "protected": ORIGIN_NET, "client": CLIENT, "xdp_mode": self.xdp_mode,
               "agent_interval_s": AGENT_INTERVAL, "pin_root": str(self.pin_root),
               "workdir": str(self.tmp)}
        return {"lab": lab, **summarize(self.waves, self.t0, self.series, self.rules,
                                        self.agent.events if self.agent else [], sent_at, received,
                                        result["flood"])}

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


def run(json_out: bool = False, agent_log: Path | None = None) -> int:
    """``breakwater demo``: 0 when every wave was mitigated, 1 otherwise.
    ``json_out``: the summary as JSON on stdout, everything else on stderr.
    ``agent_log``: keep a copy of the agent's JSON log there."""
    dataplane.require_root()
    out = sys.stderr if json_out else sys.stdout
    view = View(out, tty=out.isatty())
    summary: dict[str, Any] | None = None
    with sigterm_as_interrupt():
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
    print_summary(summary, out)
    missed = [v["title"] for v in summary["vectors"] if not v["mitigated"]]
    summary["ok"] = not missed and not left
    if json_out:
        emit_json(summary)
    if missed:
        print(f"demo: never mitigated: {', '.join(missed)}", file=sys.stderr)
    return 0 if summary["ok"] else 1
