"""Scenario files: every shipped one loads, and every mistake names the file and the field."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.agent import config as agentconfig
from controller.dataplane import challenge as chal
from controller.errors import ConfigError
from controller.lab import scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _base() -> dict[str, Any]:
    return tomllib.loads((SCENARIOS / "syn.toml").read_text())


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_load(path: Path) -> None:
    s = scenario.load(path)
    assert s.waves and all(w.end <= s.duration for w in s.waves)


def test_x_spaces_is_the_incident() -> None:
    s = scenario.load(SCENARIOS / "x-spaces.toml")
    assert len(s.waves) >= 34
    assert len(s.topology.botnets) == 4
    assert 150 <= s.duration <= 200
    assert set(scenario.vectors_of(s.waves)) == set(scenario.VECTORS)
    assert {w.reflect for w in s.waves if w.reflect} >= {"dns", "ntp", "memcached", "ssdp", "cldap"}
    assert any(w.carpet and w.target == s.topology.protected for w in s.waves)
    assert any(w.pulse for w in s.waves)
    assert {w.spoof for w in s.waves} == {"random", "pool", "real"}
    overlapping = [(a.name, b.name) for a in s.waves for b in s.waves
                   if a.index < b.index and a.start < b.end and b.start < a.end]
    assert overlapping
    for name in s.topology.botnets:  # each botnet its own mix
        mine = {w.vector for w in s.waves if w.botnet == name}
        assert len(mine) >= 3, (name, mine)


def test_every_vector_scenario_covers_every_vector() -> None:
    s = scenario.load(SCENARIOS / "every-vector.toml")
    assert scenario.vectors_of(s.waves) == list(scenario.VECTORS)


def test_wave_timing() -> None:
    s = scenario.load(SCENARIOS / "pulse.toml")
    w = s.waves[0]
    assert w.pulse is not None and w.on_time() == 5.0 and w.packets == int(w.rate * 5)
    assert w.sending(w.start + 0.5) and not w.sending(w.start + 1.5) and not w.sending(w.end)


def _mutate(doc: dict[str, Any], path: str, value: object) -> None:
    keys: list[Any] = []
    for part in path.split("."):
        name, _, idx = part.partition("[")
        keys.append(name)
        if idx:
            keys.append(int(idx.rstrip("]")))
    target: Any = doc
    for k in keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()

CASES = [
    ("waves[0].rate", "fast", "waves[0].rate: expected a number"),
    ("waves[0].rate", 0, "waves[0].rate: 0 is out of range"),
    ("waves[0].vector", "slowloris", "waves[0].vector: \"slowloris\" is not one of syn, ack"),
    ("waves[0].botnet", "nobody", "waves[0].botnet: 'nobody' is not a botnet"),
    ("waves[0].botnet", _DELETE, "waves[0].botnet: missing"),
    ("waves[0].target", "10.0.0.1/32", "waves[0].target: 10.0.0.1/32 is outside the lab's"),
    ("waves[0].target", "198.18.5.1/32", "waves[0].target: 198.18.5.1/32 is outside the protected"),
    ("waves[0].duration", 20.0, "waves[0].duration: the wave ends at 24 s, after the scenario's 16 s"),
    ("waves[0].sources", 40000, "40000 is more than the 32768 addresses of topology.spoofed.pool"),
    ("waves[0].spooof", "random", "waves[0].spooof: unknown key (did you mean 'spoof'?)"),
    ("waves[0].reflect", "dns", "waves[0].reflect: only a reflection wave has it"),
    ("waves[0].pulse", {"on": 1.0}, "waves[0].pulse.off: missing"),
    ("waves[0].spoof", "real", "30000 is more than the 64 addresses of topology.botnets.mirai.count"),
    ("topology.edges", 3, "topology.edges: 3 is not 1, 2 or 4"),
    ("topology.origins", ["198.18.2.10"], "topology.origins: no origin in 198.18.2.128/25"),
    ("topology.origins[0]", "198.18.9.1", "topology.origins[0]: 198.18.9.1 is not a host of the protected"),
    ("topology.proxies.pool", "198.18.16.0/22", "topology.proxies.pool: 198.18.16.0/22 overlaps"),
    ("topology.protected", "198.18.0.0/23", "topology.protected: 198.18.0.0/23 overlaps the lab's LAN"),
    ("topology.udp_port", 53, "topology.udp_port: 53 is a reflection source port"),
    ("legit.http_rate", -1, "legit.http_rate: -1 is out of range"),
    ("agent.detect.udp.pps", "lots", "agent.detect.udp.pps: expected a number"),
    ("agent.mitigate.ceiling", 5, "agent.mitigate.ceiling: unknown key"),
    ("scenario.duration", _DELETE, "scenario.duration: missing"),
    ("agent.challenge.syn_pps", -1, "agent.challenge.syn_pps: -1 is out of range"),
    ("agent.challenge.hold", 0, "agent.challenge.hold: 0 is out of range"),
    ("agent.challenge.enabled", "yes", "agent.challenge.enabled: expected true or false"),
    ("agent.challenge.ports", [443], "agent.challenge.ports: unknown key"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES,
                         ids=[c[0] + "=" + str(c[1])[:12] for c in CASES])
def test_errors_name_the_file_and_field(path: str, value: object, message: str) -> None:
    doc = copy.deepcopy(_base())
    _mutate(doc, path, value)
    with pytest.raises(ConfigError) as err:
        scenario.parse(doc, "lab.toml")
    assert str(err.value).startswith("lab.toml: "), str(err.value)
    assert message in str(err.value), str(err.value)


def test_http_wave_rules() -> None:
    doc = tomllib.loads((SCENARIOS / "http.toml").read_text())
    doc["waves"][0]["spoof"] = "random"
    with pytest.raises(ConfigError, match=r"waves\[0\]\.spoof: an http wave makes real TCP connections"):
        scenario.parse(doc, "h.toml")
    doc = tomllib.loads((SCENARIOS / "http.toml").read_text())
    doc["waves"][0]["target"] = "198.18.2.0/24"
    with pytest.raises(ConfigError, match=r"waves\[0\]\.target: an http wave targets one origin"):
        scenario.parse(doc, "h.toml")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        scenario.load(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        scenario.load(bad)


def test_duplicate_wave_names() -> None:
    doc = _base()
    doc["waves"].append(dict(doc["waves"][0]))
    with pytest.raises(ConfigError, match=r"waves\[1\]\.name: 'syn' is already the name of another wave"):
        scenario.parse(doc, "d.toml")


def test_the_agents_challenge_the_origins_http_port() -> None:
    """Every shipped scenario challenges the origins' HTTP port on the
    protected prefix, and the tables are what the agent reads."""
    for path in sorted(SCENARIOS.glob("*.toml")):
        s = scenario.load(path)
        (table,) = s.agent["challenge"]
        assert (table["prefix"], table["ports"]) == (str(s.topology.protected), [s.topology.http_port])
        assert table["syn_pps"] <= s.agent["detect"]["syn"]["pps"], path   # armed before detected
        assert table["ack_pps"] <= s.agent["detect"]["ack"]["pps"], path
        cfg = agentconfig.parse({"interfaces": [{"name": "bw0"}], "challenge": s.agent["challenge"]})
        assert [(str(c.prefix), c.port) for c in cfg.challenge] == [(table["prefix"], s.topology.http_port)]


def test_the_challenge_can_be_switched_off_and_defaults_to_the_agents() -> None:
    doc = _base()
    doc["agent"]["challenge"] = {"enabled": False}
    assert scenario.parse(doc).agent["challenge"] == []
    del doc["agent"]["challenge"]
    (table,) = scenario.parse(doc).agent["challenge"]
    assert (table["syn_pps"], table["ack_pps"]) == (chal.DEFAULT_SYN_PPS, chal.DEFAULT_ACK_PPS)
@pytest.mark.parametrize(("fleet", "message"), [
    ({"interval": 0}, "lab.toml: fleet.interval: 0 is out of range"),
    ({"signatures": {"smtp": 10.0}}, "lab.toml: fleet.signatures.smtp: not a signature vector"),
    ({"mitigate": {"rule_tl": 5}}, "lab.toml: fleet.mitigate.rule_tl: unknown key"),
    ({"promote": 2}, "lab.toml: fleet.promote: unknown key"),
])
def test_fleet_table_is_checked_as_the_controller_checks_it(fleet: dict[str, Any], message: str) -> None:
    doc = copy.deepcopy(_base())
    doc["fleet"] = fleet
    with pytest.raises(ConfigError) as err:
        scenario.parse(doc, "lab.toml")
    assert message in str(err.value), str(err.value)


def test_fleet_table_is_kept_for_the_controller() -> None:
    s = scenario.load(SCENARIOS / "x-spaces.toml")
    assert s.fleet["promote_nodes"] == 2 and s.fleet["signatures"] == {"reflection": 2500.0}
    doc = copy.deepcopy(_base())
    doc.pop("fleet", None)
    assert scenario.parse(doc, "lab.toml").fleet == {}


def test_trafgen_sender() -> None:
    s = scenario.load(SCENARIOS / "trafgen.toml")
    assert [w.sender for w in s.waves] == ["trafgen"]
    assert scenario.load(SCENARIOS / "udp.toml").waves[0].sender == "socket"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sender": "scapy"}, "waves[0].sender: \"scapy\" is not one of socket, trafgen"),
        ({"pulse": {"on": 1.0, "off": 1.0}}, "waves[0].sender: trafgen sends at one rate"),
    ]
    for change, message in cases:
        doc = tomllib.loads((SCENARIOS / "trafgen.toml").read_text())
        doc["waves"][0].update(change)
        with pytest.raises(ConfigError) as err:
            scenario.parse(doc, "lab.toml")
        assert message in str(err.value), str(err.value)
    doc = tomllib.loads((SCENARIOS / "http.toml").read_text())
    doc["waves"][0]["sender"] = "trafgen"
    with pytest.raises(ConfigError, match="an http wave makes real TCP connections"):
        scenario.parse(doc, "lab.toml")


def test_trafgen_config_is_the_frames_bytes() -> None:
    from controller.lab import attack

    conf = attack.trafgen_config([b"\x00\x01\xff", b"\x10"])
    assert conf == "{ 0x00, 0x01, 0xff }\n{ 0x10 }\n"
