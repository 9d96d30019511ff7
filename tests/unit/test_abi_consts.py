"""bpf/consts.h and bpf/maps.h against their Python mirrors (controller/dataplane/abi.py,
controller/dataplane/maps.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from controller.dataplane import abi, swap
from controller.dataplane.maps import (
    BPF_F_MMAPABLE,
    BPF_F_NO_PREALLOC,
    MAP_SPECS,
    MapSizes,
    MapSpec,
)
from controller.rules.compiler import DEFAULT_MAX_SIGNATURES

from .headers import BPF_DIR, c_int, defines

# consts.h name -> its controller/dataplane/abi.py value.
MIRRORED = {
    "BW_CFG_TRIE_PROTECT_V4": abi.PROTECT_FLAGS["protect_v4"],
    "BW_CFG_TRIE_PROTECT_V6": abi.PROTECT_FLAGS["protect_v6"],
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
    "BW_RULE_ABSENT": abi.RULE_ABSENT,
    "BW_GEN_INF": abi.GEN_INF,
    "BW_SLOTS": abi.SLOTS,
    "BW_MAX_SIGS": abi.MAX_SIGS,
    "BW_SIG_WORDS": abi.SIG_WORDS,
    "BW_SIG_DROP": abi.SIG_DROP,
    "BW_SIG_RATE_LIMIT": abi.SIG_RATE_LIMIT,
    "BW_SIG_ALLOW": abi.SIG_ALLOW,
    "BW_SIG_MONITOR": abi.SIG_MONITOR,
    "BW_SIG_PER_SOURCE": abi.SIG_PER_SOURCE,
    "BW_SIG_SRC_V4": abi.SIG_SRC_V4,
    "BW_SIG_SRC_V6": abi.SIG_SRC_V6,
    "BW_SIG_DST_V4": abi.SIG_DST_V4,
    "BW_SIG_DST_V6": abi.SIG_DST_V6,
    "BW_CFG_TRIE_CHALLENGE_V4": abi.CFG_TRIE_CHALLENGE_V4,
    "BW_CHAL_WINDOW_NS": abi.CHAL_WINDOW_NS,
    "BW_CHAL_WINDOWS_PER_S": abi.CHAL_WINDOWS_PER_S,
    "BW_CHAL_MSS": abi.CHAL_MSS,
    "BW_CHAL_WINDOW": abi.CHAL_WINDOW,
    "BW_CHAL_TTL": abi.CHAL_TTL,
    "BW_FLOW_CLOSING": abi.FLOW_CLOSING,
    "BW_FLOW_CLOSING_NS": abi.FLOW_CLOSING_NS,
}
# consts.h names mirrored elsewhere (BW_ACTION_*: tests/unit/test_reasons.py)
# or used only by the program.
NOT_IN_ABI = {"BW_ND_HOP_LIMIT"}

_BW_MAP = re.compile(
    r'^BW_MAP\(\s*"(?P<type>[a-z_]+)"\s*,\s*(?P<key>[^,]+?)\s*,\s*(?P<value>[^,]+?)\s*,'
    r"\s*(?P<name>\w+)\s*,\s*(?P<size>[^,]+?)\s*,\s*(?P<flags>\w+)\s*\)\s*;",
    re.M,
)
# The four policy tries with a "may hold entries" bit in bw_config.flags; the
# signature tries are flagged per slot in bw_sig_meta.flags instead.
POLICY_TRIES = ("allow_v4", "allow_v6", "deny_pfx_v4", "deny_pfx_v6")
SIG_TRIE_FLAGS = {
    "sig_src_v4": abi.SIG_SRC_V4,
    "sig_src_v6": abi.SIG_SRC_V6,
    "sig_dst_v4": abi.SIG_DST_V4,
    "sig_dst_v6": abi.SIG_DST_V6,
}


@pytest.mark.parametrize(("name", "value"), MIRRORED.items(), ids=list(MIRRORED))
def test_const_matches_abi(name: str, value: int) -> None:
    assert defines("consts.h")[name] == value


def test_every_const_is_mirrored() -> None:
    """A new BW_* constant must get a Python twin (or be listed as C-only here)."""
    names = {n for n in defines("consts.h") if not n.startswith("BW_ACTION_")}
    assert names - NOT_IN_ABI == set(MIRRORED)


def test_trie_flags_name_the_policy_tries() -> None:
    tries = {s.name for s in MAP_SPECS if s.type_name == "lpm_trie"}
    assert set(abi.TRIE_FLAGS) == set(POLICY_TRIES) == set(swap.POLICY_TRIES)
    assert tries == set(POLICY_TRIES) | set(SIG_TRIE_FLAGS) | set(abi.PROTECT_FLAGS) | {"chal_v4"}
    assert len(set(abi.TRIE_FLAGS.values())) == len(abi.TRIE_FLAGS)
    # Disjoint from the run-time switches that share struct bw_config.flags.
    for bit in abi.TRIE_FLAGS.values():
        assert bit & (abi.CFG_MONITOR | abi.CFG_PASS_MALFORMED) == 0


def test_sig_trie_flags_name_the_signature_tries() -> None:
    assert set(SIG_TRIE_FLAGS) == set(swap.SIG_TRIES)
    bits = list(SIG_TRIE_FLAGS.values())
    assert len(set(bits)) == len(bits)
    assert all(b & (b - 1) == 0 for b in bits)


def test_sig_words_hold_max_sigs() -> None:
    consts = defines("consts.h")
    assert consts["BW_SIG_WORDS"] * 64 == consts["BW_MAX_SIGS"] == abi.MAX_SIGS
    assert len(abi.Bits().w) == abi.SIG_WORDS
    assert abi.MAX_SIGS == DEFAULT_MAX_SIGNATURES  # the compiler's limit fits the table


def test_rule_absent_and_gen_inf_are_u32_max() -> None:
    """``bw_deny_entry`` stores them in __u32 fields."""
    assert abi.RULE_ABSENT == abi.GEN_INF == 0xFFFFFFFF
    e = abi.DenyEntry(1, abi.RULE_ABSENT, 5, abi.GEN_INF)
    assert (e.prev_rule_id, e.until) == (abi.RULE_ABSENT, abi.GEN_INF)


@pytest.mark.parametrize(("gen", "seen"), [(4, None), (5, 7), (8, 7), (9, None), (10, None)])
def test_deny_entry_rule_at(gen: int, seen: int | None) -> None:
    """Valid from ``since`` (5) until ``until`` (9); absent before: the
    Python twin of the program's deny_rule_at()."""
    assert abi.DenyEntry(7, abi.RULE_ABSENT, 5, 9).rule_at(gen) == seen


