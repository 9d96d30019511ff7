"""Shared pieces of the property-based (hypothesis) fuzz tests: the example
budget and a strategy that builds any protobuf message from its descriptor.

**Budget.** Every fuzz test sizes its run with :func:`examples`: the count it
names is what CI runs (bounded, well under a minute per test);
``BREAKWATER_FUZZ_SCALE=N`` multiplies it for a long campaign (``make fuzz``
sets it, and the ``fuzz`` hypothesis profile, which also keeps a database of
failing examples in ``.hypothesis/`` so a failure found once is replayed
first next time). The ``ci`` profile (the default) has no database and no
per-example deadline (the shared machines are slow and noisy).

**Messages.** :func:`messages` walks a message descriptor: every field is
left unset or given a value of its type, biased to the edges (empty and
huge strings, control characters and bidi overrides, integer limits,
unknown enum numbers, NaN and infinities, nested messages down to a depth,
long repeated fields and maps). :func:`wire_bytes` adds what no well-typed
message can be: a valid message cut short, bit-flipped, with junk appended,
or plain random bytes, for the raw serialized request.
"""

from __future__ import annotations

import math
import os
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

__all__ = ["FUZZ_SCALE", "examples", "messages", "text", "wire_bytes"]

FUZZ_SCALE = max(1, int(os.environ.get("BREAKWATER_FUZZ_SCALE", "1") or "1"))
"""How many times the CI budget a run uses (``make fuzz`` raises it)."""

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", deadline=None, database=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("fuzz", deadline=None, print_blob=True, suppress_health_check=_QUIET,
                          database=DirectoryBasedExampleDatabase(".hypothesis"))
settings.load_profile(os.environ.get("BREAKWATER_FUZZ_PROFILE", "fuzz" if FUZZ_SCALE > 1 else "ci"))


def examples(n: int) -> int:
    """The number of examples a test runs: ``n`` in CI, times the scale in a campaign."""
    return n * FUZZ_SCALE


FD = descriptor.FieldDescriptor
INT_LIMITS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}
HUGE = 70_000
"""Length of a "huge" string: past any field cap the API has, under the message limit."""

# Strings: the ASCII an identifier is made of, what a parser trips on
# (control characters, bidi overrides, separators, escapes, NUL), and
# anything at all; sometimes empty, sometimes huge.
_TRICKY = "\x00\x1b\x7f\u202e\u2066\ufeff/.:-_*,= \"'\\\n\t[]{}%$"
text = st.one_of(
    st.sampled_from(["", " ", "a", "0", "-1", "*", "::/0", "0.0.0.0/0", "198.18.0.1", "2001:db8::1",
                     "auto-x", "fleet-x", "src == 198.18.0.1", "kind = \"attack_started\""]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./:" + _TRICKY, max_size=40),
    st.text(max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from("a/\u202e0"), st.sampled_from([256, 1025, HUGE])),
)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, lo, hi, lo + 1, hi - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53)
             if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -1000), min(hi, 1000)))


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in INT_LIMITS:
        return _ints(*INT_LIMITS[t])
    if t == FD.TYPE_ENUM:
        enum: Any = field.enum_type
        known = [v.number for v in enum.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        edges = [0.0, -0.0, math.nan, math.inf, -math.inf, 3e38 if t == FD.TYPE_FLOAT else 1e300]
        return st.one_of(st.sampled_from(edges), st.floats(width=32 if t == FD.TYPE_FLOAT else 64))
    if t == FD.TYPE_STRING:
        return text
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for field type {t} of {field.full_name}")


def messages(desc: Any, depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of type ``desc`` with random fields (nested to ``depth``)."""
    cls = GetMessageClass(desc)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        oneofs_set: set[str] = set()
        for field in desc.fields:
            if field.containing_oneof is not None:
                if field.containing_oneof.name in oneofs_set or not draw(st.booleans()):
                    continue
                oneofs_set.add(field.containing_oneof.name)
            elif not draw(st.integers(0, 2)):  # a third of the fields left unset
                continue
            _fill(draw, msg, field, depth)
        return msg

    return build()


def _fill(draw: st.DrawFn, msg: Message, field: descriptor.FieldDescriptor, depth: int) -> None:
    is_message = field.type == FD.TYPE_MESSAGE
    sub: Any = field.message_type  # a Descriptor when is_message
    if is_message and sub.GetOptions().map_entry:
        key_f, value_f = sub.fields_by_name["key"], sub.fields_by_name["value"]
        n = draw(st.sampled_from([0, 1, 2, 5, 70]))
        target = getattr(msg, field.name)
        for _ in range(n):
            key = draw(_scalar(key_f))
            if value_f.type == FD.TYPE_MESSAGE:
                target[key].CopyFrom(draw(messages(value_f.message_type, depth - 1)))
            else:
                target[key] = draw(_scalar(value_f))
        return
    if field.is_repeated:
        n = draw(st.sampled_from([0, 1, 2, 3, 8] + ([300] if depth >= 2 else [])))
        target = getattr(msg, field.name)
        if is_message:
            if depth <= 0:
                return
            many = draw(st.lists(messages(sub, depth - 1), min_size=min(n, 8), max_size=min(n, 8)))
            for item in many:
                target.add().CopyFrom(item)
            if n > 8 and many:  # a long list: the same element repeated
                for _ in range(n - len(many)):
                    target.add().CopyFrom(many[0])
        else:
            target.extend(draw(st.lists(_scalar(field), min_size=n, max_size=n)) if n <= 8
                          else [draw(_scalar(field))] * n)
        return
    if is_message:
        if depth <= 0:
            getattr(msg, field.name).SetInParent()
        else:
            getattr(msg, field.name).CopyFrom(draw(messages(sub, depth - 1)))
        return
    setattr(msg, field.name, draw(_scalar(field)))


def wire_bytes(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes that are not a well-formed message (or, by chance, are): a valid
    serialization cut short, with a byte changed, with junk appended, or random."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        raw = bytearray(draw(valid))
        how = draw(st.sampled_from(["cut", "flip", "append", "random", "varint"]))
        if how == "cut" and raw:
            return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
        if how == "flip" and raw:
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, len(raw) - 1))
                raw[i] = draw(st.integers(0, 255))
            return bytes(raw)
        if how == "append":
            return bytes(raw) + draw(st.binary(min_size=1, max_size=32))
        if how == "varint":  # a field whose length prefix runs past the end
            return bytes(raw) + bytes([0x0A, 0xFF, 0xFF, 0xFF, 0x0F]) + b"x"
        return draw(st.binary(max_size=256))

    return mutate()
