"""Counter samples: what the data plane counted in one interval, as the detector reads it.

Every interval (1 s by default, down to 100 ms) the agent turns the data
plane's cumulative counters into **deltas** and hands them to the detector
as one :class:`Sample`: the interval's end time ``t`` and length ``dt`` (in
seconds), one row per source address that sent anything in the interval,
and one row per protected destination address (a destination inside a
configured protected prefix) that received anything.

Rows are numpy structured arrays, not Python objects, so a sample of a
million sources costs a few array operations:

* :data:`SOURCE_DTYPE`: ``addr_hi``, ``addr_lo`` (the source address), the
  counters of :data:`SOURCE_FIELDS`, and ``dst_hi``, ``dst_lo``: the
  destination this source sent to most recently (all zero: unknown).
* :data:`DESTINATION_DTYPE`: ``addr_hi``, ``addr_lo`` and the counters of
  :data:`DESTINATION_FIELDS`.

**Addresses** are 128-bit numbers split into two unsigned 64-bit words,
``hi`` (bits 127..64) and ``lo`` (bits 63..0). IPv4 addresses are stored
IPv4-mapped (``::ffff:a.b.c.d``, RFC 4291 2.5.5.2: ``hi = 0``,
``lo = 0xffff_0000_0000 | a.b.c.d``), so one array holds both families, a
key compares and sorts as one number per family, and a /24 or /48 is a
shift of one word. The flip side: an IPv6 source that really is
``::ffff:a.b.c.d`` reads as IPv4; such packets are bogons on the wire.
:func:`words_from_packed` converts the data plane's packed map keys.

**Counters** (all unsigned, per interval):

==========  =================================================================
packets     every packet seen, passed **or dropped**: a dropped flood still
            counts here, which is how the detector knows it has not ended
bytes       their IP lengths (IPv4 total length, IPv6 payload length + 40)
drops       how many of ``packets`` the data plane dropped (any reason)
syn         TCP with SYN set and ACK clear
ack         TCP with ACK set and SYN clear
udp, icmp   UDP; ICMP or ICMPv6
gre         GRE (IP protocol 47)
frags       IP fragments, first or later
refl        (destinations only) UDP whose *source* port is one of
            :data:`controller.rules.presets.REFLECTION_PORTS`
==========  =================================================================

A source denied by the data plane must still be counted (the exact deny
entries carry hit counters for this; :func:`controller.dataplane.counters.read_sources`
merges them), or its attack would seem to end while it is being dropped.

For tests and recordings, :meth:`Sample.build` makes a sample from plain
dicts, and :func:`load_recording` / :func:`dump_recording` read and write a
JSON list of samples (the format is in ``docs/detection.md``).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..validate import check_int, check_keys, check_number

__all__ = [
    "DESTINATION_DTYPE",
    "DESTINATION_FIELDS",
    "MAX_DT",
    "MIN_DT",
    "RECORDING_VERSION",
    "SOURCE_DTYPE",
    "SOURCE_FIELDS",
    "V4_MAPPED",
    "Address",
    "Sample",
    "address_from_words",
    "address_words",
    "destination_rows",
    "dump_recording",
    "is_v4",
    "load_recording",
    "source_rows",
    "v4_words",
    "words_from_packed",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
U64Array = npt.NDArray[np.uint64]

SOURCE_FIELDS: Final = ("packets", "bytes", "drops", "syn", "ack", "udp", "icmp", "gre", "frags")
"""Per-source counters, in the order of ``struct bw_src_counters``."""
DESTINATION_FIELDS: Final = (*SOURCE_FIELDS, "refl")
"""Per-destination counters: the source counters plus ``refl``."""

SOURCE_DTYPE: Final = np.dtype(
    [("addr_hi", "<u8"), ("addr_lo", "<u8")]
    + [(name, "<u8") for name in SOURCE_FIELDS]
    + [("dst_hi", "<u8"), ("dst_lo", "<u8")]
)
DESTINATION_DTYPE: Final = np.dtype(
    [("addr_hi", "<u8"), ("addr_lo", "<u8")] + [(name, "<u8") for name in DESTINATION_FIELDS]
)

V4_MAPPED: Final = 0xFFFF_0000_0000
"""``lo`` word of ``::ffff:0.0.0.0``: an IPv4 address is ``V4_MAPPED | a.b.c.d``."""
_LO_MASK: Final = (1 << 64) - 1
_MAX_COUNTER: Final = (1 << 64) - 1
"""Counters are unsigned 64-bit, as the data plane keeps them."""

MIN_DT: Final = 0.001
"""Shortest interval a sample may cover (1 ms); the data plane's floor is 100 ms."""
MAX_DT: Final = 3600.0
"""Longest interval (an hour): a longer gap is a restart, not an interval."""

