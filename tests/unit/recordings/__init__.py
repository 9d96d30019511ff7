"""Recorded counter sequences for the detector and planner tests.

Two kinds:

* small JSON recordings in this directory (``*.json``, the format of
  :func:`controller.detection.samples.load_recording`), read with :func:`load`;
* builders that synthesise a recording from traffic descriptions: legitimate
  background plus floods that start and stop at given times, at any interval
  length. :func:`record` is the generator; :func:`mirai_syn`,
  :func:`spoofed_syn`, :func:`ntp_reflection`, :func:`http_proxy`,
  :func:`background` describe the incident's kinds of traffic.

Packet counts are exact and interval-independent: a source sending ``pps``
packets/s with phase ``phi`` has sent ``floor(pps * t + phi)`` packets by
time ``t``, so ten 100 ms samples add up to the 1 s sample of the same
traffic, packet for packet.

Address plan (all documentation/benchmark ranges): protected destinations in
203.0.113.0/24 and 2001:db8:d::/64, legitimate clients in 172.16.0.0/12,
bots in 198.18.0.0/15 and 2001:db8:b0::/44, reflectors in 100.64.0.0/10,
spoofed sources anywhere in 1.0.0.0-99.255.255.255 (so they never
repeat a real source by chance).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.detection.samples import (
    DESTINATION_DTYPE,
    DESTINATION_FIELDS,
    SOURCE_DTYPE,
    SOURCE_FIELDS,
    V4_MAPPED,
    Sample,
    address_words,
    load_recording,
    v4_words,
)

HERE = Path(__file__).resolve().parent
GOLDEN = (math.sqrt(5) - 1) / 2

VICTIM = "203.0.113.10"
VICTIM2 = "203.0.113.20"
VICTIM3 = "203.0.113.30"
VICTIM4 = "203.0.113.40"
VICTIM6 = "2001:db8:d::10"

Words = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]


def load(name: str) -> list[Sample]:
    """A JSON recording from this directory."""
    return load_recording((HERE / name).read_text())


def v4_block(first: str, count: int) -> Words:
    """``count`` consecutive IPv4 addresses from ``first``."""
    start = int(ipaddress.IPv4Address(first))
    return v4_words(np.arange(start, start + count, dtype=np.uint64))


def v6_block(first: str, count: int, step: int = 1) -> Words:
    """``count`` IPv6 addresses from ``first``, ``step`` apart (in the low word)."""
    hi, lo = address_words(first)
    los = np.uint64(lo) + np.arange(count, dtype=np.uint64) * np.uint64(step)
    return np.full(count, hi, dtype=np.uint64), los


def join(*blocks: Words) -> Words:
    return (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]))


@dataclass(frozen=True)
class Traffic:
    """Sources each sending ``pps`` packets/s of one kind to ``dst`` during [start, stop).

    ``mix`` gives, per counter, the share of packets it counts (``{"syn": 1}``:
    every packet is a SYN). From ``dropped_from`` on, every packet is also
    counted as dropped (a mitigation is in force; the data plane still counts).
    From ``denied_from`` on the sources are dropped by exact deny entries,
    which count them on the entry: their source rows show packets, bytes and
    drops only, no per-vector counts and no last destination (the harvester's
    unknown destination, ``0.0.0.0`` for IPv4); the destination still counts
    every packet, by vector, as dropped.
    """

    sources: Words
    dst: str
    pps: float
    mix: Mapping[str, float]
    size: int = 60
    start: float = 0.0
    stop: float = math.inf
    dropped_from: float = math.inf
    protected: bool = True
    denied_from: float = math.inf


@dataclass(frozen=True)
class Spoofed:
    """``pps`` packets/s to ``dst``, each from a fresh random source (1 packet each)."""

    dst: str
    pps: float
    mix: Mapping[str, float]
    size: int = 60
    start: float = 0.0
    stop: float = math.inf
    seed: int = 7
    dropped_from: float = math.inf


@dataclass
class _Rows:
    hi: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    lo: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    dst: list[str] = field(default_factory=list)
    counts: list[dict[str, npt.NDArray[np.uint64]]] = field(default_factory=list)
    protected: list[bool] = field(default_factory=list)
    denied: list[bool] = field(default_factory=list)
    """The block's sources are dropped by exact deny entries (opaque source rows)."""


