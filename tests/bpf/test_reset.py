"""The ``dp`` fixture's reset: after a rule set with every kind of entry,
signature and bucket has seen traffic, nothing of it is left."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP

from controller.dataplane import attach as dataplane

from .conftest import ENTRY_MAPS, XDP_PASS, ZEROED_ARRAYS, DataPlane
from .packets import SRC4, SRC6, frame, ip4, ip6
from .rulesets import enforce_rules, rule

pytestmark = pytest.mark.bpf


def test_reset_leaves_nothing_behind(dp: DataPlane) -> None:
    enforce_rules(dp.maps, [
        rule("deny", "drop", src=["203.0.113.7", "2001:db8:9::7", "203.0.112.0/24", "2001:db8:8::/48"]),
        rule("allow", "allow", src=["192.0.2.0/24", "2001:db8:7::/48"]),
        rule("sig", "drop", protocol="udp", dport=53, src=["198.18.0.0/16", "2001:db8::/32"],
             dst=["198.19.0.0/16", "2001:db8:ffff::/48"]),
        rule("agg", {"kind": "rate_limit", "pps": 10, "burst_packets": 1}, protocol="tcp"),
        rule("per-src", {"kind": "rate_limit", "pps": 10, "scope": "per_source"}, protocol="udp"),
    ], management=["198.51.100.0/24"])
    dataplane.set_flags(dp.maps, monitor=True, pass_malformed=True)
    for packet in (frame(ip4(), UDP(dport=53)), frame(ip4(), TCP()), frame(ip4(), UDP(dport=9)),
                   frame(ip6(), UDP(dport=9)), frame(ip4(src="203.0.113.7"), UDP()),
                   frame(ip4(proto=17), b"\x00")):
        dp.run(packet)
    assert not dp.maps.is_empty("rl_src") and not dp.maps.is_empty("src_v4")
    cfg = dp.config()
    assert cfg.gen and cfg.flags

    dp.reset()
    for name in ENTRY_MAPS:
        assert dp.maps.is_empty(name), name
    for name in ZEROED_ARRAYS:
        _, values, n = dp.maps[name].read_all()
        assert n == dp.maps[name].max_entries and not any(values), name
    cfg = dp.config()
    assert (cfg.flags, cfg.gen) == (0, 0)
    assert dp.run(frame(ip4(src=SRC4), UDP(dport=53))) == XDP_PASS
    assert dp.run(frame(ip6(src=SRC6), TCP())) == XDP_PASS
