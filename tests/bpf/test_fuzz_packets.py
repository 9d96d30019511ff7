"""Property-based fuzzing of the real XDP program through BPF_PROG_TEST_RUN.

A random rule set (allow and deny entries, signatures, management prefixes:
:func:`tests.bpf.test_reference.random_rules`) is swapped in; hypothesis
sends frames seeded from real headers (:func:`tests.bpf.test_reference.random_case`:
IPv4/IPv6, VLAN, extension headers, fragments, TCP/UDP/SCTP/ICMP/GRE) and
mutates them: cut at any byte, header bytes overwritten, a bad IHL, IPv4
and IPv6 lengths at their edges, fragment fields, VLAN/QinQ stacks up to
five tags (past the parser's two), IPv6 extension-header chains of any
length and kind, GRE around the packet, long tails; plus plain random
frames behind a chosen EtherType. Every mode is run: enforcing, monitor,
pass-malformed, and with the SYN challenge armed (XDP_TX). The properties,
packet by packet:

- the test run itself never fails (the verifier accepted the program once;
  at run time nothing may abort), and the action is XDP_PASS, XDP_DROP or
  XDP_TX, never XDP_ABORTED or anything else;
- exactly one reason counter moves, by one packet and the frame's bytes,
  and the action is the one that reason means in that mode (XDP_TX only
  for a challenged SYN);
- an unmutated frame gets the reference model's verdict
  (:meth:`controller.rules.compiler.CompiledSet.evaluate`);
- at the end, the reason counters add up to the packets sent, and so do
  the action counters.

CI runs about 20k frames; ``make fuzz`` (``BREAKWATER_FUZZ_SCALE``) many more.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.addresses import parse_prefix
from controller.dataplane import abi
from controller.dataplane import attach as dataplane
from controller.dataplane import libbpf as lb
from controller.dataplane.challenge import Service, set_challenged
from controller.dataplane.reasons import Action, Reason
from controller.rules.compiler import CompiledSet

from ..fuzzing import examples
from .conftest import XDP_DROP, XDP_PASS, DataPlane
from .rulesets import action_of, enforce_rules
from .test_reference import PORT_POOL, Case, expected_reason, random_case, random_rules

pytestmark = pytest.mark.bpf

XDP_TX = 3
ETH_HLEN = 14
MAX_FRAME = 3000
"""Longest frame sent: a test run hands the program at most one page less XDP's
head and tail room (3520 bytes here) of a longer frame."""
ETHERTYPES = (0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806, 0x88CC, 0x9100, 0x0000, 0xFFFF)
EXT_HEADERS = (0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 59, 6, 17, 58, 47, 4, 41)
"""IPv6 next-header values: extension headers (incl. ESP, AH, mobility, HIP, shim6,
experimental), "no next header", transports and tunnels."""
EXT_LENGTHS = (0, 1, 2, 255)
"""An extension header's length byte: 8-byte units past the first 8."""
LENGTHS = (0, 1, 19, 20, 21, 39, 40, 41, 64, 1500, 65535)
"""IPv4 total / IPv6 payload lengths at the edges."""
FRAGS = (0, 1, 0x2000, 0x2001, 0x1FFF, 0x3FFF, 0x4000, 0xFFFF)
"""IPv4 flags and fragment offset words: MF, offsets, DF, the reserved bit."""
CHALLENGE = [Service(parse_prefix("198.19.0.0/16"), port, syn_pps=0, ack_pps=0) for port in PORT_POOL if port]
"""Armed in the challenge mode: the reference's addresses around 198.19.0.0 and its ports."""


@dataclass(frozen=True)
class Mode:
    name: str
    seed: int
    monitor: bool = False
    pass_malformed: bool = False
    challenge: bool = False


MODES = [Mode("enforcing", 11), Mode("monitor", 12, monitor=True),
         Mode("pass-malformed", 13, pass_malformed=True), Mode("challenge", 14, challenge=True)]
FRAMES_PER_MODE = 5000
BATCH = 20
"""Frames per hypothesis example ..."""
VARIANTS = 5
"""... in groups mutated from the same packet."""


Op = tuple[Any, ...]
"""A mutation: its kind, then its arguments."""


# -- mutations ---------------------------------------------------------------------------------------
def _l3_offset(frame: bytes) -> tuple[int, int]:
    """(offset of the layer-3 header, its EtherType), walking up to five VLAN tags."""
    off, etype = 12, 0
    for _ in range(6):
        if off + 2 > len(frame):
            return off, 0
        etype = int.from_bytes(frame[off:off + 2], "big")
        if etype not in (0x8100, 0x88A8):
            return off + 2, etype
        off += 4
    return off + 2, etype


