"""Spoofed-source frames for the raw-socket floods (``traffic.RawFlood``).

One Ethernet/IPv4/UDP frame is built with scapy; copies of it get other
source addresses, with both checksums patched (RFC 1624: a checksum over
the template plus the new address words), in numpy. :func:`check_sample`
has scapy recompute the checksums of some frames, so the patching is
verified on every use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

ETH_LEN = 14
IP_SRC = ETH_LEN + 12  # offset of the IPv4 source address
IP_CSUM = ETH_LEN + 10
UDP_CSUM = ETH_LEN + 20 + 6
SPORT = 40000
PAYLOAD = b"spoofed-flood-32-bytes-payload.."


def addresses(network: str, count: int, *, skip: Sequence[str] = (), seed: int | None = None,
              offset: int = 0) -> np.ndarray:
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


def _fold(total: np.ndarray) -> np.ndarray:
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(buf: np.ndarray) -> int:
    """One's-complement sum of 16-bit big-endian words (even length)."""
    return int(buf[0::2].astype(np.uint64).sum() * 256 + buf[1::2].astype(np.uint64).sum())


def udp_frames(src_mac: str, dst_mac: str, sources: np.ndarray, dst: str, dport: int) -> list[bytes]:
    """One UDP datagram to ``dst``:``dport`` from each address of ``sources``
    (uint32), as Ethernet frames ``src_mac`` → ``dst_mac``."""
    tmpl = Ether(src=src_mac, dst=dst_mac) / IP(src="0.0.0.0", dst=dst, ttl=64, id=1) / \
        UDP(sport=SPORT, dport=dport) / Raw(PAYLOAD)
    t = bytearray(bytes(tmpl))
    t[IP_CSUM : IP_CSUM + 2] = b"\0\0"
    t[UDP_CSUM : UDP_CSUM + 2] = b"\0\0"
    base = np.frombuffer(bytes(t), dtype=np.uint8)
    udp_len = len(t) - ETH_LEN - 20
    # Sums with the source address at zero; each frame adds its own address words.
    ip_base = _words(base[ETH_LEN : ETH_LEN + 20])
    pseudo = base[IP_SRC + 4 : IP_SRC + 8]  # destination address
    segment = base[ETH_LEN + 20 :]
    if udp_len % 2:
        segment = np.append(segment, np.uint8(0))
    udp_base = _words(pseudo) + 17 + udp_len + _words(segment)
    src = sources.astype(np.uint64)
    addr_words = (src >> 16) + (src & 0xFFFF)
    ip_csum = (~_fold(ip_base + addr_words)) & 0xFFFF
    udp_csum = (~_fold(udp_base + addr_words)) & 0xFFFF
    udp_csum[udp_csum == 0] = 0xFFFF
    out = np.tile(base, (len(sources), 1))
    out[:, IP_SRC : IP_SRC + 4] = sources.astype(">u4").view(np.uint8).reshape(-1, 4)
    out[:, IP_CSUM : IP_CSUM + 2] = ip_csum.astype(">u2").view(np.uint8).reshape(-1, 2)
    out[:, UDP_CSUM : UDP_CSUM + 2] = udp_csum.astype(">u2").view(np.uint8).reshape(-1, 2)
    return [row.tobytes() for row in out]


def check_sample(frames: Sequence[bytes], n: int = 16) -> None:
    """Scapy recomputes the checksums of ``n`` frames spread over the list."""
    for i in np.linspace(0, len(frames) - 1, num=min(n, len(frames)), dtype=int):
        pkt = Ether(frames[i])
        fresh = pkt.copy()
        del fresh[IP].chksum
        del fresh[UDP].chksum
        fresh = Ether(bytes(fresh))
        assert (pkt[IP].chksum, pkt[UDP].chksum) == (fresh[IP].chksum, fresh[UDP].chksum), i


def dotted(addr: int) -> str:
    return str(ipaddress.IPv4Address(int(addr)))
