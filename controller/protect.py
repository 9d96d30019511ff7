"""Protected prefixes and reflection ports: what the data plane counts per
destination.

Configuration, not policy: written directly (slot byte 0, no swap), under
the pin directory's lock. The "protected prefixes configured" bits in
``config.flags`` are set before the first entry and cleared after the last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from . import abi
from .addresses import Prefix
from .bpfmap import MapSet
from .errors import InputError
from .presets import REFLECTION_PORTS
from .swap import lpm_key

__all__ = ["protected", "set_protected", "set_reflection_ports"]


def protected(maps: MapSet) -> list[Prefix]:
    """The protected prefixes configured now."""
    out: list[Prefix] = []
    for name in ("protect_v4", "protect_v6"):
        m = maps[name]
        keys, _, n = m.read_all()
        ksz = m.spec.key_size
        alen = 4 if name.endswith("v4") else 16
        for i in range(n):
            k = keys[i * ksz : (i + 1) * ksz]
            out.append(Prefix.from_parts(k[5 : 5 + alen], int.from_bytes(k[:4], "little") - 8))
    return sorted(out, key=lambda p: (p.family, p))


def set_protected(maps: MapSet, prefixes: Sequence[Prefix]) -> None:
    """Make ``prefixes`` the protected set (replacing the previous one)."""
    want = {"protect_v4": [p for p in prefixes if p.family == 4],
            "protect_v6": [p for p in prefixes if p.family == 6]}
    with maps.locked():
        cfg = maps.config()
        for name, ps in want.items():
            if ps:
                cfg.flags |= abi.PROTECT_FLAGS[name]
        maps.write_config(cfg)
        for name, ps in want.items():
            m = maps[name]
            wanted = {lpm_key(name, 0, (p.network.prefixlen, p.network.network_address.packed))
                      for p in ps}
            current = set(m.keys())
            m.delete_many(sorted(current - wanted))
            new = sorted(wanted - current)
            m.insert_new(new, [bytes(4)] * len(new))
        cfg = maps.config()
        for name, ps in want.items():
            if not ps:
                cfg.flags &= ~abi.PROTECT_FLAGS[name]
        maps.write_config(cfg)


def set_reflection_ports(maps: MapSet, ports: Iterable[int] | None = None) -> None:
    """Mark the UDP source ports counted as reflection (default: the preset's)."""
    chosen = sorted(REFLECTION_PORTS) if ports is None else sorted(set(ports))
    values = np.zeros(65536, dtype="<u4")
    for p in chosen:
        if not 0 <= p <= 65535:
            raise InputError(f"reflection port {p}: out of range 0..65535")
        values[p] = 1
    keys = np.arange(65536, dtype="<u4")
    maps["refl_ports"].update_packed(keys.tobytes(), values.tobytes(), 65536)
