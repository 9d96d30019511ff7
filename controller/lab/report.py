"""The report of ``breakwater lab run``: per-wave figures (:func:`wave_figures`),
the table (:func:`print_table`) and the chart (:func:`chart`).

Per wave: its offered rate (what its sender sent over its sending time),
whether an agent detected it (an attack of a matching vector on an address
of its target, started during the wave or still open from an earlier one), its time to mitigate (from
its first packet to the first ``BIN_SECONDS`` bin, while it sends, in which
at most ``LEAK_SHARE`` of what it offered reached the origin), the share
of its packets the edges dropped (what its sender sent minus what reached
the origins), and the legitimate users' success during the wave, HTTP and
UDP apart, over the whole wave and from mitigation on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt

from .audience import BIN_SECONDS, HTTP, UDP
from .scenario import Scenario, Wave

__all__ = ["DETECTED_BY", "LEAK_SHARE", "attacks", "chart", "fleet_attacks", "legit_share", "print_table",
           "wave_figures"]

CHART_STEP_SECONDS: Final = 0.5  # the chart's rate resolution
LEAK_SHARE: Final = 0.01  # a bin passing at most this share of the wave's offered rate is mitigated
DETECTED_BY: Final[Mapping[str, tuple[str, ...]]] = {
    "syn": ("syn", "many_source"), "ack": ("ack", "many_source"),
    "udp": ("udp", "source_rate", "many_source"),
    "icmp": ("icmp", "many_source"), "gre": ("gre", "many_source"),
    "fragment": ("fragment", "reflection", "many_source"), "reflection": ("reflection",),
    "http": ("many_source", "source_rate", "syn"),
}
"""The detector's vectors that answer each wave vector."""


def legit_share(rows: npt.NDArray[Any], kind: int, lo: float, hi: float) -> float | None:
    """Percent of the audience's attempts of ``kind`` started in [lo, hi) that succeeded."""
    sel = rows[(rows[:, 1] == kind) & (rows[:, 0] >= lo) & (rows[:, 0] < hi)]
    return round(100.0 * float(sel[:, 2].mean()), 2) if len(sel) else None


def attacks(events_by_edge: Sequence[Sequence[Mapping[str, Any]]], t0: float) -> list[dict[str, Any]]:
    """The agents' attacks from their logs, one record per (edge, attack id):
    vector, victim, profile, start (seconds into the scenario), peak, rules."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for edge, events in enumerate(events_by_edge):
        for doc in events:
            if not str(doc.get("event", "")).startswith("attack_"):
                continue
            a = doc["attack"]
            rec = out.setdefault((edge, a["id"]), {
                "edge": edge, "id": a["id"], "vector": a["vector"], "victim": a.get("victim"),
                "started_s": round(float(a["started_at"]) - t0, 2), "peak_pps": 0.0, "rules": []})
            rec["profile"] = a["profile"]
            rec["peak_pps"] = round(max(rec["peak_pps"], float(a["peak_pps"])), 1)
            rec["rules"] = sorted(set(rec["rules"]) | set(a.get("applied", [])))
            if doc.get("event") == "attack_ended" and a.get("ended_at") is not None:
                rec["ended_s"] = round(float(a["ended_at"]) - t0, 2)
    return list(out.values())


def fleet_attacks(events: Sequence[tuple[float, Mapping[str, Any]]], t0: float) -> list[dict[str, Any]]:
    """The controller's cluster-wide attacks from its log (``fleet_attack_*``
    lines, timed when the run read them): one record per attack id with
    vector, victim, start and end (seconds into the scenario)."""
    out: dict[str, dict[str, Any]] = {}
    for at_, doc in events:
        rec = out.setdefault(str(doc.get("attack")), {
            "id": str(doc.get("attack")), "vector": doc.get("vector"), "victim": doc.get("victim") or None,
            "started_s": round(at_ - t0, 2)})
        if doc.get("event") == "fleet_attack_ended":
            rec["ended_s"] = round(at_ - t0, 2)
    return list(out.values())


def _detected(wave: Wave, attacks: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The attack that answers ``wave``: one of a matching vector on its target that started during
    the wave or, failing that, one already open when it began (a many-source attack of an earlier
    wave goes on absorbing the next flood at the same victim; ``ongoing`` says so). A carpet (a
    prefix as target) is answered only by an attack on a prefix: one on a single address of it is
    another wave's."""
    ongoing = None
    for a in attacks:
        if a["vector"] not in DETECTED_BY[wave.vector] or not a.get("victim"):
            continue
        victim = ipaddress.ip_network(str(a["victim"]), strict=False)
        if not victim.overlaps(wave.target) or (wave.carpet and victim.num_addresses == 1):
            continue
        started = float(a["started_s"])
        if wave.start - 1.0 <= started <= wave.end + 1.0:
            return {"vector": a["vector"], "at_s": started, "edge": a["edge"], "id": a["id"],
                    "ongoing": False}
        ended = a.get("ended_s")
        if ongoing is None and started < wave.start and (ended is None or float(ended) > wave.start + 1.0):
            ongoing = {"vector": a["vector"], "at_s": wave.start, "edge": a["edge"], "id": a["id"],
                       "ongoing": True}
    return ongoing


