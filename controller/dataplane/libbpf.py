"""Thin ctypes bindings to the system libbpf (``libbpf.so.1``).

bcc compiles and attaches the program; everything that works on pinned
objects (opening pins, checking a map's layout, batch map operations,
BPF_PROG_TEST_RUN) goes through libbpf here, so the CLI never needs to
compile anything. Every failure is converted once, here, with
:func:`controller.errors.from_os_error`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import BpfUnsupportedError, from_os_error

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "MapInfo",
    "ProgInfo",
    "TestRun",
    "batch_buffer_bytes",
    "close",
    "map_delete_batch",
    "map_delete_elem",
    "map_get_next_key",
    "map_info",
    "map_lookup_and_delete_elem",
    "map_lookup_batch",
    "map_lookup_batch_arrays",
    "map_lookup_elem",
    "map_update_batch",
    "map_update_elem",
    "obj_get",
    "obj_pin",
    "possible_cpus",
    "prog_fd_by_id",
    "prog_info",
    "prog_map_ids",
    "prog_test_run",
]

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_map_type values Breakwater uses (include/uapi/linux/bpf.h).
MAP_TYPE_NAMES = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
    27: "ringbuf",
}


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfUnsupportedError(
            f"cannot load libbpf ({name}): install Debian's libbpf1 (`make setup` does)"
        ) from exc
    vp, c_int, u32p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)
    sigs: dict[str, list[object]] = {
        "bpf_obj_get": [ctypes.c_char_p],
        "bpf_obj_pin": [c_int, ctypes.c_char_p],
        "bpf_obj_get_info_by_fd": [c_int, vp, u32p],
        "bpf_prog_get_fd_by_id": [ctypes.c_uint32],
        "bpf_map_lookup_elem": [c_int, vp, vp],
        "bpf_map_update_elem": [c_int, vp, vp, ctypes.c_uint64],
        "bpf_map_delete_elem": [c_int, vp],
        "bpf_map_lookup_and_delete_elem": [c_int, vp, vp],
        "bpf_map_get_next_key": [c_int, vp, vp],
        "bpf_map_lookup_batch": [c_int, vp, vp, vp, vp, u32p, ctypes.POINTER(_BatchOpts)],
        "bpf_map_update_batch": [c_int, vp, vp, u32p, ctypes.POINTER(_BatchOpts)],
        "bpf_map_delete_batch": [c_int, vp, u32p, ctypes.POINTER(_BatchOpts)],
        "bpf_prog_test_run_opts": [c_int, ctypes.POINTER(_TestRunOpts)],
    }
    for fn, args in sigs.items():
        f = getattr(lib, fn)
        f.argtypes = args
        f.restype = c_int
    return lib


def _err(rc: int) -> int:
    """libbpf 1.x returns -errno; older builds return -1 and set errno."""
    if rc == -1:
        return ctypes.get_errno() or errno.EINVAL
    return -rc


def _buf(data: bytes) -> ctypes.c_void_p:
    """A pointer into ``data`` (no copy); the caller keeps ``data`` alive."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)


def close(fd: int) -> None:
    os.close(fd)


def obj_get(path: Path) -> int:
    """Open a pinned BPF object; returns a new fd."""
    fd = _lib().bpf_obj_get(str(path).encode())
    if fd < 0:
        raise from_os_error(_err(fd), f"open pinned object {path}")
    return int(fd)


def obj_pin(fd: int, path: Path) -> None:
    rc = _lib().bpf_obj_pin(fd, str(path).encode())
    if rc < 0:
        raise from_os_error(_err(rc), f"pin {path}")


@dataclass(frozen=True)
class MapInfo:
    """The kernel's view of a map, as ``bpf_obj_get_info_by_fd`` reports it."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True)
class ProgInfo:
    """The kernel's view of a program."""

    type: int
    id: int
    tag: str
    name: str


def _info(fd: int, what: str) -> bytes:
    buf = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    rc = _lib().bpf_obj_get_info_by_fd(fd, ctypes.cast(buf, ctypes.c_void_p), ctypes.byref(size))
    if rc < 0:
        raise from_os_error(_err(rc), what)
    return buf.raw


