"""Protected prefixes and reflection ports: what the data plane counts per
destination.

Configuration, not policy: written directly (slot byte 0, no swap), under
the pin directory's lock. The "protected prefixes configured" bits in
``config.flags`` are set before the first entry and cleared after the last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from ..addresses import Prefix
from ..errors import InputError
from . import abi
from .pinned import MapSet
from .swap import lpm_key

__all__ = ["REFLECTION_PORTS", "protected", "set_protected", "set_reflection_ports"]

# UDP source ports of the amplification protocols, with the usual name and
# amplification factor: the refl_ports map marks them, the reflection preset
# and the planner name rules after them.
REFLECTION_PORTS: Final[Mapping[int, str]] = MappingProxyType(
    {
        17: "qotd",  # Quote of the Day: a quote per datagram, ~140x
        19: "chargen",  # Character Generator: random characters, ~359x
        53: "dns",  # DNS: open resolvers, ANY/DNSSEC answers, 28-54x
        111: "portmap",  # ONC RPC portmapper/rpcbind: program list, 7-28x
        123: "ntp",  # NTP: the monlist command, ~557x
        137: "netbios",  # NetBIOS name service: node status, ~4x
        161: "snmp",  # SNMPv2: GetBulk with public communities, ~6x
        389: "cldap",  # Connectionless LDAP (Active Directory): rootDSE, 56-70x
        427: "slp",  # Service Location Protocol (CVE-2023-29552): up to ~2200x
        520: "ripv1",  # RIPv1: routing table requests, ~131x
        1434: "mssql",  # MS SQL Server Resolution Protocol: the instance list
        1900: "ssdp",  # SSDP/UPnP discovery on home routers, ~31x
        3283: "ard",  # Apple Remote Desktop: status query, ~35x
        3702: "ws-discovery",  # WS-Discovery (cameras, printers): 10-500x
        5353: "mdns",  # multicast DNS answering from the internet, 2-10x
        5683: "coap",  # CoAP (IoT devices), 10-50x
        10001: "ubiquiti",  # Ubiquiti device discovery: device details
        11211: "memcached",  # memcached over UDP: stored values, 10000-51000x
        37810: "dvr",  # DVR DHCPDiscover (network video recorders, cameras)
    }
)


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
