"""controller.dataplane.maps: size validation, the memory formula, the 512 MiB budget."""

from __future__ import annotations

import ctypes
import dataclasses

import pytest

from controller.dataplane import abi
from controller.dataplane.maps import (
    BPF_F_MMAPABLE,
    HTAB_BUCKET_BYTES,
    HTAB_ELEM_OVERHEAD,
    LPM_NODE_OVERHEAD,
    MAP_SPECS,
    MAX_MAP_ENTRIES,
    MapSizes,
    estimate_bytes,
    spec,
    total_estimate,
)
from controller.errors import InputError

MiB = 1 << 20
FIELDS = [f.name for f in dataclasses.fields(MapSizes)]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [0, -1, MAX_MAP_ENTRIES + 1])
def test_out_of_range_names_the_field(field: str, bad: int) -> None:
    want = rf"^map size {field}: {bad} is out of range 1\.\.{MAX_MAP_ENTRIES}$"
    with pytest.raises(InputError, match=want):
        MapSizes(**{field: bad})


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [True, 1.5, "1024", None])
def test_non_integer_names_the_field(field: str, bad: object) -> None:
    with pytest.raises(InputError, match=rf"^map size {field}: must be an integer, got {bad!r}"):
        MapSizes(**{field: bad})  # type: ignore[arg-type]


def test_bounds_are_accepted() -> None:
    assert MapSizes(deny_v4=1).deny_v4 == 1
    assert MapSizes(src_v6=MAX_MAP_ENTRIES).src_v6 == MAX_MAP_ENTRIES


def test_from_dict() -> None:
    assert MapSizes.from_dict({"deny_v4": 4096}) == MapSizes(deny_v4=4096)
    with pytest.raises(InputError, match=r"map size 'deny_v5': unknown map; known: allow_v4, "):
        MapSizes.from_dict({"deny_v5": 1})
    data: dict[str, object] = dict(MapSizes().as_dict())
    assert MapSizes.from_dict(data) == MapSizes()


def test_cflags() -> None:
    flags = MapSizes(rules=128).cflags()
    assert "-DBW_MAX_RULES=128" in flags
    assert "-DBW_MAX_DENY_V4=1048576" in flags
    assert len(flags) == len(FIELDS)


def test_every_sized_map_names_a_size_field() -> None:
    for s in MAP_SPECS:
        assert (s.size_field in FIELDS) if s.size_field else s.fixed_entries > 0, s.name


def _r8(n: int) -> int:
    return (n + 7) // 8 * 8


def test_estimate_hash() -> None:
    s = spec("deny_v4")  # 4-byte key, 32-byte struct bw_deny_entry
    assert s.value_size == ctypes.sizeof(abi.DenyEntry) == 32
    # entries x (48 + key + value, 8-aligned) + 16 per power-of-two bucket.
    assert estimate_bytes(s, 1000) == 1000 * (HTAB_ELEM_OVERHEAD + 8 + 32) + HTAB_BUCKET_BYTES * 1024
    assert estimate_bytes(s, 1024) == 1024 * (48 + 8 + 32) + 16 * 1024


def test_estimate_lru() -> None:
    s = spec("src_v6")  # 16-byte key, 88-byte value (9 counters + last destination)
    assert estimate_bytes(s, 3) == 3 * (48 + 16 + 88) + 16 * 4


def test_estimate_rl_src() -> None:
    s = spec("rl_src")  # 24-byte struct bw_rl_key, 16-byte struct bw_rl_state
    assert (s.key_size, s.value_size) == (24, 16)
    assert estimate_bytes(s, 5) == 5 * (48 + 24 + 16) + 16 * 8


def test_estimate_percpu_array() -> None:
    s = spec("rule_stats")  # struct bw_rule_counter: packets, bytes, dropped, rate_limited
    assert estimate_bytes(s, 100, cpus=64) == 100 * ctypes.sizeof(abi.RuleCounter) * 64
    assert estimate_bytes(s, 100, cpus=1) == 3200
    assert estimate_bytes(spec("reason_stats"), 100, cpus=1) == 100 * ctypes.sizeof(abi.Counter)


def test_estimate_array() -> None:
    assert estimate_bytes(spec("config"), 1) == _r8(ctypes.sizeof(abi.Config))
    # Both slots of the signature table, fixed size whatever MapSizes says.
    sigs = spec("sigs")
    assert sigs.entries(MapSizes(rules=1)) == abi.SLOTS * abi.MAX_SIGS
    assert estimate_bytes(sigs, sigs.entries(MapSizes())) == abi.SLOTS * abi.MAX_SIGS * 48
    ports = spec("sig_dport")
    assert estimate_bytes(ports, ports.entries(MapSizes())) == abi.SLOTS * 65536 * 8 * abi.SIG_WORDS


def test_mmapable_maps_are_the_idle_slot_arrays() -> None:
    """swap writes these through mmap: arrays with 8-byte-multiple values."""
    mmapable = {s.name for s in MAP_SPECS if s.flags & BPF_F_MMAPABLE}
    assert mmapable == {"sigs", "sig_proto", "sig_sport", "sig_dport", "sig_tcpflags", "sig_len"}
    for name in mmapable:
        s = spec(name)
        assert s.type_name == "array" and s.value_size % 8 == 0, name


def test_estimate_lpm_trie() -> None:
    # entries x (40 + key data + value); the data after prefixlen is the slot
    # byte, the address and the padding: 8 bytes for IPv4, 20 for IPv6.
    assert estimate_bytes(spec("deny_pfx_v4"), 10) == 10 * (LPM_NODE_OVERHEAD + 8 + 8)
    assert estimate_bytes(spec("allow_v6"), 10) == 10 * (LPM_NODE_OVERHEAD + 20 + 8)
    assert estimate_bytes(spec("sig_src_v4"), 10) == 10 * (LPM_NODE_OVERHEAD + 8 + 8 * abi.SIG_WORDS)


def test_total_is_the_sum() -> None:
    sizes = MapSizes(deny_v4=10, rules=20)
    assert total_estimate(sizes, cpus=8) == sum(
        estimate_bytes(s, s.entries(sizes), 8) for s in MAP_SPECS)


def test_defaults_fit_the_budget_on_64_cpus() -> None:
    assert total_estimate(MapSizes(), cpus=64) < 512 * MiB


def test_estimate_grows_with_cpus() -> None:
    assert total_estimate(MapSizes(), cpus=128) > total_estimate(MapSizes(), cpus=64)
