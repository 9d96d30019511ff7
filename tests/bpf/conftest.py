"""Fixtures for the data-plane tests: the real XDP program, built once.

``bpf_program`` compiles and loads ``bpf/breakwater.c`` with small maps,
pinned in a fresh directory under /sys/fs/bpf, once per session (a build
takes about half a second). ``dp`` hands it to one test with every
policy map, source table, counter and config flag cleared first, so each
table row starts from nothing. Teardown always closes every fd, unlinks
every pin and removes the directory, whatever happened during the build.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import _libbpf as lb
from controller import abi, dataplane, program
from controller.bpfmap import MapSet
from controller.maps import MAP_SPECS, MapSizes
from controller.program import LoadedProgram

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
)

# Maps emptied between tests (everything that holds entries, not arrays).
ENTRY_MAPS = tuple(s.name for s in MAP_SPECS if s.role in ("policy", "counters") and not s.percpu)
# Per-CPU counter arrays zeroed between tests.
COUNTER_ARRAYS = tuple(s.name for s in MAP_SPECS if s.percpu)

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

    def config(self) -> abi.Config:
        return dataplane.read_config(self.maps)

    def reset(self) -> None:
        """Empty every allow/deny/source map, zero the counters, clear the flags."""
        for name in ENTRY_MAPS:
            m = self.maps[name]
            keys = m.keys()
            if keys:
                m.delete_many(keys)
            assert self.maps.is_empty(name), f"{name} still holds entries after reset"
        for name in COUNTER_ARRAYS:
            m = self.maps[name]
            n = m.max_entries
            indexes = b"".join(i.to_bytes(4, "little") for i in range(n))
            zeros = bytes(m.spec.full_value_size() * n)
            done, err = lb.map_update_batch(m.fd, indexes, zeros, n, 0)
            assert (done, err) == (n, 0), f"zeroing {name}: {done}/{n} written, errno {err}"
        cfg = self.config()
        cfg.flags = 0
        dataplane.write_config(self.maps, cfg)


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