def _vlan(frame: bytes, tpids: list[int]) -> bytes:
    tags = b"".join(struct.pack("!HH", t, 0x0064) for t in tpids)
    return frame[:12] + tags + frame[12:]


def _ipv6_chain(frame: bytes, chain: list[tuple[int, int]]) -> bytes:
    """Put extension headers ``(next header, length byte)`` after the IPv6 header."""
    off, etype = _l3_offset(frame)
    if etype != 0x86DD or off + 40 > len(frame):
        return frame
    first_nh = frame[off + 6]
    headers = b""
    nhs = [nh for nh, _ in chain[1:]] + [first_nh]
    for (_, hlen), nh in zip(chain, nhs, strict=True):
        size = (hlen + 1) * 8 if nh != 44 else 8
        headers += bytes([nh, hlen]) + bytes(size - 2)
    out = bytearray(frame[:off + 40] + headers + frame[off + 40:])
    out[off + 6] = chain[0][0]
    plen = int.from_bytes(out[off + 4:off + 6], "big") + len(headers)
    out[off + 4:off + 6] = (plen & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


def _gre(frame: bytes) -> bytes:
    """The frame's layer 3 inside GRE inside IPv4."""
    off, etype = _l3_offset(frame)
    inner = frame[off:]
    gre = struct.pack("!HH", 0, etype or 0x0800)
    total = 20 + len(gre) + len(inner)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, 1, 0, 64, 47, 0,
                     bytes([198, 18, 7, 7]), bytes([198, 19, 0, 1]))
    return frame[:12] + b"\x08\x00" + ip + gre + inner


def _set(frame: bytes, where: int, value: bytes) -> bytes:
    if where < 0 or where + len(value) > len(frame):
        return frame
    return frame[:where] + value + frame[where + len(value):]


def mutate(frame: bytes, op: Op) -> bytes:
    kind = op[0]
    off, etype = _l3_offset(frame)
    if kind == "cut":
        return frame[:max(ETH_HLEN, op[1] % (len(frame) + 1))]
    if kind == "byte":
        return _set(frame, op[1] % max(1, min(len(frame), 120)), bytes([op[2]]))
    if kind == "ihl" and etype == 0x0800:
        return _set(frame, off, bytes([(frame[off] & 0xF0 | op[1]) if off < len(frame) else 0x45]))
    if kind == "version" and off < len(frame):
        return _set(frame, off, bytes([(op[1] << 4) | (frame[off] & 0x0F)]))
    if kind == "length":
        where = off + 2 if etype == 0x0800 else off + 4
        return _set(frame, where, int(op[1]).to_bytes(2, "big"))
    if kind == "frag" and etype == 0x0800:
        return _set(frame, off + 6, int(op[1]).to_bytes(2, "big"))
    if kind == "proto":
        where = off + 9 if etype == 0x0800 else off + 6
        return _set(frame, where, bytes([op[1]]))
    if kind == "vlan":
        return _vlan(frame, list(op[1]))
    if kind == "ext6":
        return _ipv6_chain(frame, list(op[1]))
    if kind == "gre":
        return _gre(frame)
    if kind == "syn" and etype == 0x0800 and off < len(frame):  # a bare SYN to a challenged service
        l4 = off + (frame[off] & 0x0F) * 4
        frame = _set(frame, off + 16, bytes([198, 19, 0, 1]))
        frame = _set(_set(frame, l4 + 2, (443).to_bytes(2, "big")), l4 + 13, b"\x02")
        return _sound_syn(frame, off, l4)
    if kind == "tail":
        return bytes(frame + op[1] * op[2])[:MAX_FRAME]
    return frame


BYTE = st.integers(0, 255)
OPS = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, 200)),
    st.tuples(st.just("byte"), st.integers(0, 119), BYTE),
    st.tuples(st.just("ihl"), st.integers(0, 15)),
    st.tuples(st.just("version"), st.integers(0, 15)),
    st.tuples(st.just("length"), st.sampled_from(LENGTHS)),
    st.tuples(st.just("frag"), st.sampled_from(FRAGS)),
    st.tuples(st.just("proto"), st.sampled_from(EXT_HEADERS)),
    st.tuples(st.just("vlan"), st.lists(st.sampled_from([0x8100, 0x88A8, 0x9100]), min_size=1, max_size=5)),
    st.tuples(st.just("ext6"), st.lists(st.tuples(st.sampled_from(EXT_HEADERS), st.sampled_from(EXT_LENGTHS)),
                                        min_size=1, max_size=12)),
    st.tuples(st.just("gre")),
    st.tuples(st.just("syn")),
    st.tuples(st.just("tail"), st.binary(min_size=1, max_size=8), st.integers(1, 400)),
)