@pytest.mark.parametrize(("gen", "seen"), [(4, 3), (5, 7), (6, 7)])
def test_deny_entry_rule_at_with_a_previous_rule(gen: int, seen: int) -> None:
    assert abi.DenyEntry(7, 3, 5, abi.GEN_INF).rule_at(gen) == seen


def _size_macro(field: str) -> str:
    return f"BW_MAX_{field.upper()}"


def test_map_size_defaults_match_python() -> None:
    header = {k: v for k, v in defines("maps.h").items() if k.startswith("BW_MAX_")}
    sizes = MapSizes()
    assert {_size_macro(f.name): getattr(sizes, f.name) for f in dataclasses.fields(sizes)} == header


def test_cflags_override_every_default() -> None:
    flags = MapSizes().cflags()
    sized = {k for k in defines("maps.h") if k.startswith("BW_MAX_")}
    assert {f.split("=")[0].removeprefix("-D") for f in flags} == sized


def maps_h_maps() -> dict[str, dict[str, str]]:
    text = (BPF_DIR / "maps.h").read_text()
    return {m["name"]: m.groupdict() for m in _BW_MAP.finditer(text)}


def test_every_map_has_a_spec_and_back() -> None:
    assert set(maps_h_maps()) == {s.name for s in MAP_SPECS}


@pytest.mark.parametrize("s", MAP_SPECS, ids=[s.name for s in MAP_SPECS])
def test_map_declaration_matches_spec(s: MapSpec) -> None:
    decl = maps_h_maps()[s.name]
    assert decl["type"] == s.type_name
    mmapable = defines("maps.h")["BW_F_MMAPABLE"]
    assert mmapable == BPF_F_MMAPABLE
    flags = {"0": 0, "BPF_F_NO_PREALLOC": BPF_F_NO_PREALLOC, "BW_F_MMAPABLE": mmapable}[decl["flags"]]
    assert flags == s.flags
    if s.size_field is not None:
        assert decl["size"] == _size_macro(s.size_field)
    else:
        names = {**defines("reasons.h"), **defines("consts.h")}
        assert c_int(decl["size"], names) == s.fixed_entries
    assert s.percpu == decl["type"].startswith("percpu")
