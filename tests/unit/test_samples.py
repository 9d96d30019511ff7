"""controller.detection.samples: building samples, address words, recordings and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.detection.samples import (
    DESTINATION_DTYPE,
    Sample,
    address_from_words,
    address_words,
    dump_recording,
    load_recording,
    v4_words,
    words_from_packed,
)
from controller.errors import InputError
from tests.unit.recordings import VICTIM, VICTIM6, mirai_syn, wave


def test_recording_round_trip() -> None:
    samples = wave(1.0, 3.0, mirai_syn(start=1, count=3), victims=(VICTIM,))
    again = load_recording(dump_recording(samples))
    for a, b in zip(samples, again, strict=True):
        assert (a.t, a.dt) == (b.t, b.dt)
        assert sorted(a.sources.tolist()) == sorted(b.sources.tolist())
        assert sorted(a.destinations.tolist()) == sorted(b.destinations.tolist())


def test_sample_build_and_words() -> None:
    s = Sample.build(1.0, 0.5, {"198.18.0.1": {"packets": 3, "syn": 3, "dst": VICTIM},
                                "2001:db8::5": {"packets": 1, "dst": VICTIM6}},
                     {VICTIM: {"packets": 3, "syn": 3}})
    assert address_words("198.18.0.1") == (0, 0xFFFF_C612_0001)
    assert str(address_from_words(*address_words("2001:db8::5"))) == "2001:db8::5"
    assert int(s.sources["syn"][0]) == 3 and int(s.sources["dst_lo"][0]) == address_words(VICTIM)[1]
    packed4 = np.array([bytes([198, 18, 0, 1])], dtype="S4")
    packed6 = np.array([bytes.fromhex("20010db8000000000000000000000005")], dtype="S16")
    for packed, text in ((packed4, "198.18.0.1"), (packed6, "2001:db8::5")):
        hi, lo = words_from_packed(packed)
        assert (int(hi[0]), int(lo[0])) == address_words(text)
    hi, lo = v4_words([int.from_bytes(bytes([10, 0, 0, 1]), "big")])
    assert str(address_from_words(int(hi[0]), int(lo[0]))) == "10.0.0.1"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Sample.build(1.0, 0.0), r"^dt: 0 is out of range 0.001..3600$"),
        (lambda: Sample.build(math.nan, 1.0), r"^t: expected a number, got NaN$"),
        (lambda: Sample.build(1.0, 1.0, {"1.2.3.4": {"sny": 1}}),
         r"sources\['1.2.3.4'\].sny: unknown counter \(did you mean 'syn'\?\)"),
        (lambda: Sample.build(1.0, 1.0, {"1.2.3.4": {"packets": -1}}),
         r"sources\['1.2.3.4'\].packets: -1 is out of range 0..18446744073709551615$"),
        (lambda: Sample.build(1.0, 1.0, {"1.2.3.4": {"dst": "2001:db8::1"}}),
         r"IPv6 destination for an IPv4 source"),
        (lambda: Sample.build(1.0, 1.0, {}, {"203.0.113.1": {"refl": 1, "dst": "1.1.1.1"}}),
         r"destinations\['203.0.113.1'\].dst: unknown counter"),
        (lambda: Sample(1.0, 1.0, np.zeros(1, DESTINATION_DTYPE), np.zeros(0, DESTINATION_DTYPE)),
         r"sources: dtype .* is not the expected"),
        (lambda: load_recording('{"samples": [{"t": 2, "dt": 1}, {"t": 1, "dt": 1}]}'),
         r"recording.samples\[1\].t: 1.0 is not after 2.0"),
    ],
)
def test_sample_errors(build: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build()  # type: ignore[operator]
