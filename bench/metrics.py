"""Breakwater metrics benchmark (issue 9): what one render of the agent's
exposition costs through ``prometheus_client`` and through the hand-written
text format it replaced.

    .venv/bin/python bench/metrics.py [--runs N] [--interfaces N] [--rules N] [--old REV]

No root, no BPF: the agent's metric set (every family and label
``Agent.render_metrics`` writes: packets and bytes by action and reason,
per-rule counters, two duration histograms and map fill per interface; map
write failures, monitor mode and the sync metrics once) is built from fixed,
realistic values through :class:`controller.metrics.Exposition` and through
the ``Exposition`` of ``controller/metrics.py`` at ``--old`` (read with
``git show``; the default is the last commit with the hand-written format).
Both texts are checked to hold the same samples (name, labels, value)
before anything is timed. Each render is timed with ``time.process_time``
(CPU time, so other work on the machine counts less); the figures are
medians of ``--runs`` renders after 20 warm-up renders, the two
implementations taking turns.

One JSON line per implementation on stdout (``render_ms``; ``build_ms``:
``Exposition()`` and the ``add``/``histogram`` calls; ``text_ms``: writing
the text), a summary on stderr.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as c
from prometheus_client.parser import text_string_to_metric_families

from controller import metrics
from controller.dataplane.reasons import Action, Reason

# The last commit whose controller/metrics.py wrote the text format by hand.
OLD_REV = "bca147f"
REPO = Path(__file__).resolve().parent.parent
WARMUP = 20
# The agent's main maps (controller.agent.daemon.FILL_MAPS) and its loop's buckets.
FILL_MAPS = ("deny_v4", "deny_v6", "deny_pfx_v4", "deny_pfx_v6", "allow_v4", "allow_v6",
             "src_v4", "src_v6", "rl_src", "dst_v4", "dst_v6")
SAMPLE_DURATIONS = (0.0008, 0.003, 0.004, 0.02, 0.04, 0.3)


def old_module(rev: str) -> types.ModuleType:
    """``controller/metrics.py`` as it was at ``rev``."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:controller/metrics.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("old_metrics")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:controller/metrics.py", "exec"), module.__dict__)
    return module


def histograms(module: Any) -> tuple[Any, Any]:
    """A detection-loop and a harvest histogram of ``module`` after 240 intervals."""
    loop, harvest = module.Histogram(), module.Histogram()
    for d in SAMPLE_DURATIONS * 40:
        loop.observe(d)
        harvest.observe(d / 3)
    return loop, harvest


