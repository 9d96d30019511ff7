"""Built-in rule presets.

**Reflection** (:func:`reflection_rule`): UDP from the well-known source ports
of amplification services towards a protected destination scope, with the
action the operator picks (drop, a rate limit, or monitor to see first).
In a reflection attack the victim receives *replies* from third-party
servers it never asked, so the server's port is the packet's source port.
Amplification factors below (reply bytes per request byte) are from
US-CERT/CISA alert TA14-017A and the CVE-2023-29552 advisory; where none is
given the service is known from attack reports rather than a measured factor.

Caveats the operator should know (``docs/rules.md`` repeats them):

* replies to the protected hosts' own queries (their DNS resolver, NTP
  servers) match too: keep resolvers out of the scope, or put an ``allow``
  rule for them at a lower priority number, or choose a rate limit;
* a client behind NAT may by chance use one of these as its ephemeral UDP
  source port (QUIC, say): a drop rule drops it; a rate limit is gentler;
* non-first fragments carry no UDP header, so no source-port rule sees them:
  ``fragments=True`` adds a rule for all UDP fragments towards the scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from ..addresses import Prefix
from ..dataplane.protect import REFLECTION_PORTS
from ..errors import InputError
from .model import Match, Origin, Rule, RuleAction
from .values import PortRange

__all__ = ["REFLECTION_PRIORITY", "UDP", "reflection_rule"]

UDP: Final = 17

"""UDP source ports of amplification services → short names (used in rule ids).

Deliberately absent: 69 (TFTP answers from an ephemeral port, so the source
port does not identify it) and game-server query ports such as 27015
(Steam) and 27960 (Quake), which legitimate players' traffic uses.
"""

REFLECTION_PRIORITY: Final = 100
"""Default priority of preset rules: before rules at the default 1000, so a
broad allow at the default priority does not let reflection through."""


def reflection_rule(
    id: str,
    dst: Sequence[Prefix],
    action: RuleAction,
    priority: int = REFLECTION_PRIORITY,
    *,
    ports: Iterable[int] | None = None,
    fragments: bool = False,
    expires_at: datetime | None = None,
    origin: Origin = "manual",
    comment: str = "",
    created_by: str = "",
) -> list[Rule]:
    """The reflection preset as rules: one per source port, id
    ``<id>-<name>`` (``amp-ntp``), matching UDP from that port to ``dst``.

    One rule per port, rather than one per run of adjacent ports, because the
    ports are not adjacent (a run would be one rule anyway) and because each
    vector then has its own counters, which the SOC reads as "NTP reflection,
    3 Gpps". It costs one signature per port (19 of the 256 by default). A
    consequence: an ``aggregate`` rate limit is a bucket *per port*, so the
    total ceiling is the per-port rate times the number of ports.

    ``ports`` picks some of :data:`REFLECTION_PORTS` (or any other port,
    named ``udp<port>``); ``fragments=True`` adds ``<id>-fragments`` for UDP
    fragments to ``dst``, which would otherwise slip past (see the module doc).
    """
    scope = tuple(dst)
    if not scope:
        raise InputError("dst: empty; give the protected prefixes (0.0.0.0/0 and ::/0 for everything)")
    for i, p in enumerate(scope):
        if not isinstance(p, Prefix):
            raise InputError(f"dst[{i}]: expected a Prefix, got {type(p).__name__}")
    chosen = sorted(REFLECTION_PORTS) if ports is None else sorted(set(ports))
    if not chosen:
        raise InputError("ports: empty; leave it out for every reflection port")
    rules = []
    for port in chosen:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InputError(f"ports: {port!r} is not a port 0..65535")
        name = REFLECTION_PORTS.get(port, f"udp{port}")
        note = f"reflection from {name} (udp source port {port})"
        rules.append(
            Rule(
                id=f"{id}-{name}",
                match=Match(dst=scope, protocol=UDP, sport=PortRange(port, port)),
                action=action,
                priority=priority,
                expires_at=expires_at,
                origin=origin,
                comment=f"{comment}: {note}" if comment else note,
                created_by=created_by,
            )
        )
    if fragments:
        note = "UDP fragments (no source port to test) towards the reflection scope"
        rules.append(
            Rule(
                id=f"{id}-fragments",
                match=Match(dst=scope, protocol=UDP, fragment="yes"),
                action=action,
                priority=priority,
                expires_at=expires_at,
                origin=origin,
                comment=f"{comment}: {note}" if comment else note,
                created_by=created_by,
            )
        )
    return rules
