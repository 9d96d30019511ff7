"""Verdict reason and action codes, mirrored from ``bpf/reasons.h`` and
``bpf/consts.h``.

The numbers never move; ``tests/unit/test_reasons.py`` checks that this
module, the C header and ``proto/breakwater/v1/reasons.proto`` agree.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ACTION_MAX", "REASON_MAX", "Action", "Reason"]


class Reason(IntEnum):
    """Why the XDP program passed or dropped a packet (``BW_*`` in reasons.h)."""

    UNSPECIFIED = 0
    PASS_DEFAULT = 1
    PASS_ARP = 2
    PASS_ND = 3
    PASS_MGMT = 4
    PASS_ALLOW = 5
    PASS_NON_IP = 6
    PASS_SIGNATURE = 7
    PASS_RATE_LIMIT = 8
    PASS_VERIFIED = 9
    PASS_FLOW = 10
    DROP_DENY_SRC = 32
    DROP_DENY_PREFIX = 33
    DROP_SIGNATURE = 34
    DROP_RATE_LIMIT = 35
    DROP_CHALLENGE_SYN = 36
    DROP_CHALLENGE_ANSWER = 37
    DROP_CHALLENGE_FORGED = 38
    DROP_UNVERIFIED = 39
    DROP_CHALLENGE_BAD_SYN = 40
    MALFORMED_ETH = 64
    MALFORMED_VLAN = 65
    MALFORMED_IPV4 = 66
    MALFORMED_IPV4_OPTIONS = 67
    MALFORMED_IPV6 = 68
    MALFORMED_IPV6_EXT = 69
    MALFORMED_IPV6_CHAIN = 70
    MALFORMED_L4 = 71

    @property
    def label(self) -> str:
        """Lower-case name for tables and metrics labels, e.g. ``drop_deny_src``."""
        return self.name.lower()

    @property
    def is_malformed(self) -> bool:
        return 64 <= self.value < 128

    @property
    def is_drop(self) -> bool:
        """A policy drop (malformed packets are dropped too, by default)."""
        return 32 <= self.value < 64


REASON_MAX = 128
"""One past the highest reason code (``BW_REASON_MAX``): size of reason_stats."""


class Action(IntEnum):
    """What was done with a packet (``BW_ACTION_*``: index of verdict_stats)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    MONITOR = 3  # would have dropped; passed because monitor mode is on

    @property
    def label(self) -> str:
        return self.name.lower()


ACTION_MAX = 4