def map_info(fd: int) -> MapInfo:
    raw = _info(fd, "read map info")
    u32 = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 24, 4)]
    name = raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(u32[0], u32[1], u32[2], u32[3], u32[4], u32[5], name)


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd, "read program info")
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(
        int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little"), raw[8:16].hex(), name
    )


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps a program uses."""
    nr = int.from_bytes(_info(fd, "read program info")[52:56], "little")
    if not nr:
        return []
    ids = (ctypes.c_uint32 * nr)()
    buf = ctypes.create_string_buffer(256)
    ctypes.memmove(ctypes.addressof(buf) + 52, ctypes.byref(ctypes.c_uint32(nr)), 4)
    ptr = ctypes.c_uint64(ctypes.addressof(ids))
    ctypes.memmove(ctypes.addressof(buf) + 56, ctypes.byref(ptr), 8)
    size = ctypes.c_uint32(256)
    rc = _lib().bpf_obj_get_info_by_fd(fd, ctypes.cast(buf, ctypes.c_void_p), ctypes.byref(size))
    if rc < 0:
        raise from_os_error(_err(rc), "read program map ids")
    return list(ids)


def prog_fd_by_id(prog_id: int) -> int:
    fd = _lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise from_os_error(_err(fd), f"open program id {prog_id}")
    return int(fd)


def map_lookup_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    """One element, or None when absent. ``value_size`` is the full (per-CPU) size."""
    out = ctypes.create_string_buffer(value_size)
    rc = _lib().bpf_map_lookup_elem(fd, _buf(key), ctypes.cast(out, ctypes.c_void_p))
    if rc < 0:
        if _err(rc) == errno.ENOENT:
            return None
        raise from_os_error(_err(rc), "map lookup")
    return out.raw


def map_update_elem(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    rc = _lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags)
    if rc < 0:
        raise from_os_error(_err(rc), "map update")


def map_delete_elem(fd: int, key: bytes) -> bool:
    """Delete one element; False if it was absent."""
    rc = _lib().bpf_map_delete_elem(fd, _buf(key))
    if rc < 0:
        if _err(rc) == errno.ENOENT:
            return False
        raise from_os_error(_err(rc), "map delete")
    return True


def map_lookup_and_delete_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Take one element out of a hash map: its value, or None when absent."""
    out = ctypes.create_string_buffer(value_size)
    rc = _lib().bpf_map_lookup_and_delete_elem(fd, _buf(key), ctypes.cast(out, ctypes.c_void_p))
    if rc < 0:
        if _err(rc) == errno.ENOENT:
            return None
        raise from_os_error(_err(rc), "map lookup-and-delete")
    return out.raw


def map_get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    out = ctypes.create_string_buffer(key_size)
    k = _buf(key) if key is not None else None
    rc = _lib().bpf_map_get_next_key(fd, k, ctypes.cast(out, ctypes.c_void_p))
    if rc < 0:
        if _err(rc) == errno.ENOENT:
            return None
        raise from_os_error(_err(rc), "map iterate")
    return out.raw


def map_lookup_batch_arrays(
    fd: int, key_size: int, value_size: int, max_entries: int, chunk: int = 65536,
    into: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], int]:
    """As :func:`map_lookup_batch`, but the kernel writes straight into two
    numpy buffers sized for the whole map: fresh ones (untouched pages cost
    nothing until written), or ``into`` when it is large enough
    (:func:`batch_buffer_bytes`): pages already touched, so a big read
    costs no page faults. No zeroed staging buffer, no copies. Returns
    (keys, values, count), views of the buffers trimmed to ``count`` entries."""
    lib = _lib()
    chunk = max(64, min(chunk, max_entries))
    cap = max_entries + chunk  # the last call may be handed a full chunk of room
    if into is not None and len(into[0]) >= cap * key_size and len(into[1]) >= cap * value_size:
        keys, values = into
    else:
        keys = np.empty(cap * key_size, dtype=np.uint8)
        values = np.empty(cap * value_size, dtype=np.uint8)
    token = max(key_size, 8)
    in_batch = ctypes.create_string_buffer(token)
    out_batch = ctypes.create_string_buffer(token)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    kbase, vbase = keys.ctypes.data, values.ctypes.data
    total = 0
    first = True
    while True:
        count = ctypes.c_uint32(min(chunk, cap - total))
        rc = lib.bpf_map_lookup_batch(
            fd,
            None if first else ctypes.cast(in_batch, ctypes.c_void_p),
            ctypes.cast(out_batch, ctypes.c_void_p),
            ctypes.c_void_p(kbase + total * key_size),
            ctypes.c_void_p(vbase + total * value_size),
            ctypes.byref(count),
            ctypes.byref(opts),
        )
        err = _err(rc) if rc < 0 else 0
        total += count.value
        if err == errno.ENOENT:
            break
        if err:
            raise from_os_error(err, "map batch lookup")
        if total + 1 > cap:  # more entries than max_entries: the map changed under us
            raise from_os_error(errno.E2BIG, "map batch lookup: more entries than max_entries")
        ctypes.memmove(in_batch, out_batch, token)
        first = False
    return keys[: total * key_size], values[: total * value_size], total


