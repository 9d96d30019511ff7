"""Addresses and prefixes as operators type them, and as map keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import InputError

__all__ = ["Prefix", "parse_prefix"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class Prefix:
    """An IPv4 or IPv6 prefix; a /32 or /128 is an exact address."""

    network: Network

    @property
    def family(self) -> int:
        return self.network.version

    @property
    def is_exact(self) -> bool:
        return self.network.prefixlen == self.network.max_prefixlen

    @property
    def slug(self) -> str:
        """The prefix as a piece of an id (``198-51-100-0-24``): rule and
        attack ids built from it agree between the agent and the fleet."""
        return str(self).replace(":", "-").replace(".", "-").replace("/", "-")

    def exact_key(self) -> bytes:
        """Key of the exact-address hash maps: the address, network order."""
        return self.network.network_address.packed

    @classmethod
    def from_parts(cls, addr: bytes, prefixlen: int) -> Prefix:
        """From a network address (4 or 16 bytes) and a prefix length."""
        net: Network = (
            ipaddress.IPv4Network((addr, prefixlen)) if len(addr) == 4
            else ipaddress.IPv6Network((addr, prefixlen))
        )
        return cls(net)

    @classmethod
    def from_exact_key(cls, key: bytes) -> Prefix:
        net: Network = (
            ipaddress.IPv4Network((key, 32)) if len(key) == 4 else ipaddress.IPv6Network((key, 128))
        )
        return cls(net)

    def __str__(self) -> str:
        return str(self.network.network_address) if self.is_exact else str(self.network)


def parse_prefix(text: str, field: str = "prefix") -> Prefix:
    """Parse ``198.18.0.1``, ``198.18.0.0/24``, ``2001:db8::/32``.

    Host bits set after the prefix length are an error (``198.18.0.5/24``
    is refused, naming ``198.18.0.0/24``): a typo there would block a
    different range than the operator meant.
    """
    raw = text.strip()
    if not raw:
        raise InputError(f"{field}: empty; expected an IPv4/IPv6 address or prefix")
    try:
        net = ipaddress.ip_network(raw, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise InputError(
                f"{field}: {raw!r} is not an IPv4/IPv6 address or prefix"
            ) from exc
        raise InputError(
            f"{field}: {raw!r} has host bits set; did you mean {loose}?"
        ) from exc
    return Prefix(net)
