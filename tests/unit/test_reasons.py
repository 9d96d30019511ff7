"""bpf/reasons.h, controller/dataplane/reasons.py and proto/breakwater/v1/reasons.proto
must agree code for code (STYLE.md: "Reason codes never move")."""

from __future__ import annotations

import re

import pytest

from breakwater.v1 import reasons_pb2
from controller.dataplane import reasons
from controller.dataplane.reasons import Action, Reason

from .headers import PROTO_DIR, defines

PROTO = PROTO_DIR / "breakwater" / "v1" / "reasons.proto"
_PROTO_VALUE = re.compile(r"^\s*(DROP_REASON_[A-Z0-9_]+)\s*=\s*(\d+)\s*;", re.M)
_PROTO_ENUM = re.compile(r"enum\s+DropReason\s*\{(?P<body>[^}]*)\}", re.S)


def header_reasons() -> dict[str, int]:
    """reasons.h codes by Python name: BW_REASON_UNSPECIFIED -> UNSPECIFIED,
    BW_PASS_DEFAULT -> PASS_DEFAULT; BW_REASON_MAX is a bound, not a code."""
    out = {}
    for name, value in defines("reasons.h").items():
        if name == "BW_REASON_MAX":
            continue
        short = name.removeprefix("BW_REASON_") if name.startswith("BW_REASON_") else name
        out[short.removeprefix("BW_")] = value
    return out


def proto_text() -> str:
    return PROTO.read_text()


def proto_reasons() -> dict[str, int]:
    """DropReason values by Python name: DROP_REASON_PASS_DEFAULT -> PASS_DEFAULT."""
    m = _PROTO_ENUM.search(proto_text())
    assert m, f"{PROTO}: no enum DropReason"
    return {name.removeprefix("DROP_REASON_"): int(v) for name, v in _PROTO_VALUE.findall(m["body"])}


def python_reasons() -> dict[str, int]:
    return {r.name: r.value for r in Reason}


def test_header_has_codes() -> None:
    assert len(header_reasons()) >= 10


def test_python_matches_header() -> None:
    assert python_reasons() == header_reasons()


def test_proto_matches_header() -> None:
    assert proto_reasons() == header_reasons()


def test_generated_enum_matches_python() -> None:
    """The generated DropReason (what the API sends) agrees with Reason too,
    value for value; test_proto_current.py keeps it in step with the .proto."""
    generated = {name.removeprefix("DROP_REASON_"): value
                 for name, value in reasons_pb2.DropReason.items()}
    assert generated == python_reasons()
    for reason in Reason:
        assert reasons_pb2.DropReason.Name(reasons_pb2.DropReason.ValueType(reason.value)) == (
            f"DROP_REASON_{reason.name}")


def test_proto_values_unique_and_unspecified_first() -> None:
    values = list(proto_reasons().values())
    assert len(values) == len(set(values))
    assert proto_reasons()["UNSPECIFIED"] == 0


def test_proto_package_and_syntax() -> None:
    text = proto_text()
    assert re.search(r'^syntax\s*=\s*"proto3"\s*;', text, re.M)
    assert re.search(r"^package\s+breakwater\.v1\s*;", text, re.M)


def test_every_proto_value_is_commented() -> None:
    lines = proto_text().splitlines()
    for i, line in enumerate(lines):
        if _PROTO_VALUE.match(line):
            assert lines[i - 1].strip().startswith("//"), f"{PROTO.name}:{i + 1} has no comment"


def test_proto_header_names_the_mirrors() -> None:
    head = proto_text().split("syntax", 1)[0]
    for mirror in ("bpf/reasons.h", "controller/dataplane/reasons.py", "tests/unit/test_reasons.py"):
        assert mirror in head


def test_reason_max() -> None:
    assert defines("reasons.h")["BW_REASON_MAX"] == reasons.REASON_MAX
    assert max(Reason) < reasons.REASON_MAX


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_codes_sit_in_their_range(reason: Reason) -> None:
    """1-31 pass, 32-63 drop by policy, 64-127 malformed (reasons.h)."""
    if reason == Reason.UNSPECIFIED:
        assert reason.value == 0
    elif reason.name.startswith("PASS_"):
        assert 1 <= reason.value <= 31
        assert not reason.is_drop and not reason.is_malformed
    elif reason.name.startswith("DROP_"):
        assert 32 <= reason.value <= 63
        assert reason.is_drop and not reason.is_malformed
    else:
        assert reason.name.startswith("MALFORMED_")
        assert 64 <= reason.value <= 127
        assert reason.is_malformed and not reason.is_drop
    assert reason.label == reason.name.lower()


def test_actions_match_header() -> None:
    consts = defines("consts.h")
    header = {k.removeprefix("BW_ACTION_"): v for k, v in consts.items()
              if k.startswith("BW_ACTION_") and k != "BW_ACTION_MAX"}
    assert {a.name: a.value for a in Action} == header
    assert consts["BW_ACTION_MAX"] == reasons.ACTION_MAX == len(Action)
