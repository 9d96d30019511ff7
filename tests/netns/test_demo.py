"""``breakwater demo`` end to end, as ``make demo`` runs it (about 40 s).

The demo is run as a process with ``--json``: every vector must be
mitigated, most of each flood dropped at the edge, at least 99% of the
legitimate datagrams delivered once a vector is mitigated, and nothing the
demo built may be left: no namespace, no pin, no temporary directory, no
agent process. A second run is interrupted (SIGINT, as Ctrl-C) mid-flood
and must clean up the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns as pyroute2_netns

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
BPFFS = Path("/sys/fs/bpf")
DEMO_PINS = "bw-demo-"  # controller.lab.demo's pin roots
DEMO_TMP = "breakwater-demo-"  # and temporary directories
RUN_SECONDS = 240  # the demo takes ~40 s; a compile on a busy machine more
# What the demo is expected to achieve on a 2-CPU VM (it reaches ~0.5 s and
# 99.6-100%); the margins are for a machine busy with other work.
MAX_TIME_TO_MITIGATE = 2.0
MIN_DROPPED_AFTER = 99.0
MIN_DROPPED_OVERALL = 75.0
MIN_LEGIT_AFTER = 99.0
MIN_LEGIT_OVERALL = 90.0
EXPECTED = {
    "udp": {"source_rate", "udp"},
    "reflection": {"reflection"},
    "syn": {"syn"},
}


def _agents_with(path_part: str) -> list[str]:
    """Agent processes whose command line names ``path_part``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "controller.cli" in cmd and " agent " in cmd and path_part in cmd:
            out.append(f"{pid}: {cmd}")
    return out


def _assert_removed(prefix: str, pin_root: str, workdir: str) -> None:
    """Nothing of one demo run is left: the names come from the run itself,
    so other labs on the machine do not matter."""
    left = sorted(n for n in pyroute2_netns.listnetns() if n.startswith(f"{prefix}-"))
    assert not left, f"namespaces left behind: {left}"
    assert not Path(pin_root).exists(), f"pins left behind under {pin_root}"
    assert not Path(workdir).exists(), f"temporary directory left behind: {workdir}"
    assert not _agents_with(workdir), _agents_with(workdir)


def _demo(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "demo", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def test_demo_mitigates_every_vector_and_cleans_up(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    proc = _demo("--json", "--agent-log", str(log))
    try:
        out, err = proc.communicate(timeout=RUN_SECONDS)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # lets the demo clean up
            proc.communicate(timeout=60)
    progress = err.decode(errors="replace")
    agent_log = log.read_text() if log.exists() else "(no agent log)"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{progress[-4000:]}\n{agent_log[-4000:]}"
    summary: dict[str, Any] = json.loads(out)
    context = f"{json.dumps(summary['vectors'], indent=1)}\n{progress[-3000:]}"

    assert summary["ok"] and summary["left_behind"] == [], context
    assert summary["lab"]["xdp_mode"] in ("native", "generic")
    assert [v["vector"] for v in summary["vectors"]] == list(EXPECTED)
    for v in summary["vectors"]:
        name = v["title"]
        assert v["sent"] > 0 and v["seen_at_edge"] >= 0.99 * v["sent"], (name, context)
        assert v["mitigated"], (name, context)
        assert v["time_to_mitigate_s"] <= MAX_TIME_TO_MITIGATE, (name, context)
        assert v["dropped_after_mitigation_pct"] >= MIN_DROPPED_AFTER, (name, context)
        assert v["dropped_pct"] >= MIN_DROPPED_OVERALL, (name, context)
        assert v["legit_after_mitigation"]["sent"] > 0, (name, context)
        assert v["legit_after_mitigation"]["delivery_pct"] >= MIN_LEGIT_AFTER, (name, context)
        vectors = {a["vector"] for a in v["attacks"]}
        assert vectors & EXPECTED[v["vector"]], (name, vectors, context)
        assert v["rules"], (name, context)
    by_key = {v["vector"]: v for v in summary["vectors"]}
    # the narrowest rule for each: the bots' /24, the reflection ports, a SYN ceiling
    assert any("198.18.1.0/24" in r["action"] and r["action"].startswith("drop")
               for r in by_key["udp"]["rules"]), by_key["udp"]["rules"]
    assert any(r["id"].startswith("auto-refl-") for r in by_key["reflection"]["rules"])
    assert any("TCP SYN" in r["action"] and "limit" in r["action"] for r in by_key["syn"]["rules"])
    assert summary["legit"]["delivery_pct"] >= MIN_LEGIT_OVERALL, context
    assert not summary["other_attacks"], summary["other_attacks"]
    # the agent was a real process that attached, detected, applied and detached
    events = [json.loads(line).get("event") for line in agent_log.splitlines() if line.startswith("{")]
    for needed in ("agent_ready", "attack_started", "rules_applied", "detached"):
        assert needed in events, (needed, agent_log[-3000:])
    lab = summary["lab"]
    prefix = lab["namespaces"]["edge"].removesuffix("-edge")
    assert all(n.startswith(f"{prefix}-") for n in lab["namespaces"].values()), lab
    assert lab["pin_root"].startswith(f"{BPFFS}/{DEMO_PINS}"), lab
    assert Path(lab["workdir"]).name.startswith(DEMO_TMP), lab
    _assert_removed(prefix, lab["pin_root"], lab["workdir"])


def test_interrupted_demo_cleans_up() -> None:
    proc = _demo("--json")
    seen = ""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while "wave UDP flood:" not in seen and time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stderr.read()
            if chunk:
                seen += chunk.decode(errors="replace")
            time.sleep(0.1)
        assert "wave UDP flood:" in seen, seen[-3000:]
        time.sleep(1.0)  # the agent is mitigating: Ctrl-C now
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    rest = proc.stderr.read() or b""
    seen += rest.decode(errors="replace")
    assert proc.returncode == 130, seen[-3000:]
    assert "removed: the agent" in seen, seen[-3000:]
    ready = re.search(r"agent ready: \S+ XDP on \S+ in (\S+)-edge, pins under (\S+), ", seen)
    workdir = re.search(r"--config (\S+)/agent\.toml", seen)
    assert ready and workdir, seen[-3000:]
    _assert_removed(ready.group(1), ready.group(2), workdir.group(1))