def _phase(n: int, salt: int) -> npt.NDArray[np.float64]:
    return np.asarray((np.arange(n) * GOLDEN + salt * 0.137) % 1.0, dtype=np.float64)


def _between(start: float, stop: float, a: float, b: float) -> tuple[float, float] | None:
    lo, hi = max(a, start), min(b, stop)
    return (lo, hi) if hi > lo else None


def _counts(n: npt.NDArray[np.int64], mix: Mapping[str, float], size: int,
            dropped: bool) -> dict[str, npt.NDArray[np.uint64]]:
    out = {name: np.zeros(len(n), np.uint64) for name in DESTINATION_FIELDS}
    out["packets"] = n.astype(np.uint64)
    out["bytes"] = (n * size).astype(np.uint64)
    for name, share in mix.items():
        out[name] = np.floor(n * share + 1e-9).astype(np.uint64)
    if dropped:
        out["drops"] = out["packets"].copy()
    return out


def record(duration: float, dt: float, traffic: Sequence[Traffic | Spoofed], t0: float = 0.0) -> list[Sample]:
    """Samples of ``dt`` seconds covering [t0, t0 + duration); sample ``i``
    covers [t0 + i dt, t0 + (i+1) dt) and has ``t`` = its end."""
    steps = round(duration / dt)
    samples = []
    for i in range(steps):
        a = round(t0 + i * dt, 9)
        b = round(t0 + (i + 1) * dt, 9)
        rows = _Rows()
        for k, tr in enumerate(traffic):
            if isinstance(tr, Spoofed):
                span = _between(tr.start, tr.stop, a, b)
                if span is None:
                    continue
                total = math.floor(tr.pps * span[1]) - math.floor(tr.pps * span[0])
                rng = np.random.default_rng([tr.seed, i, round(a * 1000)])
                # the odd repeat (two packets from one address) keeps the total exact
                addrs, repeats = np.unique(rng.integers(0x01000000, 0x64000000, total, dtype=np.uint64),
                                           return_counts=True)
                hi, lo = v4_words(addrs)
                n = repeats.astype(np.int64)
                rows.hi.append(hi)
                rows.lo.append(lo)
                rows.dst.append(tr.dst)
                rows.counts.append(_counts(n, tr.mix, tr.size, a >= tr.dropped_from))
                rows.protected.append(True)
                rows.denied.append(False)
                continue
            span = _between(tr.start, tr.stop, a, b)
            if span is None:
                continue
            phase = _phase(len(tr.sources[0]), k)
            n = (np.floor(tr.pps * span[1] + phase) - np.floor(tr.pps * span[0] + phase)).astype(np.int64)
            keep = n > 0
            if not keep.any():
                continue
            rows.hi.append(tr.sources[0][keep])
            rows.lo.append(tr.sources[1][keep])
            rows.dst.append(tr.dst)
            denied = a >= tr.denied_from
            rows.counts.append(_counts(n[keep], tr.mix, tr.size, denied or a >= tr.dropped_from))
            rows.protected.append(tr.protected)
            rows.denied.append(denied)
        samples.append(_sample(b, dt, rows))
    return samples


