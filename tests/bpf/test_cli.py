"""The operator CLI on pinned maps: rules apply/list/show/del/preset and the
deny/allow edits behind them, run as real processes against a loaded
program (no interface needed: the maps are what the CLI works on)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dataplane import abi
from controller.dataplane import build as program
from controller.dataplane.maps import MapSizes
from controller.dataplane.pinned import MapSet

pytestmark = pytest.mark.bpf

SIZES = MapSizes(deny_v4=4096, deny_v6=1024, src_v4=4096, src_v6=1024, rl_src=1024)
IFNAME = "bwcli0"

RULES = """
version = 1
[[rules]]
id = "dns-amp"
priority = 100
action = "drop"
match = { dst = ["198.18.0.0/24"], protocol = "udp", sport = 53 }

[[rules]]
id = "syn-limit"
priority = 200
action = { kind = "rate_limit", pps = 1000 }
match = { dst = ["198.18.0.0/24"], protocol = "tcp", dport = 443, tcp_flags = "syn,!ack" }

[[rules]]
id = "bad-host"
action = "drop"
match = { src = ["203.0.113.66"] }
"""


@pytest.fixture()
def cli(tmp_path: Path) -> Iterator[tuple[list[str], MapSet]]:
    """A program whose maps are pinned where the CLI looks for IFNAME."""
    root = Path(f"/sys/fs/bpf/bw-cli-{uuid.uuid4().hex[:8]}")
    pin_dir = root / IFNAME
    pin_dir.mkdir(parents=True)
    loaded = None
    maps = None
    try:
        loaded = program.load(program.Build.make(SIZES, pin_dir))
        maps = MapSet.open(pin_dir, SIZES)
        base = [sys.executable, "-m", "controller.cli", "--pin-root", str(root),
                "--state-dir", str(tmp_path / "state")]
        yield base, maps
    finally:
        if maps is not None:
            maps.close()
        if loaded is not None:
            loaded.close()
        for p in pin_dir.iterdir():
            p.unlink()
        pin_dir.rmdir()
        root.rmdir()


def run(base: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*base, *args, "-i", IFNAME], capture_output=True, text=True, timeout=120)


def test_apply_list_show_del(cli: tuple[list[str], MapSet], tmp_path: Path) -> None:
    base, _ = cli
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    dry = run(base, "rules", "apply", str(path), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    [row] = json.loads(dry.stdout)
    assert row["applied"] is False and sorted(row["added"]) == ["bad-host", "dns-amp", "syn-limit"]
    assert run(base, "rules", "list", "--json").stdout.strip() == "[]"  # dry run changed nothing

    done = run(base, "rules", "apply", str(path), "--json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["applied"] and row["signatures"] == 2 and row["deny_exact"] == 1

    listed = json.loads(run(base, "rules", "list", "--json").stdout)
    assert [r["id"] for r in listed] == ["dns-amp", "syn-limit", "bad-host"]  # priority order
    shown = json.loads(run(base, "rules", "show", "syn-limit", "--json").stdout)
    assert shown[0]["action"]["pps"] == 1000

    again = json.loads(run(base, "rules", "apply", str(path), "--json").stdout)[0]
    assert again["unchanged"] == 3 and not again["added"]

    gone = run(base, "rules", "del", "bad-host", "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)[0]["removed"] == ["bad-host"]
    missing = run(base, "rules", "del", "nope")
    assert missing.returncode == 2 and "no rule 'nope'" in missing.stderr


def test_invalid_file_changes_nothing(cli: tuple[list[str], MapSet], tmp_path: Path) -> None:
    base, _ = cli
    good = tmp_path / "good.toml"
    good.write_text(RULES)
    assert run(base, "rules", "apply", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('dport = 443', 'dport = 70000'))
    r = run(base, "rules", "apply", str(bad))
    assert r.returncode == 2
    assert "rules[1].match.dport" in r.stderr
    listed = json.loads(run(base, "rules", "list", "--json").stdout)
    assert len(listed) == 3


def test_deny_add_edits_a_source_only_rule(cli: tuple[list[str], MapSet]) -> None:
    base, _ = cli
    assert run(base, "deny", "add", "198.18.0.3", "198.18.1.0/24").returncode == 0
    assert run(base, "deny", "add", "198.18.0.4", "--rule", "feed-x").returncode == 0
    entries = json.loads(run(base, "deny", "list", "--json").stdout)
    assert {(e["prefix"], e["rule"]) for e in entries} == {
        ("198.18.0.3", "cli-deny"), ("198.18.1.0/24", "cli-deny"), ("198.18.0.4", "feed-x")}
    assert run(base, "deny", "del", "198.18.0.3", "198.18.0.4").returncode == 0
    rules = {r["id"]: r for r in json.loads(run(base, "rules", "list", "--json").stdout)}
    assert set(rules) == {"cli-deny"}  # feed-x lost its last source and is gone
    assert rules["cli-deny"]["match"]["src"] == ["198.18.1.0/24"]


def test_preset_reflection(cli: tuple[list[str], MapSet]) -> None:
    base, _ = cli
    r = run(base, "rules", "preset", "reflection", "--dst", "198.18.0.0/24", "--action", "rate_limit",
            "--pps", "500", "--json")
    assert r.returncode == 0, r.stderr
    ids = {x["id"] for x in json.loads(run(base, "rules", "list", "--json").stdout)}
    for name in ("chargen", "dns", "ntp", "snmp", "cldap", "ssdp", "ws-discovery", "memcached"):
        assert f"amp-{name}" in ids
    bad = run(base, "rules", "preset", "reflection", "--dst", "198.18.0.0/24", "--action", "rate_limit")
    assert bad.returncode == 2 and "--pps" in bad.stderr


def test_state_of_other_generation_blocks_edits_not_apply(cli: tuple[list[str], MapSet],
                                                          tmp_path: Path) -> None:
    """Maps purged and recreated (generation back to 0) under a recorded rule
    set: an edit would be computed from the wrong set, so it is refused; a
    whole `rules apply` replaces it."""
    base, maps = cli
    assert run(base, "deny", "add", "198.18.0.3").returncode == 0
    raw = maps["config"].lookup(bytes(4))
    assert raw is not None
    cfg = abi.Config.from_buffer_copy(raw)
    cfg.gen = 0
    maps["config"].update(bytes(4), bytes(cfg))
    r = run(base, "deny", "add", "198.18.0.9")
    assert r.returncode == 2 and "generation" in r.stderr and "rules apply" in r.stderr
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    assert run(base, "rules", "apply", str(path)).returncode == 0
    assert run(base, "deny", "add", "198.18.0.9").returncode == 0