RECORDING_VERSION: Final = 1
"""Version of the JSON recording format this build reads and writes."""


# --- addresses as words -------------------------------------------------------


def address_words(address: str | Address) -> tuple[int, int]:
    """``(hi, lo)`` of an address; IPv4 is stored IPv4-mapped."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 4:
        return 0, V4_MAPPED | int(ip)
    value = int(ip)
    return value >> 64, value & _LO_MASK


def address_from_words(hi: int, lo: int) -> Address:
    """The address ``(hi, lo)`` stands for (IPv4 when it is IPv4-mapped)."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and lo >> 32 == 0xFFFF:
        return ipaddress.IPv4Address(lo & 0xFFFF_FFFF)
    return ipaddress.IPv6Address((hi << 64) | lo)


def is_v4(hi: U64Array, lo: U64Array) -> npt.NDArray[np.bool_]:
    """Which of the addresses are IPv4 (IPv4-mapped words)."""
    v4: npt.NDArray[np.bool_] = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    return v4


def v4_words(addresses: npt.ArrayLike) -> tuple[U64Array, U64Array]:
    """``(hi, lo)`` arrays of IPv4 addresses given as integers (``int(IPv4Address)``)."""
    values = np.asarray(addresses, dtype=np.uint64)
    return np.zeros(values.shape, dtype=np.uint64), values | np.uint64(V4_MAPPED)


def words_from_packed(keys: npt.NDArray[np.void] | npt.NDArray[np.bytes_]) -> tuple[U64Array, U64Array]:
    """``(hi, lo)`` of packed addresses as the data plane's maps key them:
    4-byte (IPv4) or 16-byte (IPv6) items, network byte order (dtype
    ``S4``/``S16`` or ``V4``/``V16``)."""
    width = keys.dtype.itemsize
    raw = np.ascontiguousarray(keys).tobytes()
    if width == 4:
        return v4_words(np.frombuffer(raw, dtype=">u4"))
    if width == 16:
        words = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
        return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)
    raise InputError(f"keys: {width}-byte items; expected 4 (IPv4) or 16 (IPv6)")


# --- rows from plain dicts ----------------------------------------------------


def _parse_address(text: object, path: str) -> Address:
    if not isinstance(text, str):
        raise InputError(f"{path}: expected an address string, got {text!r}")
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InputError(f"{path}: {text!r} is not an IPv4/IPv6 address") from None


def _rows(
    rows: Mapping[str, Mapping[str, object]],
    dtype: np.dtype[np.void],
    fields: Sequence[str],
    what: str,
    with_dst: bool,
) -> npt.NDArray[np.void]:
    out = np.zeros(len(rows), dtype=dtype)
    known = (*fields, "dst") if with_dst else tuple(fields)
    seen: dict[Address, str] = {}
    for i, (text, counters) in enumerate(rows.items()):
        path = f"{what}[{text!r}]"
        ip = _parse_address(text, path)
        if ip in seen:
            raise InputError(f"{path}: the same address as {what}[{seen[ip]!r}]")
        seen[ip] = text
        out["addr_hi"][i], out["addr_lo"][i] = address_words(ip)
        if not isinstance(counters, Mapping):
            raise InputError(f"{path}: expected a table of counters, got {counters!r}")
        check_keys(counters, known, path, what="counter")
        for key, value in counters.items():
            if key == "dst":
                dst = _parse_address(value, f"{path}.dst")
                if dst.version != ip.version:
                    raise InputError(
                        f"{path}.dst: IPv{dst.version} destination for an IPv{ip.version} source"
                    )
                out["dst_hi"][i], out["dst_lo"][i] = address_words(dst)
            else:
                out[key][i] = check_int(value, f"{path}.{key}", 0, _MAX_COUNTER)
    return out


def source_rows(rows: Mapping[str, Mapping[str, object]]) -> npt.NDArray[np.void]:
    """Source rows from ``{"198.18.0.1": {"packets": 10, "syn": 10, "dst": "203.0.113.10"}}``;
    counters left out are 0, a missing ``dst`` is unknown."""
    return _rows(rows, SOURCE_DTYPE, SOURCE_FIELDS, "sources", with_dst=True)


def destination_rows(rows: Mapping[str, Mapping[str, object]]) -> npt.NDArray[np.void]:
    """Destination rows from ``{"203.0.113.10": {"packets": 10, "syn": 10}}``."""
    return _rows(rows, DESTINATION_DTYPE, DESTINATION_FIELDS, "destinations", with_dst=False)


