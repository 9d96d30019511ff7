"""Breakwater lab benchmark (issue 14): a scenario replayed twice in one run.

    .venv/bin/python bench/lab.py [--scenario scenarios/x-spaces.toml] [--quick] [--no-baseline]

Runs ``breakwater lab run SCENARIO --json`` (a real controller, two real
agents with XDP on their ingress veths, origins, legitimate HTTP-over-fresh-TCP
and UDP users, every wave's sender; docs/lab.md) twice:

1. baseline: the agents in monitor mode (they detect and plan, apply
   nothing) and the controller's fleet detection off: what each wave does
   to the legitimate users unmitigated and how much of it reaches the origins;
2. enforced: the agents as shipped for the lab (``mode = "enforce"``).

Prints one JSON object per wave on stdout (``wave``, ``vector``,
``offered_pps``, ``ttm_s``, ``attack_dropped_pct``, ``legit_tcp_pct``,
``legit_udp_pct``, the same legitimate figures from mitigation on, and the
baseline's with ratios: ``legit_tcp_ratio`` = enforced / baseline success,
``attack_passed_ratio`` = enforced / baseline share of the wave that reached
the origins), then one per vector (worst TTM, lowest legitimate success)
and a summary line; a closing table on stderr, as the other benchmarks do.
Targets (issue 14): TTM <= 1 s on every wave; legitimate TCP and UDP
success >= 99% during every wave after mitigation and >= 95% over each
whole wave.

``--quick`` runs ``scenarios/every-vector.toml`` (~1 min a run) instead of
x-spaces (~3.5 min a run); ``--no-baseline`` skips the monitor-mode run
(no ratios). Needs root and what ``make setup`` installs. Everything the lab
builds is removed by ``breakwater lab run`` itself (also on SIGTERM, which
this script forwards); ``breakwater lab down`` removes what a killed run left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as c

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "x-spaces.toml"
QUICK_SCENARIO = REPO / "scenarios" / "every-vector.toml"
RUN_TIMEOUT_S = 900.0  # one lab run: setup, the scenario (at most 600 s), the report
TARGET_TTM_S = 1.0
TARGET_LEGIT_MITIGATED_PCT = 99.0
TARGET_LEGIT_WAVE_PCT = 95.0


def lab_run(scenario: Path, *, monitor: bool) -> dict[str, Any]:
    """One ``breakwater lab run --json``; its live view and table go to our stderr."""
    cmd = [sys.executable, "-m", "controller.cli", "lab", "run", str(scenario), "--json"]
    if monitor:
        cmd.append("--monitor")
    c.log(f"{'baseline (monitor mode)' if monitor else 'enforced'}: {' '.join(cmd[2:])}")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, env=env)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # the run removes its lab on SIGTERM
        proc.wait(60)
        raise
    if not out.strip():
        raise RuntimeError(f"lab run exited {proc.returncode} without a report")
    report: dict[str, Any] = json.loads(out)
    if report.get("left_behind"):
        raise RuntimeError(f"lab run left {report['left_behind']} behind (breakwater lab down removes it)")
    return report


def _passed(w: dict[str, Any]) -> float | None:
    return None if w["attack_dropped_pct"] is None else 100.0 - w["attack_dropped_pct"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _min(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return min(have) if have else None


def wave_lines(enforced: dict[str, Any], baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    base = {w["wave"]: w for w in baseline["waves"]} if baseline else {}
    lines = []
    for w in enforced["waves"]:
        b = base.get(w["wave"])
        line = {"case": "wave", "wave": w["wave"], "vector": w["vector"],
                "carpet": not w["target"].endswith("/32"), "offered_pps": w["offered_pps"],
                "detected": w["detected"], "ttm_s": w["ttm_s"], "attack_dropped_pct": w["attack_dropped_pct"],
                "legit_tcp_pct": w["legit_tcp_pct"], "legit_udp_pct": w["legit_udp_pct"],
                "legit_tcp_mitigated_pct": w["legit_tcp_mitigated_pct"],
                "legit_udp_mitigated_pct": w["legit_udp_mitigated_pct"]}
        if b is not None:
            line.update({
                "baseline_legit_tcp_pct": b["legit_tcp_pct"], "baseline_legit_udp_pct": b["legit_udp_pct"],
                "baseline_attack_passed_pct": _passed(b),
                "legit_tcp_ratio": _ratio(w["legit_tcp_pct"], b["legit_tcp_pct"]),
                "legit_udp_ratio": _ratio(w["legit_udp_pct"], b["legit_udp_pct"]),
                "attack_passed_ratio": _ratio(_passed(w), _passed(b)),
            })
        whole = _min([w["legit_tcp_pct"], w["legit_udp_pct"]])
        after = _min([w["legit_tcp_mitigated_pct"], w["legit_udp_mitigated_pct"]])
        line["ok"] = bool(w["ttm_s"] is not None and w["ttm_s"] <= TARGET_TTM_S
                          and whole is not None and whole >= TARGET_LEGIT_WAVE_PCT
                          and after is not None and after >= TARGET_LEGIT_MITIGATED_PCT)
        lines.append(c.emit(**line))
    return lines


def vector_lines(waves: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    def kind(w: dict[str, Any]) -> str:  # carpets apart: another detection than one victim's
        return f"{w['vector']} carpet" if w["carpet"] else str(w["vector"])

    for vector in dict.fromkeys(kind(w) for w in waves):
        mine = [w for w in waves if kind(w) == vector]
        ttms = [w["ttm_s"] for w in mine]
        done = [t for t in ttms if t is not None]
        out.append(c.emit(
            case="vector", vector=vector, waves=len(mine), mitigated=len(done),
            ttm_max_s=None if len(done) < len(ttms) else max(done),
            ttm_median_s=c.median(done) if done else None,
            legit_tcp_min_pct=_min([w["legit_tcp_pct"] for w in mine]),
            legit_udp_min_pct=_min([w["legit_udp_pct"] for w in mine]),
            legit_tcp_mitigated_min_pct=_min([w["legit_tcp_mitigated_pct"] for w in mine]),
            legit_udp_mitigated_min_pct=_min([w["legit_udp_mitigated_pct"] for w in mine]),
            baseline_legit_tcp_min_pct=_min([w.get("baseline_legit_tcp_pct") for w in mine]),
            baseline_legit_udp_min_pct=_min([w.get("baseline_legit_udp_pct") for w in mine]),
            ok=all(w["ok"] for w in mine)))
    return out


def table(vectors: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    rows = [("vector", "waves", "mitigated", "TTM max s", "TTM med s", "legit TCP min", "(baseline)",
             "legit UDP min", "(baseline)", "ok")]
    for v in vectors:
        rows.append((v["vector"], f(v["waves"]), f(v["mitigated"]), f(v["ttm_max_s"]), f(v["ttm_median_s"]),
                     f(v["legit_tcp_min_pct"]), f(v["baseline_legit_tcp_min_pct"]), f(v["legit_udp_min_pct"]),
                     f(v["baseline_legit_udp_min_pct"]), "yes" if v["ok"] else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stderr.write("  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                                   for i, (x, w) in enumerate(zip(r, widths, strict=True))) + "\n")
    sys.stderr.write(f"waves meeting every target: {summary['waves_ok']}/{summary['waves']}; legitimate "
                     "success over whole waves vs. baseline (median ratio): "
                     f"TCP {f(summary['legit_tcp_ratio'])}, "
                     f"UDP {f(summary['legit_udp_ratio'])}; attack reaching the origins vs. baseline "
                     f"(median ratio): {f(summary['attack_passed_ratio'])}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", type=Path, default=None, help=f"default {SCENARIO.relative_to(REPO)}")
    p.add_argument("--quick", action="store_true", help=f"run {QUICK_SCENARIO.relative_to(REPO)}")
    p.add_argument("--no-baseline", action="store_true", help="skip the monitor-mode run (no ratios)")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        c.log("needs root (network namespaces, XDP)")
        return 2
    scenario = opts.scenario or (QUICK_SCENARIO if opts.quick else SCENARIO)
    c.set_bench("lab")
    t0 = time.monotonic()
    try:
        baseline = None if opts.no_baseline else lab_run(scenario, monitor=True)
        enforced = lab_run(scenario, monitor=False)
    except KeyboardInterrupt:
        c.log("interrupted; the lab run removed its lab")
        return 130
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        c.log(f"FAILED: {exc}")
        return 1
    waves = wave_lines(enforced, baseline)
    vectors = vector_lines(waves)

    def med(key: str) -> float | None:
        vals = [w[key] for w in waves if w.get(key) is not None]
        return round(c.median(vals), 3) if vals else None

    summary = c.emit(
        case="summary", scenario=enforced["scenario"], waves=len(waves), waves_ok=sum(w["ok"] for w in waves),
        detected=sum(w["detected"] for w in waves), mitigated=sum(w["ttm_s"] is not None for w in waves),
        ttm_max_s=max((w["ttm_s"] for w in waves if w["ttm_s"] is not None), default=None),
        legit_tcp_ratio=med("legit_tcp_ratio"), legit_udp_ratio=med("legit_udp_ratio"),
        attack_passed_ratio=med("attack_passed_ratio"),
        legit_outside_waves=enforced["baseline"], fleet_attacks=len(enforced.get("fleet_attacks") or []),
        delivery_check=enforced.get("delivery_check"), seconds=round(time.monotonic() - t0, 1))
    table(vectors, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