def random_ops(rnd: random.Random, syn: float = 0.0) -> list[Op]:
    """Up to three mutations drawn from ``rnd``: the same kinds as :data:`OPS`
    (after a bare SYN with probability ``syn``)."""
    ops: list[Op] = [("syn",)] if rnd.random() < syn else []
    for _ in range(rnd.choice((0, 1, 1, 2, 3))):
        kind = rnd.choice(("cut", "byte", "byte", "ihl", "version", "length", "frag", "proto", "vlan", "ext6",
                           "gre", "syn", "tail"))
        if kind == "cut":
            ops.append((kind, rnd.randrange(201)))
        elif kind == "byte":
            ops.append((kind, rnd.randrange(120), rnd.randrange(256)))
        elif kind in ("ihl", "version"):
            ops.append((kind, rnd.randrange(16)))
        elif kind == "length":
            ops.append((kind, rnd.choice((*LENGTHS, rnd.randrange(65536)))))
        elif kind == "frag":
            ops.append((kind, rnd.choice((*FRAGS, rnd.randrange(65536)))))
        elif kind == "proto":
            ops.append((kind, rnd.choice(EXT_HEADERS)))
        elif kind == "vlan":
            ops.append((kind, [rnd.choice((0x8100, 0x88A8, 0x9100)) for _ in range(rnd.randint(1, 5))]))
        elif kind == "ext6":
            ops.append((kind, [(rnd.choice(EXT_HEADERS), rnd.choice(EXT_LENGTHS))
                               for _ in range(rnd.randint(1, 12))]))
        elif kind in ("gre", "syn"):
            ops.append((kind,))
        else:
            ops.append((kind, rnd.randbytes(rnd.randint(1, 8)), rnd.randint(1, 400)))
    return ops


@dataclass(frozen=True)
class Frame:
    data: bytes
    case: Case | None  # the unmutated seed: the reference knows its verdict


def _mutated(case: Case, ops: list[Op]) -> Frame:
    data = case.frame
    for op in ops:
        data = mutate(data, op)[:MAX_FRAME]
    return Frame(data, case if data == case.frame else None)


