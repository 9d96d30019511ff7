"""Fixtures for the data-plane tests: the real XDP program, built once.

``bpf_program`` compiles and loads ``bpf/breakwater.c`` with small maps,
pinned in a fresh directory under /sys/fs/bpf, once per session. ``dp``
hands it to one test with every policy map, source table, token bucket,
counter, signature table (both slots) and the config word (flags and
generation) cleared first, so each table row starts from nothing.
``tiny_program``/``tiny`` do the same for a build whose every map holds 64
entries, for the tests that fill one. Teardown always closes every fd,
unlinks every pin and removes the directory, whatever happened during the
build.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.addresses import Prefix
from controller.dataplane import abi
from controller.dataplane import attach as dataplane
from controller.dataplane import build as program
from controller.dataplane import libbpf as lb
from controller.dataplane.build import LoadedProgram
from controller.dataplane.maps import BPF_F_MMAPABLE, MAP_SPECS, MapSizes
from controller.dataplane.pinned import MapSet

LOGGER = logging.getLogger("breakwater.tests.bpf")

BPFFS = Path("/sys/fs/bpf")

# Small maps keep the build and every reset fast. The deny maps hold 8192 so
# that a 5000-entry batch (past the 1024-key `contains` threshold) fits.
TEST_SIZES = MapSizes(
    deny_v4=8192,
    deny_v6=8192,
    deny_pfx_v4=8192,
    deny_pfx_v6=8192,
    allow_v4=4096,
    allow_v6=4096,
    src_v4=4096,
    src_v6=4096,
    rules=4096,
    sig_prefixes=1024,
    rl_src=4096,
)

ARRAY_TYPES = ("array", "percpu_array")
# Maps emptied between tests: everything that holds entries (hashes, LRUs,
# tries: allow/deny, sources, per-source buckets, signature prefixes, the
# challenge's services, meters, verified sources and flows).
ENTRY_MAPS = tuple(s.name for s in MAP_SPECS
                   if (s.role in ("policy", "counters") or s.name == "chal_v4")
                   and s.type_name not in ARRAY_TYPES)
# Arrays zeroed between tests (their elements cannot be deleted): per-CPU
# counters, aggregate buckets, the signature table of both slots.
ZEROED_ARRAYS = tuple(s.name for s in MAP_SPECS if s.name != "config" and s.type_name in ARRAY_TYPES)

XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2


@dataclass
class DataPlane:
    """A loaded program and its pinned maps."""

    loaded: LoadedProgram
    maps: MapSet
    pin_dir: Path
    sizes: MapSizes

    @property
    def prog_fd(self) -> int:
        return self.loaded.fd

    def run(self, packet: bytes) -> int:
        """One BPF_PROG_TEST_RUN; the XDP action the program returned."""
        return lb.prog_test_run(self.prog_fd, packet).retval

    def run_many(self, packet: bytes, repeat: int) -> lb.TestRun:
        """One BPF_PROG_TEST_RUN of ``repeat`` runs of ``packet``."""
        return lb.prog_test_run(self.prog_fd, packet, repeat)

    def config(self) -> abi.Config:
        return dataplane.read_config(self.maps)

    def reset(self) -> None:
        """Empty every entry map, zero every array (counters, buckets, both
        signature slots: sig_meta counts back to 0), and clear the config
        word's flags and generation."""
        for name in ENTRY_MAPS:
            m = self.maps[name]
            keys = m.keys()
            if keys:
                m.delete_many(keys)
            assert self.maps.is_empty(name), f"{name} still holds entries after reset"
        for name in ZEROED_ARRAYS:
            _zero_array(self.maps, name)
        cfg = self.config()
        cfg.flags = 0
        cfg.gen = 0
        dataplane.write_config(self.maps, cfg)
        assert [self.sig_meta(s).count for s in range(abi.SLOTS)] == [0] * abi.SLOTS

    def sig_meta(self, slot: int) -> abi.SigMeta:
        raw = self.maps["sig_meta"].lookup(slot.to_bytes(4, "little"))
        assert raw is not None
        return abi.SigMeta.from_buffer_copy(raw)


def lpm_key(trie: str, slot: int, prefix: Prefix) -> bytes:
    """Key of ``prefix`` in slot ``slot`` of an LPM trie (slot byte first,
    counted in prefixlen), built from the abi twin, not from controller.dataplane.swap."""
    key: abi.LpmV4 | abi.LpmV6 = abi.LpmV4() if trie.endswith("v4") else abi.LpmV6()
    key.prefixlen = 8 + prefix.network.prefixlen
    key.slot = slot
    key.addr[:] = list(prefix.network.network_address.packed)
    return bytes(key)


def _zero_array(maps: MapSet, name: str) -> None:
    """Every element of an array map zeroed: through mmap where the map
    allows it (4 MiB of port bitmaps at memcpy speed), else one batch update."""
    m = maps[name]
    n = m.max_entries
    if m.spec.flags & BPF_F_MMAPABLE:
        m.write_mmap(0, _zeros(m.spec.value_size * n))
        return
    indexes = b"".join(i.to_bytes(4, "little") for i in range(n))
    done, err = lb.map_update_batch(m.fd, indexes, _zeros(m.spec.full_value_size() * n), n, 0)
    assert (done, err) == (n, 0), f"zeroing {name}: {done}/{n} written, errno {err}"


@functools.cache
def _zeros(n: int) -> bytes:
    return bytes(n)


def _remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    for pin in pin_dir.iterdir():
        try:
            pin.unlink()
        except OSError as exc:
            LOGGER.error("cannot unlink test pin %s: %s", pin, exc)
    try:
        pin_dir.rmdir()
    except OSError as exc:
        LOGGER.error("cannot remove test pin dir %s: %s", pin_dir, exc)


@contextlib.contextmanager
def built_program(sizes: MapSizes, tag: str = "test") -> Iterator[DataPlane]:
    """Build and load the program with ``sizes`` in its own pin directory.

    Cleans up completely on exit, including when the build itself fails.
    """
    pin_dir = BPFFS / f"bw-{tag}-{uuid.uuid4().hex[:12]}"
    pin_dir.mkdir()
    loaded: LoadedProgram | None = None
    maps: MapSet | None = None
    try:
        loaded = program.load(program.Build.make(sizes, pin_dir))
        maps = MapSet.open(pin_dir, sizes)
        yield DataPlane(loaded, maps, pin_dir, sizes)
    finally:
        if maps is not None:
            maps.close()
        if loaded is not None:
            loaded.close()
        _remove_pins(pin_dir)


@pytest.fixture(scope="session")
def bpf_program() -> Iterator[DataPlane]:
    """The program, built once per session with :data:`TEST_SIZES`."""
    with built_program(TEST_SIZES) as prog:
        yield prog


@pytest.fixture
def dp(bpf_program: DataPlane) -> DataPlane:
    """The session program with every map and flag reset: a clean start."""
    bpf_program.reset()
    return bpf_program


# Every map tiny, so filling one takes 64 entries.
TINY = 64
TINY_SIZES = MapSizes(**{name: TINY for name in MapSizes().as_dict()})


@pytest.fixture(scope="session")
def tiny_program() -> Iterator[DataPlane]:
    """A second program, every map 64 entries, in its own pin directory."""
    with built_program(TINY_SIZES, "test-tiny") as prog:
        yield prog


@pytest.fixture
def tiny(tiny_program: DataPlane) -> DataPlane:
    tiny_program.reset()
    return tiny_program
