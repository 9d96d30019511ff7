"""The agent's configuration: every invalid key is an exit-2 error naming the
file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

import controller.cli.main as cli
from controller.agent import config as agentconfig
from controller.agent.config import load, parse
from controller.errors import ConfigError

BASE = 'interfaces = ["eth0"]\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = parse({"interfaces": ["eth0"]})
    assert cfg.interval == 1.0
    assert cfg.mode == "enforce"
    assert cfg.detach_on_exit is False
    assert str(cfg.state_dir) == "/var/lib/breakwater"
    assert cfg.metrics == ("127.0.0.1", 9611)
    assert cfg.interfaces[0].mode == "auto" and cfg.interfaces[0].netns is None


def test_full_file(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, """
interfaces = [{ name = "bw0", netns = "edge", mode = "generic" }, "eth1"]
protected = ["198.18.0.0/24", "2001:db8::/64"]
management = ["198.18.1.0/28"]
allowlist = ["198.18.2.1"]
mode = "monitor"
interval = 0.25
detach_on_exit = true
state_dir = "/tmp/bw-state"
pin_root = "/sys/fs/bpf/bw-test"
metrics = "[::1]:9000"
[sizes]
deny_v4 = 4096
[detect]
source_pps = 5000.0
[detect.syn]
pps = 2000
[mitigate]
rule_ttl = 30.0
"""))
    assert [i.name for i in cfg.interfaces] == ["bw0", "eth1"]
    assert cfg.interfaces[0].netns == "edge"
    assert cfg.monitor and cfg.mitigate.monitor
    assert [str(p) for p in cfg.mitigate.allowlist] == ["198.18.2.1"]
    assert cfg.mitigate.management == cfg.management
    assert cfg.metrics == ("::1", 9000)
    assert cfg.sizes.deny_v4 == 4096
    assert cfg.detect.source_pps == 5000.0 and cfg.detect.syn.pps == 2000
    assert cfg.mitigate.rule_ttl == 30.0
    assert cfg.to_dict()["interfaces"][0] == {"name": "bw0", "netns": "edge", "mode": "generic"}


@pytest.mark.parametrize(("text", "path", "what"), [
    ("", "interfaces", "missing"),
    ("interfaces = []", "interfaces", "non-empty"),
    ('interfaces = ["eth0"]\nintervall = 1', "intervall", "did you mean 'interval'"),
    ('interfaces = [{ nam = "x" }]', "interfaces[0].nam", "unknown key"),
    ("interfaces = [{ netns = \"x\" }]", "interfaces[0].name", "missing"),
    ('interfaces = ["this-name-is-too-long"]', "interfaces[0].name", "not a valid interface name"),
    ('interfaces = [{ name = "a", mode = "turbo" }]', "interfaces[0].mode", "auto, native, generic"),
    ('interfaces = ["a", "a"]', "interfaces[1].name", "twice"),
    (BASE + 'protected = ["198.18.0.0/33"]', "protected[0]", ""),
    (BASE + 'protected = "198.18.0.0/24"', "protected", "list of prefixes"),
    (BASE + "management = [1]", "management[0]", "prefix string"),
    (BASE + 'allowlist = ["nope"]', "allowlist[0]", ""),
    (BASE + 'mode = "block"', "mode", "monitor, enforce"),
    (BASE + "interval = 0.01", "interval", "0.1..3600"),
    (BASE + 'interval = "1s"', "interval", "number"),
    (BASE + 'detach_on_exit = "yes"', "detach_on_exit", "true or false"),
    (BASE + 'state_dir = "relative"', "state_dir", "absolute"),
    (BASE + 'pin_root = ""', "pin_root", "non-empty"),
    (BASE + 'metrics = "localhost"', "metrics", "ADDR:PORT"),
    (BASE + 'metrics = "127.0.0.1:99999"', "metrics", "ADDR:PORT"),
    (BASE + "metrics = 9611", "metrics", "ADDR:PORT"),
    (BASE + "[sizes]\ndeny_v4 = 0", "sizes.deny_v4", "out of range"),
    (BASE + "[sizes]\ndeny = 10", "sizes.deny", "unknown map"),
    (BASE + "sizes = 3", "sizes", "table"),
    (BASE + "[detect]\nsource_pps = -1", "detect.source_pps", "out of range"),
    (BASE + "[detect]\nsourc_pps = 1", "detect.sourc_pps", "did you mean 'source_pps'"),
    (BASE + "[detect.syn]\npps = 0", "detect.syn.pps", "out of range"),
    (BASE + "[detect.syn]\nfactor = 2", "detect.syn.pps", "missing"),
    (BASE + "[detect.syn]\nppps = 2", "detect.syn.ppps", "unknown key"),
    (BASE + "detect = 1", "detect", "table"),
    (BASE + "[mitigate]\nrule_ttl = 0", "mitigate.rule_ttl", "out of range"),
    (BASE + "[mitigate]\nrule_tll = 5", "mitigate.rule_tll", "did you mean 'rule_ttl'"),
    (BASE + "[mitigate]\nmonitor = true", "mitigate.monitor", "top-level key 'mode'"),
    (BASE + '[mitigate]\nallowlist = ["198.18.0.1"]', "mitigate.allowlist", "top-level"),
    (BASE + '[mitigate]\nreflection_action = "tarpit"', "mitigate.reflection_action", "rate_limit, drop"),
    (BASE + 'controller = "ctl.example"', "controller", "not HOST:PORT"),
    (BASE + 'controller = "ctl.example:0"', "controller", "port 1..65535"),
    (BASE + 'controller = "2001:db8::5:9610"', "controller", "[2001:db8::5]:9610"),
    (BASE + "controller = 9610", "controller", "expected"),
    (BASE + 'controller = ["a.example:9610", "b.example"]', "controller[1]", "not HOST:PORT"),
    (BASE + 'controller = ["a.example:9610", 9610]', "controller[1]", "expected"),
    (BASE + 'controller = ["a.example:9610", "a.example:9610"]', "controller[1]", "listed twice"),
    (BASE + 'controller = "a.example:9610,"', "controller", "expected"),
    (BASE + 'controller = ["127.0.0.1:9610", "10.0.0.5:9610"]', "controller", "insecure"),
    (BASE + 'node_id = "Edge_01"', "node_id", "not a valid node id"),
    (BASE + 'node_id = ""', "node_id", "not a valid node id"),
    (BASE + 'labels = ["fra1"]', "labels", "table"),
    (BASE + 'labels = { Site = "fra1" }', "labels", "not a valid label key"),
    (BASE + 'labels = { site = "fra 1" }', "labels[site]", "not a valid label value"),
    (BASE + 'api = "localhost"', "api", "ADDR:PORT"),
    (BASE + 'challenge = "443"', "challenge", "[[challenge]] tables"),
    (BASE + "[[challenge]]\nports = [443]", "challenge[0].prefix", "missing"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"', "challenge[0].ports", "missing"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/33"\nports = [443]', "challenge[0].prefix", "198.18.0.0/33"),
    (BASE + '[[challenge]]\nprefix = "2001:db8::/64"\nports = [443]', "challenge[0].prefix", "only IPv4"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = []', "challenge[0].ports", "non-empty"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = [443, 0]', "challenge[0].ports[1]",
     "out of range 1..65535"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = [443, 443]', "challenge[0].ports[1]",
     "challenged twice"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = [443]\nsyn_pps = -1', "challenge[0].syn_pps",
     "out of range"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = [443]\nhold = 0', "challenge[0].hold",
     "out of range"),
    (BASE + '[[challenge]]\nprefix = "198.18.0.0/24"\nports = [443]\nverified_tll = 5',
     "challenge[0].verified_tll", "did you mean 'verified_ttl'"),
    (BASE + '[sizes]\nchallenge = 1\n[[challenge]]\nprefix = "198.18.0.0/24"\nports = [80, 443]',
     "challenge", "raise [sizes] challenge"),
])
def test_invalid_key(tmp_path: Path, text: str, path: str, what: str) -> None:
    file = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(file)
    err = info.value
    assert err.source == str(file)
    assert err.path == path, str(err)
    assert what in err.what, str(err)
    assert str(err).startswith(f"{file}: {path}: ")


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "interfaces = ["))


def test_missing_file_needs_interfaces(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")
    cfg = load(tmp_path / "absent.toml", {"interfaces": [{"name": "eth0"}]})
    assert cfg.interfaces[0].name == "eth0"


def test_overrides_win(tmp_path: Path) -> None:
    file = _write(tmp_path, BASE + "interval = 2\n")
    cfg = load(file, {"interval": 0.5, "mode": "monitor", "metrics": ""})
    assert cfg.interval == 0.5 and cfg.monitor and cfg.metrics is None


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, BASE)
    assert cli.main(["agent", "--config", str(good), "--check-config"]) == 0
    assert '"interval": 1.0' in capsys.readouterr().out
    assert cli.main(["agent", "--config", str(good), "--check-config", "--interval", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "interval: 0.05 is out of range" in err and "Traceback" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + "[detect]\nwindow = 0\n")
    assert cli.main(["agent", "--config", str(bad), "--check-config"]) == 2
    assert f"{bad}: detect.window:" in capsys.readouterr().err


def test_controller_keys(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, BASE + 'controller = "ctl.example:9610"\nnode_id = "edge-fra1-01"\n'
                                      'labels = { site = "fra1", role = "edge" }\napi = "127.0.0.1:19612"\n'
                                      "[tls]\ninsecure = true\n"))
    assert cfg.insecure and cfg.tls is None
    assert cfg.controller == "ctl.example:9610"
    assert (cfg.node_id, cfg.labels) == ("edge-fra1-01", {"role": "edge", "site": "fra1"})
    assert cfg.api == ("127.0.0.1", 19612)
    doc = cfg.to_dict()
    assert (doc["controller"], doc["node_id"], doc["api"]) == (
        "ctl.example:9610", "edge-fra1-01", "127.0.0.1:19612")
    v6 = load(_write(tmp_path, BASE + 'controller = "[2001:db8::5]:9610"\n[tls]\ninsecure = true\n'))
    assert v6.controller == "[2001:db8::5]:9610"
    standalone = parse({"interfaces": ["eth0"]})
    assert standalone.controller is None and standalone.labels == {}
    assert standalone.api == ("127.0.0.1", 9612)
    assert standalone.node_id == agentconfig.default_node_id()
    assert parse({"interfaces": ["eth0"], "api": ""}).api is None


def test_several_controllers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load(_write(tmp_path, BASE + 'controller = ["a.example:9610", "[2001:db8::5]:9610"]\n'
                                      "[tls]\ninsecure = true\n"))
    assert cfg.controllers == ("a.example:9610", "[2001:db8::5]:9610")
    assert cfg.controller == "a.example:9610"  # the first
    assert cfg.to_dict()["controller"] == ["a.example:9610", "[2001:db8::5]:9610"]
    assert load(_write(tmp_path, BASE + 'controller = []\n')).controllers == ()
    good = _write(tmp_path, BASE + "[tls]\ninsecure = true\n")
    assert cli.main(["agent", "--config", str(good), "--check-config", "--controller",
                     "10.0.0.5:9610,10.0.0.6:9610"]) == 0
    assert '"controller": [\n    "10.0.0.5:9610",\n    "10.0.0.6:9610"\n  ]' in capsys.readouterr().out


def test_default_node_id_is_the_host_name_made_valid() -> None:
    assert agentconfig.default_node_id("edge-fra1-01.example.net") == "edge-fra1-01.example.net"
    assert agentconfig.default_node_id("EDGE_01") == "edge_01"
    assert agentconfig.default_node_id("my host+1") == "my-host-1"
    assert agentconfig.default_node_id("-x") == "x"
    assert agentconfig.default_node_id("") == "localhost"


def test_controller_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, BASE + 'labels = { site = "ams1", rack = "r1" }\n[tls]\ninsecure = true\n')
    assert cli.main(["agent", "--config", str(good), "--check-config", "--controller", "10.0.0.5:9610",
                     "--node-id", "edge-9", "--label", "site=fra1", "--label", "role=edge", "--api", ""]) == 0
    out = capsys.readouterr().out
    assert '"controller": "10.0.0.5:9610"' in out and '"node_id": "edge-9"' in out and '"api": ""' in out
    assert '"labels": {\n    "role": "edge",\n    "site": "fra1"\n  }' in out  # replaced, not merged
    assert cli.main(["agent", "--config", str(good), "--check-config", "--label", "site"]) == 2
    assert "--label 'site': expected KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["agent", "--config", str(good), "--check-config", "--node-id", "Bad!"]) == 2
    assert "node_id" in capsys.readouterr().err


def test_challenge_tables(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, BASE + """
[[challenge]]
prefix = "198.18.0.0/24"
ports = [80, 443]
syn_pps = 500
[[challenge]]
prefix = "198.18.1.7"
ports = [22]
ack_pps = 0
hold = 2.5
verified_ttl = 60
"""))
    got = [(str(s.prefix), s.port, s.syn_pps, s.ack_pps, s.hold, s.verified_ttl) for s in cfg.challenge]
    assert got == [("198.18.0.0/24", 80, 500, 5000, 10.0, 300.0),
                   ("198.18.0.0/24", 443, 500, 5000, 10.0, 300.0),
                   ("198.18.1.7", 22, 1000, 0, 2.5, 60.0)]
    assert cfg.to_dict()["challenge"][2] == {"prefix": "198.18.1.7", "port": 22, "syn_pps": 1000,
                                             "ack_pps": 0, "hold": 2.5, "verified_ttl": 60.0}


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "agent.toml"
    cfg = agentconfig.load(example)
    assert cfg.interfaces