def _sound_syn(frame: bytes, off: int, l4: int) -> bytes:
    """The SYN as the challenge answers one: no data (the IP length ends at
    its options) and a TCP checksum that holds (a frame too short is left)."""
    if l4 + 13 >= len(frame):
        return frame
    seg = (frame[l4 + 12] >> 4) * 4
    if seg < 20 or l4 + seg > len(frame):
        return frame
    frame = _set(frame[: l4 + seg], off + 2, (l4 - off + seg).to_bytes(2, "big"))
    frame = _set(frame, l4 + 16, b"\x00\x00")
    words = frame[off + 12: off + 20] + bytes([0, 6]) + seg.to_bytes(2, "big") + frame[l4: l4 + seg]
    total = sum(int.from_bytes(words[i: i + 2], "big") for i in range(0, len(words), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return _set(frame, l4 + 16, (~total & 0xFFFF).to_bytes(2, "big"))


@st.composite
def batches(draw: st.DrawFn, syn: float = 0.0) -> list[Frame]:
    """:data:`BATCH` frames: a packet with the mutations hypothesis drew, and
    variants of it and of more packets with mutations drawn from a seed
    (hypothesis costs milliseconds an example, a frame here a tenth of one);
    or random frames behind chosen EtherTypes."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    if draw(st.integers(0, 9)) == 0:
        etype = draw(st.sampled_from(ETHERTYPES))
        first = bytes(12) + etype.to_bytes(2, "big") + draw(st.binary(max_size=120))
        return [Frame(first, None)] + [
            Frame(bytes(12) + rnd.choice(ETHERTYPES).to_bytes(2, "big") + rnd.randbytes(rnd.randrange(121)),
                  None)
            for _ in range(BATCH - 1)]
    cases = [random_case(rnd) for _ in range(BATCH // VARIANTS)]
    out = [_mutated(cases[0], draw(st.lists(OPS, max_size=3)))]
    out += [_mutated(cases[i // VARIANTS], random_ops(rnd, syn)) for i in range(1, BATCH)]
    return out


# -- the run -----------------------------------------------------------------------------------------
def _reasons(dp: DataPlane) -> np.ndarray:
    totals = dp.maps["reason_stats"].percpu_sum(abi.COUNTER_DTYPE)
    return np.stack([totals["packets"].astype(np.int64), totals["bytes"].astype(np.int64)])


def _actions(dp: DataPlane) -> np.ndarray:
    return dp.maps["verdict_stats"].percpu_sum(abi.COUNTER_DTYPE)["packets"].astype(np.int64)


@dataclass
class Tally:
    reasons: np.ndarray  # packets and bytes per reason, as last read
    sent: int = 0
    bytes: int = 0


@pytest.fixture(params=MODES, ids=[m.name for m in MODES])
def armed(request: pytest.FixtureRequest, dp: DataPlane) -> Iterator[tuple[DataPlane, Mode, CompiledSet]]:
    mode: Mode = request.param
    rules, management = random_rules(random.Random(mode.seed))
    if mode.challenge:  # entries only: signatures would decide most SYNs before the challenge
        rules = [r for r in rules if r.match.is_src_only]
    enforced = enforce_rules(dp.maps, rules, management=management)
    cfg = dp.config()
    if mode.monitor:
        cfg.flags |= abi.CFG_MONITOR
    if mode.pass_malformed:
        cfg.flags |= abi.CFG_PASS_MALFORMED
    dataplane.write_config(dp.maps, cfg)
    if mode.challenge:
        set_challenged(dp.maps, CHALLENGE)
    yield dp, mode, enforced.outcome.compiled
    if mode.challenge:
        set_challenged(dp.maps, [])


def test_every_frame_gets_one_verdict_and_one_reason(armed: tuple[DataPlane, Mode, CompiledSet]) -> None:
    dp, mode, compiled = armed
    start_reasons, start_actions = _reasons(dp), _actions(dp)
    tally = Tally(start_reasons)

    @settings(max_examples=examples(FRAMES_PER_MODE // BATCH))
    @given(batch=batches(syn=0.5 if mode.challenge else 0.0))
    def run(batch: list[Frame]) -> None:
        for frame in batch:
            one(frame)

    def one(frame: Frame) -> None:
        data = frame.data
        assert len(data) >= ETH_HLEN
        out = lb.prog_test_run(dp.prog_fd, data)  # raises if the kernel refuses the run
        after = _reasons(dp)
        delta = after - tally.reasons
        moved = np.nonzero(delta[0])[0]
        tally.reasons = after
        tally.sent += 1
        tally.bytes += len(data)
        shown = f"{mode.name}: frame {data.hex()}"
        assert out.retval in (XDP_PASS, XDP_DROP, XDP_TX), f"action {out.retval}; {shown}"
        assert len(moved) == 1, f"reasons moved: {[Reason(int(r)).name for r in moved]}; {shown}"
        reason = Reason(int(moved[0]))
        assert (delta[0, reason], delta[1, reason]) == (1, len(data)), f"{reason.name}: {delta[:, reason]}"
        if out.retval == XDP_TX:
            assert mode.challenge and reason is Reason.DROP_CHALLENGE_SYN, f"XDP_TX, {reason.name}; {shown}"
        else:
            action = action_of(reason, monitor=mode.monitor, pass_malformed=mode.pass_malformed)
            want = XDP_DROP if action is Action.DROP else XDP_PASS
            assert out.retval == want, f"{reason.name} is {action.name}, got {out.retval}; {shown}"
        if frame.case is not None and not mode.challenge:
            verdict = compiled.evaluate(frame.case.packet)
            wanted = expected_reason(compiled, verdict, frame.case.packet)
            assert reason is wanted, f"reference {wanted.name} ({verdict}), kernel {reason.name}; {shown}"

    run()
    reasons = _reasons(dp) - start_reasons
    assert reasons[0].sum() == tally.sent, "reason counters do not add up to the packets sent"
    assert reasons[1].sum() == tally.bytes
    assert (_actions(dp) - start_actions).sum() == tally.sent, "action counters do not add up"
    if mode.challenge:  # the generator reaches the XDP_TX path
        assert reasons[0, Reason.DROP_CHALLENGE_SYN] > 0
    print(f"{mode.name}: {tally.sent} frames; reasons "
          f"{ {Reason(int(r)).name: int(reasons[0, r]) for r in np.nonzero(reasons[0])[0]} }")
