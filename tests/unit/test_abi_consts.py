"""bpf/consts.h and bpf/maps.h against their Python mirrors (controller/abi.py,
controller/maps.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from controller import abi
from controller.maps import BPF_F_NO_PREALLOC, MAP_SPECS, MapSizes, MapSpec

from .headers import BPF_DIR, defines

# consts.h name -> its controller/abi.py value.
MIRRORED = {
    "BW_ABI_VERSION": abi.ABI_VERSION,
    "BW_CFG_MONITOR": abi.CFG_MONITOR,
    "BW_CFG_PASS_MALFORMED": abi.CFG_PASS_MALFORMED,
    "BW_CFG_TRIE_ALLOW_V4": abi.TRIE_FLAGS["allow_v4"],
    "BW_CFG_TRIE_ALLOW_V6": abi.TRIE_FLAGS["allow_v6"],
    "BW_CFG_TRIE_DENY_PFX_V4": abi.TRIE_FLAGS["deny_pfx_v4"],
    "BW_CFG_TRIE_DENY_PFX_V6": abi.TRIE_FLAGS["deny_pfx_v6"],
    "BW_ALLOW_MGMT": abi.ALLOW_MGMT,
    "BW_MAX_VLAN_TAGS": abi.MAX_VLAN_TAGS,
    "BW_MAX_IPV6_EXT": abi.MAX_IPV6_EXT,
}
# consts.h names mirrored elsewhere (BW_ACTION_*: tests/unit/test_reasons.py)
# or used only by the program.
NOT_IN_ABI = {"BW_ND_HOP_LIMIT"}

_BW_MAP = re.compile(
    r'^BW_MAP\(\s*"(?P<type>[a-z_]+)"\s*,\s*(?P<key>[^,]+?)\s*,\s*(?P<value>[^,]+?)\s*,'
    r"\s*(?P<name>\w+)\s*,\s*(?P<size>\w+)\s*,\s*(?P<flags>\w+)\s*\)\s*;",
    re.M,
)


@pytest.mark.parametrize(("name", "value"), MIRRORED.items(), ids=list(MIRRORED))
def test_const_matches_abi(name: str, value: int) -> None:
    assert defines("consts.h")[name] == value


def test_every_const_is_mirrored() -> None:
    """A new BW_* constant must get a Python twin (or be listed as C-only here)."""
    names = {n for n in defines("consts.h") if not n.startswith("BW_ACTION_")}
    assert names - NOT_IN_ABI == set(MIRRORED)


def test_trie_flags_name_tries() -> None:
    tries = {s.name for s in MAP_SPECS if s.type_name == "lpm_trie"}
    assert set(abi.TRIE_FLAGS) == tries
    assert len(set(abi.TRIE_FLAGS.values())) == len(abi.TRIE_FLAGS)
    # Disjoint from the run-time switches that share struct bw_config.flags.
    for bit in abi.TRIE_FLAGS.values():
        assert bit & (abi.CFG_MONITOR | abi.CFG_PASS_MALFORMED) == 0


def _size_macro(field: str) -> str:
    return f"BW_MAX_{field.upper()}"


def test_map_size_defaults_match_python() -> None:
    header = defines("maps.h")
    sizes = MapSizes()
    assert {_size_macro(f.name): getattr(sizes, f.name) for f in dataclasses.fields(sizes)} == header


def test_cflags_override_every_default() -> None:
    flags = MapSizes().cflags()
    assert {f.split("=")[0].removeprefix("-D") for f in flags} == set(defines("maps.h"))


def maps_h_maps() -> dict[str, dict[str, str]]:
    text = (BPF_DIR / "maps.h").read_text()
    return {m["name"]: m.groupdict() for m in _BW_MAP.finditer(text)}


def test_every_map_has_a_spec_and_back() -> None:
    assert set(maps_h_maps()) == {s.name for s in MAP_SPECS}


@pytest.mark.parametrize("s", MAP_SPECS, ids=[s.name for s in MAP_SPECS])
def test_map_declaration_matches_spec(s: MapSpec) -> None:
    decl = maps_h_maps()[s.name]
    assert decl["type"] == s.type_name
    flags = {"0": 0, "BPF_F_NO_PREALLOC": BPF_F_NO_PREALLOC}[decl["flags"]]
    assert flags == s.flags
    if s.size_field is not None:
        assert decl["size"] == _size_macro(s.size_field)
    else:
        fixed = {"1": 1, **defines("reasons.h"), **defines("consts.h")}
        assert fixed[decl["size"]] == s.fixed_entries
    assert s.percpu == decl["type"].startswith("percpu")
