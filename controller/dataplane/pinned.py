"""Pinned BPF maps: open, check, read and write in batches.

The one adapter between Breakwater and its maps in the kernel. Each write
validates its input, reports the kernel's errno in a clear error and counts
failures per map and operation (:data:`FAILURES`, exported as metrics).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import (
    BreakwaterError,
    MapFullError,
    MapOperationError,
    PinnedMapMismatchError,
    from_os_error,
)
from . import abi
from . import libbpf as lb
from .maps import MAP_SPECS, MapSizes, MapSpec

__all__ = ["FAILURES", "MapSet", "PinnedMap", "ReadBuffers", "layout_mismatches"]

LOGGER = logging.getLogger("breakwater.bpfmap")

FAILURES: collections.Counter[tuple[str, str]] = collections.Counter()
"""Failed map operations by (map name, operation), for the metrics endpoint."""

# Kernel map types with BPF_MAP_*_BATCH support (hash, array families).
BATCH_TYPES = {"hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "array", "percpu_array"}
# Elements per batch syscall when writing: large enough to amortise the
# syscall, small enough that a failure rolls back quickly.
WRITE_CHUNK = 65536


def layout_mismatches(s: MapSpec, info: lb.MapInfo, sizes: MapSizes) -> list[str]:
    """What differs between a pinned map and what this build expects."""
    want = {
        "type": s.type_name,
        "key size": s.key_size,
        "value size": s.value_size,
        "max entries": s.entries(sizes),
    }
    have = {
        "type": info.type_name,
        "key size": info.key_size,
        "value size": info.value_size,
        "max entries": info.max_entries,
    }
    return [f"{k} {have[k]} (want {want[k]})" for k in want if want[k] != have[k]]


@dataclass
class PinnedMap:
    """An open map: its spec, fd, pin path and the kernel's info."""

    spec: MapSpec
    fd: int
    path: Path
    info: lb.MapInfo

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def max_entries(self) -> int:
        return self.info.max_entries

    def close(self) -> None:
        if self.fd >= 0:
            lb.close(self.fd)
            self.fd = -1

    def _fail(self, op: str, err: BreakwaterError) -> BreakwaterError:
        FAILURES[(self.name, op)] += 1
        LOGGER.warning("map %s: %s failed: %s", self.name, op, err)
        return err

    # -- single elements -------------------------------------------------
    def lookup(self, key: bytes) -> bytes | None:
        return lb.map_lookup_elem(self.fd, key, self.spec.full_value_size())

    def update(self, key: bytes, value: bytes, flags: int = lb.BPF_ANY) -> None:
        self._check(key, value)
        try:
            lb.map_update_elem(self.fd, key, value, flags)
        except BreakwaterError as exc:
            raise self._fail("update", exc) from exc

    def delete(self, key: bytes) -> bool:
        try:
            return lb.map_delete_elem(self.fd, key)
        except BreakwaterError as exc:
            raise self._fail("delete", exc) from exc

    def _check(self, key: bytes, value: bytes) -> None:
        if len(key) != self.spec.key_size:
            raise ValueError(f"{self.name}: key of {len(key)} bytes, want {self.spec.key_size}")
        if len(value) != self.spec.full_value_size():
            raise ValueError(f"{self.name}: value of {len(value)} bytes, want {self.spec.full_value_size()}")

    # -- many elements ---------------------------------------------------
    def insert_new(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Insert keys known to be absent, all or nothing.

        On a full map every key inserted by this call is deleted again and
        :class:`MapFullError` says how many did not fit.
        """
        done: list[bytes] = []
        try:
            if self.spec.type_name in BATCH_TYPES:
                for start in range(0, len(keys), WRITE_CHUNK):
                    ks = keys[start : start + WRITE_CHUNK]
                    vs = values[start : start + WRITE_CHUNK]
                    # Batch updates take no BPF_NOEXIST (the kernel allows only
                    # BPF_F_LOCK there); the caller has checked these are new.
                    n, err = lb.map_update_batch(self.fd, b"".join(ks), b"".join(vs), len(ks), lb.BPF_ANY)
                    done.extend(ks[:n])
                    if err:
                        raise from_os_error(err, f"map {self.name}: batch insert")
            else:
                for k, v in zip(keys, values, strict=True):
                    lb.map_update_elem(self.fd, k, v, lb.BPF_NOEXIST)
                    done.append(k)
        except BreakwaterError as exc:
            self._rollback(done)
            if isinstance(exc, MapFullError) or (
                isinstance(exc, MapOperationError) and exc.errno == errno.ENOMEM
            ):
                raise self._fail(
                    "insert",
                    MapFullError(
                        f"map {self.name} is full ({self.max_entries} entries): "
                        f"{len(keys) - len(done)} of {len(keys)} new entries did not fit; "
                        f"nothing was changed. Raise the {self.spec.size_field or self.name} "
                        "map size or remove entries"
                    ),
                ) from exc
            raise self._fail("insert", exc) from exc

    def _rollback(self, keys: Sequence[bytes]) -> None:
        for k in keys:
            try:
                lb.map_delete_elem(self.fd, k)
            except BreakwaterError:
                LOGGER.error("map %s: rollback could not delete a key", self.name)

    def overwrite(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Update keys known to exist (a rule id changes): cannot fill the map."""
        try:
            if self.spec.type_name in BATCH_TYPES:
                for start in range(0, len(keys), WRITE_CHUNK):
                    ks = keys[start : start + WRITE_CHUNK]
                    vs = values[start : start + WRITE_CHUNK]
                    _, err = lb.map_update_batch(self.fd, b"".join(ks), b"".join(vs), len(ks), lb.BPF_ANY)
                    if err:
                        raise from_os_error(err, f"map {self.name}: batch update")
            else:
                for k, v in zip(keys, values, strict=True):
                    lb.map_update_elem(self.fd, k, v, lb.BPF_ANY)
        except BreakwaterError as exc:
            raise self._fail("update", exc) from exc

    def take(self, key: bytes) -> bytes | None:
        """Delete one element and return its value (None if absent): one syscall."""
        try:
            return lb.map_lookup_and_delete_elem(self.fd, key, self.spec.full_value_size())
        except BreakwaterError as exc:
            raise self._fail("delete", exc) from exc

    def update_packed(self, keys: bytes, values: bytes, count: int) -> None:
        """Batch-update ``count`` packed keys and values (BPF_ANY): the fast
        path for array slices, with no per-element Python objects."""
        try:
            n, err = lb.map_update_batch(self.fd, keys, values, count, lb.BPF_ANY)
            if err:
                raise from_os_error(err, f"map {self.name}: batch update ({n} of {count} applied)")
        except BreakwaterError as exc:
            raise self._fail("update", exc) from exc

    def write_mmap(self, index: int, packed: bytes) -> None:
        """Write packed values from element ``index`` on, through mmap (arrays
        made with BPF_F_MMAPABLE). Plain stores: only for elements no packet
        reads meanwhile (the idle slot of a swap)."""
        stride = (self.spec.value_size + 7) // 8 * 8
        if stride != self.spec.value_size:
            raise ValueError(f"{self.name}: mmap writes need 8-byte values")
        size = self.max_entries * stride
        length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            with mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mem:
                mem[index * stride : index * stride + len(packed)] = packed
        except OSError as exc:
            err = from_os_error(exc.errno or errno.EINVAL, f"map {self.name}: mmap")
            raise self._fail("mmap", err) from exc

    def read_mmap(self, index: int, count: int) -> bytes:
        stride = self.spec.value_size
        size = self.max_entries * stride
        length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        with mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ) as mem:
            return bytes(mem[index * stride : (index + count) * stride])

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete keys; absent ones are skipped. Returns how many were deleted."""
        deleted = 0
        try:
            if self.spec.type_name in BATCH_TYPES and keys:
                # A batch delete stops at the first absent key: delete what
                # exists, one batch per run of present keys.
                present = [k for k in dict.fromkeys(keys) if self.lookup(k) is not None]
                for start in range(0, len(present), WRITE_CHUNK):
                    ks = present[start : start + WRITE_CHUNK]
                    n, err = lb.map_delete_batch(self.fd, b"".join(ks), len(ks))
                    deleted += n
                    if err and err != errno.ENOENT:
                        raise from_os_error(err, f"map {self.name}: batch delete")
            else:
                for k in dict.fromkeys(keys):
                    deleted += lb.map_delete_elem(self.fd, k)
        except BreakwaterError as exc:
            raise self._fail("delete", exc) from exc
        return deleted

    def delete_packed(self, keys: bytes, n: int) -> int:
        """Delete ``n`` packed keys with BPF_MAP_DELETE_BATCH, no per-key
        lookups: a batch stops at the first absent key (one the LRU evicted
        meanwhile), the next resumes after it. Returns how many were deleted."""
        ksz = self.spec.key_size
        if len(keys) != n * ksz:
            raise ValueError(f"map {self.name}: {len(keys)} bytes for {n} keys of {ksz}")
        if self.spec.type_name not in BATCH_TYPES:
            return self.delete_many([keys[i * ksz : (i + 1) * ksz] for i in range(n)])
        deleted = pos = 0
        try:
            while pos < n:
                count = min(WRITE_CHUNK, n - pos)
                done, err = lb.map_delete_batch(self.fd, keys[pos * ksz : (pos + count) * ksz], count)
                deleted += done
                pos += done
                if err == errno.ENOENT:
                    pos += 1  # absent: skip it
                elif err:
                    raise from_os_error(err, f"map {self.name}: batch delete")
        except BreakwaterError as exc:
            raise self._fail("delete", exc) from exc
        return deleted

    def contains(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of ``keys`` are present: per-key lookups for a few, one read for many."""
        if len(keys) <= 1024:
            return {k for k in keys if self.lookup(k) is not None}
        present = set(self.keys())
        return {k for k in keys if k in present}

    def read_all(self) -> tuple[bytes, bytes, int]:
        """Every key and value, packed: batch lookup where the kernel has it."""
        ksz, vsz = self.spec.key_size, self.spec.full_value_size()
        if self.spec.type_name in BATCH_TYPES:
            try:
                return lb.map_lookup_batch(self.fd, ksz, vsz, self.max_entries)
            except BreakwaterError as exc:
                raise self._fail("read", exc) from exc
        keys, values = [], []
        for k in self._iter_keys():
            v = self.lookup(k)
            if v is not None:
                keys.append(k)
                values.append(v)
        return b"".join(keys), b"".join(values), len(keys)

    def read_arrays(self, into: ReadBuffers | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`read_all` as uint8 arrays the kernel wrote into directly
        (no copies: the counter harvest reads its big maps this way), into
        the next buffers of ``into`` when given."""
        if self.spec.type_name not in BATCH_TYPES:
            keys, values, n = self.read_all()
            return np.frombuffer(keys, dtype=np.uint8), np.frombuffer(values, dtype=np.uint8), n
        ksz, vsz = self.spec.key_size, self.spec.full_value_size()
        bufs = into.next(self.name, *lb.batch_buffer_bytes(ksz, vsz, self.max_entries)) if into else None
        try:
            return lb.map_lookup_batch_arrays(self.fd, ksz, vsz, self.max_entries, into=bufs)
        except BreakwaterError as exc:
            raise self._fail("read", exc) from exc

    def _iter_keys(self) -> Iterator[bytes]:
        key: bytes | None = None
        while True:
            key = lb.map_get_next_key(self.fd, key, self.spec.key_size)
            if key is None:
                return
            yield key

    def keys(self) -> list[bytes]:
        raw, _, n = self.read_all()
        ksz = self.spec.key_size
        return [raw[i * ksz : (i + 1) * ksz] for i in range(n)]

    def count(self) -> int:
        """Entries in the map now (an array always reports its size)."""
        if self.spec.type_name in ("array", "percpu_array"):
            return self.max_entries
        return self.read_all()[2]

    def percpu_sum(self, dtype: np.dtype[np.void]) -> np.ndarray:
        """Per-CPU array values summed over CPUs, one row per index."""
        _, raw, n = self.read_all()
        ncpu = lb.possible_cpus()
        arr = np.frombuffer(raw, dtype=dtype, count=n * ncpu).reshape(n, ncpu)
        out = np.zeros(n, dtype=dtype)
        for name in dtype.names or ():
            out[name] = arr[name].sum(axis=1)
        return out


class ReadBuffers:
    """Two pairs of read buffers per map, handed out in turn: a reader that
    keeps only its previous read (the counter harvest) reuses the pages of
    the read before it. A fresh 100 MB array costs its page faults and the
    kernel's zeroing on first write, as much as the arithmetic on it."""

    def __init__(self) -> None:
        self._pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._turn: dict[str, int] = {}

    def next(self, name: str, key_bytes: int, value_bytes: int) -> tuple[np.ndarray, np.ndarray]:
        """The buffers for this read of map ``name``: not those of the previous read."""
        pairs = self._pairs.setdefault(name, [])
        turn = self._turn[name] = (self._turn.get(name, -1) + 1) % 2
        if len(pairs) <= turn or len(pairs[turn][0]) < key_bytes or len(pairs[turn][1]) < value_bytes:
            pair = (np.empty(key_bytes, dtype=np.uint8), np.empty(value_bytes, dtype=np.uint8))
            if len(pairs) <= turn:
                pairs.append(pair)
            else:
                pairs[turn] = pair
        return pairs[turn]


class MapSet:
    """Every pinned map of one interface's program, opened by pin path."""

    def __init__(self, pin_dir: Path, maps: dict[str, PinnedMap]) -> None:
        self.pin_dir = pin_dir
        self.maps = maps
        self._held = threading.local()  # per thread: lock depth

    @classmethod
    def open(cls, pin_dir: Path, sizes: MapSizes | None = None) -> MapSet:
        """Open and check every map under ``pin_dir``.

        With ``sizes`` given, max_entries must match it too; without, any
        size is accepted (the CLI works with whatever the agent built).
        """
        maps: dict[str, PinnedMap] = {}
        try:
            for s in MAP_SPECS:
                path = pin_dir / s.name
                fd = lb.obj_get(path)
                info = lb.map_info(fd)
                maps[s.name] = PinnedMap(s, fd, path, info)
                check = sizes if sizes is not None else _sizes_like(s, info)
                wrong = layout_mismatches(s, info, check)
                if wrong:
                    raise PinnedMapMismatchError(
                        f"pinned map {path}: {', '.join(wrong)}; it was made by another "
                        "Breakwater build: `breakwater dataplane attach --replace-maps` replaces it"
                    )
        except BaseException:
            for m in maps.values():
                m.close()
            raise
        return cls(pin_dir, maps)

    def __getitem__(self, name: str) -> PinnedMap:
        return self.maps[name]

    @contextlib.contextmanager
    def locked(self) -> Iterator[MapSet]:
        """Hold the pin directory's lock (flock): one writer at a time, across
        processes. Re-entrant within this MapSet."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield self
            finally:
                self._held.depth = depth
            return
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.depth = 1
            yield self
        finally:
            self._held.depth = 0
            os.close(fd)

    def config(self) -> abi.Config:
        """The single ``config`` entry (flags, generation, build id)."""
        raw = self["config"].lookup(bytes(4))
        return abi.Config.from_buffer_copy(raw) if raw else abi.Config()

    def write_config(self, cfg: abi.Config) -> None:
        """Write ``config``: hold :meth:`locked` around the read-modify-write."""
        self["config"].update(bytes(4), bytes(cfg))

    def is_empty(self, name: str) -> bool:
        return lb.map_get_next_key(self[name].fd, None, self[name].spec.key_size) is None

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> MapSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sizes_like(s: MapSpec, info: lb.MapInfo) -> MapSizes:
    """Sizes that accept whatever max_entries the pinned map has."""
    if s.size_field is None:
        return MapSizes()
    return MapSizes(**{s.size_field: info.max_entries})
