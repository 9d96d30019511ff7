"""The small values a rule is made of, as operators write them: protocol
names and numbers, port and length ranges (``"1024-65535"``), TCP flags
(``"syn,!ack"``), durations (``"1h30m"``) and RFC 3339 times.

Each parser raises a :class:`~controller.errors.FieldError` with an empty
path; the rule model (:mod:`controller.rules.model`) puts the field's path
in front with :func:`controller.validate.at`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from ..errors import FieldError
from ..validate import check_int, check_keys, check_table, show, suggest

__all__ = [
    "MAX_TTL_SECONDS",
    "PORT_PROTOCOLS",
    "PROTOCOLS",
    "PROTOCOL_NAMES",
    "TCP_FLAGS",
    "PortRange",
    "TcpFlags",
    "check_range",
    "format_time",
    "parse_protocol",
    "parse_range",
    "parse_time",
    "parse_ttl",
    "protocol_name",
    "range_value",
]

PROTOCOLS: Final[Mapping[str, int]] = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "icmpv6": 58,
    "sctp": 132,
}
"""Protocol names a match accepts (IANA numbers); any number 0..255 works too."""
PROTOCOL_NAMES: Final = {v: k for k, v in PROTOCOLS.items()}
PORT_PROTOCOLS: Final = frozenset({6, 17, 132})
"""Protocols with source and destination ports (tcp, udp, sctp)."""

TCP_FLAGS: Final[Mapping[str, int]] = {
    "fin": 0x01,
    "syn": 0x02,
    "rst": 0x04,
    "psh": 0x08,
    "ack": 0x10,
    "urg": 0x20,
    "ece": 0x40,
    "cwr": 0x80,
}
"""TCP flag names, in header bit order (byte 13 of the TCP header)."""

MAX_TTL_SECONDS: Final = 3650 * 86400
"""Longest ttl (ten years): longer than that is a permanent rule, so leave ttl out."""

_TTL_RE: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_RANGE_RE: Final = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


def check_range(lo: object, hi: object, limit: int) -> None:
    for v in (lo, hi):
        check_int(v, "", 0, limit)
    if cast(int, lo) > cast(int, hi):
        raise FieldError("", f"{lo}-{hi} is empty: start {lo} is above end {hi}")


def parse_range(value: object, limit: int) -> tuple[int, int]:
    """``80``, ``"80"``, ``"1024-65535"`` or ``[1024, 65535]`` as (lo, hi)."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str):
        m = _RANGE_RE.fullmatch(value.strip())
        if m is None:
            raise FieldError("", f"{show(value)} is not a number or a range like \"1024-65535\"")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
    elif isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = value
    else:
        raise FieldError(
            "", f"expected a number, a range like \"1024-65535\" or [lo, hi], got {show(value)}"
        )
    check_range(lo, hi, limit)
    return lo, hi


def range_value(lo: int, hi: int) -> int | str:
    return lo if lo == hi else f"{lo}-{hi}"




def protocol_name(number: int) -> str:
    """``udp`` for 17; the number itself for protocols without a name here."""
    return PROTOCOL_NAMES.get(number, str(number))


def parse_protocol(value: object) -> int:
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PROTOCOLS:
            return PROTOCOLS[name]
        raise FieldError("", f"{show(value)} is not a protocol name{suggest(name, PROTOCOLS)}; "
                             f"use {', '.join(PROTOCOLS)} or 0..255")
    return check_int(value, "", 0, 255)


def parse_ttl(value: object) -> timedelta:
    """A time to live: seconds (``600``) or ``"90s"``, ``"10m"``, ``"2h"``,
    ``"1d"``, ``"1h30m"``; between 1 s and 3650 days."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        m = _TTL_RE.fullmatch(text)
        if text.isdigit():
            seconds = int(text)
        elif text and m is not None:
            d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            seconds = ((d * 24 + h) * 60 + mi) * 60 + s
        else:
            raise FieldError(
                "", f"{show(value)} is not a duration; use seconds or e.g. 90s, 10m, 2h, 1d, 1h30m"
            )
    else:
        raise FieldError("", f"expected seconds or a duration like \"10m\", got {show(value)}")
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise FieldError(
            "", f"{show(value)} is out of range 1s..3650d; leave ttl out for a permanent rule"
        )
    return timedelta(seconds=seconds)


def parse_time(value: object) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FieldError(
                "", f"{show(value)} is not an RFC 3339 time like \"2024-05-01T12:00:00Z\""
            ) from None
    if not isinstance(value, datetime):
        raise FieldError("", f"expected an RFC 3339 time like \"2024-05-01T12:00:00Z\", got {show(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise FieldError("", f"{value.isoformat()} has no UTC offset; add Z or +hh:mm")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of TCP/UDP/SCTP ports; ``lo == hi`` is one port."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        check_range(self.lo, self.hi, 65535)

    @classmethod
    def parse(cls, value: object) -> PortRange:
        """``53``, ``"53"``, ``"1024-65535"`` or ``[1024, 65535]``."""
        return cls(*parse_range(value, 65535))

    @property
    def is_full(self) -> bool:
        return self.lo == 0 and self.hi == 65535

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def to_value(self) -> int | str:
        return range_value(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.to_value())


@dataclass(frozen=True, slots=True)
class TcpFlags:
    """TCP flags test: a packet matches when ``flags & mask == value``."""

    mask: int
    value: int

    def __post_init__(self) -> None:
        check_int(self.mask, "mask", 0, 255)
        check_int(self.value, "value", 0, 255)
        if self.mask == 0:
            raise FieldError("mask", "0 tests no flag; leave tcp_flags out to match any flags")
        if self.value & ~self.mask:
            raise FieldError(
                "value", f"0x{self.value:02x} sets flags outside mask 0x{self.mask:02x}"
            )

    @classmethod
    def parse(cls, value: object) -> TcpFlags:
        """``"syn"`` (SYN set), ``"syn,!ack"`` (SYN set, ACK clear), or
        ``{mask = 0x12, value = 0x02}``."""
        if isinstance(value, str):
            mask = bits = 0
            for part in value.split(","):
                token = part.strip().lower()
                name = token.removeprefix("!").strip()
                if not name:
                    raise FieldError("", f"{show(value)} has an empty flag; write e.g. \"syn,!ack\"")
                if name not in TCP_FLAGS:
                    raise FieldError(
                        "", f"unknown TCP flag {name!r}; known: {', '.join(TCP_FLAGS)} (! for clear)"
                    )
                bit = TCP_FLAGS[name]
                if mask & bit:
                    raise FieldError("", f"flag {name!r} is given twice in {show(value)}")
                mask |= bit
                if not token.startswith("!"):
                    bits |= bit
            return cls(mask, bits)
        if isinstance(value, Mapping):
            table = check_table(value)
            check_keys(table, ("mask", "value"))
            for key in ("mask", "value"):
                if key not in table:
                    raise FieldError(key, "missing; a flags table needs mask and value")
            return cls(check_int(table["mask"], "mask", 0, 255), check_int(table["value"], "value", 0, 255))
        raise FieldError("", f"expected flags like \"syn,!ack\" or {{mask, value}}, got {show(value)}")

    def matches(self, flags: int) -> bool:
        return flags & self.mask == self.value

    def __str__(self) -> str:
        return ",".join(
            name if self.value & bit else f"!{name}"
            for name, bit in TCP_FLAGS.items()
            if self.mask & bit
        )