def agent_set(ex: Any, hists: tuple[Any, Any], interfaces: int, rules: int) -> None:
    """The families and labels of ``Agent.render_metrics`` with fixed values."""
    loop, harvest = hists
    ex.family("breakwater_packets_total", "counter", "Packets by data-plane action.")
    for i in range(interfaces):
        lab = {"interface": f"eth{i}"}
        for a in Action:
            ex.add("breakwater_packets_total", "counter", "Packets by data-plane action.",
                   1_234_567 * (a.value + 1), {**lab, "action": a.label})
            ex.add("breakwater_bytes_total", "counter", "Bytes by data-plane action.",
                   987_654_321 * (a.value + 1), {**lab, "action": a.label})
        for r in Reason:
            ex.add("breakwater_reason_packets_total", "counter", "Packets by verdict reason.",
                   31_337 * r.value, {**lab, "reason": r.label})
            ex.add("breakwater_reason_bytes_total", "counter", "Bytes by verdict reason.",
                   2_000_003 * r.value, {**lab, "reason": r.label})
        ex.family("breakwater_rule_packets_total", "counter", "Packets matched per rule.")
        for slot in range(rules):
            rl = {**lab, "rule": f"auto-udp-flood-198.18.{slot}.0-24"}
            ex.add("breakwater_rule_packets_total", "counter", "Packets matched per rule.", 5000 + slot, rl)
            ex.add("breakwater_rule_bytes_total", "counter", "Bytes matched per rule.", 640_000 + slot, rl)
            ex.add("breakwater_rule_dropped_total", "counter",
                   "Packets dropped (or would-drop in monitor mode) per rule.", 4000 + slot, rl)
            ex.add("breakwater_rule_rate_limited_total", "counter",
                   "Packets dropped for exceeding the rule's rate.", slot, rl)
        ex.add("breakwater_active_mitigations", "gauge",
               "Automatic rules in force (planned, in monitor mode).", 3, {**lab, "mode": "enforce"})
        ex.add("breakwater_attacks_active", "gauge", "Attacks the detector holds active.", 1, lab)
        ex.add("breakwater_detection_loop_seconds", "gauge", "Duration of the last detection interval.",
               0.0123456, lab)
        ex.histogram("breakwater_detection_loop_duration_seconds",
                     "Duration of detection intervals (harvest, detect, plan, apply, store).", loop, lab)
        ex.add("breakwater_harvest_seconds", "gauge", "Duration of the last counter harvest.", 0.00456, lab)
        ex.histogram("breakwater_harvest_duration_seconds", "Duration of counter harvests.", harvest, lab)
        ex.add("breakwater_rule_applies_total", "counter", "Rule sets swapped in by the agent.", 17, lab)
        ex.add("breakwater_rule_apply_errors_total", "counter", "Rule-set swaps that failed.", 0, lab)
        for j, name in enumerate(FILL_MAPS):
            ml = {**lab, "map": name}
            entries, cap = 1000 * j, 1 << 20
            ex.add("breakwater_map_entries", "gauge", "Entries in a main map.", entries, ml)
            ex.add("breakwater_map_max_entries", "gauge", "Capacity of a main map.", cap, ml)
            ex.add("breakwater_map_fill_ratio", "gauge", "Entries / capacity of a main map.",
                   entries / cap, ml)
    ex.family("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.")
    for name, op in (("deny_v4", "update"), ("src_v4", "delete")):
        ex.add("breakwater_map_write_failures_total", "counter", "Failed map operations by map and op.", 2,
               {"map": name, "op": op})
    ex.add("breakwater_agent_monitor_mode", "gauge", "1 when the agent only plans (monitor mode).", 0)
    lab = {"controller": "ctl.example:9610"}
    ex.add("breakwater_controller_connected", "gauge", "1 while the agent has a registered sync stream.",
           1, lab)
    ex.add("breakwater_controller_rule_version", "gauge", "The controller rule set version in force.",
           42, lab)
    ex.add("breakwater_controller_rules", "gauge", "Rules in the controller layer in force.", 12, lab)
    for result, code, n in (("applied", "", 40), ("nacked", "INVALID_ARGUMENT", 1)):
        ex.add("breakwater_sync_updates_total", "counter", "Rule updates from the controller, by result.", n,
               {**lab, "result": result, "code": code})
    ex.add("breakwater_sync_reconnects_total", "counter", "Sync streams opened after the first.", 2, lab)
    for result, n in (("queued", 3600), ("dropped", 0)):
        ex.add("breakwater_sync_telemetry_total", "counter", "Telemetry summaries, by fate.", n,
               {**lab, "result": result})
    ex.add("breakwater_sync_events_sent_total", "counter", "Local events delivered to the controller.",
           9, lab)


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def timed(module: Any, hists: tuple[Any, Any], interfaces: int, rules: int) -> tuple[float, float]:
    """Seconds to build the set, and to write its text, once."""
    t0 = time.process_time()
    ex = module.Exposition()
    agent_set(ex, hists, interfaces, rules)
    t1 = time.process_time()
    ex.text()
    return t1 - t0, time.process_time() - t1


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=300, help="timed renders per implementation (300)")
    p.add_argument("--interfaces", type=int, default=2, help="interfaces in the set (2)")
    p.add_argument("--rules", type=int, default=10, help="rules with counters per interface (10)")
    p.add_argument("--old", default=OLD_REV, help=f"the revision of the hand-written format ({OLD_REV})")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    c.set_bench("metrics")
    impls = {"hand_written": old_module(opts.old), "prometheus_client": metrics}
    hists = {name: histograms(module) for name, module in impls.items()}
    texts = {}
    for name, module in impls.items():
        ex = module.Exposition()
        agent_set(ex, hists[name], opts.interfaces, opts.rules)
        texts[name] = ex.text()
    if samples(texts["hand_written"]) != samples(texts["prometheus_client"]):
        raise SystemExit("bench: the two implementations do not write the same samples")
    counts = {"samples": len(samples(texts["prometheus_client"])),
              "families": sum(1 for _ in text_string_to_metric_families(texts["prometheus_client"]))}
    c.log(f"{counts['samples']} samples in {counts['families']} families; {opts.runs} renders each")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in impls}
    gc.collect()
    for i in range(WARMUP + opts.runs):
        for name, module in impls.items():
            build, text = timed(module, hists[name], opts.interfaces, opts.rules)
            if i >= WARMUP:
                runs[name].append((build, text))
    lines = []
    for name, timings in runs.items():
        render = [b + t for b, t in timings]
        lines.append(c.emit(case=f"render_{name}", **counts, interfaces=opts.interfaces, rules=opts.rules,
               render_ms=round(c.median(render) * 1e3, 3),
               build_ms=round(c.median([b for b, _ in timings]) * 1e3, 3),
               text_ms=round(c.median([t for _, t in timings]) * 1e3, 3),
               min_ms=round(min(render) * 1e3, 3), max_ms=round(max(render) * 1e3, 3),
               text_bytes=len(texts[name].encode()), runs=len(render),
               method="time.process_time around Exposition() + the agent's add/histogram calls "
                      "(build) and text() (text); median of the runs, implementations taking turns"))
    for line in lines:
        sys.stderr.write(f"{line['case']:>26}: {line['render_ms']:.3f} ms "
                         f"(build {line['build_ms']:.3f}, text {line['text_ms']:.3f}), "
                         f"{line['text_bytes']} bytes\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
