"""``breakwater lab run`` end to end: the every-vector scenario through a
real controller and two real agents, the lab removed afterwards, and the
wave generators unable to send outside the lab.

The legitimate users' figures are reported (printed with the test's output),
not asserted against the issue's 99% target: the product cannot meet it on
every vector yet (issue 10).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from controller.lab import attack, scenario, traffic
from controller.lab.fleet import HOST_IF, LAB_TAG, RUN_DIR, Fleet

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"


def _lab_namespaces() -> set[str]:
    return {n for n in pyroute2_netns.listnetns() if n.startswith(f"bw{LAB_TAG}")}


@pytest.mark.timeout(400)
def test_every_vector_detected_and_mitigated_and_lab_removed(tmp_path: Path) -> None:
    before = _lab_namespaces()
    chart = tmp_path / "chart.png"
    out = subprocess.run([sys.executable, "-m", "controller.cli", "lab", "run",
                          str(SCENARIOS / "every-vector.toml"), "--json", "--chart", str(chart)],
                         cwd=REPO, capture_output=True, timeout=380, check=False)
    err = out.stderr.decode(errors="replace")
    assert out.stdout, err[-3000:]
    report = json.loads(out.stdout)
    print("\n" + err[err.rfind("\nwave "):])  # the table, for the record
    s = scenario.load(SCENARIOS / "every-vector.toml")
    assert [w["vector"] for w in report["waves"]] == [w.vector for w in s.waves]
    assert report["left_behind"] == []
    prefix = report["lab"]["prefix"]
    assert not any(n.startswith(prefix) for n in _lab_namespaces() - before)
    assert not (RUN_DIR / f"{prefix}.json").exists()
    assert not list(Path("/sys/fs/bpf").glob(f"{prefix}*")) and not Path(f"/tmp/breakwater-{prefix}").exists()
    assert chart.stat().st_size > 10_000
    missed = {w["wave"]: (w["detected"], w["mitigated"]) for w in report["waves"]
              if not (w["detected"] and w["mitigated"])}
    assert not missed, f"not (detected, mitigated): {missed}"
    assert report["ok"] is True and out.returncode == 0
    for w in report["waves"]:
        assert w["sent"] > 0 and w["offered_pps"] > 0
        assert w["legit_tcp_pct"] is not None and w["legit_udp_pct"] is not None


@pytest.mark.timeout(200)
def test_a_trafgen_wave_is_sent_at_its_rate_and_mitigated() -> None:
    out = subprocess.run([sys.executable, "-m", "controller.cli", "lab", "run",
                          str(SCENARIOS / "trafgen.toml"), "--json"],
                         cwd=REPO, capture_output=True, timeout=180, check=False)
    err = out.stderr.decode(errors="replace")
    assert out.stdout, err[-3000:]
    report = json.loads(out.stdout)
    print("\n" + err[err.rfind("\nwave "):])
    [w] = report["waves"]
    wave = scenario.load(SCENARIOS / "trafgen.toml").waves[0]
    assert 0.5 * wave.packets <= w["sent"] <= wave.packets  # bounded by the wave's count
    assert w["offered_pps"] > 0.5 * wave.rate
    assert w["detected"] and w["mitigated"], w
    assert report["delivery_check"]["udp"]["seen"] >= report["delivery_check"]["udp"]["sent"] > 0
    assert report["left_behind"] == []
    prefix = report["lab"]["prefix"]  # other runs (other labs) may come and go meanwhile
    assert not any(n.startswith(prefix) for n in _lab_namespaces())


def _escape(ifname: str, frames: list[bytes]) -> int:
    """Send crafted frames to addresses outside the lab; count what left through ``ifname``'s namespace."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    for f in frames:
        s.send(f)
    s.close()
    return len(frames)


def _connect_out(dst: str) -> str:
    try:
        socket.create_connection((dst, 80), timeout=1).close()
    except OSError as exc:
        return type(exc).__name__ + ":" + str(exc.errno)
    return "connected"


@pytest.mark.timeout(120)
def test_generators_cannot_send_outside_the_lab() -> None:
    s = scenario.load(SCENARIOS / "every-vector.toml")
    fleet = Fleet(s)
    try:
        fleet.build()
        fleet.check_no_route_out()  # no default route, nothing outside 198.18.0.0/15
        edge_macs = [fleet.macs["edge0"], fleet.macs["edge1"]]
        # Every generator's frames are addressed inside the lab: sources and destinations.
        lab = ipaddress.ip_network("198.18.0.0/15")
        for w in s.waves:
            if w.vector == "http":
                continue
            for f in attack.wave_frames(w, s.topology, fleet.macs["spoofer"], edge_macs)[:2000]:
                assert ipaddress.ip_address(f[26:30]) in lab and ipaddress.ip_address(f[30:34]) in lab
                assert f[:6].hex(":") in edge_macs  # to an edge, never a broadcast
        # A socket in any sender namespace cannot reach an address outside the lab.
        for role in ("clients", "proxies", "spoofer", "reflectors", "bot-0"):
            got = traffic.run_in_netns(fleet.ns[role], _connect_out, "192.0.2.1", timeout=10)
            assert got.startswith("OSError:101"), (role, got)  # ENETUNREACH
        # Frames sent anyway towards outside addresses stop at the lab's bridge:
        # the internet namespace has no other port than the lab's veths.
        with_dst = attack.wave_frames(s.waves[2], s.topology, fleet.macs["bot-0"], edge_macs)[:10]
        assert traffic.run_in_netns(fleet.ns["bot-0"], _escape, HOST_IF, with_dst, timeout=10) == 10
        from pyroute2 import IPRoute
        with IPRoute(netns=fleet.ns["ix"]) as ipr:
            names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        assert all(n == "lo" or n == "ix0" or n.startswith("ix-") for n in names), names
    finally:
        left = fleet.close()
    assert left == []
    time.sleep(0.1)
    assert not any(n.startswith(fleet.lab.prefix) for n in pyroute2_netns.listnetns())
