"""Challenged TCP services: which destinations and ports the data plane
answers SYNs for under a flood, and at which rates (``bpf/challenge.h``).

Configuration, not policy: written directly into ``chal_v4`` (no swap),
under the pin directory's lock, like the protected prefixes
(:mod:`.protect`). The "challenged services configured" bit in
``config.flags`` is set before the first entry and cleared after the last.
The verified sources, flows and meters the program keeps are read here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..addresses import Prefix
from ..errors import InputError
from . import abi
from .pinned import MapSet

__all__ = [
    "DEFAULT_ACK_PPS",
    "DEFAULT_HOLD",
    "DEFAULT_SYN_PPS",
    "DEFAULT_VERIFIED_TTL",
    "Service",
    "challenged",
    "service_key",
    "set_challenged",
    "state_counts",
]

DEFAULT_SYN_PPS: Final = 1000
"""SYNs/s to one destination:port above which its SYNs are challenged."""
DEFAULT_ACK_PPS: Final = 5000
"""Packets/s of connections not seen open above which unknown ACKs are dropped."""
DEFAULT_HOLD: Final = 10.0
"""Seconds challenge mode stays on after the rates fell back under their thresholds."""
DEFAULT_VERIFIED_TTL: Final = 300.0
"""Seconds a source that answered a challenge stays verified."""

_NS = 1_000_000_000


@dataclass(frozen=True, order=True)
class Service:
    """One challenged TCP service: a destination prefix (IPv4) and port.

    A rate of 0 means "always under challenge"."""

    prefix: Prefix
    port: int
    syn_pps: int = DEFAULT_SYN_PPS
    ack_pps: int = DEFAULT_ACK_PPS
    hold: float = DEFAULT_HOLD
    verified_ttl: float = DEFAULT_VERIFIED_TTL

    def __post_init__(self) -> None:
        if self.prefix.family != 4:
            raise InputError(f"challenge {self.prefix}: only IPv4 services can be challenged so far")
        if not 1 <= self.port <= 65535:
            raise InputError(f"challenge {self.prefix} port {self.port}: out of range 1..65535")
        for name in ("syn_pps", "ack_pps"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFFFFFF:
                raise InputError(f"challenge {self.prefix} {name}: {value} out of range 0..{0xFFFFFFFF}")
        for name in ("hold", "verified_ttl"):
            value = getattr(self, name)
            if not 0 < value <= 86400:
                raise InputError(f"challenge {self.prefix} {name}: {value} out of range (0, 86400] seconds")

    def value(self) -> bytes:
        return bytes(abi.ChalService(self.syn_pps, self.ack_pps, round(self.hold * _NS),
                                     round(self.verified_ttl * _NS)))


def service_key(prefix: Prefix, port: int) -> bytes:
    """Key of ``chal_v4``: port (network order), then the prefix."""
    k = abi.ChalLpmV4()
    k.prefixlen = 16 + prefix.network.prefixlen
    k.port[:] = list(port.to_bytes(2, "big"))
    k.addr[:] = list(prefix.network.network_address.packed)
    return bytes(k)


def challenged(maps: MapSet) -> list[Service]:
    """The challenged services configured now."""
    m = maps["chal_v4"]
    keys, values, n = m.read_all()
    ksz, vsz = m.spec.key_size, m.spec.value_size
    out = []
    for i in range(n):
        k = abi.ChalLpmV4.from_buffer_copy(keys[i * ksz : (i + 1) * ksz])
        v = abi.ChalService.from_buffer_copy(values[i * vsz : (i + 1) * vsz])
        prefix = Prefix.from_parts(bytes(k.addr), k.prefixlen - 16)
        out.append(Service(prefix, int.from_bytes(bytes(k.port), "big"),
                           v.syn_pps, v.ack_pps, v.hold_ns / _NS, v.verified_ttl_ns / _NS))
    return sorted(out)


def set_challenged(maps: MapSet, services: Sequence[Service]) -> None:
    """Make ``services`` the challenged set (replacing the previous one).

    Two services with the same prefix and port are an error; nothing is
    written then."""
    wanted: dict[bytes, bytes] = {}
    for s in services:
        key = service_key(s.prefix, s.port)
        if key in wanted:
            raise InputError(f"challenge {s.prefix} port {s.port}: listed twice")
        wanted[key] = s.value()
    m = maps["chal_v4"]
    if len(wanted) > m.max_entries:
        raise InputError(f"challenge: {len(wanted)} services do not fit chal_v4 "
                         f"({m.max_entries} entries: raise [sizes] challenge)")
    with maps.locked():
        if wanted:
            cfg = maps.config()
            cfg.flags |= abi.CFG_TRIE_CHALLENGE_V4
            maps.write_config(cfg)
        current = set(m.keys())
        m.delete_many(sorted(current - set(wanted)))
        for key, value in wanted.items():
            m.update(key, value)
        if not wanted:
            cfg = maps.config()
            cfg.flags &= ~abi.CFG_TRIE_CHALLENGE_V4
            maps.write_config(cfg)


def state_counts(maps: MapSet) -> dict[str, int]:
    """How many verified sources, flows and metered destinations the program holds."""
    return {name: maps[name].count() for name in ("verified_v4", "flows_v4", "chal_meter_v4")}
