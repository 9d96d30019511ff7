"""The ctypes twins in controller/dataplane/abi.py against what bcc compiled, and each
pinned map against its MapSpec as the kernel reports it."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from controller.dataplane import abi
from controller.dataplane import libbpf as lb
from controller.dataplane.build import ENTRY
from controller.dataplane.maps import MAP_SPECS, MapSpec

from .conftest import TEST_SIZES, DataPlane

pytestmark = pytest.mark.bpf

BPF_PROG_TYPE_XDP = 6
BPF_OBJ_NAME_LEN = 16

SPEC_IDS = [s.name for s in MAP_SPECS]


def _table(prog: DataPlane, s: MapSpec) -> Any:
    return prog.loaded.bpf[s.name.encode()]


def _leaf(table: Any) -> Any:
    """bcc's value type; per-CPU tables keep the single-CPU type as ``sLeaf``."""
    return getattr(table, "sLeaf", table.Leaf)


def _layout(t: Any) -> list[tuple[str, int, int]]:
    """(field name, offset, size) of a ctypes structure."""
    return [(name, getattr(t, name).offset, getattr(t, name).size) for name, *_ in t._fields_]


@pytest.mark.parametrize("s", MAP_SPECS, ids=SPEC_IDS)
def test_key_and_value_sizes_match_bcc(bpf_program: DataPlane, s: MapSpec) -> None:
    table = _table(bpf_program, s)
    assert ctypes.sizeof(table.Key) == ctypes.sizeof(s.key), f"{s.name} key"
    assert ctypes.sizeof(_leaf(table)) == ctypes.sizeof(s.value), f"{s.name} value"


@pytest.mark.parametrize("s", MAP_SPECS, ids=SPEC_IDS)
def test_struct_layouts_match_bcc(bpf_program: DataPlane, s: MapSpec) -> None:
    """Field by field, for every struct twin (scalar keys are covered by size)."""
    table = _table(bpf_program, s)
    for ours, theirs in ((s.key, table.Key), (s.value, _leaf(table))):
        if issubclass(ours, ctypes.Structure):
            assert issubclass(theirs, ctypes.Structure), f"{s.name}: bcc type {theirs} is no struct"
            assert _layout(ours) == _layout(theirs), f"{s.name}: {ours.__name__}"


@pytest.mark.parametrize(
    ("ours", "c_name"),
    [
        (abi.Config, "bw_config"),
        (abi.In6, "bw_in6"),
        (abi.LpmV4, "bw_lpm_v4"),
        (abi.LpmV6, "bw_lpm_v6"),
        (abi.RuleRef, "bw_rule_ref"),
        (abi.DenyEntry, "bw_deny_entry"),
        (abi.SrcCounters, "bw_src_counters"),
        (abi.Counter, "bw_counter"),
        (abi.RuleCounter, "bw_rule_counter"),
        (abi.Bits, "bw_bits"),
        (abi.Sig, "bw_sig"),
        (abi.SigMeta, "bw_sig_meta"),
        (abi.RlKey, "bw_rl_key"),
        (abi.RlState, "bw_rl_state"),
        (abi.ChalLpmV4, "bw_chal_lpm_v4"),
        (abi.ChalService, "bw_chal_service"),
        (abi.ChalDstV4, "bw_chal_dst_v4"),
        (abi.ChalMeter, "bw_chal_meter"),
        (abi.FlowV4, "bw_flow_v4"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_every_struct_twin_is_used_by_a_map(bpf_program: DataPlane, ours: type, c_name: str) -> None:
    """Each ctypes twin names a struct bcc built for some map, with the same size."""
    seen = {}
    for s in MAP_SPECS:
        table = _table(bpf_program, s)
        for t in (table.Key, _leaf(table)):
            seen[t.__name__] = ctypes.sizeof(t)
    assert c_name in seen, f"bcc built no map with struct {c_name}"
    assert seen[c_name] == ctypes.sizeof(ours)


def test_numpy_dtypes_match_ctypes() -> None:
    assert abi.SRC_COUNTERS_DTYPE.itemsize == ctypes.sizeof(abi.SrcCounters)
    assert abi.COUNTER_DTYPE.itemsize == ctypes.sizeof(abi.Counter)
    for dtype, twin in ((abi.RULE_COUNTER_DTYPE, abi.RuleCounter), (abi.DENY_DTYPE, abi.DenyEntry)):
        assert dtype.itemsize == ctypes.sizeof(twin)
        names = tuple(f[0] for f in twin._fields_)
        assert dtype.names == names
        fields = dtype.fields
        assert fields is not None
        assert [fields[n][1] for n in names] == [getattr(twin, n).offset for n in names]
    assert abi.SRC_COUNTERS_DTYPE.names == (*abi.SRC_COUNTER_FIELDS, "last_dst")
    assert tuple(f[0] for f in abi.SrcCounters._fields_) == (*abi.SRC_COUNTER_FIELDS, "last_dst")
    assert abi.DST_COUNTERS_DTYPE.itemsize == ctypes.sizeof(abi.DstCounters)
    assert abi.DST_COUNTERS_DTYPE.names == abi.DST_COUNTER_FIELDS


@pytest.mark.parametrize("s", MAP_SPECS, ids=SPEC_IDS)
def test_pinned_map_matches_spec(bpf_program: DataPlane, s: MapSpec) -> None:
    m = bpf_program.maps[s.name]
    info = lb.map_info(m.fd)
    assert m.path == bpf_program.pin_dir / s.name
    assert (info.type, info.type_name) == (s.type_id, s.type_name)
    assert info.key_size == s.key_size
    assert info.value_size == s.value_size  # per-CPU maps: the size of one CPU's value
    assert info.max_entries == s.entries(TEST_SIZES)
    assert info.flags == s.flags
    assert info.name == s.name[: BPF_OBJ_NAME_LEN - 1]


def test_pin_dir_holds_exactly_the_specified_maps(bpf_program: DataPlane) -> None:
    assert sorted(p.name for p in bpf_program.pin_dir.iterdir()) == sorted(SPEC_IDS)


def test_program_is_xdp(bpf_program: DataPlane) -> None:
    info = lb.prog_info(bpf_program.prog_fd)
    assert info.type == BPF_PROG_TYPE_XDP
    assert info.name == ENTRY[: BPF_OBJ_NAME_LEN - 1]


def test_percpu_value_stride(bpf_program: DataPlane) -> None:
    """A per-CPU lookup returns one 8-byte-aligned value per possible CPU."""
    m = bpf_program.maps["reason_stats"]
    raw = m.lookup(bytes(4))
    assert raw is not None
    assert len(raw) == m.spec.full_value_size() == ctypes.sizeof(abi.Counter) * lb.possible_cpus()