def wave_figures(s: Scenario, t0: float, sent: Mapping[int, tuple[int, float, float]],
                 delivered: npt.NDArray[np.int64], proxy_syn: npt.NDArray[np.int64],
                 attacks: Sequence[Mapping[str, Any]], rows: npt.NDArray[Any]) -> list[dict[str, Any]]:
    """One record per wave (see the module's docstring)."""
    out = []
    for w in s.waves:
        n, first, last = sent.get(w.index, (0, 0.0, 0.0))
        got = _http_share(s, w, proxy_syn) if w.vector == "http" else delivered[w.index]
        arrived = int(got.sum())
        offered = n / (w.on_time() if w.pulse else max(last - first, 1e-3)) if n else 0.0
        mitigated_at = None
        if n:
            lo = int((first - t0) / BIN_SECONDS)
            hi = int((last - t0) / BIN_SECONDS) + 1
            per_bin = offered * BIN_SECONDS
            for b in range(max(lo, 0), min(hi, len(got))):
                if not w.sending(b * BIN_SECONDS + BIN_SECONDS / 2):
                    continue
                if got[b] <= LEAK_SHARE * per_bin:
                    mitigated_at = b * BIN_SECONDS
                    break
        det = _detected(w, attacks)
        ttm = None if mitigated_at is None else round(max(0.0, mitigated_at - (first - t0)), 2)
        after = w.end if mitigated_at is None else mitigated_at
        out.append({
            "wave": w.name, "vector": w.vector, "botnet": w.botnet, "spoof": w.spoof,
            "target": str(w.target), "start_s": w.start, "end_s": w.end,
            "pulse": None if w.pulse is None else {"on": w.pulse.on, "off": w.pulse.off},
            "sent": n, "offered_pps": round(offered, 1), "delivered": arrived,
            "detected": det is not None, "detection": det, "mitigated": mitigated_at is not None,
            "ttm_s": ttm,
            "attack_dropped_pct": round(100.0 * (1 - arrived / n), 2) if n else None,
            "legit_tcp_pct": legit_share(rows, HTTP, t0 + w.start, t0 + w.end),
            "legit_udp_pct": legit_share(rows, UDP, t0 + w.start, t0 + w.end),
            "legit_tcp_mitigated_pct": legit_share(rows, HTTP, t0 + after, t0 + w.end),
            "legit_udp_mitigated_pct": legit_share(rows, UDP, t0 + after, t0 + w.end),
        })
    return out


