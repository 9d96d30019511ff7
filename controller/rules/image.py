"""From a compiled rule set to map contents (:class:`controller.dataplane.swap.Image`).

The signature stage is a bit-vector classifier: signature *i* is bit *i* in
every dimension's bitmap (protocol, source port, destination port, source
prefix, destination prefix, TCP flags byte, IP length, fragment); the AND of
a packet's lookups is the set of signatures it matches, and the lowest set
bit (evaluation order) decides.
"""

from __future__ import annotations

import numpy as np

from ..dataplane import abi
from ..dataplane.swap import Image, SigImage, TrieKey
from .compiler import CompiledSet, RateSpec, Signature

__all__ = ["build_image", "gcra_params", "sig_image"]

ACTIONS = {"drop": abi.SIG_DROP, "rate_limit": abi.SIG_RATE_LIMIT, "allow": abi.SIG_ALLOW,
           "monitor": abi.SIG_MONITOR}
NS_PER_S = 1_000_000_000
FIXED_ONE = 1 << 32  # 32.32 fixed point of the per-byte cost


def gcra_params(rate: RateSpec) -> tuple[int, int, int, int]:
    """(pkt_cost, pkt_tol, byte_cost, byte_tol) of ``struct bw_sig``.

    A packet costs 1e9/pps ns of the rule's schedule and fits when, its cost
    added, the schedule runs at most ``tol`` ahead of now: a burst of B
    packets is ``tol`` = B costs. Bytes (IP length) cost 8e9/bps ns each
    (32.32 fixed point), and a burst may run burst_bytes worth ahead.
    """
    pkt_cost = pkt_tol = byte_cost = byte_tol = 0
    if rate.pps:
        pkt_cost = max(1, round(NS_PER_S / rate.pps))
        pkt_tol = pkt_cost * max(1, rate.burst_packets or 1)
    if rate.bps:
        ns_per_byte = 8 * NS_PER_S / rate.bps
        byte_cost = max(1, round(ns_per_byte * FIXED_ONE))
        byte_tol = round(ns_per_byte * (rate.burst_bytes or 1500))
    return pkt_cost, pkt_tol, byte_cost, byte_tol


def _sig(s: Signature) -> abi.Sig:
    out = abi.Sig()
    out.rule_id = s.slot
    out.action = ACTIONS[s.action]
    if s.rate is not None:
        out.flags = abi.SIG_PER_SOURCE if s.rate.per_source else 0
        out.pkt_cost, out.pkt_tol, out.byte_cost, out.byte_tol = gcra_params(s.rate)
    return out


WORD = 0xFFFFFFFFFFFFFFFF


def _words(mask: int) -> list[int]:
    return [(mask >> (64 * w)) & WORD for w in range(abi.SIG_WORDS)]


def _bits_array(n: int, default: int, overrides: dict[int, int]) -> bytes:
    """``n`` packed ``struct bw_bits``, ``default`` except at ``overrides``."""
    words = np.zeros((n, abi.SIG_WORDS), dtype="<u8")
    words[:] = _words(default)
    for i, mask in overrides.items():
        words[i] = _words(mask)
    return words.tobytes()


def _tcpflags_array(sigs: tuple[Signature, ...]) -> tuple[bytes, int]:
    """Bits by TCP flags byte, and the bits of signatures with no flags test."""
    free = sum(s.bit for s in sigs if s.tcp_flags is None)
    table = {}
    for flags in range(256):
        table[flags] = free | sum(s.bit for s in sigs
                                  if s.tcp_flags is not None and s.tcp_flags.matches(flags))
    return _bits_array(256, free, table), free


def _length_array(sigs: tuple[Signature, ...]) -> bytes:
    """Bits by IP length: every signature whose length range holds it."""
    words = np.zeros((65536, abi.SIG_WORDS), dtype="<u8")
    words[:] = _words(sum(s.bit for s in sigs if s.length is None))
    for s in sigs:
        if s.length is not None:
            lo, hi = s.length
            word, bit = divmod(s.index, 64)
            words[lo : hi + 1, word] |= np.uint64(1 << bit)
    return words.tobytes()


def sig_image(compiled: CompiledSet) -> SigImage:
    """The signature stage of ``compiled`` for one slot."""
    sigs = [_sig(s) for s in compiled.signatures]
    meta = abi.SigMeta()
    tries: dict[str, dict[TrieKey, bytes]] = {}
    for dim in ("src", "dst"):
        for fam_index, fam in enumerate((4, 6)):
            pb = compiled.prefix_bits(dim, fam)
            getattr(meta, f"{dim}_any")[fam_index] = abi.Bits.of(pb.any_bits)
            tries[f"sig_{dim}_v{fam}"] = {
                (p.network.prefixlen, p.network.network_address.packed): bytes(abi.Bits.of(bits))
                for p, bits in pb.entries
            }
    proto = compiled.proto_bits()
    sport = compiled.port_bits("sport")
    dport = compiled.port_bits("dport")
    tcpflags, notcp = _tcpflags_array(compiled.signatures)
    sg = compiled.signatures
    meta.noport = abi.Bits.of(sport.noport_bits & dport.noport_bits)
    meta.notcp = abi.Bits.of(notcp)
    meta.frag_yes = abi.Bits.of(sum(s.bit for s in sg if s.fragment in ("any", "yes")))
    meta.frag_no = abi.Bits.of(sum(s.bit for s in sg if s.fragment in ("any", "no")))
    meta.monitor = abi.Bits.of(sum(s.bit for s in sg if s.action == "monitor"))
    return SigImage(sigs, meta, {
        "sig_proto": _bits_array(256, proto.any_bits, proto.per_proto),
        "sig_sport": _bits_array(65536, sport.default_bits, sport.per_port),
        "sig_dport": _bits_array(65536, dport.default_bits, dport.per_port),
        "sig_tcpflags": tcpflags,
        "sig_len": _length_array(sg),
    }, tries)


def build_image(compiled: CompiledSet) -> Image:
    """Every policy map's contents for ``compiled``."""
    exact: dict[str, dict[bytes, int]] = {"deny_v4": {}, "deny_v6": {}}
    tries: dict[str, dict[TrieKey, bytes]] = {
        "allow_v4": {}, "allow_v6": {}, "deny_pfx_v4": {}, "deny_pfx_v6": {},
    }
    for d in compiled.deny:
        fam = f"v{d.prefix.family}"
        if d.prefix.is_exact:
            exact[f"deny_{fam}"][d.prefix.exact_key()] = d.slot
        else:
            key = (d.prefix.network.prefixlen, d.prefix.network.network_address.packed)
            tries[f"deny_pfx_{fam}"][key] = bytes(abi.RuleRef(d.slot, 0))
    for a in compiled.allow:
        key = (a.prefix.network.prefixlen, a.prefix.network.network_address.packed)
        tries[f"allow_v{a.prefix.family}"][key] = bytes(
            abi.RuleRef(a.slot, abi.ALLOW_MGMT if a.management else 0))
    return Image(exact, tries, sig_image(compiled))