def _sample(t: float, dt: float, rows: _Rows) -> Sample:
    if not rows.hi:
        return Sample.empty(t, dt)
    hi = np.concatenate(rows.hi)
    lo = np.concatenate(rows.lo)
    dst_words = [address_words(d) for d in rows.dst]
    sizes = [len(h) for h in rows.hi]
    dst_hi = np.repeat(np.array([w[0] for w in dst_words], np.uint64), sizes)
    dst_lo = np.repeat(np.array([w[1] for w in dst_words], np.uint64), sizes)
    # one row per source: sum counters, keep the last destination (of a packet
    # that was not denied by an exact entry: those are counted without one)
    key = np.stack([hi, lo], axis=1)
    uniq, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    src = np.zeros(len(uniq), SOURCE_DTYPE)
    src["addr_hi"], src["addr_lo"] = uniq[:, 0], uniq[:, 1]
    denied = np.repeat(np.array(rows.denied, bool), sizes)
    last = np.full(len(uniq), -1, np.int64)
    seen = np.nonzero(~denied)[0]
    np.maximum.at(last, inverse[seen], seen)
    known = last >= 0
    src["dst_hi"] = np.where(known, dst_hi[np.maximum(last, 0)], 0)
    # the harvester reads an exact deny entry's unknown destination as 0.0.0.0 (IPv4)
    src_v4 = (src["addr_hi"] == 0) & ((src["addr_lo"] >> np.uint64(32)) == np.uint64(0xFFFF))
    src["dst_lo"] = np.where(known, dst_lo[np.maximum(last, 0)],
                             np.where(src_v4, np.uint64(V4_MAPPED), np.uint64(0)))
    for name in SOURCE_FIELDS:
        col = np.concatenate([c[name] for c in rows.counts])
        if name not in ("packets", "bytes", "drops"):
            col = np.where(denied, np.uint64(0), col)
        np.add.at(src[name], inverse, col)
    # destinations: the protected ones' totals
    totals: dict[str, dict[str, int]] = {}
    for d, counts, protected in zip(rows.dst, rows.counts, rows.protected, strict=True):
        if not protected:
            continue
        acc = totals.setdefault(d, dict.fromkeys(DESTINATION_FIELDS, 0))
        for name in DESTINATION_FIELDS:
            acc[name] += int(counts[name].sum())
    dest = np.zeros(len(totals), DESTINATION_DTYPE)
    for j, (d, acc) in enumerate(sorted(totals.items())):
        dest["addr_hi"][j], dest["addr_lo"][j] = address_words(d)
        for name, value in acc.items():
            dest[name][j] = value
    del first
    return Sample(t, dt, src, dest)


# --- the incident's traffic ------------------------------------------------------

WEB_MIX: Mapping[str, float] = {"syn": 0.05, "ack": 0.9}


def background(dst: str, clients: int = 200, pps: float = 4.0, first: str = "172.16.0.1",
               mix: Mapping[str, float] = WEB_MIX) -> Traffic:
    """Legitimate clients of a web service: mostly ACKs, a few SYNs."""
    return Traffic(v4_block(first, clients), dst, pps, mix, size=700)


def bots(count: int, first: str = "198.18.0.1") -> Words:
    return v4_block(first, count)


def mirai_syn(dst: str = VICTIM, count: int = 500, pps: float = 2000.0, start: float = 5.0,
              stop: float = 20.0, dropped_from: float = math.inf) -> Traffic:
    """A Mirai-style SYN flood from ``count`` bots (fixed addresses)."""
    return Traffic(bots(count), dst, pps, {"syn": 1.0}, size=60, start=start, stop=stop,
                   dropped_from=dropped_from)


def spoofed_syn(dst: str = VICTIM, pps: float = 200_000.0, start: float = 5.0, stop: float = 20.0,
                dropped_from: float = math.inf) -> Spoofed:
    """A random-spoofed SYN flood: every packet from a new source."""
    return Spoofed(dst, pps, {"syn": 1.0}, size=60, start=start, stop=stop, dropped_from=dropped_from)


def ntp_reflection(dst: str = VICTIM, count: int = 300, pps: float = 3000.0, start: float = 5.0,
                   stop: float = 20.0, dropped_from: float = math.inf) -> Traffic:
    """NTP monlist answers (468 bytes, UDP source port 123) from ``count`` reflectors."""
    return Traffic(v4_block("100.64.0.1", count), dst, pps, {"udp": 1.0, "refl": 1.0}, size=468,
                   start=start, stop=stop, dropped_from=dropped_from)


def http_proxy(dst: str = VICTIM, count: int = 2000, pps: float = 5.0, start: float = 5.0,
               stop: float = 20.0, dropped_from: float = math.inf) -> Traffic:
    """An HTTP flood through ``count`` open proxies, each a well-behaved TCP client at ``pps``."""
    return Traffic(v4_block("198.19.0.1", count), dst, pps, {"syn": 0.1, "ack": 0.8}, size=300,
                   start=start, stop=stop, dropped_from=dropped_from)


def wave(dt: float = 1.0, duration: float = 45.0, *floods: Traffic | Spoofed,
         victims: Sequence[str] = (VICTIM,)) -> list[Sample]:
    """Legitimate background on every victim plus ``floods``."""
    bg = [background(v, first=f"172.16.{i}.1") for i, v in enumerate(victims)]
    return record(duration, dt, [*bg, *floods])