def batch_buffer_bytes(key_size: int, value_size: int, max_entries: int,
                       chunk: int = 65536) -> tuple[int, int]:
    """Bytes of the key and value buffers :func:`map_lookup_batch_arrays` needs."""
    cap = max_entries + max(64, min(chunk, max_entries))
    return cap * key_size, cap * value_size


def map_lookup_batch(
    fd: int, key_size: int, value_size: int, max_entries: int, chunk: int = 65536
) -> tuple[bytes, bytes, int]:
    """Read the whole map with BPF_MAP_LOOKUP_BATCH, ``chunk`` entries a call.

    Returns (keys, values, count): ``count`` packed keys and values.
    ``value_size`` is the full (per-CPU) value size.
    """
    lib = _lib()
    chunk = max(64, min(chunk, max_entries))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token = max(key_size, 8)
    in_batch = ctypes.create_string_buffer(token)
    out_batch = ctypes.create_string_buffer(token)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    total = 0
    first = True
    while True:
        count = ctypes.c_uint32(chunk)
        rc = lib.bpf_map_lookup_batch(
            fd,
            None if first else ctypes.cast(in_batch, ctypes.c_void_p),
            ctypes.cast(out_batch, ctypes.c_void_p),
            ctypes.cast(keys, ctypes.c_void_p),
            ctypes.cast(values, ctypes.c_void_p),
            ctypes.byref(count),
            ctypes.byref(opts),
        )
        err = _err(rc) if rc < 0 else 0
        n = count.value
        if n:
            key_parts.append(ctypes.string_at(keys, n * key_size))
            value_parts.append(ctypes.string_at(values, n * value_size))
            total += n
        if err == errno.ENOENT:
            break
        if err:
            raise from_os_error(err, "map batch lookup")
        ctypes.memmove(in_batch, out_batch, token)
        first = False
    return b"".join(key_parts), b"".join(value_parts), total


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int, flags: int) -> tuple[int, int]:
    """BPF_MAP_UPDATE_BATCH. Returns (elements applied, errno or 0)."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), flags, 0)
    rc = _lib().bpf_map_update_batch(fd, _buf(keys), _buf(values), ctypes.byref(n), ctypes.byref(opts))
    return n.value, (_err(rc) if rc < 0 else 0)


def map_delete_batch(fd: int, keys: bytes, count: int) -> tuple[int, int]:
    """BPF_MAP_DELETE_BATCH. Returns (elements deleted, errno or 0)."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    rc = _lib().bpf_map_delete_batch(fd, _buf(keys), ctypes.byref(n), ctypes.byref(opts))
    return n.value, (_err(rc) if rc < 0 else 0)


@dataclass(frozen=True)
class TestRun:
    """Result of one BPF_PROG_TEST_RUN."""

    retval: int
    data_out: bytes
    duration_ns: int


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> TestRun:
    """Run an XDP program on ``packet`` in the kernel (BPF_PROG_TEST_RUN).

    It runs on the calling CPU (XDP test runs do not take a CPU flag: pin the
    process with os.sched_setaffinity). ``duration_ns`` is the kernel's
    average per run over ``repeat`` runs.
    """
    data_in = ctypes.create_string_buffer(packet, len(packet))
    out_size = len(packet) + 256
    data_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(packet)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    rc = _lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if rc < 0:
        raise from_os_error(_err(rc), "BPF_PROG_TEST_RUN")
    return TestRun(int(opts.retval), data_out.raw[: opts.data_size_out], int(opts.duration))


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n
