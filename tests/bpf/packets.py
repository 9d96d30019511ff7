"""Packet builders for the data-plane tables.

scapy builds the well-formed frames; the few it will not build (a frame cut
at an arbitrary byte, an IPv6 extension chain of a chosen length, a raw AH
or mobility header) are assembled from bytes here. Addresses are from the
benchmarking ranges 198.18.0.0/15 and the documentation range 2001:db8::/32.
"""

from __future__ import annotations

import logging
from typing import Any

from scapy.layers.inet import IP, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

__all__ = [
    "DST4",
    "DST6",
    "ND_TYPES",
    "SRC4",
    "SRC6",
    "ah",
    "arp",
    "eth",
    "frame",
    "ip4",
    "ip6",
    "ipv4_with_options",
    "ipv6_chain",
    "lldp",
    "mobility",
    "nd",
]

MAC_SRC = "02:00:5e:00:00:01"
MAC_DST = "02:00:5e:00:00:02"
SRC4 = "198.18.0.10"
DST4 = "198.19.255.1"
SRC6 = "2001:db8:0:1::10"
DST6 = "2001:db8:ffff::1"

ETH_P_LLDP = 0x88CC
PROTO_UDP = 17
PROTO_DSTOPTS = 60
PROTO_AH = 51
PROTO_MH = 135

# ICMPv6 neighbour discovery: RS, RA, NS, NA, redirect (RFC 4861).
ND_TYPES = {
    133: ICMPv6ND_RS,
    134: ICMPv6ND_RA,
    135: ICMPv6ND_NS,
    136: ICMPv6ND_NA,
    137: ICMPv6ND_Redirect,
}


def eth(**kw: Any) -> Packet:
    return Ether(src=MAC_SRC, dst=MAC_DST, **kw)


def ip4(src: str = SRC4, dst: str = DST4, **kw: Any) -> Packet:
    return IP(src=src, dst=dst, **kw)


def ip6(src: str = SRC6, dst: str = DST6, **kw: Any) -> Packet:
    return IPv6(src=src, dst=dst, **kw)


def frame(*layers: Packet | bytes) -> bytes:
    """An Ethernet frame of ``layers`` stacked in order, as bytes."""
    pkt = eth()
    for layer in layers:
        pkt = pkt / (Raw(layer) if isinstance(layer, bytes) else layer)
    return bytes(pkt)


def ipv4_with_options(ihl: int, l4: Packet) -> bytes:
    """IPv4 with ``ihl`` 32-bit words of header (NOP options), then ``l4``."""
    raw = frame(ip4(options=[IPOption_NOP()] * (4 * (ihl - 5))), l4)
    assert raw[14] & 0x0F == ihl, "scapy did not build the IHL asked for"
    return raw


def ipv6_chain(count: int, l4: Packet | bytes, last_nh: int = PROTO_UDP) -> bytes:
    """IPv6 with ``count`` 8-byte destination-options headers, then ``l4``."""
    chain = b""
    for i in range(count):
        nh = PROTO_DSTOPTS if i < count - 1 else last_nh
        chain += bytes([nh, 0]) + bytes([1, 4, 0, 0, 0, 0])  # PadN over 6 bytes
    return frame(ip6(nh=PROTO_DSTOPTS if count else last_nh), chain + bytes(l4))


def ah(nh: int = PROTO_UDP, icv: int = 12) -> bytes:
    """An authentication header (RFC 4302): length in 4-byte units minus 2."""
    size = 12 + icv
    return bytes([nh, size // 4 - 2, 0, 0]) + (0x100).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(icv)


def mobility(nh: int = PROTO_UDP) -> bytes:
    """A minimal 8-byte mobility header (protocol 135), walked as an extension."""
    return bytes([nh, 0, 0, 0, 0, 0, 0, 0])


def nd(icmp_type: int, hlim: int = 255, src: str = SRC6) -> bytes:
    """An ICMPv6 neighbour-discovery message of ``icmp_type``."""
    return frame(ip6(src=src, hlim=hlim), ND_TYPES[icmp_type]())


def arp(*tags: Packet) -> bytes:
    pkt = eth()
    for tag in tags:
        pkt = pkt / tag
    return bytes(pkt / ARP(hwsrc=MAC_SRC, psrc=SRC4, pdst=DST4))


def lldp() -> bytes:
    """A minimal LLDPDU: chassis id, port id, TTL, end."""
    tlvs = bytes.fromhex("0207 04 02005e000001") + bytes.fromhex("0403 05 6531") + bytes.fromhex(
        "0602 0078") + bytes(2)
    return bytes(eth(type=ETH_P_LLDP) / Raw(tlvs))
