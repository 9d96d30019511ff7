"""The demo's result: per vector, the flood at the edge, detection, time to
mitigate, the agent's attacks and rules and the legitimate client's delivery
(:func:`summarize`, the JSON of ``breakwater demo --json``), and the same as
a table for people (:func:`print_summary`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from ..output import human_rate, table
from .measure import (
    MITIGATED_SHARE,
    SAMPLE_SECONDS,
    RuleBook,
    Series,
    attacks,
    flood_figures,
    fold,
    pct,
    pct_text,
)
from .waves import WaveRun

__all__ = ["print_summary", "summarize"]


def summarize(runs: Sequence[WaveRun], t0: float, series: Series, rules: RuleBook,
              events: Sequence[dict[str, Any]], sent_at: npt.NDArray[np.float64],
              received: npt.NDArray[np.bool_], at_origin: dict[str, int]) -> dict[str, Any]:
    """Per vector, the whole run's legitimate delivery, the agent's other
    attacks and the flood that reached the origin. ``sent_at``/``received``:
    the client's datagrams by sequence number; ``at_origin``: flood
    datagrams the origin's service counted, by wave."""
    found = attacks(events)

    def legit(lo: float, hi: float) -> dict[str, Any]:
        mask = (sent_at >= lo) & (sent_at < hi)
        n, got = int(mask.sum()), int(received[mask].sum())
        return {"sent": n, "delivered": got, "delivery_pct": pct(got, n)}

    claimed: set[str] = set()
    vectors = []
    for wr in runs:
        w = wr.wave
        lo, hi = wr.span(t0)
        fig = flood_figures(series, lo, hi)
        mine = [a for a in found if a["vector"] in w.vectors and lo - 1 <= a["started_at"] <= hi + 1
                and a["id"] not in claimed]
        claimed |= {a["id"] for a in mine}
        ids = sorted({r for a in mine for r in a["rules"]})
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
            "dropped_pct": pct(fig.dropped, fig.seen),
            "mitigated": fig.mitigated_at is not None,
            "time_to_mitigate_s": None if fig.mitigated_at is None
            else round(max(0.0, fig.mitigated_at - lo), 2),
            "detected_after_s": None if detected is None else round(detected - lo, 2),
            "dropped_after_mitigation_pct": pct(fig.dropped_after, fig.seen_after),
            "delivered_to_origin": at_origin.get(w.key, 0) if w.key != "syn" else None,
            "legit": legit(lo, hi),
            "legit_after_mitigation": legit(max(fig.mitigated_at, lo), hi) if fig.mitigated_at else
            {"sent": 0, "delivered": 0, "delivery_pct": None},
            "attacks": [{k: a[k] for k in ("id", "vector", "profile", "peak_pps", "rules")}
                        for a in mine],
            "rules": [{"id": r, "action": rules.describe(r), "dropped": rules.dropped([r])}
                      for r in ids],
        })
    return {
        "vectors": vectors,
        "legit": legit(-np.inf, np.inf),
        "other_attacks": [a for a in found if a["id"] not in claimed],
        "flood_at_origin": at_origin,
    }


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s"

    rows = []
    for v in summary["vectors"]:
        rows.append([v["title"], f"{human_rate(v['pps'])} pps", v["seen_at_edge"],
                     secs(v["detected_after_s"]), secs(v["time_to_mitigate_s"]), pct_text(v["dropped_pct"]),
                     pct_text(v["dropped_after_mitigation_pct"]), pct_text(v["legit"]["delivery_pct"]),
                     pct_text(v["legit_after_mitigation"]["delivery_pct"])])
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
        for name, group in fold(list(by_id)):
            desc = by_id[group[0]]["action"] if len(group) == 1 else (
                "one per reflection port and UDP fragments, "
                + " / ".join(sorted({by_id[r]["action"].split(" UDP")[0] for r in group})))
            print(f"  rule {name}: {desc}; {sum(by_id[r]['dropped'] for r in group)} dropped", file=out)
    if summary["other_attacks"]:
        print("other attacks the agent reported: "
              + ", ".join(f"{a['id']} ({a['vector']})" for a in summary["other_attacks"]), file=out)
    lg = summary["legit"]
    print(f"legitimate client: {lg['delivered']} of {lg['sent']} datagrams delivered "
          f"({pct_text(lg['delivery_pct'])}) over the whole run", file=out)