def _row_dicts(
    arr: npt.NDArray[np.void], fields: Sequence[str], with_dst: bool
) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for row in arr:
        counters: dict[str, object] = {f: int(row[f]) for f in fields if int(row[f])}
        if with_dst and (int(row["dst_hi"]) or int(row["dst_lo"])):
            counters["dst"] = str(address_from_words(row["dst_hi"], row["dst_lo"]))
        out[str(address_from_words(row["addr_hi"], row["addr_lo"]))] = counters
    return out


# --- the sample ---------------------------------------------------------------


def _check_rows(arr: object, dtype: np.dtype[np.void], name: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{name}: expected a numpy structured array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise InputError(f"{name}: dtype {arr.dtype} is not the expected {dtype}")
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array, got {arr.ndim} dimensions")


@dataclass(frozen=True, slots=True, eq=False)
class Sample:
    """One interval of counter deltas.

    ``t`` is the interval's end (seconds; any clock, but the same one for
    every sample: the detector only takes differences), ``dt`` its length
    (:data:`MIN_DT` to :data:`MAX_DT`); rates are counters / ``dt``.
    ``sources`` is a :data:`SOURCE_DTYPE` array, ``destinations`` a
    :data:`DESTINATION_DTYPE` array. Each address appears at most once
    per array.
    """

    t: float
    dt: float
    sources: npt.NDArray[np.void]
    destinations: npt.NDArray[np.void]

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", check_number(self.t, "t", -math.inf, math.inf))
        object.__setattr__(self, "dt", check_number(self.dt, "dt", MIN_DT, MAX_DT))
        _check_rows(self.sources, SOURCE_DTYPE, "sources")
        _check_rows(self.destinations, DESTINATION_DTYPE, "destinations")

    @classmethod
    def empty(cls, t: float, dt: float) -> Sample:
        """An interval in which nothing was counted."""
        return cls(t, dt, np.zeros(0, SOURCE_DTYPE), np.zeros(0, DESTINATION_DTYPE))

    @classmethod
    def build(
        cls,
        t: float,
        dt: float,
        sources: Mapping[str, Mapping[str, object]] | None = None,
        destinations: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Sample:
        """A sample from plain dicts (see :func:`source_rows`, :func:`destination_rows`)."""
        return cls(t, dt, source_rows(sources or {}), destination_rows(destinations or {}))

    @classmethod
    def from_dict(cls, data: object) -> Sample:
        """Read ``{"t": 5.0, "dt": 1.0, "sources": {...}, "destinations": {...}}``."""
        if not isinstance(data, Mapping):
            raise InputError(f"sample: expected a table, got {data!r}")
        check_keys(data, ("t", "dt", "sources", "destinations"), "sample")
        for key in ("t", "dt"):
            if key not in data:
                raise InputError(f"sample.{key}: missing")
        return cls.build(data["t"], data["dt"], data.get("sources") or {}, data.get("destinations") or {})

    def to_dict(self) -> dict[str, object]:
        """The JSON shape :meth:`from_dict` reads; zero counters are left out."""
        return {
            "t": self.t,
            "dt": self.dt,
            "sources": _row_dicts(self.sources, SOURCE_FIELDS, with_dst=True),
            "destinations": _row_dicts(self.destinations, DESTINATION_FIELDS, with_dst=False),
        }


def load_recording(text: str) -> list[Sample]:
    """Samples from a JSON recording ``{"version": 1, "samples": [...]}``,
    checking that ``t`` increases."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"recording: invalid JSON: {exc}") from None
    if not isinstance(data, Mapping) or "samples" not in data:
        raise InputError('recording: expected {"version": 1, "samples": [...]}')
    if data.get("version", RECORDING_VERSION) != RECORDING_VERSION:
        raise InputError(f"recording.version: {data.get('version')!r} is not supported; "
                         f"this build reads {RECORDING_VERSION}")
    items = data["samples"]
    if not isinstance(items, list):
        raise InputError("recording.samples: expected an array of samples")
    samples: list[Sample] = []
    for i, item in enumerate(items):
        try:
            sample = Sample.from_dict(item)
        except InputError as exc:
            raise InputError(f"recording.samples[{i}]: {exc}") from None
        if samples and sample.t <= samples[-1].t:
            raise InputError(f"recording.samples[{i}].t: {sample.t} is not after {samples[-1].t}")
        samples.append(sample)
    return samples


def dump_recording(samples: Iterable[Sample]) -> str:
    """A JSON recording that :func:`load_recording` reads back."""
    return json.dumps(
        {"version": RECORDING_VERSION, "samples": [s.to_dict() for s in samples]}, indent=1
    ) + "\n"
