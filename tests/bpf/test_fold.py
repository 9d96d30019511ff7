"""A removed exact deny entry hands its hits to its source's counters: the
per-source totals never go back when a swap removes the entry."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from controller.addresses import parse_prefix
from controller.dataplane import counters
from controller.dataplane import entries as policy

from .conftest import DataPlane

pytestmark = pytest.mark.bpf

SRC = "198.18.0.3"


def test_removed_deny_entry_folds_into_the_source(dp: DataPlane) -> None:
    pkt = bytes(Ether() / IP(src=SRC, dst="198.19.0.1") / UDP(sport=1000, dport=2000))
    policy.add(dp.maps, "deny", [policy.Entry(parse_prefix(SRC), 1)])
    for _ in range(5):
        assert dp.run(pkt) == 1  # XDP_DROP
    before = counters.read_sources(dp.maps).lookup(SRC)
    assert before is not None and before["drops"] == 5
    policy.remove(dp.maps, "deny", [parse_prefix(SRC)])
    after = counters.read_sources(dp.maps, include_denied=False).lookup(SRC)
    assert after is not None and after["packets"] == 5 and after["drops"] == 5
    assert dp.run(pkt) == 2  # XDP_PASS: no longer denied
    merged = counters.read_sources(dp.maps).lookup(SRC)
    assert merged is not None and merged["packets"] == 6 and merged["drops"] == 5
