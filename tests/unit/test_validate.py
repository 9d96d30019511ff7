"""controller.validate and controller.config: one wording for each kind of
mistake, the path of the field in every error, and the file in every
configuration error."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import checked, parse_listen, read_toml
from controller.errors import ConfigError, FieldError, InputError
from controller.validate import at, check_int, check_keys, check_number, join, show, suggest


def test_join_and_at() -> None:
    assert join("a", "b") == "a.b" and join("a", "[0]") == "a[0]" and join("", "b") == "b"
    assert join("a", "") == "a"
    with pytest.raises(FieldError) as info, at("rules[2]"), at("match"):
        raise FieldError("dport", "70000 is out of range 0..65535")
    assert info.value.path == "rules[2].match.dport"
    assert str(info.value) == "rules[2].match.dport: 70000 is out of range 0..65535"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: check_int("3", "n", 0, 5), 'n: expected an integer, got "3"'),
    (lambda: check_int(True, "n", 0, 5), "n: expected an integer, got true"),
    (lambda: check_int(9, "n", 0, 5), "n: 9 is out of range 0..5"),
    (lambda: check_number(float("nan"), "x", 0, 1), "x: expected a number, got NaN"),
    (lambda: check_number(2.5, "x", 0, 1), "x: 2.5 is out of range 0..1"),
    (lambda: check_number(0, "x", 0, 1, above=True), "x: 0 is out of range; must be above 0 and at most 1"),
    (lambda: check_keys({"dprot": 1}, ("dport", "sport"), "match"),
     "match.dprot: unknown key (did you mean 'dport'?); known: dport, sport"),
    (lambda: check_keys({"zzz": 1}, ("b", "a")), "zzz: unknown key; known: a, b"),
    (lambda: check_keys({"pps": 1}, ("match",), "rules[0]", elsewhere={"pps": "action"}),
     "rules[0].pps: unknown key ('pps' belongs in action); known: match"),
    (lambda: check_keys({"ppps": 1}, ("match",), elsewhere={"pps": "action"}),
     "ppps: unknown key (did you mean 'pps' in action?); known: match"),
    # found by fuzzing (tests/unit/test_fuzz_config.py): an empty key made a path of nothing
    (lambda: check_keys({"": 1}, ("a",)), '"": unknown key; known: a'),
    (lambda: check_keys({"a.b": 1}, ("a",), "detect"), 'detect."a.b": unknown key; known: a'),
    (lambda: check_keys({"\x1b[2J": 1}, ("a",)), '"\\u001b[2J": unknown key; known: a'),
])
def test_one_wording(call: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        call()  # type: ignore[operator]
    assert str(info.value) == message


def test_values_pass_through() -> None:
    assert check_int(5, "n", 0, 5) == 5 and check_number(1, "x", 0, 1) == 1.0
    assert isinstance(check_number(1, "x", 0, 1), float)
    check_keys({"a": 1}, ("a",))
    assert show({"a": 1}) == "a table" and show([1]) == "an array" and show("x") == '"x"'
    assert suggest("fleet", ["fleets", "nodes"]) == " (did you mean 'fleets'?)" and suggest("q", ["a"]) == ""


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    assert read_toml(tmp_path / "absent.toml") is None
    bad = tmp_path / "bad.toml"
    bad.write_text("a = ")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError) as info, checked("agent.toml", "detect"):
        check_int(0, "start_intervals", 1, 10)
    assert info.value.path == "detect.start_intervals" and info.value.source == "agent.toml"
    assert str(info.value) == "agent.toml: detect.start_intervals: 0 is out of range 1..10"
    with pytest.raises(ConfigError, match=r"^agent\.toml: api: bad$"), checked("agent.toml", "api"):
        raise InputError("bad")


@pytest.mark.parametrize(("value", "out"), [("127.0.0.1:9611", ("127.0.0.1", 9611)),
                                            ("[::1]:9611", ("::1", 9611)), ("", None)])
def test_parse_listen(value: str, out: object) -> None:
    assert parse_listen(value, "metrics", "127.0.0.1:9611") == out


@pytest.mark.parametrize("value", ["9611", "host:", "h:70000", 9611])
def test_parse_listen_refuses(value: object) -> None:
    with pytest.raises(FieldError, match=r"^metrics: "):
        parse_listen(value, "metrics", "127.0.0.1:9611")


def test_toml_writer_round_trips() -> None:
    import tomllib

    from controller.config import toml_document, toml_value

    doc = {"a": 1, "b": 0.25, "c": 'x"y\n\x01', "d": [1, "two"], "e": {"f": True, "g h": "z"},
           "t": {"sub": {"k": 1e-3, "empty": {}}}}
    assert tomllib.loads(toml_document(doc)) == doc
    assert toml_value({"weird key": [False]}) == '{ "weird key" = [false] }'
    for bad in (float("nan"), object()):
        with pytest.raises(TypeError):
            toml_value(bad)
