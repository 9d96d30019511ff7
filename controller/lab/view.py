"""The demo's live view: redrawn in place on a terminal, a line per event
otherwise; the status it shows (:func:`status_lines`) and the agent's log
events as lines (:func:`agent_line`)."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from ..output import human_rate, table
from .agentproc import AGENT_INTERVAL
from .measure import RuleBook, Series, flood_figures, fold, pct, pct_text
from .topology import EDGE_IN
from .waves import TOTAL_SECONDS, WaveRun

__all__ = ["VIEW_SECONDS", "View", "agent_line", "short_rules", "status_lines"]

VIEW_SECONDS: Final = 0.5  # live view refresh
RECENT_EVENTS: Final = 8  # event lines kept in the live view


@dataclass
class View:
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


def short_rules(ids: Sequence[str]) -> str:
    return ", ".join(name for name, _ in fold(ids)) or "-"


def _group_description(book: RuleBook, group: Sequence[str]) -> str:
    if len(group) == 1:
        return book.describe(group[0])
    acts = sorted({" -> ".join(book.actions.get(r, ["?"])) for r in group})
    return f"one per reflection port and UDP fragments, {' / '.join(acts)}"


def agent_line(doc: dict[str, Any]) -> str | None:
    """One line for an agent log event worth showing (rule events aside), else None."""
    ev = str(doc.get("event", ""))
    a = doc.get("attack", {})
    if ev in ("attack_started", "attack_ended"):
        return (f"agent: attack {a.get('id')} {a.get('kind')}: {a.get('vector')} "
                f"on {a.get('victim') or 'any'}, {a.get('profile')}, "
                f"{human_rate(float(a.get('pps', 0)))} pps; "
                f"rules {short_rules(a.get('applied', []))}")
    if ev == "attack_updated":
        return f"agent: attack {a.get('id')} now has rules {short_rules(a.get('applied', []))}"
    if ev == "rules_applied":
        auto = len(doc.get("auto_rules", []))
        return f"agent: generation {doc.get('generation')} in force, {auto} automatic rules"
    if ev in ("refused", "interval_failed", "overrun", "reload_failed"):
        return f"agent: {doc.get('level')}: {doc.get('msg')}"
    return None


def status_lines(t0: float, runs: Sequence[WaveRun], series: Series, rules: RuleBook, *,
                 agent_pid: int | None, xdp_mode: str, delivered: int,
                 legit_live: float | None) -> list[str]:
    """The live view's status: the waves, the flood at the edge, the
    client's delivery and the automatic rules in force."""
    elapsed = time.monotonic() - t0
    running = [wr.wave.title for wr in runs if wr.sender is not None and not wr.done]
    phase = ", ".join(running) or ("the legitimate client alone" if elapsed < TOTAL_SECONDS else "done")
    rows = []
    for wr in runs:
        w = wr.wave
        if wr.sender is None:
            rows.append([w.title, f"{human_rate(w.pps)} pps", f"at {w.start:.0f} s", "", "", w.sources])
            continue
        fig = flood_figures(series, *wr.span(t0))
        ttm = "-" if fig.mitigated_at is None else f"{fig.mitigated_at - wr.span(t0)[0]:.2f} s"
        rows.append([w.title, f"{human_rate(w.pps)} pps", "done" if wr.done else "running", ttm,
                     pct_text(pct(fig.dropped, fig.seen)), w.sources])
    buf = io.StringIO()
    table(["WAVE", "RATE", "STATE", "MITIGATED", "DROPPED", "SOURCES"], rows, out=buf, right=[1, 3, 4])
    seen, dropped = series.rate(1.0)
    share = f" ({100 * dropped / seen:.1f}%)" if seen >= 1 else ""
    legit = "-" if legit_live is None else f"{legit_live:.1f}%"
    lines = [
        f"breakwater demo  {elapsed:4.1f}/{TOTAL_SECONDS:.0f} s  now: {phase}",
        f"agent pid {agent_pid if agent_pid is not None else '-'}: {xdp_mode} XDP on {EDGE_IN}, "
        f"interval {AGENT_INTERVAL} s",
        "",
        *buf.getvalue().splitlines(),
        "",
        f"flood at the edge, last second: {human_rate(seen)} pps, "
        f"{human_rate(dropped)} pps dropped{share}",
        f"legitimate client: {delivered} datagrams delivered to the origin; last second {legit}",
        f"automatic rules in force: {len(rules.in_force)}",
    ]
    for name, group in fold(rules.in_force):
        lines.append(f"  {name}: {_group_description(rules, group)}; "
                     f"{rules.dropped(group)} dropped")
    return lines
