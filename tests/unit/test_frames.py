"""controller.lab.frames: every crafted flood frame is what scapy would build.

The floods patch checksums per source address (RFC 1624) instead of
building each frame; a wrong patch would have the receiving stack drop
the frames after XDP counted them, and a test would measure the wrong
thing. Each vector's frames are compared byte for byte with scapy's
own checksums, and :func:`frames.verify` must agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from controller.lab import frames

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"
DST = "198.18.0.1"
SOURCES = frames.addresses("198.18.64.0/18", 2000, seed=7)

Build = Callable[[np.ndarray], list[bytes]]
VECTORS: list[tuple[str, Build]] = [
    ("udp", lambda s: frames.udp_frames(SRC_MAC, DST_MAC, s, DST, 8053)),
    ("reflection", lambda s: frames.udp_frames(SRC_MAC, DST_MAC, s, DST, 8053, sport=123)),
    ("syn", lambda s: frames.tcp_frames(SRC_MAC, DST_MAC, s, DST, 80)),
    ("ack", lambda s: frames.tcp_frames(SRC_MAC, DST_MAC, s, DST, 443, flags="A")),
    ("icmp", lambda s: frames.icmp_frames(SRC_MAC, DST_MAC, s, DST)),
    ("gre", lambda s: frames.gre_frames(SRC_MAC, DST_MAC, s, DST)),
    ("fragment", lambda s: frames.fragment_frames(SRC_MAC, DST_MAC, s, DST)),
]


def _rebuilt(frame: bytes) -> bytes:
    """The frame with scapy recomputing every checksum it owns."""
    pkt = Ether(frame)
    fresh = pkt.copy()
    del fresh[IP].chksum
    if pkt[IP].frag == 0 and pkt[IP].proto != 47:
        for layer in (UDP, TCP, ICMP):
            if layer in fresh:
                del fresh[layer].chksum
    return bytes(Ether(bytes(fresh)))


@pytest.mark.parametrize(("name", "build"), VECTORS, ids=[v[0] for v in VECTORS])
def test_frames_match_scapy(name: str, build: Build) -> None:
    batch = build(SOURCES)
    assert len(batch) == len(SOURCES)
    for frame, src in zip(batch, SOURCES, strict=True):
        frames.verify(frame)
        assert Ether(frame)[IP].src == frames.dotted(int(src))
    for frame in batch[:: len(batch) // 50]:
        assert _rebuilt(frame) == frame, name


def test_vector_headers() -> None:
    syn = Ether(frames.tcp_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST, 80)[0])
    assert syn[TCP].flags == "S" and syn[TCP].dport == 80
    ack = Ether(frames.tcp_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST, 80, flags="A")[0])
    assert ack[TCP].flags == "A"
    refl = Ether(frames.udp_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST, 9, sport=53)[0])
    assert refl[UDP].sport == 53
    frag = Ether(frames.fragment_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST)[0])
    assert frag[IP].frag == 185 and frag[IP].flags == "MF"
    gre = Ether(frames.gre_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST)[0])
    assert gre[IP].proto == 47


def test_verify_catches_a_bad_checksum() -> None:
    frame = bytearray(frames.udp_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST, 8053)[0])
    frame[-1] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        frames.verify(bytes(frame))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="TCP flag"):
        frames.tcp_frames(SRC_MAC, DST_MAC, SOURCES[:1], DST, 80, flags="X")
    with pytest.raises(ValueError, match="too few"):
        frames.addresses("198.18.0.0/30", 5)
    assert frames.udp_frames(SRC_MAC, DST_MAC, SOURCES[:0], DST, 1) == []