def _http_share(s: Scenario, w: Wave, proxy_syn: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The proxies' SYNs at the origins in the bins of ``w`` (shared among overlapping http waves)."""
    out = np.zeros_like(proxy_syn)
    lo, hi = int(w.start / BIN_SECONDS), min(int(w.end / BIN_SECONDS) + 1, len(proxy_syn))
    others = [o for o in s.waves if o.vector == "http" and o.index != w.index]
    for b in range(lo, hi):
        t = b * BIN_SECONDS
        share = 1 + sum(o.sending(t) for o in others)
        out[b] = proxy_syn[b] // share
    return out


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def print_table(report: Mapping[str, Any], out: IO[str]) -> None:
    cols = ("wave", "vector", "offered_pps", "detected", "ttm_s", "attack_dropped_pct", "legit_tcp_pct",
            "legit_udp_pct")
    heads = ("wave", "vector", "offered pps", "detected", "TTM s", "dropped", "legit TCP", "legit UDP")
    table = [[_fmt(w[c], "%" if c.endswith("pct") else "") for c in cols] for w in report["waves"]]
    for w, row in zip(report["waves"], table, strict=True):
        if (w.get("detection") or {}).get("ongoing"):
            row[cols.index("detected")] = "open"  # absorbed by an attack still open from an earlier wave
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(widths[i]) for i, h in enumerate(heads)), file=out)
    for r in table:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)), file=out)
    b = report["baseline"]
    print(f"\nlegitimate users outside every wave: TCP {_fmt(b['legit_tcp_pct'], '%')}, "
          f"UDP {_fmt(b['legit_udp_pct'], '%')}; "
          f"before the first wave: TCP {_fmt(b['before_tcp_pct'], '%')}; "
          f"after the last: TCP {_fmt(b['after_tcp_pct'], '%')}", file=out)
    print(f"origin delivery counter drops: {report['counter_drops']} "
          "(non-zero: figures understate delivery)", file=out)
    check = report.get("delivery_check") or {}
    if check:
        short = [v for v, c in check.items() if c["seen"] < c["sent"]]
        print("delivery check (packets of each vector before the first wave, counted at the origins): "
              + ", ".join(f"{v} {c['seen']}/{c['sent']}" for v, c in check.items())
              + (f"; NOT ALL SEEN: {', '.join(short)} (its dropped % overstates)" if short else ""), file=out)
    fleet = report.get("fleet_attacks")
    if fleet is not None:
        print(f"fleet (the controller's cluster-wide detection): {len(fleet)} attack(s)"
              + "".join(f"\n  {a['id']}: {a['vector']} on {a['victim'] or 'no victim'}, from "
                        f"{a['started_s']:.1f} s" + (f" to {a['ended_s']:.1f} s" if "ended_s" in a else "")
                        for a in fleet), file=out)
    if report.get("mode") == "monitor":
        print("monitor mode: the agents detected and planned, applied nothing (a baseline)", file=out)


def chart(path: Path, s: Scenario, series: Mapping[str, Any], waves: Sequence[Mapping[str, Any]],
          rules: Sequence[tuple[float, str, str]], rows: npt.NDArray[Any], t0: float) -> None:
    """A PNG: traffic at the edges by verdict over time (stacked), the waves
    as spans, the rules added (removed) as ticks, and the legitimate users'
    success per second below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(series["t"]) - t0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(14, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if len(t) > 1:
        # rates over a regular grid of the cumulative counts: a late sample
        # (a busy machine) would otherwise show as a spike next to a dip
        grid = np.arange(t[0], t[-1], CHART_STEP_SECONDS)
        passed = np.diff(np.interp(grid, t, np.asarray(series["passed"], dtype=float))) / CHART_STEP_SECONDS
        dropped = np.diff(np.interp(grid, t, np.asarray(series["dropped"], dtype=float))) / CHART_STEP_SECONDS
        ax.stackplot(grid[1:], dropped, passed, labels=["dropped at the edges", "passed"],
                     colors=["#d62728", "#2ca02c"], alpha=0.8, step="pre")
    colors = matplotlib.colormaps["tab10"]
    for w in waves:
        k = list(s.topology.botnets).index(w["botnet"]) if w["botnet"] else 4 + (w["vector"] == "http")
        ax.axvspan(w["start_s"], w["end_s"], color=colors(k), alpha=0.12)
        ax.text(w["start_s"], 1.0, w["wave"], transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=6, va="top")
    for at, change, _rid in rules:
        ax.axvline(at - t0, ymax=0.04, color="black" if change == "added" else "grey", lw=0.8)
    ax.set_ylabel("packets/s at the edges")
    fig.suptitle(f"breakwater lab: {s.name} ({len(s.waves)} waves; ticks: rules added/removed)")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
    for kind, label in ((HTTP, "HTTP (fresh TCP)"), (UDP, "UDP")):
        sel = rows[rows[:, 1] == kind]
        if len(sel):
            sec = np.floor(sel[:, 0] - t0).astype(int)
            keep = sec >= 0
            ok = np.bincount(sec[keep], weights=sel[keep, 2])
            tot = np.bincount(sec[keep])
            have = tot > 0
            ax2.plot(np.arange(len(tot))[have], 100 * ok[have] / tot[have], label=label, lw=1)
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("legit success %")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
